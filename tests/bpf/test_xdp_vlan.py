"""802.1Q and QinQ frames are parsed and filtered like untagged ones (xdp/vlan.h).

Every path with one tag (802.1Q) and two (QinQ: 802.1ad outer, 802.1Q
inner): forward, return, firewall drop, cache pass, no-rule drop, IPv6 and
ARP. What the program transmits (XDP_TX) carries the frame's tags after the
MACs, byte for byte the untagged result with the tags put back; what it
passes is the frame unchanged; counters move as for the untagged frame. The
reference model (xdp_reference) predicts the same.
"""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from xdp_harness import (
    A2S_INFO,
    BLOCKED,
    CLIENT,
    CLIENT_DMAC,
    GS,
    IN_DMAC,
    IN_SMAC,
    KEY,
    NH_DMAC,
    NH_SMAC,
    VIP,
    Xdp,
    auth_config,
    fou_frame,
)
from xdp_reference import Reference

pytestmark = pytest.mark.bpf

TAGS = {
    "802.1Q": lambda: Dot1Q(vlan=100, prio=5),
    "QinQ 802.1ad": lambda: Dot1AD(vlan=200) / Dot1Q(vlan=100),
    "QinQ 8100x2": lambda: Dot1Q(vlan=300) / Dot1Q(vlan=100),
}


def untagged(payload) -> bytes:
    return bytes(Ether(src=IN_SMAC, dst=IN_DMAC) / payload)


def tagged(kind: str, payload) -> bytes:
    return bytes(Ether(src=IN_SMAC, dst=IN_DMAC) / TAGS[kind]() / payload)


def tag_bytes(kind: str) -> bytes:
    """The tags as they lie after the MACs (TPID, TCI per tag)."""
    frame = tagged(kind, IP())
    n = 2 if kind.startswith("QinQ") else 1
    return frame[12 : 12 + 4 * n]


FORWARD = IP(src=CLIENT, dst=VIP) / UDP(sport=40000, dport=27015) / b"hello"
RETURN = IP(src=VIP, dst=CLIENT) / UDP(sport=27015, dport=40000) / b"state"

CASES = {
    "forward": (FORWARD, "TX", 1, "tx_forward"),
    "firewall drop": (IP(src=BLOCKED, dst=VIP) / UDP(dport=27015), "DROP", 1, "drop_blocked"),
    "cache pass": (IP(src=CLIENT, dst=VIP) / UDP(dport=27015) / A2S_INFO, "PASS", 1, "pass_cache"),
    "no rule": (IP(src=CLIENT, dst=VIP) / UDP(dport=1), "DROP", 0, "drop_no_rule"),
    "host traffic": (IP(src=CLIENT, dst="10.1.1.1") / UDP(dport=1), "PASS", 0, "pass_host"),
    "ipv6": (IPv6() / UDP(), "PASS", 0, "pass_ipv6"),
    "arp": (ARP(), "PASS", 0, "pass_non_ip"),
}


def model(auth: bool = False) -> Reference:
    from xdp_harness import make_config

    cfg = auth_config() if auth else make_config()
    return Reference(cfg, {GS: (NH_SMAC, NH_DMAC), CLIENT: (NH_SMAC, CLIENT_DMAC)})


@pytest.mark.parametrize("kind", sorted(TAGS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_tagged_like_untagged(xdp: Xdp, kind: str, case: str) -> None:
    payload, verdict, rule, reason = CASES[case]
    plain = xdp.run(untagged(payload))
    assert (plain.verdict, xdp.counts()) == (verdict, {(rule, reason): 1})
    frame = tagged(kind, payload)
    res = xdp.run(frame)
    assert res.verdict == verdict
    assert xdp.counts() == {(rule, reason): 2}, "counted as the untagged frame"
    if verdict == "TX":
        want = plain.data[:12] + tag_bytes(kind) + plain.data[12:]
        assert res.data.hex() == want.hex(), "the untagged result with its tags back"
    elif verdict == "PASS":
        assert res.data == frame, "passed unchanged, tags and all"
    (expected,) = model().expect(frame)
    assert (expected.verdict, expected.reason) == (verdict, reason)
    assert expected.output in (None, res.data)


@pytest.mark.parametrize("kind", sorted(TAGS))
def test_tagged_return_path_with_auth(xdp: Xdp, kind: str) -> None:
    xdp.apply(auth_config())
    plain_frame = fou_frame(GS, RETURN, token=KEY)
    plain = xdp.run(plain_frame)
    assert plain.verdict == "TX"
    frame = plain_frame[:12] + tag_bytes(kind) + plain_frame[12:]
    res = xdp.run(frame)
    assert res.verdict == "TX"
    assert res.data == plain.data[:12] + tag_bytes(kind) + plain.data[12:]
    assert Ether(res.data)[IP].dst == CLIENT
    assert xdp.counts() == {(1, "tx_return"): 2}
    (expected,) = model(auth=True).expect(frame)
    assert expected.output == res.data
    # And forward with the token, tagged.
    fwd = tagged(kind, FORWARD)
    res = xdp.run(fwd)
    assert res.verdict == "TX"
    (expected,) = model(auth=True).expect(fwd)
    assert expected.output == res.data


MALFORMED = {
    "tag cut short": bytes(Ether(src=IN_SMAC, dst=IN_DMAC, type=0x8100)) + b"\x00\x64",
    "second tag cut short": bytes(Ether(src=IN_SMAC, dst=IN_DMAC) / Dot1AD(vlan=2, type=0x8100))
    + b"\x00",
    "three tags": tagged("QinQ 802.1ad", Dot1Q(vlan=7) / FORWARD),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_tags_dropped(xdp: Xdp, name: str) -> None:
    """Neither parsed nor passed on untouched: a third tag would hide the packet
    from the firewall again."""
    frame = MALFORMED[name]
    assert xdp.run(frame).verdict == "DROP"
    assert xdp.counts() == {(0, "drop_malformed"): 1}
    assert [o.reason for o in model().expect(frame)] == ["drop_malformed"]
