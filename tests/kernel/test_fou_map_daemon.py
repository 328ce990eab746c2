"""bifrost-foumapd against the real module: notify, config, snapshot, kill/restart, reload."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import foumap_topology as topo
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bifrost.fou_map.control import TableConfig

pytestmark = pytest.mark.kernel

METRICS_PORT = 9469


@pytest.fixture(scope="module", autouse=True)
def module():
    with topo.module_for_tests():
        yield


class Foumapd:
    """The daemon in the game server's netns, with a notify socket like systemd's."""

    def __init__(self, t: topo.Topology, tmp: Path) -> None:
        self.t = t
        self.config = tmp / "bifrost.toml"
        self.state = tmp / "fou_map.snapshot"
        self.config.write_text(
            f"""
[fou_map]
ports = [{topo.FOU_PORT}]
pops = ["{topo.POP_NET}"]
idle_timeout = 60
max_entries = 1000
snapshot_interval = 0.3
metrics_port = {METRICS_PORT}

[[fou_map.static]]
client = "10.99.0.99"
pop = "{topo.pop_ip(2)}"
"""
        )
        self.notify_path = tmp / "notify"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.notify_path.unlink(missing_ok=True)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(self.notify_path))
        notify.settimeout(180)  # imports over 9p under TCG are slow
        argv = [
            "env",
            f"NOTIFY_SOCKET={self.notify_path}",
            sys.executable,
            "-m",
            "bifrost.fou_map.daemon",
            "--config",
            str(self.config),
            "--state",
            str(self.state),
        ]
        self.proc = self.t.gs.popen(argv)
        try:
            assert notify.recv(100) == b"READY=1"
        finally:
            notify.close()

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=30)
        self.proc = None
        return rc

    def stop(self) -> None:
        if self.proc is not None:
            self.kill(signal.SIGTERM)


@pytest.fixture(scope="module")
def shared():
    with topo.build() as t:
        yield t


@pytest.fixture
def setup(shared, tmp_path):
    """The shared testbed with an empty, unconfigured table and a fresh daemon."""
    with shared.fou_map() as fm:
        fm.configure(TableConfig())
        fm.flush(static=True)
    shared.use_pop(1)
    d = Foumapd(shared, tmp_path)
    try:
        yield shared, d
    finally:
        d.stop()


def learn_two(t: topo.Topology) -> dict[str, str]:
    assert t.echo_once(t.client_socket(0))
    t.use_pop(2)
    assert t.echo_once(t.client_socket(1))
    want = {
        topo.client_ip(0): topo.pop_ip(1),
        topo.client_ip(1): topo.pop_ip(2),
        "10.99.0.99": topo.pop_ip(2),
    }
    with t.fou_map() as fm:
        assert fm.table() == want
    return want


def snapshot_has(d: Foumapd, want: dict[str, str]) -> bool:
    try:
        snap = json.loads(d.state.read_text())
    except (OSError, ValueError):
        return False
    return {e["client"]: e["pop"] for e in snap["entries"]} == want


def test_applies_config_and_serves_metrics(setup):
    t, d = setup
    d.start()
    with t.fou_map() as fm:
        cfg = fm.config()
        assert cfg.ports == (topo.FOU_PORT,) and cfg.max_entries == 1000
        assert cfg.idle_timeout_ms == 60_000
    learn_two(t)
    with t.gs.entered():
        body = urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10)
        text = body.read().decode()
    values = {
        s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
    }  # prometheus-client writes 2.0 for 2: compare parsed values
    assert values["bifrost_fou_map_learned_total"] == 2
    assert values["bifrost_fou_map_entries"] == 3
    want = _table(t)
    # A periodic snapshot may or may not exist yet; only the final one may remain.
    d.state.unlink(missing_ok=True)
    assert d.kill(signal.SIGTERM) == 0
    assert snapshot_has(d, want), "SIGTERM wrote a final snapshot"


def _table(t: topo.Topology) -> dict[str, str]:
    with t.fou_map() as fm:
        return fm.table()


def test_kill_and_restart_lose_no_mapping(setup):
    t, d = setup
    d.start()
    want = learn_two(t)
    assert topo.wait_for(lambda: snapshot_has(d, want), timeout=10)
    d.kill(signal.SIGKILL)
    d.start()
    assert _table(t) == want
    assert t.echo_once(t.client_socket(1))
    assert _table(t) == want


def test_module_reload_with_daemon_running_loses_no_mapping(setup):
    t, d = setup
    d.start()
    want = learn_two(t)
    assert topo.wait_for(lambda: snapshot_has(d, want), timeout=10)
    created = None
    with t.fou_map() as fm:
        created = fm.stats().created_ns
    # The daemon holds the device only during a cycle: retry rmmod around it.
    for _ in range(50):
        if subprocess.run(["rmmod", topo.MODULE], capture_output=True).returncode == 0:
            break
        time.sleep(0.05)
    assert not topo.loaded()
    topo.load()

    def restored() -> bool:
        with t.fou_map() as fm:
            return fm.stats().created_ns != created and fm.table() == want

    assert topo.wait_for(restored, timeout=15)
    with t.fou_map() as fm:
        assert fm.config().ports == (topo.FOU_PORT,)
        entries = {str(e.client): e for e in fm.dump()}
    assert entries["10.99.0.99"].static and not entries[topo.client_ip(0)].static
    # Replies still follow each client's POP after the reload.
    rx1 = t.pop_rx(1)
    t.echo.sock.sendto(b"push", (topo.client_ip(0), 4000))
    assert topo.wait_for(lambda: t.pop_rx(1) == rx1 + 1)
