"""`bifrost`: operate a POP or a game-server machine."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from bifrost import __version__
from bifrost.bifrost_nf import cli as bifrost_nf_cli
from bifrost.cli.common import mark_config_given
from bifrost.config import ConfigError
from bifrost.fleet import cli as fleet_cli
from bifrost.fou_map import cli as fou_map_cli
from bifrost.paths import DEFAULT_CONFIG
from bifrost.xdp import cli as xdp_cli

# Each component registers its own subcommands.
COMPONENTS = (fou_map_cli, bifrost_nf_cli, xdp_cli, fleet_cli)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bifrost",
        description="Bifrost: XDP POP edge, A2S kernel cache and FOU return path for game servers.",
    )
    parser.add_argument("--version", action="version", version=f"bifrost {__version__}")
    parser.add_argument(
        "-c",
        "--config",
        help=f"host config file (default: {DEFAULT_CONFIG}; a file named here must exist)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what is done")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for comp in COMPONENTS:
        comp.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    mark_config_given(args)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except (ConfigError, OSError, RuntimeError, ValueError) as e:
        print(f"bifrost: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
