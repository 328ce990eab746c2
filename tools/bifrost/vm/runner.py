"""Boot a Debian kernel under QEMU, run one script in it, return its exit status.

The guest sees the host root read-only over 9p and the source tree read-write
at the same path, so the project's venv, DKMS-installed modules in
/lib/modules/$KVER, iproute2 and bpftool all work inside. An oops panics the
guest (oops=panic) and any Oops/BUG/WARNING on the console fails the run.
"""

from __future__ import annotations

import logging
import os
import selectors
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bifrost.paths import BUILD_DIR, SOURCE_ROOT
from bifrost.vm import initramfs, kernlog

log = logging.getLogger(__name__)


class GuestFailure(RuntimeError):
    """The guest timed out, or its kernel printed an oops, panic or warning."""

    def __init__(self, message: str, console: str = "") -> None:
        super().__init__(message)
        self.console = console


@dataclass
class VmResult:
    kernel: str
    rc: int
    console: str
    seconds: float
    bad_lines: list[str]


def accel_args() -> list[str]:
    """KVM only with a real kvm_intel/kvm_amd: nested PVM cannot run stock kernels."""
    kvm = Path("/sys/module/kvm_intel").exists() or Path("/sys/module/kvm_amd").exists()
    if kvm and os.access("/dev/kvm", os.W_OK):
        return ["-enable-kvm", "-cpu", "host"]
    return ["-accel", "tcg,thread=multi", "-cpu", "max"]


def check_host(kver: str) -> None:
    missing = []
    if not Path(f"/boot/vmlinuz-{kver}").exists():
        missing.append(f"kernel image /boot/vmlinuz-{kver} (apt-get install linux-image-{kver})")
    if not Path(f"/lib/modules/{kver}").is_dir():
        missing.append(f"/lib/modules/{kver} (apt-get install linux-image-{kver})")
    if not any(Path(p, "qemu-system-x86_64").exists() for p in ("/usr/bin", "/usr/local/bin")):
        missing.append("qemu-system-x86_64 (apt-get install qemu-system-x86)")
    if missing:
        raise RuntimeError("the test VM cannot start, missing: " + "; ".join(missing))


# Arguments the run itself depends on: the console it reads, an oops that ends the run
# instead of hanging it, and where init.sh finds the tree and the script (bifrost.*).
RESERVED = ("console", "panic", "oops")


def checked_append(append: Sequence[str]) -> list[str]:
    """Extra kernel arguments, one per item; ValueError for one the run depends on.

    An item may hold several arguments separated by blanks (`--append 'a=1 b'`); they
    are joined back with one space, so a quoted value (`a="x y"`) reaches the kernel whole.
    """
    out = []
    for item in append:
        for arg in item.split():
            key = arg.split("=", 1)[0]
            if not key:
                raise ValueError(f"kernel argument {arg!r}: no name")
            if key in RESERVED or key.startswith("bifrost."):
                raise ValueError(
                    f"kernel argument {arg!r}: {key} is set by the runner "
                    f"({', '.join(RESERVED)} and bifrost.* cannot be changed)"
                )
            out.append(arg)
    return out


def kernel_cmdline(script_path: Path, append: Sequence[str] = ()) -> str:
    """The guest kernel's command line: the runner's own arguments, then `append`."""
    return " ".join(
        [
            "console=ttyS0",
            "panic=-1",
            "oops=panic",
            "loglevel=5",  # warnings reach the console, where they fail the run
            "mitigations=off",
            "net.ifnames=0",
            f"bifrost.work={SOURCE_ROOT}",
            f"bifrost.script={script_path}",
            *checked_append(append),
        ]
    )


# init.sh creates <script>.started once the work tree is mounted; a guest that has not
# by BOOT_TIMEOUT is stuck before init (the kernel boots in seconds here, under load
# in under a minute).
BOOT_TIMEOUT = 300.0


@dataclass
class _Console:
    lines: list[str]
    bad: list[str]  # lines of kernel trouble (kernlog.TROUBLE)
    booted: bool  # init started: the started file appeared
    timed_out: bool
    seconds: float


def _console(argv: list[str], timeout: float, echo: bool, started: Path) -> _Console:
    """Run qemu (argv) until it exits, timeout passes, or it has not booted (made the
    file started) by BOOT_TIMEOUT; collect and echo its console."""
    start = time.monotonic()
    con = _Console([], [], False, False, 0.0)
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf = b""
    try:
        while True:
            elapsed = time.monotonic() - start
            con.booted = con.booted or started.exists()
            if elapsed >= timeout:
                con.timed_out = True
                break
            if not con.booted and elapsed >= BOOT_TIMEOUT:
                break
            if not sel.select(timeout=min(timeout - elapsed, 1.0)):
                if proc.poll() is not None:
                    break
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
            *complete, buf = buf.split(b"\n")
            for raw in complete:
                line = raw.decode(errors="replace").rstrip("\r")
                con.lines.append(line)
                if kernlog.TROUBLE.search(line):
                    con.bad.append(line)
                if echo:
                    print(line, file=sys.stdout, flush=True)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        sel.close()
    if buf:
        con.lines.append(buf.decode(errors="replace"))
    con.seconds = time.monotonic() - start
    con.booted = con.booted or started.exists()
    return con


def run(
    kver: str,
    script: str,
    timeout: float = 1200,
    memory: str = "2G",
    cpus: int = 2,
    echo: bool = True,
    append: Sequence[str] = (),
) -> VmResult:
    """Run shell `script` in a guest booted with kernel `kver`; raise GuestFailure on trouble.

    `append`: extra kernel command-line arguments (kernel_cmdline() checks them)."""
    check_host(kver)
    vm_dir = BUILD_DIR / "vm"
    run_dir = vm_dir / "runs"
    script_path = run_dir / f"{uuid.uuid4().hex[:10]}.sh"
    cmdline = kernel_cmdline(script_path, append)  # a bad argument fails before the build
    irfs = initramfs.build(kver, vm_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    script_path.write_text("set -u\n" + script + "\n")
    rc_path = Path(f"{script_path}.rc")
    started = Path(f"{script_path}.started")
    argv = [
        "qemu-system-x86_64",
        *accel_args(),
        "-m",
        memory,
        "-smp",
        str(cpus),
        "-nographic",
        "-no-reboot",
        "-nodefaults",
        "-serial",
        "stdio",
        "-kernel",
        f"/boot/vmlinuz-{kver}",
        "-initrd",
        str(irfs),
        "-append",
        cmdline,
        "-virtfs",
        "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        "-virtfs",
        f"local,path={SOURCE_ROOT},mount_tag=work,security_model=none,multidevs=remap",
    ]
    for attempt in (1, 2):
        log.info("vm: %s", shlex.join(argv))
        started.unlink(missing_ok=True)
        con = _console(argv, timeout, echo, started)
        if con.booted or con.bad or attempt == 2:
            break
        # A boot that never reached init (TCG has stalled in early boot on a loaded
        # host, spinning for the whole timeout) ran nothing: boot once more.
        log.warning("vm: %s did not reach init in %.0fs: booting again", kver, BOOT_TIMEOUT)
    console, bad, seconds = "\n".join(con.lines), con.bad, con.seconds
    timed_out = con.timed_out or not con.booted
    rc = int(rc_path.read_text().strip()) if rc_path.exists() else 255
    for p in (script_path, rc_path, started):
        p.unlink(missing_ok=True)
    result = VmResult(kver, rc, console, seconds, bad)
    if timed_out or bad:
        if bad:
            why = f"kernel trouble: {bad[:3]}"
        elif not con.booted:
            why = f"never reached init, twice (boot limit {BOOT_TIMEOUT:.0f}s)"
        else:
            why = f"timed out after {timeout:.0f}s"
        if not echo:
            print(console, file=sys.stderr)
        raise GuestFailure(f"guest {kver}: {why}", console)
    log.info("vm: %s exited rc=%d after %.1fs", kver, rc, seconds)
    return result
