"""Shared pytest setup: the markers of the tiers that pyproject does not list."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Test helpers are imported as `tests.<tier>.<module>` (e.g. tests.bpf.xdp_harness):
# put the source root on sys.path whatever directory pytest was started on.
SOURCE_ROOT = str(Path(__file__).resolve().parent.parent)
if SOURCE_ROOT not in sys.path:
    sys.path.insert(0, SOURCE_ROOT)


def pytest_configure(config: pytest.Config) -> None:
    # The kernel-upgrade test runs on the host (it drives DKMS and apt there),
    # then boots the guest itself; `invoke test --tier upgrade` selects it.
    config.addinivalue_line(
        "markers",
        "upgrade: root on the host: DKMS's own kernel hook rebuilds the modules, then a guest",
    )


TIERS = ("unit", "bpf", "kernel", "upgrade")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test belongs to exactly one tier: `invoke test` selects tiers by
    marker, so a test without one would be deselected everywhere and never run."""
    for item in items:
        tiers = [m.name for m in item.iter_markers() if m.name in TIERS]
        if len(tiers) != 1:
            raise pytest.UsageError(f"{item.nodeid}: needs exactly one tier marker, has {tiers}")
