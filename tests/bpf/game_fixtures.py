"""Handshake packets of the games the XDP modules know, built from the protocols' sources.

Each builder cites where its layout comes from; the C side (xdp/modules/) cites the
same lines. Payloads only (UDP data): the tests wrap them in IP/UDP.

- RakNet: facebookarchive/RakNet @1a16989, Source/RakPeer.cpp, MessageIdentifiers.h,
  BitStream.h; and RAKNET_CAPTURE, a real connection between two RakNet peers.
- Steam networking: ValveSoftware/GameNetworkingSockets @e707b3a,
  src/common/steamnetworkingsockets_messages_udp.proto and
  src/steamnetworkingsockets/clientlib/steamnetworkingsockets_udp.{h,cpp}.
- Unreal (UE4 stateless handshake): dpull/utcp utcp_handshake.c, an open-source
  reimplementation of UE 4.26's StatelessConnectHandlerComponent (Epic's own source
  is not publicly reachable).
"""

from __future__ import annotations

import ipaddress
import struct

# A2S_INFO (protocols.md): the server browser's query, answered on CS2's game port too.
A2S_INFO = b"\xff\xff\xff\xffTSource Engine Query\x00"

# --- RakNet -------------------------------------------------------------------------

# RakPeer.cpp:135 OFFLINE_MESSAGE_DATA_ID.
RAKNET_MAGIC = bytes.fromhex("00ffff00fefefefefdfdfdfd12345678")
# MessageIdentifiers.h:59-79 (enum order).
ID_UNCONNECTED_PING = 0x01
ID_UNCONNECTED_PING_OPEN_CONNECTIONS = 0x02
ID_OPEN_CONNECTION_REQUEST_1 = 0x05
ID_OPEN_CONNECTION_REPLY_1 = 0x06
ID_OPEN_CONNECTION_REQUEST_2 = 0x07
ID_OPEN_CONNECTION_REPLY_2 = 0x08
RAKNET_PROTOCOL_VERSION = 6  # RakNetVersion.h
RAKNET_MTUS = (1492, 1200, 576)  # RakPeer.cpp:104 mtuSizes
UDP_HEADER_SIZE = 28  # CCRakNetUDT.h:45: IPv4 + UDP headers
CLIENT_GUID = bytes.fromhex("0102030405060708")
SERVER_GUID = bytes.fromhex("1112131415161718")


def raknet_address(addr: str, port: int) -> bytes:
    """BitStream.h:1142-1154: version 4, the address complemented, the port, network order."""
    packed = ipaddress.IPv4Address(addr).packed
    return b"\x04" + bytes(b ^ 0xFF for b in packed) + struct.pack("!H", port)


def raknet_ping(open_connections: bool = False) -> bytes:
    """RakPeer.cpp:2100-2111: id, time (8 bytes, __GET_TIME_64BIT), magic, GUID = 33."""
    mid = ID_UNCONNECTED_PING_OPEN_CONNECTIONS if open_connections else ID_UNCONNECTED_PING
    return bytes([mid]) + struct.pack("!Q", 123456) + RAKNET_MAGIC + CLIENT_GUID


def raknet_request1(mtu: int = 1492) -> bytes:
    """RakPeer.cpp:5757-5761: id, magic, protocol, zeros up to mtu - UDP_HEADER_SIZE."""
    head = bytes([ID_OPEN_CONNECTION_REQUEST_1]) + RAKNET_MAGIC + bytes([RAKNET_PROTOCOL_VERSION])
    return head + bytes(mtu - UDP_HEADER_SIZE - len(head))


def raknet_reply1() -> bytes:
    """RakPeer.cpp:5164-5186: id, magic, server GUID, no security (0), MTU."""
    return (
        bytes([ID_OPEN_CONNECTION_REPLY_1]) + RAKNET_MAGIC + SERVER_GUID + b"\x00"
    ) + struct.pack("!H", 1492)


def raknet_request2(server: str, port: int) -> bytes:
    """RakPeer.cpp:4757-4853 (no security): id, magic, the server's address, MTU, GUID = 34."""
    return (
        bytes([ID_OPEN_CONNECTION_REQUEST_2])
        + RAKNET_MAGIC
        + raknet_address(server, port)
        + struct.pack("!H", 1492)
        + CLIENT_GUID
    )


def raknet_reply2(client: str, port: int, security: bool = False) -> bytes:
    """RakPeer.cpp:5300-5304: id, magic, server GUID, the client's address, MTU,
    doSecurity (one bit, MSB first: BitStream::Write(bool)) = 35 bytes."""
    return (
        bytes([ID_OPEN_CONNECTION_REPLY_2])
        + RAKNET_MAGIC
        + SERVER_GUID
        + raknet_address(client, port)
        + struct.pack("!H", 1492)
        + (b"\x80" if security else b"\x00")
    )


# A real RakNet connection, captured on lo: raknet-python 0.3.0 (PyPI wheel, the RakNet
# C++ library, protocol 6), server 127.0.0.1:47015, client 127.0.0.1:43274: ping/pong,
# request/reply 1 (the 1492 probe: 18 bytes then zeros), request/reply 2, then
# connected datagrams (0x84 data, 0xc0 ACKs). ("c2s" or "s2c", UDP payload), in order.
RAKNET_CAPTURE_CLIENT = ("127.0.0.1", 43274)
RAKNET_CAPTURE: tuple[tuple[str, bytes], ...] = (
    (
        "c2s",
        bytes.fromhex("01000000000000000a00ffff00fefefefefdfdfdfd1234567800066167306edb26"),
    ),
    (
        "s2c",
        bytes.fromhex("1c000000000000000a00066167306eb16500ffff00fefefefefdfdfdfd12345678"),
    ),
    ("c2s", bytes.fromhex("0500ffff00fefefefefdfdfdfd1234567806") + bytes(1446)),
    ("s2c", bytes.fromhex("0600ffff00fefefefefdfdfdfd1234567800066167306eb1650005d4")),
    (
        "c2s",
        bytes.fromhex("0700ffff00fefefefefdfdfdfd123456780480fffffeb7a705d400066167306edb26"),
    ),
    (
        "s2c",
        bytes.fromhex("0800ffff00fefefefefdfdfdfd1234567800066167306eb1650480fffffea90a05d400"),
    ),
    ("c2s", bytes.fromhex("840000004000900000000900066167306edb26000000000000013a00")),
    ("s2c", bytes.fromhex("c0000101000000")),
    (
        "s2c",
        bytes.fromhex(
            "8400000060030000000000000000100480fffffea90a00000480fffffeb7a704"
            "ffffffff000004ffffffff000004ffffffff000004ffffffff000004ffffffff"
            "000004ffffffff000004ffffffff000004ffffffff000004ffffffff00000000"
            "00000000013a000000000000013a"
        ),
    ),
    ("c2s", bytes.fromhex("c0000101000000")),
    (
        "c2s",
        bytes.fromhex(
            "840100006002f001000000000000130480fffffeb7a70480fffffea90a04ffff"
            "ffff000004ffffffff000004ffffffff000004ffffffff000004ffffffff0000"
            "04ffffffff000004ffffffff000004ffffffff000004ffffffff000000000000"
            "0000013a0000000000000144000048000000000000000144"
        ),
    ),
    (
        "s2c",
        bytes.fromhex("8401000000004800000000000000014e000088030000000000000144000000000000014e"),
    ),
    ("c2s", bytes.fromhex("8402000000008803000000000000014e000000000000014e")),
    ("s2c", bytes.fromhex("c0000100010000020000")),
    ("c2s", bytes.fromhex("c0000101010000")),
    ("c2s", bytes.fromhex("840300006000080200000100000015")),
    ("s2c", bytes.fromhex("c0000101030000")),
)


def raknet_capture_readdressed(client: str, port: int) -> list[tuple[str, bytes]]:
    """RAKNET_CAPTURE with the client's address inside (reply 2 and the server's
    connected datagrams name it) rewritten to client:port, for a non-martian client."""
    old = raknet_address(*RAKNET_CAPTURE_CLIENT)
    new = raknet_address(client, port)
    return [(d, p.replace(old, new)) for d, p in RAKNET_CAPTURE]


def raknet_datagram(size: int = 16) -> bytes:
    """A connected datagram (ReliabilityLayer.cpp DatagramHeaderFormat): isValid (0x80)
    and flags, the datagram number (uint24), then messages."""
    head = b"\x84\x00\x00\x00" + b"\x40\x00\x90"
    return head + b"game data" + bytes(max(size - len(head) - 9, 0))


# --- Steam networking (GameNetworkingSockets) -----------------------------------------

# steamnetworkingsockets_messages_udp.proto:20-25
STEAM_CHALLENGE_REQUEST = 32
STEAM_CHALLENGE_REPLY = 33
STEAM_CONNECT_REQUEST = 34
STEAM_CONNECT_OK = 35
STEAM_CONNECTION_CLOSED = 36
STEAM_NO_CONNECTION = 37
STEAM_MIN_PADDED = 512  # steamnetworkingsockets_udp.h:19
STEAM_MAX_MSG = 1300  # steamnetworkingsockets_internal.h:266
CLIENT_CONNECTION_ID = 0x11223344
SERVER_CONNECTION_ID = 0x55667788
CHALLENGE = 0x0123456789ABCDEF


def pb_fixed32(field: int, value: int) -> bytes:
    return bytes([field << 3 | 5]) + struct.pack("<I", value)


def pb_fixed64(field: int, value: int) -> bytes:
    return bytes([field << 3 | 1]) + struct.pack("<Q", value)


def pb_varint(field: int, value: int) -> bytes:
    out = bytearray([field << 3])
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def pb_bytes(field: int, value: bytes) -> bytes:
    assert len(value) < 128
    return bytes([field << 3 | 2, len(value)]) + value


def steam_padded(msg_id: int, msg: bytes, size: int = STEAM_MIN_PADDED) -> bytes:
    """steamnetworkingsockets_udp.cpp:871-890 SendPaddedMsg: id, u16 LE length, protobuf,
    zeros up to at least 512 bytes."""
    raw = bytes([msg_id]) + struct.pack("<H", len(msg)) + msg
    return raw + bytes(max(size - len(raw), 0))


def steam_challenge_request(size: int = STEAM_MIN_PADDED) -> bytes:
    """CMsgSteamSockets_UDP_ChallengeRequest (.proto:29-37): connection_id (1, fixed32),
    my_timestamp (3, fixed64), protocol_version (4); sent padded (udp.cpp:1256)."""
    msg = pb_fixed32(1, CLIENT_CONNECTION_ID) + pb_fixed64(3, 987654321) + pb_varint(4, 11)
    return steam_padded(STEAM_CHALLENGE_REQUEST, msg, size)


def steam_challenge_reply() -> bytes:
    """CMsgSteamSockets_UDP_ChallengeReply (.proto:40-48), SendMsg: id + protobuf."""
    msg = pb_fixed32(1, CLIENT_CONNECTION_ID) + pb_fixed64(2, CHALLENGE) + pb_fixed64(3, 987654321)
    return bytes([STEAM_CHALLENGE_REPLY]) + msg + pb_varint(4, 11)


def steam_connect_request() -> bytes:
    """CMsgSteamSockets_UDP_ConnectRequest (.proto:52-84), id + protobuf, not padded
    (udp.cpp:1550): client_connection_id (1), challenge (2), my_timestamp (5),
    ping_est_ms (6), an (unsigned) cert (4) and crypt info (7), in field order."""
    return (
        bytes([STEAM_CONNECT_REQUEST])
        + pb_fixed32(1, CLIENT_CONNECTION_ID)
        + pb_fixed64(2, CHALLENGE)
        + pb_bytes(4, b"\x0a\x20" + bytes(32))
        + pb_fixed64(5, 987654322)
        + pb_varint(6, 30)
        + pb_bytes(7, b"\x0a\x24" + bytes(36))
    )


def steam_connect_ok() -> bytes:
    """CMsgSteamSockets_UDP_ConnectOK (.proto:88-113), SendMsg (udp.cpp:1775-1821):
    client_connection_id (1), your_timestamp (3), delay_time_usec (4), server_connection_id (5)."""
    return (
        bytes([STEAM_CONNECT_OK])
        + pb_fixed32(1, CLIENT_CONNECTION_ID)
        + pb_fixed64(3, 987654322)
        + pb_varint(4, 250)
        + pb_fixed32(5, SERVER_CONNECTION_ID)
    )


def steam_connection_closed() -> bytes:
    """CMsgSteamSockets_UDP_ConnectionClosed (.proto:117-124), padded."""
    msg = pb_fixed32(4, SERVER_CONNECTION_ID) + pb_fixed32(5, CLIENT_CONNECTION_ID)
    return steam_padded(STEAM_CONNECTION_CLOSED, msg)


def steam_no_connection() -> bytes:
    """CMsgSteamSockets_UDP_NoConnection (.proto:127-132), SendMsg: from (2), to (3)."""
    return (
        bytes([STEAM_NO_CONNECTION])
        + pb_fixed32(2, CLIENT_CONNECTION_ID)
        + pb_fixed32(3, SERVER_CONNECTION_ID)
    )


def steam_data(size: int = 23, to: int = SERVER_CONNECTION_ID) -> bytes:
    """UDPDataMsgHdr (udp.h:28-40): flags with 0x80 (udp.cpp:548), to-connection id, seq."""
    head = b"\x80" + struct.pack("<IH", to, 1)
    return head + b"encrypted frames" + bytes(max(size - len(head) - 16, 0))


# --- Unreal Engine 4 stateless handshake ----------------------------------------------

UE_COOKIE = bytes(range(1, 21))  # COOKIE_BYTE_SIZE 20


def ue_bits(bits: list[int]) -> bytes:
    """FBitWriter order (LSB first in each byte), then the termination bit and zero
    padding to a byte, as CapHandshakePacket and UNetConnection close every packet."""
    bits = [*bits, 1]
    out = bytearray((len(bits) + 7) // 8)
    for i, b in enumerate(bits):
        out[i // 8] |= b << (i % 8)
    return bytes(out)


def _bytes_bits(data: bytes) -> list[int]:
    return [(byte >> i) & 1 for byte in data for i in range(8)]


def ue_handshake(
    restart: int = 0,
    secret: int = 0,
    timestamp: float = 0.0,
    cookie: bytes = UE_COOKIE,
    orig_cookie: bytes | None = None,
) -> bytes:
    """utcp_handshake.c SendConnectChallenge / SendChallengeResponse / SendChallengeAck:
    handshake bit, restart bit, secret id, timestamp (double), cookie (20),
    [original cookie (20) in a restart response]: 227 or 387 bits + termination."""
    bits = [1, restart, secret, *_bytes_bits(struct.pack("<d", timestamp) + cookie)]
    if orig_cookie is not None:
        bits += _bytes_bits(orig_cookie)
    return ue_bits(bits)


def ue_connect() -> bytes:
    """NotifyHandshakeBegin: handshake bit, restart 0, secret 0, 28 zero bytes (= 227 bits)."""
    return ue_bits([1, 0, 0, *_bytes_bits(bytes(28))])


def ue_challenge() -> bytes:
    """The server's challenge: its timestamp (> 0) and cookie."""
    return ue_handshake(secret=1, timestamp=1234.5)


def ue_challenge_response() -> bytes:
    """The client echoes secret id, timestamp and cookie."""
    return ue_handshake(secret=1, timestamp=1234.5)


def ue_challenge_ack() -> bytes:
    """SendChallengeAck: timestamp -1.0, the authorised cookie; sent only after the
    cookie matched the client's address."""
    return ue_handshake(secret=1, timestamp=-1.0)


def ue_restart_request() -> bytes:
    """SendRestartHandshakeRequest: handshake bit, restart bit (2 bits + termination)."""
    return ue_bits([1, 1])


def ue_restart_response() -> bytes:
    """A client's response to a restart: 387 bits, the original cookie appended."""
    return ue_handshake(restart=1, secret=0, timestamp=99.0, orig_cookie=bytes(range(40, 60)))


def ue_data(size: int = 15) -> bytes:
    """A game packet: handshake bit 0, then packet header and bunches, termination bit."""
    body = b"\x12\x34\x56 bunch data"
    return ue_bits([0, *_bytes_bits(body + bytes(max(size - len(body) - 1, 0)))])
