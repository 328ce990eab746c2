"""fou_map's trust checks with real packets (issue 10, AUTH.md): what a spoofer sends
never changes the table; authenticated packets from a POP learn, and the replies leave
with the token appended and correct checksums; a key rollover loses no packet.

The POP that SENDS authenticated FOU is a raw socket in the POP's netns (the testbed's
RawSender): the kernel's fou cannot append a token. The POPs' kernel fou/ipip RECEIVES
the replies: the echo reaching the client is the kernel accepting the trailer, and a
capture on the POP's wire checks the bytes (length rule, token, IP and UDP checksums).
The testbed runs with encap-csum, so every reply has a complete outer UDP checksum that
fou_map must update for the token (both the local-checksum-offload case of the echo
server's socket and the software-checksum case of a socket with SO_NO_CHECK).
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

import foumap_topology as topo
import pytest
from scapy.layers.inet import IP, UDP

pytestmark = pytest.mark.kernel

K1 = bytes.fromhex("0123456789abcdef")
K2 = bytes.fromhex("fedcba9876543210")
SO_NO_CHECK = 11


def replies_without_inner_checksum(net: topo.Topology, client: socket.socket, port: int) -> None:
    """Two replies (odd and even length) whose inner UDP checksum is done in software
    (SO_NO_CHECK: none); each must reach the client."""
    with net.gs.entered():
        plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    plain.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
    plain.bind((topo.SERVICE_IP, 0))
    try:
        for n in (3, 4):
            plain.sendto(b"n" * n, (topo.client_ip(0), port))
            assert client.recvfrom(2048)[0] == b"n" * n
    finally:
        plain.close()


@pytest.fixture(scope="module", autouse=True)
def module():
    with topo.module_for_tests():
        yield


@pytest.fixture(scope="module")
def shared() -> Iterator[topo.Topology]:
    with topo.build(cfg=topo.table_config(), encap_csum=True) as t:
        yield t


@pytest.fixture
def net(shared: topo.Topology) -> topo.Topology:
    """The shared testbed, reset: empty table, auth on with K1, client via POP 1."""
    with shared.fou_map() as fm:
        fm.set_auth((K1,))
        fm.configure(topo.table_config())
        fm.flush(static=True)
    shared.use_pop(1)
    return shared


def counters(t: topo.Topology) -> dict[str, int]:
    with t.fou_map() as fm:
        return fm.counters()


def table(t: topo.Topology) -> dict[str, str]:
    with t.fou_map() as fm:
        return fm.table()


def in_csum_errors(ns) -> int:
    """The netns's UDP InCsumErrors (/proc/net/snmp)."""
    with ns.entered(), open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    return int(rows[1][rows[0].index("InCsumErrors")])


def inject(t: topo.Topology, pkt: bytes) -> None:
    """pkt onto the game server's wire as the router would deliver it (AF_PACKET on
    the router's end of the link): sources no local socket may send from."""
    with t.gs.ipr() as ipr:
        mac = ipr.get_links(ipr.link_lookup(ifname="eth0")[0])[0].get_attr("IFLA_ADDRESS")
    with t.nw.net.entered():
        s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
    try:
        s.sendto(pkt, ("g0", 0x0800, 0, 0, bytes.fromhex(mac.replace(":", ""))))
    finally:
        s.close()


DROPS = ("rx_auth", "rx_not_pop", "rx_bad_csum", "rx_martian", "rx_truncated", "rx_bad_inner")
DISCARD = 9  # inner destination port nobody serves: no echo, so no traffic comes back


def test_spoofed_fou_never_changes_the_table(net):
    """Every spoof is dropped under its own counter and moves or adds nothing. After each
    group, a good packet from a POP does learn (the positive control), and only then are
    the group's counters and the table checked, so 'nothing happened' cannot pass falsely."""
    victim = topo.client_ip(1)
    pop1 = topo.RawSender(net.pops[0])
    pop2 = topo.RawSender(net.pops[1])
    client = topo.RawSender(net.client)  # off-path: anywhere but a POP
    local = topo.RawSender(net.gs)  # loops back through lo: martian sources get that far

    def fou(
        src: str, client_ip: str, token: bytes, csum: bool | int = False, extra: bytes = b""
    ) -> bytes:
        inner = topo.inner_udp(client_ip, 4000, dport=DISCARD) + extra
        return topo.fou_packet(src, inner, token, csum=csum)

    def spoof(src: str, token: bytes, csum: bool | int = False) -> list[bytes]:
        # Each tries to move the victim to src, and to add a new client.
        return [fou(src, c, token, csum) for c in (victim, "10.99.0.201")]

    try:
        pop1.send(fou(topo.pop_ip(1), victim, K1))
        assert topo.wait_for(lambda: table(net) == {victim: topo.pop_ip(1)})
        want_table = table(net)
        groups: list[tuple[str | None, list[tuple[topo.RawSender, bytes]]]] = [
            ("rx_auth", [(pop2, p) for p in spoof(topo.pop_ip(2), b"")]),  # no token
            ("rx_auth", [(pop2, p) for p in spoof(topo.pop_ip(2), K2)]),  # not accepted
            ("rx_auth", [(pop2, p) for p in spoof(topo.pop_ip(2), K1[:7])]),  # 7 bytes of it
            # The length rule: a byte after the token, or between inner packet and token.
            ("rx_auth", [(pop2, fou(topo.pop_ip(2), victim, K1 + b"x"))]),
            ("rx_auth", [(pop2, fou(topo.pop_ip(2), victim, K1, extra=b"x"))]),
            # A POP's address forged from off-path, without a token:
            ("rx_auth", [(client, p) for p in spoof(topo.pop_ip(2), b"")]),
            # The right token from a source outside the POP prefixes:
            ("rx_not_pop", [(client, p) for p in spoof("10.98.0.2", K1)]),
            # The right token with a wrong non-zero outer UDP checksum:
            ("rx_bad_csum", [(pop2, p) for p in spoof(topo.pop_ip(2), K1, csum=0x1234)]),
            # Looped back locally, a 127/8 source passes input routing: fou_map drops it.
            ("rx_martian", [(local, p) for p in spoof("127.0.0.9", K1)]),
        ]
        for n, (counter, pkts) in enumerate(groups):
            base = counters(net)
            for sender, p in pkts:
                sender.send(p)
            control = f"10.99.0.{210 + n}"
            pop1.send(fou(topo.pop_ip(1), control, K1))
            assert topo.wait_for(lambda c=control: c in table(net)), (counter, control)
            now = counters(net)
            moved = {k: now[k] - base[k] for k in DROPS if now[k] != base[k]}
            assert moved == {counter: len(pkts)}, (n, counter)
            assert now["learned"] - base["learned"] == 1 and now["moved"] == base["moved"]
            want_table[control] = topo.pop_ip(1)
            assert table(net) == want_table, (n, counter)
        # From the wire, input routing drops martian sources before fou_map sees them
        # (or fou_map does, as rx_martian); nothing may change either way.
        seen: dict[str, dict[str, int]] = {}
        for n, src in enumerate(
            ("0.0.0.0", "0.1.2.3", "127.0.0.9", "224.1.2.3", "255.255.255.255")
        ):
            base = counters(net)
            for p in spoof(src, K1, csum=True):
                inject(net, p)
            control = f"10.99.0.{240 + n}"
            pop1.send(fou(topo.pop_ip(1), control, K1))
            assert topo.wait_for(lambda c=control: c in table(net)), (src, control)
            now = counters(net)
            seen[src] = {k: now[k] - base[k] for k in DROPS if now[k] != base[k]}
            want_table[control] = topo.pop_ip(1)
        assert all(d in ({}, {"rx_martian": 2}) for d in seen.values()), seen
        assert table(net) == want_table
    finally:
        for s in (pop1, pop2, client, local):
            s.close()


def check_reply(pkt: bytes, key: bytes) -> None:
    """An authenticated FOU reply as AUTH.md has it, with right checksums."""
    outer = IP(pkt)
    udp = outer[UDP]
    payload = bytes(udp.payload)
    inner_len = int.from_bytes(payload[2:4], "big")
    assert outer.len == len(pkt) and udp.len == 8 + inner_len + 8, (outer.len, udp.len)
    assert payload[-8:] == key
    fresh = IP(pkt)
    del fresh[IP].chksum
    del fresh[UDP].chksum
    fresh = IP(bytes(fresh))
    assert outer.chksum == fresh.chksum, "outer IP checksum"
    assert udp.chksum != 0, "encap-csum sends a checksum"
    assert udp.chksum == fresh[UDP].chksum, f"outer UDP checksum of {len(pkt)} bytes"


def test_authenticated_packets_learn_and_replies_carry_the_token(net):
    pop2 = topo.RawSender(net.pops[1])
    cap = topo.Capture.at_router(net, topo.pop_ip(2))
    s = net.client_socket(0)
    port = s.getsockname()[1]
    errs = in_csum_errors(net.pops[1])
    base = counters(net)
    try:
        # Payloads of odd and even length: the token lands at odd and even offsets.
        sizes = [*range(1, 9), 100, 1001]
        for n in sizes:
            payload = bytes([n % 256]) * n
            inner = topo.inner_udp(topo.client_ip(0), port, payload)
            pop2.send(topo.fou_packet(topo.pop_ip(2), inner, K1, csum=n % 2 == 0))
            data, _ = s.recvfrom(2048)  # the kernel fou of POP 2 took the trailer
            assert data == payload
        assert table(net) == {topo.client_ip(0): topo.pop_ip(2)}
        # A reply whose inner checksum is done in software (SO_NO_CHECK: none).
        replies_without_inner_checksum(net, s, port)
        total = len(sizes) + 2
        assert topo.wait_for(lambda: len(cap.poll()) >= total)
        replies = cap.poll()
        assert len(replies) == total
        for p in replies:
            check_reply(p, K1)
        assert in_csum_errors(net.pops[1]) == errs
        c = counters(net)
        assert c["tx_token"] - base["tx_token"] == total
        assert c["tx_rewritten"] - base["tx_rewritten"] == total  # the tunnel's remote is POP 1
        assert c["rx_auth"] == base["rx_auth"] and c["tx_token_failed"] == base["tx_token_failed"]
    finally:
        pop2.close()
        cap.close()
        s.close()


def pseudo_seed(pkt: bytes) -> int:
    """The outer UDP checksum field while an offload is to finish it: the folded
    pseudo-header sum (~csum_tcpudp_magic(saddr, daddr, len, UDP, 0))."""
    words = (*struct.unpack("!4H", pkt[12:20]), 17, int.from_bytes(pkt[24:26], "big"))
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


@pytest.fixture
def gs_tx_csum_offload(net):
    """The game server's uplink offloads TX checksums (the testbed turns it off)."""
    from pyroute2.ethtool import Ethtool

    def offload(on: bool) -> None:
        with net.gs.entered():
            et = Ethtool()
            try:
                feats = et.get_features("eth0")
                feats.features["tx-checksum-ip-generic"].enable = on
                et.set_features("eth0", feats)
            finally:
                et.close()

    offload(True)
    yield
    offload(False)


def test_offloaded_outer_checksum_counts_the_token(net, gs_tx_csum_offload):
    """Outer CHECKSUM_PARTIAL (inner checksum done, uplink offloads the outer one): the
    seed fou_map leaves must cover the token's length. The router's end of the link
    shows the seed as it left; POP 2's kernel fou, after the router finished the sum,
    takes the reply (the client gets it) and counts no checksum error."""
    pop2 = topo.RawSender(net.pops[1])
    cap = topo.Capture.at_router(net, topo.pop_ip(2))
    s = net.client_socket(0)
    port = s.getsockname()[1]
    errs = in_csum_errors(net.pops[1])
    try:
        pop2.send(topo.fou_packet(topo.pop_ip(2), topo.inner_udp(topo.client_ip(0), port), K1))
        assert s.recvfrom(2048)[0] == b"ping"
        replies_without_inner_checksum(net, s, port)
        assert topo.wait_for(lambda: len(cap.poll()) >= 3)
        seeded = cap.poll()[1:]
        for p in seeded:
            assert p[-8:] == K1
            assert int.from_bytes(p[26:28], "big") == pseudo_seed(p), "seed for the new length"
        assert in_csum_errors(net.pops[1]) == errs
    finally:
        pop2.close()
        cap.close()
        s.close()


def test_udp_gso_reply_is_segmented_before_the_token(net):
    """GSO: the endpoint's tunnel has gso_max_segs 1, so a UDP_SEGMENT send is cut into
    datagrams before encapsulation and each FOU packet carries its own token; fou_map
    would refuse a GSO FOU packet (tx_gso)."""
    pop1 = topo.RawSender(net.pops[0])
    s = net.client_socket(0)
    port = s.getsockname()[1]
    base = counters(net)
    try:
        pop1.send(topo.fou_packet(topo.pop_ip(1), topo.inner_udp(topo.client_ip(0), port), K1))
        assert s.recvfrom(2048)[0] == b"ping"
        with net.gs.entered():
            g = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        g.bind((topo.SERVICE_IP, 0))
        g.setsockopt(socket.SOL_UDP, 103, 500)  # UDP_SEGMENT: 500-byte datagrams
        g.sendto(b"g" * 1500, (topo.client_ip(0), port))
        g.close()
        got = [s.recvfrom(2048)[0] for _ in range(3)]
        assert got == [b"g" * 500] * 3
        c = counters(net)
        assert c["tx_gso"] == base["tx_gso"] and c["tx_token"] - base["tx_token"] == 4
    finally:
        pop1.close()
        s.close()


class AuthTraffic:
    """A POP (raw sender in POP 1's netns) sending authenticated requests with its own
    current send key, and the client counting the echoes, until stopped."""

    def __init__(self, t: topo.Topology, interval: float = 0.004) -> None:
        self.sender = topo.RawSender(t.pops[0])
        self.sock = t.client_socket(0, timeout=0.2)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.port = self.sock.getsockname()[1]
        self.key = K1
        self.sent: list[int] = []
        self.got: set[int] = set()
        self.stop = threading.Event()  # no more requests
        self.done = threading.Event()  # no more waiting for echoes
        self.interval = interval
        self.threads = [
            threading.Thread(target=self._send, daemon=True),
            threading.Thread(target=self._recv, daemon=True),
        ]
        for th in self.threads:
            th.start()

    def _send(self) -> None:
        seq = 0
        while not self.stop.is_set():
            inner = topo.inner_udp(topo.client_ip(0), self.port, seq.to_bytes(4, "big"))
            self.sender.send(topo.fou_packet(topo.pop_ip(1), inner, self.key))
            self.sent.append(seq)
            seq += 1
            time.sleep(self.interval)

    def _recv(self) -> None:
        while not self.done.is_set():
            try:
                data, _ = self.sock.recvfrom(64)
            except TimeoutError:
                continue
            self.got.add(int.from_bytes(data, "big"))

    def echoes_after(self, n: int) -> bool:
        return len(self.got) >= n

    def close(self) -> None:
        """Stop sending; wait for the echoes of everything sent (or 10 s), then stop."""
        self.stop.set()
        self.threads[0].join(timeout=10)
        topo.wait_for(lambda: len(self.got) >= len(self.sent), timeout=10)
        self.done.set()
        self.threads[1].join(timeout=10)
        self.sender.close()
        self.sock.close()


def test_key_rollover_under_traffic_loses_no_packet(net):
    """AUTH.md's three steps, each on both hosts (the game server's fou_map, then the
    POP), while the POP keeps sending: every request is echoed, nothing is refused, and
    the replies switch from K1 to K2 once and for good."""
    cap = topo.Capture.at_router(net, topo.pop_ip(1))
    base = counters(net)
    traffic = AuthTraffic(net)
    steps = [((K1, K2), K1), ((K2, K1), K2), ((K2,), K2)]  # (game server keys, POP sends)
    try:
        for keys, pop_sends in steps:
            mark = len(traffic.got)
            assert topo.wait_for(lambda m=mark: traffic.echoes_after(m + 50), timeout=30)
            with net.fou_map() as fm:
                fm.set_auth(keys)
            traffic.key = pop_sends
        mark = len(traffic.got)
        assert topo.wait_for(lambda: traffic.echoes_after(mark + 50), timeout=30)
    finally:
        traffic.close()
    assert traffic.got == set(traffic.sent), f"lost {len(set(traffic.sent) - traffic.got)}"
    c = counters(net)
    assert c["rx_auth"] == base["rx_auth"]
    tokens = [p[-8:] for p in cap.poll()]
    cap.close()
    assert set(tokens) == {K1, K2}
    switch = tokens.index(K2)
    assert tokens[switch:] == [K2] * (len(tokens) - switch), "one switch, never back"
    assert len(tokens) >= len(traffic.sent)


def test_unload_under_authenticated_traffic(net):
    """rmmod while the POP sends authenticated traffic and fou_map appends tokens: no
    oops (the module fixture checks the kernel log); loaded again, it serves again.
    The hook points' static keys stay on throughout (conftest's session chains)."""
    traffic = AuthTraffic(net, interval=0.002)
    try:
        assert topo.wait_for(lambda: traffic.echoes_after(50), timeout=30)
        for _ in range(3):
            topo.unload()
            topo.load()
            with net.fou_map() as fm:
                fm.set_auth((K1,))
                fm.configure(topo.table_config())
            mark = len(traffic.got)
            assert topo.wait_for(lambda m=mark: traffic.echoes_after(m + 20), timeout=30)
    finally:
        traffic.close()
    assert table(net) == {topo.client_ip(0): topo.pop_ip(1)}
