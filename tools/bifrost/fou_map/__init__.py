"""The game-server side: fou_map control, its daemon, FOU endpoint setup."""
