"""`bifrost cache show | stats | flush`: look at and empty bifrost_nf's cache in this netns."""

from __future__ import annotations

import argparse
import json

from bifrost import config as cfgmod
from bifrost.bifrost_nf.nf import DEFAULT_PATH, CacheDevice, ServiceState
from bifrost.cli.common import config_arg


def _device_path(args: argparse.Namespace) -> str:
    if getattr(args, "device", None):
        return str(args.device)
    cfg = cfgmod.load_for_cli(config_arg(args))
    return str(cfg.cache.device) if cfg.cache is not None else str(DEFAULT_PATH)


def format_services(services: list[ServiceState]) -> str:
    if not services:
        return "no services configured"
    lines = []
    for s in services:
        flags = [
            f for f, on in (("no-challenge", s.no_challenge), ("miss-pass", s.miss_pass)) if on
        ]
        lines.append(f"{s.addr}:{s.port}" + (f"  [{', '.join(flags)}]" if flags else ""))
        if not s.answers:
            lines.append("    (nothing cached)")
        for a in s.answers:
            if a.age_ms < a.ttl_ms:
                state = "fresh"
            elif a.age_ms < a.ttl_ms + a.max_stale_ms:
                state = "stale"
            else:
                state = "expired"
            lines.append(
                f"    {a.qtype:<7} {a.bytes:>6} B in {a.packets} pkt  age {a.age_ms / 1000:.1f}s"
                f"  ttl {a.ttl_ms / 1000:.1f}s  max stale {a.max_stale_ms / 1000:.1f}s  {state}"
            )
    return "\n".join(lines)


def cmd_show(args: argparse.Namespace) -> int:
    with CacheDevice(_device_path(args)) as dev:
        services = dev.dump()
    if args.json:
        print(json.dumps([
            {"address": str(s.addr), "port": s.port, "no_challenge": s.no_challenge,
             "miss_pass": s.miss_pass, "answers": [a.__dict__ for a in s.answers]}
            for s in services
        ], indent=2))  # fmt: skip
    else:
        print(format_services(services))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    with CacheDevice(_device_path(args)) as dev:
        info = dev.info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"bifrost_nf {info['module_version']} (ABI {info['abi_version']}), "
          f"netns {info['netns_inum']}")  # fmt: skip
    width = max(len(k) for k in info["counters"])
    for name, value in info["counters"].items():
        print(f"  {name:<{width}}  {value}")
    return 0


def cmd_flush(args: argparse.Namespace) -> int:
    with CacheDevice(_device_path(args)) as dev:
        dev.flush()
    print("cache flushed (services kept; bifrost-cached refills them)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add this component's subcommands to `bifrost`."""
    p = sub.add_parser("cache", help="the POP's A2S cache (bifrost_nf) in this netns")
    csub = p.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    for name, fn, text in (
        ("show", cmd_show, "services and their cached answers with age and state"),
        ("stats", cmd_stats, "module version and counters"),
        ("flush", cmd_flush, "delete every cached answer"),
    ):
        sp = csub.add_parser(name, help=text, description=text)
        sp.add_argument("--device", help="control device (default: [cache].device)")
        if name != "flush":
            sp.add_argument("--json", action="store_true", help="machine-readable output")
        sp.set_defaults(func=fn)
