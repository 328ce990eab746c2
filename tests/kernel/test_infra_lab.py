"""The lab (`python -m bifrost_testing.lab`), run as `invoke lab` runs it in the guest.

Judged by what each hop counted (the phases' counter deltas the lab read from
the XDP maps, /dev/bifrost_nf, /dev/fou_map and the game service, written with
--json), not by the lab's own verdict lines; and by what it leaves behind.
"""

from __future__ import annotations

import json
import os
import re
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
    phases = json.loads(out.read_text())
    a, b, c, steam, raknet, move = (p["hops"] for p in phases)
    tables = [p["fou_map_table"] for p in phases]

    # (a) A2S: passed up by pop1's XDP, answered by its bifrost_nf, challenge first.
    assert a["pop1.xdp"] == {"pass_cache": 6}
    assert a["pop1.bifrost_nf"]["challenges_sent"] == 3
    assert a["pop1.bifrost_nf"]["answers"] == 3
    # No client query reached the game server in any phase (the POPs' own did).
    for hops in (a, b, c, steam, raknet, move):
        assert "client_a2s_queries" not in hops.get("game_service", {})
    assert a["game_service"]["a2s_queries_from_pops"] > 0
    # (b) one game packet each way through pop1's XDP, learned by fou_map.
    assert b["pop1.xdp"] == {"tx_forward": 1, "tx_return": 1}
    assert b["fou_map"]["learned"] == 1 and b["game_service"]["client_game_packets"] == 1
    assert tables[1] == {CLIENT: POP1}
    # (c) a netchannel packet before the handshake passes on the rule's budget (the
    # service ignores it: no connection), then q, k and 3 netchannel packets each way.
    assert c["pop1.xdp"] == {"tx_forward": 6, "tx_return": 5}
    assert c["game_service"]["client_handshakes"] == 1
    assert c["game_service"]["client_game_packets"] == 6
    # (d), (e) Steam networking and RakNet: handshake and 3 data packets each way, each
    # on its own rule, counted by the game service as one accepted connection.
    for hops, rule, proto in ((steam, "steam", "steam"), (raknet, "rust", "raknet")):
        assert hops[f"pop1.xdp.{rule}"] == {"tx_forward": 5, "tx_return": 5}, hops
        assert hops[f"{proto}_service"] == {"handshakes": 1, "data": 3}, hops
        assert "pop1.xdp" not in hops and "pop2.xdp" not in hops
    # (f) the route moved: the client keeps playing on all three without a handshake.
    for hop in ("pop2.xdp", "pop2.xdp.steam", "pop2.xdp.rust"):
        assert move[hop] == {"tx_forward": 3, "tx_return": 3}, move
    assert not [h for h in move if h.startswith("pop1.xdp")], move
    assert move["fou_map"]["moved"] == 1 and move["fou_map"]["tx_rewritten"] == 9
    assert "client_handshakes" not in move["game_service"]
    assert move["steam_service"] == {"data": 3} and move["raknet_service"] == {"data": 3}
    assert tables[5] == {CLIENT: POP2}

    # The operator's view: the per-hop table, and "ok" lines whose figures are the
    # counters' (the JSON above, read from the maps and devices, not from these lines).
    assert "=== per hop ===" in done.stdout
    oks = {m[1]: m[2] for m in re.finditer(r"^ok \((\w)\) (.*)$", done.stdout, re.M)}
    assert set(oks) == {"c", "d", "e", "f"}, oks
    rule_counts = r"tx_forward \+(\d+) tx_return \+(\d+)"
    for tag, hops, hop in (
        ("c", c, "pop1.xdp"),
        ("d", steam, "pop1.xdp.steam"),
        ("e", raknet, "pop1.xdp.rust"),
    ):
        fwd, ret = map(int, re.search(rule_counts, oks[tag]).groups())  # type: ignore[union-attr]
        assert (fwd, ret) == (hops[hop]["tx_forward"], hops[hop]["tx_return"]), oks[tag]
    assert "`B` via pop1, 3/3 netchannel echoes" in oks["c"]
    assert "ChallengeReply, ConnectOK via pop1, 3/3 data echoes" in oks["d"]
    assert "open connection reply 1, open connection reply 2 via pop1" in oks["e"]
    assert "3/3 data echoes" in oks["e"]
    got = {name: int(n) for n, name in re.findall(r"(\d+)/3 (srcds|steam|raknet)", oks["f"])}
    assert got == {
        "srcds": move["pop2.xdp"]["tx_return"],
        "steam": move["steam_service"]["data"],
        "raknet": move["raknet_service"]["data"],
    }, oks["f"]
    assert f"fou_map moved {CLIENT} to {tables[5][CLIENT]}" in oks["f"]
    assert "pop1 carried 0 packets" in oks["f"]
    # Nothing left behind: namespaces, pins (the services mounted the bpffs, and it stays).
    assert not list(Path("/run/netns").glob("lab-*"))
    assert system.BPFFS.is_mount()
    assert list(system.BPFFS.glob("lab-*")) == []
