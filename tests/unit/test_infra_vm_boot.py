"""The VM runner's boot watchdog: a guest that never reaches init is booted once more,
one that did is never cut short. A shell stands in for qemu: no guest boots here."""

from __future__ import annotations

from pathlib import Path

import pytest

from bifrost.vm import runner

pytestmark = pytest.mark.unit


def test_a_guest_that_never_starts_init_is_stopped_at_the_boot_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "BOOT_TIMEOUT", 0.5)
    con = runner._console(["sh", "-c", "echo early; sleep 30"], 60, False, tmp_path / "s")
    assert not con.booted and not con.timed_out
    assert con.lines == ["early"]
    assert con.seconds < 10


def test_a_guest_that_started_init_runs_past_the_boot_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "BOOT_TIMEOUT", 0.5)
    started = tmp_path / "s"
    script = f": > {started}; sleep 2; echo done"
    con = runner._console(["sh", "-c", script], 60, False, started)
    assert con.booted and not con.timed_out
    assert con.lines == ["done"] and con.seconds >= 2


def _fake_guest(monkeypatch: pytest.MonkeyPatch, boots: list[bool]) -> list[int]:
    """runner.run() with the host checks and the initramfs skipped and each qemu run
    replaced by the next of boots (True: init started); returns the runs made."""
    runs: list[int] = []

    def console(argv: list[str], timeout: float, echo: bool, started: Path) -> runner._Console:
        booted = boots[len(runs)]
        runs.append(1)
        if booted:
            Path(f"{started.with_suffix('')}.rc").write_text("0\n")
        return runner._Console([], [], booted, False, 1.0)

    monkeypatch.setattr(runner, "check_host", lambda kver: None)
    monkeypatch.setattr(runner.initramfs, "build", lambda kver, d: Path("/nonexistent"))
    monkeypatch.setattr(runner, "_console", console)
    return runs


def test_a_stuck_boot_is_retried_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(runner, "BUILD_DIR", tmp_path)
    runs = _fake_guest(monkeypatch, [False, True])
    assert runner.run("6.1.0-56-amd64", "true", echo=False).rc == 0
    assert len(runs) == 2


def test_two_stuck_boots_fail_and_say_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(runner, "BUILD_DIR", tmp_path)
    runs = _fake_guest(monkeypatch, [False, False])
    with pytest.raises(runner.GuestFailure, match="never reached init, twice"):
        runner.run("6.1.0-56-amd64", "true", echo=False)
    assert len(runs) == 2
