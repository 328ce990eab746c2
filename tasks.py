"""Invoke tasks: thin wrappers over the bifrost package. `invoke --list` lists them."""

from __future__ import annotations

import functools
import logging
import os
import pwd
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from bifrost import bench as benchmod
from bifrost import codegen, dkms, testrun, vm
from bifrost import config as cfgmod
from bifrost import install as installmod
from bifrost import status as statusmod
from bifrost.paths import BUILD_DIR, DEFAULT_CONFIG, SOURCE_ROOT
from bifrost.xdp import build as xdp_build
from bifrost_testing import system as lab_system

EXAMPLE_CONFIG = SOURCE_ROOT / "etc" / "bifrost.example.toml"

logging.basicConfig(level=logging.INFO, format="%(message)s")


def _config_path(path: str | None) -> Path:
    if path:
        return Path(path)
    return DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else EXAMPLE_CONFIG


def _owner(path: Path) -> str:
    """Who owns path, or its nearest existing parent."""
    for p in (path, *path.parents):
        try:
            return pwd.getpwuid(p.stat().st_uid).pw_name
        except (OSError, KeyError):
            continue
    return "root"


def _no_traceback(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A missing privilege ends the task with what is needed, not a Python traceback."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def body(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except PermissionError as e:
                where = Path(e.filename) if e.filename else SOURCE_ROOT
                raise Exit(
                    f"{name}: permission denied on {where} (owned by {_owner(where)}): run it as "
                    f"that user, or as root: sudo .venv/bin/invoke {name}"
                ) from None

        return body

    return wrap


def _load_config(path: Path, what: str) -> cfgmod.Config:
    if path.exists() and not os.access(path, os.R_OK):
        raise Exit(
            f"{what}: {path} is not readable by this user: run as root "
            f"(sudo .venv/bin/invoke {what}) or pass --config FILE"
        )
    try:
        return cfgmod.load(path)
    except cfgmod.ConfigError as e:
        raise Exit(f"bad config: {e}") from None


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise Exit(f"{what} needs root: sudo .venv/bin/invoke {what}")


def _require_tools(*tools: str) -> None:
    """Each missing tool ends the task with the apt command that installs it."""
    packages = {"dkms": "dkms", "clang": "clang", "qemu-system-x86_64": "qemu-system-x86"}
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pkgs = " ".join(packages.get(t, t) for t in missing)
        raise Exit(f"missing {', '.join(missing)}: apt-get install {pkgs} (or ./setup.sh deps)")


def _require_kernel(kver: str, boot: bool = False) -> None:
    """Headers to build for `kver`; with boot, its image to start the test VM too."""
    try:
        dkms.require_headers(kver)
        if boot:
            vm.runner.check_host(kver)
    except (dkms.DkmsError, RuntimeError) as e:
        raise Exit(str(e)) from None


def kernel_lines() -> list[str]:
    """The kernels the project tests on (packaging/kernels.env): 6.1 first, then 6.12."""
    return testrun.kernel_lines()


@task(help={"config": f"host config (default: {DEFAULT_CONFIG}, else {EXAMPLE_CONFIG.name})"})
@_no_traceback("generate")
def generate(c: Context, config: str | None = None) -> None:
    """Render generated files: uapi headers, codecs, XDP map header, dkms.conf, module_config.h."""
    path = _config_path(config)
    cfg = _load_config(path, "generate")
    modules = list(cfg.xdp.modules) if cfg.xdp else []
    written = codegen.write(codegen.committed_outputs() + codegen.build_outputs(modules, str(path)))
    print(f"generate: {len(written)} file(s) changed")


@task(
    help={
        "kernel": "kernel release to build for (default: every kernel with headers)",
        "config": "host config for module_config.h (as for generate)",
    },
)
@_no_traceback("build")
def build(c: Context, kernel: str | None = None, config: str | None = None) -> None:
    """Build both kernel modules through DKMS (warnings are errors) and the XDP program."""
    _require_root("build")
    generate(c, config)
    _require_tools("dkms")
    kernels = [kernel] if kernel else dkms.kernels_with_headers()
    if not kernels:
        raise Exit("no kernel headers installed: apt-get install linux-headers-$(uname -r)")
    for k in kernels:
        _require_kernel(k)
    try:
        dkms.build(kernels)
    except dkms.DkmsError as e:
        raise Exit(str(e)) from None
    print(f"build: {', '.join(dkms.MODULES)} built for {', '.join(kernels)}")
    _require_tools("clang")
    try:
        obj = xdp_build.compile_program(BUILD_DIR / "xdp" / "module_config.h", BUILD_DIR / "xdp")
    except xdp_build.BuildError as e:
        raise Exit(f"XDP build failed: {e}") from None
    print(f"build: XDP program {obj}")


@task(
    help={
        "kernel": "kernel release (repeatable; default: every kernel with headers)",
        "root": "place files under this prefix instead of / (no DKMS, no live system change)",
        "config": f"existing config the units and modules-load.d follow (default {DEFAULT_CONFIG},"
        " installed from the example when missing)",
    },
    iterable=["kernel"],
)
@_no_traceback("install")
def install(
    c: Context, kernel: list[str] | None = None, root: str = "/", config: str | None = None
) -> None:
    """Install: DKMS build+install, depmod, udev rule, modules-load.d, modprobe.d, units."""
    prefix = Path(root)
    if prefix == Path("/"):
        _require_root("install")
        _require_tools("dkms")
    try:
        manifest = installmod.install(prefix, kernel or None, Path(config) if config else None)
    except installmod.InstallError as e:
        raise Exit(str(e)) from None
    print(f"install: {len(manifest.files)} file(s) recorded in {installmod.MANIFEST}")
    for f in sorted(manifest.files):
        print(f"  {f}")
    if manifest.dkms_modules:
        print(f"  dkms: {', '.join(manifest.dkms_modules)} for {', '.join(manifest.kernels)}")


@task(help={"root": "the prefix given to install --root (default /)"})
@_no_traceback("uninstall")
def uninstall(c: Context, root: str = "/") -> None:
    """Remove exactly what install created (its manifest) and dkms remove both modules."""
    if Path(root) == Path("/"):
        _require_root("uninstall")
    try:
        kept = installmod.uninstall(Path(root))
    except installmod.InstallError as e:
        raise Exit(str(e)) from None
    for k in kept:
        print(f"uninstall: {k}")
    print("uninstall: done")


@task
@_no_traceback("status")
def status(c: Context) -> None:
    """Show DKMS state per kernel, loaded modules, device nodes and daemon states."""
    print(statusmod.render(statusmod.collect()))


@task(
    name="vm",
    help={
        "kernel": "kernel release to boot (default: the 6.1 line of packaging/kernels.env)",
        "timeout": "seconds before the guest is killed",
        "append": "extra guest kernel arguments, e.g. --append 'slub_debug=U,kmalloc-8'"
        " (repeatable; console, panic, oops and bifrost.* are the runner's own)",
    },
    iterable=["append"],
)
@_no_traceback("vm")
def vm_run(
    c: Context, kernel: str | None = None, timeout: int = 600, append: list[str] | None = None
) -> None:
    """Boot the test VM and run the shell command given after `--`: invoke vm -- uname -r."""
    if not c.remainder:
        raise Exit("nothing to run: invoke vm -- COMMAND")
    kver = kernel or kernel_lines()[0]
    _require_kernel(kver, boot=True)
    try:
        result = vm.run(kver, c.remainder, timeout=timeout, append=append or [])
    except (ValueError, RuntimeError, vm.GuestFailure) as e:
        raise Exit(str(e)) from None
    raise Exit(code=result.rc)


@task(help={"kernel": "kernel release to boot (default: the 6.1 line)"})
def lab(c: Context, kernel: str | None = None) -> None:
    """Run the lab in the guest: A2S, SRCDS/Steam/RakNet clients and a POP move, per hop.

    Builds what the lab uses (DKMS modules, the XDP object), boots the guest, runs
    a client's session through two POPs and a game server and prints the counters
    of every hop."""
    _require_root("lab")
    _require_tools("dkms", "clang", "qemu-system-x86_64")
    kver = kernel or kernel_lines()[0]
    _require_kernel(kver, boot=True)
    try:
        dkms.build([kver], install=True)
        obj = lab_system.build_object()
        print(f"lab: XDP program {obj}")
        result = vm.run(
            kver, "BIFROST_GUEST=1 .venv/bin/python -m bifrost_testing.lab", timeout=1800
        )
    except (dkms.DkmsError, xdp_build.BuildError, RuntimeError, vm.GuestFailure) as e:
        raise Exit(f"lab FAILED on {kver}: {e}") from None
    verdict = "OK" if result.rc == 0 else f"FAILED (rc {result.rc})"
    print(f"\nlab on {kver}: {verdict} in {result.seconds:.0f}s (per-hop table above)")
    raise Exit(code=result.rc)


@task(
    help={
        "kernel": "test one kernel line only (default: both lines of packaging/kernels.env)",
        "tier": f"one tier only: {', '.join(testrun.TIERS)} (default: all)",
    }
)
@_no_traceback("test")
def test(c: Context, kernel: str | None = None, tier: str | None = None) -> None:
    """Run the whole suite: lint+unit, bpf, DKMS build, kernel tier per kernel, DKMS upgrade."""
    tiers = (tier,) if tier else testrun.TIERS
    if tier and tier not in testrun.TIERS:
        raise Exit(f"unknown tier {tier!r}: choose from {', '.join(testrun.TIERS)}")
    if kernel and kernel not in kernel_lines():
        raise Exit(f"{kernel} is not a tested line ({', '.join(kernel_lines())})")
    if tiers != ("unit",):
        _require_root("test")
    if {"kernel", "upgrade"} & set(tiers):
        _require_tools("dkms", "qemu-system-x86_64")
        for k in kernel_lines() if "upgrade" in tiers or not kernel else [kernel]:
            _require_kernel(k, boot=True)
    if "upgrade" in tiers and kernel and not tier:
        tiers = tuple(t for t in tiers if t != "upgrade")  # the upgrade needs both lines
    raise Exit(code=testrun.run(tiers, [kernel] if kernel else None))


@task(
    help={
        "kernel": "kernel to boot for guest benchmarks (default: the 6.1 line)",
        "only": "run only benchmarks whose file name contains this",
    }
)
@_no_traceback("bench")
def bench(c: Context, kernel: str | None = None, only: str | None = None) -> None:
    """Run benchmarks/bench_*.py: host ones here, guest ones in ONE guest boot."""
    kver = kernel or kernel_lines()[0]
    guest = any(b.where == "guest" for b in benchmod.discover())
    if guest:
        _require_root("bench")
        _require_tools("dkms", "qemu-system-x86_64")
        _require_kernel(kver, boot=True)
    try:
        rc = benchmod.run(kver, only)
    except (dkms.DkmsError, RuntimeError) as e:
        raise Exit(str(e)) from None
    raise Exit(code=rc)
