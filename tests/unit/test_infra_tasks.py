"""Invoke tasks: a missing precondition ends with what is missing and the fixing command."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from invoke.exceptions import Exit

from bifrost.paths import SOURCE_ROOT

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tasks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bifrost_tasks", SOURCE_ROOT / "tasks.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_missing_tool_names_the_package(tasks: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(Exit, match=r"missing qemu-system-x86_64: apt-get install qemu-system-x86"):
        tasks._require_tools("qemu-system-x86_64")
    with pytest.raises(Exit, match=r"missing dkms, clang: apt-get install dkms clang"):
        tasks._require_tools("dkms", "clang")


def test_missing_headers_names_the_package(tasks: ModuleType) -> None:
    with pytest.raises(
        Exit, match=r"no kernel headers for 9\.9\.9-x: apt-get install linux-headers-9\.9\.9-x"
    ):
        tasks._require_kernel("9.9.9-x")


def test_missing_kernel_image_names_the_package(tasks: ModuleType) -> None:
    """Headers present but no image: the VM cannot boot it, and says which package to get."""
    with_headers = [
        k for k in os.listdir("/lib/modules") if Path(f"/lib/modules/{k}/build/Makefile").exists()
    ]
    assert with_headers, "no kernel headers on this machine: ./setup.sh deps"
    kver = with_headers[0]
    if Path(f"/boot/vmlinuz-{kver}").exists():
        tasks._require_kernel(kver, boot=True)  # everything there: no error
    else:
        with pytest.raises(Exit, match=f"apt-get install linux-image-{kver}"):
            tasks._require_kernel(kver, boot=True)


def test_not_root_names_sudo(tasks: ModuleType) -> None:
    if os.geteuid() == 0:
        # Run the real task as an unprivileged user.
        done = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             sys.executable, "-c",
             "import sys, runpy; sys.argv=['invoke','install']; "
             "runpy.run_module('invoke', run_name='__main__')"],
            cwd=SOURCE_ROOT, capture_output=True, text=True, check=False,
            env={**os.environ, "HOME": "/tmp"},
        )  # fmt: skip
        assert done.returncode != 0
        assert "install needs root: sudo .venv/bin/invoke install" in done.stderr + done.stdout
    else:
        with pytest.raises(Exit, match=r"install needs root: sudo \.venv/bin/invoke install"):
            tasks._require_root("install")


def test_every_task_has_a_docstring(tasks: ModuleType) -> None:
    from invoke.tasks import Task

    names = {
        "generate",
        "build",
        "install",
        "uninstall",
        "status",
        "vm_run",
        "lab",
        "test",
        "bench",
    }
    for name in names:
        t = getattr(tasks, name)
        assert isinstance(t, Task), name
        assert (t.__doc__ or "").strip(), f"{name} needs a docstring (its --help)"
