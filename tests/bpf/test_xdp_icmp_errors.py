"""ICMP errors addressed to an anycast address go to the game server owning the flow.

A router on the way to a client answers the service's packet with an ICMP
error (destination unreachable, time exceeded, parameter problem) to the
anycast address the packet came from; the POP forwards it, FOU-encapsulated
like any forwarded packet, to the game server of the rule whose service
sent the quoted datagram, so that server's stack learns of it. Errors
quoting anything else, truncated quotes and the budget's overflow are
counted (drop_icmp_error) and dropped; other ICMP stays drop_no_rule.
"""

from __future__ import annotations

import os

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, UDPerror
from xdp_harness import (
    BLOCKED,
    CLIENT,
    GS,
    GS_TCP,
    KEY,
    NH_DMAC,
    NH_SMAC,
    VIP,
    VIP2,
    Xdp,
    auth_config,
    client_frame,
    expected_encap,
    make_config,
)
from xdp_reference import Reference

from bifrost.xdp import maps_def

pytestmark = pytest.mark.bpf

ROUTER = "192.0.2.77"


def error(quoted: IP, icmp_type: int = 3, code: int = 3, src: str = ROUTER, dst: str = VIP) -> IP:
    """An ICMP error as a router sends it: the offending header and 8 bytes (RFC 792)."""
    return IP(src=src, dst=dst) / ICMP(type=icmp_type, code=code) / bytes(quoted)[:28]


SERVICE_REPLY = IP(src=VIP, dst=CLIENT) / UDP(sport=27015, dport=40000) / b"game state"
TCP_REPLY = IP(src=VIP2, dst=CLIENT) / TCP(sport=80, dport=40000, flags="A") / (b"x" * 30)


def ref() -> Reference:
    return Reference(make_config(), {GS: (NH_SMAC, NH_DMAC), GS_TCP: (NH_SMAC, NH_DMAC)})


@pytest.mark.parametrize(
    "name,pkt,rule,gs",
    [
        ("port unreachable", error(SERVICE_REPLY), 1, GS),
        ("fragmentation needed", error(SERVICE_REPLY, code=4), 1, GS),
        ("time exceeded", error(SERVICE_REPLY, icmp_type=11, code=0), 1, GS),
        ("parameter problem, TCP", error(TCP_REPLY, icmp_type=12, code=0, dst=VIP2), 4, GS_TCP),
    ],
)
def test_forwarded_to_the_flow_owner(xdp: Xdp, name: str, pkt: IP, rule: int, gs: str) -> None:
    frame = client_frame(pkt)
    res = xdp.run(frame)
    assert res.verdict == "TX", name
    assert res.data.hex() == expected_encap(bytes(pkt), gs).hex(), name
    assert xdp.counts() == {(rule, "tx_icmp_forward"): 1}
    (want,) = ref().expect(frame)
    assert (want.reason, want.output) == ("tx_icmp_forward", res.data), "the model agrees"


def test_forwarded_with_the_token(xdp: Xdp) -> None:
    xdp.apply(auth_config())
    pkt = error(SERVICE_REPLY)
    res = xdp.run(client_frame(pkt))
    assert res.data == expected_encap(bytes(pkt), GS, token=KEY)


UNOWNED = {
    "no rule for the quoted port": error(IP(src=VIP, dst=CLIENT) / UDP(sport=1, dport=2)),
    "quoted source is not the address it is sent to": error(
        IP(src=VIP2, dst=CLIENT) / UDP(sport=27015, dport=2)
    ),
    "quote without ports": IP(src=ROUTER, dst=VIP)
    / ICMP(type=3, code=3)
    / bytes(SERVICE_REPLY)[:20],
    "quoted ICMP": error(IP(src=VIP, dst=CLIENT) / ICMP()),
    "quote is not IPv4": IP(src=ROUTER, dst=VIP) / ICMP(type=3) / (b"\x60" + bytes(27)),
}


@pytest.mark.parametrize("name", sorted(UNOWNED))
def test_unowned_errors_counted_and_dropped(xdp: Xdp, name: str) -> None:
    frame = client_frame(UNOWNED[name])
    assert xdp.run(frame).verdict == "DROP"
    assert xdp.counts() == {(0, "drop_icmp_error"): 1}
    assert [o.reason for o in ref().expect(frame)] == ["drop_icmp_error"]


def test_other_icmp_and_refused_sources(xdp: Xdp) -> None:
    echo = client_frame(IP(src=ROUTER, dst=VIP) / ICMP(type=8))
    assert xdp.run(echo).verdict == "DROP"
    assert xdp.counts() == {(0, "drop_no_rule"): 1}
    blocked = client_frame(error(SERVICE_REPLY, src=BLOCKED))
    assert xdp.run(blocked).verdict == "DROP"
    assert xdp.counts()[(1, "drop_blocked")] == 1
    martian = client_frame(error(SERVICE_REPLY, src="127.0.0.1"))
    assert xdp.run(martian).verdict == "DROP"
    assert xdp.counts()[(1, "drop_martian")] == 1
    short = client_frame(IP(src=ROUTER, dst=VIP, proto=1) / b"\x03\x03")
    assert xdp.run(short).verdict == "DROP"
    assert xdp.counts()[(0, "drop_malformed")] == 1


def test_forwarding_budget_per_cpu(xdp: Xdp) -> None:
    """A spoofer making up errors reaches the game servers at no more than
    ICMP_REPLY_PPS per CPU and second."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    frame = client_frame(error(SERVICE_REPLY))
    n = maps_def.ICMP_REPLY_PPS + 300
    verdicts = [xdp.run(frame).verdict for _ in range(n)]
    sent = verdicts.count("TX")
    assert sent >= maps_def.ICMP_REPLY_PPS
    assert verdicts.count("DROP") > 0
    counts = xdp.counts()
    assert (counts[(1, "tx_icmp_forward")], counts[(1, "drop_icmp_error")]) == (sent, n - sent)


def test_scapy_sees_the_quote(xdp: Xdp) -> None:
    """The encapsulated error is one the game server's stack can match: scapy parses
    the quote as the service's datagram."""
    res = xdp.run(client_frame(error(SERVICE_REPLY)))
    inner = IP(bytes(IP(res.data[14:])[UDP].payload))
    assert inner[IPerror].src == VIP and inner[UDPerror].sport == 27015
