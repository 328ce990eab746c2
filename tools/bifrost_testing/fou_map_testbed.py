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
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bifrost import netns
from bifrost.fou_map import endpoint
from bifrost.fou_map.control import FouMap, TableConfig
from bifrost.vm.kernlog import dmesg as dmesg
from bifrost.vm.kernlog import kernel_trouble as kernel_trouble
from bifrost_testing import topology as network
from bifrost_testing.topology import FOU_PORT, GAME_PORT, GS_LOCAL, SERVICE_IP, client_ip, pop_ip
from bifrost_testing.topology import wait_for as wait_for

MODULE = "fou_map"
DEV = Path("/dev/fou_map")
__all__ = [
    "DEV", "FOU_PORT", "GAME_PORT", "GS_LOCAL", "MODULE", "SERVICE_IP", "EchoServer", "Topology",
    "build", "client_ip", "dmesg", "gs_endpoint", "kernel_trouble", "load", "loaded", "open_in",
    "pop_ip", "topology", "unload", "wait_for",
]  # fmt: skip


def load() -> None:
    subprocess.run(["modprobe", "-a", "fou", "ipip", "veth"], check=True)
    subprocess.run(["modprobe", MODULE], check=True)
    for _ in range(200):
        if DEV.exists():
            return
        time.sleep(0.02)
    raise RuntimeError(f"{DEV} did not appear")


def unload() -> None:
    subprocess.run(["rmmod", MODULE], check=True)


def loaded() -> bool:
    return Path(f"/sys/module/{MODULE}").exists()


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


@contextlib.contextmanager
def topology(**kw: object) -> Iterator[Topology]:
    topo = build(**kw)  # type: ignore[arg-type]
    try:
        yield topo
    finally:
        topo.close()
