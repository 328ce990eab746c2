"""The XDP program through BPF_PROG_TEST_RUN: a fixture table of every path.

Each case: input frame (scapy), expected verdict, expected output bytes (None:
unchanged) and the (rule id, reason) counter that must count it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether
from xdp_harness import (
    A2S_INFO,
    ALLOWED,
    BLOCKED,
    CLIENT,
    CLIENT_DMAC,
    FOU,
    GS,
    GS_NO_RULES,
    GS_SRCDS,
    GS_TCP,
    KEY,
    NH_SMAC,
    POP,
    VIP,
    VIP2,
    VIP_NO_RULES,
    Xdp,
    auth_config,
    client_frame,
    expected_encap,
    fou_frame,
    make_config,
)
from xdp_modules_harness import game_clients, set_expiry

from bifrost.netns import Namespace
from bifrost.xdp import libbpf, maps, maps_def

pytestmark = pytest.mark.bpf


# Shorter than a netchannel header (12 bytes): only a validated client's passes. A
# longer one also passes on the rule's budget (tests/bpf/test_xdp_srcds_move.py).
NETCHAN_RUNT = b"\x01\x02netchan"


def udp_in(payload: bytes = b"hello", dport: int = 27015, src: str = CLIENT, **ip) -> IP:
    return IP(src=src, dst=ip.pop("dst", VIP), **ip) / UDP(sport=40000, dport=dport) / payload


def encap_of(inner: IP, gs: str = GS) -> bytes:
    return expected_encap(bytes(inner), gs)


def reply(payload: bytes = b"state", sport: int = 27015, src: str = VIP, proto: str = "udp"):
    if proto == "tcp":
        return IP(src=src, dst=CLIENT) / TCP(sport=sport, dport=40000, flags="SA")
    return IP(src=src, dst=CLIENT) / UDP(sport=sport, dport=40000) / payload


def decap_of(inner) -> bytes:
    return bytes(Ether(src=NH_SMAC, dst=CLIENT_DMAC) / inner)


@dataclass
class Case:
    name: str
    frame: bytes
    verdict: str
    output: bytes | None  # None: the frame unchanged
    counter: tuple[int, str]


def _cases() -> list[Case]:
    c: list[Case] = []

    def add(name, frame, verdict, output, rule, reason) -> None:
        c.append(Case(name, frame, verdict, output, (rule, reason)))

    # Forward: FOU encapsulation to the rule's game server.
    i = udp_in()
    add("fwd-udp", client_frame(i), "TX", encap_of(i), 1, "tx_forward")
    i = udp_in(dport=27016, flags="DF", tos=0xB8)
    add("fwd-range-end-df-tos", client_frame(i), "TX", encap_of(i), 1, "tx_forward")
    i = udp_in(b"x" * 1400)
    add("fwd-large", client_frame(i), "TX", encap_of(i), 1, "tx_forward")
    i = udp_in(b"")
    add("fwd-empty-payload", client_frame(i), "TX", encap_of(i), 1, "tx_forward")
    i = IP(src=CLIENT, dst=VIP2) / TCP(sport=40000, dport=443, flags="S")
    add(
        "fwd-tcp-any-port", client_frame(i), "TX", expected_encap(bytes(i), GS_TCP), 4, "tx_forward"
    )
    i = udp_in(b"\xff\xff\xff\xffq", dport=27020)
    add(
        "fwd-srcds-connectionless",
        client_frame(i),
        "TX",
        expected_encap(bytes(i), GS_SRCDS),
        2,
        "tx_forward",
    )
    i = udp_in(src=ALLOWED)
    add("fwd-allowlisted-in-blocked-net", client_frame(i), "TX", encap_of(i), 1, "tx_forward")

    # Cache matching: well-formed A2S queries to a caching rule go up to bifrost_nf.
    for name, payload in (
        ("a2s-info", A2S_INFO),
        ("a2s-info-challenge", A2S_INFO + b"\x01\x02\x03\x04"),
        ("a2s-player", b"\xff\xff\xff\xffU\xff\xff\xff\xff"),
        ("a2s-rules", b"\xff\xff\xff\xffV\x01\x02\x03\x04"),
    ):
        add(name, client_frame(udp_in(payload)), "PASS", None, 1, "pass_cache")
    # Not well-formed: the game server decides.
    for name, payload in (
        ("a2s-info-padded", A2S_INFO + b"\x00"),
        ("a2s-info-typo", A2S_INFO.replace(b"Query", b"Quary")),
        ("a2s-player-short", b"\xff\xff\xff\xffU\xff\xff\xff"),
        ("a2s-unknown-kind", b"\xff\xff\xff\xffW\xff\xff\xff\xff"),
    ):
        i = udp_in(payload)
        add(name, client_frame(i), "TX", encap_of(i), 1, "tx_forward")
    i = udp_in(A2S_INFO, dport=27020)
    add(
        "a2s-to-non-caching-rule",
        client_frame(i),
        "TX",
        expected_encap(bytes(i), GS_SRCDS),
        2,
        "tx_forward",
    )

    # Firewall.
    add("blocked-source", client_frame(udp_in(src=BLOCKED)), "DROP", None, 1, "drop_blocked")
    add("no-rule-port", client_frame(udp_in(dport=27017)), "DROP", None, 0, "drop_no_rule")
    add(
        "no-rule-proto",
        client_frame(IP(src=CLIENT, dst=VIP) / TCP(dport=27015)),
        "DROP",
        None,
        0,
        "drop_no_rule",
    )
    add(
        "icmp-to-anycast",
        client_frame(IP(src=CLIENT, dst=VIP) / ICMP()),
        "DROP",
        None,
        0,
        "drop_no_rule",
    )
    add(
        "anycast-without-rules",
        client_frame(udp_in(dst=VIP_NO_RULES)),
        "DROP",
        None,
        0,
        "drop_no_rule",
    )
    add("fragment-mf", client_frame(udp_in(flags="MF")), "DROP", None, 0, "drop_fragment")
    frag = IP(src=CLIENT, dst=VIP, frag=100, proto=17) / (b"y" * 40)
    add("fragment-offset", client_frame(frag), "DROP", None, 0, "drop_fragment")
    frag = IP(src=CLIENT, dst="192.0.2.1", frag=100, proto=17) / (b"y" * 40)
    add("fragment-to-host", client_frame(frag), "PASS", None, 0, "pass_host")

    # Malformed and boundary packets.
    good = client_frame(udp_in())
    add("ip-truncated", good[: 14 + 19], "DROP", None, 0, "drop_malformed")
    bad_ihl = bytearray(good)
    bad_ihl[14] = 0x44
    add("ip-ihl-4", bytes(bad_ihl), "DROP", None, 0, "drop_malformed")
    bad_ver = bytearray(good)
    bad_ver[14] = 0x65
    add("ip-version-6-in-v4-frame", bytes(bad_ver), "DROP", None, 0, "drop_malformed")
    add("ip-totlen-beyond-frame", good[:-1], "DROP", None, 0, "drop_malformed")
    i = IP(src=CLIENT, dst=VIP, proto=17) / UDP(sport=1, dport=27015, len=200) / b"abc"
    add("udp-len-beyond-ip", client_frame(i), "DROP", None, 0, "drop_malformed")
    i = IP(src=CLIENT, dst=VIP, proto=17) / UDP(sport=1, dport=27015, len=7) / b"abc"
    add("udp-len-below-8", client_frame(i), "DROP", None, 0, "drop_malformed")
    i = IP(src=CLIENT, dst=VIP, proto=17) / b"\x00\x01\x02"
    add("udp-header-truncated", client_frame(i), "DROP", None, 0, "drop_malformed")
    i = IP(src=CLIENT, dst="192.0.2.1", proto=17) / b"\x00\x01\x02"
    add("udp-truncated-to-host", client_frame(i), "PASS", None, 0, "pass_host")
    # Ethernet minimum-size padding stays behind the inner packet, outside every length.
    i = udp_in(b"")
    add(
        "ethernet-padding",
        client_frame(i) + bytes(18),
        "TX",
        encap_of(i) + bytes(18),
        1,
        "tx_forward",
    )

    # Not ours: the host's traffic, ARP, IPv6 (policy pass).
    add("to-host", client_frame(udp_in(dst="192.0.2.1")), "PASS", None, 0, "pass_host")
    add("pop-other-port", client_frame(udp_in(dst=POP, dport=22)), "PASS", None, 0, "pass_host")
    add("arp", bytes(Ether() / ARP()), "PASS", None, 0, "pass_non_ip")
    add("ipv6", bytes(Ether() / IPv6() / UDP()), "PASS", None, 0, "pass_ipv6")

    # Return path.
    r = reply()
    add("ret-udp", fou_frame(GS, r), "TX", decap_of(r), 1, "tx_return")
    r = reply(sport=443, src=VIP2, proto="tcp")
    add("ret-tcp", fou_frame(GS_TCP, r), "TX", decap_of(r), 4, "tx_return")
    r = reply(b"\xff\xff\xff\xffI" + b"z" * 60, sport=27016)
    add("ret-a2s-reply", fou_frame(GS, r), "TX", decap_of(r), 1, "tx_return")
    add("ret-unknown-gs", fou_frame("10.0.0.99", reply()), "DROP", None, 0, "drop_unknown_gs")
    add("ret-gs-not-of-service", fou_frame(GS_NO_RULES, reply()), "DROP", None, 0, "drop_relay")
    add(
        "ret-open-relay",
        fou_frame(GS, reply(src="8.8.8.8", sport=53)),
        "DROP",
        None,
        0,
        "drop_relay",
    )
    add("ret-other-gs-service", fou_frame(GS, reply(sport=27020)), "DROP", None, 0, "drop_relay")
    add(
        "ret-inner-icmp",
        fou_frame(GS, IP(src=VIP, dst=CLIENT) / ICMP()),
        "DROP",
        None,
        0,
        "drop_relay",
    )
    add(
        "ret-inner-truncated", fou_frame(GS, bytes(reply())[:15]), "DROP", None, 0, "drop_malformed"
    )
    add(
        "ret-inner-fragment",
        fou_frame(GS, IP(src=VIP, dst=CLIENT, flags="MF") / UDP() / b"q"),
        "DROP",
        None,
        0,
        "drop_fragment",
    )
    return c


CASES = _cases()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fixture(xdp: Xdp, case: Case) -> None:
    before = xdp.counts()
    res = xdp.run(case.frame)
    assert res.verdict == case.verdict, f"{case.name}: counters {xdp.counts()}"
    expected = case.output if case.output is not None else case.frame
    assert res.data.hex() == expected.hex()
    after = xdp.counts()
    assert after.get(case.counter, 0) - before.get(case.counter, 0) == 1
    assert sum(after.values()) - sum(before.values()) == 1, "exactly one counter per packet"


def test_encap_is_fou_as_the_kernel_reads_it(xdp: Xdp) -> None:
    """Parse the output independently: outer IPv4 checksum valid, lengths, inner intact."""
    inner = udp_in(b"payload" * 20, flags="DF")
    out = Ether(xdp.run(client_frame(inner)).data)
    ip = out[IP]
    assert (ip.src, ip.dst, ip.proto, ip.ttl, ip.ihl) == (POP, GS, 17, 64, 5)
    chk = ip.chksum
    ip.chksum = None
    assert IP(bytes(ip)).chksum == chk
    assert ip.len == len(bytes(inner)) + 28
    assert out[UDP].dport == FOU and out[UDP].len == len(bytes(inner)) + 8
    assert out[UDP].chksum == 0
    assert bytes(out[UDP].payload) == bytes(inner)


def test_flow_port_spreads_clients(xdp: Xdp) -> None:
    ports = set()
    for n in range(64):
        out = Ether(xdp.run(client_frame(udp_in(src=f"192.0.2.{n + 1}"))).data)
        assert 49152 <= out[UDP].sport <= 65535
        ports.add(out[UDP].sport)
    assert len(ports) > 48, "source ports should spread over clients"
    a = Ether(xdp.run(client_frame(udp_in())).data)[UDP].sport
    b = Ether(xdp.run(client_frame(udp_in())).data)[UDP].sport
    assert a == b, "one flow keeps one source port (one RX queue)"


def test_ipv6_policy_drop_then_pass(xdp: Xdp) -> None:
    frame = bytes(Ether() / IPv6() / UDP())
    xdp.apply(make_config(ipv6="drop"))
    assert xdp.run(frame).verdict == "DROP"
    assert xdp.counts()[(0, "drop_ipv6")] == 1
    xdp.apply(make_config())
    assert xdp.run(frame).verdict == "PASS"


def test_rate_limit_per_source_and_rule(xdp: Xdp) -> None:
    # Rule 3: 1 packet/s, burst 2.
    frame = client_frame(udp_in(dport=7777, dst=VIP2))
    assert [xdp.run(frame).verdict for _ in range(4)] == ["TX", "TX", "DROP", "DROP"]
    assert xdp.counts()[(3, "drop_rate_limit")] == 2
    other = client_frame(udp_in(dport=7777, dst=VIP2, src="192.0.2.51"))
    assert xdp.run(other).verdict == "TX", "another source has its own bucket"
    allowed = client_frame(udp_in(dport=7777, dst=VIP2, src=ALLOWED))
    assert [xdp.run(allowed).verdict for _ in range(4)] == ["TX"] * 4, "allow list is exempt"


def test_srcds_validation_on_server_accept(xdp: Xdp) -> None:
    xdp.apply(auth_config())  # a module validates only from authenticated FOU
    netchan = client_frame(udp_in(NETCHAN_RUNT, dport=27020))
    assert xdp.run(netchan).verdict == "DROP"
    assert xdp.counts()[(2, "drop_module")] == 1
    for step in (b"\xff\xff\xff\xffq", b"\xff\xff\xff\xffk..."):
        assert xdp.run(client_frame(udp_in(step, dport=27020))).verdict == "TX"
    # A challenge from the server does not validate; the accept ('B') does.
    chal = reply(b"\xff\xff\xff\xffA\x01\x02\x03\x04", sport=27020)
    assert xdp.run(fou_frame(GS_SRCDS, chal, token=KEY)).verdict == "TX"
    assert xdp.run(netchan).verdict == "DROP"
    accept = reply(b"\xff\xff\xff\xffB" + b"\x00" * 16, sport=27020)
    res = xdp.run(fou_frame(GS_SRCDS, accept, token=KEY))
    assert res.verdict == "TX" and res.data == decap_of(accept)
    assert xdp.run(netchan).verdict == "TX"
    assert Ether(xdp.run(netchan).data)[IP].dst == GS_SRCDS
    assert xdp.run(netchan).data[-8:] == KEY, "forwarded with the send key"
    # Another port of the same client is another connection.
    other = client_frame(IP(src=CLIENT, dst=VIP) / UDP(sport=40001, dport=27020) / NETCHAN_RUNT)
    assert xdp.run(other).verdict == "DROP"
    # Expiry: age the entry and the client is unvalidated again.
    set_expiry(xdp, game_clients(xdp)[(CLIENT, 40000, VIP, 27020)], 1)
    assert xdp.run(netchan).verdict == "DROP"


def test_reapply_changes_rules_without_reload(xdp: Xdp) -> None:
    frame = client_frame(udp_in())
    assert xdp.run(frame).verdict == "TX"
    cfg = make_config()
    moved = replace(cfg.rules[0], game_server=cfg.rules[2].game_server, ports=((27015, 27015),))
    xdp.apply(replace(cfg, rules=(moved,)))
    assert Ether(xdp.run(frame).data)[IP].dst == GS
    assert xdp.run(client_frame(udp_in(dport=27016))).verdict == "DROP"
    assert xdp.run(client_frame(udp_in(src=BLOCKED))).verdict == "DROP"
    xdp.apply(replace(cfg, rules=(), block=(), anycast=(*cfg.anycast, ipaddress.IPv4Address(VIP))))
    assert xdp.run(frame).verdict == "DROP", "rules removed: anycast traffic dropped"
    for name in ("rules", "rule_slots", "rule_overflow"):  # the config in force has none
        assert maps.in_force(xdp.ms, name) == {}, f"{name} emptied"
    assert xdp.run(client_frame(udp_in(src=BLOCKED))).verdict == "DROP", "still anycast"
    xdp.apply(replace(cfg, rules=(), block=()))
    assert xdp.run(frame).verdict == "PASS", "no longer anycast: the host's traffic"
    xdp.apply(cfg)
    assert xdp.run(frame).verdict == "TX"
    assert xdp.run(client_frame(udp_in(src=BLOCKED))).verdict == "DROP"


def test_module_not_compiled_in(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Without SRCDS_HANDSHAKE the rule bit is inert and the map does not exist."""
    from xdp_harness import loaded

    with loaded(tmp_path_factory.mktemp("nomod"), modules=()) as x:
        assert "game_clients" not in x.ms
        netchan = client_frame(udp_in(NETCHAN_RUNT, dport=27020))
        x.ms["rule_modules"].update(
            (2).to_bytes(4, "little"), maps_def.BY_NAME["rule_modules"].pack(bits=1)
        )
        assert x.run(netchan).verdict == "TX"


FIB_DMAC = "02:00:00:00:00:42"


def _gs_slot(xdp: Xdp) -> dict:
    raw = xdp.ms["gs_nexthops"].lookup(bytes(4))  # GS is the lowest game server: slot 0
    assert raw is not None
    return maps_def.BY_NAME["nexthop"].unpack(raw)


def test_nexthop_expiry_falls_back_to_fib(xdp: Xdp, fib_ns: tuple[Namespace, int, str]) -> None:
    """An expired next hop is looked up again in the FIB: the packet goes out with the
    FIB's MACs and egress, the slot is refreshed; without a neighbour or a route the
    packet is dropped under exactly the reason that says so."""
    ns, f0, f0_mac = fib_ns
    st = maps_def.BY_NAME["nexthop"]
    stale = bytes.fromhex("02000000dead")
    inner = udp_in()
    frame = client_frame(inner)
    smac, dmac = bytes.fromhex(f0_mac.replace(":", "")), bytes.fromhex(FIB_DMAC.replace(":", ""))

    def expire(dmac: bytes = stale, expires_ns: int = 0) -> None:
        value = st.pack(smac=stale, dmac=dmac, ifindex=f0, mtu=1500, dst=GS, expires_ns=expires_ns)
        xdp.ms["gs_nexthops"].update(bytes(4), value)

    def run_counted(reason: str) -> libbpf.TestRun:
        before = xdp.counts()
        with ns.entered():
            res = xdp.run(frame, ingress_ifindex=f0)
        after = xdp.counts()
        assert after.get((1, reason), 0) - before.get((1, reason), 0) == 1, after
        assert sum(after.values()) - sum(before.values()) == 1
        return res

    ns.run(["ip", "neigh", "replace", GS, "lladdr", FIB_DMAC, "dev", "f0", "nud", "permanent"])
    # Control: an entry that has not expired is used as it is, FIB or not.
    expire(expires_ns=2**63)
    res = run_counted("tx_forward")
    assert res.verdict == "TX"
    assert res.data.hex() == expected_encap(bytes(inner), GS, stale, stale).hex()

    # Expired: the FIB answers; egress f0 is the ingress device, so XDP_TX.
    expire()
    res = run_counted("tx_forward")
    assert res.verdict == "TX"
    assert res.data.hex() == expected_encap(bytes(inner), GS, smac, dmac).hex()
    slot = _gs_slot(xdp)
    assert (slot["smac"], slot["dmac"], slot["ifindex"], slot["mtu"]) == (smac, dmac, f0, 1500)
    assert slot["expires_ns"] > 0
    assert slot["expires_ns"] < 2**62, "expiry is now + nexthop_ttl, not forever"

    # Expired, route but no neighbour: the forward path cannot hand it to the stack.
    ns.run(["ip", "neigh", "del", GS, "dev", "f0"])
    expire()
    assert run_counted("drop_no_neigh").verdict == "DROP"

    # Expired, no route at all.
    ns.run(["ip", "addr", "flush", "dev", "f0"])
    expire()
    assert run_counted("drop_no_route").verdict == "DROP"
    assert _gs_slot(xdp)["dmac"] == stale, "a failed lookup leaves the slot alone"


def test_mtu_too_big(xdp: Xdp) -> None:
    inner = udp_in(b"m" * (1500 - 28 - 28 + 1))
    res = xdp.run(client_frame(inner))
    assert res.verdict == "DROP"
    assert xdp.counts()[(1, "drop_too_big")] == 1
    ok = udp_in(b"m" * (1500 - 28 - 28))
    assert xdp.run(client_frame(ok)).verdict == "TX"


def test_clock_calibrated_to_a_kernel_hz(xdp: Xdp) -> None:
    """Expiry runs on jiffies (inlined) scaled by the loader's calibration."""
    assert xdp.ns_per_jiffy in {10**9 // hz for hz in (100, 250, 300, 1000)}
    s = maps_def.BY_NAME["settings"].unpack(xdp.ms["settings"].lookup(bytes(4)) or b"")
    assert s["ns_per_jiffy"] == xdp.ns_per_jiffy


def test_ktime_fallback_when_uncalibrated(xdp: Xdp) -> None:
    """ns_per_jiffy 0: the same expiries on bpf_ktime_get_coarse_ns()."""
    xdp.ns_per_jiffy = 0
    xdp.apply(auth_config())
    frame = client_frame(udp_in(dport=7777, dst=VIP2))
    assert [xdp.run(frame).verdict for _ in range(3)] == ["TX", "TX", "DROP"]
    netchan = client_frame(udp_in(NETCHAN_RUNT, dport=27020))
    accept = reply(b"\xff\xff\xff\xffB", sport=27020)
    assert xdp.run(netchan).verdict == "DROP"
    assert xdp.run(fou_frame(GS_SRCDS, accept, token=KEY)).verdict == "TX"
    assert xdp.run(netchan).verdict == "TX"
