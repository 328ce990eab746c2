"""TCP MSS clamping on TCP rules (xdp/mss.h), checked byte for byte against scapy.

The client's SYN (forward path) and the game server's SYN-ACK (return path)
leave the POP with an MSS no larger than the tunnel's inner MTU - 40; the
expected packets are the same segments with that MSS whose TCP checksum
scapy computes from scratch, so an exact match proves the program's
incremental update (RFC 1624) right, also for an MSS option at an odd offset.
"""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from xdp_harness import (
    CLIENT,
    CLIENT_DMAC,
    GS_TCP,
    KEY,
    NH_DMAC,
    NH_SMAC,
    VIP2,
    Xdp,
    auth_config,
    client_frame,
    expected_encap,
    fou_frame,
    make_config,
)
from xdp_reference import Reference

pytestmark = pytest.mark.bpf

NH_MTU = 1500


def syn(mss_opts: list, flags: str = "S", src: str = CLIENT, dst: str = VIP2, **kw) -> IP:
    if src == CLIENT:
        return IP(src=src, dst=dst, flags="DF") / TCP(
            sport=40000, dport=80, flags=flags, seq=1000, options=mss_opts, **kw
        )
    return IP(src=src, dst=dst, flags="DF") / TCP(
        sport=80, dport=40000, flags=flags, seq=5000, ack=1001, options=mss_opts, **kw
    )


def with_mss(pkt: IP, mss: int) -> bytes:
    """pkt with its MSS option set to mss and the TCP checksum computed by scapy."""
    out = pkt.copy()
    out[TCP].options = [(k, mss if k == "MSS" else v) for k, v in out[TCP].options]
    out[TCP].chksum = None
    return bytes(out)


def tcp_checksum_ok(raw: bytes) -> bool:
    pkt = IP(raw)
    got = pkt[TCP].chksum
    del pkt[TCP].chksum
    return IP(bytes(pkt))[TCP].chksum == got


def forward(xdp: Xdp, inner: IP) -> bytes:
    res = xdp.run(client_frame(inner))
    assert res.verdict == "TX"
    assert xdp.counts().get((4, "tx_forward"))
    return res.data


OPTS = {
    "MSS first": lambda m: [("MSS", m), ("SAckOK", b""), ("WScale", 7)],
    "MSS at an odd offset": lambda m: [("NOP", None), ("MSS", m), ("NOP", None)],
    "MSS after timestamps": lambda m: [("Timestamp", (1, 0)), ("NOP", None), ("MSS", m)],
}


@pytest.mark.parametrize("layout", sorted(OPTS))
def test_syn_clamped_on_the_forward_path(xdp: Xdp, layout: str) -> None:
    pkt = syn(OPTS[layout](1460))
    out = forward(xdp, pkt)
    want_mss = NH_MTU - 28 - 40
    assert out.hex() == expected_encap(with_mss(pkt, want_mss), GS_TCP).hex()
    inner = bytes(Ether(out)[IP].payload)[8:]
    assert tcp_checksum_ok(inner)
    assert dict(IP(inner)[TCP].options)["MSS"] == want_mss


def test_tunnel_mtu_and_auth_lower_the_mss(xdp: Xdp) -> None:
    xdp.apply(auth_config(tunnel_mtu=1400))
    pkt = syn(OPTS["MSS first"](1460))
    out = forward(xdp, pkt)
    assert out == expected_encap(with_mss(pkt, 1400 - 28 - 8 - 40), GS_TCP, token=KEY)


@pytest.mark.parametrize(
    "name,pkt",
    [
        ("MSS already small", syn([("MSS", 536)])),
        ("no MSS option", syn([("WScale", 7), ("SAckOK", b"")])),
        ("not a SYN", syn([("MSS", 1460)], flags="A")),
        ("SYN with RST", syn([("MSS", 1460)], flags="SR")),
        ("malformed option length", syn([("MSS", 1460)]) / b""),
    ],
)
def test_left_alone(xdp: Xdp, name: str, pkt: IP) -> None:
    if name == "malformed option length":
        raw = bytearray(bytes(pkt))
        raw[20 + 20 + 1] = 0  # MSS option with length 0: stop, change nothing
        pkt = IP(bytes(raw))
    out = forward(xdp, pkt)
    assert out == expected_encap(bytes(pkt), GS_TCP), name


def test_syn_ack_clamped_on_the_return_path(xdp: Xdp) -> None:
    for layout in sorted(OPTS):
        reply = syn(OPTS[layout](8960), flags="SA", src=VIP2, dst=CLIENT)
        res = xdp.run(fou_frame(GS_TCP, reply))
        assert res.verdict == "TX", layout
        want = bytes(Ether(src=NH_SMAC, dst=CLIENT_DMAC, type=0x0800)) + with_mss(
            reply, NH_MTU - 28 - 40
        )
        assert res.data.hex() == want.hex(), layout
        assert tcp_checksum_ok(res.data[14:])
    # With a smaller tunnel_mtu the SYN-ACK follows it.
    xdp.apply(make_config(tunnel_mtu=1280))
    reply = syn(OPTS["MSS first"](1460), flags="SA", src=VIP2, dst=CLIENT)
    res = xdp.run(fou_frame(GS_TCP, reply))
    assert res.data[14:] == with_mss(reply, 1280 - 28 - 40)


def test_reference_model_agrees(xdp: Xdp) -> None:
    """The fuzz test's model (xdp_reference) predicts these bytes too, for a correct
    and for a wrong incoming checksum (the update keeps a wrong one wrong)."""
    ref = Reference(
        make_config(),
        {
            GS_TCP: (NH_SMAC, NH_DMAC),
            CLIENT: (NH_SMAC, CLIENT_DMAC),
        },
    )
    for layout in sorted(OPTS):
        for bad in (False, True):
            raw = bytearray(bytes(syn(OPTS[layout](1460))))
            if bad:
                raw[20 + 16] ^= 0x5A
            frame = client_frame(IP(bytes(raw)))
            res = xdp.run(frame)
            (want,) = ref.expect(frame)
            assert (res.verdict, want.reason) == ("TX", "tx_forward")
            assert res.data.hex() == (want.output or b"").hex(), (layout, bad)
    big = client_frame(IP(src=CLIENT, dst=VIP2, flags="DF") / TCP(dport=80) / bytes(1500))
    (want,) = ref.expect(big)
    assert (want.reason, xdp.run(big).data) == ("tx_icmp_too_big", want.output)
