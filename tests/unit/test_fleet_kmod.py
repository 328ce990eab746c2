"""The fleet agent's view of the role's kernel module: its status line (`dkms status`
itself is parsed by bifrost.dkms, tested in test_dkms_stage)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bifrost.fleet import kmod
from bifrost.fleet.inventory import Host

pytestmark = pytest.mark.unit


def st(
    installed: str | None, loaded: str | None, why: str = "", on_disk: str | None = None
) -> kmod.KmodState:
    return kmod.KmodState(
        "fou_map", "6.1.0-56-amd64", "0.1.0", installed, True, loaded, why, on_disk=on_disk
    )


def test_status_line_says_installed_loaded_and_why_a_rebuild() -> None:
    assert st("0.1.0", None).summary() == "fou_map 0.1.0 installed, not loaded"
    assert st("0.1.0", "0.1.0").summary() == "fou_map 0.1.0 installed, loaded 0.1.0"
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
    assert nodkms.summary().startswith("fou_map: no dkms on this host, loaded 0.0.9 (reload")
    assert nodkms.as_json()["rebuild"] is True


def test_reload_when_the_installed_release_is_not_the_loaded_one() -> None:
    # DKMS has the release installed, modprobe would load it, an older one runs.
    older = st("0.1.0", "0.0.9", on_disk="0.1.0")
    assert older.reload and not older.rebuild
    assert older.as_json()["reload"] is True
    assert not st("0.1.0", "0.1.0", on_disk="0.1.0").reload  # the release runs
    assert not st("0.1.0", None, on_disk="0.1.0").reload  # nothing loaded to replace
    # modprobe would load an older .ko (depmod prefers it): a reload would not help.
    assert not st("0.1.0", "0.0.9", on_disk="0.0.9").reload
    # A rebuild reloads anyway; a module the config does not use is left alone.
    assert not st("0.0.9", "0.0.9", "rebuild", on_disk="0.0.9").reload
    unused = kmod.KmodState("fou_map", "K", "0.1.0", "0.1.0", True, "0.0.9", "", needed=False,
                            on_disk="0.1.0")  # fmt: skip
    assert not unused.reload


def test_no_dkms_host_whose_release_module_is_on_disk_needs_no_rebuild(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kmod.shutil, "which", lambda name: None)
    monkeypatch.setattr(kmod, "loaded_version", lambda m: "0.0.9")
    monkeypatch.setattr(kmod, "__version__", "0.1.0")
    monkeypatch.setattr(kmod, "on_disk_version", lambda m: "0.1.0")
    s = kmod.state("fou_map")
    assert not s.rebuild and s.reload and not s.dkms
    monkeypatch.setattr(kmod, "on_disk_version", lambda m: "0.0.9")
    s = kmod.state("fou_map")
    assert s.rebuild and not s.reload
    assert s.why == "no dkms on this host to build fou_map 0.1.0 (0.0.9 is loaded)"


def test_modinfo_version_parsing() -> None:
    assert kmod.parse_modinfo_version(0, "0.1.0\n") == "0.1.0"
    assert kmod.parse_modinfo_version(0, "  0.1.0  \n") == "0.1.0"
    assert kmod.parse_modinfo_version(0, "") is None  # a module without MODULE_VERSION
    assert kmod.parse_modinfo_version(1, "") is None  # modinfo: Module not found
    assert kmod.parse_modinfo_version(0, "0.1.0\nsecond\n") == "0.1.0"


def test_health_names_a_module_that_is_not_the_release(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kmod, "__version__", "0.1.0")
    assert kmod.version_problem("bifrost_nf", "0.1.0", "0.1.0") == ""
    assert kmod.version_problem("bifrost_nf", "0.0.9", "0.1.0") == (
        "bifrost_nf is loaded 0.0.9, not this release's 0.1.0 (modprobe would load 0.1.0)"
    )
    assert kmod.version_problem("fou_map", None, None) == (
        "fou_map is not loaded, not this release's 0.1.0 (modprobe would load none)"
    )


def test_plan_counts_a_reload_as_a_change_and_says_so() -> None:
    from bifrost.fleet import orchestrate

    older = st("0.1.0", "0.0.9", on_disk="0.1.0").as_json()
    same = st("0.1.0", "0.1.0", on_disk="0.1.0").as_json()
    plan = {"config_diff": "", "module_config_diff": "", "rebuild": False}
    assert orchestrate._changes(plan | {"kmod": older})
    assert not orchestrate._changes(plan | {"kmod": same})
    lines: list[str] = []
    fleet = orchestrate.Fleet(None, Path("key"), out=lines.append)  # type: ignore[arg-type]
    host = Host("gs1", "192.0.2.2", 22, "root", None, "gameserver", Path("gs1.toml"))  # type: ignore[arg-type]
    fleet._show_plan(host, plan | {"kmod": older})
    assert "-- kernel module: reload fou_map: 0.0.9 is loaded, 0.1.0 installed" in lines


def test_healthy_line_names_the_loaded_module() -> None:
    from bifrost.fleet import orchestrate

    km = {"module": "bifrost_nf", "loaded": "0.1.0", "installed": "0.1.0", "problem": ""}
    line = orchestrate._health_line({"served_in_window": 7, "module_version": km})
    assert line == "7 packets served in the window; bifrost_nf 0.1.0 loaded"
    assert orchestrate._health_line({}) == "config installed, daemons up"
