"""The daemons around a kernel module reload on a fleet host, so that the reload loses
nothing they keep (tests/kernel/test_fleet_module_reload.py runs it for real).

- bifrost_nf (POP): bifrost-cached holds /dev/bifrost_nf for its whole life, so no
  rmmod can happen while it runs. Under systemd its unit is stopped before the unload
  and started after the load; at start it puts the services back and fetches every
  answer from the game servers again (the cache is refilled, as after a boot).
  Without systemd (or with the unit inactive) nothing is stopped: a process that
  still holds the device makes the unload fail with rmmod's reason.
- fou_map (game server): bifrost-foumapd opens /dev/fou_map only during a cycle and
  notices a reload by itself (the state's creation time changes), then puts its
  config and the last snapshot back. So it keeps running; the agent only sequences
  around it: before the unload it waits for a snapshot taken after the request
  (what the daemon writes at the end of a cycle, with the device closed again: the
  mappings learned up to then are saved), and after the load for a snapshot of the
  new module instance (taken after the daemon re-applied it). A daemon that is not
  running (no snapshot in the last two intervals) is not waited for: it restores
  its last snapshot when it starts.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bifrost import config as hostconfig
from bifrost.fleet.kmod import Holders, KmodError
from bifrost.fou_map.daemon import read_snapshot

CACHED_UNIT = "bifrost-cached.service"
SLACK_S = 5.0  # over the daemon's own interval: a loaded machine is slow


def for_module(module: str, cfg: hostconfig.Config | None) -> Holders:
    if module == "bifrost_nf":
        return _cached_unit()
    if module == "fou_map" and cfg is not None and cfg.fou_map is not None:
        return _foumapd(cfg.fou_map.state_file, cfg.fou_map.snapshot_interval)
    return Holders()


def _systemd() -> bool:
    return Path("/run/systemd/system").is_dir()


def _systemctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemctl", *args], capture_output=True, text=True, check=False, timeout=120
    )


def _cached_unit() -> Holders:
    stopped: list[str] = []

    def before() -> list[str]:
        if not _systemd() or _systemctl("is-active", CACHED_UNIT).stdout.strip() != "active":
            return []
        done = _systemctl("stop", CACHED_UNIT)
        if done.returncode != 0:
            raise KmodError(f"systemctl stop {CACHED_UNIT} failed: {done.stderr.strip()}")
        stopped.append(CACHED_UNIT)
        return [f"stopped {CACHED_UNIT} (it holds /dev/bifrost_nf)"]

    def after() -> list[str]:
        lines = []
        for unit in stopped:
            done = _systemctl("start", unit)  # Type=notify: back once it has refilled
            if done.returncode != 0:
                raise KmodError(f"systemctl start {unit} failed: {done.stderr.strip()}")
            lines.append(f"started {unit} again")
        return lines

    return Holders(before, after)


def _foumapd(state: Path, interval: float) -> Holders:
    created: list[object] = []  # the module instance the daemon last saved

    def before() -> list[str]:
        snap = read_snapshot(state)
        if snap is None or time.time() - float(snap.get("taken", 0)) > 2 * interval + SLACK_S:
            return [f"bifrost-foumapd not running (no recent {state}): not waited for"]
        asked = time.time()
        fresh = _wait_snapshot(state, lambda s: float(s.get("taken", 0)) > asked, interval)
        if fresh is None:
            raise KmodError(f"bifrost-foumapd wrote no snapshot to {state}: not unloading")
        created.append(fresh.get("created_ns"))
        return [f"bifrost-foumapd saved {len(fresh.get('entries', []))} mappings"]

    def after() -> list[str]:
        if not created:
            return []
        snap = _wait_snapshot(state, lambda s: s.get("created_ns") != created[0], interval)
        if snap is None:
            raise KmodError("bifrost-foumapd did not re-apply its mappings to the new module")
        return [f"bifrost-foumapd restored its mappings ({len(snap.get('entries', []))})"]

    return Holders(before, after)


def _wait_snapshot(
    state: Path, ok: Callable[[dict[str, Any]], bool], interval: float
) -> dict[str, Any] | None:
    deadline = time.monotonic() + 2 * interval + SLACK_S
    while time.monotonic() < deadline:
        snap = read_snapshot(state)
        if snap is not None and ok(snap):
            return snap
        time.sleep(min(0.05, interval / 4))
    return None
