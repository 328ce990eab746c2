"""Schema of the [fou_map] section: the fou_map module, bifrost-foumapd, the endpoint."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from bifrost.abi import fou_map as abi
from bifrost.auth_config import AuthConfig
from bifrost.config_schema import Reader, port_of
from bifrost.fou_map.control import MISS_POLICIES, TableConfig

DEFAULT_STATE = Path("/var/lib/bifrost/fou_map.snapshot")
DEFAULT_METRICS_PORT = 9469


@dataclass(frozen=True)
class StaticEntry:
    client: ipaddress.IPv4Address
    pop: ipaddress.IPv4Address


@dataclass(frozen=True)
class EndpointConfig:
    """Defaults for `bifrost endpoint up` (each can be overridden on the command line)."""

    local: ipaddress.IPv4Address
    gateway: ipaddress.IPv4Address
    netns: str | None
    ifname: str
    addresses: tuple[str, ...]
    routes: tuple[str, ...]
    encap_csum: bool


@dataclass(frozen=True)
class FouMapConfig:
    device: str
    table: TableConfig
    static: tuple[StaticEntry, ...]
    state_file: Path
    snapshot_interval: float
    metrics_address: str
    metrics_port: int  # 0: no metrics listener
    endpoint: EndpointConfig | None
    # The host's top-level [auth] (bifrost.auth_config), put here by the daemon's load;
    # None: auth off (nothing appended, no token required).
    auth: AuthConfig | None = None


def _interface(value: object) -> str:
    """A service address, "192.0.2.1" or "192.0.2.1/32"."""
    if not isinstance(value, str):
        raise ValueError("expected an IPv4 address like 198.51.100.10/32")
    return ipaddress.IPv4Interface(value).with_prefixlen


def _prefix(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("expected an IPv4 prefix like 0.0.0.0/0")
    return str(ipaddress.IPv4Network(value, strict=False))


_MARTIAN_NETS = (
    ipaddress.IPv4Network("0.0.0.0/8"),
    ipaddress.IPv4Network("127.0.0.0/8"),
    ipaddress.IPv4Network("224.0.0.0/4"),
    ipaddress.IPv4Network("255.255.255.255/32"),
)


def _pop_prefix(value: object) -> str:
    """A POP prefix FOU is accepted from: no host bits, no martian addresses in it."""
    if not isinstance(value, str):
        raise ValueError("expected an IPv4 prefix like 198.51.100.0/24")
    try:
        net = ipaddress.IPv4Network(value)
    except ValueError as e:
        raise ValueError(f"expected an IPv4 prefix like 198.51.100.0/24 ({e})") from None
    if net.prefixlen == 0:
        raise ValueError("0.0.0.0/0 would accept FOU from anyone; list the POPs' prefixes")
    for bad in _MARTIAN_NETS:
        if net.overlaps(bad):
            raise ValueError(f"overlaps {bad}, which is never a POP's address")
    return str(net)


def refused_by_kernel(addr: ipaddress.IPv4Address) -> str | None:
    """Why fou_map's ADD refuses this address (fm_valid_unicast in kmod/fou_map/chardev.c)."""
    if addr in ipaddress.IPv4Network("0.0.0.0/8"):
        return "an address in 0.0.0.0/8 is not a host address"
    if addr.is_multicast:
        return "a multicast address (224.0.0.0/4) is not a host address"
    if addr == ipaddress.IPv4Address("255.255.255.255"):
        return "the broadcast address is not a host address"
    if addr.is_loopback:
        return "a loopback address (127.0.0.0/8) never crosses the tunnel"
    return None


def _unicast(sec: Reader, name: str) -> ipaddress.IPv4Address:
    """An address the kernel accepts in an entry: refused here, naming key and value."""
    addr = sec.ipv4(name)
    why = refused_by_kernel(addr)
    if why:
        raise sec.fail(name, str(addr), f"fou_map refuses it: {why}")
    return addr


def _endpoint(sec: Reader) -> EndpointConfig:
    netns_name = sec.string("netns", "")
    ifname = sec.string("ifname", "fm0")
    if not 1 <= len(ifname) <= 15 or "/" in ifname or " " in ifname:
        raise sec.fail("ifname", ifname, "expected an interface name of 1..15 characters")
    cfg = EndpointConfig(
        local=sec.ipv4("local"),
        gateway=sec.ipv4("gateway"),
        netns=netns_name or None,
        ifname=ifname,
        addresses=tuple(sec.items("addresses", _interface, [])),
        routes=tuple(sec.items("routes", _prefix, ["0.0.0.0/0"])),
        encap_csum=sec.boolean("encap_csum", False),
    )
    sec.done()
    return cfg


def parse(sec: Reader) -> FouMapConfig:
    ports = tuple(sec.items("ports", port_of, [5555]))
    if len(ports) > abi.MAX_PORTS or len(set(ports)) != len(ports):
        raise sec.fail("ports", list(ports), f"expected 1..{abi.MAX_PORTS} distinct ports")
    idle = sec.number("idle_timeout", abi.DEFAULT_IDLE_TIMEOUT_MS / 1000, lo=0.1)
    if idle * 1000 > abi.MAX_IDLE_TIMEOUT_MS:
        raise sec.fail("idle_timeout", idle, f"must be <= {abi.MAX_IDLE_TIMEOUT_MS // 1000}")
    pops = tuple(sec.items("pops", _pop_prefix, []))
    if len(pops) > abi.MAX_POPS or len(set(pops)) != len(pops):
        raise sec.fail("pops", list(pops), f"expected at most {abi.MAX_POPS} distinct prefixes")
    table = TableConfig(
        pops=pops,
        ports=ports,
        idle_timeout_ms=int(idle * 1000),
        max_entries=sec.integer(
            "max_entries", abi.DEFAULT_MAX_ENTRIES, lo=1, hi=abi.MAX_ENTRIES_LIMIT
        ),
        miss_policy=sec.string("miss_policy", "pass", choices=MISS_POLICIES),
    )
    statics: list[StaticEntry] = []
    for item in sec.tables("static"):
        entry = StaticEntry(client=_unicast(item, "client"), pop=_unicast(item, "pop"))
        if any(s.client == entry.client for s in statics):
            raise item.fail("client", str(entry.client), "this client is listed twice")
        statics.append(entry)
        item.done()
    if len(statics) > table.max_entries:
        # fm_add() refuses (ENOSPC) a static entry it cannot make room for.
        raise sec.fail(
            "max_entries",
            table.max_entries,
            f"{sec.key('static')} lists {len(statics)} entries; the table must hold them all",
        )
    ep_sec = sec.section("endpoint", optional=True)
    cfg = FouMapConfig(
        device=sec.string("device", "/dev/fou_map"),
        table=table,
        static=tuple(statics),
        state_file=Path(sec.string("state_file", str(DEFAULT_STATE))),
        snapshot_interval=sec.number("snapshot_interval", 10.0, lo=0.1),
        metrics_address=str(sec.ipv4("metrics_address", "127.0.0.1")),
        metrics_port=sec.integer("metrics_port", DEFAULT_METRICS_PORT, lo=0, hi=65535),
        endpoint=_endpoint(ep_sec) if ep_sec else None,
    )
    sec.done()
    return cfg


def default() -> FouMapConfig:
    return parse(Reader({}, "fou_map"))
