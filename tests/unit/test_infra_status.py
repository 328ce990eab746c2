"""`invoke status` degrades to sentences where the host lacks modules or systemd."""

from __future__ import annotations

from pathlib import Path

import pytest

from bifrost import status

pytestmark = pytest.mark.unit


def test_loaded_modules_on_this_host() -> None:
    st = status.Status()
    status.loaded_modules(st)
    if Path("/proc/modules").exists():
        assert set(st.loaded) == {"bifrost_nf", "fou_map"}
    else:
        assert st.loaded_note == "no loadable modules on this kernel (no /proc/modules)"
        assert st.loaded == {}


def test_daemon_states_without_systemd() -> None:
    st = status.Status()
    status.daemon_states(st)
    if Path("/run/systemd/system").is_dir():
        assert set(st.daemons) == {"bifrost-foumapd.service", "bifrost-cached.service"}
    else:
        assert "not running" in st.daemons_note or "not found" in st.daemons_note


def test_device_nodes_absent_without_modules() -> None:
    st = status.Status()
    status.device_nodes(st)
    for node in ("/dev/bifrost_nf", "/dev/fou_map"):
        assert node in st.devices or st.devices_note
        if not Path(node).exists() and node in st.devices:
            assert st.devices[node].startswith(("absent", "registered"))


def test_render_shows_every_section() -> None:
    st = status.Status(
        dkms={"fou_map": {"6.1.0-56-amd64": "installed"}},
        loaded_note="no loadable modules on this kernel (no /proc/modules)",
        devices={"/dev/fou_map": "absent (module not loaded)"},
        daemons={"bifrost-cached.service": "inactive"},
    )
    text = status.render(st)
    assert "fou_map     6.1.0-56-amd64" in text
    assert "installed" in text
    assert "no loadable modules on this kernel" in text
    assert "/dev/fou_map" in text
    assert "bifrost-cached.service" in text
    assert "inactive" in text
