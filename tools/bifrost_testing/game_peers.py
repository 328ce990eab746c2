"""RakNet and Steam-networking peers for the test network: a server beside the game service,
a client in the client's netns, over plain UDP.

They speak what a POP sees of each protocol, with the layouts xdp/modules/rust.h and
steam.h cite (and tests/bpf/game_fixtures.py builds for the bpf tier):

- RakNet (facebookarchive/RakNet @1a16989, RakPeer.cpp): open connection request 1
  (a probed MTU) -> reply 1, request 2 (34 bytes, no security) -> reply 2 naming the
  client's address; then connected datagrams (bit 0x80 set).
- Steam networking (ValveSoftware/GameNetworkingSockets @e707b3a,
  steamnetworkingsockets_udp.{h,cpp}): ChallengeRequest (padded to 512) ->
  ChallengeReply (a keyed hash of the client's address) -> ConnectRequest with it ->
  ConnectOK; then data packets (0x80 set).

The server answers a handshake only as the real one does (RakNet: reply 2 to request 2;
Steam: ConnectOK only for the right challenge) and echoes a connected client's data,
so the client sees its session work end to end. It runs as a thread whose sockets live
in the game service's netns, and counts what it got by protocol and source address.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import selectors
import socket
import struct
import threading
from collections import Counter

from bifrost.netns import Namespace

RAKNET_MAGIC = bytes.fromhex("00ffff00fefefefefdfdfdfd12345678")  # RakPeer.cpp:135
RAKNET_OCR1, RAKNET_OCREPLY1, RAKNET_OCR2, RAKNET_OCREPLY2 = 0x05, 0x06, 0x07, 0x08
RAKNET_PROTOCOL, RAKNET_MTU = 6, 1200  # RakNetVersion.h; the second probed MTU
STEAM_CHALLENGE_REQUEST, STEAM_CHALLENGE_REPLY = 32, 33  # ..._messages_udp.proto:20-25
STEAM_CONNECT_REQUEST, STEAM_CONNECT_OK = 34, 35
STEAM_MIN_PADDED = 512  # k_cbSteamNetworkingMinPaddedPacketSize
DATA_FLAG = 0x80  # both transports' connected data
SERVER_GUID = bytes(range(0x11, 0x19))
# The two ends' Steam connection ids (data packets name the receiver's).
CLIENT_CONN_ID, SERVER_CONN_ID = 0xC11E0001, 0x5E2E0001


def raknet_address(addr: str, port: int) -> bytes:
    """BitStream.h:1142-1154: version 4, the address complemented, the port."""
    packed = ipaddress.IPv4Address(addr).packed
    return b"\x04" + bytes(b ^ 0xFF for b in packed) + struct.pack("!H", port)


def raknet_request1() -> bytes:
    """RakPeer.cpp:5757-5761: id, magic, protocol, zeros up to the MTU - 28."""
    head = bytes([RAKNET_OCR1]) + RAKNET_MAGIC + bytes([RAKNET_PROTOCOL])
    return head + bytes(RAKNET_MTU - 28 - len(head))


def raknet_request2(server: str, port: int, guid: bytes) -> bytes:
    """RakPeer.cpp:4757-4853 (no security): id, magic, the server's address, MTU, GUID."""
    addr = raknet_address(server, port)
    return bytes([RAKNET_OCR2]) + RAKNET_MAGIC + addr + struct.pack("!H", RAKNET_MTU) + guid


def raknet_datagram(seq: int, body: bytes) -> bytes:
    """ReliabilityLayer.cpp DatagramHeaderFormat: isValid (0x80) and flags, number (u24)."""
    return bytes([0x84]) + seq.to_bytes(3, "little") + body


def _pb_fixed32(field: int, value: int) -> bytes:
    return bytes([field << 3 | 5]) + struct.pack("<I", value)


def _pb_fixed64(field: int, value: int) -> bytes:
    return bytes([field << 3 | 1]) + struct.pack("<Q", value)


def steam_challenge_request(conn_id: int) -> bytes:
    """udp.cpp:1256 SendPaddedMsg: id, u16 LE length, connection_id (1), padded to 512."""
    msg = _pb_fixed32(1, conn_id) + _pb_fixed64(3, 1)
    raw = bytes([STEAM_CHALLENGE_REQUEST]) + struct.pack("<H", len(msg)) + msg
    return raw + bytes(STEAM_MIN_PADDED - len(raw))


def steam_connect_request(conn_id: int, challenge: int) -> bytes:
    """udp.cpp:1550: id, client_connection_id (1), challenge (2), my_timestamp (5)."""
    return (
        bytes([STEAM_CONNECT_REQUEST])
        + _pb_fixed32(1, conn_id)
        + _pb_fixed64(2, challenge)
        + _pb_fixed64(5, 2)
    )


def steam_data(to_conn_id: int, seq: int, body: bytes) -> bytes:
    """UDPDataMsgHdr (udp.h:28-40): flags with 0x80, the peer's connection id, seq."""
    return bytes([DATA_FLAG]) + struct.pack("<IH", to_conn_id, seq & 0xFFFF) + body


class GameServer:
    """RakNet on one port, Steam networking on another, of the service's address."""

    def __init__(self, ns: Namespace, address: str, raknet_port: int, steam_port: int) -> None:
        self.address = address
        self.raknet = ns.socket()
        self.raknet.bind((address, raknet_port))
        self.steam = ns.socket()
        self.steam.bind((address, steam_port))
        self.secret = secrets.token_bytes(16)
        self.connected: dict[str, set[tuple[str, int]]] = {"raknet": set(), "steam": set()}
        self.handshakes: Counter[tuple[str, str]] = Counter()  # (protocol, ip) -> accepted
        self.data: Counter[tuple[str, str]] = Counter()  # (protocol, ip) -> data echoed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="game-peers", daemon=True)
        self._thread.start()

    def challenge_for(self, addr: tuple[str, int]) -> int:
        """Steam's ChallengeReply value: a keyed hash of the address (udp.cpp:250-262)."""
        digest = hashlib.blake2s(f"{addr[0]}:{addr[1]}".encode(), key=self.secret).digest()
        return int(struct.unpack("<Q", digest[:8])[0])

    def _on_raknet(self, data: bytes, addr: tuple[str, int]) -> bytes | None:
        if data[:1] == bytes([RAKNET_OCR1]) and data[1:17] == RAKNET_MAGIC:
            mtu = struct.pack("!H", len(data) + 28)
            return bytes([RAKNET_OCREPLY1]) + RAKNET_MAGIC + SERVER_GUID + b"\x00" + mtu
        if data[:1] == bytes([RAKNET_OCR2]) and len(data) == 34 and data[1:17] == RAKNET_MAGIC:
            self.connected["raknet"].add(addr)
            self.handshakes["raknet", addr[0]] += 1
            return (
                bytes([RAKNET_OCREPLY2])
                + RAKNET_MAGIC
                + SERVER_GUID
                + raknet_address(*addr)
                + data[24:26]  # the MTU the client asked for
                + b"\x00"  # no security
            )
        if data[:1] and data[0] & DATA_FLAG and addr in self.connected["raknet"]:
            self.data["raknet", addr[0]] += 1
            return data  # a connected datagram back: the session's echo
        return None

    def _on_steam(self, data: bytes, addr: tuple[str, int]) -> bytes | None:
        if data[:1] == bytes([STEAM_CHALLENGE_REQUEST]) and len(data) >= STEAM_MIN_PADDED:
            conn_id = data[4:8]
            return (
                bytes([STEAM_CHALLENGE_REPLY])
                + b"\x0d"
                + conn_id
                + _pb_fixed64(2, self.challenge_for(addr))
            )
        if data[:1] == bytes([STEAM_CONNECT_REQUEST]) and len(data) >= 15:
            (challenge,) = struct.unpack("<Q", data[7:15])
            if challenge != self.challenge_for(addr):
                return None  # "Could be spoofed": no connection, no answer
            self.connected["steam"].add(addr)
            self.handshakes["steam", addr[0]] += 1
            return (
                bytes([STEAM_CONNECT_OK])
                + b"\x0d"
                + data[2:6]  # client_connection_id
                + _pb_fixed32(5, SERVER_CONN_ID)
            )
        if data[:1] and data[0] & DATA_FLAG and addr in self.connected["steam"]:
            self.data["steam", addr[0]] += 1
            return data[:1] + struct.pack("<I", CLIENT_CONN_ID) + data[5:]  # to the client's id
        return None

    def _serve(self) -> None:
        handlers = {self.raknet: self._on_raknet, self.steam: self._on_steam}
        with selectors.DefaultSelector() as sel:
            for sock in handlers:
                sel.register(sock, selectors.EVENT_READ)
            while not self._stop.is_set():
                for key, _ in sel.select(timeout=0.2):
                    sock: socket.socket = key.fileobj  # type: ignore[assignment]
                    data, addr = sock.recvfrom(2048)
                    reply = handlers[sock](data, addr)
                    if reply is not None:
                        sock.sendto(reply, addr)

    def stats(self) -> dict[str, dict[str, int]]:
        """{"raknet"|"steam": {"handshakes": n, "data": n}} summed over sources."""
        out: dict[str, dict[str, int]] = {}
        for proto in ("raknet", "steam"):
            out[proto] = {
                "handshakes": sum(v for (p, _), v in self.handshakes.items() if p == proto),
                "data": sum(v for (p, _), v in self.data.items() if p == proto),
            }
        return out

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.raknet.close()
        self.steam.close()


class GameClient:
    """One player of a RakNet or Steam-networking game: one socket (one source port)."""

    def __init__(self, ns: Namespace, client: str, server: tuple[str, int], proto: str) -> None:
        if proto not in ("raknet", "steam"):
            raise ValueError(f"protocol {proto!r}: raknet or steam")
        self.proto = proto
        self.server = server
        self.sock = ns.socket()
        self.sock.bind((client, 0))
        self.guid = secrets.token_bytes(8)
        self.seq = 0

    def ask(self, payload: bytes, timeout: float) -> bytes | None:
        self.sock.settimeout(timeout)
        self.sock.sendto(payload, self.server)
        try:
            return self.sock.recv(2048)
        except TimeoutError:
            return None

    def connect(self, timeout: float) -> list[str]:
        """The handshake; the server's answers by name, in order ([] if the first is lost)."""
        got = []
        if self.proto == "raknet":
            r1 = self.ask(raknet_request1(), timeout)
            if r1 is None or r1[:1] != bytes([RAKNET_OCREPLY1]):
                return got
            got.append("open connection reply 1")
            r2 = self.ask(raknet_request2(*self.server, self.guid), timeout)
            if r2 is not None and r2[:1] == bytes([RAKNET_OCREPLY2]):
                got.append("open connection reply 2")
            return got
        reply = self.ask(steam_challenge_request(CLIENT_CONN_ID), timeout)
        if reply is None or reply[:1] != bytes([STEAM_CHALLENGE_REPLY]) or len(reply) < 15:
            return got
        got.append("ChallengeReply")
        (challenge,) = struct.unpack("<Q", reply[7:15])
        ok = self.ask(steam_connect_request(CLIENT_CONN_ID, challenge), timeout)
        if ok is not None and ok[:1] == bytes([STEAM_CONNECT_OK]):
            got.append("ConnectOK")
        return got

    def data(self, body: bytes) -> bytes:
        """The next connected data packet carrying body."""
        self.seq += 1
        if self.proto == "raknet":
            return raknet_datagram(self.seq, body)
        return steam_data(SERVER_CONN_ID, self.seq, body)

    def echoed(self, sent: bytes, got: bytes | None) -> bool:
        """got is the server's echo of sent."""
        if got is None:
            return False
        return got == sent if self.proto == "raknet" else got[7:] == sent[7:]

    def close(self) -> None:
        self.sock.close()
