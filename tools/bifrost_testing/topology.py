"""The one test network: a client, N POPs and one game-server machine, each its own netns.

::

                                   [net] the Internet / backbone router
             10.98.0.0/24          /   |   \\          10.41.n.0/24 (n = 1..N)
  [client] eth0 .2 ------- .1 c0       |    pn .254 ------- .1 eth0 [popn]
    lo: 10.99.0.10+i (clients)         |
                                       g0 .254 ---- 10.42.0.0/24 ---- .1 eth0 [gs]
                                                                      svc0 .254
                                                   10.200.0.0/24 (container=True) |
                                                                  .1 eth0 [service]
  anycast 198.51.100.10 (the game service): net routes it to one POP (use_pop)

Every POP has ONE interface, as a POP with one uplink does: clients come in
on it and the game servers are reached through it, so the one XDP program on
it (`bifrost xdp run`) sees both directions. The game-server machine's
endpoint address GS_LOCAL (10.200.0.1) is either on its loopback or, with
container=True, the address of a container-like netns behind it that holds
the game service (`bifrost endpoint up --netns`). What runs on each host
(XDP, modules, daemons, kernel fou) is the caller's: the network is plain
routing.

Two things a NIC does that a veth does not. TX checksums are computed in
software on every end (tx checksum offload off: a veth leaves them to an
"offload" that native XDP frames lose, and the receiver drops the packet). And
the router's end of each POP link has GRO on, which gives a veth NAPI: veth hands
XDP_TX/REDIRECT frames only to a peer with NAPI. Only there: a NAPI veth queues
in a 256-packet ring instead of the backlog, and drops what overflows it.

That NAPI is threaded (its own kthread, as `threaded` in sysfs sets it) at
SCHED_FIFO priority NAPI_RT_PRIORITY: a NIC's NAPI is polled in softirq right
after its interrupt, ahead of every task, and the ring holds under a second
of a three-player stream (300 frames a second: the POP sends both directions
by XDP_TX), so the kthread must not wait behind the guest's tasks. In the TCG
guest on 6.12 it did: polled from softirq, the ring went unpolled for 5 to 26 s
(net_rx_action out of time, the rest left to ksoftirqd); threaded at normal
priority, the kthread's run delay (schedstat, sampled every 0.3 s over three
POP-move runs) grew by 0.9 to 1.1 s at a time, ten times, and one run lost 17 s
of replies with 393 and 944 xdp_tx_errors on the POPs' links and pop1's
neighbour entry of its router INCOMPLETE (the POP's ARP went into the full ring
too). At SCHED_FIFO the longest such step was 0.29 s. Not fixed by it: in one
6.12 run pop1's router-end kthread (SCHED_FIFO, 5 ms of run delay in all) slept
for over 60 s while its ring stayed full (481 xdp_tx_errors, 481 rx_dropped): a
NAPI never scheduled again, which no priority helps.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bifrost.netns import Namespace, link

SERVICE_IP = "198.51.100.10"  # the anycast address of the game service
GAME_PORT = 27015
FOU_PORT = 5555
CLIENT_NET = "10.99.0.0/24"  # the client's addresses (on its loopback)
CLIENT_LINK_IP, NET_CLIENT_IP = "10.98.0.2", "10.98.0.1"
GS_IP, NET_GS_IP = "10.42.0.1", "10.42.0.254"  # the game-server machine's uplink
GS_LOCAL = "10.200.0.1"  # the FOU endpoint: where POPs send, outer source of replies
GS_HOST_SVC_IP = "10.200.0.254"  # the machine's end of the container link
NAPI_RT_PRIORITY = 50  # SCHED_FIFO, as PREEMPT_RT runs threaded interrupt handlers


def client_ip(i: int = 0) -> str:
    """The i-th client address (a /32 on the client's loopback)."""
    return f"10.99.0.{10 + i}"


# Every POP's address (pop_ip) lies in it: fou_map's [fou_map] pops in every test.
POP_NET = "10.41.0.0/16"


def pop_ip(n: int) -> str:
    """POP n's address (1-based): the outer source of its FOU, its XDP pop_address."""
    return f"10.41.{n}.1"


def net_pop_ip(n: int) -> str:
    return f"10.41.{n}.254"


def set_nic_features(ns: Namespace, ifname: str, napi: bool = False) -> None:
    """tx checksum offload off; with napi, GRO on (the module docstring says why)."""
    from pyroute2.ethtool import Ethtool

    with ns.entered():
        et = Ethtool()
        try:
            feats = et.get_features(ifname)
            for name in ("tx-checksum-ip-generic", "tx-checksum-ipv4"):
                if name in feats.features:
                    feats.features[name].enable = False
            if napi and "rx-gro" in feats.features:
                feats.features["rx-gro"].enable = True
            et.set_features(ifname, feats)
        finally:
            et.close()


def tx_checksum_off(ns: Namespace, ifname: str) -> bool:
    """set_nic_features(); True when TX checksum offload is off afterwards."""
    from pyroute2.ethtool import Ethtool

    set_nic_features(ns, ifname)
    with ns.entered():
        et = Ethtool()
        try:
            after = et.get_features(ifname).features
        finally:
            et.close()
    names = ("tx-checksum-ip-generic", "tx-checksum-ipv4")
    return not any(after[n].enable for n in names if n in after)


@dataclass
class Network:
    """The namespaces; pops[0] is POP 1. Close it (or use network()) to remove them all."""

    net: Namespace
    client: Namespace
    pops: list[Namespace]
    gs: Namespace
    service: Namespace | None = None  # the container netns, with container=True
    clients: int = 1
    active_pop: int = 1
    links: list[tuple[str, str, str, str, str, str]] = field(default_factory=list)

    @property
    def endpoint_ns(self) -> Namespace:
        """Where the game service and its FOU endpoint live (container or machine)."""
        return self.service or self.gs

    @property
    def namespaces(self) -> dict[str, Namespace]:
        roles = {"client": self.client, "net": self.net}
        roles.update({f"pop{n}": ns for n, ns in enumerate(self.pops, start=1)})
        roles["gs"] = self.gs
        if self.service:
            roles["service"] = self.service
        return roles

    def pop(self, n: int) -> Namespace:
        return self.pops[n - 1]

    def use_pop(self, n: int) -> None:
        """The anycast route moves: the backbone sends the service's traffic to POP n."""
        self.net.route(f"{SERVICE_IP}/32", gateway=pop_ip(n))
        self.active_pop = n

    def route_client(self, i: int, n: int) -> None:
        """Client i's traffic to the service goes to POP n whatever use_pop says: the
        backbone routes by source, as anycast catchments split clients among POPs."""
        table = str(100 + i)
        self.net.run(
            ["ip", "route", "replace", f"{SERVICE_IP}/32", "via", pop_ip(n), "table", table]
        )
        self.net.run(["ip", "rule", "add", "from", f"{client_ip(i)}/32", "lookup", table])

    def describe(self) -> str:
        lines = ["namespaces:"]
        lines += [f"  {role:<8} {ns.name}" for role, ns in self.namespaces.items()]
        lines.append("links:")
        lines += [f"  {a}:{ai} {ac}  <->  {b}:{bi} {bc}" for a, ai, ac, b, bi, bc in self.links]
        lines.append(
            f"clients {', '.join(client_ip(i) for i in range(self.clients))}; anycast "
            f"{SERVICE_IP}:{GAME_PORT} routed to pop{self.active_pop}; endpoint {GS_LOCAL} "
            f"in {'service' if self.service else 'gs'}"
        )
        return "\n".join(lines)

    def close(self) -> None:
        for ns in reversed(list(self.namespaces.values())):
            ns.close()

    # `with build(...) as nw:` removes the network on leaving the block.
    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def napi_threads(ifname: str) -> list[int]:
    """The pids of the NAPI kthreads of every device named ifname (`napi/<ifname>-<id>`)."""
    pids = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if comm.read_text().strip().startswith(f"napi/{ifname}-"):
                pids.append(int(comm.parent.name))
    return pids


def napi_realtime(ifname: str) -> None:
    """Run ifname's threaded NAPI at SCHED_FIFO priority NAPI_RT_PRIORITY."""
    pids = napi_threads(ifname)
    if not pids:
        raise RuntimeError(f"{ifname}: no NAPI kthread (threaded NAPI did not take)")
    for pid in pids:
        os.sched_setscheduler(pid, os.SCHED_FIFO, os.sched_param(NAPI_RT_PRIORITY))


def _wire(
    nw: Network,
    a: str,
    a_if: str,
    a_cidr: str,
    b: str,
    b_if: str,
    b_cidr: str,
    napi: bool = False,
    nic: bool = True,
) -> None:
    """A link a:a_if <-> b:b_if; napi: the b end gets NAPI (GRO on), threaded,
    real-time; nic False: a plain veth (no feature changed, no NAPI)."""
    ns_a, ns_b = nw.namespaces[a], nw.namespaces[b]
    link(ns_a, a_if, a_cidr, ns_b, b_if, b_cidr)
    nw.links.append((a, a_if, a_cidr, b, b_if, b_cidr))
    if not nic:
        return
    set_nic_features(ns_a, a_if)
    set_nic_features(ns_b, b_if, napi=napi)
    if napi:
        # See the module docstring.
        ns_b.run(["sh", "-c", f"echo 1 > /sys/class/net/{b_if}/threaded"])
        napi_realtime(b_if)


def build(
    pops: int = 2,
    clients: int = 1,
    container: bool = False,
    prefix: str = "bf",
    xdp: bool = True,
    pop_napi: bool = True,
) -> Network:
    """Create and wire the namespaces; on failure remove what was made.

    xdp=False: no XDP program will run on the POPs (a benchmark of the kernel stack
    alone), so the links stay plain veths: no NAPI at the router's POP ends (the
    receive work is the backlog, which RPS can steer to a chosen CPU) and TX
    checksum offload left on (a veth hands such packets over as checked, as a NIC
    checks RX checksums in hardware): both settings are there for XDP only.

    pop_napi=False: the router's end of each POP link has no NAPI (module docstring),
    for POPs whose XDP runs in generic mode, whose XDP_TX goes through the stack."""
    made: list[Namespace] = []

    def ns(role: str) -> Namespace:
        made.append(Namespace(f"{prefix}-{role}"))
        return made[-1]

    try:
        nw = Network(
            net=ns("net"),
            client=ns("c"),
            pops=[ns(f"p{n}") for n in range(1, pops + 1)],
            gs=ns("gs"),
            clients=clients,
        )
        if container:
            nw.service = ns("svc")
        for each in made:
            each.sysctl("net.ipv4.conf.all.rp_filter", "0")
            each.sysctl("net.ipv4.conf.default.rp_filter", "0")
        for fwd in (nw.net, *nw.pops, nw.gs):
            # A POP forwards (else bpf_fib_lookup says FWD_DISABLED; the kernel-fou
            # flavour routes through it); the machine forwards to its container.
            fwd.sysctl("net.ipv4.ip_forward", "1")
        c_cidr, net_c_cidr = f"{CLIENT_LINK_IP}/24", f"{NET_CLIENT_IP}/24"
        _wire(nw, "client", "eth0", c_cidr, "net", "c0", net_c_cidr, nic=xdp)
        for i in range(clients):
            nw.client.address("lo", f"{client_ip(i)}/32")
        # Unbound sockets (python-a2s) speak as the first client address.
        nw.client.run(["ip", "route", "add", "default", "via", NET_CLIENT_IP, "src", client_ip(0)])
        nw.net.route(CLIENT_NET, gateway=CLIENT_LINK_IP)
        for n in range(1, pops + 1):
            pop_cidr, net_cidr = f"{pop_ip(n)}/24", f"{net_pop_ip(n)}/24"
            # The POP's XDP program sends XDP_TX frames to the router's end: NAPI there.
            napi = pop_napi and xdp
            _wire(nw, f"pop{n}", "eth0", pop_cidr, "net", f"p{n}", net_cidr, napi=napi, nic=xdp)
            nw.pop(n).route("default", gateway=net_pop_ip(n))
        _wire(nw, "gs", "eth0", f"{GS_IP}/24", "net", "g0", f"{NET_GS_IP}/24", nic=xdp)
        nw.gs.route("default", gateway=NET_GS_IP)
        nw.net.route("10.200.0.0/24", gateway=GS_IP)
        if nw.service:
            svc = f"{GS_HOST_SVC_IP}/24"
            _wire(nw, "gs", "svc0", svc, "service", "eth0", f"{GS_LOCAL}/24", nic=xdp)
            nw.service.route("default", gateway=GS_HOST_SVC_IP)
        else:
            nw.gs.address("lo", f"{GS_LOCAL}/32")
        nw.use_pop(1)
        return nw
    except BaseException:
        for each in reversed(made):
            each.close()
        raise


def wait_for(pred: Callable[[], object], timeout: float = 5.0, step: float = 0.05) -> bool:
    """Poll pred until it is true or timeout passes; its last value decides."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())


def ipv4(text: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(text)
