"""An off-path spoofer against the POP's XDP program (issue 10), via BPF_PROG_TEST_RUN.

Threat model: any packet, any source address (game servers' and the POP's
included), any rate; the spoofer never sees POP <-> game-server traffic, so it
does not know the FOU key. Each case of issue 10's "What was found" that is the
XDP program's (1: open relay, 2: SRCDS validation by a spoofed accept, 4: the
rate limiter failing open under source churn, 6: martians both ways), and
variants, must relay, validate and move nothing, and be counted under a reason.
Every "nothing happened" is followed by a positive control that does happen.
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from xdp_harness import (
    CLIENT,
    CLIENT_DMAC,
    GS,
    GS_NO_RULES,
    GS_SRCDS,
    KEY,
    KEY_OLD,
    NH_DMAC,
    NH_SMAC,
    POP,
    VIP,
    VIP2,
    Xdp,
    auth_config,
    client_frame,
    fou_frame,
    make_config,
)
from xdp_modules_harness import game_clients

from bifrost.codegen import render_module_config
from bifrost.xdp import build, libbpf, maps, maps_def
from bifrost.xdp.config import XdpConfig
from bifrost.xdp.libbpf import BpfObject

pytestmark = pytest.mark.bpf

S = maps_def.BY_NAME
ACCEPT = b"\xff\xff\xff\xffB" + bytes(16)  # SRCDS S2C_CONNECTION: the server accepted
# Shorter than a netchannel header (12 bytes): only a validated client's passes. A
# longer one also passes on the rule's budget (tests/bpf/test_xdp_srcds_move.py).
NETCHAN = b"\x01\x02netchan"
VICTIM = "203.0.113.99"  # where a reflector would send its traffic


def counted(xdp: Xdp, frame: bytes, counter: tuple[int, str]) -> libbpf.TestRun:
    """Run frame; exactly one counter moves, and it is counter."""
    before = xdp.counts()
    res = xdp.run(frame)
    after = xdp.counts()
    assert after.get(counter, 0) - before.get(counter, 0) == 1, (counter, after)
    assert sum(after.values()) - sum(before.values()) == 1, "one counter per packet"
    return res


def relayed_reply(dst: str = VICTIM, payload: bytes = b"reflected", sport: int = 27015) -> IP:
    """The inner packet of issue 10 case 1: the service's address -> anywhere."""
    return IP(src=VIP, dst=dst) / UDP(sport=sport, dport=53) / payload


def udp_from(src: str, dport: int = 27015, payload: bytes = b"hello", dst: str = VIP) -> bytes:
    return client_frame(IP(src=src, dst=dst) / UDP(sport=40000, dport=dport) / payload)


def entries(m: libbpf.Map) -> int:
    return sum(1 for _ in m.keys())  # noqa: SIM118 (a BPF map, not a dict)


# ---------------------------------------------------------------- case 1: relay


def _with_tail(frame: bytes, udp_extra: bytes, pad: bytes = b"") -> bytes:
    """frame (a FOU frame without token) with udp_extra inside the UDP datagram (its
    length and the outer IP length count it) and pad after it (Ethernet padding)."""
    pkt = Ether(frame)
    inner = bytes(pkt[UDP].payload)
    return fou_frame(pkt[IP].src, IP(inner), token=udp_extra) + pad


def _token_variants() -> dict[str, bytes]:
    base = fou_frame(GS, relayed_reply(CLIENT))
    return {
        "no token": base,
        "zero token": _with_tail(base, bytes(8)),
        "wrong key": _with_tail(base, bytes.fromhex("0123456789abcdee")),
        "key byte-reversed": _with_tail(base, KEY[::-1]),
        "key truncated to 7 bytes": _with_tail(base, KEY[:7]),
        "key and one more byte": _with_tail(base, KEY + b"\x00"),
        "junk byte, then the key": _with_tail(base, b"\x00" + KEY),
        "key twice": _with_tail(base, KEY + KEY),
        # The key where the length rule does not put it: after the UDP datagram.
        "key in the Ethernet padding": _with_tail(base, b"", pad=KEY),
    }


TOKENS = _token_variants()


@pytest.mark.parametrize("variant", list(TOKENS), ids=list(TOKENS))
def test_return_without_the_exact_token_relays_nothing(xdp: Xdp, variant: str) -> None:
    xdp.apply(auth_config())
    frame = TOKENS[variant]
    res = counted(xdp, frame, (0, "drop_auth"))
    assert res.verdict == "DROP" and res.data == frame
    # Positive control: the same reply with the send key, then with the old key.
    for key in (KEY, KEY_OLD):
        ok = counted(xdp, fou_frame(GS, relayed_reply(CLIENT), token=key), (1, "tx_return"))
        assert ok.verdict == "TX"
        assert ok.data == bytes(Ether(src=NH_SMAC, dst=CLIENT_DMAC) / relayed_reply(CLIENT))


def test_open_relay_needs_the_key_and_a_service_and_a_client(xdp: Xdp) -> None:
    """Issue 10 case 1 and variants: outer source forged to a game server (or to the
    POP itself, or a game server with no rules), inner service -> a victim."""
    xdp.apply(auth_config())
    spoofed = (
        (fou_frame(GS, relayed_reply()), (0, "drop_auth")),
        (fou_frame(GS, relayed_reply(), token=bytes(8)), (0, "drop_auth")),
        (fou_frame(POP, relayed_reply(), token=KEY), (0, "drop_unknown_gs")),
        (fou_frame("192.0.2.1", relayed_reply(), token=KEY), (0, "drop_unknown_gs")),
        (fou_frame(GS_NO_RULES, relayed_reply(), token=KEY), (0, "drop_relay")),
        # Even with the key, not the service behind that machine: no relay.
        (fou_frame(GS_SRCDS, relayed_reply(), token=KEY), (0, "drop_relay")),
        (fou_frame(GS, IP(src="8.8.8.8", dst=VICTIM) / UDP(), token=KEY), (0, "drop_relay")),
    )  # fmt: skip
    for frame, counter in spoofed:
        assert counted(xdp, frame, counter).verdict == "DROP", counter
    # The victim is not a client with a route here: the reply is dropped, not sent.
    assert counted(xdp, fou_frame(GS, relayed_reply(), token=KEY), (1, "drop_no_route"))
    assert counted(xdp, fou_frame(GS, relayed_reply(CLIENT), token=KEY), (1, "tx_return"))


def test_key_rollover_is_per_generation(xdp: Xdp) -> None:
    """AUTH.md rollover: append the new key, move it first, remove the old one; a
    packet sees one generation's keys, and the forward path sends the first."""
    new, old = KEY, KEY_OLD
    ret = {k: fou_frame(GS, relayed_reply(CLIENT), token=k) for k in (new, old)}
    fwd = udp_from(CLIENT)
    for keys, accepted in (
        ((old,), {old}),
        ((old, new), {old, new}),
        ((new, old), {old, new}),
        ((new,), {new}),
    ):
        xdp.apply(make_config(auth_keys=keys))
        for k, frame in ret.items():
            want = "TX" if k in accepted else "DROP"
            assert xdp.run(frame).verdict == want, (keys, k)
        out = xdp.run(fwd)
        assert out.verdict == "TX" and out.data[-8:] == keys[0], "the first key is sent"
        outer = Ether(out.data)
        assert outer[IP].len == len(fwd) - 14 + 28 + 8 and outer[UDP].len == len(fwd) - 14 + 16


def test_forward_with_auth_counts_the_token_in_lengths_and_mtu(xdp: Xdp) -> None:
    xdp.apply(auth_config())
    fits = IP(src=CLIENT, dst=VIP) / UDP(sport=40000, dport=27015) / (b"m" * (1500 - 28 - 28 - 8))
    out = counted(xdp, client_frame(fits), (1, "tx_forward"))
    assert out.verdict == "TX" and len(out.data) == 14 + 1500
    assert bytes(Ether(out.data)[UDP].payload) == bytes(fits) + KEY
    big = IP(src=CLIENT, dst=VIP) / UDP(sport=40000, dport=27015) / (b"m" * (1500 - 28 - 28 - 7))
    assert counted(xdp, client_frame(big), (1, "drop_too_big")).verdict == "DROP"
    # Ethernet padding behind a short datagram: the token replaces it.
    short = IP(src=CLIENT, dst=VIP) / UDP(sport=40000, dport=27015)
    out = counted(xdp, client_frame(short) + bytes(18), (1, "tx_forward"))
    assert out.data[14 + 28 :] == bytes(short) + KEY


# ---------------------------------------------------------------- case 2: SRCDS


def test_spoofed_accept_validates_nobody(xdp: Xdp) -> None:
    """Issue 10 case 2: `FF FF FF FF B` in a spoofed FOU packet (no or a wrong token),
    also as a flood of accepts for many clients: nothing validated, all counted."""
    xdp.apply(auth_config())
    netchan = udp_from(CLIENT, 27020, NETCHAN)
    accept = IP(src=VIP, dst=CLIENT) / UDP(sport=27020, dport=40000) / ACCEPT
    for frame in (
        fou_frame(GS_SRCDS, accept),
        fou_frame(GS_SRCDS, accept, token=bytes(8)),
        fou_frame(GS_SRCDS, accept, token=KEY[:4] + KEY_OLD[4:]),
        fou_frame(GS_SRCDS, accept, token=KEY + b"x"),
    ):
        assert counted(xdp, frame, (0, "drop_auth")).verdict == "DROP"
        assert counted(xdp, netchan, (2, "drop_module")).verdict == "DROP"
    for n in range(1000):
        who = f"198.18.{n // 250}.{n % 250 + 1}"
        flood = IP(src=VIP, dst=who) / UDP(sport=27020, dport=40000) / ACCEPT
        xdp.run(fou_frame(GS_SRCDS, flood, token=bytes.fromhex(f"{n + 1:016x}")))
    assert xdp.counts()[(0, "drop_auth")] == 1004
    assert game_clients(xdp) == {}, "no spoofed accept validated anyone"
    # Positive control: the game server's authenticated accept validates the client.
    assert counted(xdp, fou_frame(GS_SRCDS, accept, token=KEY), (2, "tx_return"))
    assert len(game_clients(xdp)) == 1
    assert counted(xdp, netchan, (2, "tx_forward")).verdict == "TX"


def test_auth_off_validates_nobody(xdp: Xdp) -> None:
    """Without [auth] (config validation refuses game modules then) the program
    still learns nothing from FOU: an accept is relayed but validates no client."""
    xdp.apply(make_config())
    accept = IP(src=VIP, dst=CLIENT) / UDP(sport=27020, dport=40000) / ACCEPT
    assert counted(xdp, fou_frame(GS_SRCDS, accept), (2, "tx_return")).verdict == "TX"
    assert game_clients(xdp) == {}
    assert counted(xdp, udp_from(CLIENT, 27020, NETCHAN), (2, "drop_module")).verdict == "DROP"
    # Control: the client is validated once the accept is authenticated.
    xdp.apply(auth_config())
    assert xdp.run(fou_frame(GS_SRCDS, accept, token=KEY)).verdict == "TX"
    assert counted(xdp, udp_from(CLIENT, 27020, NETCHAN), (2, "tx_forward")).verdict == "TX"


# ---------------------------------------------------------------- case 6: martians

MARTIANS = (
    "0.0.0.0",
    "0.1.2.3",
    "127.0.0.1",
    "127.255.255.254",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
)


@pytest.mark.parametrize("auth", [False, True], ids=["auth-off", "auth-on"])
def test_return_to_martians_and_game_servers_is_dropped(xdp: Xdp, auth: bool) -> None:
    xdp.apply(auth_config() if auth else make_config())
    token = KEY if auth else b""
    # GS sends for rule 1: itself, another game server, one with no rules, the POP.
    for dst in (*MARTIANS, GS, GS_SRCDS, GS_NO_RULES, POP):
        frame = fou_frame(GS, relayed_reply(dst), token=token)
        res = counted(xdp, frame, (1, "drop_martian"))
        assert res.verdict == "DROP" and res.data == frame, dst
    ok = counted(xdp, fou_frame(GS, relayed_reply(CLIENT), token=token), (1, "tx_return"))
    assert ok.verdict == "TX"


def test_martian_and_own_client_sources_are_dropped(xdp: Xdp) -> None:
    xdp.apply(auth_config())
    for src in (*MARTIANS, POP, VIP, VIP2, "198.51.100.12"):
        for frame, rule in ((udp_from(src), 1), (udp_from(src, 7777, dst=VIP2), 3)):
            res = counted(xdp, frame, (rule, "drop_martian"))
            assert res.verdict == "DROP" and res.data == frame, src
    assert entries(xdp.ms["rate_limit"]) == 0, "a martian source inserts no bucket"
    assert counted(xdp, udp_from(CLIENT), (1, "tx_forward")).verdict == "TX"


# ---------------------------------------------------------------- case 4: rate state


def _guarded(cfg: XdpConfig, pps: int = 1000, **kw) -> XdpConfig:
    """cfg with the SRCDS rule (id 2) also rate limited."""
    rules = tuple(
        replace(r, rate_limit_pps=pps, rate_limit_burst=pps) if r.name == "srcds" else r
        for r in cfg.rules
    )
    return replace(cfg, rules=rules, **kw)


def test_module_drops_insert_no_rate_state(xdp: Xdp) -> None:
    """Issue 10 case 4: the module check runs before the rate limiter, so a spoofed
    netchannel flood the module drops costs no bucket and evicts none."""
    xdp.apply(_guarded(auth_config()))
    for n in range(500):
        frame = udp_from(f"100.64.{n // 250}.{n % 250 + 1}", 27020, NETCHAN)
        assert xdp.run(frame).verdict == "DROP"
    assert xdp.counts()[(2, "drop_module")] == 500
    assert entries(xdp.ms["rate_limit"]) == 0
    # Control: a connectionless packet from a new source does get a bucket.
    assert counted(xdp, udp_from(CLIENT, 27020, b"\xff\xff\xff\xffq"), (2, "tx_forward"))
    assert entries(xdp.ms["rate_limit"]) == 1


@pytest.fixture
def one_cpu() -> Iterator[int]:
    """Pin the test to one CPU: flood mode counts new sources per CPU."""
    before = os.sched_getaffinity(0)
    cpu = min(before)
    os.sched_setaffinity(0, {cpu})
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, before)


def test_flood_mode_stops_inserting_and_charges_the_budget(xdp: Xdp, one_cpu: int) -> None:
    """Above flood_new_sources_pps new sources a second (per CPU), no bucket is
    inserted and unknown sources share the rule's budget (katran's flood mode)."""
    limit, budget, sent = 20, 5, 200
    xdp.apply(_guarded(auth_config(), flood_new_sources_pps=limit, flood_budget_pps=budget))
    start = time.monotonic()
    verdicts = [
        xdp.run(udp_from(f"100.64.{n // 250}.{n % 250 + 1}", 27020, b"\xff\xff\xff\xffq")).verdict
        for n in range(sent)
    ]
    windows = int(time.monotonic() - start) + 2  # one-second windows the run touched
    got = xdp.counts()
    assert got[(2, "tx_forward")] + got[(2, "drop_flood")] == sent
    assert got[(2, "drop_flood")] >= sent - windows * (limit + budget), got
    assert verdicts.count("TX") == got[(2, "tx_forward")]
    assert entries(xdp.ms["rate_limit"]) <= windows * limit


# ---------------------------------------------------------------- a million sources

FLOOD_SOURCES = 1_000_000
FLOOD_BATCHES = 20
CLIENT_PER_BATCH = 4


@pytest.fixture
def bench_obj(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BpfObject]:
    """The bench object: bench_pipeline_flood runs the production pipeline
    (bfx_process) on a new source address every repeat; bench_pipeline on the
    same packet each time. Both share the object's maps."""
    tmp: Path = tmp_path_factory.mktemp("flood")
    hdr = tmp / "module_config.h"
    hdr.write_text(render_module_config(["srcds"], "tests"))
    obj = BpfObject(build.compile_bench(hdr, tmp))
    try:
        yield obj
    finally:
        obj.close()


def test_validated_client_loses_nothing_to_a_million_spoofed_sources(
    bench_obj: BpfObject, one_cpu: int
) -> None:
    ms = maps.MapSet.from_fds(bench_obj.map_fds())
    njiffy = maps.calibrate_clock(bench_obj.prog_fd("bifrost_clock"), 0.05)
    cfg = _guarded(auth_config())  # SRCDS rule: 1000 pps per source; flood defaults
    maps.apply(ms, cfg, njiffy)
    nh = S["nexthop"]
    slots = [str(g) for g in cfg.all_game_servers()]
    for dst in (GS, GS_SRCDS):
        v = nh.pack(smac=NH_SMAC, dmac=NH_DMAC, ifindex=1, mtu=1500, dst=dst, expires_ns=2**63)
        ms["gs_nexthops"].update(slots.index(dst).to_bytes(4, "little"), v)
    v = nh.pack(smac=NH_SMAC, dmac=CLIENT_DMAC, ifindex=1, mtu=1500, dst=CLIENT, expires_ns=2**63)
    ms["nexthops"].update(ipaddress.IPv4Address(CLIENT).packed, v)
    one, flood = bench_obj.prog_fd("bench_pipeline"), bench_obj.prog_fd("bench_pipeline_flood")

    # The client is established: the game server's authenticated accept validated it.
    accept = IP(src=VIP, dst=CLIENT) / UDP(sport=27020, dport=40000) / ACCEPT
    assert libbpf.test_run(one, fou_frame(GS_SRCDS, accept, token=KEY)).verdict == "TX"
    assert len(game_clients(ms)) == 1
    client = udp_from(CLIENT, 27020, NETCHAN + bytes(30))  # the wrapper needs 64 bytes
    spoofed = udp_from("100.64.0.1", 27020, b"\xff\xff\xff\xffq" + bytes(20))

    start = time.monotonic()
    lost = 0
    for _ in range(FLOOD_BATCHES):
        libbpf.test_run(flood, spoofed, repeat=FLOOD_SOURCES // FLOOD_BATCHES)
        for _ in range(CLIENT_PER_BATCH):
            lost += libbpf.test_run(one, client).verdict != "TX"
    elapsed = time.monotonic() - start
    got = {k: v.packets for k, v in maps.counters(ms).items()}
    assert lost == 0, f"the validated client lost {lost} packets; counters {got}"
    sent_client = FLOOD_BATCHES * CLIENT_PER_BATCH
    assert got[(2, "tx_forward")] + got.get((2, "drop_flood"), 0) == FLOOD_SOURCES + sent_client
    assert got.get((2, "drop_flood"), 0) > FLOOD_SOURCES // 2, "flood mode took over"
    # Memory stays bounded: buckets inserted at most at the flood threshold.
    windows = int(elapsed) + 2
    assert entries(ms["rate_limit"]) <= windows * cfg.flood_new_sources_pps, elapsed
    assert len(game_clients(ms)) == 1, "the validated client is still there"
    # Its bucket is its own, in game_clients, which no unknown source inserts into.
    own = game_clients(ms)[(CLIENT, 40000, VIP, 27020)]
    assert own.last_ns > 0, "the client's packets were charged to its own bucket"
    rate_key = S["rate_key"].pack(src=CLIENT, rule_id=2)
    assert ms["rate_limit"].lookup(rate_key) is None
    print(f"{FLOOD_SOURCES} spoofed sources in {elapsed:.1f} s; counters {got}")


def _colliding(prefix: str, taken: ipaddress.IPv4Address) -> ipaddress.IPv4Address:
    """An address under prefix with taken's addr_slots index."""
    want = maps_def.addr_slot_index(taken.packed)
    for n in range(1 << 20):
        a = ipaddress.IPv4Address(f"{prefix}.{n // 250 % 250}.{n % 250 + 1}")
        if a != taken and maps_def.addr_slot_index(a.packed) == want:
            return a
    raise AssertionError("no colliding address")


def test_address_checks_through_a_shared_slot(xdp: Xdp) -> None:
    """Where two addresses share an addr_slots slot, the one not in it is found
    through the anycast / gameservers hashes: the same answers as in the slot."""
    base = auth_config()
    gs_vip = ipaddress.IPv4Address(GS)
    other_gs = _colliding("10.2", gs_vip)
    extra_vip = _colliding("198.19", ipaddress.IPv4Address(VIP))
    rules = tuple(replace(r, game_server=other_gs) if r.name == "game" else r for r in base.rules)
    cfg = replace(base, rules=rules, game_servers=(gs_vip,), anycast=(extra_vip,))
    xdp.apply(cfg)
    slot_of = {
        bytes(S["addr_slot"].unpack(v)["addr"]): S["addr_slot"].unpack(v)["flags"]
        for v in maps.in_force(xdp.ms, "addr_slots").values()
    }
    assert min(gs_vip.packed, other_gs.packed) in slot_of
    assert max(gs_vip.packed, other_gs.packed) not in slot_of, "they share one slot"
    xdp.set_nexthop(CLIENT, NH_SMAC, CLIENT_DMAC)
    # Return traffic from the game server of rule 'game' (whichever lost the slot).
    ok = fou_frame(str(other_gs), relayed_reply(CLIENT), token=KEY)
    assert counted(xdp, ok, (1, "tx_return")).verdict == "TX"
    to_gs = fou_frame(str(other_gs), relayed_reply(str(gs_vip)), token=KEY)
    assert counted(xdp, to_gs, (1, "drop_martian")).verdict == "DROP"
    # Anycast sources, in the slot and out of it, are martian.
    for src in (VIP, str(extra_vip)):
        assert counted(xdp, udp_from(src), (1, "drop_martian")).verdict == "DROP"
