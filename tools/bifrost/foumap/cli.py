"""Subcommands of this component (filled in by the component's issue)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add this component's subcommands to `bifrost`."""
