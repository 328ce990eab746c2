"""Lint as tests, so `invoke test` counts it: ruff (check + format) and shellcheck."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bifrost.paths import SOURCE_ROOT

pytestmark = pytest.mark.unit

PY_PATHS = ["tools", "tests", "benchmarks", "tasks.py"]
# Shell scripts without a .sh name.
EXTRA_SHELL = [".ci/run"]


def _ruff() -> str:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is missing: ./setup.sh deps"
    return ruff


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=SOURCE_ROOT, capture_output=True, text=True, check=False)


def _existing(paths: list[str]) -> list[str]:
    return [p for p in paths if (SOURCE_ROOT / p).exists()]


def test_ruff_check() -> None:
    done = _run([_ruff(), "check", "--no-cache", *_existing(PY_PATHS)])
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_format() -> None:
    done = _run([_ruff(), "format", "--check", "--no-cache", *_existing(PY_PATHS)])
    assert done.returncode == 0, done.stdout + done.stderr


def shell_scripts() -> list[str]:
    listed = _run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.sh"])
    scripts = [s for s in listed.stdout.split() if not s.startswith(("build/", ".venv/"))]
    return sorted(set(scripts) | set(_existing(EXTRA_SHELL)))


def test_shellcheck() -> None:
    assert shutil.which("shellcheck"), "shellcheck is missing: apt-get install shellcheck"
    scripts = shell_scripts()
    assert "setup.sh" in scripts
    # -x follows `source`d files such as packaging/kernels.env.
    done = _run(["shellcheck", "-x", *scripts])
    assert done.returncode == 0, done.stdout + done.stderr
