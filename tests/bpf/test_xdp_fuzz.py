"""100,000 random and mutated packets: no failure, every one accounted in the counters."""

from __future__ import annotations

import collections
import random

import pytest
from scapy.layers.inet import IP, TCP, UDP
from xdp_harness import (
    A2S_INFO,
    CLIENT,
    GS,
    GS_SRCDS,
    POP,
    VIP,
    VIP2,
    Xdp,
    client_frame,
    fou_frame,
)

pytestmark = pytest.mark.bpf

PACKETS = 100_000
VALID_ACTIONS = {"DROP", "PASS", "TX", "REDIRECT"}


def _seeds() -> list[bytes]:
    return [
        client_frame(IP(src=CLIENT, dst=VIP) / UDP(sport=40000, dport=27015) / b"hello"),
        client_frame(IP(src=CLIENT, dst=VIP) / UDP(sport=40000, dport=27015) / A2S_INFO),
        client_frame(IP(src=CLIENT, dst=VIP) / UDP(sport=40000, dport=27020) / b"\x01netchan"),
        client_frame(IP(src=CLIENT, dst=VIP2) / TCP(sport=40000, dport=443, flags="S")),
        client_frame(IP(src=CLIENT, dst=VIP2) / UDP(sport=1, dport=7777) / b"r"),
        fou_frame(GS, IP(src=VIP, dst=CLIENT) / UDP(sport=27015, dport=40000) / b"state"),
        fou_frame(
            GS_SRCDS, IP(src=VIP, dst=CLIENT) / UDP(sport=27020, dport=40000) / b"\xff\xff\xff\xffB"
        ),
        client_frame(IP(src=CLIENT, dst=POP) / UDP(sport=1, dport=5555) / (b"x" * 30)),
    ]


def _mutate(rng: random.Random, seed: bytes) -> bytes:
    data = bytearray(seed)
    kind = rng.randrange(5)
    if kind == 0:  # flip a few bytes anywhere
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == 1:  # flip header bytes only (IPv4/UDP/outer/inner headers)
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(14, min(len(data), 70))] = rng.randrange(256)
    elif kind == 2:  # truncate
        del data[rng.randint(14, len(data)) :]
    elif kind == 3:  # extend with junk
        data += rng.randbytes(rng.randint(1, 200))
    else:  # entirely random, but keep the Ethernet type IPv4 half the time
        data = bytearray(rng.randbytes(rng.randint(14, 300)))
        if rng.random() < 0.5:
            data[12:14] = b"\x08\x00"
    return bytes(data)


def test_random_and_mutated_packets(xdp: Xdp) -> None:
    rng = random.Random(20261127)
    seeds = _seeds()
    verdicts: collections.Counter[str] = collections.Counter()
    before = xdp.total()
    for _ in range(PACKETS):
        frame = _mutate(rng, rng.choice(seeds))
        res = xdp.run(frame)
        verdicts[res.verdict] += 1
    assert set(verdicts) <= VALID_ACTIONS, verdicts
    counts = xdp.counts()
    assert sum(counts.values()) - before == PACKETS, "every packet counted exactly once"
    reasons = {reason for (_, reason) in counts}
    # The mutations reach the interesting exits, not only one.
    for must in ("drop_malformed", "tx_forward", "tx_return", "pass_host", "pass_non_ip"):
        assert must in reasons, (must, sorted(reasons))
    print(dict(verdicts), sorted(counts.items(), key=lambda kv: -kv[1])[:12])
