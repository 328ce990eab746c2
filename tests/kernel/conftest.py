"""Kernel tier: these tests run INSIDE the test guest (BIFROST_GUEST=1), never on the host."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
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


# On 6.12 under TCG, the FIRST netfilter hook added or removed at a hook point
# while packets flow panics the guest: the kernel flips the hook point's static
# key by patching code with int3, and TCG does not survive it (measured, see
# kernel-test-vm.md). Module loads and unloads, and every netns a test creates or
# deletes with the modules loaded, can be that first hook. One empty chain per
# IPv4 hook point in the guest's init netns for the whole session keeps every
# key on, so no test can flip one, whatever order the tests run in.
STATIC_KEYS_TABLE = """
table ip bifrost_static_keys {
 chain keep_pre { type filter hook prerouting priority 0; }
 chain keep_in { type filter hook input priority 0; }
 chain keep_fwd { type filter hook forward priority 0; }
 chain keep_out { type filter hook output priority 0; }
 chain keep_post { type filter hook postrouting priority 0; }
}
"""


@pytest.fixture(scope="session", autouse=True)
def netfilter_static_keys_kept_on() -> Iterator[None]:
    if not IN_GUEST:
        yield
        return
    subprocess.run(["modprobe", "nf_tables"], check=True)
    subprocess.run(["nft", "-f", "-"], input=STATIC_KEYS_TABLE, text=True, check=True)
    try:
        yield
    finally:
        subprocess.run(["nft", "delete", "table", "ip", "bifrost_static_keys"], check=False)
