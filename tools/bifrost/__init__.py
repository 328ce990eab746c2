"""Bifrost: the edge of a game-server anycast network."""

__version__ = "0.1.0"
