"""Processes started in a netns the way their systemd units start them (Type=notify).

Entered with nsenter --net, not `ip netns exec`: that remounts /sys for the
netns, without the bpffs at /sys/fs/bpf, so `bifrost xdp run` could not pin.
Readiness is the READY=1 the process sends to NOTIFY_SOCKET, as systemd waits
for it; a process that exits first fails the start with its log.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from bifrost.netns import Namespace

STOP_TIMEOUT_S = 15.0


class ServiceError(RuntimeError):
    """A service exited or did not become ready; the message carries its log."""


class Service:
    """One process in one netns, its output in log_dir/<name>.log."""

    def __init__(self, name: str, ns: Namespace, argv: Sequence[str | Path], log_dir: Path) -> None:
        self.name = name
        self.ns = ns
        self.log = log_dir / f"{name}.log"
        self.notify_path = log_dir / f"{name}.notify"
        self.notify_path.unlink(missing_ok=True)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.started = time.monotonic()
        self.ready_after: float | None = None  # seconds from start to READY=1
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{ns.name}", *map(str, argv)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "NOTIFY_SOCKET": str(self.notify_path)},
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until READY=1 arrives; ServiceError if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServiceError(f"{self.name} exited ({self.proc.returncode}):\n{self.text()}")
            self.notify.settimeout(min(0.5, max(0.01, deadline - time.monotonic())))
            try:
                states = self.notify.recv(4096).decode().split("\n")
            except TimeoutError:
                continue
            if "READY=1" in states:
                self.ready_after = time.monotonic() - self.started
                return
        raise ServiceError(f"{self.name}: no READY=1 after {timeout:.0f}s:\n{self.text()}")

    def stop(self) -> int:
        """SIGTERM (systemctl stop), then SIGKILL after STOP_TIMEOUT_S; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.notify.close()
        self.notify_path.unlink(missing_ok=True)
        return self.proc.returncode
