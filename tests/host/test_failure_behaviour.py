"""The README's failure claims, each shown to fail what it says it fails.

- The test VM (bifrost.vm): "an oops, panic, WARNING or timeout fails the run and
  prints the guest console": a guest that panics and one that hangs past its
  timeout each raise GuestFailure; an ordinary run with a non-zero exit does not
  (the control: the runner does not simply fail everything).
- `invoke build`: "build both modules through DKMS (warnings are errors)": a
  scratch copy of fou_map under another DKMS name, with one added warning, fails
  bifrost.dkms.build (what `invoke build` calls); the same copy without the
  warning builds (the control). The scratch name cannot touch the installed
  modules, and it is removed from DKMS afterwards.

Kernel tier, run on the HOST once per kernel line by `invoke test` (it boots the
guest and drives DKMS itself, like tests/host/test_dkms_upgrade.py); the kernel
line comes from BIFROST_KERNEL (default: the first of packaging/kernels.env).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bifrost import dkms, vm
from bifrost.paths import KMOD_DIR
from bifrost.testrun import kernel_lines

pytestmark = pytest.mark.kernel

KVER = os.environ.get("BIFROST_KERNEL") or kernel_lines()[0]
SCRATCH = "bifrost_wtest"  # a DKMS name of its own: never the installed modules'
HANG_TIMEOUT = 90  # seconds: enough to boot under TCG and reach the script


@pytest.fixture(autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        pytest.fail("boots the guest and drives DKMS: run as root (invoke test)")


def test_ordinary_failing_script_is_an_exit_status_not_a_guest_failure() -> None:
    result = vm.run(KVER, "echo control-ran; exit 3", timeout=600, echo=False)
    assert result.rc == 3
    assert "control-ran" in result.console
    assert result.bad_lines == []


def test_guest_panic_fails_the_run() -> None:
    script = "echo panic-next; echo c > /proc/sysrq-trigger; sleep 600"
    with pytest.raises(vm.GuestFailure, match="kernel trouble") as failed:
        vm.run(KVER, script, timeout=600, echo=False)
    assert KVER in str(failed.value)
    assert re.search(r"Kernel panic|Oops|sysrq", str(failed.value)), str(failed.value)


def test_guest_hanging_past_its_timeout_fails_the_run(capfd: pytest.CaptureFixture[str]) -> None:
    start = time.monotonic()
    with pytest.raises(vm.GuestFailure, match=f"timed out after {HANG_TIMEOUT}s"):
        vm.run(KVER, "echo hang-started; sleep 100000", timeout=HANG_TIMEOUT, echo=False)
    took = time.monotonic() - start
    assert HANG_TIMEOUT <= took < HANG_TIMEOUT + 60, f"took {took:.0f}s"
    # The console is printed on failure: it shows the hang was in the script, not the boot.
    assert "hang-started" in capfd.readouterr().err


def _scratch_module(root: Path, warning: bool) -> None:
    """kmod/fou_map copied as SCRATCH (module name in Kbuild changed), with or
    without one added compiler warning in main.c."""
    dst = root / SCRATCH
    shutil.copytree(KMOD_DIR / "fou_map", dst, ignore=shutil.ignore_patterns("*.o", "*.ko*"))
    # The staging copies kmod/common (the shared chardev header) into each tree.
    shutil.copytree(KMOD_DIR / dkms.COMMON, root / dkms.COMMON, dirs_exist_ok=True)
    kbuild = (dst / "Kbuild").read_text()
    (dst / "Kbuild").write_text(kbuild.replace("fou_map", SCRATCH))
    if warning:
        main = dst / "main.c"
        text = main.read_text()
        marker = "static int __init"
        assert marker in text
        # An unused local: -Wunused-variable, part of the kernel's -Wall.
        text = text.replace(
            marker, "static void fm_wtest(void)\n{\n\tint unused;\n}\n\n" + marker, 1
        )
        main.write_text(text)


@pytest.fixture
def scratch_dkms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """bifrost.dkms pointed at a scratch kmod dir; the scratch module removed after."""
    monkeypatch.setattr(dkms, "KMOD_DIR", tmp_path)
    dkms.remove((SCRATCH,))
    try:
        yield tmp_path
    finally:
        dkms.remove((SCRATCH,))
        assert not dkms.source_dir(SCRATCH).exists()
        assert KVER not in dkms.status(SCRATCH)


def test_compiler_warning_fails_the_dkms_build(scratch_dkms: Path) -> None:
    _scratch_module(scratch_dkms, warning=False)
    dkms.build([KVER], modules=(SCRATCH,))  # control: the copy itself builds clean
    assert dkms.status(SCRATCH).get(KVER) == "built"
    dkms.remove((SCRATCH,))
    shutil.rmtree(scratch_dkms / SCRATCH)

    _scratch_module(scratch_dkms, warning=True)
    with pytest.raises(dkms.DkmsError) as failed:
        dkms.build([KVER], modules=(SCRATCH,))
    assert re.search(
        r"error: unused variable .unused. \[-Werror=unused-variable\]", str(failed.value)
    )
    assert dkms.status(SCRATCH).get(KVER) != "built"
