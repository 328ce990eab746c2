"""Lab step of the XDP program: client -> pop1 (XDP encap) -> game server (kernel fou)
-> pop1 (XDP decap) -> client, plus an A2S query passed up for the cache.

On the lab topology (bifrost_testing.lab.topology) it adds, and removes afterwards:
the game server's kernel FOU receive port and an ipip/fou tunnel to pop1 that
carries the replies to the client network; bifrost_xdp on pop1's to-client and
to-gs (one program, one set of maps); XDP_PASS programs on the veth peers (veth
delivers XDP_TX/REDIRECT frames only to a peer with NAPI on).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import threading
from typing import Any

from bifrost.xdp import libbpf, loader, maps
from bifrost.xdp.build import OBJECT
from bifrost.xdp.config import Rule, XdpConfig

FOU_PORT = 5555
PIN_BASE = "/sys/fs/bpf/bifrost-lab"
TUNNEL = "bfx-fou"
A2S_INFO = b"\xff\xff\xff\xffTSource Engine Query\x00"


def lab_config(topo: Any) -> XdpConfig:
    a = ipaddress.IPv4Address
    rule = Rule(
        1, "lab", a(topo.service_ip), ((topo.service_port, topo.service_port),), "udp",
        a(topo.gs_pop1_ip), FOU_PORT, True, (), 0, 0,
    )  # fmt: skip
    return XdpConfig(
        modules=("srcds",), pop_address=a(topo.pop1_gs_ip), fou_port=FOU_PORT, rules=(rule,)
    )


def tx_checksum_off(ns: Any, ifname: str) -> bool:
    """Turn TX checksum offload off on a veth end; True if it is off afterwards.

    A veth leaves UDP/TCP checksums CHECKSUM_PARTIAL (the "hardware" never fills
    them in), and a packet that goes through native XDP loses that state: after
    XDP_PASS/TX/REDIRECT or FOU encapsulation the receiver sees a bad checksum
    (UdpInCsumErrors). On a NIC the hardware fills them in. Labs whose senders
    sit behind a veth the XDP program runs on call this on the sender's end (or
    send with SO_NO_CHECK, as run() does).
    """
    from pyroute2.ethtool import Ethtool

    with ns.entered():
        et = Ethtool()
        try:
            feats = et.get_features(ifname)
            for name in ("tx-checksum-ip-generic", "tx-checksum-ipv4"):
                if name in feats.features:
                    feats.features[name].enable = False
            et.set_features(ifname, feats)
            after = et.get_features(ifname).features
            return not any(
                after[n].enable
                for n in ("tx-checksum-ip-generic", "tx-checksum-ipv4")
                if n in after
            )
        finally:
            et.close()


def _no_check(sock: Any) -> Any:
    """UDP checksum 0 (legal over IPv4): veth leaves checksums to an offload that XDP
    frames do not carry, so the receiver would drop them; a NIC fills them in."""
    sock.setsockopt(socket.SOL_SOCKET, 11, 1)  # SO_NO_CHECK
    return sock


def _echo(sock: Any, stop: threading.Event) -> None:
    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            data, addr = sock.recvfrom(2048)
        except TimeoutError:
            continue
        sock.sendto(b"echo:" + data, addr)


def _ask(cl: Any, msg: bytes, dst: tuple[str, int], tries: int = 5) -> bytes | None:
    for _ in range(tries):
        cl.sendto(msg, dst)
        try:
            return bytes(cl.recvfrom(2048)[0])
        except TimeoutError:
            continue
    return None


def _gs_tunnel(topo: Any, up: bool) -> None:
    gs = topo.gameserver
    if up:
        for argv in (
            ["ip", "fou", "add", "port", str(FOU_PORT), "ipproto", "4"],
            ["ip", "link", "add", TUNNEL, "type", "ipip", "remote", str(topo.pop1_gs_ip),
             "local", str(topo.gs_pop1_ip), "encap", "fou", "encap-sport", "auto",
             "encap-dport", str(FOU_PORT)],
            ["ip", "link", "set", TUNNEL, "up"],
            ["ip", "route", "replace", "10.0.1.0/24", "dev", TUNNEL],
        ):  # fmt: skip
            gs.run(argv)
    else:
        gs.run(["ip", "route", "replace", "10.0.1.0/24", "via", str(topo.pop1_gs_ip)], check=False)
        gs.run(["ip", "link", "del", TUNNEL], check=False)
        gs.run(["ip", "fou", "del", "port", str(FOU_PORT)], check=False)


def run(topo: Any) -> str:
    if not OBJECT.exists():
        raise FileNotFoundError(f"{OBJECT}: build it first (invoke build)")
    if not os.path.ismount("/sys/fs/bpf"):
        subprocess.run(["mount", "-t", "bpf", "bpf", "/sys/fs/bpf"], check=True)
    cfg = lab_config(topo)
    _gs_tunnel(topo, True)
    pdir = loader.pin_dir_for(PIN_BASE, "to-client")
    try:
        with topo.pop1.entered():
            res = loader.attach(cfg, "to-client", mode="native", pin_base=PIN_BASE)
            loader.attach_also("to-gs", "to-client", PIN_BASE, mode="native")
        for ns, dev in ((topo.client, "to-pop1"), (topo.gameserver, "to-pop1")):
            with ns.entered():
                loader.attach_pass(dev)
        print(f"bifrost_xdp on pop1 to-client+to-gs ({res.mode}), maps in {res.pin_dir}")
        for line in res.neighbours.lines():
            print(line)
        srv = _no_check(topo.gameserver.socket())
        srv.bind((str(topo.service_ip), topo.service_port))
        stop = threading.Event()
        t = threading.Thread(target=_echo, args=(srv, stop), daemon=True)
        t.start()
        cl = _no_check(topo.client.socket())
        cl.settimeout(1)
        dst = (str(topo.service_ip), topo.service_port)
        try:
            echoes = [_ask(cl, b"ping%d" % n, dst) for n in range(3)]
            a2s = _ask(cl, A2S_INFO, dst, tries=2)
        finally:
            stop.set()
            t.join()
            srv.close()
            cl.close()
        counts = maps.counters(maps.MapSet.from_pins(pdir))
        for (rid, reason), c in sorted(counts.items()):
            print(f"  rule {rid or '-'} {reason:<20} {c.packets:>6} packets")
        ok = sum(e == b"echo:ping%d" % n for n, e in enumerate(echoes))
        fwd = counts.get((1, "tx_forward"))
        ret = counts.get((1, "tx_return"))
        cache = counts.get((1, "pass_cache"))
        if ok != 3 or not fwd or not ret or not cache:
            raise RuntimeError(
                f"echoes {ok}/3, tx_forward {fwd}, tx_return {ret}, pass_cache {cache}"
            )
        who = "answered" if a2s else "not answered"
        return (
            f"3/3 echoes via XDP encap -> kernel fou -> XDP decap "
            f"(forward {fwd.packets}, return {ret.packets}); A2S_INFO passed up "
            f"to the POP stack ({cache.packets}) and {who}"
        )
    finally:
        with topo.pop1.entered():
            for dev in ("to-client", "to-gs"):
                loader.detach(dev, PIN_BASE)
        for ns, dev in ((topo.client, "to-pop1"), (topo.gameserver, "to-pop1")):
            with ns.entered():
                idx = loader.ifindex(dev)
                libbpf.xdp_detach(idx, libbpf.XDP_FLAGS_DRV_MODE)
        _gs_tunnel(topo, False)
