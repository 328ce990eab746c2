"""`invoke status` degrades to sentences where the host lacks modules or systemd.

Each probe is driven down each of its branches by replacing what it asks the
host (a path's existence, which tools are on PATH, python-kmod, pyudev,
systemctl), so every test checks one exact outcome whatever host runs it.
"""

from __future__ import annotations

import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path

import pytest
import pyudev

from bifrost import status
from bifrost.install import UNITS
from bifrost.paths import MODULES

pytestmark = pytest.mark.unit


def _paths(monkeypatch: pytest.MonkeyPatch, present: set[str]) -> None:
    """status.Path answers exists()/is_dir() from `present` for absolute system paths."""

    class FakePath(type(Path())):  # type: ignore[misc]
        def exists(self, **kw: object) -> bool:
            return str(self) in present

        def is_dir(self, **kw: object) -> bool:
            return str(self) in present

    monkeypatch.setattr(status, "Path", FakePath)


def _probed(probe: Callable[[status.Status], None]) -> status.Status:
    """What one probe of `invoke status` finds."""
    st = status.Status()
    probe(st)
    return st


def _kmod(monkeypatch: pytest.MonkeyPatch, loaded: list[str] | Exception) -> None:
    def kmod_loaded() -> list[types.SimpleNamespace]:
        if isinstance(loaded, Exception):
            raise loaded
        return [types.SimpleNamespace(name=n) for n in loaded]

    fake = types.SimpleNamespace(Kmod=lambda: types.SimpleNamespace(loaded=kmod_loaded))
    monkeypatch.setitem(sys.modules, "kmod", fake)


@pytest.mark.parametrize(
    "present,kmod_answer,note",
    [
        (set(), None, "no loadable modules on this kernel (no /proc/modules)"),
        (
            {"/proc/modules"},
            OSError("libkmod: no context"),
            "cannot list loaded modules: libkmod: no context",
        ),
    ],
    ids=["without proc modules", "kmod error"],
)
def test_loaded_modules_unknown_is_a_note(
    monkeypatch: pytest.MonkeyPatch, present: set[str], kmod_answer: Exception | None, note: str
) -> None:
    _paths(monkeypatch, present)
    if kmod_answer is not None:
        _kmod(monkeypatch, kmod_answer)
    st = _probed(status.loaded_modules)
    assert st.loaded_note == note
    assert st.loaded == {}


def test_loaded_modules_names_each_module(monkeypatch: pytest.MonkeyPatch) -> None:
    _paths(monkeypatch, {"/proc/modules"})
    _kmod(monkeypatch, ["veth", "fou_map"])
    st = _probed(status.loaded_modules)
    assert st.loaded_note == ""
    assert st.loaded == {"bifrost_nf": "not loaded", "fou_map": "loaded"}
    assert set(st.loaded) == set(MODULES)


@pytest.mark.parametrize(
    "systemctl,present,note",
    [
        # Booted with systemd but no systemctl on PATH: still "not found".
        (False, {"/run/systemd/system"}, "systemctl not found (no systemd)"),
        (True, set(), "systemd is not running on this machine (not booted with it)"),
    ],
    ids=["without systemctl", "systemd not booted"],
)
def test_daemon_states_unknown_is_a_note(
    monkeypatch: pytest.MonkeyPatch, systemctl: bool, present: set[str], note: str
) -> None:
    monkeypatch.setattr(
        status.shutil, "which", lambda name: f"/usr/bin/{name}" if systemctl else None
    )
    _paths(monkeypatch, present)
    st = _probed(status.daemon_states)
    assert st.daemons_note == note
    assert st.daemons == {}


def test_daemon_states_ask_systemctl_per_unit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(status.shutil, "which", lambda name: f"/usr/bin/{name}")
    _paths(monkeypatch, {"/run/systemd/system"})
    asked: list[list[str]] = []

    def systemctl(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        asked.append(argv)
        state = "active" if argv[-1] == "bifrost-cached.service" else ""
        return subprocess.CompletedProcess(argv, 3, state, "" if state else "inactive\n")

    monkeypatch.setattr(status.subprocess, "run", systemctl)
    st = _probed(status.daemon_states)
    assert st.daemons_note == ""
    assert asked == [["systemctl", "is-active", u] for u in UNITS]
    assert st.daemons["bifrost-cached.service"] == "active"
    assert {u: s for u, s in st.daemons.items() if u != "bifrost-cached.service"} == {
        u: "inactive" for u in UNITS if u != "bifrost-cached.service"
    }


def test_device_nodes_absent_without_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    def from_name(ctx: object, subsystem: str, name: str) -> None:
        assert subsystem == "misc"
        raise pyudev.DeviceNotFoundByNameError(subsystem, name)

    monkeypatch.setattr(pyudev.Devices, "from_name", from_name)
    st = _probed(status.device_nodes)
    assert st.devices_note == ""
    assert st.devices == {f"/dev/{m}": "absent (module not loaded)" for m in MODULES}


def test_device_nodes_present_and_registered_without_node(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    node = tmp_path / "fou_map"
    node.write_text("")
    node.chmod(0o600)

    def from_name(ctx: object, subsystem: str, name: str) -> types.SimpleNamespace:
        path = str(node) if name == "fou_map" else str(tmp_path / "missing")
        return types.SimpleNamespace(device_node=path, sys_path=f"/sys/class/misc/{name}")

    monkeypatch.setattr(pyudev.Devices, "from_name", from_name)
    st = _probed(status.device_nodes)
    assert st.devices_note == ""
    assert st.devices == {
        "/dev/bifrost_nf": "registered (/sys/class/misc/bifrost_nf) but no node in /dev",
        "/dev/fou_map": f"present /sys/class/misc/fou_map mode 0600 uid {node.stat().st_uid}",
    }


def test_render_shows_every_section() -> None:
    st = status.Status(
        dkms={"fou_map": {"6.1.0-56-amd64": "installed"}},
        loaded_note="no loadable modules on this kernel (no /proc/modules)",
        devices={"/dev/fou_map": "absent (module not loaded)"},
        daemons={"bifrost-cached.service": "inactive"},
    )
    assert status.render(st).splitlines() == [
        "DKMS:",
        "  fou_map     6.1.0-56-amd64           installed",
        "Loaded modules:",
        "  no loadable modules on this kernel (no /proc/modules)",
        "Device nodes:",
        "  /dev/fou_map     absent (module not loaded)",
        "Daemons:",
        "  bifrost-cached.service   inactive",
    ]
