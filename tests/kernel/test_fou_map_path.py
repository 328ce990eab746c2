"""fou_map with real packets: the kernel's own fou/ipip on POPs and game server."""

from __future__ import annotations

import socket

import foumap_topology as topo
import pytest
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

pytestmark = pytest.mark.kernel

PORTS = (topo.FOU_PORT,)


@pytest.fixture(scope="module", autouse=True)
def module():
    with topo.module_for_tests():
        yield


@pytest.fixture(scope="module")
def shared():
    with topo.build(cfg=topo.table_config()) as t:
        yield t


@pytest.fixture
def net(shared):
    """The shared testbed, reset: empty table, default config, client via POP 1."""
    with shared.fou_map() as fm:
        fm.configure(topo.table_config())
        fm.flush(static=True)
        shared.base = fm.counters()
    shared.use_pop(1)
    return shared


def counters(t: topo.Topology) -> dict[str, int]:
    """Counters since the test began."""
    with t.fou_map() as fm:
        now = fm.counters()
    base = getattr(t, "base", {})
    return {k: v - base.get(k, 0) for k, v in now.items()}


def table(t: topo.Topology) -> dict[str, str]:
    with t.fou_map() as fm:
        return fm.table()


def test_replies_follow_the_clients_pop(net):
    s = net.client_socket(0)
    rx1, rx2 = net.pop_rx(1), net.pop_rx(2)
    for _ in range(3):
        assert net.echo_once(s)
    assert table(net) == {topo.client_ip(0): topo.pop_ip(1)}
    assert net.pop_rx(1) - rx1 == 3 and net.pop_rx(2) == rx2

    net.use_pop(2)
    rx1, rx2 = net.pop_rx(1), net.pop_rx(2)
    assert net.echo_once(s), "the first reply after the switch comes back"
    assert table(net) == {topo.client_ip(0): topo.pop_ip(2)}
    assert net.pop_rx(2) - rx2 == 1 and net.pop_rx(1) == rx1, "it came back through POP 2"
    for _ in range(3):
        assert net.echo_once(s)
    assert net.pop_rx(2) - rx2 == 4 and net.pop_rx(1) == rx1

    net.use_pop(1)
    assert net.echo_once(s)
    assert net.pop_rx(1) == rx1 + 1
    c = counters(net)
    assert c["learned"] == 1 and c["moved"] == 2
    assert c["tx_rewritten"] >= 4 and c["rx_fou"] >= 8


def test_two_clients_on_two_pops(net):
    a, b = net.client_socket(0), net.client_socket(1)
    assert net.echo_once(a)
    net.use_pop(2)
    assert net.echo_once(b)
    assert table(net) == {topo.client_ip(0): topo.pop_ip(1), topo.client_ip(1): topo.pop_ip(2)}
    # Client a now sends via POP 2 too, but a is replied to per its own mapping until then:
    rx1 = net.pop_rx(1)
    net.echo.sock.sendto(b"push", (topo.client_ip(0), 4000))
    assert topo.wait_for(lambda: net.pop_rx(1) == rx1 + 1)


def test_idle_entries_expire(net):
    with net.fou_map() as fm:
        fm.configure(topo.table_config(idle_timeout_ms=400))
    s = net.client_socket(0)
    assert net.echo_once(s)
    assert topo.client_ip(0) in table(net)
    assert topo.wait_for(lambda: table(net) == {}, timeout=5)
    assert counters(net)["expired"] == 1


def age_ms(t: topo.Topology, client: str) -> int:
    with t.fou_map() as fm:
        return next(e.age_ms for e in fm.dump() if str(e.client) == client)


def test_eviction_at_max_takes_least_recently_seen(net):
    with net.fou_map() as fm:
        fm.configure(topo.table_config(max_entries=3))
    socks = [net.client_socket(i) for i in range(4)]
    for s in socks[:3]:
        assert net.echo_once(s)
    # A tick must pass for client 0's refresh to be newer than its placement.
    assert topo.wait_for(lambda: age_ms(net, topo.client_ip(0)) > 0)
    assert net.echo_once(socks[0])  # client 0 is now the most recent
    assert net.echo_once(socks[3])
    assert set(table(net)) == {topo.client_ip(i) for i in (0, 2, 3)}
    c = counters(net)
    assert c["evicted"] == 1 and c["learned"] == 4


def test_static_entry_pins_and_never_expires(net):
    with net.fou_map() as fm:
        fm.configure(topo.table_config(idle_timeout_ms=300))
        fm.add(topo.client_ip(0), topo.pop_ip(2))
    s = net.client_socket(0)
    rx2 = net.pop_rx(2)
    assert net.echo_once(s)  # in via POP 1, out via the pinned POP 2
    assert net.pop_rx(2) == rx2 + 1
    # The positive control: a learned client seen after the pin expires meanwhile.
    assert net.echo_once(net.client_socket(1))
    assert topo.wait_for(lambda: topo.client_ip(1) not in table(net), timeout=5)
    with net.fou_map() as fm:
        entries = fm.dump()
    assert [(str(e.client), str(e.pop), e.static) for e in entries] == [
        (topo.client_ip(0), topo.pop_ip(2), True)
    ]
    c = counters(net)
    assert c["learn_static"] >= 1 and c["moved"] == 0 and c["expired"] == 1


def test_miss_policy_pass_and_drop(net):
    # Not an address of the client: nothing comes back that could teach fou_map a POP.
    unknown = ("10.99.0.250", 4000)
    rx1 = net.pop_rx(1)
    net.echo.sock.sendto(b"x", unknown)
    assert topo.wait_for(lambda: net.pop_rx(1) == rx1 + 1), "pass: out to the tunnel's default POP"
    assert counters(net)["tx_miss_pass"] == 1
    assert net.echo_once(net.client_socket(0))  # client 0 learned, via POP 1
    with net.fou_map() as fm:
        fm.configure(topo.table_config(miss_policy="drop"))
    rx1, rx2 = net.pop_rx(1), net.pop_rx(2)
    net.echo.sock.sendto(b"x", unknown)
    # The positive control, sent after: a learned client is still served under "drop";
    # once its packet is out, the dropped one would have been too.
    net.echo.sock.sendto(b"y", (topo.client_ip(0), 4000))
    assert topo.wait_for(lambda: net.pop_rx(1) == rx1 + 1)
    assert (net.pop_rx(1), net.pop_rx(2)) == (rx1 + 1, rx2)
    assert counters(net)["tx_miss_drop"] == 1


def test_netns_isolation(net):
    a = net
    with topo.build() as b:
        with b.fou_map() as fm:
            fm.configure(topo.table_config(max_entries=77))
        assert a.echo_once(a.client_socket(0))
        b.use_pop(2)
        assert b.echo_once(b.client_socket(1))
        assert table(a) == {topo.client_ip(0): topo.pop_ip(1)}
        assert table(b) == {topo.client_ip(1): topo.pop_ip(2)}
        with a.fou_map() as fa, b.fou_map() as fb:
            assert fa.config().max_entries != fb.config().max_entries == 77
            fa.flush()
            assert fa.table() == {} and fb.table() == {topo.client_ip(1): topo.pop_ip(2)}
            assert fa.info()["netns_inum"] != fb.info()["netns_inum"]


def inner(src: str, **kw: object) -> bytes:
    return bytes(
        IP(src=src, dst=topo.SERVICE_IP, **kw) / UDP(sport=1, dport=topo.GAME_PORT) / b"hi"
    )


def test_malformed_fou_packets_are_counted_never_learned(net):
    good = inner("10.99.0.200")
    with net.pops[0].entered():
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    cases: dict[str, list[bytes]] = {"rx_truncated": [], "rx_bad_inner": []}

    def outer(payload: bytes, ulen: int | None = None, **ip: object) -> bytes:
        udp = UDP(sport=40000, dport=topo.FOU_PORT, chksum=0)
        if ulen is not None:
            udp.len = ulen
        return bytes(IP(src=topo.pop_ip(1), dst=topo.GS_LOCAL, **ip) / udp / Raw(payload))

    cases["rx_truncated"] += [
        outer(b""),
        outer(good[:19]),
        outer(good, ulen=len(good) + 8 + 40),  # UDP length beyond the packet
        outer(good, ulen=8 + 12),
    ]
    bad_ihl = bytearray(inner("10.99.0.201"))
    bad_ihl[0] = 0x43
    big_ihl = bytearray(inner("10.99.0.202"))
    big_ihl[0] = 0x4F
    v6 = bytearray(inner("10.99.0.203"))
    v6[0] = 0x65
    long_tot = bytearray(inner("10.99.0.204"))
    long_tot[2:4] = (len(long_tot) + 10).to_bytes(2, "big")
    short_tot = bytearray(inner("10.99.0.205"))
    short_tot[2:4] = (12).to_bytes(2, "big")
    cases["rx_bad_inner"] += [
        outer(bytes(bad_ihl)),
        outer(bytes(big_ihl)),
        outer(bytes(v6)),
        outer(bytes(long_tot)),
        outer(bytes(short_tot)),
        outer(inner("0.0.0.0")),
        outer(inner("224.1.2.3")),
    ]
    # A lone first fragment waits in reassembly (fou_map checks whole packets, at
    # LOCAL_IN): it is never learned from.
    fragment = outer(inner("10.99.0.206") + bytes(64), flags="MF", id=77)

    before = counters(net)
    for pkts in cases.values():
        for p in pkts:
            raw.sendto(p, (topo.GS_LOCAL, 0))
    raw.sendto(fragment, (topo.GS_LOCAL, 0))
    # The positive control, after them all: the same path learns a well-formed one.
    raw.sendto(outer(good), (topo.GS_LOCAL, 0))
    assert topo.wait_for(lambda: table(net) == {"10.99.0.200": topo.pop_ip(1)})
    after = counters(net)
    for name, pkts in cases.items():
        assert after[name] - before[name] == len(pkts), name
    assert after["learned"] == before["learned"] + 1
    assert after["rx_fragment"] == before["rx_fragment"]
    raw.close()
