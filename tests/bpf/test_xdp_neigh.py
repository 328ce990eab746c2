"""The loader's managed neighbour entries for the game servers' next hops, on real veths.

::

    [client] c0 10.98.0.2 -- 10.98.0.1 p0 [pop] p1 10.42.0.254 -- 10.42.0.1 g0 [gs]

XDP cannot make the kernel resolve a neighbour, so on a long-lived POP the
game server's entry must be kept resolved by the kernel itself (NTF_EXT_MANAGED).
These tests show the entry is made, resolves with no traffic, recovers from
FAILED and follows a MAC change with no traffic (where a plain entry stays
dead), covers a gateway, leaves operators' entries alone and is removed by
detach.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import ndmsg
from scapy.layers.l2 import Ether
from xdp_harness import VIP, compile_object, topology_frame, wait_for

from bifrost.cli.main import main
from bifrost.netns import Namespace, link
from bifrost.xdp import libbpf, loader
from bifrost.xdp.config import Rule, XdpConfig
from bifrost_testing import xdp_topology as topology

pytestmark = pytest.mark.bpf

CLIENT_IP, POP_G_IP, GS_IP = topology.CLIENT_IP, topology.POP_G_IP, topology.GS_IP
FOU = 5555
# The kernel's managed-entry work runs every interval_probe_time_ms (5 s, one
# value for the whole host), so a re-resolution can take two rounds of it.
RECOVERY_S = 15


def config(*servers: str) -> XdpConfig:
    """One forwarding rule to GS_IP plus extra game servers."""
    a = ipaddress.IPv4Address
    rule = Rule(1, "game", a(VIP), ((27015, 27015),), "udp", a(GS_IP), FOU, False, (), 0, 0)
    return XdpConfig(
        modules=("srcds",),
        pop_address=a(POP_G_IP),
        fou_port=FOU,
        rules=(rule,),
        game_servers=tuple(a(s) for s in servers),
    )


@dataclass(frozen=True)
class Entry:
    state: int
    managed: bool
    protocol: int | None
    lladdr: str | None

    @property
    def valid(self) -> bool:
        """What bpf_fib_lookup accepts (NUD_VALID); anything else is drop_no_neigh."""
        valid = ndmsg.NUD_PERMANENT | ndmsg.NUD_NOARP | ndmsg.NUD_REACHABLE
        return bool(self.state & (valid | ndmsg.NUD_STALE | ndmsg.NUD_DELAY | ndmsg.NUD_PROBE))


def entry(ns: Namespace, address: str, dev: str) -> Entry | None:
    with ns.ipr() as ipr:
        idx = ipr.link_lookup(ifname=dev)[0]
        try:
            msg = ipr.neigh("get", dst=address, ifindex=idx)[0]
        except NetlinkError:
            return None
    return Entry(
        msg["state"],
        bool((msg.get_attr("NDA_FLAGS_EXT") or 0) & loader.NTF_EXT_MANAGED),
        msg.get_attr("NDA_PROTOCOL"),
        msg.get_attr("NDA_LLADDR"),
    )


def updated_ticks(ns: Namespace, address: str, dev: str) -> int:
    """NDA_CACHEINFO ndm_updated: clock ticks (USER_HZ) since the entry last changed."""
    with ns.ipr() as ipr:
        msg = ipr.neigh("get", dst=address, ifindex=ipr.link_lookup(ifname=dev)[0])[0]
    return int(msg.get_attr("NDA_CACHEINFO")["ndm_updated"])


def mac(ns: Namespace, dev: str) -> str:
    with ns.ipr() as ipr:
        return str(ipr.get_links(ipr.link_lookup(ifname=dev)[0])[0].get_attr("IFLA_ADDRESS"))


def ip_in_receives(ns: Namespace) -> int:
    """IP datagrams the namespace received (ARP is not IP)."""
    lines = [ln.split() for ln in ns.run(["cat", "/proc/net/snmp"]).stdout.splitlines()]
    head, values = [ln for ln in lines if ln[0] == "Ip:"][:2]
    return int(values[head.index("InReceives")])


@dataclass
class Net:
    client: Namespace
    pop: Namespace
    gs: Namespace
    pins: Path
    obj: Path

    def fast_probes(self) -> None:
        """Short per-device neighbour timers on p1 (not the 5 s managed interval):
        FAILED after 3 x 100 ms, STALE after 0.25-0.75 s, first unicast probe after 1 s."""
        for key, value in (
            ("retrans_time_ms", "100"),
            ("base_reachable_time_ms", "500"),
            ("delay_first_probe_time", "1"),
        ):
            self.pop.sysctl(f"net.ipv4.neigh.p1.{key}", value)

    def forward_verdict(self) -> tuple[str, str]:
        """A client frame through the attached program (BPF_PROG_TEST_RUN): verdict, dst MAC."""
        frame = topology_frame()
        with self.pop.entered():
            prog = libbpf.get_pinned(str(self.pins / "p0" / loader.PROG_PIN))
            res = libbpf.test_run(prog, frame, ingress_ifindex=socket.if_nametoindex("p0"))
        return res.verdict, Ether(res.data).dst


@pytest.fixture
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    obj = compile_object(tmp_path_factory.mktemp("neigh"))
    pins = Path(f"/sys/fs/bpf/bfx-test-neigh-{os.getpid()}")
    try:
        with topology.hosts("bfx-n") as h:
            yield Net(h.client, h.pop, h.gs, pins, obj)
    finally:
        shutil.rmtree(pins, ignore_errors=True)


def test_attach_makes_the_next_hop_managed_and_reachable_without_traffic(net: Net) -> None:
    with net.pop.entered():
        res = loader.attach(config(), "p0", obj=net.obj, pin_base=net.pins)
    assert [str(nh) for nh in res.neighbours.managed] == [f"{GS_IP} dev p1"]
    assert res.neighbours.errors == ()
    assert wait_for(
        lambda: (e := entry(net.pop, GS_IP, "p1")) is not None and e.state == ndmsg.NUD_REACHABLE, 3
    )
    got = entry(net.pop, GS_IP, "p1")
    assert got == Entry(ndmsg.NUD_REACHABLE, True, loader.RTPROT_BIFROST, mac(net.gs, "g0"))
    # The kernel resolved it by ARP alone: no datagram (no old-style nudge) reached the server.
    assert ip_in_receives(net.gs) == 0
    assert net.forward_verdict() == ("REDIRECT", mac(net.gs, "g0"))
    # Re-applying does not disturb a valid entry: the kernel's "last updated" stays old.
    assert wait_for(lambda: updated_ticks(net.pop, GS_IP, "p1") >= 30, 5)
    with net.pop.entered():
        assert len(loader.manage_neighbours(config()).managed) == 1
    assert entry(net.pop, GS_IP, "p1") == got
    assert updated_ticks(net.pop, GS_IP, "p1") >= 30  # USER_HZ ticks: at least 0.3 s ago
    # Recorded in the pin dir (bpffs: a directory per entry, ':' for '.').
    pinned = [d.name for d in (net.pins / "p0" / "neighbours").iterdir()]
    assert pinned == [GS_IP.replace(".", ":") + "@p1"]


def test_managed_entry_recovers_from_failed_where_a_plain_one_stays_dead(net: Net) -> None:
    """The long-lived-POP failure: the server did not answer ARP for a while (reboot,
    switch outage), the entry went FAILED, and nothing on a POP sends it traffic again."""
    net.gs.run(["ip", "addr", "add", "10.42.0.2/24", "dev", "g0"])
    net.gs.sysctl("net.ipv4.conf.all.arp_ignore", "8")  # answer no ARP request
    net.fast_probes()
    with net.pop.entered():
        loader.attach(config(), "p0", obj=net.obj, pin_base=net.pins)
        # The control: a plain entry made the pre-managed way, by one datagram.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"", ("10.42.0.2", 9))

    def failed(addr: str) -> bool:
        e = entry(net.pop, addr, "p1")
        return e is not None and e.state == ndmsg.NUD_FAILED

    assert wait_for(lambda: failed(GS_IP) and failed("10.42.0.2"), 5)
    assert net.forward_verdict()[0] == "DROP"  # drop_no_neigh

    net.gs.sysctl("net.ipv4.conf.all.arp_ignore", "0")
    assert wait_for(
        lambda: (
            entry(net.pop, GS_IP, "p1")
            == Entry(ndmsg.NUD_REACHABLE, True, loader.RTPROT_BIFROST, mac(net.gs, "g0"))
        ),
        RECOVERY_S,
    )
    plain = entry(net.pop, "10.42.0.2", "p1")
    assert plain is None or not plain.valid, "nothing re-resolves a plain entry"
    assert net.forward_verdict() == ("REDIRECT", mac(net.gs, "g0"))


def test_managed_entry_follows_a_mac_change_without_traffic(net: Net) -> None:
    """The server's NIC (or a failover peer) takes the address with a new MAC and says
    nothing: the managed entry finds the new MAC by itself."""
    net.fast_probes()
    with net.pop.entered():
        loader.manage_neighbours(config())
    old = mac(net.gs, "g0")
    assert wait_for(
        lambda: (e := entry(net.pop, GS_IP, "p1")) is not None and e.lladdr == old and e.valid, 3
    )
    new = "02:00:00:00:09:99"
    net.gs.run(["ip", "link", "set", "g0", "address", new])
    assert wait_for(
        lambda: (e := entry(net.pop, GS_IP, "p1")) is not None and e.lladdr == new and e.valid,
        RECOVERY_S + 5,
    )
    assert entry(net.pop, GS_IP, "p1").managed  # type: ignore[union-attr]
    assert ip_in_receives(net.gs) == 0


def test_gateway_next_hop(net: Net) -> None:
    """Servers behind a router: the managed entry is the router's, one for both servers."""
    router = net.gs  # g0 10.42.0.1 is the router; the servers sit behind it
    srv = Namespace("bfx-ns")
    try:
        link(router, "r1", "10.20.0.1/24", srv, "s0", "10.20.0.2/24")
        net.pop.route("10.20.0.0/24", gateway=GS_IP)
        cfg = config("10.20.0.2", "10.20.0.3")
        with net.pop.entered():
            rep = loader.manage_neighbours(cfg)
        by_addr = {str(nh.address): nh for nh in rep.managed}
        assert set(by_addr) == {GS_IP}
        assert set(map(str, by_addr[GS_IP].servers)) == {GS_IP, "10.20.0.2", "10.20.0.3"}
        assert "gateway for" in str(by_addr[GS_IP])
        assert wait_for(
            lambda: (
                (e := entry(net.pop, GS_IP, "p1")) is not None
                and e.state == ndmsg.NUD_REACHABLE
                and e.managed
            ),
            3,
        )
        # No entry for the servers themselves on p1: they are not on that link.
        assert entry(net.pop, "10.20.0.2", "p1") is None
    finally:
        srv.close()


def test_no_route_is_a_clear_error_and_the_rest_is_managed(net: Net) -> None:
    net.pop.run(["ip", "route", "add", "blackhole", "10.66.0.0/16"])
    with net.pop.entered():
        rep = loader.manage_neighbours(config("10.77.0.1", "10.66.0.1", POP_G_IP))
    assert [str(nh.address) for nh in rep.managed] == [GS_IP]
    assert len(rep.errors) == 3, rep.errors
    unreachable, blackhole, local = sorted(
        rep.errors, key=lambda e: ("10.77" not in e, "10.66" not in e)
    )
    assert "10.77.0.1: no route in this netns (Network is unreachable)" in unreachable
    assert "drop_no_route" in unreachable
    assert "10.66.0.1: no route in this netns (blackhole or prohibit route)" in blackhole
    assert f"{POP_G_IP}: is an address of this host" in local


def test_detach_removes_only_what_the_loader_made(net: Net) -> None:
    """Operators' entries (permanent, their own managed, plain) survive, and so does one
    of ours that an operator has since replaced."""
    g = net.gs
    for a in ("10.42.0.2", "10.42.0.3", "10.42.0.4", "10.42.0.5"):
        g.run(["ip", "addr", "add", f"{a}/24", "dev", "g0"])
    p = net.pop.run
    p(
        [
            "ip",
            "neigh",
            "add",
            "10.42.0.2",
            "lladdr",
            "02:00:00:00:00:03",
            "nud",
            "permanent",
            "dev",
            "p1",
        ]
    )
    p(["ip", "neigh", "add", "10.42.0.3", "dev", "p1", "managed"])
    p(
        [
            "ip",
            "neigh",
            "add",
            "10.42.0.6",
            "lladdr",
            "02:00:00:00:00:07",
            "nud",
            "stale",
            "dev",
            "p1",
        ]
    )
    cfg = config("10.42.0.2", "10.42.0.3", "10.42.0.4", "10.42.0.5")
    with net.pop.entered():
        res = loader.attach(cfg, "p0", obj=net.obj, pin_base=net.pins)
    assert sorted(str(nh.address) for nh in res.neighbours.managed) == [
        GS_IP,
        "10.42.0.4",
        "10.42.0.5",
    ]
    assert sorted(res.neighbours.kept) == [
        "10.42.0.2 dev p1: a permanent entry (set by an operator)",
        "10.42.0.3 dev p1: already managed by someone else",
    ]
    # Not made managed (that would strip its permanence): still the operator's MAC.
    perm = entry(net.pop, "10.42.0.2", "p1")
    assert perm == Entry(ndmsg.NUD_PERMANENT, False, None, "02:00:00:00:00:03")
    # An operator pins 10.42.0.5 after the attach: it is theirs now.
    p(
        [
            "ip",
            "neigh",
            "replace",
            "10.42.0.5",
            "lladdr",
            "02:00:00:00:00:06",
            "nud",
            "permanent",
            "dev",
            "p1",
        ]
    )

    with net.pop.entered():
        loader.detach("p0", net.pins)
    assert entry(net.pop, GS_IP, "p1") is None
    assert entry(net.pop, "10.42.0.4", "p1") is None
    assert entry(net.pop, "10.42.0.2", "p1") == perm
    assert entry(net.pop, "10.42.0.3", "p1").managed  # type: ignore[union-attr]
    assert entry(net.pop, "10.42.0.5", "p1").state == ndmsg.NUD_PERMANENT  # type: ignore[union-attr]
    assert entry(net.pop, "10.42.0.6", "p1") is not None
    assert not (net.pins / "p0").exists()


def test_cli_prints_managed_and_apply_reconciles(net: Net, tmp_path: Path, capsys) -> None:
    """attach/apply print what they manage; apply releases an entry no server needs
    (a server without a route exits 2) and re-creates one a carrier loss flushed."""
    toml = tmp_path / "bifrost.toml"

    def write(extra: str) -> None:
        toml.write_text(
            f'[xdp]\nmodules = ["srcds"]\ninterface = "p0"\npin_dir = "{net.pins}"\n'
            f'pop_address = "{POP_G_IP}"\ngame_servers = [{extra}]\n\n'
            f'[[xdp.rule]]\nname = "game"\nanycast = "{VIP}"\nports = [27015]\n'
            f'game_server = "{GS_IP}"\n'
        )

    net.gs.run(["ip", "addr", "add", "10.42.0.4/24", "dev", "g0"])
    write('"10.42.0.4"')
    with net.pop.entered():
        assert main(["-c", str(toml), "xdp", "attach", "--obj", str(net.obj)]) == 0
        out = capsys.readouterr().out
        assert f"managed neighbour {GS_IP} dev p1" in out
        assert "managed neighbour 10.42.0.4 dev p1" in out

        write('"10.77.0.1"')  # 10.42.0.4 no longer a game server; 10.77.0.1 unroutable
        assert main(["-c", str(toml), "xdp", "apply"]) == 2
        cap = capsys.readouterr()
        assert f"managed neighbour {GS_IP} dev p1" in cap.out
        assert "released neighbour 10.42.0.4 dev p1" in cap.out
        assert "error: game server 10.77.0.1: no route" in cap.err
        assert entry(net.pop, "10.42.0.4", "p1") is None

        # A carrier loss on p1 flushes every dynamic entry, managed ones too (the
        # kernel's behaviour, measured): nothing but apply brings them back.
        net.gs.run(["ip", "link", "set", "g0", "down"])
        assert wait_for(lambda: entry(net.pop, GS_IP, "p1") is None, 3)
        net.gs.run(["ip", "link", "set", "g0", "up"])
        # The positive control: a managed entry added after the carrier is back
        # resolves, so the kernel's managed-neighbour work has run on p1 since.
        net.pop.run(["ip", "neigh", "add", "10.42.0.4", "dev", "p1", "managed"])
        assert wait_for(
            lambda: (
                (e := entry(net.pop, "10.42.0.4", "p1")) is not None
                and e.state == ndmsg.NUD_REACHABLE
            ),
            10,
        )
        assert entry(net.pop, GS_IP, "p1") is None
        net.pop.run(["ip", "neigh", "del", "10.42.0.4", "dev", "p1"])
        write("")
        assert main(["-c", str(toml), "xdp", "apply"]) == 0
        assert f"managed neighbour {GS_IP} dev p1" in capsys.readouterr().out
        assert wait_for(
            lambda: (
                (e := entry(net.pop, GS_IP, "p1")) is not None
                and e.managed
                and e.state == ndmsg.NUD_REACHABLE
            ),
            3,
        )
        assert main(["-c", str(toml), "xdp", "detach"]) == 0
    assert entry(net.pop, GS_IP, "p1") is None
