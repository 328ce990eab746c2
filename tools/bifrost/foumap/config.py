"""Schema of the [fou_map] section: the fou_map module and bifrost-foumapd."""

from __future__ import annotations

from dataclasses import dataclass

from bifrost.config import Reader


@dataclass(frozen=True)
class FouMapConfig:
    device: str


def parse(sec: Reader) -> FouMapConfig:
    cfg = FouMapConfig(device=sec.string("device", "/dev/fou_map"))
    sec.done()
    return cfg
