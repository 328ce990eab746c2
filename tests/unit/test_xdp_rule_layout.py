"""How the loader lays out forward rules (rule_slots / rule_overflow) and the firewall trie."""

from __future__ import annotations

import ipaddress

import pytest

from bifrost.xdp import maps, maps_def

pytestmark = pytest.mark.unit

S = maps_def.BY_NAME
VIP = ipaddress.IPv4Address("198.51.100.10").packed


def colliding_ports(n: int, vip: bytes = VIP, proto: int = 17) -> list[int]:
    """n destination ports whose keys share one rule slot (the first such slot)."""
    by_slot: dict[int, list[int]] = {}
    for port in range(1, 65536):
        group = by_slot.setdefault(maps_def.rule_slot_index(vip, port, proto), [])
        group.append(port)
        if len(group) == n:
            return group
    raise AssertionError(f"no {n} colliding ports")


def key(port: int, proto: int = 17) -> bytes:
    return S["rule_key"].pack(addr=VIP, port=port, proto=proto)


def test_slot_index_is_in_range_and_spreads_a_port_range() -> None:
    idx = {maps_def.rule_slot_index(VIP, p, 17) for p in range(27000, 29000)}
    assert all(0 <= i < maps_def.RULE_SLOTS for i in idx)
    assert len(idx) > 1900, "2000 consecutive ports must not pile into few slots"
    assert maps_def.rule_slot_index(VIP, 27015, 17) != maps_def.rule_slot_index(VIP, 27015, 6)


def test_colliding_keys_smallest_takes_the_slot_others_overflow() -> None:
    a, b, c = colliding_ports(3)
    lone = next(p for p in range(1000, 2000) if maps_def.rule_slot_index(VIP, p, 17) not in {
        maps_def.rule_slot_index(VIP, q, 17) for q in (a, b, c)
    })  # fmt: skip
    slots, overflow = maps.place_rule_keys({key(c): 3, key(a): 1, key(b): 2, key(lone): 4})
    assert len(slots) == 2 and len(overflow) == 2
    idx = maps_def.rule_slot_index(VIP, a, 17).to_bytes(4, "little")
    first = min((key(p), p) for p in (a, b, c))[1]
    slot = S["rule_slot"].unpack(slots[idx])
    assert slot["port"] == first and slot["flags"] == maps_def.SLOT_OVERFLOW
    assert {S["rule_key"].unpack(k)["port"] for k in overflow} == {a, b, c} - {first}
    lone_slot = slots[maps_def.rule_slot_index(VIP, lone, 17).to_bytes(4, "little")]
    assert S["rule_slot"].unpack(lone_slot) == {
        "addr": VIP, "port": lone, "proto": 17, "flags": 0, "rule_id": 4,
    }  # fmt: skip
    again = maps.place_rule_keys({key(a): 1, key(b): 2, key(c): 3, key(lone): 4})
    assert again == (slots, overflow), "placement depends only on the keys"


def _fw(block: list[str], allow: list[str]) -> dict[str, int]:
    nets = maps.firewall_prefixes(
        [ipaddress.IPv4Network(n) for n in block], [ipaddress.IPv4Network(n) for n in allow]
    )
    return {str(n): v for n, v in nets}


def test_firewall_trie_keeps_allow_winning_under_longest_match() -> None:
    allow, block = maps_def.FW_ALLOW, maps_def.FW_BLOCK
    got = _fw(
        block=["203.0.113.0/24", "10.1.2.0/24", "10.9.0.0/16", "192.0.2.0/24"],
        allow=["203.0.113.7/32", "10.1.0.0/16", "192.0.2.0/24"],
    )
    assert got == {
        "203.0.113.7/32": allow,  # allow inside block: the longer allow prefix wins
        "203.0.113.0/24": block,
        "10.1.0.0/16": allow,  # a block prefix inside it is left out: allow wins
        "10.9.0.0/16": block,
        "192.0.2.0/24": allow,  # the same prefix in both lists: allowed
    }
    assert _fw([], []) == {}
