"""Each game module's forward path next to the parse-only baseline (BPF_PROG_TEST_RUN).

The harness is bench_xdp's (imported): its bench wrapper object (xdp/bench/), which
restores the packet after every repeat, its counters and next hops, one CPU, and each
path run right after the baseline; the ratio is the median of the per-pair ratios
pooled over several fresh loads of the object (bifrost.benchstats). Here the object
has every game module compiled in and one rule per module, and each module row
sends a validated client's game datagram (the client is in the module's
validated-clients map), which is what a module costs on the forward path of every
packet of a game in progress. Goal: each module row <= 2x the baseline; a miss, or
a run that did not move its path's counter by exactly the repeats, is a failing
exit status. FOU is authenticated (every forwarded packet carries the token), as a
rule with a module requires. The unvalidated rows (a handshake over the budget, a
malformed packet) are for reference: what a spoofed flood costs.
"""

from __future__ import annotations

import ipaddress
import os
import statistics
import struct
import sys
import tempfile
from pathlib import Path

from bench_xdp import (
    BASE,
    CLIENT,
    GS,
    LOADS,
    POP,
    REPEAT,
    ROUNDS,
    VIP,
    _counted,
    _packed,
    against_baseline,
    over_loads,
)
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from bifrost.benchstats import BenchPath, Pairs, Ratio, Report
from bifrost.codegen import render_module_config
from bifrost.xdp import build, libbpf, maps, maps_def
from bifrost.xdp.config import Rule, XdpConfig

WHERE = "host"
GOAL_MODULE = 2.0
MODULES = ("srcds", "rust", "steam", "ue3")
CLIENT_PORT = 40000
AUTH_KEY = bytes.fromhex("0123456789abcdef")
# name -> (rule id, port, modules); ids follow names and this is the first config.
RULES = {
    "none": (1, 27015, ()),
    "srcds": (2, 27016, ("srcds",)),
    "rust": (3, 28015, ("rust",)),
    "steam": (4, 27017, ("steam",)),
    "ue3": (5, 7777, ("ue3",)),
}
# 60-byte game datagrams (102-byte frames, as bench_xdp): what each game sends once
# connected. RakNet connected datagram (0x80 set), Steam data (0x80 flags, connection
# id, seq), UE data (handshake bit 0, termination bit in a non-zero last byte), SRCDS
# netchannel (no FF FF FF FF).
DATA = {
    "none": bytes(60),
    "srcds": b"\x01\x02" + bytes(58),
    "rust": b"\x84" + bytes(58) + b"\x01",
    "steam": b"\x80\x88\x77\x66\x55\x01\x00" + bytes(53),
    "ue3": b"\x02" + bytes(58) + b"\x01",
}


def _config() -> XdpConfig:
    a = ipaddress.IPv4Address
    return XdpConfig(
        modules=MODULES,
        pop_address=a(POP),
        auth_keys=(AUTH_KEY,),  # as in production: a module needs authenticated FOU
        rules=tuple(
            Rule(rid, name, a(VIP), ((port, port),), "udp", a(GS), 5555, False, mods, 0, 0)
            for name, (rid, port, mods) in RULES.items()
        ),
    )


def _frame(port: int, payload: bytes, src: str = CLIENT) -> bytes:
    return bytes(Ether() / IP(src=src, dst=VIP) / UDP(sport=CLIENT_PORT, dport=port) / payload)


def _validate(ms: maps.MapSet, name: str, port: int) -> None:
    """The client as the return path leaves it after the server's proof (never expiring)."""
    idx = maps_def.game_set_index(_packed(CLIENT), CLIENT_PORT, _packed(VIP), port)
    st = maps_def.BY_NAME["game_client_set"]
    u32 = lambda addr: int.from_bytes(_packed(addr), "little")  # noqa: E731
    ways = maps_def.GAME_CLIENT_WAYS
    value = st.pack(
        lock=0,
        flags=0,
        client=[u32(CLIENT)] + [0] * (ways - 1),
        service=[u32(VIP)] + [0] * (ways - 1),
        ports=[maps_def.game_ports(CLIENT_PORT, port)] + [0] * (ways - 1),
        state=[2**63, 0, 0] + [0] * (3 * (ways - 1)),  # expires_ns, a full bucket
    )
    ms["game_clients"].update(struct.pack("=I", idx), value)


# (frame, verdict, counters that together move by the repeats, goal?) of a path.
Row = tuple[bytes, str, tuple[tuple[int, str], ...], bool]


def _rows() -> dict[str, Row]:
    rows: dict[str, Row] = {}
    for name, (rid, port, _) in RULES.items():
        label = "no module" if name == "none" else f"{name}, validated client"
        rows[label] = (_frame(port, DATA[name]), "TX", ((rid, "tx_forward"),), name != "none")
    # Reference rows: a Steam ChallengeRequest over the budget (spent before the
    # rounds; what refills between rounds, ~1 per ms, is forwarded) and a malformed
    # RakNet packet, from clients never validated: what a spoofed flood costs.
    steam_rid, steam_port, _ = RULES["steam"]
    challenge = b"\x20\x0b\x00\x0d\x44\x33\x22\x11" + bytes(504)
    rows["steam handshake over budget"] = (
        _frame(steam_port, challenge, src="192.0.2.60"),
        "DROP",
        ((steam_rid, "drop_module"), (steam_rid, "tx_forward")),
        False,
    )
    rust_rid, rust_port, _ = RULES["rust"]
    rows["rust malformed (drop)"] = (
        _frame(rust_port, b"\x13" + bytes(59), src="192.0.2.61"),  # no such offline id
        "DROP",
        ((rust_rid, "drop_module"),),
        False,
    )
    return rows


def _measure(report: Report, obj: libbpf.BpfObject, rows: dict[str, Row]) -> Pairs | None:
    """One load: config, next hops and validated clients set up, the Steam rule's
    handshake budget spent, then ROUNDS of every row."""
    ms = maps.MapSet.from_fds(obj.map_fds())
    maps.apply(ms, _config(), maps.calibrate_clock(obj.prog_fd("bifrost_clock")))
    nh = maps_def.BY_NAME["nexthop"]
    for m, key, dst in (("gs_nexthops", bytes(4), GS), ("nexthops", _packed(CLIENT), CLIENT)):
        value = nh.pack(
            smac=b"\x02" * 6, dmac=b"\x04" * 6, ifindex=1, mtu=1500, dst=dst, expires_ns=2**63
        )
        ms[m].update(key, value)
    for name, (_, port, _) in RULES.items():
        if name != "none":
            _validate(ms, name, port)
    base_fd, pipe_fd = obj.prog_fd("bench_baseline"), obj.prog_fd("bench_pipeline")
    libbpf.test_run(pipe_fd, rows["steam handshake over budget"][0], 4096)

    def path(frame: bytes, verdict: str, counted: tuple[tuple[int, str], ...]) -> BenchPath:
        return BenchPath(
            run=lambda: libbpf.test_run(pipe_fd, frame, repeat=REPEAT),
            verdict=verdict,
            counted=lambda: sum(_counted(ms, *c) for c in counted),
        )

    return against_baseline(
        report, base_fd, rows["no module"][0], {n: path(*r[:3]) for n, r in rows.items()}
    )


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="bench-xdp-modules-"))
    hdr = tmp / "module_config.h"
    hdr.write_text(render_module_config(list(MODULES), "bench"))
    obj_path = build.compile_bench(hdr, tmp)
    rows = _rows()
    # One CPU, as bench_xdp.
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    report = Report("bench_xdp_modules")
    pairs = over_loads(report, obj_path, lambda obj: _measure(report, obj, rows))
    if pairs is None:
        return report.finish()
    print(
        f"XDP game modules, BPF_PROG_TEST_RUN, {LOADS} loads x {ROUNDS} rounds x {REPEAT} "
        "repeats, each path right after the baseline; medians of ns and of the per-pair ratios"
    )
    print(f"{'path':<30} {'ns/pkt':>8}  x baseline (95% interval of the median); x no module")
    print(f"{BASE:<30} {statistics.median(pairs.all_base()):>8.1f}  1")
    for name, (_, _, _, goal) in rows.items():
        ratio = pairs.ratio(name)
        # What the module adds: against the no-module row of the same round.
        own = Ratio.of(pairs.path[name], pairs.path["no module"]).median
        print(f"{name:<30} {statistics.median(pairs.path[name]):>8.1f}  {ratio}; {own:.3f}")
        if goal:
            report.goal(f"{name} / baseline", ratio.median, "<=", GOAL_MODULE, str(ratio))
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
