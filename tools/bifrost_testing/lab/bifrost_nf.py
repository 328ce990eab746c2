"""The cache's lab step: refserver on the game server, bifrost-cached on pop1,
python-a2s on the client; the answers come from bifrost_nf (counters prove it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bifrost.bifrost_nf.cli import format_services
from bifrost.bifrost_nf.nf import CacheDevice
from bifrost_testing import refserver


def _wait(pred: Any, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")


def _stop(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def run(topo: Any) -> str:
    """Start refserver + bifrost-cached, query through pop1 with python-a2s, check counters."""
    import a2s as pya2s

    work = Path(f"/tmp/bifrost-cache-lab-{os.getpid()}")
    work.mkdir(parents=True, exist_ok=True)
    ctl = work / "refserver.sock"
    svc = (str(topo.service_ip), topo.service_port)
    conf = work / "bifrost.toml"
    conf.write_text(
        "[cache]\nrefresh_s = 2.0\nmax_stale_s = 10.0\nmetrics_port = 9117\n"
        f'[[cache.service]]\naddress = "{svc[0]}"\nport = {svc[1]}\n'
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(
            topo.gameserver.popen(
                [
                    sys.executable,
                    "-m",
                    "bifrost_testing.refserver",
                    "--bind",
                    f"{svc[0]}:{svc[1]}",
                    "--control",
                    str(ctl),
                    "--map",
                    "de_lab",
                ],
            )
        )
        _wait(ctl.exists, 60, "refserver")
        print(f"  refserver on gameserver {svc[0]}:{svc[1]} (map de_lab)", flush=True)
        procs.append(
            topo.pop1.popen(
                [sys.executable, "-m", "bifrost.bifrost_nf.daemon", "-c", str(conf), "-v"],
            )
        )

        def cached() -> bool:
            with topo.pop1.entered(), CacheDevice() as dev:
                return any(len(s.answers) == 3 for s in dev.dump())

        _wait(cached, 60, "bifrost-cached to fill the cache")
        with topo.pop1.entered(), CacheDevice() as dev:
            before = dev.counters()
            print(
                "  bifrost cache show (pop1):\n    "
                + format_services(dev.dump()).replace("\n", "\n    "),
                flush=True,
            )
        with topo.client.entered():
            info = pya2s.info(svc, timeout=3)
            players = pya2s.players(svc, timeout=3)
            rules = pya2s.rules(svc, timeout=3)
        with topo.pop1.entered(), CacheDevice() as dev:
            after = dev.counters()
        stats = refserver.control(ctl, "stats")
        delta = {k: after[k] - before[k] for k in ("answers", "answer_packets", "challenges_sent")}
        client_ip = str(topo.client_pop1_ip)
        print(
            f"  python-a2s from client: map={info.map_name} players={len(players)} "
            f"rules={len(rules)}",
            flush=True,
        )
        print(f"  pop1 bifrost_nf counters: {delta}", flush=True)
        print(f"  game server saw queries from: {stats['queries']}", flush=True)
        if info.map_name != "de_lab" or delta["answers"] != 3:
            raise RuntimeError(f"answers did not come from the kernel cache: {delta}")
        if client_ip in stats["queries"]:
            raise RuntimeError(f"the game server saw the client's queries: {stats['queries']}")
        return (
            f"A2S info/players/rules answered by bifrost_nf on pop1 "
            f"({delta['answers']} answers, {delta['answer_packets']} packets, "
            f"{delta['challenges_sent']} challenges); game server saw 0 client queries"
        )
    finally:
        for p in reversed(procs):
            _stop(p)
        ctl.unlink(missing_ok=True)
