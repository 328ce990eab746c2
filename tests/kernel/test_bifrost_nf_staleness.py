"""bifrost_nf: stale answers trigger refresh events; a stopped server goes offline."""

from __future__ import annotations

import os
import time
from pathlib import Path

import a2s as pya2s
import cache_env
import pytest
from cache_env import GAME_PORT, POP_CLIENT_IP

from bifrost.bifrost_nf import a2s
from bifrost.bifrost_nf.nf import CacheDevice
from bifrost_testing import refserver

pytestmark = pytest.mark.kernel
SERVICE = (POP_CLIENT_IP, GAME_PORT)


@pytest.fixture(scope="module", autouse=True)
def module():
    cache_env.load()
    yield
    cache_env.unload()


def test_stale_answer_served_and_event_raised_once():
    with cache_env.topo(f"st{os.getpid() % 10000}") as t, cache_env.open_in(t.pop) as dev:
        dev.set_service(POP_CLIENT_IP, GAME_PORT)
        assert dev.events() == []
        info = a2s.build_info(a2s.Info("stale test", "de_nuke", "csgo", "cs"))
        dev.set_answer(POP_CLIENT_IP, GAME_PORT, "info", [info], ttl_ms=100, max_stale_ms=60_000)
        # stale once the kernel's own age of the answer reaches its ttl
        assert cache_env.wait_for(lambda: dev.dump()[0].answers[0].age_ms >= 100, 10)
        with t.client_socket() as s:
            for _ in range(5):
                s.sendto(a2s.request("info"), SERVICE)
                chal = a2s.parse_challenge(s.recv(64))
                s.sendto(a2s.request("info", chal), SERVICE)
                assert s.recv(4096) == info
            # no rules cached: missing -> dropped (policy drop) + event; the positive
            # control after it (a challenge request) is answered, and nothing else
            s.sendto(a2s.request("rules"), SERVICE)
            s.sendto(a2s.request("info"), SERVICE)
            assert a2s.parse_challenge(s.recv(64)) is not None
            assert cache_env.wait_for(lambda: dev.counters()["miss_drop"] == 1, 10)
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.recv(64)
        evs = dev.events(timeout=1)
        assert sorted((e.qtype, e.reason) for e in evs) == [("info", "stale"), ("rules", "missing")]
        assert dev.events() == []  # de-duplicated: read once
        c = dev.counters()
        assert c["stale_answers"] == 5 and c["miss_drop"] == 1


def test_miss_pass_policy_lets_query_through():
    with cache_env.topo(f"mp{os.getpid() % 10000}") as t, cache_env.open_in(t.pop) as dev:
        dev.set_service(POP_CLIENT_IP, GAME_PORT, miss_pass=True)
        # a UDP listener on the POP stands in for the game server behind it
        with t.pop.socket() as srv, t.client_socket() as s:
            srv.bind(SERVICE)
            srv.settimeout(1)
            s.sendto(a2s.request("info"), SERVICE)
            data, _ = srv.recvfrom(64)
            assert data == a2s.request("info")
        assert dev.counters()["miss_pass"] == 1


def test_no_challenge_option_answers_info_directly():
    with cache_env.topo(f"nc{os.getpid() % 10000}") as t, cache_env.open_in(t.pop) as dev:
        dev.set_service(POP_CLIENT_IP, GAME_PORT, no_challenge=True)
        info = a2s.build_info(a2s.Info("open", "cs_office", "csgo", "cs"))
        dev.set_answer(POP_CLIENT_IP, GAME_PORT, "info", [info], ttl_ms=60_000, max_stale_ms=0)
        players = a2s.build_players([a2s.Player("p")])
        dev.set_answer(POP_CLIENT_IP, GAME_PORT, "player", [players], ttl_ms=60_000, max_stale_ms=0)
        with t.client_socket() as s:
            s.sendto(a2s.request("info"), SERVICE)
            assert s.recv(4096) == info
            s.sendto(a2s.request("player"), SERVICE)  # players still need the challenge
            assert len(s.recv(64)) == 9


def test_stopped_server_disappears_after_max_staleness():
    tag = f"off{os.getpid() % 10000}"
    ctl = Path(f"/tmp/bfnf-ref-{tag}.sock")
    with cache_env.topo(tag) as t:
        cache_env.start_refserver(t, ctl)
        cfg = cache_env.daemon_config(Path(f"/tmp/bfnf-{tag}.toml"), refresh_s=0.5, ttl_s=1.0,
                                      max_stale_s=2.0, metrics_port=0)  # fmt: skip
        cache_env.start_daemon(t, cfg)
        assert cache_env.wait_for(lambda: cache_env.answers_cached(t), 90)
        with t.client.entered():
            assert pya2s.info(SERVICE, timeout=2).map_name == "de_dust2"
        refserver.control(ctl, "stop")
        stopped = time.monotonic()

        def offline() -> bool:
            with t.client.entered():
                try:
                    pya2s.info(SERVICE, timeout=0.5)
                except TimeoutError:
                    return True
            return False

        assert cache_env.wait_for(offline, 10, step=0.2)
        # ttl 1 s + max staleness 2 s, plus the poll step and query timeout
        assert time.monotonic() - stopped < 6.0
        assert time.monotonic() - stopped > 1.0
        assert cache_env.wait_for(lambda: not cache_env.answers_cached(t, 1), 5)
        with CacheDevice() as dev:  # the initial netns never saw any of this
            assert dev.dump() == []


def test_cli_show_stats_flush():
    import json
    import sys

    with cache_env.topo(f"cli{os.getpid() % 10000}") as t, cache_env.open_in(t.pop) as dev:
        dev.set_service(POP_CLIENT_IP, GAME_PORT, miss_pass=True)
        info = a2s.build_info(a2s.Info("cli", "de_vertigo", "csgo", "cs"))
        # fresh for an hour: the CLI's start-up alone took minutes on a loaded TCG host
        dev.set_answer(
            POP_CLIENT_IP, GAME_PORT, "info", [info], ttl_ms=3_600_000, max_stale_ms=1000
        )
        # No config: the default device (an explicit -c must name an existing file).
        cli = [sys.executable, "-m", "bifrost.cli.main", "cache"]
        # Generous: the CLI imports every component, slow over 9p under TCG (as in
        # test_fou_map_endpoint); 30 s was missed on a loaded host.
        slow = 300
        show = t.pop.run([*cli, "show"], timeout=slow).stdout
        assert f"{POP_CLIENT_IP}:{GAME_PORT}  [miss-pass]" in show
        assert f"info    {len(info):>6} B in 1 pkt" in show and "fresh" in show
        stats = json.loads(t.pop.run([*cli, "stats", "--json"], timeout=slow).stdout)
        assert stats["counters"]["entries_set"] == 1
        assert stats["netns_inum"] == dev.info()["netns_inum"]
        t.pop.run([*cli, "flush"], timeout=slow)
        [svc] = dev.dump()
        assert svc.answers == ()
        assert dev.counters()["entries_deleted"] == 1
