"""Shared helpers of the XDP tests: a loaded program, a test config, expected packets."""

from __future__ import annotations

import ipaddress
import json
import os
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from bifrost.codegen import render_module_config
from bifrost.netns import Namespace, link
from bifrost.xdp import build, libbpf, maps, maps_def
from bifrost.xdp.config import Rule, XdpConfig
from bifrost.xdp.libbpf import BpfObject, TestRun
from bifrost_testing import xdp_topology as topology

POP = "198.51.100.1"
VIP = "198.51.100.10"
VIP2 = "198.51.100.11"
VIP_NO_RULES = "198.51.100.12"
GS = "10.0.0.2"
GS_SRCDS = "10.0.0.3"
GS_TCP = "10.0.0.4"
GS_NO_RULES = "10.0.0.5"
CLIENT = "192.0.2.50"
BLOCKED = "203.0.113.5"
ALLOWED = "203.0.113.7"  # inside the blocked /24 but allow-listed
FOU = 5555

# Fixture next hops (ifindex 1 = the loopback BPF_PROG_TEST_RUN runs on: XDP_TX).
NH_SMAC = bytes.fromhex("020000000001")
NH_DMAC = bytes.fromhex("020000000002")
CLIENT_DMAC = bytes.fromhex("020000000003")
IN_SMAC = "02:00:00:00:00:aa"
IN_DMAC = "02:00:00:00:00:bb"

A2S_INFO = b"\xff\xff\xff\xffTSource Engine Query\x00"

# [auth] keys (AUTH.md): KEY is sent, KEY_OLD accepted too in auth_config().
KEY = bytes.fromhex("0123456789abcdef")
KEY_OLD = bytes.fromhex("fedcba9876543210")


def _ip(a: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(a)


def _rule(rid: int, name: str, vip: str, ports: tuple[tuple[int, int], ...], gs: str, **kw):
    base = dict(
        id=rid,
        name=name,
        anycast=_ip(vip),
        ports=ports,
        proto="udp",
        game_server=_ip(gs),
        fou_port=FOU,
        cache=False,
        modules=(),
        rate_limit_pps=0,
        rate_limit_burst=0,
    )
    base.update(kw)
    return Rule(**base)


def make_config(**overrides) -> XdpConfig:
    cfg = XdpConfig(
        modules=("srcds",),
        interface=None,
        pop_address=_ip(POP),
        fou_port=FOU,
        ipv6="pass",
        game_servers=(_ip(GS_NO_RULES),),
        anycast=(_ip(VIP_NO_RULES),),
        block=(ipaddress.IPv4Network("203.0.113.0/24"),),
        allow=(ipaddress.IPv4Network(f"{ALLOWED}/32"),),
        rules=(
            _rule(1, "game", VIP, ((27015, 27016),), GS, cache=True),
            _rule(2, "srcds", VIP, ((27020, 27020),), GS_SRCDS, modules=("srcds",)),
            _rule(3, "limited", VIP2, ((7777, 7777),), GS, rate_limit_pps=1, rate_limit_burst=2),
            _rule(4, "tcp", VIP2, (), GS_TCP, proto="tcp"),
        ),
    )
    return replace(cfg, **overrides)


def auth_config(**overrides) -> XdpConfig:
    """make_config() with authenticated FOU: KEY sent, KEY and KEY_OLD accepted."""
    return make_config(**{"auth_keys": (KEY, KEY_OLD), **overrides})


# For the tests that go through the loader or the CLI on a veth:
#     [pop] x0 10.8.0.1 ---- 10.8.0.2 y0 [peer]
X0_POP, X0_PEER = "10.8.0.1", "10.8.0.2"


def xdp_toml(
    pins: Path,
    modules: tuple[str, ...] = ("srcds",),
    interface: str = "x0",
    pop: str = X0_POP,
    rule: str = "cs2",
    anycast: str = VIP,
    ports: tuple[int | str, ...] = (27015,),
    gs: str = X0_PEER,
    **more: str,
) -> str:
    """A bifrost.toml: [xdp] with one rule; by default for x0_link()'s POP, the rule's
    game server its peer. more: further [xdp] keys with string values (mode, ipv6)."""
    xdp = {
        "modules": list(modules),
        "interface": interface,
        "pin_dir": str(pins),
        "pop_address": pop,
        **more,
    }
    first = {"name": rule, "anycast": anycast, "ports": list(ports), "game_server": gs}
    return _toml_table("[xdp]", xdp) + "\n" + _toml_table("[[xdp.rule]]", first)


def _toml_table(header: str, keys: dict[str, object]) -> str:
    # JSON's strings, integers and arrays of them are written as TOML writes them.
    return header + "\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())


@contextmanager
def x0_link(prefix: str) -> Iterator[tuple[Namespace, Namespace]]:
    """The POP (x0) and its peer (y0), namespaces prefix-a and prefix-b; removed on exit."""
    with Namespace(f"{prefix}-a") as pop, Namespace(f"{prefix}-b") as peer:
        link(pop, "x0", f"{X0_POP}/24", peer, "y0", f"{X0_PEER}/24")
        yield pop, peer


_compiled: dict[tuple[str, ...], Path] = {}


def compile_object(tmp: Path, modules: tuple[str, ...] = ("srcds",)) -> Path:
    """Compile once per module set per session (clang takes about a second)."""
    if modules not in _compiled:
        hdr = tmp / "module_config.h"
        hdr.write_text(render_module_config(list(modules), "tests"))
        _compiled[modules] = build.compile_program(hdr, tmp)
    return _compiled[modules]


@dataclass
class Xdp:
    obj: BpfObject
    prog: int
    ms: maps.MapSet

    def run(self, pkt: bytes, ingress_ifindex: int = 0) -> TestRun:
        return libbpf.test_run(self.prog, pkt, ingress_ifindex=ingress_ifindex)

    ns_per_jiffy: int = 0

    def apply(self, cfg: XdpConfig) -> None:
        maps.apply(self.ms, cfg, self.ns_per_jiffy)

    def set_nexthop(self, dst: str, smac: bytes, dmac: bytes, ifindex: int = 1) -> None:
        """A next hop that never expires: game servers by slot, clients by address."""
        value = maps_def.BY_NAME["nexthop"].pack(
            smac=smac, dmac=dmac, ifindex=ifindex, mtu=1500, dst=dst, expires_ns=2**63
        )
        slots = [str(g) for g in make_config().all_game_servers()]
        if dst in slots:
            self.ms["gs_nexthops"].update(struct.pack("=I", slots.index(dst)), value)
        else:
            self.ms["nexthops"].update(_ip(dst).packed, value)

    def counts(self) -> dict[tuple[int, str], int]:
        return {k: v.packets for k, v in maps.counters(self.ms).items()}

    def total(self) -> int:
        return sum(self.counts().values())


@contextmanager
def loaded(tmp: Path, modules: tuple[str, ...] = ("srcds",)) -> Iterator[Xdp]:
    obj = BpfObject(compile_object(tmp, modules))
    try:
        x = Xdp(obj, obj.prog_fd("bifrost_xdp"), maps.MapSet.from_fds(obj.map_fds()))
        x.ns_per_jiffy = maps.calibrate_clock(obj.prog_fd("bifrost_clock"), 0.05)
        x.apply(make_config(modules=modules))
        for dst in (GS, GS_SRCDS, GS_TCP):
            x.set_nexthop(dst, NH_SMAC, NH_DMAC)
        x.set_nexthop(CLIENT, NH_SMAC, CLIENT_DMAC)
        yield x
    finally:
        obj.close()


def need_root() -> str | None:
    return None if os.geteuid() == 0 else "needs root (BPF)"


# The program's flow hash, written out again so the tests check the C side.
def flow_port(inner: bytes) -> int:
    ihl = (inner[0] & 0xF) * 4
    saddr, daddr = (struct.unpack("<I", inner[o : o + 4])[0] for o in (12, 16))
    # Ports of UDP and TCP; an ICMP error forwarded to a game server hashes none.
    ports = struct.unpack("<I", inner[ihl : ihl + 4])[0] if inner[9] in (6, 17) else 0
    h = saddr ^ ((daddr * 0x9E3779B1) & 0xFFFFFFFF) ^ ports ^ inner[9]
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    h ^= h >> 16
    return 0xC000 | (h & 0x3FFF)


def outer_id(inner: bytes) -> int:
    """The outer IPv4 ID (RFC 6864): 0 for an atomic (DF) datagram, else the inner
    ID xor the flow's source port, unique per (POP, game server) as the inner's is."""
    if inner[6] & 0x40:
        return 0
    return int.from_bytes(inner[4:6], "big") ^ flow_port(inner)


def topology_frame(dport: int = 27015) -> bytes:
    """A client datagram to VIP as the POP's p0 receives it in bifrost_testing.xdp_topology."""
    return bytes(
        Ether(src="02:00:00:00:01:02", dst="02:00:00:00:01:01")
        / IP(src=topology.CLIENT_IP, dst=VIP)
        / UDP(sport=40000, dport=dport)
        / b"hi"
    )


def wait_for(what: Callable[[], bool], timeout: float) -> bool:
    """Poll what() until true or timeout; its last answer."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if what():
            return True
        time.sleep(0.05)
    return what()


def client_frame(inner) -> bytes:
    return bytes(Ether(src=IN_SMAC, dst=IN_DMAC) / inner)


def expected_encap(
    inner_bytes: bytes, gs: str, smac=NH_SMAC, dmac=NH_DMAC, token: bytes = b""
) -> bytes:
    """What the kernel's fou+ipip accepts: outer IPv4/UDP to the FOU port, UDP csum 0;
    token: the auth token after the inner packet, counted in the outer lengths."""
    inner = IP(inner_bytes)
    df = inner.flags & 0x2
    sport = flow_port(inner_bytes)
    outer = (
        Ether(src=smac, dst=dmac)
        / IP(src=POP, dst=gs, id=outer_id(inner_bytes), flags=df, ttl=64, tos=inner.tos, proto=17)
        / UDP(sport=sport, dport=FOU, chksum=0)
        / (inner_bytes + token)
    )
    return bytes(outer)


def fou_frame(
    outer_src: str, inner, outer_dst: str = POP, dport: int = FOU, token: bytes = b""
) -> bytes:
    """A FOU packet as the kernel's ipip/fou transmit path emits it (UDP csum 0);
    token: appended after the inner packet, as fou_map does with auth (AUTH.md)."""
    return bytes(
        Ether(src=IN_SMAC, dst=IN_DMAC)
        / IP(src=outer_src, dst=outer_dst, ttl=64, proto=17)
        / UDP(sport=49999, dport=dport, chksum=0)
        / (bytes(inner) + token)
    )
