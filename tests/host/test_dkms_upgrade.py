"""Kernel upgrade, proven: DKMS's own header hook builds the modules for 6.12.

With both modules installed for the 6.1 line, remove them for the 6.12 line
only, then reinstall the 6.12 headers package exactly as an upgrade would
(apt runs /etc/kernel/header_postinst.d/dkms). No bifrost command is involved
in the rebuild. Then a 6.12 guest loads both modules and answers INFO.

Runs on the host as root (it changes /var/lib/dkms and /lib/modules/6.12...),
started by `invoke test` (tier "upgrade") after the DKMS tier has installed the
modules for both kernels; it leaves them installed for both.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from bifrost import __version__, dkms, vm
from bifrost.paths import MODULES
from bifrost.testrun import kernel_lines

pytestmark = pytest.mark.upgrade

OLD, NEW = kernel_lines()[:2]

GUEST_CHECK = """
set -e
for m in {modules}; do modprobe "$m"; test -c "/dev/$m"; done
.venv/bin/python - <<'PY'
import importlib
from bifrost.chardev import Device
for name in {modules!r}.split():
    codec = importlib.import_module(f"bifrost.abi.{{name}}")
    with Device(f"/dev/{{name}}", codec) as dev:
        info = dev.info()
    assert info["abi_version"] == codec.ABI_VERSION, (name, info)
    assert info["module_version"] == "{version}", (name, info)
    print(f"upgrade-check {{name}} {{info['module_version']}} abi {{info['abi_version']}} OK")
PY
for m in {modules}; do rmmod "$m"; done
uname -r
"""


def _ko(kver: str, module: str) -> list[Path]:
    return list(Path(f"/lib/modules/{kver}/updates/dkms").glob(f"{module}.ko*"))


def _reinstall_headers(kver: str) -> str:
    """What a kernel upgrade does: (re)install linux-headers-KVER through apt."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "INITRD": "No"}
    done = subprocess.run(
        [
            "apt-get",
            "install",
            "-y",
            "--reinstall",
            "--no-install-recommends",
            f"linux-headers-{kver}",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=900,
    )
    assert done.returncode == 0, f"apt-get reinstall failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root on the host")
def test_header_install_hook_builds_modules_for_new_kernel() -> None:
    assert Path(f"/lib/modules/{NEW}/build/Makefile").exists(), f"no headers for {NEW}"
    before = {m: dkms.status(m) for m in MODULES}
    for m in MODULES:
        assert before[m].get(OLD) == "installed", f"{m} must be installed for {OLD}: {before[m]}"

    # Forget the 6.12 build, as if 6.12 had never been seen.
    for m in MODULES:
        subprocess.run(
            ["dkms", "remove", f"{m}/{__version__}", "-k", NEW], capture_output=True, check=False
        )
        assert NEW not in dkms.status(m), f"{m} still known for {NEW}"
        assert not _ko(NEW, m), f"{m} still on disk for {NEW}"
        assert dkms.status(m).get(OLD) == "installed", f"removing {NEW} touched {OLD}"

    output = _reinstall_headers(NEW)

    for m in MODULES:
        assert dkms.status(m).get(NEW) == "installed", (
            f"the header hook did not install {m} for {NEW}:\n{output[-3000:]}"
        )
        assert _ko(NEW, m), f"no {m}.ko in /lib/modules/{NEW}/updates/dkms"

    result = vm.run(
        NEW,
        GUEST_CHECK.format(modules=" ".join(MODULES), version=__version__),
        timeout=300,
        echo=False,
    )
    assert result.rc == 0, result.console[-4000:]
    for m in MODULES:
        assert f"upgrade-check {m} {__version__}" in result.console
    assert NEW in result.console
