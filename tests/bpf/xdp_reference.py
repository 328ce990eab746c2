"""A reference model of the POP's XDP program, written from its contract, not its C.

Sources: the README's "Decisions per packet" (xdp/README.md), protocols.md (FOU
and A2S) and the config (tools/bifrost/xdp/config.py). Packets are taken apart
with scapy, with every length checked against the bytes actually there. For a
frame the model says what the program must do: the verdict, the (rule, reason)
counter and, for a transmitted frame, its exact bytes. It keeps the state the
contract gives the program: SRCDS clients validated by a server's accept, and
the per-(source, rule) token buckets, whose refill depends on the clock and so
is bounded rather than predicted.

Authenticated FOU (AUTH.md), when the config has auth keys: a return packet
counts only with UDP length == 8 + inner tot_len + 8 and one of the keys in the
8 bytes after the inner packet (else drop_auth), and only then may a module
learn from it; a forwarded packet carries the send key after the inner packet,
counted in the outer lengths. Martians (issue 10): a client source in 0/8,
127/8 or 224/3, the POP or an anycast address, and a return destination in
those prefixes, the POP or a game server, are drop_martian.

What "well formed" means here (the program's documented contract):
- IPv4: version 4, header 20..60 bytes, total length covering the header and
  within the frame (a longer frame is Ethernet padding).
- UDP: the 8-byte header inside the IP packet, its length 8.. the IP payload.
- TCP: data offset 20.. the IP payload.
- The IPv4 header checksum is NOT part of it: the program does not verify it
  (neither does the kernel's own forwarding fast path in XDP examples); a
  packet whose checksum alone is wrong is forwarded and the game server's
  stack drops it. What the program writes itself (outer headers) must be right.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether
from xdp_harness import flow_port, outer_id

from bifrost.xdp.config import Rule, XdpConfig

ETH_IPV4, ETH_IPV6 = 0x0800, 0x86DD
VLAN_TPIDS = (0x8100, 0x88A8)  # 802.1Q, 802.1ad (QinQ's outer tag)
PROTOS = {"udp": 17, "tcp": 6}
FOU_OVERHEAD = 28
AUTH_LEN = 8
OUTER_TTL = 64
A2S_INFO_BODY = b"TSource Engine Query\x00"


@dataclass(frozen=True)
class Outcome:
    """What the program must do with one frame."""

    verdict: str  # DROP / PASS / TX (REDIRECT never: every next hop here is ifindex 1)
    rule: int  # 0: no rule
    reason: str
    output: bytes | None = None  # the transmitted frame; None: the input unchanged
    dst_kind: str = ""  # TX: "game server" or "client"
    rate_limited: bool = False  # passed the rule's token bucket (settle() bounds it)


@dataclass(frozen=True)
class Ipv4:
    """A well-formed IPv4 header and where its parts are in the frame."""

    start: int  # offset of the header in the frame
    ihl: int  # header bytes
    tot_len: int
    tos: int
    df: bool
    fragment: bool  # MF or a non-zero offset
    proto: int
    src: str
    dst: str

    @property
    def end(self) -> int:
        return self.start + self.tot_len


@dataclass(frozen=True)
class L4:
    sport: int
    dport: int
    payload: bytes  # UDP: by the UDP length; TCP: to the end of the IP packet


def ethertype_of(frame: bytes) -> int:
    """Read directly: scapy's Ether turns a type below 0x600 into an 802.3 length."""
    return int.from_bytes(frame[12:14], "big")


def is_ipv6_nd(frame: bytes) -> bool:
    """Neighbour discovery as RFC 4861 sends it: ICMPv6 (58) right after the fixed
    header, hop limit 255, type 133 (router solicitation) .. 137 (redirect); the
    ICMPv6 header's 4 bytes present."""
    ip6 = frame[14:]
    return (
        len(ip6) >= 44
        and ip6[0] >> 4 == 6
        and ip6[6] == 58
        and ip6[7] == 255
        and 133 <= ip6[40] <= 137
    )


NH_MTU = 1500  # the harness's next hops


def too_big_reply(frame: bytes, inner_mtu: int) -> bytes:
    """ICMP fragmentation needed (RFC 1191) for the IPv4 packet at frame[14:]: from
    the address it was sent to, back to its sender's MAC, quoting its header and 8
    bytes; tos 0xc0, DF and ID 0, TTL 64 (xdp/icmp.h)."""
    eth, ip = Ether(frame[:14]), IP(frame[14:34])
    return bytes(
        Ether(src=eth.dst, dst=eth.src, type=ETH_IPV4)
        / IP(src=ip.dst, dst=ip.src, tos=0xC0, id=0, flags="DF", ttl=64, proto=1)
        / ICMP(type=3, code=4, nexthopmtu=inner_mtu)
        / frame[14:42]
    )


def _swap16(v: int) -> int:
    return ((v << 8) | (v >> 8)) & 0xFFFF


def clamp_mss(frame: bytes, ip: Ipv4, mss: int) -> bytes:
    """frame with the MSS option of the TCP SYN (not RST) at ip lowered to mss and its
    checksum recomputed; unchanged if not such a segment, or its options are malformed
    before the MSS (TCPMSS's contract, xdp/mss.h)."""
    tcp_at = ip.start + ip.ihl
    flags = frame[tcp_at + 13]
    if not flags & 0x02 or flags & 0x04:
        return frame
    doff = (frame[tcp_at + 12] >> 4) * 4
    off = 20
    while off < doff:
        kind = frame[tcp_at + off]
        if kind == 0:
            return frame
        if kind == 1:
            off += 1
            continue
        if off + 2 > doff or frame[tcp_at + off + 1] < 2:
            return frame
        length = frame[tcp_at + off + 1]
        if kind != 2:
            off += length
            continue
        if length != 4 or off + 4 > doff:
            return frame
        at = tcp_at + off + 2
        if int.from_bytes(frame[at : at + 2], "big") <= mss:
            return frame
        # The checksum as RFC 1624 updates it (a wrong one stays as wrong); the
        # field at an odd offset counts byte-swapped in the 16-bit words.
        old = int.from_bytes(frame[at : at + 2], "big")
        if off & 1:
            old, new = _swap16(old), _swap16(mss)
        else:
            new = mss
        ck = int.from_bytes(frame[tcp_at + 16 : tcp_at + 18], "big")
        total = (~ck & 0xFFFF) + (~old & 0xFFFF) + new
        total = (total & 0xFFFF) + (total >> 16)
        total = (total & 0xFFFF) + (total >> 16)
        out = bytearray(frame)
        out[at : at + 2] = mss.to_bytes(2, "big")
        out[tcp_at + 16 : tcp_at + 18] = (~total & 0xFFFF).to_bytes(2, "big")
        return bytes(out)
    return frame


def parse_ipv4(frame: bytes, start: int, end: int) -> Ipv4 | None:
    """The IPv4 header at frame[start:], if well formed within frame[:end]."""
    if end - start < 20:
        return None
    ip = IP(frame[start : start + 20])  # the fixed part; options are not needed
    ihl = ip.ihl * 4
    if ip.version != 4 or ihl < 20 or ip.len < ihl or start + ip.len > end:
        return None
    return Ipv4(
        start,
        ihl,
        ip.len,
        ip.tos,
        bool(ip.flags.DF),
        bool(ip.flags.MF) or ip.frag != 0,
        ip.proto,
        ip.src,
        ip.dst,
    )


def parse_l4(frame: bytes, ip: Ipv4) -> L4 | None:
    """The UDP or TCP header of a whole datagram, if well formed within the IP packet."""
    body = frame[ip.start + ip.ihl : ip.end]
    if ip.proto == 17:
        if len(body) < 8:
            return None
        udp = UDP(body[:8])
        if udp.len < 8 or udp.len > len(body):
            return None
        return L4(udp.sport, udp.dport, body[8 : udp.len])
    if ip.proto == 6:
        if len(body) < 20:
            return None
        tcp = TCP(body[:20])
        doff = tcp.dataofs * 4
        if doff < 20 or doff > len(body):
            return None
        return L4(tcp.sport, tcp.dport, body[doff:])
    return None


def is_a2s_query(payload: bytes) -> bool:
    """protocols.md: A2S_INFO (25 bytes, 29 with a challenge), A2S_PLAYER/RULES (9)."""
    if payload[:4] != b"\xff\xff\xff\xff":
        return False
    if len(payload) == 9:
        return payload[4] in (0x55, 0x56)
    return len(payload) in (25, 29) and payload[4:25] == A2S_INFO_BODY


def is_martian(addr: str) -> bool:
    """0/8, 127/8, 224/4 multicast and 240/4 (255.255.255.255 with it)."""
    top = ipaddress.IPv4Address(addr).packed[0]
    return top in (0, 127) or top >= 224


def _in(addr: str, nets: tuple[ipaddress.IPv4Network, ...]) -> bool:
    a = ipaddress.IPv4Address(addr)
    return any(a in n for n in nets)


@dataclass
class Bucket:
    """A source's token bucket for one rule: bounds, not a prediction of the clock."""

    first_s: float
    passed: int = 0


@dataclass
class Reference:
    """The model for one config. `nexthops`: address -> (source MAC, destination MAC) of
    every next hop the harness installed (never expiring); any other destination has no
    route (the fuzz runs in an empty network namespace)."""

    cfg: XdpConfig
    nexthops: dict[str, tuple[bytes, bytes]]
    validated: set[tuple[str, str, int, int]] = field(default_factory=set)
    buckets: dict[tuple[str, int], Bucket] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pop = str(self.cfg.pop_address)
        self.game_servers = {str(g) for g in self.cfg.all_game_servers()}
        self.anycast = {str(a) for a in self.cfg.all_anycast()}
        self.auth = bool(self.cfg.auth_keys)
        self.trailer = AUTH_LEN if self.auth else 0
        self.keys: dict[tuple[str, int, int], Rule] = {}
        for r in self.cfg.rules:
            for port in r.port_keys():
                self.keys[(str(r.anycast), port, PROTOS[r.proto])] = r

    def rule_for(self, addr: str, port: int, proto: int) -> Rule | None:
        """A rule names a port (or a range), or covers every port of its address."""
        return self.keys.get((addr, port, proto)) or self.keys.get((addr, 0, proto))

    def expect(self, frame: bytes) -> list[Outcome]:
        """The outcomes the program may give: one, except where noted (see settle())."""
        out = self._expect(frame)
        return list(out) if isinstance(out, tuple) else [out]

    def _expect(self, frame: bytes) -> Outcome | tuple[Outcome, ...]:
        if len(frame) >= 14 and ethertype_of(frame) in VLAN_TPIDS:
            return self._tagged(frame)
        return self._untagged(frame)

    def _tagged(self, frame: bytes) -> Outcome | tuple[Outcome, ...]:
        """802.1Q / QinQ: up to two tags, taken out, the frame judged untagged, and put
        back on what is passed (unchanged) or transmitted (after the MACs)."""
        n = 1
        if len(frame) < 18:
            return Outcome("DROP", 0, "drop_malformed")
        if int.from_bytes(frame[16:18], "big") in VLAN_TPIDS:
            n = 2
            if len(frame) < 22 or int.from_bytes(frame[20:22], "big") in VLAN_TPIDS:
                return Outcome("DROP", 0, "drop_malformed")
        tags = frame[12 : 12 + 4 * n]
        out = self._untagged(frame[:12] + frame[12 + 4 * n :])

        def retag(o: Outcome) -> Outcome:
            if o.output is None:
                return o
            return replace(o, output=o.output[:12] + tags + o.output[12:])

        return tuple(retag(o) for o in out) if isinstance(out, tuple) else retag(out)

    def _untagged(self, frame: bytes) -> Outcome | tuple[Outcome, ...]:
        if len(frame) < 14:
            return Outcome("DROP", 0, "drop_malformed")
        ethertype = ethertype_of(frame)
        if ethertype == ETH_IPV6:
            if self.cfg.ipv6 == "drop":
                if is_ipv6_nd(frame):
                    return Outcome("PASS", 0, "pass_ipv6_nd")
                return Outcome("DROP", 0, "drop_ipv6")
            return Outcome("PASS", 0, "pass_ipv6")
        if ethertype != ETH_IPV4:
            return Outcome("PASS", 0, "pass_non_ip")
        ip = parse_ipv4(frame, 14, len(frame))
        if ip is None:
            return Outcome("DROP", 0, "drop_malformed")
        l4 = None if ip.fragment else parse_l4(frame, ip)
        if ip.dst == self.pop:
            udp_at = ip.start + ip.ihl
            if ip.proto != 17 or ip.fragment or len(frame) < udp_at + 8:
                return Outcome("PASS", 0, "pass_host")
            if UDP(frame[udp_at : udp_at + 8]).dport != self.cfg.fou_port:
                return Outcome("PASS", 0, "pass_host")
            if ip.ihl + 8 <= ip.tot_len:
                return self._return_path(frame, ip)  # which checks the UDP length
            # A "UDP header" beyond the IP length lies in the Ethernet padding:
            # not a datagram to the FOU port, so the host's.
            return Outcome("PASS", 0, "pass_host")
        if l4 is not None:
            rule = self.rule_for(ip.dst, l4.dport, ip.proto)
            if rule is not None:
                return self._forward_path(frame, ip, l4, rule)
        if ip.dst not in self.anycast:
            return Outcome("PASS", 0, "pass_host")
        if ip.fragment:
            return Outcome("DROP", 0, "drop_fragment")
        if ip.proto in (6, 17) and l4 is None:
            return Outcome("DROP", 0, "drop_malformed")
        if ip.proto == 1:
            return self._icmp_to_anycast(frame, ip)
        return Outcome("DROP", 0, "drop_no_rule")

    def _icmp_to_anycast(self, frame: bytes, ip: Ipv4) -> Outcome:
        """An ICMP error (3, 11, 12) quoting a datagram a rule's service sent from
        this address goes to the rule's game server (within a per-CPU budget these
        frames never exhaust); other errors drop_icmp_error, other ICMP drop_no_rule."""
        body = frame[ip.start + ip.ihl : ip.end]
        if len(body) < 8:
            return Outcome("DROP", 0, "drop_malformed")
        if body[0] not in (3, 11, 12):
            return Outcome("DROP", 0, "drop_no_rule")
        q = body[8:]
        rule = None
        if len(q) >= 20 and q[0] >> 4 == 4 and q[0] & 0xF >= 5 and q[9] in (6, 17):
            qihl = (q[0] & 0xF) * 4
            if str(ipaddress.IPv4Address(q[12:16])) == ip.dst and len(q) >= qihl + 4:
                rule = self.rule_for(ip.dst, int.from_bytes(q[qihl : qihl + 2], "big"), q[9])
        if rule is None:
            return Outcome("DROP", 0, "drop_icmp_error")
        if is_martian(ip.src) or ip.src == self.pop or ip.src in self.anycast:
            return Outcome("DROP", rule.id, "drop_martian")
        if not _in(ip.src, self.cfg.allow) and _in(ip.src, self.cfg.block):
            return Outcome("DROP", rule.id, "drop_blocked")
        gs = str(rule.game_server)
        if gs not in self.nexthops:
            return Outcome("DROP", rule.id, "drop_no_route")
        outer_len = ip.tot_len + FOU_OVERHEAD + self.trailer
        if outer_len > min(NH_MTU, self.cfg.tunnel_mtu or NH_MTU):
            return Outcome("DROP", rule.id, "drop_too_big")
        return replace(
            self._encapsulated(frame, ip, rule), reason="tx_icmp_forward", dst_kind="game server"
        )

    def _forward_path(
        self, frame: bytes, ip: Ipv4, l4: L4, rule: Rule
    ) -> Outcome | tuple[Outcome, ...]:
        if is_martian(ip.src) or ip.src == self.pop or ip.src in self.anycast:
            return Outcome("DROP", rule.id, "drop_martian")
        allowed = _in(ip.src, self.cfg.allow)
        if not allowed and _in(ip.src, self.cfg.block):
            return Outcome("DROP", rule.id, "drop_blocked")
        # Modules before the rate limit: what they drop costs no bucket.
        if "srcds" in rule.modules and "srcds" in self.cfg.modules and ip.proto == 17:
            connectionless = l4.payload[:4] == b"\xff\xff\xff\xff"
            key = (ip.src, ip.dst, l4.sport, l4.dport)
            if not connectionless and key not in self.validated:
                return Outcome("DROP", rule.id, "drop_module")
        if not allowed and rule.rate_limit_pps:
            # Which one settle() decides: the clock refills the bucket.
            passed = self._after_rate_limit(frame, ip, l4, rule)
            return replace(passed, rate_limited=True), Outcome("DROP", rule.id, "drop_rate_limit")
        return self._after_rate_limit(frame, ip, l4, rule)

    def _after_rate_limit(self, frame: bytes, ip: Ipv4, l4: L4, rule: Rule) -> Outcome:
        if rule.cache and ip.proto == 17 and is_a2s_query(l4.payload):
            return Outcome("PASS", rule.id, "pass_cache")
        gs = str(rule.game_server)
        outer_len = ip.tot_len + FOU_OVERHEAD + self.trailer
        if outer_len > 0xFFFF:
            return Outcome("DROP", rule.id, "drop_too_big")
        if gs not in self.nexthops:
            return Outcome("DROP", rule.id, "drop_no_route")
        mtu = min(NH_MTU, self.cfg.tunnel_mtu or NH_MTU)
        if outer_len > mtu:
            inner_mtu = mtu - FOU_OVERHEAD - self.trailer
            if ip.df and ip.ihl == 20 and inner_mtu >= 68:
                # ICMP fragmentation needed, back where it came from (within the
                # per-CPU reply budget, which these frames never exhaust).
                return Outcome("TX", rule.id, "tx_icmp_too_big", too_big_reply(frame, inner_mtu))
            return Outcome("DROP", rule.id, "drop_too_big")
        if ip.proto == 6:
            frame = clamp_mss(frame, ip, mtu - FOU_OVERHEAD - self.trailer - 40)
        return self._encapsulated(frame, ip, rule)

    def _encapsulated(self, frame: bytes, ip: Ipv4, rule: Rule) -> Outcome:
        """The IPv4 packet at ip FOU-encapsulated to the rule's game server."""
        gs = str(rule.game_server)
        outer_len = ip.tot_len + FOU_OVERHEAD + self.trailer
        smac, dmac = self.nexthops[gs]
        # Ethernet padding stays behind the packet; with auth the token replaces it.
        inner = frame[14 : ip.end] + self.cfg.auth_keys[0] if self.auth else frame[14:]
        outer = (
            Ether(src=smac, dst=dmac)
            / IP(
                src=self.pop,
                dst=gs,
                tos=ip.tos,
                id=outer_id(frame[14 : ip.end]),
                flags="DF" if ip.df else 0,
                ttl=OUTER_TTL,
                proto=17,
            )
            / UDP(
                sport=flow_port(frame[14 : ip.end]),
                dport=rule.fou_port,
                len=ip.tot_len + 8 + self.trailer,
                chksum=0,  # as the kernel's fou without encap-csum
            )
        )
        outer[IP].len = outer_len
        return Outcome("TX", rule.id, "tx_forward", bytes(outer) + inner, "game server")

    def _return_path(self, frame: bytes, outer: Ipv4) -> Outcome:
        if outer.src not in self.game_servers:
            return Outcome("DROP", 0, "drop_unknown_gs")
        udp = UDP(frame[outer.start + outer.ihl : outer.start + outer.ihl + 8])
        # The kernel's ipip/fou transmit path never writes outer IP options.
        if outer.ihl != 20 or udp.len < 8 + 20 or udp.len > outer.tot_len - 20:
            return Outcome("DROP", 0, "drop_malformed")
        start = outer.start + 20 + 8
        inner = parse_ipv4(frame, start, len(frame))
        if inner is None or inner.tot_len > udp.len - 8:
            return Outcome("DROP", 0, "drop_malformed")
        token = frame[inner.end : inner.end + AUTH_LEN]
        if self.auth and (
            udp.len != 8 + inner.tot_len + AUTH_LEN or token not in self.cfg.auth_keys
        ):
            return Outcome("DROP", 0, "drop_auth")
        if inner.fragment:
            return Outcome("DROP", 0, "drop_fragment")
        if inner.proto not in (6, 17):
            return Outcome("DROP", 0, "drop_relay")
        l4 = parse_l4(frame, inner)
        if l4 is None:
            return Outcome("DROP", 0, "drop_malformed")
        # No open relay: the inner source is a service this game server is behind.
        rule = self.rule_for(inner.src, l4.sport, inner.proto)
        if rule is None or str(rule.game_server) != outer.src:
            return Outcome("DROP", 0, "drop_relay")
        if is_martian(inner.dst) or inner.dst == self.pop or inner.dst in self.game_servers:
            return Outcome("DROP", rule.id, "drop_martian")
        if (
            self.auth  # only authenticated FOU validates anybody
            and "srcds" in rule.modules
            and "srcds" in self.cfg.modules
            and inner.proto == 17
            and l4.payload[:5] == b"\xff\xff\xff\xffB"
        ):
            self.validated.add((inner.dst, inner.src, l4.dport, l4.sport))
        if inner.dst not in self.nexthops:
            return Outcome("DROP", rule.id, "drop_no_route")
        smac, dmac = self.nexthops[inner.dst]
        if inner.proto == 6:
            mtu = min(NH_MTU, self.cfg.tunnel_mtu or NH_MTU)
            frame = clamp_mss(frame, inner, mtu - FOU_OVERHEAD - self.trailer - 40)
        rest = frame[start : inner.end] if self.auth else frame[start:]  # auth: token cut
        out = bytes(Ether(src=smac, dst=dmac, type=ETH_IPV4)) + rest
        return Outcome("TX", rule.id, "tx_return", out, "client")

    def settle(self, frame: bytes, allowed: list[Outcome], verdict: str, now_s: float) -> Outcome:
        """The one of `allowed` the program's verdict picks, for a rate-limited packet
        within the bounds of a token bucket of `burst` packets refilled at `pps`. When
        none fits, the first: the caller reports the difference."""
        fits = [o for o in allowed if o.verdict == verdict] or allowed[:1]
        if not allowed[0].rate_limited:
            return fits[0]
        passed, limited = allowed
        ip = parse_ipv4(frame, 14, len(frame))
        assert ip is not None
        rule = self.cfg.rule_by_id()[passed.rule]
        b = self.buckets.setdefault((ip.src, rule.id), Bucket(now_s))
        # A new source starts with a full bucket: its first `burst` packets pass.
        must_pass = b.passed < rule.rate_limit_burst
        # Never more than the burst plus the refill since the first packet (+1: jiffies).
        may_pass = b.passed < rule.rate_limit_burst + rule.rate_limit_pps * (now_s - b.first_s) + 1
        if must_pass or (fits[0] is passed and may_pass):
            b.passed += 1
            return passed
        return limited
