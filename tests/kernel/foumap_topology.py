"""Shared by the fou_map kernel tests: the testbed of bifrost_testing.fou_map_testbed."""

from __future__ import annotations

from bifrost_testing.fou_map_testbed import *  # noqa: F403 (tests use it as `topo.X`)
