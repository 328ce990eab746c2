"""The program's maps from Python: open them, apply the config, read the counters."""

from __future__ import annotations

import hashlib
import ipaddress
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
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
    flags: int = 0

    @property
    def percpu(self) -> bool:
        return self.type == libbpf.BPF_MAP_TYPE_PERCPU_ARRAY


A, H, LRU = libbpf.BPF_MAP_TYPE_ARRAY, libbpf.BPF_MAP_TYPE_HASH, libbpf.BPF_MAP_TYPE_LRU_HASH
# Sizes from maps_def, like the C side (xdp/maps.h); tests/bpf/test_xdp_binding.py
# checks this table against the built object's own map definitions.
G = D.GENERATIONS
MAP_SPECS: dict[str, MapSpec] = {
    "config_gen": MapSpec(A, 4, 4, 1),
    "settings": MapSpec(A, 4, S["settings"].size, G),
    "rule_names": MapSpec(A, 4, S["rule_name"].size, D.MAX_RULES + 1),
    "rules": MapSpec(A, 4, S["rule"].size, G * (D.MAX_RULES + 1)),
    # mmap-able: apply reads a generation's 131072 slots without a per-slot copy.
    "rule_slots": MapSpec(A, 4, S["rule_slot"].size, G * D.RULE_SLOTS, libbpf.BPF_F_MMAPABLE),
    "rule_overflow": MapSpec(H, S["rule_key"].size, S["rule_ref"].size, G * D.MAX_RULE_KEYS),
    "rule_modules": MapSpec(A, 4, S["rule_modules"].size, G * (D.MAX_RULES + 1)),
    "addr_slots": MapSpec(A, 4, S["addr_slot"].size, G * D.ADDR_SLOTS),
    "anycast": MapSpec(H, 4, S["anycast"].size, G * D.MAX_ANYCAST),
    "gameservers": MapSpec(H, 4, S["gameserver"].size, G * D.MAX_GAMESERVERS),
    "firewall": MapSpec(libbpf.BPF_MAP_TYPE_LPM_TRIE, S["lpm_key"].size, 4, G * 2 * D.MAX_PREFIXES),
    "rate_limit": MapSpec(LRU, S["rate_key"].size, S["rate_state"].size, D.MAX_RATE_SOURCES),
    "nexthops": MapSpec(LRU, 4, S["nexthop"].size, D.MAX_NEXTHOPS),
    "gs_nexthops": MapSpec(A, 4, S["nexthop"].size, D.MAX_GAMESERVERS),
    "game_clients": MapSpec(A, 4, S["game_client_set"].size, D.GAME_CLIENT_SETS),
    "game_clients_overflow": MapSpec(
        LRU, S["srcds_key"].size, S["srcds_state"].size, D.MAX_GAME_CLIENTS_OVERFLOW
    ),
    "game_handshake_budget": MapSpec(
        libbpf.BPF_MAP_TYPE_PERCPU_ARRAY, 4, S["rate_state"].size, D.MAX_RULES + 1
    ),
    "counters": MapSpec(
        libbpf.BPF_MAP_TYPE_PERCPU_ARRAY, 4, S["counter"].size, (D.MAX_RULES + 1) * len(D.REASONS)
    ),
    "flood": MapSpec(libbpf.BPF_MAP_TYPE_PERCPU_ARRAY, 4, S["flood_state"].size, 1),
    "rate_known": MapSpec(A, 4, 8, D.RATE_FILTER_BITS // 64),
    "flood_budget": MapSpec(
        libbpf.BPF_MAP_TYPE_PERCPU_ARRAY, 4, S["rate_state"].size, D.MAX_RULES + 1
    ),
    "icmp_budget": MapSpec(libbpf.BPF_MAP_TYPE_PERCPU_ARRAY, 4, S["rate_state"].size, 2),
}


# Where SRCDS kept its validated clients before they moved into game_clients (an
# LRU hash: a helper call on every forward packet). No object has it now; an
# upgrade carries a pinned one over (carry_srcds_clients), and `xdp detach` removes
# it with the rest of the pin dir.
LEGACY_SRCDS_CLIENTS = "srcds_clients"
LEGACY_SRCDS_SPEC = MapSpec(LRU, S["srcds_key"].size, S["srcds_state"].size, D.MAX_SRCDS_CLIENTS)


class MapMismatch(ValueError):
    """A pinned map is not what this bifrost reads and writes."""


def check_pinned(name: str, info: libbpf.MapDef) -> None:
    """Refuse a pinned map whose kernel-side type, sizes or capacity differ from MAP_SPECS."""
    spec = MAP_SPECS[name]
    want = libbpf.MapDef(
        name, spec.type, spec.key_size, spec.value_size, spec.max_entries, spec.flags
    )
    mask = libbpf.BPF_F_MMAPABLE  # the only flag this side depends on
    diff = want.differences(replace(info, flags=info.flags & mask))
    if diff:
        raise MapMismatch(
            f"pinned map {name}: the kernel's map differs from this bifrost's layout "
            f"({'; '.join(diff)}): it was made by another build; swap the program with "
            "`bifrost xdp upgrade` (or detach and attach again)"
        )


# Maps whose content is the config: apply() writes the generation not in force
# (see config_gen in xdp/maps.h), then switches config_gen.
CONFIG_MAPS = (
    "settings",
    "addr_slots",
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
                mm = bool(sp.flags & libbpf.BPF_F_MMAPABLE)
                out.maps[name] = Map(fd, sp.key_size, sp.value_size, sp.percpu, mmapable=mm)
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
                mm = bool(sp.flags & libbpf.BPF_F_MMAPABLE)
                out.maps[p.name] = Map(
                    fd, sp.key_size, sp.value_size, sp.percpu, owned=True, mmapable=mm
                )
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


def auth_keys_field(keys: tuple[bytes, ...]) -> bytes:
    """settings.auth_keys: every key in wire order, unused slots repeating the send
    key (the program compares all AUTH_KEYS slots); zeros when auth is off."""
    if not keys:
        return bytes(D.AUTH_KEYS * D.AUTH_KEY_BYTES)
    if len(keys) > D.AUTH_KEYS or any(len(k) != D.AUTH_KEY_BYTES for k in keys):
        raise ValueError(f"auth keys: 1..{D.AUTH_KEYS} keys of {D.AUTH_KEY_BYTES} bytes")
    return b"".join(keys + (keys[0],) * (D.AUTH_KEYS - len(keys)))


def _stride(name: str) -> int:
    """Entries per generation of a config array (index = gen * stride + i)."""
    return MAP_SPECS[name].max_entries // D.GENERATIONS


def _digest(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()[:16]


def desired(
    cfg: XdpConfig, ns_per_jiffy: int = 0, ids: dict[str, int] | None = None, gen: int = 0
) -> dict[str, dict[bytes, bytes]]:
    """Every config-owned map's wanted content in generation gen (keys: array indices
    with the generation's offset, hash keys with its gen field). ids: rule name -> id
    (default: the config's own ids); ns_per_jiffy: see calibrate_clock.

    anycast/gameservers values carry only gen's bit and firewall values only gen's
    verdict: apply() merges them with the other generation's.
    """
    ids = ids if ids is not None else {r.name: r.id for r in cfg.rules}
    out: dict[str, dict[bytes, bytes]] = {name: {} for name in CONFIG_MAPS}
    slots = {g: i for i, g in enumerate(cfg.all_game_servers())}
    keys: dict[bytes, int] = {}  # rule key -> rule id
    rules_base = gen * _stride("rules")
    for r in cfg.rules:
        rid = ids[r.name]
        cost, burst = rate_params(r.rate_limit_pps, r.rate_limit_burst)
        out["rules"][_u32(rules_base + rid)] = S["rule"].pack(
            id=rid,
            gs_addr=r.game_server,
            fou_port=r.fou_port,
            flags=maps_def.RULE_CACHE if r.cache else 0,
            rate_cost_ns=cost,
            gs_slot=slots[r.game_server],
            rate_burst_ns=burst,
        )
        for port in r.port_keys():
            key = S["rule_key"].pack(addr=r.anycast, port=port, proto=PROTOS[r.proto], gen=gen)
            keys[key] = rid
        bits = 0
        for m in r.modules:
            bits |= maps_def.MODULE_BITS[m]
        out["rule_modules"][_u32(rules_base + rid)] = S["rule_modules"].pack(bits=bits)
    out["rule_slots"], out["rule_overflow"] = place_rule_keys(keys, gen)
    out["addr_slots"] = place_addresses(cfg, gen)
    for a in cfg.all_anycast():
        out["anycast"][_ip(a)] = S["anycast"].pack(gens=1 << gen)
    for g in cfg.all_game_servers():
        out["gameservers"][_ip(g)] = S["gameserver"].pack(gens=1 << gen)
    for net, verdict in firewall_prefixes(cfg.block, cfg.allow):
        key = S["lpm_key"].pack(prefixlen=net.prefixlen, addr=net.network_address)
        out["firewall"][key] = _u32(verdict)
    flags = maps_def.SET_HAVE_FIREWALL if out["firewall"] else 0
    if cfg.auth_keys:
        flags |= maps_def.SET_AUTH
    flood_cost, flood_burst = rate_params(cfg.flood_budget_pps, cfg.flood_budget_pps)
    out["settings"][_u32(gen)] = S["settings"].pack(
        pop_addr=cfg.pop_address,
        fou_port=cfg.fou_port,
        ipv6_policy=maps_def.IPV6_DROP if cfg.ipv6 == "drop" else maps_def.IPV6_PASS,
        flags=flags,
        nexthop_ttl_ns=cfg.nexthop_ttl_ms * 1_000_000,
        srcds_ttl_ns=cfg.srcds_ttl_s * 1_000_000_000,
        ns_per_jiffy=ns_per_jiffy,
        flood_new_sources=cfg.flood_new_sources_pps,
        auth_keys=auth_keys_field(cfg.auth_keys),
        flood_cost_ns=flood_cost,
        flood_burst_ns=flood_burst,
        tunnel_mtu=cfg.tunnel_mtu or maps_def.NO_TUNNEL_MTU,
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


def place_addresses(cfg: XdpConfig, gen: int = 0) -> dict[bytes, bytes]:
    """addr_slots content for generation gen: each anycast and game-server address at
    addr_slot_index() with what it is; where several share a slot, the bytewise
    smallest takes it with SLOT_OVERFLOW, and the program asks the anycast and
    gameservers hashes for the others (they hold every address)."""
    what: dict[bytes, int] = {}
    for a in cfg.all_anycast():
        what[a.packed] = what.get(a.packed, 0) | D.ADDR_ANYCAST
    for g in cfg.all_game_servers():
        what[g.packed] = what.get(g.packed, 0) | D.ADDR_GAMESERVER
    by_slot: dict[int, list[bytes]] = {}
    for addr in sorted(what):
        by_slot.setdefault(D.addr_slot_index(addr), []).append(addr)
    out = {}
    for idx, group in by_slot.items():
        flags = what[group[0]] | (D.SLOT_OVERFLOW if len(group) > 1 else 0)
        out[_u32(gen * D.ADDR_SLOTS + idx)] = S["addr_slot"].pack(addr=group[0], flags=flags)
    return out


def place_rule_keys(
    keys: dict[bytes, int], gen: int = 0
) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
    """(rule_slots, rule_overflow) contents for rule keys -> rule ids, in generation gen.

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
    base = gen * D.RULE_SLOTS
    for idx, group in by_slot.items():
        k = S["rule_key"].unpack(group[0])
        slots[_u32(base + idx)] = S["rule_slot"].pack(
            addr=k["addr"],
            port=k["port"],
            proto=k["proto"],
            flags=maps_def.SLOT_OVERFLOW if len(group) > 1 else 0,
            rule_id=keys[group[0]],
        )
        for key in group[1:]:
            overflow[key] = S["rule_ref"].pack(rule_id=keys[key])
    return slots, overflow


ARRAY_MAPS = ("settings", "addr_slots", "rule_modules", "rules", "rule_slots")


@dataclass
class ApplyReport:
    generation: int = 0  # the generation in force after the apply
    written: dict[str, int] = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)
    new_ids: dict[str, int] = field(default_factory=dict)  # rules given an id by this apply

    def __str__(self) -> str:
        parts = [f"{n}: +{self.written.get(n, 0)} -{self.removed.get(n, 0)}" for n in CONFIG_MAPS]
        return f"generation {self.generation}; " + ", ".join(parts)


class ApplyError(RuntimeError):
    """Writing the next generation failed; the one in force is untouched."""


def check_capacity(cfg: XdpConfig) -> None:
    """Refuse, before any write, a config the maps cannot hold or whose rules' ids
    would be ambiguous (ids come from rule names)."""
    limits = (
        ("xdp.anycast (with the rules' anycast)", len(cfg.all_anycast()), D.MAX_ANYCAST),
        (
            "xdp.game_servers (with the rules' game_server)",
            len(cfg.all_game_servers()),
            D.MAX_GAMESERVERS,
        ),
        ("xdp.block", len(set(cfg.block)), D.MAX_PREFIXES),
        ("xdp.allow", len(set(cfg.allow)), D.MAX_PREFIXES),
        ("xdp.rule", len(cfg.rules), D.MAX_RULES),
        ("xdp.rule[].ports", sum(len(r.port_keys()) for r in cfg.rules), D.MAX_RULE_KEYS),
    )
    for key, n, most in limits:
        if n > most:
            raise ApplyError(f"{key}: {n} entries, at most {most}; nothing was written")
    seen: dict[str, int] = {}
    for i, r in enumerate(cfg.rules):
        if r.name in seen:
            raise ApplyError(
                f"xdp.rule[{i}].name = {r.name!r}: also the name of xdp.rule[{seen[r.name]}]; "
                "a rule's name is its identity (stable id, counters); nothing was written"
            )
        seen[r.name] = i


def active_generation(ms: MapSet) -> int:
    return struct.unpack("=I", ms["config_gen"].lookup(_u32(0)) or bytes(4))[0] & 1


def assign_ids(ms: MapSet, cfg: XdpConfig, active: int) -> tuple[dict[str, int], dict[int, bytes]]:
    """(rule name -> id, {id: name digest} of ids newly given to a name).

    A name keeps the id rule_names records for it, so removing a rule renumbers
    no other. A new name gets the lowest id that no rule of the generation in
    force uses, preferring ids no name ever held.
    """
    recorded = {i: v for i, v in ms["rule_names"].nonzero(D.MAX_RULES + 1).items()}
    by_digest = {v: i for i, v in recorded.items()}
    stride = _stride("rules")
    in_force = {i - active * stride for i in ms["rules"].nonzero(stride, active * stride)}
    ids: dict[str, int] = {}
    new: dict[int, bytes] = {}
    pending = []
    for r in cfg.rules:
        d = _digest(r.name)
        if d in by_digest:
            ids[r.name] = by_digest[d]
        else:
            pending.append((r.name, d))
    taken = in_force | set(ids.values())
    free = [i for i in range(1, D.MAX_RULES + 1) if i not in taken]
    free.sort(key=lambda i: (i in recorded, i))
    for (name, d), rid in zip(pending, free, strict=False):
        ids[name] = rid
        new[rid] = d
    if len(ids) < len(cfg.rules):
        raise ApplyError(
            f"xdp.rule: no free rule id (the config in force and this one use more than "
            f"{D.MAX_RULES} ids between them); apply a config without the removed rules "
            "first; nothing was written"
        )
    return ids, new


def _longest(members: dict[ipaddress.IPv4Network, int], net: ipaddress.IPv4Network) -> int:
    """The verdict of the longest prefix in members covering net (0: none)."""
    for plen in range(net.prefixlen, -1, -1):
        v = members.get(net.supernet(new_prefix=plen) if plen < net.prefixlen else net)
        if v is not None:
            return v
    return 0


def _fw_net(key: bytes) -> ipaddress.IPv4Network:
    k = S["lpm_key"].unpack(key)
    return ipaddress.IPv4Network((k["addr"], k["prefixlen"]))


def _apply_firewall(m: Map, want: dict[bytes, bytes], active: int, target: int) -> tuple[int, int]:
    """Write target's half of every firewall entry (see the firewall map in maps.h);
    the active half of an existing entry is never changed, and a new entry's is the
    active generation's longest-match verdict, so the config in force answers the
    same throughout. (written, removed)."""
    bits, member, mask = D.FW_GEN_BITS, D.FW_MEMBER, (1 << D.FW_GEN_BITS) - 1

    def half(v: int, g: int) -> int:
        return (v >> (g * bits)) & mask

    have = {k: struct.unpack("=I", v)[0] for k, v in _hash_entries(m).items()}
    active_members = {
        _fw_net(k): half(v, active) & D.FW_VERDICT_MASK
        for k, v in have.items()
        if half(v, active) & member
    }
    target_members = {_fw_net(k): struct.unpack("=I", v)[0] for k, v in want.items()}
    union = {k for k, v in have.items() if half(v, active) & member} | set(want)
    removed = 0
    for k in have:
        if k not in union:
            m.delete(k)  # nobody's own prefix: the longest match falls back to the same verdicts
            removed += 1
    written = 0
    for k in sorted(union, key=lambda k: _fw_net(k).prefixlen):
        net = _fw_net(k)
        a = half(have[k], active) if k in have else _longest(active_members, net)
        t = (
            (target_members[net] | member)
            if net in target_members
            else _longest(target_members, net)
        )
        value = (a << (active * bits)) | (t << (target * bits))
        if have.get(k) != value:
            m.update(k, _u32(value))
            written += 1
    return written, removed


def _hash_entries(m: Map) -> dict[bytes, bytes]:
    out = {}
    for key in list(m.keys()):
        value = m.lookup(key)
        if value is not None:
            out[key] = value
    return out


def apply(
    ms: MapSet, cfg: XdpConfig, ns_per_jiffy: int | None = None, switch: bool = True
) -> ApplyReport:
    """Make the config in force equal to cfg in one step, without reloading.

    cfg is written into the generation not in force (see config_gen in
    xdp/maps.h), then config_gen is switched in one store: a packet sees the
    old config or the new one, never a mix. Capacities and names are checked
    before any write; a failed write leaves the generation in force untouched
    (ApplyError). On maps never applied to (a fresh object), generation 0 is
    filled in place. switch=False writes the generation and leaves the switch
    to switch_generation() (report.generation names it).
    """
    check_capacity(cfg)
    active = active_generation(ms)
    fresh = not any(ms["settings"].nonzero(D.GENERATIONS).values())
    target = active if fresh else 1 - active
    if ns_per_jiffy is None:  # keep the running program's calibration
        current = ms["settings"].lookup(_u32(active)) or bytes(S["settings"].size)
        ns_per_jiffy = S["settings"].unpack(current)["ns_per_jiffy"]
    ids, new_ids = assign_ids(ms, cfg, active)
    want = desired(cfg, ns_per_jiffy, ids, target)
    rep = ApplyReport(target)
    rep.new_ids = {n: i for n, i in ids.items() if i in new_ids}
    try:
        _write_generation(ms, want, active, target, rep)
        nr = len(D.REASONS)
        for rid, digest in new_ids.items():
            ms["rule_names"].update(_u32(rid), digest)
            for reason in range(nr):  # a new rule's counters start at zero
                ms["counters"].update(_u32(rid * nr + reason), bytes(S["counter"].size))
    except OSError as e:
        raise ApplyError(
            f"writing config generation {target} failed ({e}); generation {active} "
            "stays in force, unchanged"
        ) from e
    if switch:
        switch_generation(ms, target)
    return rep


def switch_generation(ms: MapSet, gen: int) -> None:
    """Put generation gen in force: one 4-byte store the next packet reads."""
    ms["config_gen"].update(_u32(0), _u32(gen))


def _write_generation(
    ms: MapSet, want: dict[str, dict[bytes, bytes]], active: int, target: int, rep: ApplyReport
) -> None:
    for name in ARRAY_MAPS:
        m, stride = ms[name], _stride(name)
        have = {_u32(i): v for i, v in m.nonzero(stride, target * stride).items()}
        changed = [(k, v) for k, v in want[name].items() if have.get(k) != v]
        stale = [k for k in have if k not in want[name]]
        for k, v in changed:
            m.update(k, v)
        for k in stale:
            m.update(k, bytes(m.value_size))
        rep.written[name], rep.removed[name] = len(changed), len(stale)
    m = ms["rule_overflow"]
    gen_at = S["rule_key"].offsets()["gen"]
    have = {k: v for k, v in _hash_entries(m).items() if k[gen_at] == target}
    stale = [k for k in have if k not in want["rule_overflow"]]
    for k in stale:
        m.delete(k)
    changed = [(k, v) for k, v in want["rule_overflow"].items() if have.get(k) != v]
    for k, v in changed:
        m.update(k, v)
    rep.written["rule_overflow"], rep.removed["rule_overflow"] = len(changed), len(stale)
    for name in ("anycast", "gameservers"):
        m, bit = ms[name], 1 << target
        have_bits = {k: struct.unpack("=I", v)[0] for k, v in _hash_entries(m).items()}
        written = removed = 0
        for k, old in have_bits.items():
            if k not in want[name] and old & bit:
                if old & ~bit:
                    m.update(k, _u32(old & ~bit))
                else:
                    m.delete(k)
                removed += 1
        for k in want[name]:
            old = have_bits.get(k, 0)
            if not old & bit:
                m.update(k, _u32(old | bit))
                written += 1
        rep.written[name], rep.removed[name] = written, removed
    rep.written["firewall"], rep.removed["firewall"] = _apply_firewall(
        ms["firewall"], want["firewall"], active, target
    )


def in_force(ms: MapSet, name: str) -> dict[bytes, bytes]:
    """The entries of config array or rule_overflow name in the generation in force."""
    gen = active_generation(ms)
    if name == "rule_overflow":
        at = S["rule_key"].offsets()["gen"]
        return {k: v for k, v in _hash_entries(ms[name]).items() if k[at] == gen}
    stride = _stride(name)
    return {_u32(i): v for i, v in ms[name].nonzero(stride, gen * stride).items()}


def auth_in_force(ms: MapSet) -> int:
    """How many distinct FOU keys the generation in force accepts; 0: auth is off."""
    raw = ms["settings"].lookup(_u32(active_generation(ms)))
    if raw is None:
        return 0
    st = S["settings"].unpack(raw)
    if not st["flags"] & D.SET_AUTH:
        return 0
    keys = st["auth_keys"]
    n = D.AUTH_KEY_BYTES
    return len({keys[i : i + n] for i in range(0, len(keys), n)})


def rule_names(ms: MapSet, cfg: XdpConfig) -> dict[int, str]:
    """Rule id -> name for cfg's rules that have an id (for counters)."""
    by_digest = {_digest(r.name): r.name for r in cfg.rules}
    recorded = ms["rule_names"].nonzero(D.MAX_RULES + 1)
    return {i: by_digest[d] for i, d in recorded.items() if d in by_digest}


def config_modules(cfg: XdpConfig) -> dict[str, list[str]]:
    """Game module -> the rules that need it."""
    out: dict[str, list[str]] = {}
    for r in cfg.rules:
        for m in r.modules:
            out.setdefault(m, []).append(r.name)
    return out


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


def program_now(ns_per_jiffy: int, clock_prog_fd: int) -> int:
    """bfx_now() as the program computes it (xdp/maps.h): jiffies times ns_per_jiffy
    (bifrost_clock reads bpf_jiffies64()), else bpf_ktime_get_coarse_ns()."""
    if ns_per_jiffy:
        out = libbpf.test_run(clock_prog_fd, bytes(64)).data
        return struct.unpack("=Q", out[:8])[0] * ns_per_jiffy
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC_COARSE)


def game_client_put(game_clients: Map, key: bytes, state: bytes, now: int) -> bool:
    """Insert a validated client (srcds_key, srcds_state) into game_clients as
    bfx_game_validate() does: its own way, else the first free or expired one (a live
    client is never replaced). False when its set is full of live clients: the
    caller puts it in game_clients_overflow and marks the set.

    A read-modify-write from here, not under the set's spin lock: an insert by the
    program into the same set (of 32768) between the two calls is lost; that client's
    next session reply validates it again, and its packets meanwhile pass on the
    rule's budget (modules/budget.h)."""
    client, service, cport, sport = struct.unpack("=4s4sHH", key)
    idx = _u32(D.game_set_index(client, cport, service, sport))
    codec = S["game_client_set"]
    raw = game_clients.lookup(idx)
    if raw is None:
        raise ValueError(f"game_clients: no set at index {int.from_bytes(idx, 'little')}")
    v = codec.unpack(raw)
    want = (int.from_bytes(client, "little"), int.from_bytes(service, "little"))
    ports = D.game_ports(cport, sport)
    ways = range(D.GAME_CLIENT_WAYS)
    mine = [w for w in ways if (v["client"][w], v["service"][w], v["ports"][w]) == (*want, ports)]
    free = [w for w in ways if v["state"][3 * w] <= now]
    if not mine and not free:
        return False
    way = (mine or free)[0]
    exp, last, credit = struct.unpack("=QQQ", state)
    if mine:  # keep the later expiry and the bucket the program holds
        exp = max(exp, v["state"][3 * way])
        last, credit = v["state"][3 * way + 1], v["state"][3 * way + 2]
    fields = {k: list(v[k]) for k in ("client", "service", "ports", "state")}
    fields["client"][way], fields["service"][way], fields["ports"][way] = (*want, ports)
    fields["state"][3 * way : 3 * way + 3] = [exp, last, credit]
    game_clients.update(idx, codec.pack(lock=0, flags=v["flags"], **fields))
    return True


def carry_srcds_clients(old: Map, ms: MapSet, now: int) -> int:
    """Copy SRCDS's validated clients from a pinned srcds_clients (an object before
    SRCDS moved into game_clients) into ms's game_clients (overflow: the LRU, the set
    marked), live ones only; returns how many. Idempotent: a client copied before
    keeps its way and its bucket."""
    n = 0
    over = ms["game_clients_overflow"]
    for key, state in old.dump().items():
        if struct.unpack_from("=Q", state)[0] <= now:
            continue
        if not game_client_put(ms["game_clients"], key, state, now):
            client, service, cport, sport = struct.unpack("=4s4sHH", key)
            idx = _u32(D.game_set_index(client, cport, service, sport))
            codec = S["game_client_set"]
            v = codec.unpack(ms["game_clients"].lookup(idx) or bytes(codec.size))
            over.update(key, state)
            ms["game_clients"].update(
                idx, codec.pack(**{**v, "lock": 0, "flags": v["flags"] | D.GAME_SET_OVERFLOW})
            )
        n += 1
    return n
