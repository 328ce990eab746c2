"""The one-POP XDP test topology: client, POP and game server in network namespaces.

::

    [client] c0 10.98.0.2 ---- 10.98.0.1 p0 [pop] p1 10.42.0.254 ---- 10.42.0.1 g0 [gs]
                                  bifrost_xdp on p0 and p1 (native)
             bifrost_pass on c0                          bifrost_pass on g0

A dual-homed POP: it stands where topology.build() puts the backbone router,
with the router's two link addresses, so the project keeps one address plan
(bifrost_testing.topology). Its two ends make XDP_REDIRECT between interfaces
testable, which the one-uplink POPs of build() never do. The host's bpf tier
drives the program through it; what differs between tests (the object file,
its config, what the game server runs) stays with the caller.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from bifrost.netns import Namespace, link
from bifrost.xdp import libbpf, maps
from bifrost.xdp.config import XdpConfig
from bifrost.xdp.libbpf import XDP_FLAGS_DRV_MODE, BpfObject
from bifrost_testing import topology

# The router's link addresses of topology.build(): the POP takes the router's place.
CLIENT_IP, POP_C_IP = topology.CLIENT_LINK_IP, topology.NET_CLIENT_IP
POP_G_IP, GS_IP = topology.NET_GS_IP, topology.GS_IP
CLIENT_IF, POP_C_IF, POP_G_IF, GS_IF = "c0", "p0", "p1", "g0"


@dataclass
class Hosts:
    """The three namespaces, wired and addressed; nothing loaded."""

    client: Namespace
    pop: Namespace
    gs: Namespace

    def ifindex(self, ns: Namespace, name: str) -> int:
        with ns.ipr() as ipr:
            idx: int = ipr.link_lookup(ifname=name)[0]
            return idx


@contextmanager
def hosts(prefix: str, vip: str | None = None) -> Iterator[Hosts]:
    """Make the namespaces and veths, forwarding on the POP; remove them all on exit.

    With vip, the client routes it via the POP. Namespaces are named prefix-c,
    prefix-p, prefix-g (plus a unique suffix), so users with different prefixes
    are easy to tell apart in `ip netns`. For tests that attach through the
    loader (pinned maps) rather than an object of their own.
    """
    with ExitStack() as stack:
        # Namespace removal takes the veths (and any XDP program on them) with it.
        client, pop, gs = (stack.enter_context(Namespace(f"{prefix}-{r}")) for r in "cpg")
        link(client, CLIENT_IF, f"{CLIENT_IP}/24", pop, POP_C_IF, f"{POP_C_IP}/24")
        link(pop, POP_G_IF, f"{POP_G_IP}/24", gs, GS_IF, f"{GS_IP}/24")
        pop.sysctl("net.ipv4.ip_forward", "1")  # else bpf_fib_lookup says FWD_DISABLED
        if vip:
            client.route(f"{vip}/32", gateway=POP_C_IP)
        yield Hosts(client, pop, gs)


@dataclass
class XdpTopology(Hosts):
    """The hosts plus a loaded object and its maps (config applied)."""

    obj: BpfObject
    ms: maps.MapSet

    def attach(self) -> None:
        """bifrost_xdp (native) on both POP ends, bifrost_pass on the two peers.

        veth hands XDP_TX/REDIRECT frames only to a peer with NAPI on, and an
        XDP program on the peer is what turns it on; without it the frames vanish.
        """
        prog = self.obj.prog_fd("bifrost_xdp")
        passp = self.obj.prog_fd("bifrost_pass")
        with self.pop.entered():
            for dev in (POP_C_IF, POP_G_IF):
                libbpf.xdp_attach(socket.if_nametoindex(dev), prog, XDP_FLAGS_DRV_MODE)
        for ns, dev in ((self.client, CLIENT_IF), (self.gs, GS_IF)):
            with ns.entered():
                libbpf.xdp_attach(socket.if_nametoindex(dev), passp, XDP_FLAGS_DRV_MODE)


@contextmanager
def xdp_topology(prefix: str, obj_path: Path, cfg: XdpConfig, vip: str) -> Iterator[XdpTopology]:
    """hosts() plus obj_path loaded with cfg applied; all of it removed on exit.

    Nothing is attached yet (call attach()): BPF_PROG_TEST_RUN tests want the
    program loaded but no live traffic through it. The game server has only its
    link address: the caller adds what it serves.
    """
    with hosts(prefix, vip) as h, BpfObject(obj_path) as obj:
        ms = maps.MapSet.from_fds(obj.map_fds())
        maps.apply(ms, cfg)
        yield XdpTopology(h.client, h.pop, h.gs, obj, ms)
