"""`bifrost fleet` against real OpenSSH servers: plan, apply (build, attach, swap, DKMS
rebuild), canary failure with rollback, a failing build or DKMS rebuild, an unreachable
host, a wrong host key, the forced command.

DKMS is the lab's stub (bifrost_testing.dkms_stub, at the command boundary: real DKMS
state is global to the test machine and its kernel has no headers), and so are
modprobe/rmmod (bifrost_testing.modprobe_stub, over a /sys/module of the host's own);
the tests assert what the agents asked DKMS and modprobe to do, in order, what DKMS
then has installed and which version is loaded. The reload itself, with a daemon and
traffic, runs on the real module in tests/kernel/test_fleet_module_reload.py.

The tests share one lab (module scope: starting three sshd and two traffic sources
is the slow part) and run in file order; each says what state it starts from.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import NamedTuple

import pytest

from bifrost import __version__
from bifrost_testing.fleet_lab import FleetLab, LabHost, other_host_key
from bifrost_testing.topology import client_ip, net_pop_ip

pytestmark = pytest.mark.bpf

KERNEL = os.uname().release  # the lab's hosts run the test machine's kernel
OLD = "0.0.9"  # an older release's module, installed on a host before an apply
KMOD = {"pop1": "bifrost_nf", "pop2": "bifrost_nf", "gs1": "fou_map"}


def changing_calls(lab: FleetLab, name: str, since: int = 0) -> list[list[str]]:
    """The dkms, modprobe and rmmod commands that change something the host's agent
    ran (not `dkms status`), in order."""
    return [c for c in lab.hosts[name].dkms_calls()[since:] if c[0] != "status"]


def rebuild_calls(module: str, version: str = __version__) -> list[list[str]]:
    name = f"{module}/{version}"
    return [
        ["add", name],
        ["build", name, "-k", KERNEL],
        ["install", name, "-k", KERNEL, "--force"],
    ]


def reload_calls(module: str, loaded: bool = True) -> list[list[str]]:
    """The agent's reload: rmmod (when a module was loaded), then modprobe."""
    return [*([["rmmod", module]] if loaded else []), ["modprobe", module]]


def on_old_module(lab: FleetLab) -> LabHost:
    """pop1 back on an older release's module, installed and loaded; DKMS never had
    this release's."""
    pop1 = lab.hosts["pop1"]
    pop1.set_dkms_state([["bifrost_nf", OLD, KERNEL, "installed"]])
    pop1.set_loaded("bifrost_nf", OLD)
    shutil.rmtree(pop1.dkms_dir / "bifrost_nf" / __version__, ignore_errors=True)
    return pop1


def assert_serves_on_old_module(lab: FleetLab, name: str) -> None:
    """The host serves game traffic, and health fails on one thing: the older module."""
    health = lab.ssh(name, "health", "5")
    assert health.returncode == 4, health.stdout + health.stderr
    report = json.loads(health.stdout)
    assert report["served_in_window"] > 0, report
    assert report["problems"] == [
        f"bifrost_nf is loaded {OLD}, not this release's {__version__} (modprobe would load {OLD})"
    ], report
    assert report["module_version"]["loaded"] == OLD


def running(lab: FleetLab, name: str) -> str:
    """The config the host runs (what its agent installed), '' if none."""
    path = lab.hosts[name].config
    return path.read_text() if path.exists() else ""


def prog_id(lab: FleetLab, name: str) -> int:
    st = lab.fleet("status", name)
    assert st.returncode == 0, st.stdout + st.stderr
    m = re.search(r"prog id (\d+)", st.stdout)
    assert m, st.stdout
    return int(m.group(1))


def all_running(lab: FleetLab) -> dict[str, str]:
    """The config each host runs."""
    return {n: running(lab, n) for n in lab.hosts}


def call_counts(lab: FleetLab) -> dict[str, int]:
    """How many dkms/modprobe/rmmod commands each host's agent has run so far."""
    return {n: len(lab.hosts[n].dkms_calls()) for n in lab.hosts}


class Before(NamedTuple):
    calls: dict[str, int]  # call_counts()
    prog: int  # pop1's program id
    running: dict[str, str]  # all_running()


def change_pops(lab: FleetLab) -> Before:
    """The lab as it is now, then a config change for pop1 and pop2 (ipv6 = "drop")."""
    before = Before(call_counts(lab), prog_id(lab, "pop1"), all_running(lab))
    lab.set_config("pop1", extra='ipv6 = "drop"')
    lab.set_config("pop2", modules=(), extra='ipv6 = "drop"')
    return before


def pops_back(lab: FleetLab) -> None:
    """pop1 and pop2 on their usual configs again (pop2 without game modules)."""
    lab.set_config("pop1")
    lab.set_config("pop2", modules=())


def test_keygen_line_restricts_the_key(lab: FleetLab) -> None:
    line = (lab.hosts["pop1"].dir / "authorized_keys").read_text()
    assert line.startswith('restrict,command="'), line
    assert " fleet agent --state-dir " in line and "ssh-ed25519 " in line
    assert lab.key.stat().st_mode & 0o077 == 0  # ssh-keygen's private key: owner only


def test_plan_shows_diffs_and_changes_nothing(lab: FleetLab) -> None:
    # pop1 runs an older release's module; pop2 and gs1 have none installed yet.
    lab.hosts["pop1"].set_dkms_state([["bifrost_nf", OLD, KERNEL, "installed"]])
    lab.hosts["pop1"].set_loaded("bifrost_nf", OLD)
    done = lab.fleet("plan")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for name in ("pop1", "pop2"):
        assert f"== {name} (pop, " in out and "rebuild" in out
    assert "+#define SRCDS_HANDSHAKE" in out
    assert '+modules = ["srcds"]' in out
    assert "== gs1 (gameserver, " in out and "+[fou_map]" in out
    assert (
        f"-- kernel module: DKMS rebuild of bifrost_nf {__version__} for {KERNEL}: this "
        f"host's bifrost is {__version__}, {OLD} is installed for {KERNEL}"
    ) in out, out
    assert f"DKMS rebuild of fou_map {__version__} for {KERNEL}: " in out
    assert "none is installed" in out
    assert all(running(lab, n) == "" for n in lab.hosts)
    assert all(changing_calls(lab, n) == [] for n in lab.hosts)


def test_apply_installs_builds_and_attaches(lab: FleetLab) -> None:
    done = lab.fleet("apply")
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "pop1 (canary): built bifrost_xdp.o" in out, out  # first POP: the canary
    assert out.index("pop1 (canary): healthy") < out.index("pop2: installed")
    for name in lab.hosts:
        assert running(lab, name) == lab.host_config_path(name).read_text()
    assert "pop2: xdp attach: eth0: attached (native)" in out
    assert re.search(r"pop2: healthy \(\d+ packets served", out), out
    assert "gs1: healthy" in out
    header = (lab.hosts["pop1"].agent_state / "current" / "module_config.h").read_text()
    assert "#define SRCDS_HANDSHAKE" in header
    # Each host's module rebuilt through DKMS with this release's version and source,
    # then loaded in place of the one running (pop1's older one is unloaded first).
    was = {"pop1": OLD, "pop2": "none", "gs1": "none"}
    for name, module in KMOD.items():
        h = lab.hosts[name]
        calls = rebuild_calls(module) + reload_calls(module, loaded=name == "pop1")
        assert changing_calls(lab, name) == calls, h.dkms_calls()
        assert (h.usr_src / f"{module}-{__version__}" / "dkms.conf").exists()
        label = f"{name} (canary)" if name == "pop1" else name
        assert (
            f"{label}: dkms: {module} {__version__} built and installed for {KERNEL} "
            f"(was {was[name]})"
        ) in out, out
        loaded = OLD if name == "pop1" else "not loaded"
        assert f"{label}: {module}: {loaded} -> {__version__}" in out, out
        assert h.loaded(module) == __version__
    # The module is loaded before the config switches.
    assert out.index("pop1 (canary): bifrost_nf: ") < out.index("pop1 (canary): installed config")
    assert lab.hosts["pop1"].dkms_state() == [
        ["bifrost_nf", OLD, KERNEL, "built"],
        ["bifrost_nf", __version__, KERNEL, "installed"],
    ]
    # Nothing left to do, and the table shows every host.
    again = lab.fleet("plan")
    assert again.stdout.count(": unchanged") == 3, again.stdout
    st = lab.fleet("status")
    assert st.returncode == 0, st.stderr
    rows = {line.split()[0]: line for line in st.stdout.splitlines()[1:]}
    assert set(rows) == {"pop1", "pop2", "gs1"}
    assert "attached (native" in rows["pop1"] and "srcds" in rows["pop1"]
    assert "; auth off" in rows["pop1"]  # the lab's POPs have no [auth]: the table says so
    assert re.search(r"served [1-9]\d* dropped 0", rows["pop2"]), rows["pop2"]
    assert "bifrost-foumapd=" in rows["gs1"]
    # The modules: DKMS's version and the loaded one.
    assert f"bifrost_nf {__version__} installed, loaded {__version__}" in rows["pop1"]
    assert f"fou_map {__version__} installed, loaded {__version__}" in rows["gs1"]


def test_older_loaded_module_is_reloaded(lab: FleetLab) -> None:
    """From the applied state: pop2's DKMS has this release installed, but an older
    module is still loaded (installed before, never reloaded). health fails on it, plan
    says reload, apply reloads it without any DKMS step, status shows the version."""
    pop2 = lab.hosts["pop2"]
    pop2.set_loaded("bifrost_nf", OLD)
    try:
        sick = lab.ssh("pop2", "health", "1")
        assert sick.returncode == 4, sick
        assert (
            f"bifrost_nf is loaded {OLD}, not this release's {__version__} "
            f"(modprobe would load {__version__})"
        ) in sick.stdout, sick.stdout
        table = lab.fleet("status", "pop2")
        assert f"bifrost_nf {__version__} installed, loaded {OLD} (reload" in table.stdout
        plan = lab.fleet("plan", "pop2")
        assert (
            f"-- kernel module: reload bifrost_nf: {OLD} is loaded, {__version__} installed"
        ) in plan.stdout, plan.stdout
        calls = len(pop2.dkms_calls())
        done = lab.fleet("apply", "pop2")
        out = done.stdout
        assert done.returncode == 0, out + done.stderr
        assert f"pop2 (canary): bifrost_nf: {OLD} -> {__version__}" in out, out
        assert changing_calls(lab, "pop2", since=calls) == reload_calls("bifrost_nf")
        assert pop2.loaded("bifrost_nf") == __version__
        healthy = r"pop2 \(canary\): healthy \(\d+ packets served in the window; bifrost_nf "
        assert re.search(healthy + re.escape(f"{__version__} loaded)"), out), out
        assert lab.fleet("plan", "pop2").stdout.count(": unchanged") == 1
    finally:
        pop2.set_loaded("bifrost_nf", __version__)


def test_module_change_rebuilds_and_swaps(lab: FleetLab) -> None:
    """From the applied state: pop2 drops the srcds module; only pop2 changes."""
    before = prog_id(lab, "pop2")
    calls = len(lab.hosts["pop2"].dkms_calls())
    old_pop1 = running(lab, "pop1")
    lab.set_config("pop2", modules=())
    plan = lab.fleet("plan", "pop2")
    assert "-#define SRCDS_HANDSHAKE" in plan.stdout and ": rebuild" in plan.stdout, plan.stdout
    done = lab.fleet("apply", "pops")  # a group
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "pop1: unchanged" in out
    assert "pop2 (canary): built bifrost_xdp.o with modules none" in out, out
    # Swapped in one step (bpf_link_update), the maps (counters, clients) kept.
    assert re.search(r"pop2 \(canary\): xdp upgrade: eth0: swapped prog id \d+ -> \d+ atomic", out)
    assert re.search(r"maps kept: .*\bcounters\b", out), out
    assert "pop2 (canary): healthy" in out
    assert running(lab, "pop2") == lab.host_config_path("pop2").read_text()
    assert running(lab, "pop1") == old_pop1
    assert prog_id(lab, "pop2") != before  # the new object runs
    header = (lab.hosts["pop2"].agent_state / "current" / "module_config.h").read_text()
    assert "SRCDS_HANDSHAKE" not in header
    # Its kernel module is this release's already: no DKMS rebuild.
    assert changing_calls(lab, "pop2", since=calls) == []
    assert "dkms:" not in out


def test_canary_failure_rolls_back_and_stops(lab: FleetLab) -> None:
    """pop1's change blocks its clients (its health check sees no game packet served):
    pop1 is rolled back, DKMS's install of its older module too, and pop2, whose
    change is fine, is not touched."""
    pop1 = lab.hosts["pop1"]
    pop1.set_dkms_state(
        [["bifrost_nf", OLD, KERNEL, "installed"], ["bifrost_nf", __version__, KERNEL, "built"]]
    )
    pop1.set_loaded("bifrost_nf", OLD)
    calls = call_counts(lab)
    old = all_running(lab)
    lab.set_config("pop1", extra=f'block = ["{client_ip(0)}/32"]')  # pop1's client
    lab.set_config("pop2", modules=(), extra='ipv6 = "drop"')
    done = lab.fleet("apply", "--canary", "pop1", "--health-window", "3")
    out = done.stdout
    assert done.returncode == 1, out + done.stderr
    assert "pop1 (canary): installed config" in out
    assert "pop1 (canary): health check failed: counters not moving" in out, out
    assert "pop1 (canary): rollback: restored config" in out
    assert "not changed: pop2" in out
    assert "pop2: installed" not in out
    assert all_running(lab) == old
    # DKMS had this release built: the apply only installed and loaded it, the rollback
    # put the older module back and loaded it again.
    name = f"bifrost_nf/{__version__}"
    assert changing_calls(lab, "pop1", since=calls["pop1"]) == [
        ["install", name, "-k", KERNEL, "--force"],
        *reload_calls("bifrost_nf"),
        ["install", f"bifrost_nf/{OLD}", "-k", KERNEL, "--force"],
        *reload_calls("bifrost_nf"),
    ]
    assert f"pop1 (canary): bifrost_nf: {OLD} -> {__version__}" in out
    assert f"pop1 (canary): rollback: dkms: bifrost_nf {OLD} installed again for {KERNEL}" in out
    assert f"pop1 (canary): rollback: bifrost_nf: {__version__} -> {OLD}" in out
    assert ["bifrost_nf", OLD, KERNEL, "installed"] in pop1.dkms_state()
    assert pop1.loaded("bifrost_nf") == OLD
    assert changing_calls(lab, "pop2", since=calls["pop2"]) == []
    # pop1 serves again on its old config; its health names the older module it runs.
    assert_serves_on_old_module(lab, "pop1")
    pops_back(lab)


def test_failing_kmod_rebuild_stops_the_rollout(lab: FleetLab) -> None:
    """pop1 runs an older module and its DKMS build fails (a compiler error): pop1, the
    canary, keeps its config, program and older module (what the rebuild added is
    removed from DKMS again); pop2, next in line, is not touched."""
    pop1 = on_old_module(lab)
    pop1.fail_dkms_build(True)
    calls, before, old = change_pops(lab)
    try:
        done = lab.fleet("apply", "--canary", "pop1")
        out = done.stdout
        assert done.returncode == 1, out + done.stderr
        name = f"bifrost_nf/{__version__}"
        assert (
            "error: pop1: bifrost fleet agent: apply: kernel module rebuild failed, nothing "
            f"changed: dkms build {name} -k {KERNEL} failed (exit 10); bifrost_nf {OLD} stays "
            f"installed for {KERNEL}: "
        ) in out, out
        assert "Bad return status for module build" in out
        assert "not changed: pop2" in out and "pop2: installed" not in out
        assert all_running(lab) == old
        assert changing_calls(lab, "pop1", since=calls["pop1"]) == [
            ["add", name],
            ["build", name, "-k", KERNEL],
            ["remove", name, "--all"],
        ]
        assert pop1.dkms_state() == [["bifrost_nf", OLD, KERNEL, "installed"]]
        assert pop1.loaded("bifrost_nf") == OLD  # never unloaded
        assert changing_calls(lab, "pop2", since=calls["pop2"]) == []
        # pop1's program was never touched and still serves.
        assert prog_id(lab, "pop1") == before
        assert_serves_on_old_module(lab, "pop1")
        # The build fixed and the configs back: pop1's module alone is rebuilt.
        pop1.fail_dkms_build(False)
        pops_back(lab)
        calls["pop1"] = len(pop1.dkms_calls())
        again = lab.fleet("apply", "--canary", "pop1")
        assert again.returncode == 0, again.stdout + again.stderr
        assert changing_calls(lab, "pop1", since=calls["pop1"]) == rebuild_calls(
            "bifrost_nf"
        ) + reload_calls("bifrost_nf")
        assert pop1.loaded("bifrost_nf") == __version__
        assert "pop1 (canary): healthy" in again.stdout and "pop2: unchanged" in again.stdout
        assert all_running(lab) == old
    finally:
        pop1.fail_dkms_build(False)
        pops_back(lab)


def test_wrong_loaded_version_rolls_the_module_back(lab: FleetLab) -> None:
    """pop1's rebuild succeeds but modprobe loads another version (an older .ko that
    depmod prefers to DKMS's): the agent's check of /sys/module/bifrost_nf/version
    fails, DKMS's previous install is put back and loaded again, pop1 keeps its
    config and program, and pop2 is not touched."""
    pop1 = on_old_module(lab)
    pop1.shadow_module("bifrost_nf", OLD)
    calls, before, old = change_pops(lab)
    try:
        done = lab.fleet("apply", "--canary", "pop1")
        out = done.stdout
        assert done.returncode == 1, out + done.stderr
        assert (
            "error: pop1: bifrost fleet agent: apply: kernel module rebuild failed, nothing "
            f"changed: after the reload bifrost_nf is version {OLD}, not {__version__}; "
            f"dkms: bifrost_nf {OLD} installed again for {KERNEL}; bifrost_nf: {OLD} -> {OLD}"
        ) in out, out
        assert "not changed: pop2" in out
        assert changing_calls(lab, "pop1", since=calls["pop1"]) == [
            *rebuild_calls("bifrost_nf"),
            *reload_calls("bifrost_nf"),
            ["install", f"bifrost_nf/{OLD}", "-k", KERNEL, "--force"],
            *reload_calls("bifrost_nf"),
        ]
        assert ["bifrost_nf", OLD, KERNEL, "installed"] in pop1.dkms_state()
        assert pop1.loaded("bifrost_nf") == OLD
        assert all_running(lab) == old
        assert prog_id(lab, "pop1") == before
        assert changing_calls(lab, "pop2", since=calls["pop2"]) == []
        # The stale .ko gone, the same apply goes through and loads this release.
        pop1.shadow_module("bifrost_nf", None)
        again = lab.fleet("apply", "--canary", "pop1")
        assert again.returncode == 0, again.stdout + again.stderr
        assert f"pop1 (canary): bifrost_nf: {OLD} -> {__version__}" in again.stdout
        assert pop1.loaded("bifrost_nf") == __version__
    finally:
        pop1.shadow_module("bifrost_nf", None)
        pops_back(lab)
        restore = lab.fleet("apply")
        assert restore.returncode == 0, restore.stdout + restore.stderr


def test_host_without_dkms_that_needs_a_rebuild_stops_the_rollout(lab: FleetLab) -> None:
    """gs1 has no dkms and runs an older fou_map: it cannot take this release, so apply
    stops before any host changes (pop1's change included) and says why; pop2, whose
    config uses no kernel module (no cached rule), needs no dkms: its plan is not blocked."""
    gs1, pop2 = lab.hosts["gs1"], lab.hosts["pop2"]
    dkms_was = gs1.dkms_state()
    gs1.set_dkms_state([["fou_map", OLD, KERNEL, "installed"]])  # what modprobe would load
    gs1.set_loaded("fou_map", OLD)
    calls = call_counts(lab)
    old = all_running(lab)
    lab.set_config("pop1", extra='ipv6 = "drop"')
    lab.set_config("gs1", extra="metrics_port = 0\n")
    with gs1.without_dkms(), pop2.without_dkms():
        try:
            plan = lab.fleet("plan", "gs1")
            why = f"no dkms on this host to build fou_map {__version__} ({OLD} is loaded)"
            assert f"-- kernel module: CANNOT REBUILD fou_map: {why}" in plan.stdout, plan.stdout
            done = lab.fleet("apply")
            out = done.stdout
            assert done.returncode == 1, out + done.stderr
            assert f"error: gs1: cannot rebuild fou_map: {why}: apt-get install dkms" in out, out
            assert "apply: stopped before changing any host" in out
            assert all_running(lab) == old
            assert all(changing_calls(lab, n, since=calls[n]) == [] for n in lab.hosts)
            assert gs1.loaded("fou_map") == OLD
            # With this release's fou_map on disk (installed by other means), a reload
            # is all gs1 needs, and no dkms for it.
            gs1.set_dkms_state(dkms_was)
            plan = lab.fleet("plan", "gs1")
            assert f"-- kernel module: reload fou_map: {OLD} is loaded" in plan.stdout, plan.stdout
            assert "CANNOT" not in plan.stdout
            # A POP whose config uses no kernel module (no cached rule) needs no dkms:
            # nothing to rebuild, nothing that blocks. (Not applied: without the cache
            # its lab clients' queries would go to a game server the lab does not have.)
            pop2.set_loaded("bifrost_nf", None)
            path = lab.host_config_path("pop2")
            path.write_text(path.read_text().replace("cache = true", "cache = false"))
            plan = lab.fleet("plan", "pop2")
            assert plan.returncode == 0, plan.stdout + plan.stderr
            assert "-- kernel module: bifrost_nf: not used by this config" in plan.stdout
            assert "CANNOT" not in plan.stdout
        finally:
            gs1.set_dkms_state(dkms_was)
            gs1.set_loaded("fou_map", __version__)
            pop2.set_loaded("bifrost_nf", __version__)
            lab.set_config("pop1")
            lab.set_config("gs1")
            lab.set_config("pop2", modules=())
    restore = lab.fleet("apply")
    assert restore.returncode == 0, restore.stdout + restore.stderr


def test_unreachable_host_changes_nothing(lab: FleetLab) -> None:
    """A host nobody listens for: apply stops before any host changes; plan says which."""
    old = running(lab, "pop1")
    lab.set_config("pop1", extra='ipv6 = "drop"')
    pop1 = lab.hosts["pop1"]
    dead_port = pop1.port + 1 if pop1.port < 65535 else pop1.port - 1
    lab.write_inventory(
        extra_hosts=(
            f'[host.pop9]\naddress = "{pop1.address}"\nport = {dead_port}\n'
            f'host_key = "{pop1.host_key}"\nrole = "pop"\nconfig = "hosts/pop1.toml"\n'
        )
    )
    try:
        done = lab.fleet("apply")
        assert done.returncode == 1
        assert f"error: pop9: unreachable: {pop1.address}:{dead_port}" in done.stdout, done.stdout
        assert "apply: stopped before changing any host" in done.stdout
        assert running(lab, "pop1") == old
        plan = lab.fleet("plan")
        assert plan.returncode == 1
        assert "== pop9: unreachable" in plan.stdout and '+ipv6 = "drop"' in plan.stdout
        table = lab.fleet("status")
        assert table.returncode == 1
        assert re.search(r"^pop9 +pop .*unreachable: ", table.stdout, re.M), table.stdout
        assert re.search(r"^pop1 +pop .*attached", table.stdout, re.M), table.stdout
    finally:
        lab.write_inventory()
        lab.set_config("pop1")


def test_wrong_host_key_is_refused(lab: FleetLab) -> None:
    """pop2 answers with a key the inventory does not have: no host changes."""
    old = all_running(lab)
    lab.set_config("pop1", extra='ipv6 = "drop"')
    real = lab.hosts["pop2"].host_key
    lab.hosts["pop2"].host_key = other_host_key(lab.dir)
    lab.write_inventory()
    try:
        done = lab.fleet("apply")
        assert done.returncode == 1
        assert "error: pop2: WRONG HOST KEY at " in done.stdout, done.stdout
        assert "apply: stopped before changing any host" in done.stdout
        assert all_running(lab) == old
    finally:
        lab.hosts["pop2"].host_key = real
        lab.write_inventory()
        lab.set_config("pop1")


def test_failing_build_changes_nothing(lab: FleetLab) -> None:
    """pop2 has no compiler (its agent's PATH lacks clang): its rebuild fails, pop2 keeps
    running its config, and gs1, next in line, is not touched."""
    old = all_running(lab)
    keys = lab.hosts["pop2"].dir / "authorized_keys"
    line = keys.read_text()
    keys.write_text(line.replace('command="', 'command="env PATH=/nonexistent ', 1))
    lab.set_config("pop2", modules=("srcds",))  # back to srcds: a rebuild
    lab.set_config("gs1", extra="metrics_port = 0\n")
    try:
        done = lab.fleet("apply", "--canary", "pop2")
        out = done.stdout
        assert done.returncode == 1, out + done.stderr
        assert "error: pop2: bifrost fleet agent: apply: build failed, nothing changed: " in out
        assert "clang not found: apt-get install clang" in out, out
        assert "not changed: gs1" in out
        assert all_running(lab) == old
    finally:
        keys.write_text(line)
        lab.set_config("pop2", modules=())
        lab.set_config("gs1")


def test_key_runs_only_the_agent_verbs(lab: FleetLab) -> None:
    """OpenSSH's own client with the back-end's key: anything but a verb is refused."""
    for command in (["cat", "/etc/shadow"], ["status;", "id"], ["health", "5;reboot"]):
        done = lab.ssh("pop1", *command)
        assert done.returncode == 2, done
        assert "bifrost fleet agent: refused" in done.stderr
        assert "root:" not in done.stdout
    shell = lab.ssh("gs1")  # no command: a login shell is what is asked
    assert shell.returncode == 2 and "not an interactive command" in shell.stderr
    # `restrict`: no forwarding (here a stdio forward to the back-end's own sshd port).
    fwd = lab.ssh("pop1", options=("-W", f"{net_pop_ip(1)}:{lab.hosts['pop1'].port}"))
    assert fwd.returncode != 0 and "prohibited" in fwd.stderr, fwd.stderr
    # A verb does run.
    st = lab.ssh("pop1", "status")
    assert st.returncode == 0 and '"attached": true' in st.stdout, st
