"""fou_map: echo throughput through the tunnel with vs without fou_map, a table of
1,000,000 vs one of 10 clients, and memory per table entry. Runs in the test guest
(TCG): only the ratios mean anything; absolute rates are printed for reference.

The client sends via POP 2 while the game server's tunnel defaults to POP 1, so with
fou_map every reply is rewritten and re-routed to POP 2; without it (module unloaded)
replies take the unchanged path via POP 1, which also reaches the client.

Each table's size is read back from the module's stats after the measurement and
printed (and checked): the bench client's own learned entry is one of them.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import statistics
import struct
import subprocess
import sys
import time

from bifrost.abi import fou_map as abi
from bifrost.fou_map.control import TableConfig
from bifrost_testing import fou_map_testbed as tb

WHERE = "guest"

ROUNDS = 6
SECONDS = 2.0
WINDOW = 16  # requests in flight, so the rate is not bound by one round-trip
BIG = 1_000_000
SMALL = 10
CFG = TableConfig(ports=(tb.FOU_PORT,), max_entries=1 << 20)

ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(data, peer)
"""


def echo_process(t: tb.Topology) -> subprocess.Popen[bytes]:
    """The echo server as its own process: it must not share our GIL."""
    p = t.gs.popen([sys.executable, "-c", ECHO, tb.SERVICE_IP, str(tb.GAME_PORT)])
    time.sleep(1.0)
    return p


def echo_rate(t: tb.Topology, client: int = 0, seconds: float = SECONDS) -> float:
    """Round trips per second with WINDOW requests in flight."""
    s = t.client_socket(client, timeout=0.5)
    dst = (tb.SERVICE_IP, tb.GAME_PORT)
    payload = b"x" * 64
    for _ in range(WINDOW):
        s.sendto(payload, dst)
    done = 0
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        try:
            s.recvfrom(2048)
            done += 1
        except TimeoutError:
            for _ in range(WINDOW):  # refill a window lost to drops
                s.sendto(payload, dst)
            continue
        s.sendto(payload, dst)
    s.close()
    time.sleep(0.2)  # let stragglers drain
    return done / elapsed


def configure(t: tb.Topology) -> None:
    with t.fou_map() as fm:
        fm.configure(CFG)


def fill(t: tb.Topology, n: int) -> float:
    """n learned-like entries through the chardev (one ADD per write); seconds taken."""
    start = time.monotonic()
    base = int(ipaddress.IPv4Address("100.64.0.0"))
    rec = bytearray(abi.Add(pop=ipaddress.IPv4Address(tb.pop_ip(2))).pack())
    off = abi.Add.OFFSETS["client"]
    with t.fou_map() as fm:
        for i in range(n):
            struct.pack_into(">I", rec, off, base + i)  # network order, as on the wire
            while True:
                try:
                    os.write(fm.fd, rec)
                    break
                except OSError as e:
                    # The table grows in a worker; an insert may briefly find no room.
                    if e.errno != errno.ENOMEM:
                        raise
                    time.sleep(0.01)
    return time.monotonic() - start


def entries(t: tb.Topology) -> int:
    """Entries in the game server's table now, as the module counts them."""
    with t.fou_map() as fm:
        return fm.stats().entries


def fill_to(t: tb.Topology, n: int) -> tuple[int, float]:
    """Top the table up to n entries; (entries added, seconds taken).

    Counted from the table rather than assumed: whatever is already there (the
    bench client, once learned) is part of the n.
    """
    added = n - entries(t)
    return added, fill(t, added)


def meminfo() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":")
            out[k] = int(v.split()[0]) * 1024
    return out


def row(name: str, value: float, goal: str, ok: bool | None, ref: str = "") -> str:
    verdict = "-" if ok is None else ("PASS" if ok else "FAIL")
    shown = f"{value:>10}" if isinstance(value, int) else f"{value:>10.3f}"
    return f"| {name:<40} | {shown} | {goal:<8} | {verdict:<4} | {ref}"


def main() -> int:
    tb.load()
    lines = ["| metric | median | goal | | reference |", "|---|---|---|---|---|"]
    ok_all = True

    # 1. with vs without fou_map (module loaded + configured vs unloaded)
    with tb.topology(echo=False) as t:
        echo = echo_process(t)
        try:
            t.use_pop(2)
            on, off = [], []

            def measure_on() -> None:
                if not tb.loaded():
                    tb.load()
                configure(t)
                echo_rate(t, seconds=0.3)  # learn the client, warm up
                on.append(echo_rate(t))

            def measure_off() -> None:
                if tb.loaded():
                    tb.unload()
                echo_rate(t, seconds=0.3)
                off.append(echo_rate(t))

            for i in range(ROUNDS):  # A B, then B A: neither side always goes first
                for step in (measure_on, measure_off) if i % 2 == 0 else (measure_off, measure_on):
                    step()
            if not tb.loaded():
                tb.load()
        finally:
            echo.kill()
            echo.wait()
    # Each round's two runs are adjacent: the median of per-round ratios cancels slow
    # drifts of a shared machine better than a ratio of medians.
    ratio = statistics.median(a / b for a, b in zip(on, off, strict=True))
    ok_all &= ratio >= 0.9
    lines.append(
        row(
            "echo rate, fou_map / none",
            ratio,
            ">= 0.9",
            ratio >= 0.9,
            f"{statistics.median(on):.0f} vs {statistics.median(off):.0f} round trips/s",
        )
    )

    # 2. 1,000,000 vs 10 clients in the table (two game-server netns, one table each)
    with tb.topology(echo=False) as small, tb.topology(echo=False) as big:
        echos = [echo_process(small), echo_process(big)]
        try:
            for t in (small, big):
                configure(t)
                t.use_pop(2)
                echo_rate(t, seconds=0.3)  # the bench client is learned before the fill
            fill_to(small, SMALL)
            mem0 = meminfo()
            added, fill_s = fill_to(big, BIG)
            mem1 = meminfo()
            r_small, r_big = [], []
            for i in range(ROUNDS):
                pair = ((small, r_small), (big, r_big))
                for t, out in pair if i % 2 == 0 else pair[::-1]:
                    echo_rate(t, seconds=0.3)
                    out.append(echo_rate(t))
            # Read after measuring: what the tables held while they were measured.
            with big.fou_map() as fm:
                st = fm.stats()
            n_small = entries(small)
        finally:
            for e in echos:
                e.kill()
                e.wait()
    ratio = statistics.median(a / b for a, b in zip(r_big, r_small, strict=True))
    ok_all &= ratio >= 0.9
    lines.append(
        row(
            f"echo rate, {st.entries} / {n_small} entries",
            ratio,
            ">= 0.9",
            ratio >= 0.9,
            f"{statistics.median(r_big):.0f} vs {statistics.median(r_small):.0f} round trips/s",
        )
    )
    sized = (st.entries, n_small) == (BIG, SMALL)
    ok_all &= sized
    lines.append(
        row(
            "entries in the big table (module stats)",
            st.entries,
            f"= {BIG}",
            sized,
            f"{added} added via chardev, {st.entries - added} learned; small table {n_small}",
        )
    )

    # 3. memory per entry
    per_entry = st.table_bytes / st.entries
    ok_all &= per_entry <= 64
    lines.append(
        row(
            "bytes per entry (slab object + buckets)",
            per_entry,
            "<= 64",
            per_entry <= 64,
            f"object {st.entry_size} B, {st.buckets} buckets for {st.entries} entries",
        )
    )
    grown = (mem1["Slab"] - mem0["Slab"]) + (mem1["VmallocUsed"] - mem0["VmallocUsed"])
    lines.append(
        row(
            "bytes per entry (meminfo Slab+Vmalloc delta)",
            grown / added,
            "ref",
            None,
            f"added {added} entries via chardev in {fill_s:.1f}s",
        )
    )
    print("\n".join(lines))
    tb.unload()
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
