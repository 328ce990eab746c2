"""The program on real devices in network namespaces on the host (bifrost_testing.xdp_topology).

::

    [client] c0 10.98.0.2 ---- 10.98.0.1 p0 [pop] p1 10.42.0.254 ---- 10.42.0.1 g0 [gs]
                                  XDP bifrost_xdp on p0 and p1 (native)
    VIP 198.51.100.10:27015 -> FOU to 10.42.0.1:5555. The host has no fou module, so
    the game server is a UDP socket on :5555: its payload IS the inner packet, and
    sending an inner packet to the POP's :5555 is exactly FOU.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from xdp_harness import A2S_INFO, VIP, compile_object, make_config, topology_frame

from bifrost.netns import Namespace, link
from bifrost.xdp import libbpf, loader, maps, maps_def
from bifrost.xdp.config import XdpConfig
from bifrost.xdp.libbpf import XDP_FLAGS_DRV_MODE
from bifrost_testing.xdp_topology import CLIENT_IP, GS_IP, POP_G_IP, XdpTopology, xdp_topology

pytestmark = pytest.mark.bpf


def lab_config() -> XdpConfig:
    cfg = make_config()
    rule = replace(cfg.rules[0], game_server=ipaddress.IPv4Address(GS_IP))
    return replace(
        cfg,
        pop_address=ipaddress.IPv4Address(POP_G_IP),
        rules=(rule, *cfg.rules[1:]),
        block=(),
        allow=(),
    )


@pytest.fixture
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XdpTopology]:
    obj_path = compile_object(tmp_path_factory.mktemp("netns"))
    with xdp_topology("bfx", obj_path, lab_config(), VIP) as topo:
        yield topo


def test_fib_lookup_fills_the_next_hop_cache(net: XdpTopology) -> None:
    """On a miss: bpf_fib_lookup; unresolved neighbour -> the stack; then cached MACs."""
    prog = net.obj.prog_fd("bifrost_xdp")
    p0, p1 = net.ifindex(net.pop, "p0"), net.ifindex(net.pop, "p1")
    frame = topology_frame()
    with net.pop.entered():
        res = libbpf.test_run(prog, frame, ingress_ifindex=p0)
        assert res.verdict == "DROP", "no neighbour yet"
        net.pop.run(["ip", "neigh", "replace", GS_IP, "lladdr", "02:00:00:00:09:02", "dev", "p1"])
        res = libbpf.test_run(prog, frame, ingress_ifindex=p0)
        assert res.verdict == "REDIRECT", "egress p1 != ingress p0"
        out = Ether(res.data)
        with net.pop.ipr() as ipr:
            p1_mac = ipr.get_links(p1)[0].get_attr("IFLA_ADDRESS")
        assert (out.dst, out.src) == ("02:00:00:00:09:02", p1_mac)
        slot = [str(g) for g in lab_config().all_game_servers()].index(GS_IP)
        nh = net.ms["gs_nexthops"].lookup(slot.to_bytes(4, "little"))
        assert nh is not None
        entry = maps_def.BY_NAME["nexthop"].unpack(nh)
        assert (entry["ifindex"], entry["mtu"]) == (p1, 1500)
        assert entry["dst"] == ipaddress.IPv4Address(GS_IP).packed
        # Next hop cached with the route MTU: an encapsulation over 1500 is dropped.
        big = bytes(Ether() / IP(src=CLIENT_IP, dst=VIP) / UDP(sport=1, dport=27015) / bytes(1450))
        assert libbpf.test_run(prog, big, ingress_ifindex=p0).verdict == "DROP"
        counts = maps.counters(net.ms)
        assert counts[(1, "drop_no_neigh")].packets == 1
        assert counts[(1, "tx_forward")].packets == 1
        assert counts[(1, "drop_too_big")].packets == 1
        # No route at all to the game server: dropped and counted.
        cfg = lab_config()
        lost = replace(cfg.rules[0], game_server=ipaddress.IPv4Address("10.77.0.1"))
        maps.apply(net.ms, replace(cfg, rules=(lost, *cfg.rules[1:])))
        assert libbpf.test_run(prog, frame, ingress_ifindex=p0).verdict == "DROP"
        assert maps.counters(net.ms)[(1, "drop_no_route")].packets == 1


def _send_until_received(cl: socket.socket, gs: socket.socket, msg: bytes) -> tuple[bytes, str]:
    """The neighbour may still be resolving right after priming: retry a few times."""
    gs.settimeout(0.5)
    for _ in range(6):
        cl.sendto(msg, (VIP, 27015))
        try:
            inner, (src, _) = gs.recvfrom(2048)
            return inner, src
        except TimeoutError:
            continue
    raise TimeoutError(f"{msg!r} never reached the game server")


def test_client_to_gameserver_and_back_native_xdp(net: XdpTopology) -> None:
    """UDP through the POP both ways with native XDP on both POP interfaces."""
    net.attach()

    with net.pop.entered():
        assert len(loader.manage_neighbours(lab_config()).managed) >= 1
    gs_sock = net.gs.socket()
    gs_sock.bind((GS_IP, 5555))
    gs_sock.settimeout(3)
    cl = net.client.socket()
    cl.bind((CLIENT_IP, 40000))
    cl.settimeout(3)
    try:
        for n in range(3):
            inner, src = _send_until_received(cl, gs_sock, b"ping%d" % n)
            assert src == POP_G_IP
            pkt = IP(inner)
            assert (pkt.src, pkt.dst, pkt[UDP].dport, bytes(pkt[UDP].payload)) == (
                CLIENT_IP,
                VIP,
                27015,
                b"ping%d" % n,
            )
            answer = IP(src=VIP, dst=CLIENT_IP) / UDP(sport=27015, dport=40000) / (b"pong%d" % n)
            gs_sock.sendto(bytes(answer), (POP_G_IP, 5555))
            data, addr = cl.recvfrom(2048)
            assert (data, addr) == (b"pong%d" % n, (VIP, 27015))
        # An A2S query to the caching rule is passed up, not forwarded: the next
        # datagram the game server gets is the control sent after it.
        cl.sendto(A2S_INFO, (VIP, 27015))
        cl.sendto(b"control", (VIP, 27015))
        inner, _ = gs_sock.recvfrom(2048)
        assert bytes(IP(inner)[UDP].payload) == b"control"
    finally:
        gs_sock.close()
        cl.close()
    counts = maps.counters(net.ms)
    ret = sum(counts[k].packets for k in counts if k[1] in ("tx_return", "pass_return_neigh"))
    assert counts[(1, "tx_forward")].packets == 4, counts
    assert ret == 3, counts
    assert counts[(1, "tx_return")].packets >= 2, "once the client is resolved XDP transmits"
    assert counts[(1, "pass_cache")].packets == 1


def test_topology_attaches_both_programs_and_removes_everything(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """attach() puts one bifrost_xdp on both POP ends and bifrost_pass on both peers;
    leaving the context (here by an error) removes every namespace it made."""
    obj_path = compile_object(tmp_path_factory.mktemp("topo"))
    ids: dict[str, int] = {}
    with (
        pytest.raises(RuntimeError, match="leave early"),
        xdp_topology("bfx-t", obj_path, lab_config(), VIP) as topo,
    ):
        names = [ns.name for ns in (topo.client, topo.pop, topo.gs)]
        topo.attach()
        for ns, dev in ((topo.pop, "p0"), (topo.pop, "p1"), (topo.client, "c0"), (topo.gs, "g0")):
            with ns.entered():
                ids[dev] = libbpf.xdp_query_id(socket.if_nametoindex(dev), XDP_FLAGS_DRV_MODE)
        with topo.client.ipr() as ipr:
            dsts = [r.get_attr("RTA_DST") for r in ipr.get_routes()]
        assert VIP in dsts, "the client routes the VIP through the POP"
        raise RuntimeError("leave early")
    assert ids["p0"] == ids["p1"] != 0, ids
    assert ids["c0"] == ids["g0"] != 0, ids
    assert ids["c0"] != ids["p0"], "the peers run bifrost_pass, not bifrost_xdp"
    assert [n for n in names if Path("/run/netns", n).exists()] == []


def test_tx_checksum_off_helper() -> None:
    """The lab helper really turns veth TX checksum offload off."""
    from bifrost_testing.topology import tx_checksum_off

    a, b = Namespace("bfx-csum-a"), Namespace("bfx-csum-b")
    try:
        link(a, "v0", "10.7.0.1/24", b, "v1", "10.7.0.2/24")
        assert tx_checksum_off(a, "v0") is True
    finally:
        a.close()
        b.close()
