"""XDP program ns/packet per path next to a parse-only baseline (BPF_PROG_TEST_RUN).

Both run through the bench wrapper (xdp/bench/), which restores the packet after
every repeat, so each repeat measures the path named and not its failure path.
Each path runs right after the baseline, on one CPU; the ratio printed is the
median of these per-pair ratios with its 95% interval (bifrost.benchstats),
pooled over several fresh loads of the object (LOADS: the JIT image's placement
moves the ratios from load to load). The
goals (GOALS; a miss is a failing exit status): forwarding <= 2x the baseline;
with authenticated FOU (AUTH.md: an 8-byte token after the inner packet)
forwarding <= 1.75x and the return path <= 2x; and the spoofed-source flood
(a new source every packet, issue 10: flood mode) <= 2x.
Every run must return its path's verdict and move that path's counter by
exactly the repeats, or the path was not the one measured. Absolute ns are
for reference only.

The block/allow lists and [auth] are POP-wide, so each row names the config it
runs under (CONFIG_OF): the firewall rows under one that has the lists (and its
rule a rate limit and SRCDS), the auth rows under one with keys, the others
under the same config without them: "forward (encap)" is forwarding alone, and
"forward + firewall" adds what the firewall costs on top. The flood row runs
with both, as a POP with a game module must (a module needs auth).
"""

from __future__ import annotations

import ipaddress
import os
import statistics
import struct
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from bifrost.benchstats import BenchPath, Pairs, Report, paired_rounds
from bifrost.codegen import render_module_config
from bifrost.xdp import build, libbpf, maps, maps_def
from bifrost.xdp.config import Rule, XdpConfig

WHERE = "host"
# Many short pairs rather than few long runs: noise on these machines comes in
# bursts longer than a pair, so per-pair ratios stay comparable.
ROUNDS = 6
# Fresh loads of the object a run pools the rounds of: where the kernel places the
# JIT image moves a path's ratio by several percent from one load to the next (two
# loads of the same bytes gave 1.724 and 1.800 for forward + auth), more than some
# goals' margins, so one load would be a single draw of that spread.
LOADS = 5
REPEAT = 250_000
BASE = "baseline (parse only)"
FLOOR = "encap floor (no lookups)"
AUTH_FLOOR = "auth floor (no lookups)"

POP, VIP, GS, CLIENT = "198.51.100.1", "198.51.100.10", "10.0.0.2", "192.0.2.50"
A2S_INFO = b"\xff\xff\xff\xffTSource Engine Query\x00"


KEY = bytes.fromhex("0123456789abcdef")


def _config(firewall: bool = True, auth: bool = False) -> XdpConfig:
    a = ipaddress.IPv4Address
    rules = (
        Rule(1, "plain", a(VIP), ((27015, 27015),), "udp", a(GS), 5555, True, (), 0, 0),
        # Firewall on: lists non-empty, a rate limit the bench never reaches, SRCDS.
        Rule(2, "guarded", a(VIP), ((27016, 27016),), "udp", a(GS), 5555, True, ("srcds",),
             10**9, 10**9),
    )  # fmt: skip
    return XdpConfig(
        modules=("srcds",),
        pop_address=a(POP),
        rules=rules,
        block=(ipaddress.IPv4Network("203.0.113.0/24"),) if firewall else (),
        allow=(ipaddress.IPv4Network("198.18.0.0/15"),) if firewall else (),
        auth_keys=(KEY, bytes.fromhex("fedcba9876543210")) if auth else (),
    )


def _frame(dport: int, payload: bytes) -> bytes:
    return bytes(Ether() / IP(src=CLIENT, dst=VIP) / UDP(sport=40000, dport=dport) / payload)


FLOOD = "fwd + fw + auth, spoofed flood"
FWD_AUTH, RET_AUTH = "forward + auth", "return + auth"
# Which config (firewall, auth) each row runs under; the others: (False, False).
CONFIG_OF = {
    "forward + firewall": (True, False),
    FWD_AUTH: (False, True),
    RET_AUTH: (False, True),
    FLOOD: (True, True),
}
GOALS = {"forward (encap)": 2.0, FWD_AUTH: 1.75, RET_AUTH: 2.0, FLOOD: 2.0}


def _paths() -> dict[str, tuple[bytes, str]]:
    """name -> (frame, expected verdict); CONFIG_OF says which config each runs under,
    COUNTED which (rule, reason) counter each path must move."""
    game = b"\x00" * 60  # 14 + 20 + 8 + 60 = a 102-byte frame, a typical game datagram
    ret_inner = IP(src=VIP, dst=CLIENT) / UDP(sport=27015, dport=40000) / game
    fou = bytes(
        Ether() / IP(src=GS, dst=POP) / UDP(sport=50000, dport=5555, chksum=0) / bytes(ret_inner)
    )
    return {
        "forward (encap)": (_frame(27015, game), "TX"),
        "forward + firewall": (_frame(27016, b"\xff\xff\xff\xff" + game[4:]), "TX"),
        "return (decap)": (fou, "TX"),
        FWD_AUTH: (_frame(27015, game), "TX"),
        RET_AUTH: (_with_key(ret_inner), "TX"),
        "cache match (A2S_INFO)": (_frame(27015, A2S_INFO + bytes(40)[:0]), "PASS"),
        "no rule (drop)": (_frame(27999, game), "DROP"),
    }


# The counters each path must move by exactly the repeats of a run (the floor counts nothing).
COUNTED = {
    "forward (encap)": ((1, "tx_forward"),),
    "forward + firewall": ((2, "tx_forward"),),
    "return (decap)": ((1, "tx_return"),),
    FWD_AUTH: ((1, "tx_forward"),),
    RET_AUTH: ((1, "tx_return"),),
    "cache match (A2S_INFO)": ((1, "pass_cache"),),
    "no rule (drop)": ((0, "drop_no_rule"),),
}
# The flood row: every packet is forwarded (the rule's budget) or dropped (drop_flood).
FLOOD_COUNTED = ((2, "tx_forward"), (2, "drop_flood"))


def _counted(ms: maps.MapSet, rule: int, reason: str) -> int:
    names = [name for name, _ in maps_def.REASONS]
    key = struct.pack("=I", rule * len(names) + names.index(reason))
    return sum(maps.S["counter"].unpack(v)["packets"] for v in ms["counters"].lookup_percpu(key))


def _with_key(inner: IP) -> bytes:
    """The return path's FOU frame with the auth token: UDP and IP lengths count it."""
    return bytes(
        Ether()
        / IP(src=GS, dst=POP)
        / UDP(sport=50000, dport=5555, chksum=0)
        / (bytes(inner) + KEY)
    )


def _packed(addr: str) -> bytes:
    return ipaddress.IPv4Address(addr).packed


def against_baseline(
    report: Report, base_fd: int, base_frame: bytes, paths: dict[str, BenchPath]
) -> Pairs | None:
    """ROUNDS of each path right after the parse-only baseline (bench_baseline on
    base_frame), REPEAT repeats a run: benchstats.paired_rounds()."""

    def baseline() -> libbpf.TestRun:
        return libbpf.test_run(base_fd, base_frame, repeat=REPEAT)

    return paired_rounds(report, ROUNDS, REPEAT, baseline, "PASS", paths)


def over_loads(
    report: Report, obj_path: Path, measure: Callable[[libbpf.BpfObject], Pairs | None]
) -> Pairs | None:
    """measure() on LOADS fresh loads of obj_path, their rounds pooled; None when a
    load's rounds proved nothing (report says why)."""
    pooled: Pairs | None = None
    for _ in range(LOADS):
        with libbpf.BpfObject(obj_path) as obj:
            pairs = measure(obj)
        if pairs is None:
            return None
        if pooled is None:
            pooled = pairs
        else:
            pooled.extend(pairs)
    return pooled


def _measure(report: Report, obj: libbpf.BpfObject) -> Pairs | None:
    """One load: maps and next hops set up, then ROUNDS of every path."""
    ms = maps.MapSet.from_fds(obj.map_fds())
    ns_per_jiffy = maps.calibrate_clock(obj.prog_fd("bifrost_clock"))
    configs = {(fw, a): _config(fw, a) for fw in (False, True) for a in (False, True)}
    # Resolved next hops that never expire (ifindex 1: the loopback test runs use -> XDP_TX).
    nh = maps_def.BY_NAME["nexthop"]
    for m, key, dst in (("gs_nexthops", bytes(4), GS), ("nexthops", _packed(CLIENT), CLIENT)):
        value = nh.pack(
            smac=b"\x02" * 6, dmac=b"\x04" * 6, ifindex=1, mtu=1500, dst=dst, expires_ns=2**63
        )
        ms[m].update(key, value)
    base_fd, pipe_fd = obj.prog_fd("bench_baseline"), obj.prog_fd("bench_pipeline")
    floor_fd = obj.prog_fd("bench_encap_floor")
    rows: dict[str, tuple[int, bytes, str]] = {
        name: (pipe_fd, frame, verdict) for name, (frame, verdict) in _paths().items()
    }
    base_frame = rows["forward (encap)"][1]
    # A new source address every packet, as under a spoofed-source flood: past
    # flood_new_sources_pps a second, flood mode inserts no bucket and charges the
    # rule's budget (most of them drop_flood; the last verdict is either).
    rows[FLOOD] = (obj.prog_fd("bench_pipeline_flood"), rows["forward + firewall"][1], "DROP")
    rows[FLOOR] = (floor_fd, base_frame, "TX")
    # Encap plus the token, no lookups: what "forward + auth" cannot go below here.
    rows[AUTH_FLOOR] = (obj.prog_fd("bench_auth_floor"), base_frame, "TX")
    applied: list[tuple[bool, bool]] = []  # which config the maps hold

    def prepare(which: tuple[bool, bool]) -> None:
        if applied[-1:] != [which]:
            maps.apply(ms, configs[which], ns_per_jiffy)
            applied.append(which)

    def path(name: str, fd: int, frame: bytes, verdict: str) -> BenchPath:
        counted = FLOOD_COUNTED if name == FLOOD else COUNTED.get(name, ())
        return BenchPath(
            run=lambda: libbpf.test_run(fd, frame, repeat=REPEAT),
            verdict=None if name == FLOOD else verdict,
            counted=(lambda: sum(_counted(ms, *c) for c in counted)) if counted else None,
            prepare=lambda: prepare(CONFIG_OF.get(name, (False, False))),
        )

    return against_baseline(report, base_fd, base_frame, {n: path(n, *r) for n, r in rows.items()})


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="bench-xdp-"))
    hdr = tmp / "module_config.h"
    hdr.write_text(render_module_config(["srcds"], "bench"))
    obj_path = build.compile_bench(hdr, tmp)
    # One CPU: the two cores of these machines run at visibly different speeds
    # at times, and a pair measured on different cores gives a meaningless ratio.
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    report = Report("bench_xdp")
    pairs = over_loads(report, obj_path, lambda obj: _measure(report, obj))
    if pairs is None:
        return report.finish()
    print(
        f"XDP per-packet cost, BPF_PROG_TEST_RUN, {LOADS} loads x {ROUNDS} rounds x {REPEAT} "
        "repeats, each path right after the baseline; medians of ns and of the per-pair ratios"
    )
    print(f"{'path':<26} {'ns/pkt':>8}  x baseline (95% interval of the median)")
    print(f"{BASE:<26} {statistics.median(pairs.all_base()):>8.1f}  1")
    # The floor row: push 28 bytes + fixed headers, no lookups; the harness restores
    # the packet with a second adjust_head, which the forward paths pay too.
    for name in pairs.path:
        ratio = pairs.ratio(name)
        print(f"{name:<26} {statistics.median(pairs.path[name]):>8.1f}  {ratio}")
        if name in GOALS:
            report.goal(f"{name} / baseline", ratio.median, "<=", GOALS[name], str(ratio))
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
