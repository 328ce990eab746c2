"""The lab (`python -m bifrost_testing.lab`), run as `invoke lab` runs it in the guest.

Judged by what each hop counted (the phases' counter deltas the lab read from
the XDP maps, /dev/bifrost_nf, /dev/fou_map and the game service, written with
--json), not by the lab's own verdict lines; and by what it leaves behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bifrost.xdp.build import OBJECT
from bifrost_testing import system, topology

pytestmark = pytest.mark.kernel

CLIENT, POP1, POP2 = topology.client_ip(0), topology.pop_ip(1), topology.pop_ip(2)


def test_lab_shows_the_whole_path_hop_by_hop(tmp_path: Path) -> None:
    if not OBJECT.exists():
        pytest.fail(f"{OBJECT} missing: build it on the host first (invoke build)")
    out = tmp_path / "phases.json"
    done = subprocess.run(
        [sys.executable, "-m", "bifrost_testing.lab", "--json", str(out), "--obj", str(OBJECT)],
        capture_output=True,
        text=True,
        timeout=1500,
        env={**os.environ, "BIFROST_GUEST": "1"},
        check=False,
    )
    text = done.stdout + done.stderr
    assert done.returncode == 0, text[-6000:]
    a, b, c, d = (p["hops"] for p in json.loads(out.read_text()))
    tables = [p["fou_map_table"] for p in json.loads(out.read_text())]

    # (a) A2S: passed up by pop1's XDP, answered by its bifrost_nf, challenge first.
    assert a["pop1.xdp"] == {"pass_cache": 6}
    assert a["pop1.bifrost_nf"]["challenges_sent"] == 3
    assert a["pop1.bifrost_nf"]["answers"] == 3
    # No client query reached the game server in any phase (the POPs' own did).
    for hops in (a, b, c, d):
        assert "client_a2s_queries" not in hops.get("game_service", {})
    assert a["game_service"]["a2s_queries_from_pops"] > 0
    # (b) one game packet each way through pop1's XDP, learned by fou_map.
    assert b["pop1.xdp"] == {"tx_forward": 1, "tx_return": 1}
    assert b["fou_map"]["learned"] == 1 and b["game_service"]["client_game_packets"] == 1
    assert tables[1] == {CLIENT: POP1}
    # (c) dropped until the handshake, then q, k and 3 netchannel packets each way.
    assert c["pop1.xdp"] == {"drop_module": 1, "tx_forward": 5, "tx_return": 5}
    assert c["game_service"]["client_handshakes"] == 1
    # (d) the route moved: pop2 drops until the client reconnects, then carries it all.
    assert d["pop2.xdp"] == {"drop_module": 1, "tx_forward": 5, "tx_return": 5}
    assert "pop1.xdp" not in d
    assert d["fou_map"]["moved"] == 1 and d["fou_map"]["tx_rewritten"] == 5
    assert tables[3] == {CLIENT: POP2}

    # The operator's view: the per-hop table and the stated limitation.
    assert "=== per hop ===" in done.stdout
    assert "drops the client's netchannel packets until the client connects again" in text
    # Nothing left behind: namespaces, pins (the services mounted the bpffs, and it stays).
    assert not list(Path("/run/netns").glob("lab-*"))
    assert system.BPFFS.is_mount()
    assert list(system.BPFFS.glob("lab-*")) == []
