"""Invoke tasks: thin wrappers over the bifrost package. `invoke --list` lists them."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from bifrost import codegen, dkms, vm
from bifrost import config as cfgmod
from bifrost.paths import DEFAULT_CONFIG, SOURCE_ROOT

EXAMPLE_CONFIG = SOURCE_ROOT / "etc" / "bifrost.example.toml"

logging.basicConfig(level=logging.INFO, format="%(message)s")


def _config_path(path: str | None) -> Path:
    if path:
        return Path(path)
    return DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else EXAMPLE_CONFIG


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise Exit(f"{what} needs root: sudo .venv/bin/invoke {what}")


@task(help={"config": f"host config (default: {DEFAULT_CONFIG}, else {EXAMPLE_CONFIG.name})"})
def generate(c: Context, config: str | None = None) -> None:
    """Render generated sources: uapi headers, Python codecs, dkms.conf, module_config.h."""
    path = _config_path(config)
    try:
        cfg = cfgmod.load(path)
    except cfgmod.ConfigError as e:
        raise Exit(f"bad config: {e}") from None
    modules = list(cfg.xdp.modules) if cfg.xdp else []
    written = codegen.write(codegen.abi_outputs() + codegen.build_outputs(modules, str(path)))
    print(f"generate: {len(written)} file(s) changed")


@task(
    pre=[generate],
    help={"kernel": "kernel release to build for (default: every kernel with headers)"},
)
def build(c: Context, kernel: str | None = None) -> None:
    """Build both kernel modules through DKMS (warnings are errors) and the XDP program."""
    _require_root("build")
    kernels = [kernel] if kernel else dkms.kernels_with_headers()
    if not kernels:
        raise Exit("no kernel headers installed: apt-get install linux-headers-$(uname -r)")
    try:
        dkms.build(kernels)
    except dkms.DkmsError as e:
        raise Exit(str(e)) from None
    print(f"build: {', '.join(dkms.MODULES)} built for {', '.join(kernels)}")


@task(
    name="vm",
    help={
        "kernel": "kernel release to boot (default: the 6.1 line of packaging/kernels.env)",
        "timeout": "seconds before the guest is killed",
    },
)
def vm_run(c: Context, kernel: str | None = None, timeout: int = 600) -> None:
    """Boot the test VM and run the shell command given after `--`: invoke vm -- uname -r."""
    if not c.remainder:
        raise Exit("nothing to run: invoke vm -- COMMAND")
    kver = kernel or kernel_lines()[0]
    try:
        result = vm.run(kver, c.remainder, timeout=timeout)
    except (RuntimeError, vm.GuestFailure) as e:
        raise Exit(str(e)) from None
    raise Exit(code=result.rc)


def kernel_lines() -> list[str]:
    """The kernels the project tests on (packaging/kernels.env): 6.1 first, then 6.12."""
    env = SOURCE_ROOT / "packaging" / "kernels.env"
    return [
        line.split("=", 1)[1].strip()
        for line in env.read_text().splitlines()
        if line.startswith("KERNEL_")
    ]
