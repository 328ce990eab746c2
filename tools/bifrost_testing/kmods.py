"""Loading and unloading the kernel modules under test (in the test guest).

One place for what every kernel test, the lab and the benchmarks need: modprobe
the modules, then wait for their character devices, which udev (or devtmpfs)
creates a moment after the module's init returns.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from bifrost_testing.topology import wait_for

DEVICES = {"bifrost_nf": Path("/dev/bifrost_nf"), "fou_map": Path("/dev/fou_map")}


def loaded(module: str) -> bool:
    return Path(f"/sys/module/{module}").exists()


def wait_for_devices(*modules: str, timeout: float = 10.0) -> None:
    """Raise unless the device of each of ours among modules is there within timeout."""
    for dev in (DEVICES[m] for m in modules if m in DEVICES):
        if not wait_for(dev.exists, timeout, 0.02):
            raise RuntimeError(f"{dev} did not appear after loading its module")


def load(*modules: str, timeout: float = 10.0) -> None:
    """modprobe the modules (one call: dependencies first) and wait for our devices."""
    subprocess.run(["modprobe", "-a", *modules], check=True)
    wait_for_devices(*modules, timeout=timeout)


def insmod(module: str, ko: str, timeout: float = 10.0) -> None:
    """Load a scratch build ko of module instead of the installed one (as modprobe:
    loaded is loaded)."""
    if not loaded(module):
        subprocess.run(["insmod", ko], check=True)
    wait_for_devices(module, timeout=timeout)


def unload(module: str) -> None:
    subprocess.run(["rmmod", module], check=True)
