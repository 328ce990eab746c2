"""The example config's game rules name the modules that fit their games (README table)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bifrost import config
from bifrost.xdp import maps_def

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parents[2] / "etc" / "bifrost.example.toml"


def test_example_rules_use_the_module_of_their_game() -> None:
    cfg = config.load(EXAMPLE).xdp
    assert cfg is not None
    mods = {r.name: r.modules for r in cfg.rules}
    # CS2 connects through Steam networking: SRCDS's module would drop every player.
    assert mods["cs2"] == ("steam",)
    assert mods["tf2"] == ("srcds",)
    assert mods["rust"] == ("rust",)
    assert mods["ue4-game"] == ("ue3",)
    assert set(cfg.modules) == set(maps_def.AVAILABLE_MODULES)


def test_every_game_module_is_compiled_by_a_define() -> None:
    """No reserved module left: each has a define and a distinct rule_modules bit."""
    assert {m.name for m in maps_def.GAME_MODULES} == {"srcds", "rust", "steam", "ue3"}
    assert all(m.define for m in maps_def.GAME_MODULES)
    bits = [m.bit for m in maps_def.GAME_MODULES]
    assert len(set(bits)) == len(bits) and all(b & (b - 1) == 0 for b in bits)
