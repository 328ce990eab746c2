"""The XDP program against the kernel's own fou + ipip on the game-server side.

::

    [client] c0 10.0.1.2 -- 10.0.1.1 p0 [pop] p1 10.9.1.1 -- 10.9.1.2 g0 [gs]
                              bifrost_xdp on p0, p1 (native)     ip fou add port 5555 ipproto 4
                                                                 tun0: ipip remote 10.9.1.1
                                                                   encap fou encap-dport 5555
                                                                 lo: 198.51.100.10 (service)

client -> VIP:27015: XDP encapsulates, the kernel's fou/ipip receive path must
deliver it to the service; the service's reply leaves through tun0 (the
kernel's ipip/fou transmit path) and XDP must decapsulate it to the client.
The object is the one built on the host (build/xdp/bifrost_xdp.o).
"""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from bifrost.xdp import loader, maps
from bifrost.xdp.build import OBJECT
from bifrost.xdp.config import Rule, XdpConfig
from bifrost_testing.xdp_topology import CLIENT_IP, GS_IP, POP_G_IP, XdpTopology, xdp_topology

pytestmark = pytest.mark.kernel

VIP, PORT = "198.51.100.10", 27015
FOU = 5555


def config() -> XdpConfig:
    a = ipaddress.IPv4Address
    rule = Rule(1, "game", a(VIP), ((PORT, PORT),), "udp", a(GS_IP), FOU, False, (), 0, 0)
    return XdpConfig(modules=("srcds",), pop_address=a(POP_G_IP), fou_port=FOU, rules=(rule,))


def gs_counter(lab: XdpTopology, dev: str, key: str) -> int:
    out = lab.gs.run(["cat", f"/sys/class/net/{dev}/statistics/{key}"]).stdout
    return int(out)


@pytest.fixture(scope="module")
def lab() -> Iterator[XdpTopology]:
    """One topology for the module: namespaces are slow to make under TCG."""
    if not OBJECT.exists():
        pytest.fail(f"{OBJECT} missing: build it on the host first (invoke build)")
    subprocess.run(["modprobe", "-a", "veth", "fou", "ipip"], check=True)
    with xdp_topology("bfx-ki", OBJECT, config(), VIP) as topo:
        # The game server's side is the kernel's own: fou receive port, ipip/fou tunnel back.
        for argv in (
            ["ip", "fou", "add", "port", str(FOU), "ipproto", "4"],
            ["ip", "link", "add", "tun0", "type", "ipip", "remote", POP_G_IP, "local", GS_IP,
             "encap", "fou", "encap-sport", "auto", "encap-dport", str(FOU)],
            ["ip", "link", "set", "tun0", "up"],
            ["ip", "addr", "add", f"{VIP}/32", "dev", "lo"],
            ["ip", "route", "add", "10.0.1.0/24", "dev", "tun0"],
            ["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"],
            ["sysctl", "-qw", "net.ipv4.conf.tun0.rp_filter=0"],
        ):  # fmt: skip
            topo.gs.run(argv)
        topo.attach()
        with topo.pop.entered():
            loader.manage_neighbours(config())
        yield topo


SO_NO_CHECK = 11


def no_check(sock: socket.socket) -> socket.socket:
    """UDP checksum 0 (legal over IPv4). veth leaves checksums CHECKSUM_PARTIAL for
    offload, and XDP frames carry no such state: on a NIC the hardware fills them in,
    on veth nobody would, and the receiver would count UdpInCsumErrors."""
    sock.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
    return sock


def _echo_server(sock: socket.socket, stop: threading.Event) -> None:
    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            data, addr = sock.recvfrom(2048)
        except TimeoutError:
            continue
        sock.sendto(b"echo:" + data, addr)


def _diag(lab: XdpTopology) -> str:
    """What each hop saw, for the failure message."""
    out = [f"xdp counters: {maps.counters(lab.ms)}"]
    for ns, what in ((lab.gs, ["ip", "-s", "link"]), (lab.pop, ["ip", "-s", "link"])):
        out.append(ns.run(what, check=False).stdout)
    out.append(lab.gs.run(["nstat", "-az"], check=False).stdout)
    out.append(lab.pop.run(["ip", "neigh"], check=False).stdout)
    return "\n".join(out)


def test_kernel_fou_accepts_encap_and_xdp_decaps_kernel_fou(lab: XdpTopology) -> None:
    srv = no_check(lab.gs.socket())
    srv.bind((VIP, PORT))
    stop = threading.Event()
    t = threading.Thread(target=_echo_server, args=(srv, stop), daemon=True)
    t.start()
    cl = no_check(lab.client.socket())
    cl.bind((CLIENT_IP, 40000))
    cl.settimeout(1)
    got = []
    try:
        for n in range(10):
            msg = b"ping%d" % n
            for _ in range(5):  # the very first may meet an unresolved neighbour
                cl.sendto(msg, (VIP, PORT))
                try:
                    data, addr = cl.recvfrom(2048)
                except TimeoutError:
                    continue
                got.append((data, addr))
                break
    finally:
        stop.set()
        t.join()
        srv.close()
        cl.close()
    assert got == [(b"echo:ping%d" % n, (VIP, PORT)) for n in range(10)], _diag(lab)
    counts = maps.counters(lab.ms)
    assert counts[(1, "tx_forward")].packets >= 10, "counters are per module: at least ours"
    ret = sum(counts[k].packets for k in counts if k[1] in ("tx_return", "pass_return_neigh"))
    assert ret >= 10 and counts[(1, "tx_return")].packets >= 9
    # It really went through the kernel's ipip device both ways.
    assert gs_counter(lab, "tun0", "rx_packets") >= 10
    assert gs_counter(lab, "tun0", "tx_packets") >= 10


def test_unknown_source_fou_is_not_relayed(lab: XdpTopology) -> None:
    """A FOU packet whose inner source is not a service of the sender: dropped by XDP."""
    before = maps.counters(lab.ms).get((0, "drop_relay"))
    base = before.packets if before else 0
    relay = lab.gs.socket()
    inner = bytes.fromhex("4500001c0001000040110000080808080a00010200359c4000080000")
    relay.sendto(inner, (POP_G_IP, FOU))
    relay.close()
    for _ in range(20):
        now = maps.counters(lab.ms).get((0, "drop_relay"))
        if now and now.packets > base:
            break
        time.sleep(0.1)
    assert maps.counters(lab.ms)[(0, "drop_relay")].packets == base + 1
