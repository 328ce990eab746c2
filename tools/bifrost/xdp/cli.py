"""`bifrost xdp attach|detach|apply|status|stats`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bifrost import config as cfgmod
from bifrost.xdp import loader, maps
from bifrost.xdp.build import OBJECT
from bifrost.xdp.config import XdpConfig


def _cfg(args: argparse.Namespace) -> XdpConfig:
    cfg = cfgmod.load(Path(args.config)).xdp
    if cfg is None:
        raise cfgmod.ConfigError(f"{args.config}: no [xdp] section")
    return cfg


def _iface(args: argparse.Namespace, cfg: XdpConfig) -> str:
    iface = args.iface or cfg.interface
    if not iface:
        raise ValueError("no interface: pass --iface or set xdp.interface")
    return str(iface)


def _neighbours(rep: loader.NeighbourReport) -> int:
    """Print what was managed; errors (a game server without a route, an entry the
    kernel would not manage) go to stderr and make the exit status 2: the program
    runs, but that server's forward traffic is or may be dropped."""
    for line in rep.lines():
        print(line)
    for err in rep.errors:
        print(f"error: {err}", file=sys.stderr)
    return 2 if rep.errors else 0


def cmd_attach(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    res = loader.attach(cfg, _iface(args, cfg), obj=Path(args.obj), mode=args.mode)
    print(f"{res.iface}: attached ({res.mode}); maps in {res.pin_dir}; {res.report}")
    return _neighbours(res.neighbours)


def cmd_detach(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    iface = _iface(args, cfg)
    loader.detach(iface, cfg.pin_dir)
    print(f"{iface}: detached")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    res = loader.apply(cfg, _iface(args, cfg))
    print(res.report)
    return _neighbours(res.neighbours)


def cmd_status(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    st = loader.status(_iface(args, cfg), cfg.pin_dir)
    print(st)
    return 0 if st.attached else 3


def cmd_stats(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    iface = _iface(args, cfg)
    ms = maps.MapSet.from_pins(loader.pin_dir_for(cfg.pin_dir, iface))
    names = {r.id: r.name for r in cfg.rules}
    rows = sorted(maps.counters(ms).items())
    print(f"{'rule':<16} {'reason':<20} {'packets':>12} {'bytes':>14}")
    for (rid, reason), c in rows:
        rule = names.get(rid, f"#{rid}") if rid else "-"
        print(f"{rule:<16} {reason:<20} {c.packets:>12} {c.bytes:>14}")
    if args.reset:
        maps.reset_counters(ms)
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add this component's subcommands to `bifrost`."""
    p = sub.add_parser("xdp", help="the POP's XDP program")
    xs = p.add_subparsers(dest="xdp_command", required=True, metavar="ACTION")

    def add(name: str, fn: object, help: str) -> argparse.ArgumentParser:
        sp = xs.add_parser(name, help=help, description=help)
        sp.add_argument("--iface", help="interface (default: xdp.interface)")
        sp.set_defaults(func=fn)
        return sp

    a = add(
        "attach",
        cmd_attach,
        "load, pin maps, apply the config, attach, and have the kernel keep every game "
        "server's next hop resolved (managed neighbour entries); exit 2 if one cannot be "
        "(a game server without a route)",
    )
    a.add_argument("--mode", choices=("auto", "native", "generic"), help="default: xdp.mode")
    a.add_argument("--obj", default=str(OBJECT), help=f"object file (default: {OBJECT})")
    add("detach", cmd_detach, "detach, delete the neighbour entries attach/apply made, unpin")
    add(
        "apply",
        cmd_apply,
        "re-apply the config to the running program (no reload) and its managed neighbour "
        "entries (re-creates flushed ones, deletes unneeded ones); exit 2 if one "
        "cannot be managed (a game server without a route)",
    )
    add("status", cmd_status, "attached or not, in which mode")
    s = add("stats", cmd_stats, "per-rule, per-reason packet counters")
    s.add_argument("--reset", action="store_true", help="zero the counters after printing")
