"""`modprobe` and `rmmod` of a fleet-lab host, next to its `dkms` (bifrost_testing.dkms_stub):
the lab cannot load a module for a lab host (the test machine's kernel loads none, and
a module is global to the machine anyway), so loading is stood in for at the same
boundary as DKMS.

The lab binds this over /usr/sbin/modprobe (kmod's one binary: rmmod too) and a
directory of the host's own over /sys/module inside the host's sshd mount namespace,
so the agent's code runs unchanged: `modprobe M` "loads" the version the stub DKMS has
installed for the running kernel (/sys/module/M/version appears), `rmmod M` removes it.
Each call is logged to the DKMS stub's calls.log (one ordered record of what the agent
did), and two flags in /var/lib/dkms make it fail as real hosts do:
``busy-M`` (rmmod: the module is in use) and ``shadow-M`` holding a version (modprobe
loads that one instead: an older .ko elsewhere in /lib/modules/K that depmod prefers).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

from bifrost_testing import dkms_stub

SYS_MODULE = Path("/sys/module")


def main(name: str, args: list[str]) -> int:
    with open(dkms_stub.STATE_DIR / dkms_stub.CALLS, "a") as log:
        log.write(shlex.join([name, *args]) + "\n")
    if len(args) != 1 or args[0].startswith("-"):
        print(f"{name}: stub: unsupported call {shlex.join(args)}", file=sys.stderr)
        return 2
    module = args[0]
    loaded = SYS_MODULE / module
    if name == "rmmod":
        if not loaded.is_dir():
            print(f"rmmod: ERROR: Module {module} is not currently loaded", file=sys.stderr)
            return 1
        if (dkms_stub.STATE_DIR / f"busy-{module}").exists():
            print(f"rmmod: ERROR: Module {module} is in use", file=sys.stderr)
            return 1
        shutil.rmtree(loaded)
        return 0
    if name != "modprobe":
        print(f"{name}: stub: only modprobe and rmmod", file=sys.stderr)
        return 2
    if loaded.is_dir():
        return 0  # modprobe of a loaded module does nothing
    kernel = os.uname().release
    shadow = dkms_stub.STATE_DIR / f"shadow-{module}"
    installed = [
        v for m, v, k, st in dkms_stub.load() if (m, k, st) == (module, kernel, "installed")
    ]
    version = shadow.read_text().strip() if shadow.exists() else next(iter(installed), None)
    if version is None:
        print(
            f"modprobe: FATAL: Module {module} not found in directory /lib/modules/{kernel}",
            file=sys.stderr,
        )
        return 1
    loaded.mkdir()
    (loaded / "version").write_text(version + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]).name, sys.argv[2:]))
