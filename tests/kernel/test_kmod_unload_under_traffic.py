"""Both modules unloaded and reloaded 200 times while several CPUs send traffic (issue 11).

```
 A2S:  client 10.71.0.2 -- POP 10.71.0.1 (bifrost_nf)       2 processes: challenge + query
 FOU:  client -- pop1/pop2 (kernel fou) -- gameserver (fou_map, bifrost-foumapd, echo)
```
Defect 1: the hooks were unregistered in the pernet .exit and the state freed at once,
while nf_unregister_net_hook() does not wait for CPUs still inside the hook: a
use-after-free on every unload under traffic. The fix unhooks in .pre_exit, and the
netns core's synchronize_rcu() runs before any .exit frees. Under TCG the race window
is wide (a vCPU thread can be descheduled inside the hook), so 200 cycles with both
hooks busy reach it; an oops panics the guest (oops=panic) and fails the run.

bifrost-foumapd runs throughout (it holds /dev/fou_map only during a cycle and re-applies
its config and mappings after a reload). bifrost-cached holds /dev/bifrost_nf for its
whole life, so no rmmod can happen while it runs; the test plays its part here,
re-adding the service and answers after each reload as the daemon does at start.

On 6.12 under TCG, the first netfilter hook registered or removed at a hook point while
packets flow panics the guest (kernel-test-vm.md): tests/kernel/conftest.py keeps a chain
at every IPv4 hook point for the whole session, so the static keys never flip.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cache_env
import foumap_topology as topo
import pytest

from bifrost import netns

pytestmark = pytest.mark.kernel
PY = sys.executable
CYCLES = int(os.environ.get("BIFROST_UNLOAD_CYCLES", "200"))
PLAYERS = b"\xff\xff\xff\xffD\x00"

# Verified A2S queries until stopped (SIGTERM); prints the count of verified answers.
A2S_FLOOD = r"""
import json, signal, socket, sys
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
svc = (sys.argv[1], int(sys.argv[2]))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[3], 0)); s.settimeout(0.3)
answers = 0
while not stop:
    try:
        s.sendto(b"\xff\xff\xff\xffU\xff\xff\xff\xff", svc)
        got = s.recv(2048)
        if got[4:5] != b"A":
            continue
        s.sendto(b"\xff\xff\xff\xffU" + got[5:9], svc)
        answers += s.recv(2048)[4:5] == b"D"
    except OSError:  # timeouts and ICMP errors while the module is out
        pass
print(json.dumps({"answers": answers}))
"""

# FOU echo through the game server until stopped; prints the echoes that came back.
ECHO_FLOOD = r"""
import json, signal, socket, sys
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 0)); s.settimeout(0.3)
echoes = 0
while not stop:
    try:
        s.sendto(b"echo", (sys.argv[2], int(sys.argv[3])))
        echoes += s.recv(64) == b"echo"
    except OSError:
        pass
print(json.dumps({"echoes": echoes}))
"""


def slab_objects() -> dict[str, int]:
    """Active objects of the kmalloc caches where both modules' state lives.

    Not kmalloc-cg-*: those hold memcg-accounted allocations, made on behalf of user
    processes (sockets, pipes, files of the test's own traffic processes); the modules
    never allocate with __GFP_ACCOUNT.
    """
    out = {}
    for line in Path("/proc/slabinfo").read_text().splitlines()[2:]:
        f = line.split()
        if f[0].startswith("kmalloc") and not f[0].startswith("kmalloc-cg-"):
            out[f[0]] = int(f[1])
    return out


def settled_slab_objects() -> dict[str, int]:
    """slab_objects() once reclaimable caches are dropped, so only live objects count."""
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    return slab_objects()


def grown(before: dict[str, int], after: dict[str, int], slack: int) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0) > slack}


def rmmod_retry(*modules: str) -> None:
    """The fou_map daemon holds the device for a moment each cycle: retry around it."""
    for _ in range(400):
        if subprocess.run(["rmmod", *modules], capture_output=True).returncode == 0:
            return
        modules = tuple(m for m in modules if Path(f"/sys/module/{m}").exists())
        if not modules:
            return
        time.sleep(0.01)
    raise AssertionError(f"rmmod {modules} kept failing")


def load_both() -> None:
    subprocess.run(["modprobe", "-a", "bifrost_nf", "fou_map"], check=True)
    assert topo.wait_for(lambda: cache_env.DEV.exists() and topo.DEV.exists(), 10)


def refill(pop: netns.Namespace) -> None:
    with cache_env.open_in(pop) as dev:
        dev.configure(rate_pps=0, rate_burst=0, rotate_s=60)
        dev.set_service(cache_env.POP_CLIENT_IP, cache_env.GAME_PORT)
        dev.set_answer(cache_env.POP_CLIENT_IP, cache_env.GAME_PORT, "player", [PLAYERS],
                       3_600_000, 0)  # fmt: skip


def stop_all(procs: list[subprocess.Popen[bytes]]) -> list[dict[str, int]]:
    out = []
    for p in procs:
        p.send_signal(signal.SIGTERM)
        stdout, _ = p.communicate(timeout=60)
        out.append(json.loads(stdout))
    return out


def test_unload_reload_200_times_under_traffic(tmp_path):
    subprocess.run(["modprobe", "-a", "fou", "ipip", "veth", "nf_tables"], check=True)
    for m in ("bifrost_nf", "fou_map"):
        subprocess.run(["rmmod", m], capture_output=True)
    before_dmesg = cache_env.dmesg()
    slab0 = settled_slab_objects()
    with cache_env.topo(f"ul{os.getpid() % 10000}") as a2s, \
            topo.topology(cfg=None) as fou:  # fmt: skip
        cache_env.load()
        topo.load()
        refill(a2s.pop)
        cfg = tmp_path / "bifrost.toml"
        cfg.write_text(f"[fou_map]\nports = [{topo.FOU_PORT}]\npops = [\"{topo.POP_NET}\"]\n"
                       "idle_timeout = 60\n"
                       "max_entries = 1000\nsnapshot_interval = 0.5\n")  # fmt: skip
        daemon = fou.gs.popen(
            [PY, "-m", "bifrost.fou_map.daemon", "--config", str(cfg),
             "--state", str(tmp_path / "snapshot")],
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            with fou.fou_map() as fm:
                assert topo.wait_for(lambda: fm.config().ports == (topo.FOU_PORT,), 120)
            fou.use_pop(2)  # replies are rewritten (the tunnel's own remote is POP 1)
            assert fou.echo_once(fou.client_socket(0))
            procs = [
                a2s.client.popen([PY, "-c", A2S_FLOOD, cache_env.POP_CLIENT_IP,
                                  str(cache_env.GAME_PORT), cache_env.CLIENT_IP],
                                 stdout=subprocess.PIPE)
                for _ in range(2)
            ] + [
                fou.client.popen([PY, "-c", ECHO_FLOOD, topo.client_ip(i), topo.SERVICE_IP,
                                  str(topo.GAME_PORT)], stdout=subprocess.PIPE)
                for i in range(2)
            ]  # fmt: skip
            progress = Path(os.environ.get("BIFROST_PROGRESS", "/tmp/unload-progress"))
            for cycle in range(CYCLES):
                rmmod_retry("bifrost_nf", "fou_map")
                load_both()
                refill(a2s.pop)
                progress.write_text(f"{cycle + 1}/{CYCLES}\n")
            # Positive control: after the last reload both paths answer again.
            with a2s.client_socket(timeout=3) as s:
                s.sendto(b"\xff\xff\xff\xffU\xff\xff\xff\xff",
                         (cache_env.POP_CLIENT_IP, cache_env.GAME_PORT))  # fmt: skip
                assert s.recv(64)[4:5] == b"A"
            assert topo.wait_for(lambda: fou.echo_once(fou.client_socket(1)), 60)
            results = stop_all(procs)
        finally:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        assert sum(r.get("answers", 0) for r in results) > 0
        assert sum(r.get("echoes", 0) for r in results) > 0
        rmmod_retry("bifrost_nf", "fou_map")
    # A leak is what is left once the modules are out and the namespaces gone: the
    # per-cycle work also fills per-netns caches (routes, neighbours, sockets) that the
    # namespaces' teardown frees. Netns teardown and RCU frees are asynchronous: wait
    # for the counts to come back.
    # OPEN (measured 2026-11-29, this way): 200 cycles left kmalloc-8 +402 on 6.1 and
    # kmalloc-192 +161 on 6.12, about two and one objects per cycle, in caches the
    # modules' own structures do not use. Load/unload alone leaves nothing: 60 cycles of
    # both modules with their devices opened changed no kmalloc cache by 20 objects on
    # 6.1, as for an in-tree module (dummy). On 6.12 the counts move that much with no
    # Bifrost code at all: 100 load/unload cycles of dummy left kmalloc-96 +120, and of
    # both modules kmalloc-64 +64 and kmalloc-96 -88. So on 6.1 it comes with the
    # per-cycle work under traffic (daemon re-open and re-config, rmmod retries, ICMP
    # while the modules are out), whose objects are not known yet. The gate catches what would
    # hurt a host (a leak per packet: the traffic sends tens of thousands) and lets
    # those per-cycle objects through: three per cycle.
    slack = 3 * CYCLES
    assert topo.wait_for(lambda: not grown(slab0, settled_slab_objects(), slack), 90), str(
        grown(slab0, slab_objects(), slack)
    )
    print(f"kmalloc growth after {CYCLES} cycles:", grown(slab0, slab_objects(), 4))
    new = cache_env.dmesg()[len(before_dmesg) :]
    assert not cache_env.kernel_trouble(new), cache_env.kernel_trouble(new)
    assert not re.search(r"soft lockup|stall", new)
    assert "fou_map_entry" not in Path("/proc/slabinfo").read_text()
