"""bifrost_nf with real packets: client -> POP (bifrost_nf + bifrost-cached) -> refserver.

client 10.99.0.10 -- net -- 10.41.1.1 POP -- net -- 10.42.0.1 gameserver
                          (service 10.41.1.1:27015)        (refserver :27015)
(bifrost_testing.topology, pops=1; addresses in cache_env)
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import time
from pathlib import Path

import a2s as pya2s
import cache_env
import pytest
from cache_env import CLIENT_IP, GAME_PORT, POP_CLIENT_IP

from bifrost import netns
from bifrost.bifrost_nf import a2s
from bifrost_testing import refserver

pytestmark = pytest.mark.kernel
SERVICE = (POP_CLIENT_IP, GAME_PORT)


@pytest.fixture(scope="module")
def lab():
    cache_env.load()
    tag = f"dp{os.getpid() % 10000}"
    ctl = Path(f"/tmp/bfnf-ref-{tag}.sock")
    with cache_env.topo(tag) as t:
        cache_env.start_refserver(t, ctl)
        cache_env.start_daemon(t, cache_env.daemon_config(Path(f"/tmp/bfnf-{tag}.toml")))
        # Python daemons start slowly under TCG on a busy host
        assert cache_env.wait_for(lambda: cache_env.answers_cached(t), 90), "cache not filled"
        t.ctl = ctl  # type: ignore[attr-defined]
        yield t
    cache_env.unload()


def raw_query(t, payload: bytes, wait: float = 1.0) -> list[bytes]:
    """Send one packet from the client; collect whatever comes back within wait."""
    with t.client_socket(timeout=wait) as s:
        s.sendto(payload, SERVICE)
        out = []
        try:
            while True:
                out.append(s.recv(4096))
                s.settimeout(0.3)
        except (TimeoutError, ConnectionRefusedError):
            pass
        return out


def challenge_of(t, s: socket.socket) -> int:
    s.sendto(a2s.request("info"), SERVICE)
    got = a2s.parse_challenge(s.recv(64))
    assert got is not None
    return got


def test_python_a2s_gets_server_data_from_the_kernel(lab):
    before = cache_env.pop_counters(lab)
    with lab.client.entered():
        info = pya2s.info(SERVICE, timeout=3)
        players = pya2s.players(SERVICE, timeout=3)
        rules = pya2s.rules(SERVICE, timeout=3)
    after = cache_env.pop_counters(lab)
    stats = cache_env.refserver_stats(lab.ctl)
    assert info.server_name == "Bifrost reference server"
    assert info.map_name == stats["map"]
    assert info.keywords == "bifrost,reference"
    assert [p.name for p in players] == [f"player{i}" for i in range(5)]
    assert len(rules) == 121 and rules["sv_rule_119"].startswith("value-119-")
    # the kernel answered: challenges + answers counted; the game server never saw the client
    assert after["answers"] - before["answers"] == 3
    assert after["answer_packets"] - before["answer_packets"] >= 4  # rules answer is split
    assert after["challenges_sent"] - before["challenges_sent"] == 3
    assert CLIENT_IP not in stats["queries"]
    assert stats["queries"].get(cache_env.POP_SERVER_IP, 0) > 0  # the daemon's queries


def test_raw_info_without_challenge_gets_exactly_9_bytes(lab):
    before = cache_env.pop_counters(lab)
    replies = raw_query(lab, a2s.request("info"))
    assert len(replies) == 1
    assert len(replies[0]) == 9 and replies[0][:5] == b"\xff\xff\xff\xff\x41"
    for kind in ("player", "rules"):
        for ask in (0xFFFFFFFF, 0):
            [r] = raw_query(lab, a2s.request(kind, ask))
            assert len(r) == 9 and r[4] == 0x41
    # INFO asking for the challenge with FF FF FF FF appended (29 bytes)
    [r] = raw_query(lab, a2s.request("info", 0xFFFFFFFF))
    assert len(r) == 9 and r[4] == 0x41
    after = cache_env.pop_counters(lab)
    d_in = after["unverified_bytes_in"] - before["unverified_bytes_in"]
    d_out = after["unverified_bytes_out"] - before["unverified_bytes_out"]
    assert d_in == 25 + 29 + 4 * 9 and d_out == 6 * 9
    assert after["bad_challenge"] == before["bad_challenge"]
    assert after["unverified_bytes_out"] <= after["unverified_bytes_in"]


def test_forged_challenge_gets_no_answer(lab):
    before = cache_env.pop_counters(lab)
    with lab.client_socket() as s:
        real = challenge_of(lab, s)
        for forged in (real ^ 1, 0x12345678, real + 1):
            s.sendto(a2s.request("info", forged), SERVICE)
            r = s.recv(4096)
            assert len(r) == 9 and r[4] == 0x41
            s.sendto(a2s.request("rules", forged), SERVICE)
            r = s.recv(4096)
            assert len(r) == 9 and r[4] == 0x41
        # the real one works from this address:port ...
        s.sendto(a2s.request("info", real), SERVICE)
        assert a2s.parse_info(s.recv(4096)).name == "Bifrost reference server"
    # ... and not from another port (the challenge binds address and port)
    with lab.client_socket() as s2:
        s2.sendto(a2s.request("info", real), SERVICE)
        r = s2.recv(4096)
        assert len(r) == 9
    after = cache_env.pop_counters(lab)
    assert after["bad_challenge"] - before["bad_challenge"] == 7


def test_secret_rotation_keeps_previous_and_expires_older(lab):
    with lab.client_socket() as s, cache_env.open_in(lab.pop) as dev:
        chal = challenge_of(lab, s)
        dev.rotate()  # previous generation still accepted
        s.sendto(a2s.request("info", chal), SERVICE)
        assert s.recv(4096)[4] == a2s.INFO_RESPONSE
        dev.rotate()  # now two generations old: expired
        s.sendto(a2s.request("info", chal), SERVICE)
        r = s.recv(4096)
        assert len(r) == 9 and r[4] == 0x41 and struct.unpack("<I", r[5:])[0] != chal


def test_challenge_expires_with_time(lab):
    with lab.client_socket() as s, cache_env.open_in(lab.pop) as dev:
        dev.configure(rate_pps=20, rate_burst=40, rotate_s=1)
        try:
            chal = challenge_of(lab, s)
            rotations = dev.counters()["rotations"]

            def rotated_twice() -> bool:
                # rotation is lazy: a query after a lifetime rotates (twice after two)
                with lab.client_socket() as probe:
                    challenge_of(lab, probe)
                return dev.counters()["rotations"] - rotations >= 2

            # two rotations after the challenge was made: its generation is gone
            assert cache_env.wait_for(rotated_twice, 10, step=0.2)
            s.sendto(a2s.request("info", chal), SERVICE)
            r = s.recv(4096)
            assert len(r) == 9 and r[4] == 0x41
        finally:
            dev.configure(rate_pps=20, rate_burst=40, rotate_s=60)


def test_map_change_reaches_clients_within_one_refresh(lab):
    refserver.control(lab.ctl, "map de_inferno")
    try:
        start = time.monotonic()

        def seen() -> bool:
            with lab.client.entered():
                return pya2s.info(SERVICE, timeout=2).map_name == "de_inferno"

        assert cache_env.wait_for(seen, 3.0, step=0.2)
        # refresh_s = 1.0, plus the daemon's fetch time under TCG
        assert time.monotonic() - start < 2.5
    finally:
        refserver.control(lab.ctl, "map de_dust2")


def test_rate_limit_per_source(lab):
    with cache_env.open_in(lab.pop) as dev:
        dev.configure(rate_pps=2, rate_burst=5, rotate_s=60)
        before = dev.counters()
        try:
            with lab.client_socket(timeout=10) as s:
                start = time.monotonic()
                for _ in range(30):
                    s.sendto(a2s.request("info"), SERVICE)
                sending = time.monotonic() - start

                def delta(c: dict[str, int], name: str) -> int:
                    return c[name] - before[name]

                def decided() -> bool:
                    c = dev.counters()
                    return delta(c, "challenges_sent") + delta(c, "rate_limited") == 30

                # every query decided: answered with a challenge or limited
                assert cache_env.wait_for(decided, 30)
                after = dev.counters()
                got = delta(after, "challenges_sent")
                for _ in range(got):  # each one arrives, and nothing more
                    assert len(s.recv(64)) == 9
                s.setblocking(False)
                with pytest.raises(BlockingIOError):
                    s.recv(64)
        finally:
            dev.configure(rate_pps=20, rate_burst=40, rotate_s=60)
    # the burst of 5, plus what 2/s refilled while the (slow, TCG) client was sending
    assert 5 <= got <= 5 + int(2 * sending) + 1
    assert got < 30
    assert after["rate_limited"] - before["rate_limited"] == 30 - got


def test_other_netns_is_not_affected(lab):
    """A second POP netns with the same addresses but no service: packets pass untouched
    to a socket there, which echoes them: the echo is all the client gets."""
    client2 = netns.Namespace("bfc2")
    pop2 = netns.Namespace("bfp2")
    try:
        netns.link(client2, "eth0", f"{CLIENT_IP}/8", pop2, "c0", f"{POP_CLIENT_IP}/8")
        before = cache_env.pop_counters(lab)
        with pop2.socket() as srv, client2.socket() as s:
            srv.bind(SERVICE)
            srv.settimeout(10)
            s.settimeout(10)
            s.sendto(a2s.request("info"), SERVICE)
            data, peer = srv.recvfrom(64)
            assert data == a2s.request("info")
            srv.sendto(b"echo", peer)
            # the module would have answered before the query reached the socket
            assert s.recv(64) == b"echo"
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.recv(64)
        with cache_env.open_in(pop2) as dev2:
            c2 = dev2.counters()
            assert dev2.dump() == []
        assert c2["queries"] == 0
        assert cache_env.pop_counters(lab)["queries"] == before["queries"]
    finally:
        client2.close()
        pop2.close()


def malformed_batch() -> list[bytes]:
    h = b"\xff\xff\xff\xff"
    return [
        h + b"T",
        h + b"TSource Engine Quer\0",
        h + b"TSource Engine Query\0\x01",
        h + b"TSource Engine Query\0\x01\x02\x03",
        h + b"TSource Engine Query!" + b"\0" * 4,
        h + b"UABC",
        h + b"U" + b"\0" * 5,
        h + b"V",
        h + b"V" + b"\xff" * 10,
        h + b"Txxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    ]


def test_100000_malformed_queries_counted_no_reply(lab):
    subprocess.run(["sysctl", "-qw", "net.core.netdev_max_backlog=200000"], check=True)
    before_dmesg = cache_env.dmesg()
    before = cache_env.pop_counters(lab)
    batch = malformed_batch()
    with lab.client_socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
        for i in range(100_000):
            s.sendto(batch[i % len(batch)], SERVICE)
        assert cache_env.wait_for(
            lambda: cache_env.pop_counters(lab)["malformed"] - before["malformed"] >= 100_000, 30
        )
        s.setblocking(False)
        with pytest.raises(BlockingIOError):
            s.recv(64)
    after = cache_env.pop_counters(lab)
    assert after["malformed"] - before["malformed"] == 100_000
    assert after["bytes_out"] == before["bytes_out"]
    assert cache_env.kernel_trouble(cache_env.dmesg()[len(before_dmesg) :]) == []
    # still healthy
    with lab.client.entered():
        assert pya2s.info(SERVICE, timeout=3).server_name == "Bifrost reference server"


def test_game_traffic_passes_untouched(lab):
    before = cache_env.pop_counters(lab)
    with lab.client_socket(timeout=10) as s:
        s.sendto(b"\xff\xff\xff\xffqgetchallenge", SERVICE)
        s.sendto(b"netchannel data", SERVICE)
        # positive control after them: a challenge request, answered
        s.sendto(a2s.request("info"), SERVICE)
        first = s.recv(64)
        assert cache_env.wait_for(
            lambda: cache_env.pop_counters(lab)["passed_other"] - before["passed_other"] == 2, 10
        )
        s.setblocking(False)
        with pytest.raises(BlockingIOError):
            s.recv(64)
    after = cache_env.pop_counters(lab)
    assert a2s.parse_challenge(first) is not None, first
    assert after["passed_other"] - before["passed_other"] == 2
    assert after["queries"] - before["queries"] == 1  # the control


def test_daemon_prometheus_counters(lab):
    import urllib.request

    with lab.pop.entered():
        body = urllib.request.urlopen("http://127.0.0.1:9117/metrics", timeout=10).read().decode()
    from prometheus_client.parser import text_string_to_metric_families

    values = {s.name: s.value for f in text_string_to_metric_families(body) for s in f.samples}
    assert values["bifrost_cached_answers_stored_total"] >= 3
    assert values["bifrost_cached_scheduled_refreshes_total"] >= 1
    assert values["bifrost_nf_answers_total"] >= 3
    assert values["bifrost_cached_services"] == 1
    # the reasons a query goes unanswered for its source (issue 10), exported like the rest
    for reason in ("martian_src", "local_src", "no_unicast_route"):
        assert values[f"bifrost_nf_{reason}_total"] == 0
