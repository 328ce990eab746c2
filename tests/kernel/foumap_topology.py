"""Shared by the fou_map kernel tests: the testbed of bifrost.foumap.testbed."""

from __future__ import annotations

from bifrost.foumap.testbed import *  # noqa: F403 (tests use it as `topo.X`)
