"""Schema of the [xdp] section: the POP's XDP program."""

from __future__ import annotations

from dataclasses import dataclass

from bifrost.codegen import GAME_MODULE_DEFINES
from bifrost.config import Reader


def _game_module(value: object) -> str:
    if value not in GAME_MODULE_DEFINES:
        raise ValueError(f"unknown game module; known: {', '.join(sorted(GAME_MODULE_DEFINES))}")
    return str(value)


@dataclass(frozen=True)
class XdpConfig:
    # Game handshake modules compiled in (module_config.h); rules choose which apply.
    modules: tuple[str, ...]


def parse(sec: Reader) -> XdpConfig:
    cfg = XdpConfig(modules=tuple(sec.items("modules", _game_module, default=[])))
    sec.done()
    return cfg
