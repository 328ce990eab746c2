"""Shared by the bifrost_nf kernel tests: module loading, the one test network with one POP.

The network is bifrost_testing.topology's (client -- net -- pop, gs): the
POP's own address is the cached service here (no XDP program in front), and
the game server's uplink address is where bifrost-cached asks.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bifrost import netns
from bifrost.bifrost_nf import a2s
from bifrost.bifrost_nf.nf import CacheDevice
from bifrost.vm.kernlog import dmesg as dmesg
from bifrost.vm.kernlog import kernel_trouble as kernel_trouble
from bifrost_testing import kmods, topology

MODULE = "bifrost_nf"
DEV = Path("/dev/bifrost_nf")
PY = sys.executable

CLIENT_IP = topology.client_ip(0)
POP_CLIENT_IP = topology.pop_ip(1)  # the service address clients query
POP_SERVER_IP = topology.pop_ip(1)  # where the daemon's queries come from (one uplink)
SERVER_IP = topology.GS_IP
GAME_PORT = topology.GAME_PORT


# A scratch build to load instead of the DKMS-installed module: the mutation checks
# (issue 14) run a suite against a copy broken on purpose, which must then fail.
SCRATCH_KO = os.environ.get("BIFROST_NF_KO")


def load() -> None:
    if SCRATCH_KO:
        kmods.load("veth")
        kmods.insmod(MODULE, SCRATCH_KO)
    else:
        kmods.load("veth", MODULE)


def unload() -> None:
    kmods.unload(MODULE)


def open_in(ns: netns.Namespace) -> CacheDevice:
    """The device opened from inside ns, so it is bound to ns."""
    with ns.entered():
        return CacheDevice(DEV)


@dataclass
class Topo:
    nw: topology.Network
    procs: list[subprocess.Popen[bytes]]

    @property
    def client(self) -> netns.Namespace:
        return self.nw.client

    @property
    def pop(self) -> netns.Namespace:
        return self.nw.pop(1)

    @property
    def server(self) -> netns.Namespace:
        return self.nw.gs

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.nw.close()

    def client_socket(self, timeout: float = 1.0) -> socket.socket:
        s = self.client.socket()
        s.settimeout(timeout)
        s.bind((CLIENT_IP, 0))
        return s


def make_topo(tag: str) -> Topo:
    return Topo(topology.build(pops=1, prefix=f"bf{tag}"), [])


@contextlib.contextmanager
def topo(tag: str) -> Iterator[Topo]:
    t = make_topo(tag)
    try:
        yield t
    finally:
        t.close()


def start_refserver(t: Topo, control: Path, *extra: str) -> subprocess.Popen[bytes]:
    argv = [
        PY, "-m", "bifrost_testing.refserver",
        "--bind", f"{SERVER_IP}:{GAME_PORT}",
        "--control", str(control),
        *extra,
    ]  # fmt: skip
    p = t.server.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t.procs.append(p)
    for _ in range(1200):  # Python starts slowly under TCG on a busy host
        if control.exists():
            return p
        if p.poll() is not None:
            raise RuntimeError(f"refserver exited: {p.stderr.read().decode() if p.stderr else ''}")
        time.sleep(0.05)
    raise RuntimeError("refserver did not start")


def wait_for(pred: object, timeout: float, step: float = 0.1) -> bool:
    return topology.wait_for(pred, timeout, step)  # type: ignore[arg-type]


def proc_env() -> dict[str, str]:
    return dict(os.environ)


def daemon_config(path: Path, refresh_s: float = 1.0, ttl_s: float = 2.0,
                  max_stale_s: float = 3.0, **extra: object) -> Path:  # fmt: skip
    lines = [
        "[cache]",
        f"refresh_s = {refresh_s}",
        f"ttl_s = {ttl_s}",
        f"max_stale_s = {max_stale_s}",
        "query_timeout_s = 0.5",
        *(f"{k} = {v!r}".replace("'", '"').replace("True", "true").replace("False", "false")
          for k, v in extra.items()),
        "[[cache.service]]",
        f'address = "{POP_CLIENT_IP}"',
        f"port = {GAME_PORT}",
        f'server = "{SERVER_IP}"',
    ]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return path


def start_daemon(t: Topo, config: Path) -> subprocess.Popen[bytes]:
    p = t.pop.popen(
        [PY, "-m", "bifrost.bifrost_nf.daemon", "-c", str(config), "-v"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    t.procs.append(p)
    return p


def ask_verified(t: Topo, kind: str, timeout: float = 5.0) -> bytes:
    """One query the way a client asks it: the challenge first, then the answer."""
    service = (POP_CLIENT_IP, GAME_PORT)
    with t.client_socket(timeout=timeout) as s:
        s.sendto(a2s.request(kind), service)
        chal = a2s.parse_challenge(s.recv(64))
        assert chal is not None
        s.sendto(a2s.request(kind, chal), service)
        return s.recv(4096)


def answers_cached(t: Topo, n: int = 3) -> bool:
    with open_in(t.pop) as dev:
        return any(len(s.answers) >= n for s in dev.dump())


def pop_counters(t: Topo) -> dict[str, int]:
    with open_in(t.pop) as dev:
        return dev.counters()


def refserver_stats(control: Path) -> dict[str, object]:
    from bifrost_testing import refserver

    return refserver.control(control, "stats")


def csum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ip_udp(src: str, sport: int, dst: str, dport: int, payload: bytes, *,
           udp_len: int | None = None, trailing: bytes = b"", frag: int = 0,
           good_csum: bool = True, ident: int = 0x1234) -> bytes:  # fmt: skip
    """A raw IPv4/UDP packet; udp_len may disagree with the payload (malformed on purpose)."""
    ulen = 8 + len(payload) if udp_len is None else udp_len
    udp = struct.pack("!HHHH", sport, dport, ulen, 0) + payload
    covered = udp[: max(ulen, 8)] if ulen <= len(udp) else udp
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 17, ulen)
    check = csum16(pseudo + covered) or 0xFFFF
    if not good_csum:
        check ^= 0x5A5A
    udp = udp[:6] + struct.pack("!H", check) + udp[8:]
    total = 20 + len(udp) + len(trailing)
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, total, ident, frag, 64, 17, 0,
        socket.inet_aton(src), socket.inet_aton(dst),
    )  # fmt: skip
    ip = ip[:10] + struct.pack("!H", csum16(ip)) + ip[12:]
    return ip + udp + trailing


class Wire:
    """Frames put straight onto the POP's uplink from the router's end (AF_PACKET).

    Any source address arrives as sent: the router's own input routing would drop
    martian sources before forwarding them, the POP's hook runs before its routing.
    """

    def __init__(self, t: Topo) -> None:
        with t.pop.ipr() as ipr:
            mac = ipr.get_links(ifname="eth0")[0].get_attr("IFLA_ADDRESS")
        self.dst = ("p1", 0x0800, 0, 0, bytes.fromhex(mac.replace(":", "")))
        self.sock = t.nw.net.socket(socket.AF_PACKET, socket.SOCK_DGRAM)

    def send(self, packet: bytes) -> None:
        self.sock.sendto(packet, self.dst)

    def close(self) -> None:
        self.sock.close()


def nft(ns: netns.Namespace, ruleset: str) -> None:
    done = subprocess.run(["ip", "netns", "exec", ns.name, "nft", "-f", "-"], input=ruleset,
                          text=True, capture_output=True)  # fmt: skip
    assert done.returncode == 0, f"nft -f failed ({done.returncode}): {done.stderr}\n{ruleset}"


def nft_packets(ns: netns.Namespace, table: str, chain: str) -> int:
    """The packet count of the one counter in an ip table's chain."""
    out = ns.run(["nft", "-j", "list", "chain", "ip", table, chain]).stdout
    counts = [
        item["rule"]["expr"][-1]["counter"]["packets"]
        for item in json.loads(out)["nftables"]
        if "rule" in item and "counter" in item["rule"]["expr"][-1]
    ]
    assert len(counts) == 1, out
    return int(counts[0])


def conntrack_count(ns: netns.Namespace) -> int:
    return int(ns.run(["sysctl", "-n", "net.netfilter.nf_conntrack_count"]).stdout)
