"""The host's TOML config, validated into typed objects.

One file per host (default /etc/bifrost/bifrost.toml). Each component owns its
section's schema (``bifrost.xdp.config``, ``bifrost.bifrost_nf.config``,
``bifrost.fou_map.config``, ``bifrost.auth_config`` for [auth]), written with the reader of
``bifrost.config_schema``, whose errors always name the full key and the
offending value. This module puts the sections together; nothing imports it
back, so there is no import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bifrost.auth_config import AuthConfig
from bifrost.auth_config import parse as parse_auth
from bifrost.bifrost_nf.config import CacheConfig
from bifrost.bifrost_nf.config import parse as parse_cache
from bifrost.config_schema import ConfigError, Reader, read_toml
from bifrost.fou_map.config import FouMapConfig
from bifrost.fou_map.config import parse as parse_fou_map
from bifrost.paths import DEFAULT_CONFIG
from bifrost.xdp.config import XdpConfig
from bifrost.xdp.config import parse as parse_xdp

__all__ = ["Config", "ConfigError", "Reader", "load", "load_for_cli", "parse"]


@dataclass(frozen=True)
class Config:
    """The whole host config; a section is None when the host does not run that part."""

    source: Path | None
    xdp: XdpConfig | None
    cache: CacheConfig | None  # [cache]: bifrost_nf and bifrost-cached
    fou_map: FouMapConfig | None
    auth: AuthConfig | None = None  # [auth]: None means FOU is not authenticated


def parse(data: dict[str, Any], source: Path | None = None) -> Config:
    top = Reader(data)
    auth_sec = top.section("auth", optional=True)
    xdp_sec = top.section("xdp", optional=True)
    cache_sec = top.section("cache", optional=True)
    fm_sec = top.section("fou_map", optional=True)
    auth = parse_auth(auth_sec) if auth_sec else None
    cfg = Config(
        source=source,
        xdp=parse_xdp(xdp_sec, auth) if xdp_sec else None,
        cache=parse_cache(cache_sec) if cache_sec else None,
        fou_map=parse_fou_map(fm_sec) if fm_sec else None,
        auth=auth,
    )
    top.done()
    return cfg


def load(path: Path) -> Config:
    return parse(read_toml(path, "config"), path)


def load_for_cli(path: Path | None) -> Config:
    """The config a command was given: a file named on the command line must exist;
    without one, DEFAULT_CONFIG if it exists, else no sections (every default)."""
    if path is not None:
        return load(path)
    if DEFAULT_CONFIG.exists():
        return load(DEFAULT_CONFIG)
    return Config(source=None, xdp=None, cache=None, fou_map=None)
