"""fou_map's testbed: the one test network (bifrost_testing.topology) with the kernel's
FOU on the POPs instead of the XDP program, for fou_map's tests and benchmark.

```
 client 10.99.0.x -- net -- popN 10.41.N.1: fou port 5555, fmpop: ipip/fou -> 10.200.0.1
                       `--- gs: lo 10.200.0.1 (tunnel local),
                                fm0 (`bifrost endpoint`): 198.51.100.10 (service),
                                10.99.0.0/24 via pop1 onlink
```
Client traffic to the service goes client -> popN (the backbone's anycast route,
use_pop) -> (kernel FOU) -> gameserver; the game server's echo replies leave by
fm0 (kernel ipip/fou) and fou_map picks the POP.

With auth keys set (AUTH.md) the POPs' kernel fou cannot be the sender: it
appends no token, so fou_map drops what it sends. A test then sends as the POP
with ``RawSender`` (a raw socket in the POP's netns building outer IPv4/UDP,
inner packet and token, as the POP's XDP program does); the POPs' kernel fou
still RECEIVES the authenticated replies (ip_rcv trims the trailer), and
``Capture`` shows their bytes on the POP's wire.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

from bifrost import netns
from bifrost.fou_map import endpoint
from bifrost.fou_map.control import FouMap, TableConfig
from bifrost.vm.kernlog import dmesg as dmesg
from bifrost.vm.kernlog import kernel_trouble as kernel_trouble
from bifrost_testing import kmods
from bifrost_testing import topology as network
from bifrost_testing.topology import (
    FOU_PORT,
    GAME_PORT,
    GS_LOCAL,
    POP_NET,
    SERVICE_IP,
    client_ip,
    pop_ip,
)
from bifrost_testing.topology import wait_for as wait_for

MODULE = "fou_map"
DEV = Path("/dev/fou_map")
__all__ = [
    "DEV", "FOU_PORT", "GAME_PORT", "GS_LOCAL", "MODULE", "POPS", "POP_NET", "SERVICE_IP",
    "Capture", "EchoServer", "RawSender", "Topology", "build", "client_ip", "dmesg", "fou_packet",
    "gs_endpoint", "inner_udp", "kernel_trouble", "load", "loaded", "module_for_tests", "open_in",
    "pop_ip", "table_config", "unload", "wait_for",
]  # fmt: skip

# [fou_map] pops of the testbed: every POP of the one IP plan.
POPS = (POP_NET,)


def table_config(**kw: object) -> TableConfig:
    """The testbed's fou_map config: its FOU port and POP prefixes, then kw."""
    args: dict[str, object] = {"ports": (FOU_PORT,), "pops": POPS, **kw}
    return TableConfig(**args)  # type: ignore[arg-type]


def inner_udp(
    src: str, sport: int, payload: bytes = b"ping", dst: str = SERVICE_IP, dport: int = GAME_PORT
) -> bytes:
    """A client's packet to the game service, as a POP puts it inside FOU."""
    return bytes(IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / payload)


def fou_packet(
    src: str,
    inner: bytes,
    token: bytes = b"",
    csum: bool | int = False,
    dst: str = GS_LOCAL,
    sport: int = 40000,
) -> bytes:
    """Outer IPv4/UDP to the FOU port around inner and token (AUTH.md's wire format).

    csum: False sends a zero UDP checksum (none), True the right one, an int that
    value as the checksum (a wrong one, for spoof tests).
    """
    payload = inner + token
    udp = UDP(sport=sport, dport=FOU_PORT, len=8 + len(payload))
    if csum is False:
        udp.chksum = 0
    elif csum is not True:
        udp.chksum = int(csum)
    return bytes(IP(src=src, dst=dst) / udp / Raw(payload))


class RawSender:
    """Sends whole IPv4 packets, any source, from inside ns (IP_HDRINCL): the POP that
    appends tokens (the kernel's fou cannot) and the spoofer."""

    def __init__(self, ns: netns.Namespace) -> None:
        with ns.entered():
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)

    def send(self, pkt: bytes) -> None:
        self.sock.sendto(pkt, (socket.inet_ntoa(pkt[16:20]), 0))

    def close(self) -> None:
        self.sock.close()


class Capture:
    """IPv4 packets from src to dst arriving on ns's ifname, as on the wire (AF_PACKET).

    Capture where nothing rewrites the packet after it: a tapped packet shares its data
    with the one going up the stack, and the kernel's fou decapsulates IN PLACE
    (fou_recv_pull() lowers tot_len). ``at_router`` is the router's end of the game
    server's link, whose forwarding copies the packet first (skb_cow for the TTL).
    """

    ETH_P_IP = 0x0800
    PACKET_HOST = 0
    SO_RCVBUFFORCE = 33  # root may exceed rmem_max: a burst of replies must all fit

    def __init__(
        self, ns: netns.Namespace, dst: str, src: str = GS_LOCAL, ifname: str = "eth0"
    ) -> None:
        with ns.entered():
            self.sock = socket.socket(
                socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(self.ETH_P_IP)
            )
        self.sock.setsockopt(socket.SOL_SOCKET, self.SO_RCVBUFFORCE, 32 << 20)
        self.sock.bind((ifname, self.ETH_P_IP))
        self.sock.setblocking(False)
        self.match = socket.inet_aton(src) + socket.inet_aton(dst)
        self.packets: list[bytes] = []

    @classmethod
    def at_router(cls, topo: Topology, dst: str) -> Capture:
        """What the game server sends to dst, as it left the game server."""
        return cls(topo.nw.net, dst, ifname="g0")

    def poll(self) -> list[bytes]:
        """Every packet captured so far (read what has arrived since the last call)."""
        while True:
            try:
                data, addr = self.sock.recvfrom(65535)
            except BlockingIOError:
                return self.packets
            if addr[2] == self.PACKET_HOST and data[12:20] == self.match:
                self.packets.append(data)

    def close(self) -> None:
        self.sock.close()


def load() -> None:
    kmods.load("fou", "ipip", "veth", MODULE)


def unload() -> None:
    kmods.unload(MODULE)


def loaded() -> bool:
    return kmods.loaded(MODULE)


@contextlib.contextmanager
def module_for_tests() -> Iterator[None]:
    """fou_map loaded for a test module, unloaded after it (unless a test already did);
    fails when the kernel logged an oops, BUG or warning meanwhile."""
    load()
    before = dmesg()
    yield
    trouble = kernel_trouble(dmesg()[len(before) :])
    if loaded():
        unload()
    assert not trouble, trouble


def open_in(ns: netns.Namespace) -> FouMap:
    """The device opened from inside ns, so the kernel binds it to ns."""
    with ns.entered():
        return FouMap(DEV)


class EchoServer:
    """A UDP echo server bound to the service address inside the game server's netns."""

    def __init__(self, ns: netns.Namespace, addr: str = SERVICE_IP, port: int = GAME_PORT) -> None:
        self.sock = ns.socket()
        self.sock.bind((addr, port))
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.received = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                data, peer = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            self.received += 1
            with contextlib.suppress(OSError):
                self.sock.sendto(data, peer)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=2)
        self.sock.close()


@dataclass
class Topology:
    nw: network.Network
    echo: EchoServer | None = None

    @property
    def client(self) -> netns.Namespace:
        return self.nw.client

    @property
    def pops(self) -> list[netns.Namespace]:
        return self.nw.pops

    @property
    def gs(self) -> netns.Namespace:
        return self.nw.gs

    @property
    def clients(self) -> int:
        return self.nw.clients

    def close(self) -> None:
        if self.echo:
            self.echo.close()
        self.nw.close()

    # `with build(...) as t:` removes the testbed on leaving the block.
    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def use_pop(self, n: int) -> None:
        """The anycast route moves: the client's traffic reaches the service by POP n."""
        self.nw.use_pop(n)

    def client_socket(self, i: int = 0, timeout: float = 2.0) -> socket.socket:
        s = self.client.socket()
        s.bind((client_ip(i), 0))
        s.settimeout(timeout)
        return s

    def echo_once(self, s: socket.socket, payload: bytes = b"ping") -> bool:
        """One request; True when the echo came back."""
        s.sendto(payload, (SERVICE_IP, GAME_PORT))
        try:
            data, _ = s.recvfrom(2048)
        except TimeoutError:
            return False
        return data == payload

    def pop_rx(self, n: int) -> int:
        """Packets the POP's tunnel decapsulated from the game server (replies)."""
        with self.pops[n - 1].ipr() as ipr:
            link = ipr.get_links(ipr.link_lookup(ifname="fmpop")[0])[0]
            return int(link.get_attr("IFLA_STATS64")["rx_packets"])

    def fou_map(self) -> FouMap:
        return open_in(self.gs)


def gs_endpoint(gs: netns.Namespace, encap_csum: bool = False) -> endpoint.Endpoint:
    return endpoint.Endpoint(
        encap_csum=encap_csum,
        local=GS_LOCAL,
        gateway=pop_ip(1),
        netns=gs.name,
        port=FOU_PORT,
        ifname="fm0",
        addresses=(f"{SERVICE_IP}/32",),
        routes=("10.99.0.0/24",),
    )


def build(
    clients: int = 4, echo: bool = True, cfg: TableConfig | None = None, encap_csum: bool = False
) -> Topology:
    """encap_csum: outer UDP checksums on every tunnel (the POPs' and the game server's)."""
    topo = Topology(network.build(pops=2, clients=clients, prefix="fm"))
    try:
        for n, pop in enumerate(topo.pops, start=1):
            pop.run(["ip", "fou", "add", "port", str(FOU_PORT), "ipproto", "4"])
            pop.run(
                [
                    "ip", "link", "add", "fmpop", "type", "ipip", "remote", GS_LOCAL,
                    "local", pop_ip(n), "ttl", "64", "encap", "fou", "encap-sport", "auto",
                    "encap-dport", str(FOU_PORT),
                    "encap-csum" if encap_csum else "noencap-csum",
                ]
            )  # fmt: skip
            pop.run(["ip", "link", "set", "fmpop", "up"])
            pop.run(["ip", "route", "add", f"{SERVICE_IP}/32", "dev", "fmpop"])
        endpoint.up(gs_endpoint(topo.gs, encap_csum))
        if cfg is not None:
            with topo.fou_map() as fm:
                fm.configure(cfg)
        if echo:
            topo.echo = EchoServer(topo.gs)
    except BaseException:
        topo.close()
        raise
    return topo
