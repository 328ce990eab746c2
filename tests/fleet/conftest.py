"""Fixtures of the fleet tests: real sshd instances, one per host, each in its own netns."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from bifrost_testing.fleet_lab import FleetLab, fleet_lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetLab]:
    """Two POPs (each with a client sending game traffic) and a game server, unconfigured."""
    if os.geteuid() != 0:
        pytest.fail("the fleet tests need root (network namespaces, sshd, XDP)")
    with fleet_lab(tmp_path_factory.mktemp("fleet")) as fl:
        yield fl
