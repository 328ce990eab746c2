"""A2S (Source engine server queries) codec: requests, challenges, answers, split packets.

Wire formats: ../shared/docs/protocols.md and the Valve developer wiki "Server
queries". Everything here is bytes in, bytes out; no sockets.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

SIMPLE = b"\xff\xff\xff\xff"
SPLIT = b"\xfe\xff\xff\xff"
INFO_BODY = b"Source Engine Query\0"

A2S_INFO = 0x54
A2S_PLAYER = 0x55
A2S_RULES = 0x56
S2C_CHALLENGE = 0x41
INFO_RESPONSE = 0x49
PLAYER_RESPONSE = 0x44
RULES_RESPONSE = 0x45

KINDS = {A2S_INFO: "info", A2S_PLAYER: "player", A2S_RULES: "rules"}
RESPONSE_OF = {"info": INFO_RESPONSE, "player": PLAYER_RESPONSE, "rules": RULES_RESPONSE}
# Values of the challenge field that ask for a new challenge.
ASK_CHALLENGE = (0xFFFFFFFF, 0)
# Usual payload limit of one packet, split header included.
PACKET_MAX = 1400
SPLIT_HEADER = 12  # FE FF FF FF, id u32, total u8, number u8, size u16


class A2SError(ValueError):
    """Bytes that are not a valid A2S message."""


@dataclass(frozen=True)
class Request:
    kind: str  # "info", "player", "rules"
    challenge: int | None  # None: absent (INFO) or asks for one (PLAYER/RULES)


def request(kind: str, challenge: int | None = None) -> bytes:
    """A query as a client sends it; challenge None asks for one."""
    if kind == "info":
        tail = b"" if challenge is None else struct.pack("<I", challenge)
        return SIMPLE + bytes([A2S_INFO]) + INFO_BODY + tail
    code = {"player": A2S_PLAYER, "rules": A2S_RULES}[kind]
    return (
        SIMPLE + bytes([code]) + struct.pack("<I", 0xFFFFFFFF if challenge is None else challenge)
    )


def parse_request(data: bytes) -> Request:
    if len(data) < 5 or data[:4] != SIMPLE or data[4] not in KINDS:
        raise A2SError("not an A2S query")
    kind = KINDS[data[4]]
    if kind == "info":
        if data[5:25] != INFO_BODY or (len(data) != 25 and len(data) < 29):
            raise A2SError("malformed A2S_INFO")
        return Request("info", struct.unpack_from("<I", data, 25)[0] if len(data) >= 29 else None)
    if len(data) != 9:
        raise A2SError(f"malformed A2S_{kind.upper()}: {len(data)} bytes")
    (chal,) = struct.unpack_from("<I", data, 5)
    return Request(kind, None if chal in ASK_CHALLENGE else chal)


def challenge(value: int) -> bytes:
    """S2C_CHALLENGE: 9 bytes."""
    return SIMPLE + bytes([S2C_CHALLENGE]) + struct.pack("<I", value)


def parse_challenge(payload: bytes) -> int | None:
    """The challenge of an S2C_CHALLENGE packet, None for any other packet."""
    if len(payload) == 9 and payload[:4] == SIMPLE and payload[4] == S2C_CHALLENGE:
        return int(struct.unpack_from("<I", payload, 5)[0])
    return None


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, fmt: str) -> tuple[object, ...]:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise A2SError("truncated message")
        out = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return out

    def one(self, fmt: str) -> int:
        return int(self.take(fmt)[0])  # type: ignore[call-overload]

    def real(self) -> float:
        return float(self.take("<f")[0])  # type: ignore[arg-type]

    def cstring(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise A2SError("unterminated string")
        s = self.data[self.pos : end].decode("utf-8", "replace")
        self.pos = end + 1
        return s

    def at_end(self) -> bool:
        return self.pos >= len(self.data)


def _cstr(s: str) -> bytes:
    b = s.encode()
    if b"\0" in b:
        raise A2SError(f"NUL in string {s!r}")
    return b + b"\0"


@dataclass
class Info:
    name: str
    map: str
    folder: str
    game: str
    app_id: int = 0
    players: int = 0
    max_players: int = 0
    bots: int = 0
    server_type: str = "d"
    environment: str = "l"
    visibility: int = 0
    vac: int = 0
    version: str = "1.0.0.0"
    protocol: int = 17
    port: int | None = None
    steam_id: int | None = None
    keywords: str | None = None
    game_id: int | None = None


def build_info(info: Info) -> bytes:
    edf = 0
    extra = b""
    if info.port is not None:
        edf |= 0x80
        extra += struct.pack("<H", info.port)
    if info.steam_id is not None:
        edf |= 0x10
        extra += struct.pack("<Q", info.steam_id)
    if info.keywords is not None:
        edf |= 0x20
        extra += _cstr(info.keywords)
    if info.game_id is not None:
        edf |= 0x01
        extra += struct.pack("<Q", info.game_id)
    body = (
        bytes([INFO_RESPONSE, info.protocol])
        + _cstr(info.name)
        + _cstr(info.map)
        + _cstr(info.folder)
        + _cstr(info.game)
        + struct.pack("<HBBB", info.app_id, info.players, info.max_players, info.bots)
        + info.server_type.encode()[:1]
        + info.environment.encode()[:1]
        + struct.pack("<BB", info.visibility, info.vac)
        + _cstr(info.version)
        + bytes([edf])
        + extra
    )
    return SIMPLE + body


def parse_info(payload: bytes) -> Info:
    if payload[:4] != SIMPLE or len(payload) < 6 or payload[4] != INFO_RESPONSE:
        raise A2SError("not an A2S_INFO response")
    r = _Reader(payload[5:])
    protocol = r.one("<B")
    name, map_, folder, game = r.cstring(), r.cstring(), r.cstring(), r.cstring()
    app_id, players, max_players, bots = r.take("<HBBB")
    stype, env = r.take("<cc")
    visibility, vac = r.take("<BB")
    version = r.cstring()
    info = Info(
        name, map_, folder, game, int(app_id), int(players), int(max_players), int(bots),  # type: ignore[call-overload]
        stype.decode(), env.decode(), int(visibility), int(vac), version, protocol,  # type: ignore[union-attr, call-overload]
    )  # fmt: skip
    if r.at_end():
        return info
    edf = r.one("<B")
    if edf & 0x80:
        info.port = r.one("<H")
    if edf & 0x10:
        info.steam_id = r.one("<Q")
    if edf & 0x40:
        r.one("<H")
        r.cstring()
    if edf & 0x20:
        info.keywords = r.cstring()
    if edf & 0x01:
        info.game_id = r.one("<Q")
    return info


@dataclass(frozen=True)
class Player:
    name: str
    score: int = 0
    duration: float = 0.0
    index: int = 0


def build_players(players: list[Player]) -> bytes:
    out = bytearray(SIMPLE + bytes([PLAYER_RESPONSE, len(players)]))
    for p in players:
        out += bytes([p.index]) + _cstr(p.name) + struct.pack("<if", p.score, p.duration)
    return bytes(out)


def parse_players(payload: bytes) -> list[Player]:
    if payload[:4] != SIMPLE or len(payload) < 6 or payload[4] != PLAYER_RESPONSE:
        raise A2SError("not an A2S_PLAYER response")
    r = _Reader(payload[5:])
    out = []
    for _ in range(r.one("<B")):
        index = r.one("<B")
        name = r.cstring()
        score = r.one("<i")
        out.append(Player(name, score, r.real(), index))
    return out


def build_rules(rules: dict[str, str]) -> bytes:
    out = bytearray(SIMPLE + bytes([RULES_RESPONSE]) + struct.pack("<H", len(rules)))
    for k, v in rules.items():
        out += _cstr(k) + _cstr(v)
    return bytes(out)


def parse_rules(payload: bytes) -> dict[str, str]:
    if payload[:4] != SIMPLE or len(payload) < 7 or payload[4] != RULES_RESPONSE:
        raise A2SError("not an A2S_RULES response")
    r = _Reader(payload[5:])
    out = {}
    for _ in range(r.one("<H")):
        k = r.cstring()
        out[k] = r.cstring()
    return out


@dataclass
class SplitPart:
    answer_id: int
    total: int
    number: int
    size: int
    data: bytes = field(repr=False)


def split(payload: bytes, answer_id: int, packet_max: int = PACKET_MAX) -> list[bytes]:
    """Source-style split of one answer (its FF FF FF FF header included) into packets."""
    if len(payload) <= packet_max:
        return [payload]
    if answer_id & 0x80000000:
        raise A2SError("answer id must not have the compression bit")
    room = packet_max - SPLIT_HEADER
    chunks = [payload[i : i + room] for i in range(0, len(payload), room)]
    if len(chunks) > 255:
        raise A2SError(f"answer of {len(payload)} bytes needs {len(chunks)} packets")
    return [
        SPLIT + struct.pack("<IBBH", answer_id, len(chunks), n, packet_max) + c
        for n, c in enumerate(chunks)
    ]


def parse_split(packet: bytes) -> SplitPart:
    if len(packet) < SPLIT_HEADER or packet[:4] != SPLIT:
        raise A2SError("not a split packet")
    answer_id, total, number, size = struct.unpack_from("<IBBH", packet, 4)
    if answer_id & 0x80000000:
        raise A2SError("compressed split answers are not supported")
    if not total or number >= total:
        raise A2SError(f"split packet {number} of {total}")
    return SplitPart(answer_id, total, number, size, packet[SPLIT_HEADER:])


def join(packets: list[bytes]) -> bytes:
    """The answer of one single packet or of a complete set of split packets."""
    if len(packets) == 1 and packets[0][:4] == SIMPLE:
        return packets[0]
    parts = sorted((parse_split(p) for p in packets), key=lambda p: p.number)
    ids = {p.answer_id for p in parts}
    if len(ids) != 1 or [p.number for p in parts] != list(range(parts[0].total)):
        raise A2SError("incomplete or mixed split answer")
    return b"".join(p.data for p in parts)
