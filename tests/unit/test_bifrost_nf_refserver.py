"""The reference server and the daemon's fetcher over loopback: challenges, splits, control."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import pytest

from bifrost.bifrost_nf import a2s
from bifrost.bifrost_nf.daemon import FetchError, fetch
from bifrost_testing import refserver

pytestmark = pytest.mark.unit


@contextlib.contextmanager
def serving(srv: refserver.RefServer):
    """srv answering in a thread until the block is done."""
    t = threading.Thread(target=srv.serve, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.running = False
        t.join(timeout=5)
        srv.close()


@pytest.fixture
def server(tmp_path: Path):
    with serving(refserver.RefServer(("127.0.0.1", 0), tmp_path / "ctl.sock", n_rules=150)) as s:
        yield s


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


@pytest.fixture
def game(tmp_path: Path):
    with serving(refserver.RefServer(("127.0.0.1", 0), tmp_path / "g.sock", game=True)) as s:
        yield s


def test_game_handshake_then_echo_only_for_connected_clients(game, tmp_path):
    import socket

    addr = ("127.0.0.1", game.port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(b"netchannel before", addr)  # not connected: no answer
        s.sendto(b"\xff\xff\xff\xffqgetchallenge", addr)
        challenge = s.recv(64)  # the positive control comes after the ignored packet
        assert challenge[:5] == b"\xff\xff\xff\xffA" and len(challenge) == 9
        s.sendto(b"\xff\xff\xff\xffk" + b"\0\0\0\0", addr)  # wrong challenge: ignored
        s.sendto(b"\xff\xff\xff\xffk" + challenge[5:9], addr)
        assert s.recv(64) == b"\xff\xff\xff\xffB" + challenge[5:9]
        s.sendto(b"netchannel after", addr)
        assert s.recv(64) == b"echo:netchannel after"
    stats = refserver.control(tmp_path / "g.sock", "stats")
    assert stats["game_packets"] == {"127.0.0.1": 5}
    assert stats["handshakes"] == {"127.0.0.1": 1}
    assert stats["queries"] == {}


def test_a2s_server_without_game_ignores_game_packets(server, tmp_path):
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(b"\xff\xff\xff\xffqgetchallenge", ("127.0.0.1", server.port))
        s.sendto(a2s.request("info"), ("127.0.0.1", server.port))
        assert a2s.parse_challenge(s.recv(64)) is not None  # the A2S answer, not an `A`
    assert refserver.control(tmp_path / "ctl.sock", "stats")["game_packets"] == {}


def test_serves_every_bound_address(tmp_path):
    import socket

    srv = refserver.RefServer(("127.0.0.1", 0), None, also_bind=(("127.0.0.2", 0),), game=True)
    t = threading.Thread(target=srv.serve, daemon=True)
    t.start()
    try:
        for sock in srv.socks:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(2)
                s.sendto(b"\xff\xff\xff\xffq", sock.getsockname())
                data, peer = s.recvfrom(64)
                assert data[:5] == b"\xff\xff\xff\xffA" and peer == sock.getsockname()
    finally:
        srv.running = False
        t.join(timeout=5)
        srv.close()
