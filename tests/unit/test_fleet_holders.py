"""The agent's sequencing around a fou_map reload, against snapshots as bifrost-foumapd
writes them (its own write_snapshot, from a thread playing the daemon's cycle): the
unload waits for a snapshot taken after the request, the load for one of the new
module instance. The real reload: tests/kernel/test_fleet_module_reload.py."""

from __future__ import annotations

import json
import threading
import time
import tomllib
from pathlib import Path

import pytest

from bifrost import config
from bifrost.fleet import holders
from bifrost.fleet.kmod import KmodError
from bifrost.fou_map.daemon import write_snapshot

pytestmark = pytest.mark.unit
INTERVAL = 0.1


def gameserver(tmp: Path) -> config.Config:
    text = f'[fou_map]\nstate_file = "{tmp / "snap"}"\nsnapshot_interval = {INTERVAL}\n'
    return config.parse(tomllib.loads(text))


class Daemon:
    """Writes a snapshot of module instance `created` every INTERVAL until stopped."""

    def __init__(self, state: Path) -> None:
        self.state, self.created, self.stop = state, 1, threading.Event()
        self.thread = threading.Thread(target=self.run)

    def run(self) -> None:
        while not self.stop.wait(INTERVAL):
            write_snapshot(self.state, [], self.created)

    def __enter__(self) -> Daemon:
        write_snapshot(self.state, [], self.created)
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join()


def test_waits_for_a_fresh_snapshot_then_for_the_new_instance(tmp_path: Path) -> None:
    h = holders.for_module("fou_map", gameserver(tmp_path))
    with Daemon(tmp_path / "snap") as d:
        asked = time.time()
        assert h.before_unload() == ["bifrost-foumapd saved 0 mappings"]
        assert json.loads((tmp_path / "snap").read_text())["taken"] > asked
        d.created = 2  # the daemon re-applied its table to the new module
        assert h.after_load() == ["bifrost-foumapd restored its mappings (0)"]


def test_a_daemon_that_does_not_reapply_fails_the_reload(tmp_path: Path) -> None:
    h = holders.for_module("fou_map", gameserver(tmp_path))
    with Daemon(tmp_path / "snap"):
        h.before_unload()
        with pytest.raises(KmodError, match="did not re-apply its mappings"):
            h.after_load()  # created_ns never changes


def test_a_stopped_daemon_is_not_waited_for(tmp_path: Path) -> None:
    h = holders.for_module("fou_map", gameserver(tmp_path))
    line = f"bifrost-foumapd not running (no recent {tmp_path / 'snap'}): not waited for"
    assert h.before_unload() == [line]  # no snapshot at all
    assert h.after_load() == []
    # A snapshot a minute old: the daemon stopped since.
    snap = {"version": 1, "taken": time.time() - 60, "created_ns": 1, "entries": []}
    (tmp_path / "snap").write_text(json.dumps(snap))
    assert h.before_unload() == [line]
