"""The whole path in one topology: client, two POPs, one game-server machine.

::

    [client] -- [net] -- [pop1] eth0: `bifrost xdp run` + bifrost_nf + bifrost-cached
                   |  -- [pop2] eth0: the same, its own bifrost.toml
                   `---- [gs] `bifrost endpoint up --netns` -- [service] fou_map,
                                                   bifrost-foumapd, the game service

(bifrost_testing.topology has the addresses, bifrost_testing.system the host
configs, bifrost_testing.scenario the phases.) The phases run in order on one
system, so each test depends on the ones before it; each asserts every hop's
counters for its phase. The object is the one built on the host
(build/xdp/bifrost_xdp.o, srcds compiled in).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bifrost.xdp.build import OBJECT
from bifrost_testing import scenario, system, topology
from bifrost_testing.topology import GAME_PORT, SERVICE_IP

pytestmark = pytest.mark.kernel

CLIENT, POP1, POP2 = topology.client_ip(0), topology.pop_ip(1), topology.pop_ip(2)


@pytest.fixture(scope="module")
def sysm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[system.System]:
    if not OBJECT.exists():
        pytest.fail(f"{OBJECT} missing: build it on the host first (invoke build)")
    work = tmp_path_factory.mktemp("e2e")
    with system.running(work, OBJECT, prefix="e2e") as s:
        yield s
    # Everything it made is gone: namespaces, pins (`bifrost xdp detach` unpinned, and
    # the system removed the then empty pin directories), the services.
    assert not [p for p in Path("/run/netns").glob("e2e-*")]
    assert not any(p.exists() for p in s.pin_bases.values())
    assert all(svc.proc.returncode is not None for svc in s.services.values())


@pytest.fixture(scope="module")
def client(sysm: system.System) -> Iterator[scenario.GameClient]:
    c = scenario.GameClient(sysm.nw)
    yield c
    c.close()


def _logs(sysm: system.System) -> str:
    return "\n".join(f"--- {n}\n{s.text()[-1500:]}" for n, s in sysm.services.items())


def test_every_host_runs_from_its_own_config(sysm: system.System) -> None:
    for name in ("pop1.toml", "pop2.toml", "gs.toml"):
        assert (sysm.work / name).exists()
    assert f'netns = "{sysm.nw.endpoint_ns.name}"' in (sysm.work / "gs.toml").read_text()
    assert all(s.proc.poll() is None for s in sysm.services.values()), _logs(sysm)
    # Before the client says anything, the XDP programs counted nothing for the rule.
    assert sysm.xdp(1) == {} and sysm.xdp(2) == {}
    assert sysm.fou_map_table() == {}


def test_a_a2s_is_answered_by_pop1s_bifrost_nf(sysm: system.System) -> None:
    p = scenario.a2s_queries(sysm)
    assert p.problems == [], (p.as_dict(), _logs(sysm))
    assert p.hops["pop1.xdp"] == {"pass_cache": 6}
    nf = p.hops["pop1.bifrost_nf"]
    assert nf["queries"] == 6 and nf["challenges_sent"] == 3 and nf["answers"] == 3
    assert nf["answer_packets"] >= 3  # the rules answer is split
    # pop2 saw no query (its cache was refreshed meanwhile: entries_set).
    assert p.count("pop2.bifrost_nf", "queries") == 0 and "pop2.xdp" not in p.hops
    assert p.count("game_service", "client_a2s_queries") == 0
    # The positive control for "no client query reached it": the POPs' own queries did.
    assert sysm.game()["queries"].get(POP1, 0) > 0
    assert "fou_map" not in p.hops or p.count("fou_map", "learned") == 0


def test_b_game_traffic_goes_through_pop1_and_fou_map(
    sysm: system.System, client: scenario.GameClient
) -> None:
    p = scenario.game_via_pop1(sysm, client)
    assert p.problems == [], (p.as_dict(), _logs(sysm))
    assert p.hops["pop1.xdp"] == {"tx_forward": 1, "tx_return": 1}
    assert p.count("fou_map", "rx_fou") == 1 and p.count("fou_map", "learned") == 1
    assert p.table == {CLIENT: POP1}
    assert p.count("game_service", "client_game_packets") == 1
    assert "pop2.xdp" not in p.hops


def test_c_the_handshake_validates_the_client_on_pop1(
    sysm: system.System, client: scenario.GameClient
) -> None:
    p = scenario.handshake_via_pop1(sysm, client)
    assert p.problems == [], (p.as_dict(), _logs(sysm))
    n = scenario.NETCHANNEL
    # The early netchannel packet passes on the rule's budget; the service ignores it.
    assert p.hops["pop1.xdp"] == {"tx_forward": 3 + n, "tx_return": 2 + n}
    assert p.count("game_service", "client_handshakes") == 1
    assert p.count("fou_map", "rx_fou") == 3 + n and p.count("fou_map", "tx_fou") == 2 + n
    assert p.table == {CLIENT: POP1}


def test_d_replies_follow_the_client_to_pop2(
    sysm: system.System, client: scenario.GameClient
) -> None:
    p = scenario.move_to_pop2(sysm, client)
    assert p.problems == [], (p.as_dict(), _logs(sysm))
    n = scenario.NETCHANNEL
    # No new handshake: pop2 forwards on the budget until the replies validate the client.
    assert p.hops["pop2.xdp"] == {"tx_forward": n, "tx_return": n}
    assert "pop1.xdp" not in p.hops
    assert p.count("fou_map", "moved") == 1 and p.count("fou_map", "tx_rewritten") == n
    assert p.table == {CLIENT: POP2}
    assert p.count("game_service", "client_handshakes") == 0
    # The cache on pop2 answers too, now that the route leads there.
    import a2s as python_a2s

    before = sysm.nf(2)["answers"]
    with sysm.nw.client.entered():
        assert python_a2s.info((SERVICE_IP, GAME_PORT), timeout=3).map_name == system.MAP_NAME
    assert sysm.nf(2)["answers"] == before + 1
    assert sysm.game()["queries"].get(CLIENT, 0) == 0
