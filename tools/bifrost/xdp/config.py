"""Schema of the [xdp] section: the POP's XDP program.

Example::

    [xdp]
    modules = ["srcds"]            # compiled in (module_config.h)
    interface = "eth0"
    pop_address = "198.51.100.1"   # outer source of FOU packets
    fou_port = 5555                # where game servers send the return path
    ipv6 = "pass"                  # or "drop", until IPv6 is supported
    game_servers = ["10.0.0.2"]    # may send FOU return traffic (rules add theirs)
    anycast = ["198.51.100.10"]    # served here; uncovered traffic dropped (rules add theirs)
    block = ["203.0.113.0/24"]
    allow = ["192.0.2.10/32"]      # exempt from block list and rate limits
    rate_limit_pps = 0             # default per (source, rule); 0 = unlimited
    rate_limit_burst = 0           # default: one second's worth
    flood_new_sources_pps = 1000   # per CPU: above, flood mode (no new per-source state)
    flood_budget_pps = 1000        # flood mode: what all unknown sources of a rule share, per CPU
    tunnel_mtu = 0                 # outer packets to game servers at most this long; 0: route MTU

    [[xdp.rule]]
    name = "cs2"                   # required, unique: the rule's identity (see below)
    anycast = "198.51.100.10"
    ports = ["27015-27020"]        # or [27015], or [] for every port
    proto = "udp"
    game_server = "10.0.0.2"
    fou_port = 5555
    cache = true
    modules = ["srcds"]            # needs [auth]: validation only from authenticated FOU

A rule's name is its identity: the program's rule id (counters, rate buckets,
validated clients' rule) is allocated by name and recorded in the pinned maps
(bifrost.xdp.maps.assign_ids), so removing or reordering rules renumbers no
other rule. Hence every rule needs a name, unique in the section; a position
would not do (removing a rule would hand its id to the next one).

The top-level [auth] section (bifrost.auth_config) gives the FOU token; the
host config passes it in: without it FOU is not authenticated and no rule may
enable a game module.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from bifrost.auth_config import AuthConfig
from bifrost.config_schema import ConfigError, Reader
from bifrost.xdp import maps_def

PROTOS = {"udp": 17, "tcp": 6}
# A rule name: what `bifrost xdp stats` and the metrics label show, so no spaces or quotes.
RULE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MODES = ("auto", "native", "generic")


def _game_module(value: object) -> str:
    if value not in maps_def.AVAILABLE_MODULES:
        known = ", ".join(sorted(maps_def.AVAILABLE_MODULES))
        raise ValueError(f"unknown game module; known: {known}")
    return str(value)


def _ipv4(value: object) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(value)  # type: ignore[arg-type]
    except (ipaddress.AddressValueError, ValueError, TypeError):
        raise ValueError("expected an IPv4 address like 192.0.2.1") from None


def _prefix(value: object) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(value, strict=False)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        raise ValueError("expected an IPv4 prefix like 192.0.2.0/24") from None


def _port_range(value: object) -> tuple[int, int]:
    """27015 or "27015" or "27015-27020" -> (first, last)."""
    if isinstance(value, bool):
        raise ValueError("expected a port or a range like 27015-27020")
    if isinstance(value, int):
        lo = hi = value
    elif isinstance(value, str):
        parts = value.split("-")
        if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
            raise ValueError("expected a port or a range like 27015-27020")
        lo, hi = int(parts[0]), int(parts[-1])
    else:
        raise ValueError("expected a port or a range like 27015-27020")
    if not (1 <= lo <= hi <= 65535):
        raise ValueError("ports must be 1..65535 and the range ascending")
    return lo, hi


@dataclass(frozen=True)
class Rule:
    # 1..MAX_RULES, the position in the config. Only the default of maps.desired():
    # the program's ids come from names (maps.assign_ids), never from positions.
    id: int
    name: str  # unique in the config: the rule's identity
    anycast: ipaddress.IPv4Address
    ports: tuple[tuple[int, int], ...]  # empty: every port
    proto: str
    game_server: ipaddress.IPv4Address
    fou_port: int
    cache: bool
    modules: tuple[str, ...]
    rate_limit_pps: int
    rate_limit_burst: int

    def port_keys(self) -> list[int]:
        if not self.ports:
            return [0]
        return sorted({p for lo, hi in self.ports for p in range(lo, hi + 1)})


@dataclass(frozen=True)
class XdpConfig:
    # Game handshake modules compiled in (module_config.h); rules choose which apply.
    modules: tuple[str, ...]
    interface: str | None = None
    mode: str = "auto"
    pin_dir: str = "/sys/fs/bpf/bifrost"
    pop_address: ipaddress.IPv4Address | None = None
    fou_port: int = 5555
    ipv6: str = "pass"
    game_servers: tuple[ipaddress.IPv4Address, ...] = ()
    anycast: tuple[ipaddress.IPv4Address, ...] = ()
    block: tuple[ipaddress.IPv4Network, ...] = ()
    allow: tuple[ipaddress.IPv4Network, ...] = ()
    rate_limit_pps: int = 0
    rate_limit_burst: int = 0
    nexthop_ttl_ms: int = 1000
    srcds_ttl_s: int = 300
    metrics_address: str = "127.0.0.1"  # bifrost-xdp.service's Prometheus listener
    metrics_port: int = 9470  # 0: no metrics listener
    rules: tuple[Rule, ...] = ()
    # [auth] keys (8 wire bytes each; [0] is sent); empty: FOU is not authenticated.
    auth_keys: tuple[bytes, ...] = ()
    # Flood mode (xdp/pipeline.h, bfx_under_flood): new sources per second per CPU
    # above which no per-source state is inserted, and what unknown sources then
    # share per rule and CPU.
    flood_new_sources_pps: int = 1000
    flood_budget_pps: int = 1000
    # Outer packets to game servers at most this long (below the route MTU when a
    # link on the way is smaller); 0: the route MTU only. A DF packet over it gets
    # ICMP fragmentation needed (xdp/icmp.h).
    tunnel_mtu: int = 0

    def all_game_servers(self) -> list[ipaddress.IPv4Address]:
        return sorted({*self.game_servers, *(r.game_server for r in self.rules)})

    def all_anycast(self) -> list[ipaddress.IPv4Address]:
        return sorted({*self.anycast, *(r.anycast for r in self.rules)})

    def rule_by_id(self) -> dict[int, Rule]:
        return {r.id: r for r in self.rules}


def _rule_name(sec: Reader, seen: dict[str, str]) -> str:
    """The rule's name: required (a default from the position would move with it),
    well-formed and not another rule's."""
    if not sec.has("name"):
        what = {k: sec.data[k] for k in ("anycast", "ports") if k in sec.data}
        raise ConfigError(
            f"{sec.key('name')}: required key is missing (rule {what}): a rule's name is its "
            "identity (its id in the program, its counters), so removing another rule "
            'never renumbers it; add e.g. name = "cs2"'
        )
    name = sec.string("name")
    if not RULE_NAME.fullmatch(name):
        raise sec.fail(
            "name", name, "expected 1..64 of A-Z a-z 0-9 _ . - (starting with a letter or digit)"
        )
    if name in seen:
        raise sec.fail(
            "name", name, f"also the name of {seen[name]}: a rule's name is its identity"
        )
    seen[name] = sec.where
    return name


def _rule(sec: Reader, rid: int, top: dict[str, Any], seen: dict[str, str]) -> Rule:
    rule = Rule(
        id=rid,
        name=_rule_name(sec, seen),
        anycast=sec.ipv4("anycast"),
        ports=tuple(sec.items("ports", _port_range, default=[])),
        proto=sec.string("proto", default="udp", choices=PROTOS),
        game_server=sec.ipv4("game_server"),
        fou_port=sec.port("fou_port", default=top["fou_port"]),
        cache=sec.boolean("cache", default=False),
        modules=tuple(sec.items("modules", _game_module, default=[])),
        rate_limit_pps=sec.integer("rate_limit_pps", default=top["pps"], lo=0, hi=10**9),
        rate_limit_burst=sec.integer("rate_limit_burst", default=top["burst"], lo=0, hi=10**9),
    )
    for m in rule.modules:
        if m not in top["modules"]:
            raise sec.fail(
                "modules", list(rule.modules), f"{m} is not in xdp.modules (compiled in)"
            )
    if rule.cache and rule.proto != "udp":
        raise sec.fail("cache", True, "caching applies to UDP rules only")
    sec.done()
    return rule


def parse(sec: Reader, auth: AuthConfig | None = None) -> XdpConfig:
    """[xdp]; auth: the host's [auth] section (None: FOU is not authenticated)."""
    modules = tuple(sec.items("modules", _game_module, default=[]))
    pps = sec.integer("rate_limit_pps", default=0, lo=0, hi=10**9)
    burst = sec.integer("rate_limit_burst", default=0, lo=0, hi=10**9)
    fou_port = sec.port("fou_port", default=5555)
    pop = sec.ipv4("pop_address") if sec.has("pop_address") else None
    top = {"modules": modules, "pps": pps, "burst": burst, "fou_port": fou_port}
    rule_secs = sec.tables("rule")
    if len(rule_secs) > maps_def.MAX_RULES:
        raise ConfigError(
            f"{sec.key('rule')}: {len(rule_secs)} rules, at most {maps_def.MAX_RULES}"
        )
    names: dict[str, str] = {}  # rule name -> the rule that has it (xdp.rule[i])
    rules = tuple(_rule(r, i + 1, top, names) for i, r in enumerate(rule_secs))
    cfg = XdpConfig(
        modules=modules,
        interface=sec.string("interface") if sec.has("interface") else None,
        mode=sec.string("mode", default="auto", choices=MODES),
        pin_dir=sec.string("pin_dir", default="/sys/fs/bpf/bifrost"),
        pop_address=pop,
        fou_port=fou_port,
        ipv6=sec.string("ipv6", default="pass", choices=("pass", "drop")),
        game_servers=tuple(sec.items("game_servers", _ipv4, default=[])),
        anycast=tuple(sec.items("anycast", _ipv4, default=[])),
        block=tuple(sec.items("block", _prefix, default=[])),
        allow=tuple(sec.items("allow", _prefix, default=[])),
        rate_limit_pps=pps,
        rate_limit_burst=burst,
        nexthop_ttl_ms=sec.integer("nexthop_ttl_ms", default=1000, lo=1, hi=3_600_000),
        srcds_ttl_s=sec.integer("srcds_ttl_s", default=300, lo=1, hi=86_400),
        metrics_address=str(sec.ipv4("metrics_address", "127.0.0.1")),
        metrics_port=sec.integer("metrics_port", default=9470, lo=0, hi=65535),
        rules=rules,
        auth_keys=auth.keys if auth else (),
        flood_new_sources_pps=sec.integer("flood_new_sources_pps", default=1000, lo=1, hi=10**9),
        flood_budget_pps=sec.integer("flood_budget_pps", default=1000, lo=1, hi=10**9),
        tunnel_mtu=sec.integer("tunnel_mtu", default=0, lo=0, hi=65535),
    )
    if 0 < cfg.tunnel_mtu < maps_def.MIN_TUNNEL_MTU:
        raise sec.fail(
            "tunnel_mtu",
            cfg.tunnel_mtu,
            f"expected 0 (the route MTU) or {maps_def.MIN_TUNNEL_MTU}..65535: the smallest "
            "IPv4 datagram (68) plus FOU's 28 bytes",
        )
    if auth is None:
        for r in rules:
            if r.modules:
                raise ConfigError(
                    f"{sec.key('rule')}[{r.id - 1}].modules: rule {r.name!r} enables game "
                    f"module {r.modules[0]!r}, which needs [auth]: a module validates "
                    "clients only from authenticated FOU return traffic"
                )
    if rules and pop is None:
        raise ConfigError(f"{sec.key('pop_address')}: required when rules are configured")
    _check_overlaps(sec, rules)
    sec.done()
    return cfg


def _check_overlaps(sec: Reader, rules: tuple[Rule, ...]) -> None:
    seen: dict[tuple[ipaddress.IPv4Address, int, str], str] = {}
    total = 0
    for r in rules:
        keys = r.port_keys()
        total += len(keys)
        for p in keys:
            k = (r.anycast, p, r.proto)
            if k in seen:
                what = f"port {p}" if p else "every port"
                raise ConfigError(
                    f"{sec.key('rule')}[{r.id - 1}].ports: {r.anycast} {r.proto} {what} "
                    f"is already covered by rule {seen[k]!r}"
                )
            seen[k] = r.name
    if total > maps_def.MAX_RULE_KEYS:
        raise ConfigError(
            f"{sec.key('rule')}: the port ranges expand to {total} entries, "
            f"at most {maps_def.MAX_RULE_KEYS}"
        )
