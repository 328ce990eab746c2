"""Path MTU towards the game server: ICMP fragmentation needed from XDP (xdp/icmp.h).

A forwarded packet with DF set that would exceed the path MTU once
encapsulated (the next hop's MTU, or xdp.tunnel_mtu when smaller) is
answered with ICMP type 3 code 4 announcing the largest inner packet that
fits; the reply's exact bytes are compared with one scapy builds, and scapy
recomputes both checksums. Without DF the packet is dropped as before. The
replies are limited per CPU (ICMP_REPLY_PPS) and never longer than what
triggered them.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether
from xdp_harness import (
    CLIENT,
    IN_DMAC,
    IN_SMAC,
    KEY,
    VIP,
    VIP2,
    Xdp,
    auth_config,
    client_frame,
    expected_encap,
    make_config,
)

from bifrost.config_schema import ConfigError, Reader
from bifrost.xdp import config, maps_def

pytestmark = pytest.mark.bpf

NH_MTU = 1500  # the harness's next hops


def big(size: int, df: bool = True, dport: int = 27015, dst: str = VIP) -> IP:
    """A UDP datagram of exactly size bytes (IP total length)."""
    return (
        IP(src=CLIENT, dst=dst, flags="DF" if df else 0, id=0x1234)
        / UDP(sport=40000, dport=dport)
        / (b"R" * (size - 28))
    )


def expected_reply(inner: IP, mtu: int) -> bytes:
    """What the program must send back: from the address the packet was sent to,
    tos 0xc0 (as the kernel's icmp_send), DF with ID 0 (atomic, RFC 6864), TTL 64,
    quoting the inner IPv4 header and 8 bytes (RFC 792)."""
    raw = bytes(inner)
    return bytes(
        Ether(src=IN_DMAC, dst=IN_SMAC)
        / IP(src=inner.dst, dst=inner.src, tos=0xC0, id=0, flags="DF", ttl=64, proto=1)
        / ICMP(type=3, code=4, nexthopmtu=mtu)
        / raw[:28]
    )


def checksums_valid(frame: bytes) -> bool:
    pkt = Ether(frame)
    ip_sum, icmp_sum = pkt[IP].chksum, pkt[ICMP].chksum
    del pkt[IP].chksum
    del pkt[ICMP].chksum
    again = Ether(bytes(pkt))
    return (again[IP].chksum, again[ICMP].chksum) == (ip_sum, icmp_sum)


def only(xdp: Xdp, rule: int, reason: str) -> bool:
    return xdp.counts() == {(rule, reason): 1}


def test_df_over_the_route_mtu_gets_frag_needed(xdp: Xdp) -> None:
    inner = big(NH_MTU - 28 + 1)
    frame = client_frame(inner)
    res = xdp.run(frame)
    assert res.verdict == "TX"
    want = expected_reply(inner, NH_MTU - 28)
    assert res.data.hex() == want.hex()
    assert checksums_valid(res.data)
    assert len(res.data) == 70 < len(frame), "never larger than what triggered it"
    assert only(xdp, 1, "tx_icmp_too_big")
    # The largest packet that fits still goes to the game server.
    ok = big(NH_MTU - 28)
    res = xdp.run(client_frame(ok))
    assert res.verdict == "TX"
    assert res.data == expected_encap(bytes(ok), "10.0.0.2")


def test_without_df_dropped_silently(xdp: Xdp) -> None:
    res = xdp.run(client_frame(big(NH_MTU - 28 + 1, df=False)))
    assert res.verdict == "DROP"
    assert only(xdp, 1, "drop_too_big")


def test_ip_options_are_not_quoted_dropped(xdp: Xdp) -> None:
    """The 28-byte quote is the option-less header + 8: a packet with options is dropped."""
    inner = (
        IP(src=CLIENT, dst=VIP, flags="DF", options=b"\x01\x01\x01\x00")
        / UDP(sport=1, dport=27015)
        / (b"o" * 1500)
    )
    assert xdp.run(client_frame(inner)).verdict == "DROP"
    assert only(xdp, 1, "drop_too_big")


def test_tunnel_mtu_below_the_route(xdp: Xdp) -> None:
    xdp.apply(make_config(tunnel_mtu=1400))
    inner = big(1400 - 28 + 1)
    res = xdp.run(client_frame(inner))
    assert res.data.hex() == expected_reply(inner, 1400 - 28).hex()
    assert checksums_valid(res.data)
    assert xdp.run(client_frame(big(1400 - 28))).verdict == "TX"
    # A tunnel_mtu above the route MTU changes nothing: the route's is smaller.
    xdp.apply(make_config(tunnel_mtu=9000))
    inner = big(NH_MTU - 28 + 1)
    assert xdp.run(client_frame(inner)).data == expected_reply(inner, NH_MTU - 28)


def test_tcp_and_auth_trailer(xdp: Xdp) -> None:
    """With [auth] the token's 8 bytes count too: the announced MTU leaves room for them."""
    xdp.apply(auth_config())
    inner = (
        IP(src=CLIENT, dst=VIP2, flags="DF")
        / TCP(sport=5, dport=80, flags="A")
        / (b"t" * (NH_MTU - 28 - 8 - 40 + 1))
    )
    res = xdp.run(client_frame(inner))
    assert res.data.hex() == expected_reply(inner, NH_MTU - 28 - 8).hex()
    assert checksums_valid(res.data)
    assert only(xdp, 4, "tx_icmp_too_big")
    fits = (
        IP(src=CLIENT, dst=VIP2, flags="DF")
        / TCP(sport=5, dport=80, flags="A")
        / (b"t" * (NH_MTU - 28 - 8 - 40))
    )
    res = xdp.run(client_frame(fits))
    assert res.data == expected_encap(bytes(fits), "10.0.0.4", token=KEY)


def test_replies_are_rate_limited_per_cpu(xdp: Xdp) -> None:
    """A spoofer cannot make the POP send more than ICMP_REPLY_PPS replies per CPU
    and second: past the burst, too-big packets are dropped without a reply."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    frame = client_frame(big(NH_MTU - 28 + 1))
    n = maps_def.ICMP_REPLY_PPS + 300
    start = time.monotonic()
    verdicts = [xdp.run(frame).verdict for _ in range(n)]
    elapsed = time.monotonic() - start
    replies = verdicts.count("TX")
    assert replies + verdicts.count("DROP") == n
    assert replies >= maps_def.ICMP_REPLY_PPS, "the whole burst is answered"
    assert replies <= maps_def.ICMP_REPLY_PPS + (elapsed + 0.02) * maps_def.ICMP_REPLY_PPS + 1
    assert verdicts.count("DROP") > 0
    counts = xdp.counts()
    assert counts[(1, "tx_icmp_too_big")] == replies
    assert counts[(1, "drop_too_big")] == n - replies


@pytest.mark.parametrize("value", [1, 95, 65536, -1])
def test_tunnel_mtu_config_refused(value: int) -> None:
    sec = Reader({"tunnel_mtu": value}, "xdp")
    with pytest.raises(ConfigError, match=r"xdp\.tunnel_mtu"):
        config.parse(sec)


def test_tunnel_mtu_config_read() -> None:
    assert config.parse(Reader({"tunnel_mtu": 1400}, "xdp")).tunnel_mtu == 1400
    assert config.parse(Reader({}, "xdp")).tunnel_mtu == 0
    assert replace(make_config(), tunnel_mtu=96).tunnel_mtu == 96


def test_outer_df_and_id(xdp: Xdp) -> None:
    """Outer DF copies the inner's; the outer ID is 0 for an atomic (DF) datagram
    and otherwise follows the inner ID per flow, distinct between clients whose
    inner IDs are equal (RFC 6864)."""

    def outer(src: str, ident: int, df: bool) -> IP:
        inner = IP(src=src, dst=VIP, id=ident, flags="DF" if df else 0) / UDP(
            sport=40000, dport=27015
        )
        res = xdp.run(client_frame(inner))
        assert res.verdict == "TX"
        assert res.data == expected_encap(bytes(inner), "10.0.0.2")
        return Ether(res.data)[IP]

    atomic = outer(CLIENT, 7, df=True)
    assert (atomic.flags.DF, atomic.id) == (True, 0)
    a1, a2 = outer(CLIENT, 7, df=False), outer(CLIENT, 8, df=False)
    assert not a1.flags.DF
    assert a1.id != a2.id, "one flow: the outer ID moves with the inner"
    b1 = outer("192.0.2.51", 7, df=False)
    assert b1.id != a1.id, "two clients with the same inner ID: different outer IDs"
    assert a1[UDP].sport ^ 7 == a1.id
