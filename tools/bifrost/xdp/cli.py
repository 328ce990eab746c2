"""`bifrost xdp attach|detach|apply|status|stats|run`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bifrost import config as cfgmod
from bifrost.xdp import loader, maps, service
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


def cmd_run(args: argparse.Namespace) -> int:
    # A service logs what it does (journald keeps stderr); `-v` adds the quiet re-checks.
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s: %(message)s",
        force=True,
    )
    # The service logs the loader's outcomes itself, once per change; the loader's own
    # per-call info lines would repeat on every re-check. Its warnings and errors stay.
    logging.getLogger(loader.__name__).setLevel(logging.WARNING)
    svc = service.Service(
        Path(args.config),
        args.iface,
        obj=Path(args.obj),
        mode=args.mode,
        recheck_s=args.recheck,
    )
    return svc.run()


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add this component's subcommands to `bifrost`."""
    p = sub.add_parser("xdp", help="the POP's XDP program")
    xs = p.add_subparsers(dest="xdp_command", required=True, metavar="ACTION")

    def add(name: str, fn: object, help: str) -> argparse.ArgumentParser:
        sp = xs.add_parser(name, help=help, description=help)
        sp.add_argument("--iface", help="interface (default: xdp.interface)")
        sp.set_defaults(func=fn)
        return sp

    def load_options(sp: argparse.ArgumentParser) -> None:
        """What loading the object needs: attach and run both may load it."""
        sp.add_argument("--mode", choices=("auto", "native", "generic"), help="default: xdp.mode")
        sp.add_argument("--obj", default=str(OBJECT), help=f"object file (default: {OBJECT})")

    a = add(
        "attach",
        cmd_attach,
        "load, pin maps, apply the config, attach, and have the kernel keep every game "
        "server's next hop resolved (managed neighbour entries); exit 2 if one cannot be "
        "(a game server without a route)",
    )
    load_options(a)
    add("detach", cmd_detach, "detach, delete the neighbour entries attach/apply made, unpin")
    add(
        "apply",
        cmd_apply,
        "re-apply the config to the running program (no reload) and its managed neighbour "
        "entries (re-creates flushed ones, deletes unneeded ones); exit 2 if one "
        "cannot be managed (a game server without a route)",
    )
    r = add(
        "run",
        cmd_run,
        "attach (or adopt the attached program and apply the config) and stay up: "
        "re-install the game servers' managed neighbour entries as soon as one is deleted "
        "(a carrier loss flushes them) or a link comes back up, re-check them every "
        "--recheck seconds, re-apply the config on SIGHUP. Stopping it (SIGTERM/SIGINT) "
        "takes the POP's XDP program off the interface. Runs as bifrost-xdp.service",
    )
    # The daemons' convention (`bifrost-cached --config X`), here after the subcommand
    # too; SUPPRESS keeps `bifrost -c X xdp run` working as well.
    r.add_argument("-c", "--config", default=argparse.SUPPRESS, help="host config file")
    load_options(r)
    r.add_argument(
        "--recheck",
        type=float,
        default=service.RECHECK_S,
        metavar="SECONDS",
        help=f"neighbour re-check period besides the events (default: {service.RECHECK_S:g})",
    )
    add("status", cmd_status, "attached or not, in which mode")
    s = add("stats", cmd_stats, "per-rule, per-reason packet counters")
    s.add_argument("--reset", action="store_true", help="zero the counters after printing")
