"""The lab (`python -m bifrost_testing.lab`) comes up in the guest and reports every step OK."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel

MODULES = ("bifrost_nf", "fou_map")


def _loaded() -> set[str]:
    return {line.split()[0] for line in Path("/proc/modules").read_text().splitlines()}


def test_lab_comes_up() -> None:
    before = _loaded()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "bifrost_testing.lab"],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "BIFROST_GUEST": "1"},
            check=False,
        )
        out = done.stdout
        assert done.returncode == 0, out[-4000:] + done.stderr[-2000:]
        assert "=== lab summary ===" in out
        assert "lab OK" in out
        for step in (
            "load modules (python-kmod)",
            "build topology (bifrost.netns)",
            "client reaches the service by pop1",
            "/dev/bifrost_nf INFO",
            "/dev/fou_map INFO",
        ):
            assert f"ok   {step}" in out, step
        assert "FAIL" not in out.split("=== lab summary ===")[1]
        assert MODULES[0] in _loaded() and MODULES[1] in _loaded()
        # The lab removes its namespaces when it is done.
        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert "lab-" not in netns
    finally:
        # Leave the modules as this test found them.
        for m in MODULES:
            if m not in before and m in _loaded():
                subprocess.run(["rmmod", m], check=False)
