"""fou_map: echo throughput through the tunnel with vs without fou_map, a table of
1,000,000 vs one of 10 clients, and memory per table entry. Runs in the test guest
(TCG): only the ratios mean anything; absolute rates are printed for reference.

The client sends via POP 2 while the game server's tunnel defaults to POP 1, so with
fou_map every reply is rewritten and re-routed to POP 2; without it (module unloaded)
replies take the unchanged path via POP 1, which also reaches the client. Each
measurement first proves which path it measured: with the module, the replies came
back through POP 2 and the module counted them as rewritten; without it, through
POP 1. Ratios are medians of per-round ratios (bifrost.benchstats); the echo ratio
runs rounds until its 95% interval is within +-0.03 or says it could not. The
bytes-per-entry goal is judged on the measured growth of kernel memory (Slab +
vmalloc) over a 1,000,000-entry fill; the module's own arithmetic is shown beside it.
A missed goal or an unproven path is a failing exit status.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from bifrost.abi import fou_map as abi
from bifrost.benchstats import Report, alternate
from bifrost_testing import fou_map_testbed as tb

WHERE = "guest"

MIN_ROUNDS, MAX_ROUNDS = 6, 30  # each comparison runs until its interval is narrow
TARGET_HALF_WIDTH = 0.03
BUDGET_S = 480  # per comparison: no new round after this long, interval narrow or not
SECONDS = 2.0
WINDOW = 16  # requests in flight, so the rate is not bound by one round-trip
BIG = 1_000_000
SMALL = 10
# Entries filled through the chardev see no traffic: the longest idle timeout keeps them
# for the whole comparison (the default, 5 min, is shorter than its budget).
CFG = tb.table_config(max_entries=1 << 20, idle_timeout_ms=abi.MAX_IDLE_TIMEOUT_MS)

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
    s = t.client_socket(0, timeout=0.2)
    try:
        if not tb.wait_for(lambda: t.echo_once(s), timeout=20):
            p.kill()
            raise RuntimeError("the echo server never answered")
    finally:
        s.close()
    return p


def echo_rate(t: tb.Topology, client: int = 0, seconds: float = SECONDS) -> tuple[float, int]:
    """(round trips per second, round trips) with WINDOW requests in flight. A fresh
    socket each time, so stragglers of an earlier run are never counted."""
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
    return done / elapsed, done


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


@contextmanager
def hooks_kept() -> Iterator[None]:
    """An nftables chain at fou_map's hook points (prerouting, output) for the whole run:
    registering the FIRST netfilter hook at a point while packets flow panics 6.12
    under TCG (kernel-test-vm.md), and the module is loaded and unloaded per round.
    The static keys are global, so one chain in the init netns keeps them on."""
    subprocess.run(["modprobe", "nf_tables"], check=True)
    table = ["nft", "add", "table", "ip", "bench_keep_hooks"]
    subprocess.run(table, check=True)
    for chain, hook in (("pre", "prerouting"), ("out", "output")):
        spec = f"{{ type filter hook {hook} priority 0 ; }}"
        subprocess.run(["nft", "add", "chain", "ip", "bench_keep_hooks", chain, spec], check=True)
    try:
        yield
    finally:
        subprocess.run(["nft", "delete", "table", "ip", "bench_keep_hooks"], check=False)


def counters(t: tb.Topology) -> dict[str, int]:
    with t.fou_map() as fm:
        return fm.counters()


def measured(report: Report, t: tb.Topology, via_module: bool, what: str) -> float:
    """One echo measurement, and the proof of the path it took: with fou_map the replies
    came back through POP 2, rewritten by the module; without it through POP 1."""
    echo_rate(t, seconds=0.3)  # learn the client (through POP 2), warm up
    rx0 = (t.pop_rx(1), t.pop_rx(2))
    c0 = counters(t) if via_module else {}
    rate, replies = echo_rate(t)
    rx1, rx2 = t.pop_rx(1) - rx0[0], t.pop_rx(2) - rx0[1]
    report.require(replies > 0, f"{what}: no echo came back")
    if via_module:
        rewritten = counters(t)["tx_rewritten"] - c0["tx_rewritten"]
        report.require(
            rx2 >= replies and rx1 == 0 and rewritten >= replies,
            f"{what}: {replies} replies, POP 2 got {rx2}, POP 1 got {rx1}, "
            f"fou_map rewrote {rewritten}: not every reply was re-routed by the module",
        )
    else:
        report.require(
            rx1 >= replies and rx2 == 0,
            f"{what}: {replies} replies, POP 1 got {rx1}, POP 2 got {rx2}: "
            "without fou_map they must take the tunnel's own POP",
        )
    return rate


def echo_with_without(report: Report) -> None:
    """Module loaded + configured vs unloaded, alternating, until the interval is narrow."""
    with tb.topology(echo=False) as t:
        echo = echo_process(t)
        try:
            t.use_pop(2)

            def measure_on() -> float:
                if not tb.loaded():
                    tb.load()
                configure(t)
                return measured(report, t, True, "with fou_map")

            def measure_off() -> float:
                if tb.loaded():
                    tb.unload()
                return measured(report, t, False, "without fou_map")

            ratio, why = alternate(
                measure_on, measure_off, MIN_ROUNDS, MAX_ROUNDS, TARGET_HALF_WIDTH,
                BUDGET_S, "echo rate with / without fou_map",
                stop=lambda: bool(report.not_exercised),
            )  # fmt: skip
            if not tb.loaded():
                tb.load()
        finally:
            echo.kill()
            echo.wait()
    if report.not_exercised:
        return
    if why:
        report.note(why)
    report.goal("echo rate, fou_map / none", ratio.median, ">=", 0.95, str(ratio))


def table_sizes(report: Report) -> None:
    """1,000,000 vs 10 entries (two game-server netns, one table each), and memory."""
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
            ratio, why = alternate(
                lambda: measured(report, big, True, "1,000,000 entries"),
                lambda: measured(report, small, True, "10 entries"),
                MIN_ROUNDS, MAX_ROUNDS, TARGET_HALF_WIDTH, BUDGET_S,
                "echo rate 1,000,000 / 10 entries", stop=lambda: bool(report.not_exercised),
            )  # fmt: skip
            # Read after measuring: what the tables held while they were measured.
            with big.fou_map() as fm:
                st = fm.stats()
            n_small = entries(small)
        finally:
            for e in echos:
                e.kill()
                e.wait()
    if report.not_exercised:
        return
    if why:
        report.note(why)
    report.goal(f"echo rate, {st.entries} / {n_small} entries", ratio.median, ">=", 0.9, str(ratio))
    report.require(
        (st.entries, n_small) == (BIG, SMALL),
        f"tables held {st.entries} and {n_small} entries, not {BIG} and {SMALL} "
        f"({added} added via chardev, the rest learned)",
    )
    grown = (mem1["Slab"] - mem0["Slab"]) + (mem1["VmallocUsed"] - mem0["VmallocUsed"])
    report.goal(
        "bytes per entry (measured: Slab + vmalloc growth / entries added)",
        grown / added,
        "<=",
        64,
        f"{grown} bytes for {added} entries added in {fill_s:.1f}s; the module's own "
        f"figure: {st.table_bytes / st.entries:.1f} (object {st.entry_size} B, "
        f"{st.buckets} buckets)",
    )


def main() -> int:
    tb.load()
    report = Report("bench_fou_map")
    with hooks_kept():
        echo_with_without(report)
        if not report.not_exercised:
            table_sizes(report)
    if tb.loaded():
        tb.unload()
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
