"""The auth token moved with the packet (BPF_PROG_TEST_RUN): exact bytes at every length.

With authenticated FOU, encap and decap handle a packet of up to 255 bytes
(encap.h BFX_MOVE_MAX) by moving it 8 bytes instead of growing or cutting the
tail: encap pushes 36 bytes and moves the inner packet down over 8 of them,
decap moves it up over the token and pulls 36. The move is straight-line
chunks by the bits of the length (128, 64, 32, 16, 8, then the last 1..7
bytes), so every length from the smallest UDP packet to past the limit is
checked byte for byte, both ways, and frames with Ethernet padding after the
packet (which take bpf_xdp_adjust_tail) as well.
"""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from xdp_harness import (
    CLIENT,
    CLIENT_DMAC,
    GS,
    KEY,
    NH_SMAC,
    VIP,
    Xdp,
    auth_config,
    client_frame,
    expected_encap,
    fou_frame,
)

pytestmark = pytest.mark.bpf

LENGTHS = range(28, 301)  # IP + UDP headers alone .. well past BFX_MOVE_MAX


def _payload(n: int, salt: int) -> bytes:
    """n bytes that differ at every offset, so a byte moved to the wrong place shows."""
    return bytes((i * 13 + salt) & 0xFF for i in range(n))


@pytest.mark.parametrize("pad", [0, 6], ids=["exact-frame", "ethernet-padding"])
def test_forward_appends_the_token_after_the_packet_at_every_length(xdp: Xdp, pad: int) -> None:
    xdp.apply(auth_config())
    for n in LENGTHS:
        pkt = IP(src=CLIENT, dst=VIP, id=n) / UDP(sport=40000, dport=27015) / _payload(n - 28, n)
        res = xdp.run(client_frame(pkt) + bytes(pad))
        assert res.verdict == "TX", n
        assert res.data == expected_encap(bytes(pkt), GS, token=KEY), f"inner length {n}"
    assert xdp.counts() == {(1, "tx_forward"): len(LENGTHS)}


@pytest.mark.parametrize("pad", [0, 6], ids=["exact-frame", "ethernet-padding"])
def test_return_cuts_the_token_at_every_length(xdp: Xdp, pad: int) -> None:
    xdp.apply(auth_config())
    for n in LENGTHS:
        pkt = IP(src=VIP, dst=CLIENT, id=n) / UDP(sport=27015, dport=40000) / _payload(n - 28, n)
        res = xdp.run(fou_frame(GS, pkt, token=KEY) + bytes(pad))
        assert res.verdict == "TX", n
        assert res.data == bytes(Ether(src=NH_SMAC, dst=CLIENT_DMAC) / pkt), f"inner length {n}"
    assert xdp.counts() == {(1, "tx_return"): len(LENGTHS)}
