"""`bifrost endpoint up|down`: idempotent, and a server can bind as soon as `up` returns."""

from __future__ import annotations

import socket
import subprocess
import sys

import foumap_topology as topo
import pytest

from bifrost import netns

pytestmark = pytest.mark.kernel


@pytest.fixture
def ns():
    subprocess.run(["modprobe", "-a", "fou", "ipip"], check=True)
    n = netns.Namespace("fmep")
    n.run(["ip", "addr", "add", "10.200.0.1/32", "dev", "lo"])
    yield n
    n.close()


def bifrost(*args: str) -> subprocess.CompletedProcess[str]:
    # No -c: the defaults (an explicit -c must name an existing file).
    argv = [sys.executable, "-m", "bifrost.cli.main", *args]
    # Generous: the CLI imports every component, slow over 9p under TCG.
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


def endpoint(ns: netns.Namespace, action: str) -> subprocess.CompletedProcess[str]:
    return bifrost(
        "endpoint", action, "--netns", ns.name, "--local", "10.200.0.1",
        "--gateway", "10.41.1.1", "--address", "198.51.100.10/32", "--port", "5555",
    )  # fmt: skip


def ifindex(ns: netns.Namespace) -> int | None:
    with ns.ipr() as ipr:
        idx = ipr.link_lookup(ifname="fm0")
    return idx[0] if idx else None


def test_up_is_ready_idempotent_and_down_removes(ns):
    done = endpoint(ns, "up")
    assert done.returncode == 0, done.stderr
    # Right after `up` returns, a game server binds its address.
    with ns.entered():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("198.51.100.10", topo.GAME_PORT))
    s.close()
    first = ifindex(ns)
    assert first is not None
    assert "5555" in ns.run(["ip", "fou", "show"]).stdout
    link = ns.run(["ip", "-d", "link", "show", "fm0"]).stdout
    assert "remote any local 10.200.0.1" in link and "encap fou" in link
    assert "default via 10.41.1.1 dev fm0 onlink" in ns.run(["ip", "route"]).stdout

    again = endpoint(ns, "up")
    assert again.returncode == 0, again.stderr
    assert ifindex(ns) == first, "a second `up` keeps the existing tunnel"

    assert endpoint(ns, "down").returncode == 0
    assert ifindex(ns) is None
    assert "5555" not in ns.run(["ip", "fou", "show"]).stdout
    assert endpoint(ns, "down").returncode == 0, "down is idempotent too"
    assert endpoint(ns, "up").returncode == 0
    assert ifindex(ns) is not None


def test_up_without_addresses_says_what_is_missing(ns):
    done = bifrost("endpoint", "up", "--netns", ns.name)
    assert done.returncode == 1
    assert "--local and --gateway" in done.stderr
