"""Schema of the [cache] section: bifrost_nf and bifrost-cached."""

from __future__ import annotations

from dataclasses import dataclass

from bifrost.config import Reader


@dataclass(frozen=True)
class CacheConfig:
    device: str


def parse(sec: Reader) -> CacheConfig:
    cfg = CacheConfig(device=sec.string("device", "/dev/bifrost_nf"))
    sec.done()
    return cfg
