"""`bifrost map ...` (the fou_map table) and `bifrost endpoint up|down` (the FOU endpoint)."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
from collections.abc import Iterator

from bifrost import config as cfgmod
from bifrost import netns
from bifrost.cli.common import config_arg
from bifrost.fou_map import config as fmconfig
from bifrost.fou_map import endpoint
from bifrost.fou_map.control import FouMap, MapEntry


def _config(args: argparse.Namespace) -> fmconfig.FouMapConfig:
    """[fou_map] of the host config; the defaults without a config file (unless -c named one)."""
    return cfgmod.load_for_cli(config_arg(args)).fou_map or fmconfig.default()


@contextlib.contextmanager
def _device(args: argparse.Namespace) -> Iterator[FouMap]:
    """The device opened inside --netns (the kernel binds it to the opener's netns)."""
    path = _config(args).device
    with netns.entered(args.netns):
        fm = FouMap(path)
    with fm:
        yield fm


def format_table(entries: list[MapEntry]) -> str:
    rows = [("CLIENT", "POP", "AGE", "PACKETS", "KIND")]
    for e in sorted(entries, key=lambda e: int(e.client)):
        rows.append(
            (
                str(e.client),
                str(e.pop),
                f"{e.age_ms / 1000:.1f}s",
                str(e.packets),
                "static" if e.static else "learned",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append(f"{len(entries)} entries")
    return "\n".join(lines)


def cmd_show(args: argparse.Namespace) -> int:
    with _device(args) as fm:
        print(format_table(fm.dump()))
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    for what in ("client", "pop"):
        why = fmconfig.refused_by_kernel(getattr(args, what))
        if why:
            raise ValueError(f"{what} {getattr(args, what)}: fou_map refuses it: {why}")
    with _device(args) as fm:
        fm.add(args.client, args.pop, static=True)
    print(f"{args.client} -> {args.pop} (static)")
    return 0


def cmd_del(args: argparse.Namespace) -> int:
    with _device(args) as fm:
        fm.delete(args.client)
    return 0


def cmd_flush(args: argparse.Namespace) -> int:
    with _device(args) as fm:
        fm.flush(static=args.all)
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    with _device(args) as fm:
        info = fm.info()
        st = fm.stats()
        cfg = fm.config()
    pairs = [
        ("netns inode", str(info["netns_inum"])),
        ("module version", info["module_version"]),
        ("FOU ports", ", ".join(map(str, cfg.ports)) or "(none: not configured)"),
        ("idle timeout", f"{cfg.idle_timeout_ms / 1000:g}s"),
        ("miss policy", cfg.miss_policy),
        ("entries", f"{st.entries} of {st.max_entries} ({st.static_entries} static)"),
        ("hash buckets", str(st.buckets)),
        ("bytes per entry", f"{st.entry_size} (+ buckets: {st.table_bytes} bytes in all)"),
    ]
    pairs += [(name, str(v)) for name, v in info["counters"].items()]
    width = max(len(k) for k, _ in pairs)
    for k, v in pairs:
        print(f"{k.ljust(width)}  {v}")
    return 0


def _endpoint_from(args: argparse.Namespace) -> endpoint.Endpoint:
    base = _config(args).endpoint
    local = args.local or (str(base.local) if base else None)
    gateway = args.gateway or (str(base.gateway) if base else None)
    if not local or not gateway:
        raise ValueError(
            "endpoint needs --local and --gateway (or [fou_map.endpoint] local/gateway)"
        )
    ports = _config(args).table.ports
    return endpoint.Endpoint(
        local=str(ipaddress.IPv4Address(local)),
        gateway=str(ipaddress.IPv4Address(gateway)),
        netns=args.netns or (base.netns if base else None),
        port=args.port or ports[0],
        ifname=args.ifname or (base.ifname if base else "fm0"),
        addresses=tuple(ipaddress.IPv4Interface(a).with_prefixlen for a in (args.address or []))
        or (base.addresses if base else ()),
        routes=tuple(args.route or ()) or (base.routes if base else ("0.0.0.0/0",)),
        encap_csum=base.encap_csum if base else False,
    )


def cmd_endpoint_up(args: argparse.Namespace) -> int:
    ep = _endpoint_from(args)
    endpoint.up(ep, timeout=args.timeout)
    where = f"netns {ep.netns}" if ep.netns else "this netns"
    print(
        f"{ep.ifname} up in {where}: fou port {ep.port}, local {ep.local}, default POP {ep.gateway}"
    )
    return 0


def cmd_endpoint_down(args: argparse.Namespace) -> int:
    endpoint.down(_endpoint_from(args))
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `map` and `endpoint` to `bifrost`."""
    mp = sub.add_parser("map", help="the fou_map client -> POP table (game-server side)")
    msub = mp.add_subparsers(dest="map_command", required=True, metavar="ACTION")

    def action(name: str, help_: str) -> argparse.ArgumentParser:
        p = msub.add_parser(name, help=help_)
        p.add_argument("--netns", help="the table of this network namespace (default: ours)")
        return p

    action("show", "list entries").set_defaults(func=cmd_show)
    p = action("add", "add a static entry (never expires, not moved by learning)")
    p.add_argument("client", type=ipaddress.IPv4Address)
    p.add_argument("pop", type=ipaddress.IPv4Address)
    p.set_defaults(func=cmd_add)
    p = action("del", "delete a client's entry")
    p.add_argument("client", type=ipaddress.IPv4Address)
    p.set_defaults(func=cmd_del)
    p = action("flush", "delete learned entries")
    p.add_argument("--all", action="store_true", help="static entries too")
    p.set_defaults(func=cmd_flush)
    action("stats", "configuration, gauges and counters").set_defaults(func=cmd_stats)

    ep = sub.add_parser("endpoint", help="the game server's FOU endpoint (fou port + ipip)")
    esub = ep.add_subparsers(dest="endpoint_command", required=True, metavar="ACTION")
    for name, func, help_ in (
        ("up", cmd_endpoint_up, "create it and wait until a server can bind (idempotent)"),
        ("down", cmd_endpoint_down, "remove it"),
    ):
        p = esub.add_parser(name, help=help_)
        p.add_argument("--netns", help="the game server's network namespace")
        p.add_argument("--local", help="outer source address (this machine's underlay address)")
        p.add_argument("--gateway", help="default POP: where replies to unmapped clients go")
        p.add_argument("--address", action="append", help="service address to add (repeat)")
        p.add_argument("--route", action="append", help="client prefix via the tunnel (repeat)")
        p.add_argument("--port", type=int, help="FOU port (default: first of [fou_map] ports)")
        p.add_argument("--ifname", help="tunnel device name (default fm0)")
        p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for it")
        p.set_defaults(func=func)
