"""Forward rules through the direct-mapped rule_slots table and its overflow hash,
and the one-trie firewall, as the program sees them (BPF_PROG_TEST_RUN).

The loader places rule keys with maps_def.rule_slot_index(); the program finds
them with bfx_rule_hash(). Every forwarded packet below is also a check that
the two functions agree.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from xdp_harness import (
    GS,
    GS_NO_RULES,
    GS_SRCDS,
    GS_TCP,
    VIP,
    Xdp,
    _ip,
    _rule,
    client_frame,
    fou_frame,
    make_config,
)

from bifrost.xdp import maps, maps_def

pytestmark = pytest.mark.bpf

ALL_GS = tuple(_ip(g) for g in (GS, GS_SRCDS, GS_TCP, GS_NO_RULES))


def colliding_ports(n: int) -> list[int]:
    by_slot: dict[int, list[int]] = {}
    packed = ipaddress.IPv4Address(VIP).packed
    for port in range(1, 65536):
        group = by_slot.setdefault(maps_def.rule_slot_index(packed, port, 17), [])
        group.append(port)
        if len(group) == n:
            return group
    raise AssertionError(f"no {n} colliding ports")


def to_vip(dport: int, src: str = "192.0.2.50") -> bytes:
    return client_frame(IP(src=src, dst=VIP) / UDP(sport=40000, dport=dport) / b"game")


def outer_dst(xdp: Xdp, frame: bytes) -> str | None:
    res = xdp.run(frame)
    return Ether(res.data)[IP].dst if res.verdict == "TX" else None


def overflow_ports(xdp: Xdp) -> set[int]:
    st = maps_def.BY_NAME["rule_key"]
    return {st.unpack(k)["port"] for k in maps.in_force(xdp.ms, "rule_overflow")}


def test_colliding_keys_each_reach_their_own_rule(xdp: Xdp) -> None:
    a, b, c = colliding_ports(3)
    cfg = make_config(
        game_servers=ALL_GS,
        rules=(
            _rule(1, "a", VIP, ((a, a),), GS),
            _rule(2, "b", VIP, ((b, b),), GS_SRCDS),
        ),
    )
    xdp.apply(cfg)
    key = maps_def.BY_NAME["rule_key"]
    first, second = sorted((a, b), key=lambda p: key.pack(addr=VIP, port=p, proto=17))
    assert overflow_ports(xdp) == {second}, "the bytewise smaller key holds the slot"
    assert outer_dst(xdp, to_vip(a)) == GS
    assert outer_dst(xdp, to_vip(b)) == GS_SRCDS
    # Same slot, no rule: the overflow hash is asked and says no.
    assert xdp.run(to_vip(c)).verdict == "DROP"
    assert xdp.counts()[(0, "drop_no_rule")] == 1
    # The return path's no-open-relay check uses the same lookup.
    reply = IP(src=VIP, dst="192.0.2.50") / UDP(sport=b, dport=40000) / b"state"
    assert xdp.run(fou_frame(GS_SRCDS, reply)).verdict == "TX"
    assert xdp.run(fou_frame(GS, reply)).verdict == "DROP", "b is not GS's service"

    # Without the slot's owner the other key moves into the slot.
    xdp.apply(replace(cfg, rules=tuple(r for r in cfg.rules if r.ports[0][0] == second)))
    assert overflow_ports(xdp) == set()
    assert outer_dst(xdp, to_vip(second)) == (GS if second == a else GS_SRCDS)
    assert xdp.run(to_vip(first)).verdict == "DROP"


def test_every_port_of_a_wide_range_is_found(xdp: Xdp) -> None:
    cfg = make_config(game_servers=ALL_GS, rules=(_rule(1, "wide", VIP, ((20000, 23999),), GS),))
    xdp.apply(cfg)
    spilled = overflow_ports(xdp)
    assert 0 < len(spilled) < 400, "4000 keys in 131072 slots: a few collide"
    ports = set(range(20000, 24000, 13)) | spilled
    assert {p: outer_dst(xdp, to_vip(p)) for p in ports} == {p: GS for p in ports}
    assert xdp.run(to_vip(24000)).verdict == "DROP"


def test_firewall_allow_wins_inside_a_blocked_prefix_and_around_one(xdp: Xdp) -> None:
    net = ipaddress.IPv4Network
    cfg = make_config(
        block=(net("100.64.1.0/24"), net("198.18.0.0/15")),
        allow=(net("100.64.0.0/10"), net("198.18.5.5/32")),
    )
    xdp.apply(cfg)
    verdicts = {
        src: xdp.run(to_vip(27015, src)).verdict
        for src in ("100.64.1.9", "100.65.0.1", "198.18.5.5", "198.18.5.6", "192.0.2.50")
    }
    assert verdicts == {
        "100.64.1.9": "TX",  # block /24 inside allow /10: allowed
        "100.65.0.1": "TX",
        "198.18.5.5": "TX",  # allow /32 inside block /15
        "198.18.5.6": "DROP",
        "192.0.2.50": "TX",  # in neither list
    }
    assert xdp.counts()[(1, "drop_blocked")] == 1
    xdp.apply(replace(cfg, block=(), allow=()))
    assert xdp.run(to_vip(27015, "198.18.5.6")).verdict == "TX", "lists emptied"
    (settings,) = maps.in_force(xdp.ms, "settings").values()
    s = maps_def.BY_NAME["settings"].unpack(settings)
    assert s["flags"] & maps_def.SET_HAVE_FIREWALL == 0
