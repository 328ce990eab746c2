"""Kernel tier: these tests run INSIDE the test guest (BIFROST_GUEST=1), never on the host."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

IN_GUEST = os.environ.get("BIFROST_GUEST") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # On the host the modules cannot load (no loadable-module support); a
    # kernel test that ran there would only test the host's absence of them.
    if IN_GUEST:
        return
    skip = pytest.mark.skip(reason="kernel tier runs in the guest: invoke test --tier kernel")
    here = Path(__file__).parent
    for item in items:
        if item.get_closest_marker("kernel") and here in item.path.parents:
            item.add_marker(skip)
