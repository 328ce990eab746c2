"""The Bifrost lab, run inside the test guest by `invoke lab` (python -m bifrost_testing.lab).

It brings the whole system up on the test network (bifrost_testing.topology:
a client, two POPs, a game-server machine whose game service runs in its own
netns; bifrost_testing.system: each host run from its own bifrost.toml), plays
the client's session (bifrost_testing.scenario: A2S from the cache, game
traffic through pop1, an SRCDS, a Steam-networking and a RakNet client each
validated by its handshake through pop1, then the route moving to pop2 while
the client keeps playing) and prints, per phase, the counters each hop moved
and an "ok" line per measured fact. It exits non-zero when any phase's
counters are not what that phase must produce. With --json PATH it writes the
phases (counters, what the client got, facts, problems) there too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
import traceback
from pathlib import Path

from bifrost_testing import scenario, system


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bifrost_testing.lab", description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="write the phases' counters here")
    ap.add_argument(
        "--obj",
        type=Path,
        default=system.LAB_OBJECT,
        help=f"XDP object, built when missing (default {system.LAB_OBJECT})",
    )
    args = ap.parse_args(argv)
    if os.environ.get("BIFROST_GUEST") != "1" and not os.path.exists("/proc/modules"):
        print("the lab runs in the test guest: sudo .venv/bin/invoke lab")
        return 2
    print("=== Bifrost lab ===", flush=True)
    start = time.monotonic()
    if not args.obj.exists():
        print(f"building {args.obj} (invoke lab builds it on the host first)", flush=True)
        system.build_object(args.obj)
    work = Path(tempfile.mkdtemp(prefix="bifrost-lab-"))
    phases: list[scenario.Phase] = []
    try:
        with system.running(work, args.obj, prefix="lab") as sysm:
            print(sysm.nw.describe(), flush=True)
            print(f"host configs: {', '.join(sorted(p.name for p in work.glob('*.toml')))}")
            ready = ", ".join(f"{n} ({s.ready_after:.0f}s)" for n, s in sysm.services.items()
                              if s.ready_after is not None)  # fmt: skip
            print(f"  in {work}; services ready: {ready}", flush=True)
            print(f"up in {time.monotonic() - start:.0f}s; the client's session:", flush=True)
            phases = scenario.run(sysm)
    except Exception:
        traceback.print_exc()
        print("lab FAILED: the system did not come up or the session broke off (above)")
        for log in sorted(work.glob("*.log")):
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}")
        return 1
    print("\n=== per hop ===")
    print(scenario.hop_table(phases))
    print()
    for p in phases:
        if not p.problems:
            for fact in p.facts:
                print(f"ok {p.name.split(' ')[0]} {fact}")
    if args.json:
        args.json.write_text(json.dumps([p.as_dict() for p in phases], indent=1))
    problems = [f"{p.name}: {what}" for p in phases for what in p.problems]
    for what in problems:
        print(f"FAIL {what}")
    dmesg = subprocess.run(["dmesg"], capture_output=True, text=True, check=False).stdout
    tail = [ln for ln in dmesg.splitlines() if "bifrost_nf" in ln or "fou_map" in ln][-4:]
    if tail:
        print("dmesg (modules):\n  " + "\n  ".join(tail))
    took = time.monotonic() - start
    if problems:
        print(f"lab FAILED: {len(problems)} expectation(s) not met ({took:.0f}s)")
        return 1
    print(f"lab OK: {len(phases)} phases, every hop counted what it must ({took:.0f}s)")
    return 0
