"""Build the test VM's tiny initramfs: busybox, /init and the modules 9p needs."""

from __future__ import annotations

import gzip
import hashlib
import logging
import lzma
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

BUSYBOX = Path("/bin/busybox")
INIT = Path(__file__).with_name("init.sh")
# Only what is needed before the 9p root is mounted; everything else is loaded
# later from the host's /lib/modules/$KVER, seen through the shared root.
EARLY_MODULES = ("virtio_pci", "9pnet_virtio", "9p")


def _module_chain(kver: str, module: str) -> list[Path]:
    out = subprocess.run(
        ["modprobe", "-S", kver, "--show-depends", module],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [Path(line.split()[1]) for line in out.splitlines() if line.startswith("insmod ")]


def _decompress(src: Path, dst_dir: Path) -> str:
    name = src.name
    if name.endswith(".xz"):
        name = name[:-3]
        (dst_dir / name).write_bytes(lzma.decompress(src.read_bytes()))
    elif name.endswith(".zst"):
        name = name[:-4]
        subprocess.run(["zstd", "-qdf", str(src), "-o", str(dst_dir / name)], check=True)
    else:
        shutil.copy(src, dst_dir / name)
    return name


def build(kver: str, out_dir: Path) -> Path:
    """Return the initramfs for kver, rebuilding it only when /init changed."""
    if (
        not BUSYBOX.exists()
        or b"statically linked"
        not in subprocess.run(["file", "-L", str(BUSYBOX)], capture_output=True, check=False).stdout
    ):
        raise RuntimeError("the test VM needs busybox-static: apt-get install busybox-static")
    digest = hashlib.sha256(INIT.read_bytes() + " ".join(EARLY_MODULES).encode()).hexdigest()[:12]
    out = out_dir / f"initramfs-{kver}-{digest}.cpio.gz"
    if out.exists():
        return out
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for d in ("bin", "dev", "proc", "sys", "newroot", "lib/modules", "tmp"):
            (root / d).mkdir(parents=True)
        shutil.copy(BUSYBOX, root / "bin/busybox")
        shutil.copy(INIT, root / "init")
        (root / "init").chmod(0o755)
        order: list[str] = []
        for mod in EARLY_MODULES:
            for ko in _module_chain(kver, mod):
                name = _decompress(ko, root / "lib/modules")
                if name not in order:
                    order.append(name)
        (root / "lib/modules/load.order").write_text("\n".join(order) + "\n")
        files = subprocess.run(["find", "."], cwd=root, check=True, capture_output=True).stdout
        cpio = subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet"],
            cwd=root,
            input=files,
            check=True,
            capture_output=True,
        ).stdout
    tmp_out = out.with_suffix(f".{os.getpid()}.tmp")  # concurrent builders never collide
    tmp_out.write_bytes(gzip.compress(cpio, compresslevel=1))
    tmp_out.rename(out)
    log.info("built %s (early modules: %s)", out, " ".join(order))
    return out
