"""Make sure a pin directory lies on a BPF filesystem, mounting one when it is missing.

Pins (maps, links, programs) exist only on bpffs. systemd mounts it at
/sys/fs/bpf at boot, but a host whose PID 1 is not systemd (containers, many
CI runners, a test VM's own init) and a private mount namespace (`unshare -m`,
`ip netns exec`, which remounts /sys) have none there. So, as libxdp and
bpftool do, whoever pins mounts it first: at /sys/fs/bpf for a pin directory
under it (the directory sysfs provides for that), else on the pin directory
itself (as bpftool's mount_bpffs_for_pin), mode 0700 like systemd's.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

ROOT = Path("/sys/fs/bpf")
BPF_FS_MAGIC = 0xCAFE4A11  # include/uapi/linux/magic.h
MOUNT_HINT = "mount -t bpf bpf {target}"


class BpfFsError(OSError):
    """No bpffs where the pins go, and mounting one failed."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def fs_type(path: str | os.PathLike[str]) -> int:
    """statfs(2)'s f_type (the first member, a long, on every Linux ABI)."""
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit
    if _libc().statfs(os.fsencode(path), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"statfs {path}: {os.strerror(err)}")
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def _existing(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def on_bpffs(path: str | os.PathLike[str]) -> bool:
    """Whether path (or, if it does not exist yet, its nearest existing parent) is on bpffs."""
    return fs_type(_existing(Path(path).absolute())) == BPF_FS_MAGIC


def mount_target(pin_dir: str | os.PathLike[str]) -> Path:
    """Where a bpffs for pin_dir goes: /sys/fs/bpf if under it, else pin_dir itself."""
    p = Path(pin_dir).absolute()
    return ROOT if p == ROOT or ROOT in p.parents else p


def ensure(pin_dir: str | os.PathLike[str]) -> Path | None:
    """Mount a bpffs for pin_dir if it is not on one; the mount point if mounted, else None."""
    if on_bpffs(pin_dir):
        return None
    target = mount_target(pin_dir)
    if target != ROOT:
        target.mkdir(parents=True, exist_ok=True)
    elif not target.is_dir():
        raise BpfFsError(errno.ENOENT, f"{target} does not exist: is sysfs mounted on /sys?")
    rc = _libc().mount(b"bpf", os.fsencode(target), b"bpf", 0, b"mode=0700")
    if rc != 0:
        err = ctypes.get_errno()
        raise BpfFsError(
            err,
            f"{pin_dir} is not on a BPF filesystem and mounting one on {target} failed "
            f"({os.strerror(err)}): run `{MOUNT_HINT.format(target=target)}` as root",
        )
    log.info("mounted a BPF filesystem on %s (none was there)", target)
    return target
