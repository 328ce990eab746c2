"""SRCDS: a validated client whose route moves to another POP keeps playing (issue 13).

Two POPs (two loaded programs, each with its own maps), the SRCDS rule (id 2, port
27020, GS_SRCDS). POP A validated the client from the game server's `B`. POP B never
saw the handshake: it forwards the client's well-formed netchannel packets (at least
the 12-byte header of Source's CNetChan::ProcessPacketHeader) on the rule's budget of
unvalidated packets, and the game server's authenticated netchannel replies, which
it sends only on a connection it accepted, validate the client at B. A spoofer
sending the same packets gains no more than the budget, and a reply needs the FOU key.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from xdp_harness import (
    CLIENT,
    CLIENT_DMAC,
    GS_SRCDS,
    KEY,
    KEY_OLD,
    NH_DMAC,
    NH_SMAC,
    VIP,
    Xdp,
    auth_config,
    client_frame,
    expected_encap,
    fou_frame,
    loaded,
    make_config,
)
from xdp_modules_harness import game_clients

from bifrost.xdp import libbpf, maps_def

pytestmark = pytest.mark.bpf

RULE, PORT, CLIENT_PORT = 2, 27020, 40000
NETCHAN = b"\x01\x00\x00\x00\x00\x00\x00\x00\x00\x12\x34\x00"  # seq, ack, flags, csum, rel
ACCEPT = b"\xff\xff\xff\xffB" + bytes(16)
PPS = maps_def.GAME_HANDSHAKE_PPS


def to_service(payload: bytes, src: str = CLIENT, sport: int = CLIENT_PORT) -> IP:
    return IP(src=src, dst=VIP) / UDP(sport=sport, dport=PORT) / payload


def from_service(payload: bytes, dst: str = CLIENT, dport: int = CLIENT_PORT) -> IP:
    return IP(src=VIP, dst=dst) / UDP(sport=PORT, dport=dport) / payload


def forward(x: Xdp, payload: bytes, **kw) -> str:
    inner = to_service(payload, **kw)
    res = x.run(client_frame(inner))
    if res.verdict == "TX":
        assert res.data == expected_encap(bytes(inner), GS_SRCDS, token=KEY), "FOU, with KEY"
    return res.verdict


def back(x: Xdp, payload: bytes, token: bytes = KEY, **kw) -> str:
    """An (authenticated) FOU packet from the game server carrying payload to the client."""
    inner = from_service(payload, **kw)
    res = x.run(fou_frame(GS_SRCDS, inner, token=token))
    if res.verdict == "TX":
        assert res.data == bytes(Ether(src=NH_SMAC, dst=CLIENT_DMAC) / inner)
    return res.verdict


def validated(x: Xdp, src: str = CLIENT, sport: int = CLIENT_PORT) -> bool:
    return (src, sport, VIP, PORT) in game_clients(x)


def split(x: Xdp, n: int, src: str = CLIENT) -> tuple[int, int, int]:
    """A big netchannel packet from src n times in one BPF_PROG_TEST_RUN: (passed by the
    module, dropped by it, the most the budget refilled meanwhile). GS_SRCDS's MTU is
    shrunk for the run, so a packet the module lets through ends as drop_too_big, the
    frame unchanged for the next repeat."""
    frame = client_frame(to_service(NETCHAN + bytes(1100), src=src))
    before = x.counts()
    slot = [str(g) for g in make_config().all_game_servers()].index(GS_SRCDS)
    nh = maps_def.BY_NAME["nexthop"]

    def mtu(m: int) -> None:
        v = nh.pack(smac=NH_SMAC, dmac=NH_DMAC, ifindex=1, mtu=m, dst=GS_SRCDS, expires_ns=2**63)
        x.ms["gs_nexthops"].update(slot.to_bytes(4, "little"), v)

    mtu(1000)
    try:
        start = time.monotonic()
        libbpf.test_run(x.prog, frame, repeat=n)
        elapsed = time.monotonic() - start
    finally:
        mtu(1500)
    after = x.counts()
    passed = after.get((RULE, "drop_too_big"), 0) - before.get((RULE, "drop_too_big"), 0)
    dropped = after.get((RULE, "drop_module"), 0) - before.get((RULE, "drop_module"), 0)
    assert passed + dropped == n, (before, after)
    return passed, dropped, int((elapsed + 0.005) * PPS) + 1


@pytest.fixture
def pops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Xdp, Xdp]]:
    """POP A and POP B, authenticated FOU, on one CPU: the budget is per CPU."""
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    try:
        with loaded(tmp_path_factory.mktemp("a")) as a, loaded(tmp_path_factory.mktemp("b")) as b:
            a.apply(auth_config())
            b.apply(auth_config())
            yield a, b
    finally:
        os.sched_setaffinity(0, cpus)


def test_client_keeps_playing_when_its_route_moves(pops: tuple[Xdp, Xdp]) -> None:
    a, b = pops
    for step in (b"\xff\xff\xff\xffq", b"\xff\xff\xff\xffk..."):
        assert forward(a, step) == "TX"
    assert back(a, ACCEPT) == "TX" and validated(a)
    assert forward(a, NETCHAN) == "TX"
    # The route moves: B never saw the handshake, and forwards the client's netchannel
    # packets on the rule's budget (exact FOU bytes), so fou_map can learn the move.
    assert not validated(b)
    assert [forward(b, NETCHAN) for _ in range(3)] == ["TX"] * 3
    assert b.counts()[(RULE, "tx_forward")] == 3 and (RULE, "drop_module") not in b.counts()
    assert not validated(b), "forwarding on the budget validates nobody"
    # The server's netchannel reply through B, authenticated: B validates the client.
    assert back(b, b"echo:" + NETCHAN) == "TX"
    assert validated(b)
    passed, dropped, _ = split(b, 3 * PPS)
    assert (passed, dropped) == (3 * PPS, 0), "validated: three seconds' budget at once pass"


def test_only_well_formed_netchannel_packets_use_the_budget(xdp: Xdp) -> None:
    xdp.apply(auth_config())
    for bad in (NETCHAN[:11], b"\x01" * 5, NETCHAN + bytes(1500 - 28 - 28 - 12 + 1)):
        assert forward(xdp, bad) == "DROP", len(bad)
    assert xdp.counts()[(RULE, "drop_module")] == 3
    assert forward(xdp, NETCHAN) == "TX"
    assert forward(xdp, NETCHAN + bytes(1500 - 28 - 28 - 12 - 8)) == "TX", "fits with the token"
    # Connectionless packets (the handshake, A2S) never cost the budget: as before.
    assert forward(xdp, b"\xff\xff\xff\xffq") == "TX"


def test_a_spoofer_gains_no_more_than_the_budget(pops: tuple[Xdp, Xdp]) -> None:
    """A spoofed netchannel flood: a second's worth of the rule's budget gets through,
    then no more than what refills; the moved client, validated by the server's reply,
    is not held back by the spent budget."""
    _, b = pops
    n = 4 * PPS
    passed, dropped, refill = split(b, n, src="100.64.0.99")
    assert PPS - 1 <= passed <= PPS + refill, (passed, dropped, refill)
    assert not validated(b, src="100.64.0.99"), "passing on the budget validates nobody"
    assert back(b, b"echo:" + NETCHAN) == "TX"
    assert split(b, n)[:2] == (n, 0)


def test_replies_that_prove_nothing_validate_nobody(pops: tuple[Xdp, Xdp]) -> None:
    """No FOU key, a wrong key, a challenge (`A`), a too short netchannel reply: nobody
    validated; positive control: the same reply with the key validates."""
    _, b = pops
    cases = [
        (b"echo:" + NETCHAN, b"", "DROP"),
        (b"echo:" + NETCHAN, KEY[:4] + KEY_OLD[4:], "DROP"),
        (b"\xff\xff\xff\xffA\x01\x02\x03\x04", KEY, "TX"),
        (b"\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b", KEY, "TX"),
    ]
    for payload, token, verdict in cases:
        assert back(b, payload, token=token) == verdict, payload
        assert not validated(b), payload
    assert b.counts()[(0, "drop_auth")] == 2
    assert back(b, b"echo:" + NETCHAN) == "TX" and validated(b)
    # A reply validates the connection it goes to: not the client's other port.
    assert not validated(b, sport=CLIENT_PORT + 1)
