"""The reference server and the daemon's fetcher over loopback: challenges, splits, control."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from bifrost.bifrost_nf import a2s
from bifrost.bifrost_nf.daemon import FetchError, fetch
from bifrost_testing import refserver

pytestmark = pytest.mark.unit


@pytest.fixture
def server(tmp_path: Path):
    srv = refserver.RefServer(("127.0.0.1", 0), tmp_path / "ctl.sock", n_rules=150)
    t = threading.Thread(target=srv.serve, daemon=True)
    t.start()
    yield srv
    srv.running = False
    t.join(timeout=5)
    srv.close()


def test_fetch_handles_challenge_and_split(server):
    addr = ("127.0.0.1", server.port)
    info = a2s.parse_info(a2s.join(fetch(addr, "info", 2.0)))
    assert info.map == "de_dust2" and info.port == server.port
    assert len(a2s.parse_players(a2s.join(fetch(addr, "player", 2.0)))) == 5
    packets = fetch(addr, "rules", 2.0)
    assert len(packets) > 1  # 150 rules do not fit one packet
    assert len(a2s.parse_rules(a2s.join(packets))) == 151
    # each fetch = challenge request + real request
    assert server.by_kind == {"info": 2, "player": 2, "rules": 2}


def test_server_requires_the_challenge(server):
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(a2s.request("info", 0x1234), ("127.0.0.1", server.port))
        assert a2s.parse_challenge(s.recv(64)) is not None


def test_control_map_change_and_stats(server, tmp_path):
    ctl = tmp_path / "ctl.sock"
    assert refserver.control(ctl, "map cs_office")["map"] == "cs_office"
    info = a2s.parse_info(a2s.join(fetch(("127.0.0.1", server.port), "info", 2.0)))
    assert info.map == "cs_office"
    stats = refserver.control(ctl, "stats")
    assert stats["queries"]["127.0.0.1"] == 2
    assert "error" in refserver.control(ctl, "bogus")


def test_fetch_from_silent_server_fails():
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as quiet:
        quiet.bind(("127.0.0.1", 0))
        with pytest.raises(FetchError):
            fetch(quiet.getsockname(), "info", 0.2)
