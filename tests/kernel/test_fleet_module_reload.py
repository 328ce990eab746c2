"""The fleet agent's module reload (`bifrost fleet apply` after a DKMS rebuild) run for
real on a game server: bifrost-foumapd running, mappings learned, traffic flowing.

The module is the DKMS-built fou_map already installed in /lib/modules (this test does
not build or install one); the agent's step unloads it and loads it again with the
daemon sequenced around it (bifrost.fleet.holders), checks /sys/module/fou_map/version
is the release's, and no mapping is lost. A second test: a process holding the device
for good makes the unload fail with rmmod's reason and the module keeps running.

On 6.12 under TCG, the first netfilter hook registered or removed at a hook point while
packets flow panics the guest: tests/kernel/conftest.py keeps a chain at every IPv4
hook point for the session, so the reload under traffic never flips a static key.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import foumap_topology as topo
import pytest
from test_fou_map_daemon import Foumapd, learn_two, snapshot_has

from bifrost import __version__
from bifrost.fleet import agent, kmod
from bifrost.fleet.hoststate import HostState
from bifrost.fou_map.control import TableConfig

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module", autouse=True)
def module():
    with topo.module_for_tests():
        yield


@pytest.fixture(scope="module")
def shared():
    with topo.build() as t:
        yield t


@pytest.fixture
def setup(shared: topo.Topology, tmp_path: Path):
    """The testbed with an empty table; the daemon's config is the agent's host config
    (its state_file is where the agent looks for the daemon's snapshots)."""
    with shared.fou_map() as fm:
        fm.configure(TableConfig())
        fm.flush(static=True)
    shared.use_pop(1)
    d = Foumapd(shared, tmp_path)
    text = d.config.read_text()
    d.config.write_text(text.replace("[fou_map]\n", f'[fou_map]\nstate_file = "{d.state}"\n', 1))
    try:
        yield shared, d, HostState(d.config, tmp_path / "agent")
    finally:
        d.stop()


def test_agent_reload_with_daemon_and_traffic_loses_no_mapping(setup) -> None:
    t, d, hs = setup
    d.start()
    want = learn_two(t)
    assert topo.wait_for(lambda: snapshot_has(d, want), timeout=10)
    with t.fou_map() as fm:
        created = fm.stats().created_ns
    # Client 0 keeps sending through its POP (pop 1) during the reload (learn_two left
    # the clients' route on pop 2: client 0's traffic would move its mapping there).
    t.use_pop(1)
    stop = threading.Event()
    sent = [0]

    s = t.client_socket(0, timeout=0.2)

    def traffic() -> None:
        while not stop.is_set():
            t.echo_once(s)
            sent[0] += 1

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        assert topo.wait_for(lambda: sent[0] >= 3, timeout=10)  # traffic is flowing
        lines = hs.reload_module(topo.MODULE, __version__)
    finally:
        stop.set()
        sender.join(timeout=30)
        s.close()
    assert lines[0].startswith("bifrost-foumapd saved "), lines
    assert lines[-2].startswith("bifrost-foumapd restored its mappings"), lines
    assert lines[-1] == f"fou_map: {__version__} -> {__version__}", lines
    assert kmod.loaded_version(topo.MODULE) == __version__
    # What health reads (no dkms needed): the real /sys/module and the real
    # `modinfo -F version` of the .ko modprobe just loaded.
    assert agent.module_versions(hs) == {
        "module": topo.MODULE,
        "loaded": __version__,
        "installed": __version__,
        "problem": "",
    }
    with t.fou_map() as fm:
        assert fm.stats().created_ns != created  # really a new module instance
        assert fm.table() == want  # every mapping, learned and static, is back
        assert fm.config().ports == (topo.FOU_PORT,)
    # Replies follow each client's POP after the reload (client 1 learned pop 2).
    rx2 = t.pop_rx(2)
    t.echo.sock.sendto(b"push", (topo.client_ip(1), 4000))
    assert topo.wait_for(lambda: t.pop_rx(2) == rx2 + 1)


def test_agent_reload_refused_while_the_device_is_held(
    setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process with /dev/fou_map open for good (as bifrost-cached keeps its device):
    the unload fails naming rmmod's reason, and the same module instance keeps running."""
    t, _, hs = setup
    monkeypatch.setattr(kmod, "UNLOAD_TIMEOUT_S", 1.0)
    with t.fou_map() as fm:
        created = fm.stats().created_ns
        with pytest.raises(kmod.KmodError, match=r"rmmod fou_map kept failing .* in use"):
            hs.reload_module(topo.MODULE, __version__)
        assert fm.stats().created_ns == created
    assert kmod.loaded_version(topo.MODULE) == __version__
    assert os.path.exists(topo.DEV)
