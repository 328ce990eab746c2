"""The game-module tests' program, config and per-game case table (see game_fixtures).

Rules, one per module, all on VIP and game server GS, and one more "rust" rule on VIP2
served by GS_OTHER: its server's replies must validate nothing for the first ones.
"""

from __future__ import annotations

import ipaddress
import os
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import game_fixtures as gf
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from xdp_harness import (
    CLIENT,
    CLIENT_DMAC,
    GS,
    KEY,
    KEY_OLD,
    NH_DMAC,
    NH_SMAC,
    VIP,
    VIP2,
    Xdp,
    client_frame,
    expected_encap,
    fou_frame,
    loaded,
    make_config,
)

from bifrost.xdp import libbpf, maps, maps_def
from bifrost.xdp.config import Rule, XdpConfig

ALL_MODULES = ("srcds", "rust", "steam", "ue3")
GS_OTHER = "10.0.0.3"  # GS_SRCDS in xdp_harness: has a next hop there
CLIENT_PORT = 40000
RUST_PORT, CS2_PORT, UE_PORT, OTHER_PORT = 28015, 27015, 7777, 28015
RULE_RUST, RULE_STEAM, RULE_UE, RULE_OTHER = "rust", "cs2", "unreal", "rust-other"


def _rule(rid: int, name: str, vip: str, port: int, gs: str, modules: tuple[str, ...]) -> Rule:
    a = ipaddress.IPv4Address
    return Rule(rid, name, a(vip), ((port, port),), "udp", a(gs), 5555, False, modules, 0, 0)


def games_config() -> XdpConfig:
    """Authenticated FOU (KEY sent, KEY and KEY_OLD accepted): modules need it."""
    return replace(
        make_config(modules=ALL_MODULES),
        auth_keys=(KEY, KEY_OLD),
        block=(),
        allow=(),
        rules=(
            _rule(1, RULE_RUST, VIP, RUST_PORT, GS, ("rust",)),
            _rule(2, RULE_STEAM, VIP, CS2_PORT, GS, ("steam",)),
            _rule(3, RULE_UE, VIP, UE_PORT, GS, ("ue3",)),
            _rule(4, RULE_OTHER, VIP2, OTHER_PORT, GS_OTHER, ("rust",)),
        ),
    )


@contextmanager
def games_loaded(tmp: Path) -> Iterator[Xdp]:
    """The program with every module compiled in and games_config() applied, run on one
    CPU: the handshake budget is per CPU."""
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    try:
        with loaded(tmp, modules=ALL_MODULES) as x:
            x.apply(games_config())
            yield x
    finally:
        os.sched_setaffinity(0, cpus)


def to_service(payload: bytes, port: int, src: str = CLIENT, sport: int = CLIENT_PORT) -> IP:
    return IP(src=src, dst=VIP) / UDP(sport=sport, dport=port) / payload


def from_service(
    payload: bytes, port: int, dst: str = CLIENT, dport: int = CLIENT_PORT, vip: str = VIP
) -> IP:
    return IP(src=vip, dst=dst) / UDP(sport=port, dport=dport) / payload


def decap_of(inner: IP) -> bytes:
    return bytes(Ether(src=NH_SMAC, dst=CLIENT_DMAC) / inner)


@dataclass(frozen=True)
class Game:
    """What one module must do, as fixture payloads."""

    module: str
    rule: str  # its name: ids are allocated by name (see rule_id)
    port: int
    handshakes: dict[str, bytes]  # client -> server before validation: forwarded
    malformed: dict[str, bytes]  # client -> server before validation: dropped
    not_proof: dict[str, bytes]  # server -> client, relayed, validates nothing
    proof: Callable[[str, int], bytes]  # server -> client (address, port): validates
    data: bytes  # client -> server: a validated client's, or budgeted (a route move)
    big_data: bytes  # the same kind, too big for the shrunk MTU of module_split()
    session: bytes  # server -> client game data: validates (a client that moved here)


def _raknet_request2() -> bytes:
    return gf.raknet_request2("198.51.100.10", RUST_PORT)


def _flip(payload: bytes, at: int, mask: int = 0x01) -> bytes:
    b = bytearray(payload)
    b[at] ^= mask
    return bytes(b)


RAKNET_HANDSHAKES = {
    "ping": gf.raknet_ping(),
    "ping open connections": gf.raknet_ping(open_connections=True),
    "request 1 mtu 1200": gf.raknet_request1(1200),
    "request 1 mtu 576": gf.raknet_request1(576),
    "request 2": _raknet_request2(),
    "a2s info (unbudgeted, as without a module)": gf.A2S_INFO,
}
RAKNET_MALFORMED = {
    "ping truncated": gf.raknet_ping()[:32],
    "ping padded": gf.raknet_ping() + b"\x00",
    "ping bad magic": _flip(gf.raknet_ping(), 9 + 15),
    "request 1 not a probed mtu": gf.raknet_request1(1000),
    "request 1 bad magic": _flip(gf.raknet_request1(576), 1),
    "request 2 with cookie (security)": _raknet_request2()[:17]
    + b"\x00\x00\x00\x01\x00"
    + _raknet_request2()[17:],
    "request 2 ipv6 binding address": _flip(_raknet_request2(), 17, 0x02),
    "request 2 truncated": _raknet_request2()[:33],
    "reply 1 from a client": gf.raknet_reply1(),
    "connected datagram too short": gf.raknet_datagram()[:3],
    "connected datagram over the mtu": gf.raknet_datagram(1465),
    "empty": b"",
    "unknown id": b"\x13" + gf.RAKNET_MAGIC + bytes(17),
}
STEAM_HANDSHAKES = {
    "challenge request": gf.steam_challenge_request(),
    "challenge request 1300": gf.steam_challenge_request(1300),
    "connect request": gf.steam_connect_request(),
    "connection closed": gf.steam_connection_closed(),
    "no connection": gf.steam_no_connection(),
    "a2s info (unbudgeted, as without a module)": gf.A2S_INFO,
}
STEAM_MALFORMED = {
    "challenge request unpadded": gf.steam_challenge_request(100),
    "challenge request 511": gf.steam_challenge_request(512)[:511],
    "challenge request over 1300": gf.steam_challenge_request(1301),
    "challenge request no connection id": _flip(gf.steam_challenge_request(), 3, 0x08),
    "challenge request length 0": gf.steam_challenge_request()[:1]
    + b"\x00\x00"
    + gf.steam_challenge_request()[3:],
    "challenge request length past the end": gf.steam_challenge_request()[:1]
    + (510).to_bytes(2, "little")
    + gf.steam_challenge_request()[3:],
    "connect request no challenge": gf.steam_connect_request()[:6]
    + b"\x19"
    + gf.steam_connect_request()[7:],
    "connect request truncated": gf.steam_connect_request()[:14],
    "connect ok from a client": gf.steam_connect_ok(),
    "challenge reply from a client": gf.steam_challenge_reply(),
    "no connection too long": gf.steam_no_connection() + b"\x00",
    "data packet too short": gf.steam_data()[:6],
    "data packet over 1300": gf.steam_data(1301),
    "source connectionless packet": b"\xff\xff\xff\xffq" + bytes(10),
    "4 bytes": b"\x20\x00\x00\x0d",
    "a2s info padded": gf.A2S_INFO + b"\x00",
}
UE_MALFORMED = {
    "data packet without termination bit": gf.ue_data()[:-1] + b"\x00",
    "data packet over 1472": gf.ue_data(1473),
    "one byte": b"\x02",
    "no termination bit": gf.ue_connect()[:28] + b"\x00",
    "bits after the termination bit": _flip(gf.ue_connect(), 28, 0x10),
    "one byte short": gf.ue_connect()[:28],
    "one byte long": gf.ue_connect() + b"\x00",
    "restart request from a client": gf.ue_restart_request(),
    "restart response truncated": gf.ue_restart_response()[:48],
    "empty": b"",
}


def _steam(
    module: str, rule: str, port: int, malformed: dict[str, bytes], not_proof: dict[str, bytes]
) -> Game:
    """A module speaking Steam's handshake: validated by the server's connect ok."""
    return Game(
        module,
        rule,
        port,
        STEAM_HANDSHAKES,
        malformed,
        not_proof,
        lambda addr, port: gf.steam_connect_ok(),
        gf.steam_data(),
        gf.steam_data(1300),
        gf.steam_data(to=gf.CLIENT_CONNECTION_ID),
    )


GAMES: dict[str, Game] = {
    "rust-raknet": Game(
        "rust",
        RULE_RUST,
        RUST_PORT,
        RAKNET_HANDSHAKES,
        RAKNET_MALFORMED,
        {
            "reply 1": gf.raknet_reply1(),
            "pong": b"\x1c" + bytes(16) + gf.RAKNET_MAGIC + b"rust",
            "reply 2 with security": gf.raknet_reply2(CLIENT, CLIENT_PORT, security=True),
            "reply 2 naming another client": gf.raknet_reply2("192.0.2.99", CLIENT_PORT),
            "reply 2 naming another port": gf.raknet_reply2(CLIENT, CLIENT_PORT + 1),
            "reply 2 padded": gf.raknet_reply2(CLIENT, CLIENT_PORT) + b"\x00",
            "incompatible protocol": b"\x19\x06" + gf.RAKNET_MAGIC + gf.SERVER_GUID,
        },
        gf.raknet_reply2,
        gf.raknet_datagram(),
        gf.raknet_datagram(1464),
        gf.raknet_datagram(),
    ),
    "rust-steam": _steam(
        "rust", RULE_RUST, RUST_PORT, {}, {"challenge reply": gf.steam_challenge_reply()}
    ),
    "steam": _steam(
        "steam",
        RULE_STEAM,
        CS2_PORT,
        {**STEAM_MALFORMED, "raknet request 2": _raknet_request2()},
        {
            "challenge reply": gf.steam_challenge_reply(),
            "connect ok without connection id": gf.steam_connect_ok()[:1]
            + b"\x15"
            + gf.steam_connect_ok()[2:],
            "raknet reply 2": gf.raknet_reply2(CLIENT, CLIENT_PORT),
            "no connection": gf.steam_no_connection(),
            "connection closed": gf.steam_connection_closed(),
            "source connectionless": b"\xff\xff\xff\xffA" + bytes(4),
        },
    ),
    "ue": Game(
        "ue3",
        RULE_UE,
        UE_PORT,
        {
            "connect": gf.ue_connect(),
            "challenge response": gf.ue_challenge_response(),
            "restart response": gf.ue_restart_response(),
        },
        UE_MALFORMED,
        {
            "challenge": gf.ue_challenge(),
            "restart request": gf.ue_restart_request(),
            "ack with timestamp -2": gf.ue_handshake(secret=1, timestamp=-2.0),
            "ack as a restart response": gf.ue_handshake(
                secret=1, timestamp=-1.0, orig_cookie=bytes(20)
            ),
            "data without termination bit": gf.ue_data()[:-1] + b"\x00",
        },
        lambda addr, port: gf.ue_challenge_ack(),
        gf.ue_data(),
        gf.ue_data(1464),
        gf.ue_data(),
    ),
}


def rule_id(xdp: Xdp, name: str) -> int:
    """The id the program counts a rule under (allocated by name, not position)."""
    return {n: i for i, n in maps.rule_names(xdp.ms, games_config()).items()}[name]


def delta(xdp: Xdp, before: dict[tuple[int, str], int]) -> dict[tuple[int, str], int]:
    """Counters that moved since before."""
    after = xdp.counts()
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def send_forward(xdp: Xdp, game: Game, payload: bytes, **kw) -> tuple[str, dict]:
    """A client datagram to the game's service: (verdict, counters moved)."""
    before = xdp.counts()
    inner = to_service(payload, game.port, **kw)
    res = xdp.run(client_frame(inner))
    if res.verdict == "TX":
        assert res.data == expected_encap(bytes(inner), GS, token=KEY), "FOU to GS, with KEY"
    return res.verdict, delta(xdp, before)


def send_return(xdp: Xdp, gs: str, inner: IP, token: bytes = KEY) -> tuple[str, dict]:
    """An authenticated FOU packet from gs carrying inner: (verdict, counters moved)."""
    before = xdp.counts()
    res = xdp.run(fou_frame(gs, inner, token=token))
    if res.verdict == "TX":
        assert res.data == decap_of(inner)
    return res.verdict, delta(xdp, before)


@dataclass(frozen=True)
class Split:
    passed: int  # let through by the module
    dropped: int  # dropped by it (drop_module)
    refill: int  # the most the budget can have refilled while the run went on


def budget_refill(seconds: float) -> int:
    """What the per-rule budget refills in that wall time, plus a jiffy (its clock)."""
    return int((seconds + 0.005) * maps_def.GAME_HANDSHAKE_PPS) + 1


def module_split(xdp: Xdp, game: Game, n: int, **kw) -> Split:
    """game.big_data from a client n times in one BPF_PROG_TEST_RUN (one CPU, about a
    microsecond apart). The game server's MTU is shrunk for the run, so what the module
    lets through ends as drop_too_big, the frame unchanged for the next repeat."""
    rid = rule_id(xdp, game.rule)
    frame = client_frame(to_service(game.big_data, game.port, **kw))
    before = xdp.counts()
    _gs_mtu(xdp, 1000)
    try:
        start = time.monotonic()
        assert xdp.run(frame).verdict == "DROP"
        libbpf.test_run(xdp.prog, frame, repeat=n - 1)
        elapsed = time.monotonic() - start
    finally:
        _gs_mtu(xdp, 1500)
    moved = delta(xdp, before)
    passed, dropped = moved.get((rid, "drop_too_big"), 0), moved.get((rid, "drop_module"), 0)
    assert passed + dropped == n and sum(moved.values()) == n, moved
    return Split(passed, dropped, budget_refill(elapsed))


def validated(xdp: Xdp, game: Game, **kw) -> bool:
    """Whether the client (kw: src, sport) is validated: three seconds' worth of the
    rule's budget at once all pass only for a validated client."""
    split = module_split(xdp, game, 3 * maps_def.GAME_HANDSHAKE_PPS, **kw)
    if split.dropped:
        # Not validated: the budget (a second's worth) and what refilled, no more.
        assert split.passed <= maps_def.GAME_HANDSHAKE_PPS + split.refill, split
    return split.dropped == 0


def _gs_mtu(xdp: Xdp, mtu: int) -> None:
    """GS's next-hop MTU (slot 0: the lowest game server, as xdp_harness sets it)."""
    nh = maps_def.BY_NAME["nexthop"]
    value = nh.pack(smac=NH_SMAC, dmac=NH_DMAC, ifindex=1, mtu=mtu, dst=GS, expires_ns=2**63)
    xdp.ms["gs_nexthops"].update(bytes(4), value)


def game_set_index(client: str, port: int, service: str, service_port: int) -> int:
    a = ipaddress.IPv4Address
    return maps_def.game_set_index(a(client).packed, port, a(service).packed, service_port)


@dataclass(frozen=True)
class Way:
    """A validated-clients table entry: where it is and until when."""

    set: int
    way: int
    expires_ns: int
    last_ns: int = 0  # the client's own rate bucket (0: full, never charged)


def game_clients(xdp: Xdp | maps.MapSet) -> dict[tuple[str, int, str, int], Way]:
    """(client, port, service, service port) -> its way, for every used way (of a
    loaded Xdp or of any object's maps)."""
    ms = xdp.ms if isinstance(xdp, Xdp) else xdp
    st = maps_def.BY_NAME["game_client_set"]

    def addr(u32: int) -> str:
        return str(ipaddress.IPv4Address(u32.to_bytes(4, "little")))

    out = {}
    for idx, raw in ms["game_clients"].nonzero(maps_def.GAME_CLIENT_SETS).items():
        v = st.unpack(raw)
        for w in range(maps_def.GAME_CLIENT_WAYS):
            state = v["state"][3 * w : 3 * w + 3]  # expires_ns, last_ns, credit_ns
            if state[0]:
                cport, sport = struct.unpack("!HH", v["ports"][w].to_bytes(4, "little"))
                key = (addr(v["client"][w]), cport, addr(v["service"][w]), sport)
                out[key] = Way(idx, w, state[0], state[1])
    return out


def set_expiry(xdp: Xdp, way: Way, expires_ns: int) -> None:
    st = maps_def.BY_NAME["game_client_set"]
    key = way.set.to_bytes(4, "little")
    raw = xdp.ms["game_clients"].lookup(key)
    assert raw is not None
    v = st.unpack(raw)
    state = list(v["state"])
    state[3 * way.way] = expires_ns
    xdp.ms["game_clients"].update(key, st.pack(**{**v, "state": state}))


def set_flags(xdp: Xdp, set_idx: int) -> int:
    raw = xdp.ms["game_clients"].lookup(set_idx.to_bytes(4, "little"))
    assert raw is not None
    return int(maps_def.BY_NAME["game_client_set"].unpack(raw)["flags"])


def client_key(client: str, port: int, service: str = VIP, service_port: int = 0) -> bytes:
    """A game_clients_overflow key."""
    return maps_def.BY_NAME["srcds_key"].pack(
        client=client, service=service, client_port=port, service_port=service_port
    )
