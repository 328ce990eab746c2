"""bifrost_nf answers only sources that could have sent the query (issue 10, deliver 5).

An off-path spoofer puts any source on a query. The module must not answer a
martian source (0/8, 127/8, 224/4, 240/4, 255.255.255.255), one of the POP's own
addresses, or a source whose route back is not unicast; and its answers must
leave no conntrack entry when conntrack is active in the POP's netns.

client 10.99.0.10 -- net -- 10.41.1.1 POP (bifrost_nf; services 10.41.1.1:27015,
and :27016 answering INFO without a challenge), bifrost_testing.topology, pops=1.
Packets from impossible sources are put on the POP's uplink by the router's end
of the link (cache_env.Wire): the router's own routing drops martian sources.

The POP's netns holds one nftables table for the whole module: a `ct state` rule
(conntrack active in the netns, as on a POP with a stateful firewall) and a
counter of every packet leaving from the services' ports, which is what the POP
answered. It is loaded before any traffic: on 6.12 under TCG the first hook at a
hook point must not be registered while packets flow (kernel-test-vm.md).

Each "no reply" check is closed by a positive control: a good query sent after
the packets under test, on the same path, whose answer arrives; then the drop
counters must account for every packet under test.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator

import cache_env
import pytest
from cache_env import CLIENT_IP, GAME_PORT, POP_CLIENT_IP, ip_udp

from bifrost.bifrost_nf import a2s
from bifrost_testing import topology

pytestmark = pytest.mark.kernel
NC_PORT = GAME_PORT + 1  # a service answering A2S_INFO without a challenge
SERVICE = (POP_CLIENT_IP, GAME_PORT)
INFO = b"\xff\xff\xff\xffI" + b"i" * 300  # bigger than any query: a reflector's prize
PLAYERS = b"\xff\xff\xff\xffD\x00"
RULES = b"\xff\xff\xff\xffE\x00\x00"
DROPS = ("martian_src", "local_src", "no_unicast_route")
NFT_RULES = f"""table ip bftrust {{
  chain pre {{
    type filter hook prerouting priority 0; policy accept;
    ct state new counter
  }}
  chain out {{
    type filter hook output priority 0; policy accept;
    udp sport {{ {GAME_PORT}, {NC_PORT} }} counter
  }}
}}
"""
# Every query a reflector would use: (service port, payload).
QUERIES = [
    (GAME_PORT, a2s.request("info")),
    (GAME_PORT, a2s.request("info", 0xFFFFFFFF)),
    (GAME_PORT, a2s.request("info", 0x12345678)),  # a (wrong) challenge
    (GAME_PORT, a2s.request("player", 0xFFFFFFFF)),
    (GAME_PORT, a2s.request("rules", 0)),
    (NC_PORT, a2s.request("info")),  # would be answered in full
]
MARTIANS = [
    "0.0.0.0", "0.1.2.3", "127.0.0.1", "127.9.9.9", "224.0.0.1", "239.255.0.7",
    "240.0.0.1", "250.1.2.3", "255.255.255.254", "255.255.255.255",
]  # fmt: skip
SO_RCVBUFFORCE = 33  # not exported by the socket module
IP_PKTINFO = 8
IP_TRANSPARENT = 19


@pytest.fixture(scope="module")
def lab() -> Iterator[cache_env.Topo]:
    cache_env.load()
    # what the table below needs (the guest's request_module() is not relied on)
    subprocess.run(["modprobe", "-a", "nf_tables", "nf_conntrack", "nft_ct"], check=True)
    # a flood is sent faster than softirq drains it under TCG: no backlog drop
    subprocess.run(["sysctl", "-qw", "net.core.netdev_max_backlog=200000"], check=True)
    tag = f"tr{os.getpid() % 10000}"
    with cache_env.topo(tag) as t:
        cache_env.nft(t.pop, NFT_RULES)
        with cache_env.open_in(t.pop) as dev:
            dev.configure(rate_pps=0, rate_burst=0, rotate_s=3600)
            for port, no_challenge in ((GAME_PORT, False), (NC_PORT, True)):
                dev.set_service(POP_CLIENT_IP, port, no_challenge=no_challenge)
                for kind, answer in (("info", INFO), ("player", PLAYERS), ("rules", RULES)):
                    dev.set_answer(POP_CLIENT_IP, port, kind, [answer], 3_600_000, 0)
        yield t
    cache_env.unload()


def answered_packets(t: cache_env.Topo) -> int:
    """Packets the POP sent from the services' ports (nftables, OUTPUT)."""
    return cache_env.nft_packets(t.pop, "bftrust", "out")


def deltas(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


def spoof_then_control(t: cache_env.Topo, sources: list[str], rounds: int) -> dict[str, int]:
    """Every query from every source, rounds times, then a good query on the same wire.

    Returns the counter deltas once the control was answered and every spoofed
    packet was counted somewhere; asserts that only the control was answered.
    """
    wire = cache_env.Wire(t)
    try:
        with t.client_socket(timeout=10) as s:
            port = s.getsockname()[1]
            before = cache_env.pop_counters(t)
            sent_before = answered_packets(t)
            n = 0
            for _ in range(rounds):
                for src in sources:
                    for dport, query in QUERIES:
                        sport = 1024 + n % 60000
                        wire.send(ip_udp(src, sport, POP_CLIENT_IP, dport, query, ident=n & 0xFFFF))
                        n += 1
            wire.send(ip_udp(CLIENT_IP, port, POP_CLIENT_IP, GAME_PORT, a2s.request("info")))
            reply = s.recv(64)
            assert a2s.parse_challenge(reply) is not None, reply
            # the control may overtake packets queued on the other CPU's backlog
            assert cache_env.wait_for(
                lambda: (
                    sum(deltas(before, cache_env.pop_counters(t)).get(k, 0) for k in DROPS) == n
                ),
                30,
            ), deltas(before, cache_env.pop_counters(t))
            after = cache_env.pop_counters(t)
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.recv(64)
    finally:
        wire.close()
    d = deltas(before, after)
    # the control alone was a query, answered with one challenge, one packet out
    assert d.get("queries", 0) == 1 and d.get("info_queries", 0) == 1, d
    assert d.get("challenges_sent", 0) == 1, d
    for quiet in ("answers", "answers_no_challenge", "bad_challenge", "tx_errors",
                  "rate_limited", "malformed", "miss_drop", "events_raised"):  # fmt: skip
        assert d.get(quiet, 0) == 0, (quiet, d)
    assert answered_packets(t) - sent_before == 1
    return {k: d.get(k, 0) for k in DROPS}


def test_martian_source_flood_gets_no_reply_and_is_counted(lab):
    rounds = 30
    got = spoof_then_control(lab, MARTIANS, rounds)
    assert got == {
        "martian_src": rounds * len(MARTIANS) * len(QUERIES),
        "local_src": 0,
        "no_unicast_route": 0,
    }


def test_the_pops_own_addresses_get_no_reply(lab):
    """Its uplink address (the service's own), one on its loopback, one in a `local`
    route: inet_addr_type() says RTN_LOCAL for each; a reply would loop to the POP."""
    lab.pop.run(["ip", "addr", "add", "10.77.0.1/32", "dev", "lo"])
    lab.pop.run(["ip", "route", "add", "local", "10.78.0.0/16", "dev", "lo", "table", "local"])
    try:
        got = spoof_then_control(lab, [POP_CLIENT_IP, "10.77.0.1", "10.78.5.5"], rounds=10)
    finally:
        lab.pop.run(["ip", "addr", "del", "10.77.0.1/32", "dev", "lo"])
        lab.pop.run(["ip", "route", "del", "local", "10.78.0.0/16", "dev", "lo", "table", "local"])
    assert got == {"martian_src": 0, "local_src": 10 * 3 * len(QUERIES), "no_unicast_route": 0}


def test_a_source_without_a_unicast_route_back_gets_no_reply(lab):
    """The uplink's subnet broadcast (RTN_BROADCAST) and sources routed to a blackhole,
    unreachable, prohibit or throw route: the route back is not RTN_UNICAST."""
    routes = {"blackhole": "10.81.0.1", "unreachable": "10.81.0.2", "prohibit": "10.81.0.3",
              "throw": "10.81.0.4"}  # fmt: skip
    for kind, addr in routes.items():
        lab.pop.run(["ip", "route", "add", kind, f"{addr}/32"])
    try:
        sources = ["10.41.1.255", *routes.values()]
        got = spoof_then_control(lab, sources, rounds=10)
    finally:
        for kind, addr in routes.items():
            lab.pop.run(["ip", "route", "del", kind, f"{addr}/32"])
    assert got == {"martian_src": 0, "local_src": 0, "no_unicast_route": 10 * 5 * len(QUERIES)}


class SpoofingClient:
    """The client sends from any 10.80.x.y (IP_TRANSPARENT) and counts what comes back
    to each address: the backbone routes 10.80.0.0/16 to it, its loopback takes it."""

    def __init__(self, t: cache_env.Topo) -> None:
        t.client.run(["ip", "route", "replace", "local", "10.80.0.0/16", "dev", "lo"])
        t.nw.net.run(["ip", "route", "replace", "10.80.0.0/16", "via", topology.CLIENT_LINK_IP])
        self.sock = t.client.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 24)
        self.sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        self.sock.setsockopt(socket.IPPROTO_IP, IP_TRANSPARENT, 1)
        self.sock.bind(("0.0.0.0", 0))
        self.got: dict[str, int] = {}
        self.stop = threading.Event()
        self.reader = threading.Thread(target=self._drain)
        self.reader.start()

    def _drain(self) -> None:
        self.sock.settimeout(0.2)
        while True:
            try:
                _data, anc, _f, _a = self.sock.recvmsg(64, 64)
            except TimeoutError:
                if self.stop.is_set():
                    return
                continue
            for level, kind, raw in anc:
                if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
                    dst = socket.inet_ntoa(raw[8:12])
                    self.got[dst] = self.got.get(dst, 0) + 1

    def send(self, src: str, payload: bytes) -> None:
        info = struct.pack("=I4s4s", 0, socket.inet_aton(src), bytes(4))
        self.sock.sendmsg([payload], [(socket.IPPROTO_IP, IP_PKTINFO, info)], 0, SERVICE)

    def close(self) -> None:
        self.stop.set()
        self.reader.join()
        self.sock.close()


def test_conntrack_stays_flat_under_a_spoofed_challenge_flood(lab):
    """10,000 distinct (routable) sources each ask for a challenge: every one is answered,
    and the POP's conntrack table does not grow. Before the replies were untracked,
    each reply to a new source created an entry at LOCAL_OUT."""
    # positive control: conntrack is active here and tracks what the POP sends
    start = cache_env.conntrack_count(lab.pop)
    with lab.pop.entered():
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind((POP_CLIENT_IP, GAME_PORT + 2))
    probe.sendto(b"tracked", (CLIENT_IP, 9))
    probe.close()
    assert cache_env.wait_for(lambda: cache_env.conntrack_count(lab.pop) >= start + 1, 10)
    flat = cache_env.conntrack_count(lab.pop)

    sources = [f"10.80.{1 + i // 250}.{1 + i % 250}" for i in range(10_000)]
    client = SpoofingClient(lab)
    seen = [flat]
    try:
        before = cache_env.pop_counters(lab)
        sent_before = answered_packets(lab)
        batch = 160  # the backbone's NAPI ring holds 256: no burst may overflow it
        for r in range(0, len(sources), batch):
            for src in sources[r : r + batch]:
                client.send(src, a2s.request("info"))
            done = r + len(sources[r : r + batch])
            assert cache_env.wait_for(
                lambda n=done: cache_env.pop_counters(lab)["queries"] - before["queries"] == n,
                60,
            ), (done, cache_env.pop_counters(lab)["queries"] - before["queries"])
            if (r // batch) % 8 == 0:
                seen.append(cache_env.conntrack_count(lab.pop))
        assert cache_env.wait_for(lambda: len(client.got) == len(sources), 60), len(client.got)
        after = cache_env.pop_counters(lab)
        # a verified answer (challenge, then INFO) is untracked as well
        assert cache_env.ask_verified(lab, "info") == INFO
        seen.append(cache_env.conntrack_count(lab.pop))
    finally:
        client.close()
    assert after["challenges_sent"] - before["challenges_sent"] == len(sources)
    assert after["tx_errors"] == before["tx_errors"]
    assert answered_packets(lab) - sent_before == len(sources) + 2
    assert set(client.got) == set(sources)
    # entries only expire meanwhile (the probe's): never one more than before
    assert max(seen) <= flat, seen
