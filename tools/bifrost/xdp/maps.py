"""The program's maps from Python: open them, apply the config, read the counters."""

from __future__ import annotations

import ipaddress
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from bifrost.xdp import libbpf, maps_def
from bifrost.xdp.config import PROTOS, XdpConfig
from bifrost.xdp.libbpf import Map

S = maps_def.BY_NAME

# name -> (key size, value size, per CPU). Sizes come from maps_def, like the C side.
MAP_SPECS: dict[str, tuple[int, int, bool]] = {
    "settings": (4, S["settings"].size, False),
    "forward_rules": (S["rule_key"].size, S["rule"].size, False),
    "rule_modules": (4, S["rule_modules"].size, False),
    "anycast": (4, S["anycast"].size, False),
    "gameservers": (4, S["gameserver"].size, False),
    "blocklist": (S["lpm_key"].size, 4, False),
    "allowlist": (S["lpm_key"].size, 4, False),
    "rate_limit": (S["rate_key"].size, S["rate_state"].size, False),
    "nexthops": (4, S["nexthop"].size, False),
    "gs_nexthops": (4, S["nexthop"].size, False),
    "srcds_clients": (S["srcds_key"].size, S["srcds_state"].size, False),
    "counters": (4, S["counter"].size, True),
}
# Maps whose content is the config (apply() makes them equal to it).
CONFIG_MAPS = (
    "forward_rules",
    "rule_modules",
    "anycast",
    "gameservers",
    "blocklist",
    "allowlist",
    "settings",
)


@dataclass
class MapSet:
    """The program's maps by name; from a freshly loaded object or from the pins."""

    maps: dict[str, Map] = field(default_factory=dict)

    @classmethod
    def from_fds(cls, fds: dict[str, int]) -> MapSet:
        out = cls()
        for name, fd in fds.items():
            if name in MAP_SPECS:
                k, v, percpu = MAP_SPECS[name]
                out.maps[name] = Map(fd, k, v, percpu)
        return out

    @classmethod
    def from_pins(cls, pin_dir: Path) -> MapSet:
        if not pin_dir.is_dir():
            raise FileNotFoundError(f"{pin_dir}: no pinned maps (is the program attached?)")
        fds = {p.name: libbpf.get_pinned(str(p)) for p in pin_dir.iterdir() if p.name in MAP_SPECS}
        return cls.from_fds(fds)

    def __getitem__(self, name: str) -> Map:
        return self.maps[name]

    def __contains__(self, name: str) -> bool:
        return name in self.maps


def _u32(v: int) -> bytes:
    return struct.pack("=I", v)


def _ip(a: ipaddress.IPv4Address) -> bytes:
    return a.packed


def rate_params(pps: int, burst: int) -> tuple[int, int]:
    """(cost_ns, burst_ns) of a token bucket; (0, 0) = unlimited."""
    if pps <= 0:
        return 0, 0
    cost = max(1, 1_000_000_000 // pps)
    return cost, cost * (burst if burst > 0 else pps)


def desired(cfg: XdpConfig, ns_per_jiffy: int = 0) -> dict[str, dict[bytes, bytes]]:
    """Every config-owned map's wanted content (ns_per_jiffy: see calibrate_clock)."""
    out: dict[str, dict[bytes, bytes]] = {name: {} for name in CONFIG_MAPS}
    slots = {g: i for i, g in enumerate(cfg.all_game_servers())}
    for r in cfg.rules:
        cost, burst = rate_params(r.rate_limit_pps, r.rate_limit_burst)
        value = S["rule"].pack(
            id=r.id,
            gs_addr=r.game_server,
            fou_port=r.fou_port,
            flags=maps_def.RULE_CACHE if r.cache else 0,
            rate_cost_ns=cost,
            gs_slot=slots[r.game_server],
            rate_burst_ns=burst,
        )
        for port in r.port_keys():
            key = S["rule_key"].pack(addr=r.anycast, port=port, proto=PROTOS[r.proto])
            out["forward_rules"][key] = value
        bits = 0
        for m in r.modules:
            bits |= maps_def.MODULE_BITS[m]
        out["rule_modules"][_u32(r.id)] = S["rule_modules"].pack(bits=bits)
    for a in cfg.all_anycast():
        out["anycast"][_ip(a)] = S["anycast"].pack()
    for g in cfg.all_game_servers():
        out["gameservers"][_ip(g)] = S["gameserver"].pack()
    for name, nets in (("blocklist", cfg.block), ("allowlist", cfg.allow)):
        for n in nets:
            key = S["lpm_key"].pack(prefixlen=n.prefixlen, addr=n.network_address)
            out[name][key] = _u32(1)
    flags = (maps_def.SET_HAVE_BLOCK if cfg.block else 0) | (
        maps_def.SET_HAVE_ALLOW if cfg.allow else 0
    )
    out["settings"][_u32(0)] = S["settings"].pack(
        pop_addr=cfg.pop_address,
        fou_port=cfg.fou_port,
        ipv6_policy=maps_def.IPV6_DROP if cfg.ipv6 == "drop" else maps_def.IPV6_PASS,
        flags=flags,
        nexthop_ttl_ns=cfg.nexthop_ttl_ms * 1_000_000,
        srcds_ttl_ns=cfg.srcds_ttl_s * 1_000_000_000,
        ns_per_jiffy=ns_per_jiffy,
    )
    return out


ARRAY_MAPS = ("settings", "rule_modules")


@dataclass
class ApplyReport:
    written: dict[str, int] = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        parts = [f"{n}: +{self.written.get(n, 0)} -{self.removed.get(n, 0)}" for n in CONFIG_MAPS]
        return ", ".join(parts)


def apply(ms: MapSet, cfg: XdpConfig, ns_per_jiffy: int | None = None) -> ApplyReport:
    """Make the config-owned maps equal to cfg, in place, without reloading.

    New and changed entries are written before stale ones are removed, and the
    block/allow flags in settings go last, so a packet never sees a rule
    half-applied in the unsafe direction (a list flag on with the list empty).
    """
    rep = ApplyReport()
    if ns_per_jiffy is None:  # keep the running program's calibration
        current = ms["settings"].lookup(_u32(0)) or bytes(S["settings"].size)
        ns_per_jiffy = S["settings"].unpack(current)["ns_per_jiffy"]
    want = desired(cfg, ns_per_jiffy)
    for name in CONFIG_MAPS:
        m = ms[name]
        written = 0
        for key, value in want[name].items():
            if m.lookup(key) != value:
                m.update(key, value)
                written += 1
        removed = 0
        if name in ARRAY_MAPS:
            zero = bytes(m.value_size)
            for key in list(m.keys()):
                if key not in want[name] and m.lookup(key) != zero:
                    m.update(key, zero)
                    removed += 1
        else:
            for key in list(m.keys()):
                if key not in want[name]:
                    m.delete(key)
                    removed += 1
        rep.written[name] = written
        rep.removed[name] = removed
    return rep


KNOWN_HZ = (100, 250, 300, 1000)


def calibrate_clock(clock_prog_fd: int, seconds: float = 0.2) -> int:
    """ns per jiffy, measured with the object's bifrost_clock program; 0 if unsure.

    The program's expiry clock is bpf_jiffies64() (a load, inlined) scaled by
    this; 0 makes it fall back to the bpf_ktime_get_coarse_ns() helper.
    """

    def sample() -> tuple[int, float]:
        out = libbpf.test_run(clock_prog_fd, bytes(64)).data
        return struct.unpack("=Q", out[:8])[0], time.monotonic()

    j0, t0 = sample()
    time.sleep(seconds)
    j1, t1 = sample()
    hz = (j1 - j0) / (t1 - t0)
    best = min(KNOWN_HZ, key=lambda k: abs(k - hz))
    if abs(best - hz) > 0.15 * best:
        return 0
    return 1_000_000_000 // best


def flush(m: Map) -> int:
    """Delete every entry (e.g. nexthops after a route change); returns how many."""
    n = 0
    for key in list(m.keys()):
        n += m.delete(key)
    return n


@dataclass(frozen=True)
class Count:
    packets: int
    bytes: int


def counters(ms: MapSet) -> dict[tuple[int, str], Count]:
    """Non-zero counters summed over CPUs, by (rule id, reason); rule 0 = no rule."""
    m = ms["counters"]
    out = {}
    nr = len(maps_def.REASONS)
    for idx in range((maps_def.MAX_RULES + 1) * nr):
        per_cpu = m.lookup_percpu(_u32(idx))
        pk = by = 0
        for v in per_cpu:
            c = S["counter"].unpack(v)
            pk += c["packets"]
            by += c["bytes"]
        if pk:
            out[(idx // nr, maps_def.REASONS[idx % nr][0])] = Count(pk, by)
    return out


def reset_counters(ms: MapSet) -> None:
    m = ms["counters"]
    zero = bytes(m.value_size)
    for idx in range((maps_def.MAX_RULES + 1) * len(maps_def.REASONS)):
        m.update(_u32(idx), zero)
