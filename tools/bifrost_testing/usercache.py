"""A user-space A2S cache with bifrost_nf's logic, for the benchmark's comparison.

Same rules as the kernel: stateless challenge (keyed hash of client address,
port and secret generation; current and previous generation accepted), the
9-byte challenge to unverified sources, cached packets replayed to verified
ones. What differs is where it runs: one Python process, a socket per service.
"""

from __future__ import annotations

import hashlib
import secrets
import socket
import struct
import threading
import time

from bifrost.bifrost_nf import a2s


class UserCache:
    def __init__(self, bind: tuple[str, int], answers: dict[str, list[bytes]],
                 rotate_s: float = 60.0) -> None:  # fmt: skip
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind(bind)
        self.answers = answers
        self.rotate_s = rotate_s
        self.keys = [secrets.token_bytes(16), secrets.token_bytes(16)]
        self.gen = 1
        self.rotated = time.monotonic()
        self.answered = 0
        self.challenged = 0
        self.bytes_in = 0
        self.unverified_in = 0
        self.unverified_out = 0
        self.running = True

    def _chal(self, gen: int, ip: str, port: int) -> int:
        msg = socket.inet_aton(ip) + struct.pack("<HI", port, gen & 0xFFFFFFFF)
        c = int.from_bytes(hashlib.blake2s(msg, key=self.keys[gen & 1], digest_size=4).digest(),
                           "little")  # fmt: skip
        return 0x5A5A5A5A if c in a2s.ASK_CHALLENGE else c

    def _rotate_if_due(self) -> None:
        now = time.monotonic()
        if now - self.rotated >= self.rotate_s:
            self.gen += 1
            self.keys[self.gen & 1] = secrets.token_bytes(16)
            self.rotated = now

    def handle(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            req = a2s.parse_request(data)
        except a2s.A2SError:
            return
        self.bytes_in += len(data)
        self._rotate_if_due()
        ip, port = addr
        c = req.challenge
        if c is not None and c in (
            self._chal(self.gen, ip, port),
            self._chal(self.gen - 1, ip, port),
        ):
            for pkt in self.answers.get(req.kind, ()):
                self.sock.sendto(pkt, addr)
            self.answered += 1
            return
        reply = a2s.challenge(self._chal(self.gen, ip, port))
        self.sock.sendto(reply, addr)
        self.challenged += 1
        self.unverified_in += len(data)
        self.unverified_out += len(reply)

    def serve(self) -> None:
        self.sock.settimeout(0.2)
        while self.running:
            try:
                data, addr = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            self.handle(data, addr)

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self.serve, daemon=True, name="usercache")
        t.start()
        return t

    def close(self) -> None:
        self.running = False
        self.sock.close()


def main(argv: list[str] | None = None) -> int:
    """Serve answers from a JSON file {kind: [hex packet, ...]}; print counters on SIGTERM."""
    import argparse
    import json
    import signal
    from pathlib import Path

    ap = argparse.ArgumentParser(prog="usercache", description=main.__doc__)
    ap.add_argument("--bind", required=True, help="address:port")
    ap.add_argument("--answers", type=Path, required=True)
    args = ap.parse_args(argv)
    host, _, port = args.bind.rpartition(":")
    answers = {
        k: [bytes.fromhex(p) for p in v] for k, v in json.loads(args.answers.read_text()).items()
    }
    cache = UserCache((host, int(port)), answers)

    def stop(*_: object) -> None:
        cache.running = False

    signal.signal(signal.SIGTERM, stop)
    print("ready", flush=True)
    cache.serve()
    names = ("answered", "challenged", "bytes_in", "unverified_in", "unverified_out")
    counters = {k: getattr(cache, k) for k in names}
    print(json.dumps(counters), flush=True)
    cache.sock.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
