"""Fixtures of the bpf tier: root on the host, BPF_PROG_TEST_RUN."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from xdp_harness import Xdp, loaded


@pytest.fixture
def xdp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Xdp]:
    """A freshly loaded program (own maps) with the test config applied."""
    if os.geteuid() != 0:
        pytest.fail("the bpf tier needs root")
    with loaded(tmp_path_factory.mktemp("xdp")) as x:
        yield x
