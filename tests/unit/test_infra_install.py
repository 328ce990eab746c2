"""install/uninstall with --root: the right files, verifiable units, nothing left behind."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from bifrost import install
from bifrost.paths import SOURCE_ROOT

pytestmark = pytest.mark.unit

EXPECTED = {
    "/etc/bifrost/bifrost.toml",
    "/etc/udev/rules.d/60-bifrost.rules",
    "/etc/modules-load.d/bifrost.conf",
    "/etc/modprobe.d/bifrost.conf",
    "/etc/systemd/system/bifrost-foumapd.service",
    "/etc/systemd/system/bifrost-cached.service",
    "/etc/systemd/system/bifrost-xdp.service",
}
# unit -> its ExecStart (after the venv's bin directory)
EXEC = {
    "bifrost-foumapd.service": "bifrost-foumapd --config /etc/bifrost/bifrost.toml",
    "bifrost-cached.service": "bifrost-cached --config /etc/bifrost/bifrost.toml",
    "bifrost-xdp.service": "bifrost xdp run --config /etc/bifrost/bifrost.toml",
}
# The daemons that open their module's device, which PrivateDevices= would hide.
CHARDEV_DAEMONS = {
    "bifrost-foumapd.service": "/dev/fou_map",
    "bifrost-cached.service": "/dev/bifrost_nf",
}


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_install_places_every_file_and_records_it(tmp_path: Path) -> None:
    root = tmp_path / "root"
    manifest = install.install(root)
    assert set(manifest.files) == EXPECTED
    for f in EXPECTED:
        assert (root / f.lstrip("/")).is_file(), f
    recorded = json.loads((root / "var/lib/bifrost/install-manifest").read_text())
    assert set(recorded["files"]) == EXPECTED
    assert recorded["dkms_modules"] == []  # --root never touches DKMS
    assert "/etc/bifrost" in recorded["dirs"]


def test_install_twice_then_uninstall_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    first = install.install(root)
    second = install.install(root)
    assert first.files == second.files
    kept = install.uninstall(root)
    assert kept == []
    assert _tree(root) == []


def test_uninstall_keeps_only_what_the_operator_changed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    # Something of the operator's in a directory install would otherwise remove.
    (root / "etc/modprobe.d").mkdir(parents=True)
    (root / "etc/modprobe.d/other.conf").write_text("options x y=1\n")
    install.install(root)
    cfg = root / "etc/bifrost/bifrost.toml"
    cfg.write_text(cfg.read_text() + "# edited\n")
    kept = install.uninstall(root)
    assert any("/etc/bifrost/bifrost.toml: changed" in k for k in kept)
    assert _tree(root) == sorted(
        [
            "etc",
            "etc/bifrost",
            "etc/bifrost/bifrost.toml",
            "etc/modprobe.d",
            "etc/modprobe.d/other.conf",
        ]
    )


def test_install_keeps_an_existing_config(tmp_path: Path) -> None:
    root = tmp_path / "root"
    cfg = root / "etc/bifrost/bifrost.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text('[fou_map]\ndevice = "/dev/fou_map"\n')
    manifest = install.install(root)
    assert "/etc/bifrost/bifrost.toml" not in manifest.files
    # A game-server-only config loads only fou_map at boot.
    mods = (root / "etc/modules-load.d/bifrost.conf").read_text().split("\n")
    assert "fou_map" in mods
    assert "bifrost_nf" not in mods
    install.uninstall(root)
    assert cfg.read_text() == '[fou_map]\ndevice = "/dev/fou_map"\n'


def test_mistyped_config_is_an_error_and_not_created(tmp_path: Path) -> None:
    """install --config /etc/bifrost/bifrots.toml must not install the example there."""
    root = tmp_path / "root"
    typo = Path("/etc/bifrost/bifrots.toml")
    with pytest.raises(install.InstallError, match=r"bifrots\.toml: config file does not exist"):
        install.install(root, config_path=typo)
    assert not (root / "etc/bifrost/bifrots.toml").exists()
    assert not (root / "etc/bifrost/bifrost.toml").exists()
    # An explicit path that exists is followed by the units.
    own = root / "etc/bifrost/pop.toml"
    own.parent.mkdir(parents=True)
    own.write_text('[fou_map]\ndevice = "/dev/fou_map"\n')
    manifest = install.install(root, config_path=Path("/etc/bifrost/pop.toml"))
    assert "/etc/bifrost/pop.toml" not in manifest.files, "the operator's file is not ours"
    unit = (root / "etc/systemd/system/bifrost-foumapd.service").read_text()
    assert "--config /etc/bifrost/pop.toml" in unit


def test_uninstall_without_manifest_says_so(tmp_path: Path) -> None:
    with pytest.raises(install.InstallError, match="nothing to uninstall"):
        install.uninstall(tmp_path)


def test_bad_config_is_reported(tmp_path: Path) -> None:
    cfg = tmp_path / "etc/bifrost/bifrost.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text("[xdp]\nmodulez = []\n")
    with pytest.raises(install.InstallError, match=r"xdp\.modulez: unknown key"):
        install.install(tmp_path)


def test_udev_rule_and_module_files(tmp_path: Path) -> None:
    install.install(tmp_path)
    rule = (tmp_path / "etc/udev/rules.d/60-bifrost.rules").read_text()
    active = [ln for ln in rule.splitlines() if ln and not ln.startswith("#")]
    assert active == [
        'KERNEL=="bifrost_nf|fou_map", SUBSYSTEM=="misc", OWNER="root", GROUP="root", MODE="0600"'
    ]
    loads = (tmp_path / "etc/modules-load.d/bifrost.conf").read_text()
    assert [ln for ln in loads.splitlines() if not ln.startswith("#")] == ["bifrost_nf", "fou_map"]
    probe = (tmp_path / "etc/modprobe.d/bifrost.conf").read_text()
    assert "softdep fou_map pre: fou ipip" in probe


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    assert shutil.which("systemd-analyze"), "apt-get install systemd"
    install.install(tmp_path)
    units = sorted((tmp_path / "etc/systemd/system").glob("*.service"))
    assert [u.name for u in units] == sorted(install.UNITS)
    for u in units:
        text = u.read_text()
        assert "Type=notify" in text
        assert "Restart=on-failure" in text
        assert f"\nExecStart={install.venv_bin()}/{EXEC[u.name]}\n" in text
        assert "\nPrivateDevices=yes" not in text  # it would hide the chardev
        if u.name in CHARDEV_DAEMONS:
            assert f"\nDeviceAllow={CHARDEV_DAEMONS[u.name]} rw\n" in text
    done = subprocess.run(
        ["systemd-analyze", "verify", *map(str, units)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr


def test_xdp_unit_reloads_with_sighup_and_keeps_the_bpffs_writable(tmp_path: Path) -> None:
    """systemctl reload = SIGHUP (re-apply the config); the pins live in the bpffs,
    which ProtectSystem=strict alone would leave writable but says nothing about."""
    install.install(tmp_path)
    text = (tmp_path / "etc/systemd/system/bifrost-xdp.service").read_text()
    lines = set(text.splitlines())
    assert "ExecReload=/bin/kill -HUP $MAINPID" in lines
    assert "After=network-online.target" in lines
    assert "ReadWritePaths=/sys/fs/bpf" in lines
    assert "CapabilityBoundingSet=CAP_NET_ADMIN CAP_BPF CAP_PERFMON" in lines
    # Stopping leaves the program attached: the unit says so where an operator reads it.
    assert "Stopping the service leaves the program attached" in text


def test_units_fail_verify_when_broken(tmp_path: Path) -> None:
    """The verify check above can fail: a unit with a bad ExecStart does."""
    install.install(tmp_path)
    unit = tmp_path / "etc/systemd/system/bifrost-cached.service"
    unit.write_text(unit.read_text().replace(str(install.venv_bin()), "/nonexistent/bin"))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert done.returncode != 0
    assert "/nonexistent/bin/bifrost-cached is not executable" in done.stderr


def test_venv_console_scripts_exist() -> None:
    for script in ("bifrost-foumapd", "bifrost-cached", "bifrost"):
        assert (install.venv_bin() / script).exists(), f"pip install -e {SOURCE_ROOT}"
