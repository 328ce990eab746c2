"""Config changes as one generation switch (BPF_PROG_TEST_RUN): a staged config is
invisible until the switch, rule ids follow names, capacities and names are checked
before any write, and a failed write leaves the config in force untouched."""

from __future__ import annotations

import errno
import ipaddress
from dataclasses import replace

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from xdp_harness import (
    BLOCKED,
    CLIENT,
    GS,
    GS_SRCDS,
    VIP,
    VIP_NO_RULES,
    Xdp,
    client_frame,
    make_config,
)

from bifrost.xdp import libbpf, maps

pytestmark = pytest.mark.bpf

# Connectionless (FF FF FF FF): the SRCDS module lets it through unvalidated.
CONNECTIONLESS = b"\xff\xff\xff\xffq0000000000"


def to(dport: int, src: str = CLIENT, dst: str = VIP) -> bytes:
    return client_frame(IP(src=src, dst=dst) / UDP(sport=40000, dport=dport) / CONNECTIONLESS)


def where(xdp: Xdp, frame: bytes) -> str:
    """The game server a frame is encapsulated to, else the verdict."""
    res = xdp.run(frame)
    return Ether(res.data)[IP].dst if res.verdict == "TX" else res.verdict


def config_a_b():
    """A: the harness config. B: rule 'game' removed from the middle of nowhere
    (it is first), 'srcds' moved to GS, the block list and the extra anycast gone."""
    a = make_config()
    srcds = replace(a.rules[1], game_server=a.rules[0].game_server, modules=())
    b = replace(
        a,
        rules=(srcds, *a.rules[2:]),
        block=(),
        anycast=(),
        game_servers=tuple(a.all_game_servers()),  # same next-hop slots as the harness's
    )
    return a, b


def behaviour(xdp: Xdp) -> dict[str, str]:
    return {
        "game": where(xdp, to(27015)),
        "srcds": where(xdp, to(27020)),
        "blocked": where(xdp, to(27020, src=BLOCKED)),
        "extra anycast": where(xdp, to(1234, dst=VIP_NO_RULES)),
    }


A_BEHAVIOUR = {"game": GS, "srcds": GS_SRCDS, "blocked": "DROP", "extra anycast": "DROP"}
B_BEHAVIOUR = {"game": "DROP", "srcds": GS, "blocked": GS, "extra anycast": "PASS"}


def test_a_staged_config_is_invisible_until_the_switch(xdp: Xdp) -> None:
    """Every config map (arrays, overflow hash, anycast/gameserver bits, the shared
    firewall trie) is written for the other generation while the one in force keeps
    answering exactly as before; the switch changes all of it at once."""
    _, b = config_a_b()
    assert behaviour(xdp) == A_BEHAVIOUR
    rep = maps.apply(xdp.ms, b, xdp.ns_per_jiffy, switch=False)
    assert rep.generation == 1 and maps.active_generation(xdp.ms) == 0
    assert behaviour(xdp) == A_BEHAVIOUR
    maps.switch_generation(xdp.ms, rep.generation)
    assert behaviour(xdp) == B_BEHAVIOUR
    # And back: generation 0 is rewritten (its stale entries removed) while 1 serves.
    a, _ = config_a_b()
    rep = maps.apply(xdp.ms, a, xdp.ns_per_jiffy, switch=False)
    assert rep.generation == 0
    assert behaviour(xdp) == B_BEHAVIOUR
    maps.switch_generation(xdp.ms, 0)
    assert behaviour(xdp) == A_BEHAVIOUR


def test_rule_ids_follow_names_not_positions(xdp: Xdp) -> None:
    """Removing the first rule renumbers no other: 'srcds' keeps id 2 (counters, rate
    buckets); a new rule gets an id nobody held, with zeroed counters."""
    _, b = config_a_b()
    before = xdp.counts()
    xdp.apply(b)
    assert maps.rule_names(xdp.ms, b) == {2: "srcds", 3: "limited", 4: "tcp"}
    assert where(xdp, to(27020)) == GS
    assert xdp.counts()[(2, "tx_forward")] == before.get((2, "tx_forward"), 0) + 1
    new = replace(b.rules[0], name="new", ports=((27030, 27030),))
    rep = maps.apply(xdp.ms, replace(b, rules=(*b.rules, new)), xdp.ns_per_jiffy)
    assert rep.new_ids == {"new": 5}
    assert not any(rid == 5 for rid, _ in xdp.counts())
    assert where(xdp, to(27030)) == GS
    assert xdp.counts()[(5, "tx_forward")] == 1


def test_capacities_and_names_are_checked_before_any_write(xdp: Xdp) -> None:
    cfg = make_config()
    before = {name: maps._hash_entries(xdp.ms[name]) for name in ("anycast", "firewall")}
    many = tuple(ipaddress.IPv4Address(f"100.64.{i // 256}.{i % 256}") for i in range(1025))
    with pytest.raises(maps.ApplyError, match=r"xdp.anycast .*: 1027 entries, at most 1024"):
        xdp.apply(replace(cfg, anycast=many))
    twice = replace(cfg, rules=(*cfg.rules, replace(cfg.rules[0], ports=((9000, 9000),))))
    with pytest.raises(maps.ApplyError, match=r"xdp.rule\[4\].name = 'game': also the name"):
        xdp.apply(twice)
    after = {name: maps._hash_entries(xdp.ms[name]) for name in ("anycast", "firewall")}
    assert after == before
    assert maps.active_generation(xdp.ms) == 0
    assert behaviour(xdp) == A_BEHAVIOUR


def test_a_failed_write_leaves_the_config_in_force(
    xdp: Xdp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel refusing an update half-way (here: the 5th, as ENOMEM) stops the apply
    before the switch: the packets keep the old config, and a retry completes."""
    _, b = config_a_b()
    real = libbpf.Map.update
    calls = []

    def failing(self: libbpf.Map, key: bytes, value: bytes, flags: int = 0) -> None:
        calls.append(key)
        if len(calls) == 5:
            raise libbpf.BpfError(errno.ENOMEM, "map update: Cannot allocate memory")
        real(self, key, value, flags)

    monkeypatch.setattr(libbpf.Map, "update", failing)
    with pytest.raises(maps.ApplyError, match="generation 0 stays in force, unchanged"):
        xdp.apply(b)
    assert maps.active_generation(xdp.ms) == 0
    assert behaviour(xdp) == A_BEHAVIOUR
    monkeypatch.setattr(libbpf.Map, "update", real)
    xdp.apply(b)
    assert behaviour(xdp) == B_BEHAVIOUR
