"""What every `bifrost` subcommand shares: which config file the user named, if any."""

from __future__ import annotations

import argparse
from pathlib import Path

from bifrost.paths import DEFAULT_CONFIG


def mark_config_given(args: argparse.Namespace) -> None:
    """Record whether -c was given, then default it (subcommands read ``args.config``)."""
    given = getattr(args, "config", None)
    args.config_given = given is not None
    if not args.config_given:
        args.config = str(DEFAULT_CONFIG)


def config_arg(args: argparse.Namespace) -> Path | None:
    """The config file named with -c (it must exist), or None: the default, if present."""
    return Path(args.config) if getattr(args, "config_given", False) else None
