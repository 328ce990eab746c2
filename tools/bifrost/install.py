"""Install Bifrost on a host (and remove it again): DKMS modules and system files.

`install()` builds and installs both modules through DKMS for every kernel that
has headers, runs depmod, and writes the udev rule, modules-load.d and
modprobe.d files, the example config (only when none exists) and the systemd
units (the two daemons' and the POP's XDP service, `bifrost xdp run`). Every
file and directory it creates is recorded in a manifest
(``/var/lib/bifrost/install-manifest``, JSON) so `uninstall()` removes exactly
those. With ``root`` other than ``/`` only the files are placed, under
that prefix, and nothing on the live system (DKMS, depmod, udev, systemd) is
touched: that is how the unit tests exercise both.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from bifrost import __version__, dkms
from bifrost import config as cfgmod
from bifrost.paths import DEFAULT_CONFIG, MODULES, SOURCE_ROOT, TEMPLATES_DIR

log = logging.getLogger(__name__)

MANIFEST = Path("/var/lib/bifrost/install-manifest")
EXAMPLE_CONFIG = SOURCE_ROOT / "etc" / "bifrost.example.toml"
UNITS = ("bifrost-foumapd.service", "bifrost-cached.service", "bifrost-xdp.service")

# template (under templates/) -> installed path
SYSTEM_FILES: dict[str, Path] = {
    "udev/60-bifrost.rules.j2": Path("/etc/udev/rules.d/60-bifrost.rules"),
    "modules-load/bifrost.conf.j2": Path("/etc/modules-load.d/bifrost.conf"),
    "modprobe/bifrost.conf.j2": Path("/etc/modprobe.d/bifrost.conf"),
    **{f"systemd/{u}.j2": Path("/etc/systemd/system") / u for u in UNITS},
}


class InstallError(RuntimeError):
    """A precondition is missing or a step failed; the message says how to fix it."""


@dataclass
class Manifest:
    """What install created: files with their sha256, directories, DKMS modules."""

    files: dict[str, str] = field(default_factory=dict)
    dirs: list[str] = field(default_factory=list)
    dkms_modules: list[str] = field(default_factory=list)
    kernels: list[str] = field(default_factory=list)
    version: str = __version__

    @classmethod
    def load(cls, path: Path) -> Manifest:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as e:
            raise InstallError(f"{path}: unreadable install manifest: {e}") from None
        return cls(
            files=dict(data.get("files", {})),
            dirs=list(data.get("dirs", [])),
            dkms_modules=list(data.get("dkms_modules", [])),
            kernels=list(data.get("kernels", [])),
            version=str(data.get("version", __version__)),
        )

    def dump(self) -> str:
        return json.dumps(self.__dict__, indent=2, sort_keys=True) + "\n"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _under(root: Path, path: Path) -> Path:
    """`path` (absolute, as on the live system) placed under the prefix `root`."""
    return root / path.relative_to("/")


def _run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    log.info("$ %s", shlex.join(argv))
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise InstallError(f"{shlex.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def venv_bin() -> Path:
    """The directory of the running interpreter: the venv whose console scripts run."""
    return Path(sys.executable).parent


def boot_modules(cfg: cfgmod.Config) -> list[str]:
    """Modules to load at boot: bifrost_nf on a POP ([cache]), fou_map on a game server."""
    mods = []
    if cfg.cache is not None:
        mods.append("bifrost_nf")
    if cfg.fou_map is not None:
        mods.append("fou_map")
    return mods


def render_files(cfg: cfgmod.Config, config_path: Path = DEFAULT_CONFIG) -> dict[Path, str]:
    """Installed path (live system) -> content, for every system file install writes."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    out = {}
    for tmpl, dest in SYSTEM_FILES.items():
        out[dest] = env.get_template(tmpl).render(
            template=f"tools/bifrost/templates/{tmpl}",
            source_root=SOURCE_ROOT,
            venv_bin=venv_bin(),
            config=config_path,
            modules=boot_modules(cfg),
        )
    return out


def require_root() -> None:
    if os.geteuid() != 0:
        raise InstallError("installing on this system needs root: sudo .venv/bin/invoke install")


def _mkdirs(root: Path, path: Path, manifest: Manifest) -> None:
    """Create the parents of `path`, recording each directory this created."""
    missing = []
    for parent in path.parents:
        if parent == Path("/") or _under(root, parent).exists():
            break
        missing.append(parent)
    for d in reversed(missing):
        _under(root, d).mkdir()
        if str(d) not in manifest.dirs:
            manifest.dirs.append(str(d))


def _place(root: Path, path: Path, data: bytes, manifest: Manifest, mode: int = 0o644) -> None:
    _mkdirs(root, path, manifest)
    target = _under(root, path)
    if not (target.exists() and target.read_bytes() == data):
        log.info("install: writing %s", path)
        target.write_bytes(data)
    target.chmod(mode)
    manifest.files[str(path)] = _sha256(data)


def install(
    root: Path = Path("/"),
    kernels: list[str] | None = None,
    config_path: Path | None = None,
    manifest_path: Path = MANIFEST,
) -> Manifest:
    """Install everything; idempotent. With root != '/' only place files under root.

    config_path: the operator's config, which must exist; None: DEFAULT_CONFIG,
    installed from the example when there is none.
    """
    live = root == Path("/")
    if live:
        require_root()
    if config_path is not None and not _under(root, config_path).exists():
        # A mistyped --config must not become a fresh copy of the example.
        raise InstallError(
            f"{config_path}: config file does not exist "
            f"(without --config, the example is installed as {DEFAULT_CONFIG})"
        )
    config_path = config_path or DEFAULT_CONFIG
    root.mkdir(parents=True, exist_ok=True)
    manifest = Manifest.load(_under(root, manifest_path))

    # The config: never overwrite the operator's; install the example if none exists.
    target_cfg = _under(root, config_path)
    if not target_cfg.exists() or str(config_path) in manifest.files:
        if target_cfg.exists() and _sha256(target_cfg.read_bytes()) != manifest.files.get(
            str(config_path)
        ):
            log.info("install: keeping the edited %s", config_path)
        else:
            _place(root, config_path, EXAMPLE_CONFIG.read_bytes(), manifest, mode=0o640)
    try:
        cfg = cfgmod.load(target_cfg)
    except cfgmod.ConfigError as e:
        raise InstallError(f"bad config: {e}") from None

    if live:
        kernels = kernels or dkms.kernels_with_headers()
        if not kernels:
            raise InstallError(
                "no kernel headers installed: apt-get install linux-headers-$(uname -r)"
            )
        try:
            dkms.build(kernels, install=True)
        except dkms.DkmsError as e:
            raise InstallError(str(e)) from None
        manifest.dkms_modules = sorted(set(manifest.dkms_modules) | set(MODULES))
        manifest.kernels = sorted(set(manifest.kernels) | set(kernels))
        for kver in kernels:
            _run(["depmod", "-a", kver])

    for path, text in render_files(cfg, config_path).items():
        _place(root, path, text.encode(), manifest)

    _mkdirs(root, manifest_path, manifest)
    _under(root, manifest_path).write_text(manifest.dump())
    if live:
        _reload_system()
    return manifest


def _reload_system() -> None:
    """Let udev and systemd see the new files; fine when either is not running."""
    if shutil.which("udevadm") and Path("/run/udev/control").exists():
        _run(["udevadm", "control", "--reload"], check=False)
        _run(["udevadm", "trigger", "--subsystem-match=misc"], check=False)
    if Path("/run/systemd/system").is_dir():
        _run(["systemctl", "daemon-reload"], check=False)


def uninstall(root: Path = Path("/"), manifest_path: Path = MANIFEST) -> list[str]:
    """Remove what the manifest lists (and dkms remove); return what was kept and why."""
    live = root == Path("/")
    if live:
        require_root()
    mpath = _under(root, manifest_path)
    if not mpath.exists():
        raise InstallError(f"{manifest_path} not found: nothing to uninstall (was it installed?)")
    manifest = Manifest.load(mpath)
    kept = []
    if live:
        if Path("/run/systemd/system").is_dir():
            _run(["systemctl", "disable", "--now", *UNITS], check=False)
        if manifest.dkms_modules:
            dkms.remove(tuple(manifest.dkms_modules))
            for kver in manifest.kernels:
                if Path(f"/lib/modules/{kver}").is_dir():
                    _run(["depmod", "-a", kver], check=False)
    for name, digest in manifest.files.items():
        target = _under(root, Path(name))
        if not target.exists():
            continue
        if _sha256(target.read_bytes()) != digest:
            kept.append(f"{name}: changed since install, kept")
            continue
        log.info("uninstall: removing %s", name)
        target.unlink()
    mpath.unlink()
    for d in sorted(manifest.dirs, key=lambda p: len(Path(p).parts), reverse=True):
        target = _under(root, Path(d))
        try:
            target.rmdir()
        except FileNotFoundError:
            pass
        except OSError:
            kept.append(f"{d}: not empty, kept")
    if live:
        _reload_system()
    return kept
