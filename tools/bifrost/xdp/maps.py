"""The program's maps from Python: open them, apply the config, read the counters."""

from __future__ import annotations

import ipaddress
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bifrost.xdp import libbpf, maps_def
from bifrost.xdp.config import PROTOS, XdpConfig
from bifrost.xdp.libbpf import Map

S = maps_def.BY_NAME
D = maps_def


@dataclass(frozen=True)
class MapSpec:
    """What this Python side reads and writes a map as; checked against the kernel's
    view of a pinned map before any use (a map from another build may differ)."""

    type: int
    key_size: int
    value_size: int  # per CPU for per-CPU maps
    max_entries: int

    @property
    def percpu(self) -> bool:
        return self.type == libbpf.BPF_MAP_TYPE_PERCPU_ARRAY


A, H, LRU = libbpf.BPF_MAP_TYPE_ARRAY, libbpf.BPF_MAP_TYPE_HASH, libbpf.BPF_MAP_TYPE_LRU_HASH
# Sizes from maps_def, like the C side (xdp/maps.h); tests/bpf/test_xdp_binding.py
# checks this table against the built object's own map definitions.
MAP_SPECS: dict[str, MapSpec] = {
    "settings": MapSpec(A, 4, S["settings"].size, 1),
    "rules": MapSpec(A, 4, S["rule"].size, D.MAX_RULES + 1),
    "rule_slots": MapSpec(A, 4, S["rule_slot"].size, D.RULE_SLOTS),
    "rule_overflow": MapSpec(H, S["rule_key"].size, S["rule_ref"].size, D.MAX_RULE_KEYS),
    "rule_modules": MapSpec(A, 4, S["rule_modules"].size, D.MAX_RULES + 1),
    "anycast": MapSpec(H, 4, S["anycast"].size, D.MAX_ANYCAST),
    "gameservers": MapSpec(H, 4, S["gameserver"].size, D.MAX_GAMESERVERS),
    "firewall": MapSpec(libbpf.BPF_MAP_TYPE_LPM_TRIE, S["lpm_key"].size, 4, 2 * D.MAX_PREFIXES),
    "rate_limit": MapSpec(LRU, S["rate_key"].size, S["rate_state"].size, D.MAX_RATE_SOURCES),
    "nexthops": MapSpec(LRU, 4, S["nexthop"].size, D.MAX_NEXTHOPS),
    "gs_nexthops": MapSpec(A, 4, S["nexthop"].size, D.MAX_GAMESERVERS),
    "srcds_clients": MapSpec(LRU, S["srcds_key"].size, S["srcds_state"].size, D.MAX_SRCDS_CLIENTS),
    "counters": MapSpec(
        libbpf.BPF_MAP_TYPE_PERCPU_ARRAY, 4, S["counter"].size, (D.MAX_RULES + 1) * len(D.REASONS)
    ),
}


class MapMismatch(ValueError):
    """A pinned map is not what this bifrost reads and writes."""


def check_pinned(name: str, info: libbpf.MapDef) -> None:
    """Refuse a pinned map whose kernel-side type, sizes or capacity differ from MAP_SPECS."""
    spec = MAP_SPECS[name]
    want = libbpf.MapDef(name, spec.type, spec.key_size, spec.value_size, spec.max_entries, 0)
    diff = [d for d in want.differences(info) if not d.startswith("flags")]
    if diff:
        raise MapMismatch(
            f"pinned map {name}: the kernel's map differs from this bifrost's layout "
            f"({'; '.join(diff)}): it was made by another build; swap the program with "
            "`bifrost xdp upgrade` (or detach and attach again)"
        )


# Maps whose content is the config (apply() makes them equal to it), in the
# order apply() writes them: settings first (its firewall flag on with the trie
# still empty costs a lookup, never a miss), then what a lookup reaches last
# first, so a packet never follows a slot to a rule that is not there yet.
CONFIG_MAPS = (
    "settings",
    "rule_modules",
    "rules",
    "rule_overflow",
    "rule_slots",
    "anycast",
    "gameservers",
    "firewall",
)


@dataclass
class MapSet:
    """The program's maps by name; from a freshly loaded object or from the pins.

    Maps opened from pins own their fds: close() (or `with`) releases them.
    """

    maps: dict[str, Map] = field(default_factory=dict)

    @classmethod
    def from_fds(cls, fds: dict[str, int]) -> MapSet:
        """Maps of a loaded object (which keeps owning the fds)."""
        out = cls()
        for name, fd in fds.items():
            if name in MAP_SPECS:
                sp = MAP_SPECS[name]
                out.maps[name] = Map(fd, sp.key_size, sp.value_size, sp.percpu)
        return out

    @classmethod
    def from_pins(cls, pin_dir: Path) -> MapSet:
        """Open the pinned maps, each checked against the kernel's view of it."""
        if not pin_dir.is_dir():
            raise FileNotFoundError(f"{pin_dir}: no pinned maps (is the program attached?)")
        out = cls()
        try:
            for p in sorted(pin_dir.iterdir()):
                if p.name not in MAP_SPECS:
                    continue
                fd = libbpf.get_pinned(str(p))
                sp = MAP_SPECS[p.name]
                out.maps[p.name] = Map(fd, sp.key_size, sp.value_size, sp.percpu, owned=True)
                check_pinned(p.name, libbpf.map_info(fd))
        except BaseException:
            out.close()
            raise
        return out

    def close(self) -> None:
        for m in self.maps.values():
            m.close()

    def __enter__(self) -> MapSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
    keys: dict[bytes, int] = {}  # rule key -> rule id
    for r in cfg.rules:
        cost, burst = rate_params(r.rate_limit_pps, r.rate_limit_burst)
        out["rules"][_u32(r.id)] = S["rule"].pack(
            id=r.id,
            gs_addr=r.game_server,
            fou_port=r.fou_port,
            flags=maps_def.RULE_CACHE if r.cache else 0,
            rate_cost_ns=cost,
            gs_slot=slots[r.game_server],
            rate_burst_ns=burst,
        )
        for port in r.port_keys():
            keys[S["rule_key"].pack(addr=r.anycast, port=port, proto=PROTOS[r.proto])] = r.id
        bits = 0
        for m in r.modules:
            bits |= maps_def.MODULE_BITS[m]
        out["rule_modules"][_u32(r.id)] = S["rule_modules"].pack(bits=bits)
    out["rule_slots"], out["rule_overflow"] = place_rule_keys(keys)
    for a in cfg.all_anycast():
        out["anycast"][_ip(a)] = S["anycast"].pack()
    for g in cfg.all_game_servers():
        out["gameservers"][_ip(g)] = S["gameserver"].pack()
    for net, verdict in firewall_prefixes(cfg.block, cfg.allow):
        key = S["lpm_key"].pack(prefixlen=net.prefixlen, addr=net.network_address)
        out["firewall"][key] = _u32(verdict)
    flags = maps_def.SET_HAVE_FIREWALL if out["firewall"] else 0
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


def firewall_prefixes(
    block: Iterable[ipaddress.IPv4Network], allow: Iterable[ipaddress.IPv4Network]
) -> list[tuple[ipaddress.IPv4Network, int]]:
    """The firewall trie's (prefix, FW_*) entries for the block and allow lists.

    An allowed source is exempt from the block list whatever the prefix
    lengths, but the trie answers with the longest match; so a block prefix
    inside (or equal to) an allow prefix is left out, and then the longest
    match means the same as "allowed, else blocked, else neither".
    """
    allowed = set(allow)
    out = [(n, maps_def.FW_ALLOW) for n in sorted(allowed)]
    for n in sorted(set(block)):
        if not any(n.supernet(new_prefix=p) in allowed for p in range(n.prefixlen + 1)):
            out.append((n, maps_def.FW_BLOCK))
    return out


def place_rule_keys(keys: dict[bytes, int]) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
    """(rule_slots, rule_overflow) contents for rule keys -> rule ids.

    Each key belongs at rule_slot_index(key); where several do, the smallest key
    (bytewise, so placement depends only on the config) takes the slot, which
    gets SLOT_OVERFLOW, and the others go to the overflow hash.
    """
    by_slot: dict[int, list[bytes]] = {}
    for key in sorted(keys):
        k = S["rule_key"].unpack(key)
        by_slot.setdefault(maps_def.rule_slot_index(k["addr"], k["port"], k["proto"]), []).append(
            key
        )
    slots: dict[bytes, bytes] = {}
    overflow: dict[bytes, bytes] = {}
    for idx, group in by_slot.items():
        k = S["rule_key"].unpack(group[0])
        slots[_u32(idx)] = S["rule_slot"].pack(
            addr=k["addr"],
            port=k["port"],
            proto=k["proto"],
            flags=maps_def.SLOT_OVERFLOW if len(group) > 1 else 0,
            rule_id=keys[group[0]],
        )
        for key in group[1:]:
            overflow[key] = S["rule_ref"].pack(rule_id=keys[key])
    return slots, overflow


ARRAY_MAPS = ("settings", "rule_modules", "rules", "rule_slots")


@dataclass
class ApplyReport:
    written: dict[str, int] = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        parts = [f"{n}: +{self.written.get(n, 0)} -{self.removed.get(n, 0)}" for n in CONFIG_MAPS]
        return ", ".join(parts)


def _current(m: Map, name: str, is_array: bool) -> dict[bytes, bytes]:
    """A map's entries; for arrays only the non-zero ones (zero is "empty")."""
    if is_array:
        return {_u32(i): v for i, v in m.nonzero(MAP_SPECS[name].max_entries).items()}
    out = {}
    for key in list(m.keys()):
        value = m.lookup(key)
        if value is not None:
            out[key] = value
    return out


# A rule_slot's key (address, port, proto) is the bytes before its flags.
_SLOT_KEY_END = S["rule_slot"].offsets()["flags"]


def _same_slot_key(a: bytes, b: bytes) -> bool:
    """rule_slot values for the same key."""
    return a[:_SLOT_KEY_END] == b[:_SLOT_KEY_END]


def apply(ms: MapSet, cfg: XdpConfig, ns_per_jiffy: int | None = None) -> ApplyReport:
    """Make the config-owned maps equal to cfg, in place, without reloading.

    All new and changed entries are written first, in CONFIG_MAPS order, then
    stale entries are removed in the reverse order. So a packet never sees a
    config half-applied in the unsafe direction: the firewall flag off while
    the trie has entries to enforce, or a slot naming a rule id whose rule is
    not written yet. A slot that changes key is emptied before it is refilled,
    so a packet racing the rewrite cannot pair one key with the other's rule
    id. (A rule changed
    in place, e.g. a new game-server address, can be read half-written by a
    packet in flight, as with any BPF array: that one packet may be lost.)
    """
    rep = ApplyReport()
    if ns_per_jiffy is None:  # keep the running program's calibration
        current = ms["settings"].lookup(_u32(0)) or bytes(S["settings"].size)
        ns_per_jiffy = S["settings"].unpack(current)["ns_per_jiffy"]
    want = desired(cfg, ns_per_jiffy)
    have = {name: _current(ms[name], name, name in ARRAY_MAPS) for name in CONFIG_MAPS}
    for name in CONFIG_MAPS:
        m = ms[name]
        written = 0
        for key, value in want[name].items():
            old = have[name].get(key)
            if old == value:
                continue
            if name == "rule_slots" and old is not None and not _same_slot_key(old, value):
                m.update(key, bytes(m.value_size))
            m.update(key, value)
            written += 1
        rep.written[name] = written
    for name in reversed(CONFIG_MAPS):
        m = ms[name]
        stale = [key for key in have[name] if key not in want[name]]
        for key in stale:
            if name in ARRAY_MAPS:
                m.update(key, bytes(m.value_size))
            else:
                m.delete(key)
        rep.removed[name] = len(stale)
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
