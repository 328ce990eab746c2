"""The fleet agent's view of the role's kernel module: its status line (`dkms status`
itself is parsed by bifrost.dkms, tested in test_dkms_stage)."""

from __future__ import annotations

import pytest

from bifrost.fleet import kmod

pytestmark = pytest.mark.unit


def st(installed: str | None, loaded: str | None, why: str = "") -> kmod.KmodState:
    return kmod.KmodState("fou_map", "6.1.0-56-amd64", "0.1.0", installed, True, loaded, why)


def test_status_line_says_installed_loaded_and_why_a_rebuild() -> None:
    assert st("0.1.0", None).summary() == "fou_map 0.1.0 installed, not loaded"
    assert st("0.1.0", "0.1.0").summary() == "fou_map 0.1.0 installed, loaded"
    assert st("0.1.0", "0.0.9").summary() == (
        "fou_map 0.1.0 installed, loaded 0.0.9 (reload to run 0.1.0)"
    )
    old = st("0.0.9", "0.0.9", "this host's bifrost is 0.1.0, 0.0.9 is installed for K")
    assert old.rebuild and old.summary().endswith(
        "; REBUILD: this host's bifrost is 0.1.0, 0.0.9 is installed for K"
    )
    assert st(None, None, "x").summary().startswith("fou_map 0.1.0 not installed, not loaded")
    assert st(None, None, "x").as_json()["rebuild"] is True


def test_status_line_of_a_module_the_config_does_not_use() -> None:
    unused = kmod.KmodState("bifrost_nf", "K", "0.1.0", None, False, None, "", needed=False)
    assert unused.summary() == "bifrost_nf (not used by this config), not loaded"
    assert not unused.rebuild
    nodkms = kmod.KmodState(
        "fou_map", "K", "0.1.0", None, False, "0.0.9", "no dkms ...", dkms=False
    )
    assert nodkms.summary().startswith("fou_map: no dkms on this host, loaded 0.0.9")
    assert nodkms.as_json()["rebuild"] is True
