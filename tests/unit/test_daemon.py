"""The daemon base: start-up errors, refusals that end the daemon, metrics via prometheus-client."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bifrost.bifrost_nf.daemon import CacheDaemon
from bifrost.daemon import MetricsServer, counters, gauges, labelled_counter
from bifrost.fou_map.daemon import FouMapDaemon

pytestmark = pytest.mark.unit


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_families_and_a_failing_source_in_one_scrape() -> None:
    server = MetricsServer("127.0.0.1", 0)
    server.add("mod", lambda: [*counters("bifrost_x", {"learned": 5}, "x"),
                               *gauges("bifrost_x", {"entries": 3}, "x")])  # fmt: skip
    server.add(
        "xdp",
        lambda: [
            labelled_counter(
                "bifrost_xdp_packets", "by rule and reason", ("rule", "reason"),
                [(("cs2", "tx_forward"), 7), (("cs2", "drop_blocked"), 1)],
            )
        ],
    )  # fmt: skip

    def gone() -> list:
        raise FileNotFoundError(2, "/dev/fou_map does not exist")

    server.add("gone", gone)
    got = _samples(generate_latest(server.registry).decode())
    assert got[("bifrost_x_learned_total", ())] == 5
    assert got[("bifrost_x_entries", ())] == 3
    assert got[("bifrost_xdp_packets_total", (("reason", "tx_forward"), ("rule", "cs2")))] == 7
    assert got[("bifrost_xdp_packets_total", (("reason", "drop_blocked"), ("rule", "cs2")))] == 1
    up = {dict(k[1])["source"]: v for k, v in got.items() if k[0] == "bifrost_metrics_source_up"}
    assert up == {"mod": 1, "xdp": 1, "gone": 0}


def test_listener_serves_and_closes() -> None:
    port = _free_port()
    server = MetricsServer("127.0.0.1", port)
    server.add("mod", lambda: counters("bifrost_y", {"events": 2}, "y"))
    server.start()
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        body = urllib.request.urlopen(url, timeout=10).read().decode()
        assert _samples(body)[("bifrost_y_events_total", ())] == 2
    finally:
        server.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_port_zero_serves_nothing() -> None:
    server = MetricsServer("127.0.0.1", 0)
    server.start()
    assert server._httpd is None
    server.close()


@pytest.mark.parametrize("daemon", [CacheDaemon, FouMapDaemon], ids=lambda d: d.PROG)
def test_missing_config_file_exits_2_naming_it(
    daemon: type, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.toml"
    assert daemon.main(["-c", str(missing)]) == 2
    assert f"{daemon.PROG}: {missing}: config file does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("daemon", [CacheDaemon, FouMapDaemon], ids=lambda d: d.PROG)
def test_missing_section_and_bad_value_exit_2(
    daemon: type, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "b.toml"
    cfg.write_text("[xdp]\nmodules = []\n")
    assert daemon.main(["-c", str(cfg)]) == 2
    assert f"{cfg}: no [{daemon.SECTION}] section" in capsys.readouterr().err
    cfg.write_text(f"[{daemon.SECTION}]\nmetrics_port = 70000\n")
    assert daemon.main(["-c", str(cfg)]) == 2
    assert f"{daemon.SECTION}.metrics_port = 70000: must be <= 65535" in capsys.readouterr().err


def test_cached_without_its_device_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "b.toml"
    cfg.write_text(f'[cache]\ndevice = "{tmp_path}/bifrost_nf"\nmetrics_port = 0\n')
    assert CacheDaemon.main(["-c", str(cfg)]) == 1
    assert f"{tmp_path}/bifrost_nf does not exist: is the module loaded?" in (
        capsys.readouterr().err
    )


def test_foumapd_ends_on_a_refused_record(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A write the device refuses is not retried forever: the daemon exits 2, naming what.

    /dev/full refuses every write (ENOSPC) as fou_map refuses a static entry it has no
    room for; a missing device, by contrast, is waited for.
    """
    cfg = tmp_path / "b.toml"
    cfg.write_text('[fou_map]\ndevice = "/dev/full"\nmetrics_port = 0\n')
    state = tmp_path / "snap"
    assert FouMapDaemon.main(["-c", str(cfg), "--state", str(state)]) == 2
    # The auth keys are the first record (then no packet is accepted unauthenticated).
    assert "[auth] keys (0)" in caplog.text
    assert "No space left on device" in caplog.text
    assert not state.exists(), "nothing was applied, so nothing was snapshot"


def test_base_start_up_signals_notify_and_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through Daemon.main: READY=1 once serving (metrics up), SIGTERM sets stop, STOPPING=1."""
    import os
    import signal

    from bifrost.daemon import Daemon

    port = _free_port()
    seen: dict[str, object] = {}

    class Probe(Daemon):  # the [fou_map] section stands in for any daemon's
        PROG = "bifrost-probe"
        SECTION = "fou_map"

        def run(self) -> int:
            self.metrics.add("probe", lambda: counters("bifrost_probe", {"runs": 1}, "probe"))
            self.ready()
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10)
            seen["metrics"] = _samples(body.read().decode())
            os.kill(os.getpid(), signal.SIGTERM)
            seen["stopped"] = self.stop.wait(10)
            self.stopping()
            return 0

    cfg = tmp_path / "b.toml"
    cfg.write_text(f"[fou_map]\nmetrics_port = {port}\n")
    notify = tmp_path / "notify"
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(notify))
        s.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(notify))
        try:
            assert Probe.main(["-c", str(cfg)]) == 0
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)
        assert s.recv(100) == b"READY=1"
        assert s.recv(100) == b"STOPPING=1"
    assert seen["stopped"] is True, "SIGTERM did not set stop"
    assert seen["metrics"][("bifrost_probe_runs_total", ())] == 1
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
