"""`bifrost xdp attach|upgrade|detach|apply|status|stats|run`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bifrost import config as cfgmod
from bifrost.auth_config import AUTH_OFF_WARNING
from bifrost.xdp import loader, maps, pins, service
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
    res = loader.attach(
        cfg,
        _iface(args, cfg),
        obj=Path(args.obj),
        mode=args.mode,
        migrate=pins.parse_migrations(args.migrate),
    )
    print(f"{res.iface}: attached ({res.mode}); maps in {res.pin_dir}; {res.report}")
    if res.reused:
        print(f"kept the pinned maps: {', '.join(res.reused)}")
    return _neighbours(res.neighbours)


def cmd_upgrade(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    res = loader.upgrade(
        cfg, _iface(args, cfg), obj=Path(args.obj), migrate=pins.parse_migrations(args.migrate)
    )
    print(res)
    return 0


def cmd_detach(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    print(loader.detach(_iface(args, cfg), cfg.pin_dir))
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    res = loader.apply(cfg, _iface(args, cfg))
    print(res.report)
    return _neighbours(res.neighbours)


def cmd_status(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    iface = _iface(args, cfg)
    st = loader.status(iface, cfg.pin_dir)
    print(st)
    if st.ours:
        with maps.MapSet.from_pins(loader.pin_dir_for(cfg.pin_dir, iface)) as ms:
            n = maps.auth_in_force(ms)
        print(f"auth: on, {n} key(s) accepted" if n else f"auth: off ({AUTH_OFF_WARNING})")
    return 0 if st.attached else 3


def cmd_stats(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    iface = _iface(args, cfg)
    with maps.MapSet.from_pins(loader.pin_dir_for(cfg.pin_dir, iface)) as ms:
        return _print_stats(ms, cfg, args.reset)


def _print_stats(ms: maps.MapSet, cfg: XdpConfig, reset: bool) -> int:
    names = maps.rule_names(ms, cfg)
    rows = sorted(maps.counters(ms).items())
    print(f"{'rule':<16} {'reason':<20} {'packets':>12} {'bytes':>14}")
    for (rid, reason), c in rows:
        rule = names.get(rid, f"#{rid}") if rid else "-"
        print(f"{rule:<16} {reason:<20} {c.packets:>12} {c.bytes:>14}")
    if reset:
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
        migrate=pins.parse_migrations(args.migrate),
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

    def load_options(sp: argparse.ArgumentParser, mode: bool = True) -> None:
        """What loading the object needs: attach, upgrade and run may load it."""
        if mode:
            sp.add_argument(
                "--mode", choices=("auto", "native", "generic"), help="default: xdp.mode"
            )
        sp.add_argument("--obj", default=str(OBJECT), help=f"object file (default: {OBJECT})")
        sp.add_argument(
            "--migrate",
            action="append",
            metavar="MAP=reset|copy",
            help="a pinned state map whose layout the new object changed: start it empty "
            "(reset) or copy its entries (copy); without it such a swap is refused. Repeatable",
        )

    a = add(
        "attach",
        cmd_attach,
        "load (keeping the maps an earlier attachment pinned, when their layout is the same), "
        "apply the config, attach through a pinned bpf_link (refused if any XDP program is "
        "attached), and have the kernel keep every game server's next hop resolved (managed "
        "neighbour entries); exit 2 if one cannot be (a game server without a route)",
    )
    load_options(a)
    u = add(
        "upgrade",
        cmd_upgrade,
        "swap a newly built object in for the attached program in one step "
        "(bpf_link_update): maps whose layout is unchanged are kept (validated clients, "
        "rate buckets, counters), the config is applied to the new program first",
    )
    load_options(u, mode=False)
    add(
        "detach",
        cmd_detach,
        "take bifrost's program off (its pinned link only; another program is left alone), "
        "delete the neighbour entries attach/apply made, unpin",
    )
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
        "--recheck seconds, re-apply the config on SIGHUP. Adopting an attached program swaps "
        "in --obj when it is another build. Stopping it (SIGTERM/SIGINT) leaves the program "
        "attached with its maps; `bifrost xdp detach` takes it off. Runs as bifrost-xdp.service",
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
