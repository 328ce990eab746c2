"""The fleet agent's view of the role's kernel module: `dkms status` parsed per version
and kernel (several versions of one module side by side), and the status line."""

from __future__ import annotations

import pytest

from bifrost.fleet import kmod

pytestmark = pytest.mark.unit

# dkms 3.0.10, as on the project's hosts: an older build, the new one, another module,
# a version only added, and the warning suffix dkms prints after a state.
WARN = " (WARNING! Diff between built and installed module!)"
STATUS = f"""\
bifrost_nf/0.0.9, 6.1.0-56-amd64, x86_64: built
bifrost_nf/0.1.0, 6.1.0-56-amd64, x86_64: installed
bifrost_nf/0.1.0, 6.12.117+deb12-amd64, x86_64: installed{WARN}
fou_map/0.1.0, 6.1.0-56-amd64, x86_64: installed
bifrost_nf/0.2.0: added
"""


def test_status_is_parsed_per_version_and_kernel() -> None:
    assert kmod.parse_status(STATUS, "bifrost_nf") == {
        ("0.0.9", "6.1.0-56-amd64"): "built",
        ("0.1.0", "6.1.0-56-amd64"): "installed",
        ("0.1.0", "6.12.117+deb12-amd64"): "installed",
        ("0.2.0", None): "added",
    }
    assert kmod.parse_status(STATUS, "fou_map") == {("0.1.0", "6.1.0-56-amd64"): "installed"}
    assert kmod.parse_status("readelf: Warning: x\n", "fou_map") == {}


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
