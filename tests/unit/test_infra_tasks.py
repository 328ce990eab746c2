"""Invoke tasks: a missing precondition ends with what is missing and the fixing command."""

from __future__ import annotations

import importlib.util
import os
import re
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


def _as_nobody(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         sys.executable, "-c",
         f"import sys, runpy; sys.argv={['invoke', *argv]!r}; "
         "runpy.run_module('invoke', run_name='__main__')"],
        cwd=SOURCE_ROOT, capture_output=True, text=True, check=False, timeout=300,
        env={**os.environ, "HOME": "/tmp"},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "needs"),
    [
        (["build"], "build needs root: sudo .venv/bin/invoke build"),
        (["generate"], "generate: permission denied on "),
        (["test", "--tier", "unit"], "test: permission denied on "),
        (["vm", "--", "true"], "vm: permission denied on "),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "",
)
def test_unprivileged_tasks_say_what_is_needed(
    tasks: ModuleType, argv: list[str], needs: str, tmp_path: Path
) -> None:
    """As a user who may not write the tree (setup.sh ran as root): one line, no traceback."""
    if os.geteuid() == 0:
        # The tree belongs to root; build/ must exist for the check to be about it.
        (SOURCE_ROOT / "build").mkdir(exist_ok=True)
        if argv == ["generate"]:
            # With every output up to date generate writes nothing and rightly
            # succeeds; a missing output makes it write, which nobody may not.
            (SOURCE_ROOT / "build" / "xdp" / "module_config.h").unlink(missing_ok=True)
        done = _as_nobody(argv)
        out = done.stdout + done.stderr
        assert done.returncode != 0, out
        assert "Traceback" not in out, out
        assert needs in out, out
    else:
        # Not root: exercise the same guard on a path this user cannot write.
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)

        @tasks._no_traceback("generate")
        def writes() -> None:
            (ro / "x").write_text("")

        with pytest.raises(Exit, match=r"generate: permission denied on .*ro/x"):
            writes()


def test_unreadable_config_names_the_file(tasks: ModuleType, tmp_path: Path) -> None:
    """An operator config only root may read: the task says so instead of 'bad config'."""
    import tempfile

    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        os.chmod(d, 0o755)  # others may look in, as in /etc/bifrost
        cfg = Path(d) / "bifrost.toml"
        cfg.write_text("[xdp]\nmodules = []\n")
        cfg.chmod(0o600)
        want = f"generate: {cfg} is not readable by this user: run as root"
        if os.geteuid() == 0:
            done = _as_nobody(["generate", "--config", str(cfg)])
            out = done.stdout + done.stderr
            assert done.returncode != 0 and "Traceback" not in out, out
            assert want in out, out
        else:
            cfg.chmod(0o000)
            with pytest.raises(Exit, match=re.escape(want)):
                tasks._load_config(cfg, "generate")
