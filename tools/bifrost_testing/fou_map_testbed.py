"""A client / two POPs / game-server testbed in network namespaces, for tests, bench and lab.

```
            10.31.1.0/24             10.41.1.0/24
         +---- c1 ---- pop1 (fou 5555, ipip -> GS) ---- g1 ----+
 client  |                                                      |  gameserver
 10.99.0.x (lo)                                                 |  10.200.0.1 (lo, tunnel local)
         +---- c2 ---- pop2 (fou 5555, ipip -> GS) ---- g2 ----+  fm0: 198.51.100.10 (service)
            10.31.2.0/24             10.41.2.0/24                  10.99.0.0/24 via pop1 onlink
```
Client traffic to the service goes client -> popN -> (kernel FOU) -> gameserver; the
game server's echo replies leave by fm0 (kernel ipip/fou) and fou_map picks the POP.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bifrost import netns
from bifrost.fou_map import endpoint
from bifrost.fou_map.control import FouMap, TableConfig
from bifrost.vm.kernlog import dmesg as dmesg
from bifrost.vm.kernlog import kernel_trouble as kernel_trouble

MODULE = "fou_map"
DEV = Path("/dev/fou_map")
FOU_PORT = 5555
SERVICE_IP = "198.51.100.10"
GAME_PORT = 27015
GS_LOCAL = "10.200.0.1"


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


def pop_ip(n: int) -> str:
    """The POP's address on its link to the game server: the outer source it sends from."""
    return f"10.41.{n}.1"


def client_ip(i: int) -> str:
    return f"10.99.0.{10 + i}"


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
    client: netns.Namespace
    pops: list[netns.Namespace]
    gs: netns.Namespace
    echo: EchoServer | None = None
    clients: int = 4
    closers: list[object] = field(default_factory=list)

    def close(self) -> None:
        if self.echo:
            self.echo.close()
        for ns in (self.client, *self.pops, self.gs):
            ns.close()

    def use_pop(self, n: int) -> None:
        """Route the client's traffic to the service through POP n (1 or 2)."""
        self.client.run(["ip", "route", "replace", f"{SERVICE_IP}/32", "via", f"10.31.{n}.1"])

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
    client = netns.Namespace("fmc")
    pops = [netns.Namespace("fmp1"), netns.Namespace("fmp2")]
    gs = netns.Namespace("fmgs")
    topo = Topology(client=client, pops=pops, gs=gs, clients=clients)
    try:
        for ns in (client, *pops, gs):
            ns.sysctl("net.ipv4.conf.all.rp_filter", "0")
            ns.sysctl("net.ipv4.conf.default.rp_filter", "0")
        for i in range(clients):
            client.run(["ip", "addr", "add", f"{client_ip(i)}/32", "dev", "lo"])
        gs.run(["ip", "addr", "add", f"{GS_LOCAL}/32", "dev", "lo"])
        for n, pop in enumerate(pops, start=1):
            pop.sysctl("net.ipv4.ip_forward", "1")
            netns.link(client, f"c{n}", f"10.31.{n}.2/24", pop, "cl", f"10.31.{n}.1/24")
            netns.link(pop, "gs", f"{pop_ip(n)}/24", gs, f"g{n}", f"10.41.{n}.2/24")
            pop.run(["ip", "route", "add", "10.99.0.0/24", "via", f"10.31.{n}.2"])
            pop.run(["ip", "route", "add", f"{GS_LOCAL}/32", "via", f"10.41.{n}.2"])
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
        endpoint.up(gs_endpoint(gs, encap_csum))
        topo.use_pop(1)
        if cfg is not None:
            with topo.fou_map() as fm:
                fm.configure(cfg)
        if echo:
            topo.echo = EchoServer(gs)
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


def wait_for(pred: object, timeout: float = 5.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return True
        time.sleep(step)
    return bool(pred())  # type: ignore[operator]
