"""DKMS packaging: stage each module's source under /usr/src and build it per kernel."""

from __future__ import annotations

import logging
import re
import shlex
import shutil
import subprocess
from pathlib import Path

from bifrost import __version__, codegen
from bifrost.paths import KMOD_DIR, MODULES

log = logging.getLogger(__name__)

SRC_ROOT = Path("/usr/src")
# Kbuild artifacts never belong in the staged source.
_IGNORE = shutil.ignore_patterns(
    "*.o",
    "*.ko",
    "*.ko.xz",
    "*.mod",
    "*.mod.c",
    "*.cmd",
    ".*.cmd",
    "modules.order",
    "Module.symvers",
    ".tmp_versions",
    ".cache.mk",
    "*.dwo",
    ".*.d",
)


class DkmsError(RuntimeError):
    """dkms is missing or failed; the message says what to run."""


def _run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    log.info("$ %s", shlex.join(argv))
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise DkmsError(
            f"{shlex.join(argv)} failed (exit {done.returncode}):\n{done.stdout}{done.stderr}"
        )
    return done


def require_dkms() -> None:
    if shutil.which("dkms") is None:
        raise DkmsError("dkms is not installed: apt-get install dkms (or ./setup.sh deps)")


def kernels_with_headers() -> list[str]:
    """Installed kernels whose headers are installed too (what DKMS can build for)."""
    out = []
    for mod_dir in sorted(Path("/lib/modules").glob("*")):
        if (mod_dir / "build" / "Makefile").exists():
            out.append(mod_dir.name)
    return out


def require_headers(kver: str) -> None:
    if not Path(f"/lib/modules/{kver}/build/Makefile").exists():
        raise DkmsError(f"no kernel headers for {kver}: apt-get install linux-headers-{kver}")


def source_dir(module: str, version: str = __version__) -> Path:
    return SRC_ROOT / f"{module}-{version}"


def source_files(root: Path) -> dict[str, bytes]:
    """relative path -> content of every source file, Kbuild artifacts left out."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(_IGNORE(str(p.parent), [p.name]) for p in (root / part for part in _parts(rel))):
            continue
        if path.is_file():
            out[rel.as_posix()] = path.read_bytes()
    return out


def _parts(rel: Path) -> list[Path]:
    """a/b/c -> [a, a/b, a/b/c]: a file is ignored when any of its path parts is."""
    return [Path(*rel.parts[: i + 1]) for i in range(len(rel.parts))]


COMMON = "common"
VERSION_HEADER = f"{COMMON}/bifrost_version.h"


def version_header(version: str = __version__) -> str:
    """The modules' version, derived from bifrost.__version__ (defined once)."""
    return (
        "/* SPDX-License-Identifier: GPL-2.0 */\n"
        "/* GENERATED from bifrost.__version__ by tools/bifrost/dkms.py; do not edit. */\n"
        "#ifndef _BIFROST_VERSION_H\n"
        "#define _BIFROST_VERSION_H\n"
        f'#define BIFROST_VERSION "{version}"\n'
        "#endif\n"
    )


def staged_tree(module: str) -> dict[str, bytes]:
    """relative path -> content of what /usr/src/<module>-<version> must hold.

    DKMS builds each module from its own tree, so the chardev helpers both
    modules share (kmod/common/) are copied in as common/, with the version
    header rendered fresh from bifrost.__version__.
    """
    files = source_files(KMOD_DIR / module)
    for rel, data in source_files(KMOD_DIR / COMMON).items():
        files[f"{COMMON}/{rel}"] = data
    files[VERSION_HEADER] = version_header().encode()
    files["dkms.conf"] = codegen.render_dkms_conf(module).encode()
    return files


def stage(module: str) -> bool:
    """Write kmod/<module>, kmod/common and its dkms.conf to /usr/src; True when it changed."""
    want = staged_tree(module)
    dst = source_dir(module)
    if dst.is_dir() and source_files(dst) == want:
        return False
    if dst.exists():
        # The source changed under the same version: DKMS must forget the old build.
        _run(["dkms", "remove", f"{module}/{__version__}", "--all"], check=False)
        shutil.rmtree(dst, ignore_errors=True)
    for rel, data in want.items():
        path = dst / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return True


# `dkms status` of DKMS 3.0.x (Debian 12's 3.0.10), one line per module version:
#   fou_map/0.1.0: added
#   fou_map/0.1.0, 6.1.0-56-amd64, x86_64: installed
#   fou_map/0.1.0, 6.1.0-56-amd64, x86_64: installed (WARNING! Diff between built and ...)
#   fou_map, 0.1.0, 6.12.117+deb12-amd64, x86_64: installed-weak from 6.12.110+deb12-amd64
# The parenthesised notes after a state (original_module exists, WARNING!...) are not
# part of it; anything else on stdout (a deprecation warning) is not a status line.
_STATUS_LINE = re.compile(
    r"(?P<m>[^/,\s]+)(?:/|, )(?P<v>[^,:\s]+)(?:, (?P<k>[^,\s]+), [^:,\s]+)?: "
    r"(?P<s>added|built|installed(?:-weak)?)(?: |$)"
)


def parse_status(text: str, module: str) -> dict[tuple[str, str | None], str]:
    """(version, kernel; None for a version only added) -> state, from `dkms status`."""
    out: dict[tuple[str, str | None], str] = {}
    for line in text.splitlines():
        m = _STATUS_LINE.match(line.strip())
        if m and m["m"] == module and (m["k"] is None) == (m["s"] == "added"):
            out[(m["v"], m["k"])] = m["s"]
    return out


def status_all(module: str) -> dict[tuple[str, str | None], str]:
    """Every version of module DKMS knows: (version, kernel) -> state."""
    return parse_status(_run(["dkms", "status", module], check=False).stdout, module)


def status(module: str, version: str = __version__) -> dict[str, str]:
    """kernel -> state ("built", "installed", ...) of this release's build of module."""
    return {k: s for (v, k), s in status_all(module).items() if v == version and k}


def build(kernels: list[str], install: bool = False, modules: tuple[str, ...] = MODULES) -> None:
    """dkms add + build (+ install) every module for every kernel."""
    require_dkms()
    for kver in kernels:
        require_headers(kver)
    for module in modules:
        stage(module)
        if not Path(f"/var/lib/dkms/{module}/{__version__}/source").exists():
            _run(["dkms", "add", f"{module}/{__version__}"])
        for kver in kernels:
            state = status(module).get(kver, "added")
            if state == "added":
                done = _run(["dkms", "build", f"{module}/{__version__}", "-k", kver], check=False)
                if done.returncode != 0:
                    log_path = Path(f"/var/lib/dkms/{module}/{__version__}/build/make.log")
                    detail = log_path.read_text()[-4000:] if log_path.exists() else done.stdout
                    raise DkmsError(f"dkms build of {module} for {kver} failed:\n{detail}")
            if install and status(module).get(kver) != "installed":
                _run(["dkms", "install", f"{module}/{__version__}", "-k", kver, "--force"])


def remove(modules: tuple[str, ...] = MODULES) -> None:
    """dkms remove every version of every module and its staged source."""
    for module in modules:
        _run(["dkms", "remove", f"{module}/{__version__}", "--all"], check=False)
        shutil.rmtree(source_dir(module), ignore_errors=True)
