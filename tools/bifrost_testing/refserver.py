"""A reference game server for tests and the lab: A2S, and an SRCDS-style game with --game.

It answers A2S_INFO / A2S_PLAYER / A2S_RULES only with a challenge (like CS:GO
since 2021), splits RULES answers bigger than one packet, changes map on
demand and counts every query by source address. With --game it also speaks
the SRCDS connection handshake (protocols.md: client `q` -> server `A` +
challenge -> client `k` + that challenge -> server `B`) and echoes the
netchannel packets (no FF FF FF FF prefix) of connected clients, counting each
by source. Control: a Unix datagram socket; send "stats", "map NAME" or
"players N", get JSON back.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import selectors
import signal
import socket
import struct
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from bifrost.bifrost_nf import a2s

# SRCDS connectionless packet types (protocols.md), after FF FF FF FF.
C2S_GETCHALLENGE, S2C_CHALLENGE, C2S_CONNECT, S2C_CONNECTION = b"q", b"A", b"k", b"B"
ECHO_PREFIX = b"echo:"


class RefServer:
    def __init__(
        self,
        bind: tuple[str, int],
        control: Path | None,
        name: str = "Bifrost reference server",
        map_name: str = "de_dust2",
        n_players: int = 5,
        n_rules: int = 120,
        also_bind: tuple[tuple[str, int], ...] = (),
        game: bool = False,
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(bind)
        self.port = self.sock.getsockname()[1]
        # More addresses served the same way (a service address and a unicast one).
        self.socks = [self.sock]
        for extra in also_bind:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(extra)
            self.socks.append(s)
        self.game = game
        self.connected: set[tuple[str, int]] = set()
        self.handshakes: Counter[str] = Counter()  # source ip -> `B` (connection accepted) sent
        self.game_packets: Counter[str] = Counter()  # source ip -> every non-A2S packet
        self.control_path = control
        self.ctl: socket.socket | None = None
        if control:
            control.unlink(missing_ok=True)
            self.ctl = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.ctl.bind(str(control))
        self.secret = secrets.token_bytes(16)
        self.name = name
        self.map = map_name
        self.n_players = n_players
        self.n_rules = n_rules
        self.answer_id = 1
        self.queries: Counter[str] = Counter()  # source ip -> answered or challenged queries
        self.by_kind: Counter[str] = Counter()
        self.running = True

    def challenge_for(self, addr: tuple[str, int]) -> int:
        digest = hashlib.blake2s(f"{addr[0]}:{addr[1]}".encode(), key=self.secret).digest()
        value = int(struct.unpack("<I", digest[:4])[0])
        return value if value not in a2s.ASK_CHALLENGE else 1

    def info(self) -> a2s.Info:
        return a2s.Info(
            name=self.name,
            map=self.map,
            folder="csgo",
            game="Counter-Strike: Global Offensive",
            app_id=730,
            players=self.n_players,
            max_players=32,
            bots=0,
            version="1.38.7.9",
            port=self.port,
            keywords="bifrost,reference",
        )

    def players(self) -> list[a2s.Player]:
        return [a2s.Player(f"player{i}", i * 3, 60.0 * i, 0) for i in range(self.n_players)]

    def rules(self) -> dict[str, str]:
        rules = {"sv_map": self.map}
        rules.update({f"sv_rule_{i:03d}": f"value-{i}-" + "x" * 20 for i in range(self.n_rules)})
        return rules

    def answer(self, kind: str) -> list[bytes]:
        if kind == "info":
            return [a2s.build_info(self.info())]
        if kind == "player":
            return [a2s.build_players(self.players())]
        self.answer_id = (self.answer_id + 1) & 0x7FFFFFFF
        return a2s.split(a2s.build_rules(self.rules()), self.answer_id)

    def handle(self, data: bytes, addr: tuple[str, int], sock: socket.socket | None = None) -> None:
        sock = sock or self.sock
        try:
            req = a2s.parse_request(data)
        except a2s.A2SError:
            if self.game:
                self.handle_game(data, addr, sock)
            return
        self.queries[addr[0]] += 1
        self.by_kind[req.kind] += 1
        want = self.challenge_for(addr)
        if req.challenge != want:
            sock.sendto(a2s.challenge(want), addr)
            return
        for pkt in self.answer(req.kind):
            sock.sendto(pkt, addr)

    def handle_game(self, data: bytes, addr: tuple[str, int], sock: socket.socket) -> None:
        """The SRCDS handshake, then an echo of each netchannel packet of a connected client."""
        self.game_packets[addr[0]] += 1
        want = struct.pack("<I", self.challenge_for(addr))
        if data[:4] == a2s.SIMPLE and data[4:5] == C2S_GETCHALLENGE:
            sock.sendto(a2s.SIMPLE + S2C_CHALLENGE + want, addr)
        elif data[:4] == a2s.SIMPLE and data[4:5] == C2S_CONNECT and data[5:9] == want:
            self.connected.add(addr)
            self.handshakes[addr[0]] += 1
            sock.sendto(a2s.SIMPLE + S2C_CONNECTION + want, addr)
        elif data[:4] != a2s.SIMPLE and addr in self.connected:
            sock.sendto(ECHO_PREFIX + data, addr)

    def control(self, cmd: str) -> dict[str, Any]:
        words = cmd.split()
        if words[:1] == ["map"] and len(words) == 2:
            self.map = words[1]
        elif words[:1] == ["players"] and len(words) == 2:
            self.n_players = int(words[1])
        elif words[:1] == ["stop"]:
            self.running = False
        elif words[:1] != ["stats"]:
            return {"error": f"unknown command {cmd!r}"}
        return {
            "map": self.map,
            "queries": dict(self.queries),
            "by_kind": dict(self.by_kind),
            "game_packets": dict(self.game_packets),
            "handshakes": dict(self.handshakes),
        }

    def serve(self) -> None:
        sel = selectors.DefaultSelector()
        for s in self.socks:
            sel.register(s, selectors.EVENT_READ)
        if self.ctl:
            sel.register(self.ctl, selectors.EVENT_READ)
        while self.running:
            for key, _ in sel.select(timeout=0.5):
                if key.fileobj in self.socks:
                    sock: socket.socket = key.fileobj  # type: ignore[assignment]
                    data, addr = sock.recvfrom(2048)
                    self.handle(data, addr, sock)
                elif self.ctl:
                    cmd, peer = self.ctl.recvfrom(512)
                    reply = json.dumps(self.control(cmd.decode(errors="replace")))
                    if peer:
                        self.ctl.sendto(reply.encode(), peer)
        sel.close()

    def close(self) -> None:
        for s in self.socks:
            s.close()
        if self.ctl:
            self.ctl.close()
            if self.control_path:
                self.control_path.unlink(missing_ok=True)


def control(path: str | Path, cmd: str, timeout: float = 5.0) -> dict[str, Any]:
    """Send a command to a running refserver; return its JSON answer."""
    me = Path(f"/tmp/refserver-client-{os.getpid()}-{secrets.token_hex(4)}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(me))
        try:
            s.settimeout(timeout)
            s.sendto(cmd.encode(), str(path))
            return dict(json.loads(s.recv(65536)))
        finally:
            me.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="refserver", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--bind", action="append", help="address:port to serve (repeat; default 0.0.0.0:27015)"
    )
    ap.add_argument("--game", action="store_true", help="speak the SRCDS handshake and echo")
    ap.add_argument("--control", type=Path, help="Unix datagram control socket path")
    ap.add_argument("--map", default="de_dust2")
    ap.add_argument("--players", type=int, default=5)
    ap.add_argument("--rules", type=int, default=120, help="rules (120 need a split answer)")
    args = ap.parse_args(argv)
    binds = []
    for text in args.bind or ["0.0.0.0:27015"]:
        host, _, port = text.rpartition(":")
        binds.append((host, int(port)))
    srv = RefServer(binds[0], args.control, map_name=args.map, n_players=args.players,
                    n_rules=args.rules, also_bind=tuple(binds[1:]), game=args.game)  # fmt: skip

    def stop(*_: object) -> None:
        srv.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        srv.serve()
    finally:
        srv.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
