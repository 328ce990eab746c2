"""Fixtures of the bpf tier: root on the host, BPF_PROG_TEST_RUN."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from xdp_harness import Xdp, loaded
from xdp_modules_harness import games_loaded

from bifrost.netns import Namespace
from bifrost.xdp import bpffs


@pytest.fixture
def xdp(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Xdp]:
    """A freshly loaded program (own maps) with the test config applied; in a test file
    that sets XDP_GAMES = True, every game module compiled in and games_config() applied
    (xdp_modules_harness.games_loaded)."""
    if os.geteuid() != 0:
        pytest.fail("the bpf tier needs root")
    if getattr(request.module, "XDP_GAMES", False):
        with games_loaded(tmp_path_factory.mktemp("games")) as x:
            yield x
    else:
        with loaded(tmp_path_factory.mktemp("xdp")) as x:
            yield x


@pytest.fixture
def pin_base(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A pin base under /sys/fs/bpf named for the test file and this process (not made:
    the loader makes it); whatever is pinned there is removed after the test."""
    name = request.module.__name__.removeprefix("test_xdp_")
    base = bpffs.ROOT / f"bfx-test-{name}-{os.getpid()}"
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def fib_ns() -> Iterator[tuple[Namespace, int, str]]:
    """A netns where GS is on a connected veth, f0 10.0.0.1/24, forwarding on; no
    neighbour entry (each test sets what it needs).

    BPF_PROG_TEST_RUN from inside it makes bpf_fib_lookup ask this netns's FIB,
    not the host's: (namespace, ifindex of f0, f0's MAC).
    """
    with Namespace("bfx-fib") as ns:
        with ns.ipr() as ipr:
            ipr.link("add", ifname="f0", kind="veth", peer="f1")
            f1 = ipr.link_lookup(ifname="f1")[0]
            ipr.link("set", index=f1, state="up")
        ns.address("f0", "10.0.0.1/24")
        # bpf_fib_lookup refuses to resolve for a device that does not forward.
        ns.sysctl("net.ipv4.conf.all.forwarding", "1")
        ns.sysctl("net.ipv4.conf.f0.forwarding", "1")
        with ns.ipr() as ipr:
            f0 = ipr.link_lookup(ifname="f0")[0]
            mac = ipr.get_links(f0)[0].get_attr("IFLA_ADDRESS")
        yield ns, f0, mac
