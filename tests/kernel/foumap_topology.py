"""Shared by the fou_map kernel tests: the testbed of bifrost.fou_map.testbed."""

from __future__ import annotations

from bifrost.fou_map.testbed import *  # noqa: F403 (tests use it as `topo.X`)
