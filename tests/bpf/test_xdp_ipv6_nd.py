"""ipv6 = "drop" keeps the host's IPv6 neighbour discovery (RFC 4861) working.

Through BPF_PROG_TEST_RUN: every ND type with hop limit 255 passes, anything
else IPv6 (other ICMPv6, ND with a lower hop limit, behind an extension
header, truncated) is dropped as before. On real veths: the POP's p0, with
the program attached natively and ipv6 = "drop", still resolves the client's
IPv6 neighbour entry, while the client's IPv6 datagrams are dropped.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from scapy.layers.inet import UDP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_Redirect,
    ICMPv6ND_RS,
    IPv6,
    IPv6ExtHdrHopByHop,
)
from scapy.layers.l2 import Ether
from xdp_harness import VIP, Xdp, compile_object, make_config, wait_for
from xdp_reference import is_ipv6_nd

from bifrost.xdp import maps
from bifrost_testing.xdp_topology import XdpTopology, xdp_topology

pytestmark = pytest.mark.bpf

LL_A, LL_B = "fe80::1", "fe80::2"


def _v6(*layers, hlim: int = 255) -> bytes:
    pkt = Ether() / IPv6(src=LL_A, dst=LL_B, hlim=hlim)
    for layer in layers:
        pkt = pkt / layer
    return bytes(pkt)


ND = {
    "router solicitation (133)": _v6(ICMPv6ND_RS()),
    "router advertisement (134)": _v6(ICMPv6ND_RA()),
    "neighbour solicitation (135)": _v6(ICMPv6ND_NS(tgt=LL_B)),
    "neighbour advertisement (136)": _v6(ICMPv6ND_NA(tgt=LL_A)),
    "redirect (137)": _v6(ICMPv6ND_Redirect(tgt=LL_A, dst=LL_B)),
}
NOT_ND = {
    "echo request": _v6(ICMPv6EchoRequest()),
    "NS with hop limit 254 (off-link, RFC 4861 7.1.1)": _v6(ICMPv6ND_NS(tgt=LL_B), hlim=254),
    "RA with hop limit 64": _v6(ICMPv6ND_RA(), hlim=64),
    "NS behind a hop-by-hop header": _v6(IPv6ExtHdrHopByHop(), ICMPv6ND_NS(tgt=LL_B)),
    "UDP": _v6(UDP(sport=1, dport=2)),
    "type 138 (router renumbering)": _v6(ICMPv6ND_RS(type=138)),
    "NS cut after the IPv6 header": _v6(ICMPv6ND_NS(tgt=LL_B))[: 14 + 40 + 3],
}


@pytest.mark.parametrize("name", sorted(ND))
def test_nd_passes_with_ipv6_drop(xdp: Xdp, name: str) -> None:
    xdp.apply(make_config(ipv6="drop"))
    frame = ND[name]
    assert is_ipv6_nd(frame), "the reference model agrees it is ND"
    res = xdp.run(frame)
    assert res.verdict == "PASS"
    assert res.data == frame
    assert xdp.counts() == {(0, "pass_ipv6_nd"): 1}


@pytest.mark.parametrize("name", sorted(NOT_ND))
def test_other_ipv6_still_dropped(xdp: Xdp, name: str) -> None:
    xdp.apply(make_config(ipv6="drop"))
    frame = NOT_ND[name]
    assert not is_ipv6_nd(frame)
    assert xdp.run(frame).verdict == "DROP"
    assert xdp.counts() == {(0, "drop_ipv6"): 1}
    # Positive control: the same program and config pass ND.
    assert xdp.run(ND["neighbour advertisement (136)"]).verdict == "PASS"


def test_ipv6_pass_policy_counts_nd_as_ipv6(xdp: Xdp) -> None:
    """With ipv6 = "pass" nothing changes: ND is ordinary passed IPv6."""
    assert xdp.run(ND["router advertisement (134)"]).verdict == "PASS"
    assert xdp.counts() == {(0, "pass_ipv6"): 1}


POP6, CLIENT6 = "fd00:1::1", "fd00:1::2"


@pytest.fixture
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XdpTopology]:
    obj_path: Path = compile_object(tmp_path_factory.mktemp("nd"))
    cfg = replace(
        make_config(),
        ipv6="drop",
        pop_address=ipaddress.IPv4Address("10.9.1.1"),
        block=(),
        allow=(),
    )
    with xdp_topology("bfxnd", obj_path, cfg, VIP) as topo:
        for ns, dev, addr in ((topo.pop, "p0", POP6), (topo.client, "c0", CLIENT6)):
            ns.run(["ip", "-6", "addr", "add", f"{addr}/64", "dev", dev, "nodad"])
        topo.attach()
        yield topo


def _neigh_state(topo: XdpTopology) -> str:
    return topo.pop.run(["ip", "-6", "neigh", "show", CLIENT6, "dev", "p0"]).stdout


def test_pop_resolves_a_neighbour_with_ipv6_drop(net: XdpTopology) -> None:
    """The POP's solicitation goes out (XDP sees only ingress); the client's
    advertisement comes in through the program and must reach the stack."""
    with net.pop.entered():
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        resolved = False
        for _ in range(5):  # each send restarts resolution if the entry failed
            s.sendto(b"x", (CLIENT6, 9))
            if wait_for(lambda: "lladdr" in _neigh_state(net), 2.0):
                resolved = True
                break
    finally:
        s.close()
    assert resolved, _neigh_state(net)
    counts = maps.counters(net.ms)
    assert counts[(0, "pass_ipv6_nd")].packets >= 1
    # The client's own IPv6 datagrams to the POP are still dropped.
    with net.client.entered():
        c = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        before = counts.get((0, "drop_ipv6"))
        n0 = before.packets if before else 0
        c.sendto(b"y", (POP6, 9))
        assert wait_for(
            lambda: (
                (v := maps.counters(net.ms).get((0, "drop_ipv6"))) is not None and v.packets > n0
            ),
            3.0,
        )
    finally:
        c.close()
