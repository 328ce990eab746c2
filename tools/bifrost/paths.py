"""Where things live: the source tree, generated files and installed files."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
SOURCE_ROOT = PACKAGE_DIR.parent.parent
KMOD_DIR = SOURCE_ROOT / "kmod"
XDP_DIR = SOURCE_ROOT / "xdp"
BUILD_DIR = SOURCE_ROOT / "build"
TEMPLATES_DIR = PACKAGE_DIR / "templates"

DEFAULT_CONFIG = Path("/etc/bifrost/bifrost.toml")
MODULES = ("bifrost_nf", "fou_map")
