"""sd_notify: the datagram systemd reads, and no crash when systemd is not there."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from bifrost.sdnotify import sd_notify

pytestmark = pytest.mark.unit


def test_sends_the_state_to_the_socket_systemd_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(path))
        s.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert sd_notify("READY=1")
        assert s.recv(100) == b"READY=1"
    assert not sd_notify("STOPPING=1"), "the manager's socket is gone: no crash"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not sd_notify("READY=1"), "not run by systemd"


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"bifrost-test-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        s.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sd_notify("RELOADING=1")
        assert s.recv(100) == b"RELOADING=1"
