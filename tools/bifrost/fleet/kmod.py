"""A fleet host's kernel module (bifrost_nf on a POP, fou_map on a game server) as DKMS
has it for the running kernel, against what the host's bifrost release ships; and the
agent's DKMS rebuild when the two differ.

The release installed on the host (its `bifrost.__version__` and its `kmod/` source,
what the operator pushed as software) is what the module should be. DKMS keys builds
by version, so a rebuild is needed when DKMS has no `installed` build of that version
for the running kernel, or when the source it staged under that version
(/usr/src/MODULE-VERSION) is not the release's. Everything goes through the `dkms`
command and bifrost.dkms's staging, never around them.

After the rebuild the agent reloads the module (reload(): rmmod, modprobe, with the
host's daemons sequenced around it by bifrost.fleet.holders so that nothing they keep
is lost) and checks that the kernel then runs the release's version
(/sys/module/M/version); if not, DKMS's previous install is put back and loaded.

When DKMS already has the release's build installed but the LOADED module is an
older one (/sys/module/M/version is not the release's while `modinfo -F version M`,
what modprobe would load, is), apply reloads it the same way without a rebuild.

A module the host's config does not use (a POP without cached rules) is not rebuilt.
A host without dkms cannot rebuild: fine while the release's version is what is
loaded, otherwise plan shows why and apply stops on that host before changing any.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from bifrost import __version__, dkms

log = logging.getLogger(__name__)


SYS_MODULE = Path("/sys/module")
UNLOAD_TIMEOUT_S = 10.0  # a daemon that opens the device per cycle lets go within one


class KmodError(RuntimeError):
    """dkms is missing or a step failed; the message says what and what is installed."""


@dataclass(frozen=True)
class KmodState:
    """The role's module for the running kernel: wanted (the release) against installed."""

    module: str
    kernel: str
    version: str  # the release's (bifrost.__version__)
    installed: str | None  # the version DKMS has installed for the kernel
    source_current: bool  # /usr/src/MODULE-VERSION holds the release's source
    loaded: str | None  # the loaded module's version (/sys/module/M/version)
    why: str  # why a rebuild is needed; "" when none is
    dkms: bool = True  # False: no dkms on the host, nothing the agent can rebuild
    needed: bool = True  # False: the host's config runs nothing that uses the module
    on_disk: str | None = None  # what modprobe would load (modinfo -F version)

    @property
    def rebuild(self) -> bool:
        return bool(self.why)

    @property
    def reload(self) -> bool:
        """No rebuild, but the loaded module is not the release's while the one modprobe
        would load is: a reload alone makes the kernel run the release."""
        return (
            not self.rebuild
            and self.needed
            and self.loaded is not None
            and self.loaded != self.version
            and self.on_disk == self.version
        )

    def as_json(self) -> dict[str, object]:
        return asdict(self) | {"rebuild": self.rebuild, "reload": self.reload}

    def summary(self) -> str:
        """One line for the status table."""
        what = f"{self.module} {self.installed} installed" if self.installed else self.module
        if not self.needed:
            what += " (not used by this config)"
        if not self.dkms:
            what += ": no dkms on this host"
        elif not self.installed and self.needed:
            what += f" {self.version} not installed"
        if self.loaded is None:
            what += ", not loaded"
        elif self.loaded != (self.installed or self.on_disk):
            what += f", loaded {self.loaded} (reload to run {self.installed or self.version})"
        else:
            what += f", loaded {self.loaded}"
        return what + (f"; REBUILD: {self.why}" if self.why else "")


def _dkms(*args: str) -> subprocess.CompletedProcess[str]:
    argv = ["dkms", *args]
    log.info("$ %s", shlex.join(argv))
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=1800)
    except subprocess.TimeoutExpired:
        raise KmodError(f"{shlex.join(argv)}: no answer in 30 minutes") from None
    except FileNotFoundError:
        raise KmodError("dkms is not installed: apt-get install dkms") from None


def _status(module: str) -> dict[tuple[str, str | None], str]:
    return dkms.parse_status(_dkms("status", module).stdout, module)


def source_current(module: str) -> bool:
    """Whether DKMS's staged source of this release is the release's own."""
    staged = dkms.source_dir(module)
    if not staged.is_dir():
        return False
    return dkms.source_files(staged) == dkms.staged_tree(module)


def loaded_version(module: str) -> str | None:
    path = SYS_MODULE / module
    if not path.is_dir():
        return None
    ver = path / "version"
    return ver.read_text().strip() if ver.exists() else "unknown"


def on_disk_version(module: str) -> str | None:
    """The version of the module modprobe would load for the running kernel
    (`modinfo -F version`); None when there is none or modinfo cannot say."""
    try:
        done = _tool("modinfo", "-F", "version", module, check=False)
    except KmodError:
        return None
    return parse_modinfo_version(done.returncode, done.stdout)


def parse_modinfo_version(returncode: int, stdout: str) -> str | None:
    """`modinfo -F version M`'s answer: its one line, None when it failed or is empty."""
    lines = stdout.strip().splitlines()
    if returncode != 0 or not lines:
        return None
    return lines[0].strip() or None


def version_problem(module: str, loaded: str | None, on_disk: str | None) -> str:
    """Why the running module is not the release's, for health ("" when it is)."""
    if loaded == __version__:
        return ""
    have = f"loaded {loaded}" if loaded else "not loaded"
    return (
        f"{module} is {have}, not this release's {__version__} "
        f"(modprobe would load {on_disk or 'none'})"
    )


def state(module: str, needed: bool = True) -> KmodState:
    """The module's state for the running kernel; why == "" when it is this release's or
    the host's config does not use it (needed False)."""
    kernel = os.uname().release
    loaded = loaded_version(module)
    on_disk = on_disk_version(module)
    if shutil.which("dkms") is None:
        # Nothing can build the module here: fine while the release's own module runs
        # or is what modprobe would load (installed by other means: a reload), or the
        # config uses none; else the host cannot take this release, and apply stops on
        # it as on a failing build.
        why = ""
        if needed and __version__ not in (loaded, on_disk):
            have = f"{loaded} is loaded" if loaded else "it is not loaded"
            why = f"no dkms on this host to build {module} {__version__} ({have})"
        return KmodState(
            module,
            kernel,
            __version__,
            None,
            False,
            loaded,
            why,
            dkms=False,
            needed=needed,
            on_disk=on_disk,
        )
    states = _status(module)
    installed = next((v for (v, k), s in states.items() if k == kernel and s == "installed"), None)
    current = source_current(module)
    if not needed:
        why = ""
    elif installed != __version__:
        have = f"{installed} is installed" if installed else "none is installed"
        why = f"this host's bifrost is {__version__}, {have} for {kernel}"
    elif not current:
        why = f"the {__version__} source DKMS has is not this host's (changed under the version)"
    else:
        why = ""
    return KmodState(
        module, kernel, __version__, installed, current, loaded, why, needed=needed, on_disk=on_disk
    )


def rebuild(st: KmodState) -> list[str]:
    """Stage this release's source, then dkms add, build and install it for the running
    kernel (each step only where DKMS has not done it). On a failure, what this call
    added is removed again and KmodError says what is installed now (the previous
    build, unless the source changed under the same version: DKMS keeps one build
    per version)."""
    if not st.dkms:
        raise KmodError(f"{st.why}: apt-get install dkms")
    module, ver, kernel = st.module, st.version, st.kernel
    name = f"{module}/{ver}"
    known = any(v == ver for v, _ in _status(module))
    try:
        restaged = dkms.stage(module)  # a changed source under this version: old build removed
    except (dkms.DkmsError, OSError) as e:
        raise KmodError(f"staging {dkms.source_dir(module)} failed: {e}") from None
    if restaged or not known or not Path(f"/var/lib/dkms/{module}/{ver}/source").exists():
        _step(st, known and not restaged, "add", name)
    have = _status(module).get((ver, kernel))
    steps = [] if have in ("built", "installed") else [("build", name, "-k", kernel)]
    steps.append(("install", name, "-k", kernel, "--force"))
    for args in steps:
        _step(st, known and not restaged, *args)
    return [f"dkms: {module} {ver} built and installed for {kernel} (was {st.installed or 'none'})"]


def _step(st: KmodState, keep: bool, *args: str) -> None:
    """One dkms command of a rebuild; on a failure remove what the rebuild added
    (unless keep: the version was registered before) and say what stays installed."""
    done = _dkms(*args)
    if done.returncode == 0:
        return
    name = f"{st.module}/{st.version}"
    if not keep:
        _dkms("remove", name, "--all")  # leave DKMS as it was
    if st.installed == st.version and not keep:
        left = f"no {st.module} build is installed for {st.kernel} (the old {name} was removed)"
    else:
        left = f"{st.module} {st.installed or 'none'} stays installed for {st.kernel}"
    raise KmodError(
        f"dkms {shlex.join(args)} failed (exit {done.returncode}); {left}: "
        f"{_tail(done.stdout + done.stderr)}"
    )


def reinstall(module: str, version: str, kernel: str) -> str:
    """Back to a version DKMS still has built (a rollback)."""
    done = _dkms("install", f"{module}/{version}", "-k", kernel, "--force")
    if done.returncode != 0:
        raise KmodError(
            f"dkms install {module}/{version} -k {kernel} failed (exit {done.returncode}): "
            f"{_tail(done.stdout + done.stderr)}"
        )
    return f"dkms: {module} {version} installed again for {kernel}"


def _tail(text: str, lines: int = 6) -> str:
    return " | ".join(text.strip().splitlines()[-lines:]) or "no output"


@dataclass
class Holders:
    """What the host's daemons do around a reload (bifrost.fleet.hoststate knows which):
    before_unload lets go of the device and saves what the module holds, after_load
    waits until they have put it back; each returns lines for the apply's output."""

    before_unload: Callable[[], list[str]] = lambda: []
    after_load: Callable[[], list[str]] = lambda: []


def reload(module: str, want: str | None, holders: Holders) -> list[str]:
    """Make DKMS's installed build the running module: unload the loaded one (if any),
    load it with modprobe, and check /sys/module/M/version is want (the release's);
    want None: unload and leave it so (it was not loaded before a rollback)."""
    was = loaded_version(module)
    lines = holders.before_unload() if was is not None else []
    try:
        if was is not None:
            _unload(module)
        if want is not None:
            _tool("modprobe", module)
    finally:
        if was is not None:
            lines += holders.after_load()
    now = loaded_version(module)
    if now != want:
        got = f"version {now}" if now else "not loaded"
        raise KmodError(f"after the reload {module} is {got}, not {want or 'unloaded'}")
    return [*lines, f"{module}: {was or 'not loaded'} -> {now or 'not loaded'}"]


def _unload(module: str) -> None:
    """rmmod, retried while something holds the module (a daemon's cycle has the device
    open for a moment); KmodError with rmmod's reason when it stays busy."""
    deadline = time.monotonic() + UNLOAD_TIMEOUT_S
    while True:
        done = _tool("rmmod", module, check=False)
        if done.returncode == 0 or loaded_version(module) is None:
            return
        if time.monotonic() > deadline:
            raise KmodError(
                f"rmmod {module} kept failing for {UNLOAD_TIMEOUT_S:g} s (a process holds its "
                f"device?): {_tail(done.stdout + done.stderr)}"
            )
        time.sleep(0.02)


def _tool(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    log.info("$ %s", shlex.join(argv))
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    except FileNotFoundError:
        raise KmodError(f"{argv[0]} is not installed: apt-get install kmod") from None
    except subprocess.TimeoutExpired:
        raise KmodError(f"{shlex.join(argv)}: no answer in 120 s") from None
    if check and done.returncode != 0:
        why = _tail(done.stdout + done.stderr)
        raise KmodError(f"{shlex.join(argv)} failed (exit {done.returncode}): {why}")
    return done
