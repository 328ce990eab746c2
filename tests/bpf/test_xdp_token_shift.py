"""The auth token's no-tailroom fallback (bfx_shift_to_head) on veth, every copy size.

::

    [client] c0 10.98.0.2 ---- 10.98.0.1 p0 [pop] p1 10.42.0.254 ---- 10.42.0.1 g0 [gs]
                                  bifrost_xdp on p0 and p1 (bifrost_testing.xdp_topology)

bpf_xdp_adjust_tail() cannot grow a frame without tailroom: veth's copied frames
(skb_pp_cow_data on 6.12) leave only cache-line slack, so about one length in
eight. The program then grows the head by 8 bytes, moves the headers and the
inner packet down into it in 64-byte chunks and puts the token after them.
Real frames take that path only at the lengths whose slack is short, so the
object here is built with growing the tail made to fail (BFX_GROW_TAIL): each of
64 consecutive lengths takes the fallback, and with them every size of the last
chunk (1..64 bytes). The game server must receive every inner packet byte for
byte followed by the send key, and a map the test build adds counts the
fallback's 8-byte head moves (BFX_HEAD_MOVED): one per forwarded packet.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from xdp_harness import KEY, VIP, make_config

from bifrost.codegen import render_module_config
from bifrost.xdp import build, loader, maps
from bifrost.xdp.config import XdpConfig
from bifrost_testing.xdp_topology import (
    CLIENT_IF,
    CLIENT_IP,
    GS_IP,
    POP_C_IF,
    POP_G_IP,
    XdpTopology,
    xdp_topology,
)

pytestmark = pytest.mark.bpf

# Inner lengths over the packet-move limit (encap.h BFX_MOVE_MAX, 255), so the token
# goes through bfx_auth_append(); the fallback moves 14 + 28 + len bytes, and 64
# consecutive lengths end that copy with each chunk size once.
LENGTHS = range(300, 364)
SHIFT_CHUNK = 64  # encap.h BFX_SHIFT_CHUNK

# Appended to module_config.h (the build -includes it before everything else).
TEST_HOOKS = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} test_shifts SEC(".maps");

/* Only bfx_shift_to_head() moves the head by -8 (encap: -28/-36, decap: +28/+36). */
static __always_inline void test_head_moved(int delta)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&test_shifts, &zero);

	if (n && delta == -8)
		__sync_fetch_and_add(n, 1);
}
#define BFX_HEAD_MOVED(delta) test_head_moved(delta)
#define BFX_GROW_TAIL(ctx, delta) ((delta) > 0 ? -1 : bpf_xdp_adjust_tail(ctx, delta))
"""


def _config() -> XdpConfig:
    """Rule "game" (VIP:27015) to the topology's game server, authenticated FOU."""
    cfg = make_config(auth_keys=(KEY,), block=(), allow=())
    rule = replace(cfg.rules[0], game_server=ipaddress.IPv4Address(GS_IP))
    return replace(cfg, pop_address=ipaddress.IPv4Address(POP_G_IP), rules=(rule, *cfg.rules[1:]))


@pytest.fixture
def net(tmp_path: Path) -> Iterator[XdpTopology]:
    hdr = tmp_path / "module_config.h"
    hdr.write_text(render_module_config(["srcds"], "tests") + TEST_HOOKS)
    with xdp_topology("bfx-sh", build.compile_program(hdr, tmp_path), _config(), VIP) as topo:
        yield topo


def _mac(topo: XdpTopology, ns_name: str, dev: str) -> str:
    ns = topo.client if ns_name == "client" else topo.pop
    with ns.ipr() as ipr:
        mac: str = ipr.get_links(ifname=dev)[0].get_attr("IFLA_ADDRESS")
        return mac


def _inner(length: int) -> bytes:
    """A client datagram of `length` IP bytes whose payload differs at every offset."""
    payload = bytes((i * 7 + length) & 0xFF for i in range(length - 28))
    pkt = bytes(IP(src=CLIENT_IP, dst=VIP, id=length) / UDP(sport=40000, dport=27015) / payload)
    assert len(pkt) == length
    return pkt


def test_every_shift_size_delivers_the_exact_packet_and_token(net: XdpTopology) -> None:
    net.attach()
    with net.pop.entered():
        assert len(loader.manage_neighbours(_config()).managed) >= 1
    shifts = net.obj.map_fds()["test_shifts"]
    counter = maps.Map(shifts, 4, 8, False)
    l2 = Ether(src=_mac(net, "client", CLIENT_IF), dst=_mac(net, "pop", POP_C_IF), type=0x0800)
    assert {(42 + n) % SHIFT_CHUNK for n in LENGTHS} == set(range(SHIFT_CHUNK))
    gs = net.gs.socket()
    gs.bind((GS_IP, 5555))
    gs.settimeout(0.5)
    tx = net.client.socket(socket.AF_PACKET, socket.SOCK_RAW)
    tx.bind((CLIENT_IF, 0))
    got: dict[int, bytes] = {}
    try:
        for n in LENGTHS:
            inner = _inner(n)
            # The first datagrams may meet an unresolved neighbour (drop_no_neigh): resend.
            for _ in range(10):
                tx.send(bytes(l2 / inner))
                try:
                    while n not in got:
                        data, (src, _) = gs.recvfrom(2048)
                        assert src == POP_G_IP
                        got[IP(data).id] = data
                except TimeoutError:
                    continue
                break
            assert got.get(n) == inner + KEY, f"inner length {n}: {maps.counters(net.ms)}"
    finally:
        gs.close()
        tx.close()
    counts = maps.counters(net.ms)
    forwarded = counts[(1, "tx_forward")].packets
    assert forwarded >= len(LENGTHS), counts
    assert (1, "drop_encap") not in counts, counts
    (taken,) = struct.unpack("=Q", counter.lookup(bytes(4)) or bytes(8))
    assert taken == forwarded, "every forwarded packet took the no-tailroom fallback"
