"""`invoke status`: DKMS state per kernel, loaded modules, device nodes, daemon states.

Every probe degrades to a sentence instead of an exception: the host of this
project has no loadable modules (no /proc/modules) and often no running systemd.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from bifrost import dkms
from bifrost.install import UNITS
from bifrost.paths import MODULES


@dataclass
class Status:
    dkms: dict[str, dict[str, str]] = field(default_factory=dict)  # module -> kernel -> state
    dkms_note: str = ""
    kernels: list[str] = field(default_factory=list)
    loaded: dict[str, str] = field(default_factory=dict)  # module -> "loaded" / "not loaded"
    loaded_note: str = ""
    devices: dict[str, str] = field(default_factory=dict)  # /dev path -> description
    devices_note: str = ""
    daemons: dict[str, str] = field(default_factory=dict)  # unit -> state
    daemons_note: str = ""


def dkms_states(st: Status) -> None:
    st.kernels = dkms.kernels_with_headers()
    if shutil.which("dkms") is None:
        st.dkms_note = "dkms is not installed (apt-get install dkms)"
        return
    for module in MODULES:
        states = dkms.status(module)
        st.dkms[module] = {k: states.get(k, "not added") for k in st.kernels}
        for k, v in states.items():  # kernels whose headers were removed since
            st.dkms[module].setdefault(k, v)


def loaded_modules(st: Status) -> None:
    if not Path("/proc/modules").exists():
        st.loaded_note = "no loadable modules on this kernel (no /proc/modules)"
        return
    try:
        import kmod

        loaded = {m.name for m in kmod.Kmod().loaded()}
    except Exception as e:  # python-kmod raises its own KmodError, or is missing
        st.loaded_note = f"cannot list loaded modules: {e}"
        return
    for module in MODULES:
        st.loaded[module] = "loaded" if module in loaded else "not loaded"


def device_nodes(st: Status) -> None:
    try:
        import pyudev

        ctx = pyudev.Context()
    except Exception as e:
        st.devices_note = f"cannot query udev: {e}"
        return
    for module in MODULES:
        node = f"/dev/{module}"
        try:
            dev = pyudev.Devices.from_name(ctx, "misc", module)
        except pyudev.DeviceNotFoundError:
            st.devices[node] = "absent (module not loaded)"
            continue
        path = Path(dev.device_node or node)
        if path.exists():
            mode = path.stat()
            st.devices[node] = (
                f"present {dev.sys_path} mode {mode.st_mode & 0o777:04o} uid {mode.st_uid}"
            )
        else:
            st.devices[node] = f"registered ({dev.sys_path}) but no node in /dev"


def daemon_states(st: Status) -> None:
    if shutil.which("systemctl") is None:
        st.daemons_note = "systemctl not found (no systemd)"
        return
    if not Path("/run/systemd/system").is_dir():
        st.daemons_note = "systemd is not running on this machine (not booted with it)"
        return
    for unit in UNITS:
        done = subprocess.run(
            ["systemctl", "is-active", unit], capture_output=True, text=True, check=False
        )
        st.daemons[unit] = done.stdout.strip() or done.stderr.strip() or "unknown"


def collect() -> Status:
    st = Status()
    dkms_states(st)
    loaded_modules(st)
    device_nodes(st)
    daemon_states(st)
    return st


def render(st: Status) -> str:
    lines = ["DKMS:"]
    if st.dkms_note:
        lines.append(f"  {st.dkms_note}")
    for module, per_kernel in st.dkms.items():
        if not per_kernel:
            lines.append(f"  {module}: no kernel with headers")
        for kver, state in sorted(per_kernel.items()):
            lines.append(f"  {module:<11} {kver:<24} {state}")
    lines.append("Loaded modules:")
    lines.extend(
        [f"  {st.loaded_note}"]
        if st.loaded_note
        else [f"  {m:<11} {s}" for m, s in st.loaded.items()]
    )
    lines.append("Device nodes:")
    lines.extend(
        [f"  {st.devices_note}"]
        if st.devices_note
        else [f"  {d:<16} {s}" for d, s in st.devices.items()]
    )
    lines.append("Daemons:")
    lines.extend(
        [f"  {st.daemons_note}"]
        if st.daemons_note
        else [f"  {u:<24} {s}" for u, s in st.daemons.items()]
    )
    return "\n".join(lines)
