"""The CLI on a host without bpffs: attach, apply, status, run and detach mount it themselves.

Each case runs the real `bifrost` in a private mount namespace (`unshare -m`,
private propagation) in which /sys/fs/bpf is unmounted first, so it sees what
a host whose PID 1 is not systemd sees, whatever this host has mounted; and
the host's own mounts are checked to be untouched afterwards.

::

    [pop] x0 10.8.0.1 ---- 10.8.0.2 y0 [peer]
          bifrost_xdp attached by the CLI
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from xdp_harness import compile_object, x0_link, xdp_toml

from bifrost.netns import Namespace
from bifrost.xdp import bpffs, libbpf

pytestmark = pytest.mark.bpf

BIFROST = Path(sys.executable).parent / "bifrost"

# Take every bpffs off /sys/fs/bpf in this (private) mount namespace, and prove it.
UNMOUNT = (
    "while mountpoint -q /sys/fs/bpf; do umount /sys/fs/bpf; done\n"
    'test "$(stat -f -c %T /sys/fs/bpf)" != bpf_fs\n'
)


def host_bpffs() -> tuple[bool, int]:
    return os.path.ismount(bpffs.ROOT), bpffs.fs_type(bpffs.ROOT)


def without_bpffs(script: str) -> list[str]:
    """argv: script under sh -e in a private mount namespace with /sys/fs/bpf unmounted."""
    return ["unshare", "-m", "--propagation", "private", "sh", "-ec", UNMOUNT + script]


@pytest.fixture
def pop() -> Iterator[tuple[Namespace, Namespace]]:
    with x0_link("bfx-bpffs") as net:
        yield net


def prog_id(ns: Namespace) -> int:
    with ns.entered():
        return libbpf.xdp_query_id(socket.if_nametoindex("x0"))


def test_attach_apply_status_detach_mount_bpffs_at_sys_fs_bpf(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, pop: tuple[Namespace, Namespace]
) -> None:
    obj = compile_object(tmp_path_factory.mktemp("bpffs"))
    pins = bpffs.ROOT / f"bfx-test-bpffs-{os.getpid()}"
    cfg = tmp_path / "bifrost.toml"
    cfg.write_text(xdp_toml(pins))
    before = host_bpffs()
    cli = f"nsenter --net=/run/netns/{pop[0].name} {BIFROST} -c {cfg} xdp"
    script = (
        f"{cli} attach --obj {obj}\n"
        'echo "fs after attach: $(stat -f -c %T /sys/fs/bpf)"\n'
        f"test -e {pins}/x0/rule_slots\n"
        f"{cli} apply\n"
        f"{cli} status\n"
        f"{cli} detach\n"
        f"test ! -e {pins}/x0\n"
    )
    done = subprocess.run(without_bpffs(script), capture_output=True, text=True, timeout=60)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "fs after attach: bpf_fs" in out
    assert "x0: attached (native)" in out
    assert "x0: detached" in out
    assert prog_id(pop[0]) == 0
    assert host_bpffs() == before  # the mount stayed in the private namespace


def test_run_mounts_bpffs_on_a_pin_dir_outside_sys_fs_bpf(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, pop: tuple[Namespace, Namespace]
) -> None:
    """`bifrost xdp run` (bifrost-xdp.service) with xdp.pin_dir elsewhere: bpffs goes on
    the pin dir itself, the program is attached and READY=1 sent; SIGTERM stops it."""
    obj = compile_object(tmp_path_factory.mktemp("bpffs"))
    pins = tmp_path / "pins"
    cfg = tmp_path / "bifrost.toml"
    cfg.write_text(xdp_toml(pins))
    notify_path = tmp_path / "notify"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(30)
    log = tmp_path / "run.log"
    before = host_bpffs()
    run = shlex.join(
        [
            *("nsenter", f"--net=/run/netns/{pop[0].name}", str(BIFROST), "xdp", "run"),
            *("--config", str(cfg), "--obj", str(obj)),
        ]
    )
    with log.open("wb") as out:
        proc = subprocess.Popen(
            without_bpffs(f"exec {run}"),
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NOTIFY_SOCKET": str(notify_path)},
        )
    try:
        assert notify.recv(4096) == b"READY=1", log.read_text()
        assert prog_id(pop[0]) != 0
        assert f"mounted a BPF filesystem on {pins}" in log.read_text()
        proc.terminate()
        assert proc.wait(20) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()
    assert host_bpffs() == before
    assert not os.path.ismount(pins)  # it was mounted in the private namespace only
