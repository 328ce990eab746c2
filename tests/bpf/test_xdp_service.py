"""`bifrost xdp run` as a process in the POP netns: attach, managed neighbour kept through a
link flap, SIGHUP re-applies the config, SIGTERM leaves the program attached.

::

    [client] c0 10.98.0.2 -- 10.98.0.1 p0 [pop] p1 10.42.0.254 -- 10.42.0.1 g0 [gs]
                      `bifrost xdp run` attaches on p0; the game server's next hop is on p1

The process reports READY=1/STOPPING=1 to a notify socket of the test's, as it
would to systemd (Type=notify).
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import ndmsg
from xdp_harness import compile_object, topology_frame, wait_for, xdp_toml

from bifrost import install
from bifrost.config import load
from bifrost.netns import Namespace
from bifrost.xdp import libbpf, loader
from bifrost.xdp.service import load_config
from bifrost_testing import xdp_topology as topology

pytestmark = pytest.mark.bpf

CLIENT_IP, POP_G_IP, GS_IP = topology.CLIENT_IP, topology.POP_G_IP, topology.GS_IP
BIFROST = Path(sys.executable).parent / "bifrost"
# Well under both the service's 30 s re-check and the kernel's 5 s managed-entry
# interval, so a recovery this fast can only be the service reacting to the events.
EVENT_RECOVERY_S = 4.0


def neigh(ns: Namespace, address: str, dev: str = "p1") -> tuple[int, bool, int | None] | None:
    """(NUD state, managed, NDA_PROTOCOL) of an entry, None when there is none."""
    with ns.ipr() as ipr:
        try:
            msg = ipr.neigh("get", dst=address, ifindex=ipr.link_lookup(ifname=dev)[0])[0]
        except NetlinkError:
            return None
    managed = bool((msg.get_attr("NDA_FLAGS_EXT") or 0) & loader.NTF_EXT_MANAGED)
    return msg["state"], managed, msg.get_attr("NDA_PROTOCOL")


OURS_REACHABLE = (ndmsg.NUD_REACHABLE, True, loader.RTPROT_BIFROST)


@dataclass
class Pop:
    hosts: topology.Hosts
    pins: Path
    obj: Path
    toml: Path
    tmp: Path

    def write_config(self, ports: tuple[int | str, ...] = (27015,)) -> None:
        self.toml.write_text(
            xdp_toml(self.pins, interface="p0", pop=POP_G_IP, rule="game", ports=ports, gs=GS_IP)
        )

    def xdp_prog_id(self) -> int:
        with self.hosts.pop.entered():
            return libbpf.xdp_query_id(socket.if_nametoindex("p0"))

    def verdict(self, dport: int = 27015) -> str:
        """A client frame through the pinned program (BPF_PROG_TEST_RUN)."""
        frame = topology_frame(dport)
        with self.hosts.pop.entered():
            prog = libbpf.get_pinned(str(self.pins / "p0" / loader.PROG_PIN))
            try:
                res = libbpf.test_run(prog, frame, ingress_ifindex=socket.if_nametoindex("p0"))
            finally:
                os.close(prog)
        return res.verdict


@dataclass
class Service:
    proc: subprocess.Popen[bytes]
    log: Path
    notify: socket.socket

    def text(self) -> str:
        return self.log.read_text()

    def notified(self, state: str, timeout: float) -> bool:
        self.notify.settimeout(timeout)
        try:
            while True:
                if state in self.notify.recv(4096).decode().split("\n"):
                    return True
        except TimeoutError:
            return False

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)


def start(pop: Pop, *extra: str, wrap: tuple[str, ...] = ()) -> Service:
    """`bifrost xdp run` in the POP netns (under wrap, a command prefix). Entered with
    nsenter, not `ip netns exec`: that remounts /sys for the netns without the bpffs
    at /sys/fs/bpf, so pins would fail."""
    path = pop.tmp / "notify"
    path.unlink(missing_ok=True)  # a previous start's
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(path))
    log = pop.tmp / "service.log"
    argv = [BIFROST, "xdp", "run", "--config", pop.toml, "--obj", pop.obj, *extra]
    with log.open("wb") as err:
        proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{pop.hosts.pop.name}", *wrap, *map(str, argv)],
            stdout=err,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NOTIFY_SOCKET": str(path)},
        )
    return Service(proc, log, notify)


@pytest.fixture
def pop(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Iterator[Pop]:
    obj = compile_object(tmp_path_factory.mktemp("svc"))
    pins = Path(f"/sys/fs/bpf/bfx-test-svc-{os.getpid()}")
    try:
        with topology.hosts("bfx-s") as h:
            p = Pop(h, pins, obj, tmp_path / "bifrost.toml", tmp_path)
            p.write_config()
            yield p
    finally:
        shutil.rmtree(pins, ignore_errors=True)


@contextmanager
def running(pop: Pop, *extra: str, wrap: tuple[str, ...] = ()) -> Iterator[Service]:
    """start(), and whatever the test does, leave no service behind."""
    s = start(pop, *extra, wrap=wrap)
    try:
        yield s
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()
        s.notify.close()


@pytest.fixture
def svc(pop: Pop) -> Iterator[Service]:
    with running(pop) as s:
        assert s.notified("READY=1", 20), s.text()
        yield s


def test_attaches_and_recreates_the_flushed_neighbour_after_a_link_flap(
    pop: Pop, svc: Service
) -> None:
    assert pop.xdp_prog_id() != 0
    assert (pop.pins / "p0" / loader.PROG_PIN).exists()
    assert wait_for(lambda: neigh(pop.hosts.pop, GS_IP) == OURS_REACHABLE, 3), svc.text()
    assert pop.verdict() == "REDIRECT"
    # The control: an operator's managed entry, which no one re-creates after a flush.
    pop.hosts.gs.run(["ip", "addr", "add", "10.42.0.2/24", "dev", "g0"])
    pop.hosts.pop.run(["ip", "neigh", "add", "10.42.0.2", "dev", "p1", "managed"])
    operators = (ndmsg.NUD_REACHABLE, True, None)
    assert wait_for(lambda: neigh(pop.hosts.pop, "10.42.0.2") == operators, 3)

    pop.hosts.pop.run(["ip", "link", "set", "p1", "down"])
    # Down flushes both (and the route to the server goes, so nothing can be re-made yet).
    assert wait_for(lambda: neigh(pop.hosts.pop, GS_IP) is None, 3)
    assert neigh(pop.hosts.pop, "10.42.0.2") is None
    # Once the program's next-hop cache expires (nexthop_ttl_ms, 1 s): drop_no_route.
    assert wait_for(lambda: pop.verdict() == "DROP", 3)
    pop.hosts.pop.run(["ip", "link", "set", "p1", "up"])
    assert wait_for(lambda: neigh(pop.hosts.pop, GS_IP) == OURS_REACHABLE, EVENT_RECOVERY_S), (
        svc.text()
    )
    assert pop.verdict() == "REDIRECT"

    def handled_link_up() -> bool:
        """The positive control: the service logs its re-install after doing it."""
        text = svc.text()
        up = text.find("link p1 up")
        return up >= 0 and "neighbours (event)" in text[up:]

    assert wait_for(handled_link_up, EVENT_RECOVERY_S), svc.text()
    # Without the service the flushed entry stays gone: the operator's never came back.
    assert neigh(pop.hosts.pop, "10.42.0.2") is None
    assert svc.proc.poll() is None


def test_recreates_the_neighbour_a_carrier_loss_flushed(pop: Pop, svc: Service) -> None:
    """The game server's side goes down (p1 loses carrier, stays up): the kernel flushes
    the managed entry; the service re-makes it at once (the route is still there) and
    it resolves as soon as the carrier is back."""
    assert wait_for(lambda: neigh(pop.hosts.pop, GS_IP) == OURS_REACHABLE, 3), svc.text()
    pop.hosts.gs.run(["ip", "link", "set", "g0", "down"])
    assert wait_for(lambda: f"neighbour {GS_IP} dev p1 deleted" in svc.text(), 3), svc.text()
    # Re-made while the carrier is down: managed, ours, not resolved yet.
    assert wait_for(lambda: (neigh(pop.hosts.pop, GS_IP) or (0,))[1:] == OURS_REACHABLE[1:], 3)
    pop.hosts.gs.run(["ip", "link", "set", "g0", "up"])
    assert wait_for(lambda: neigh(pop.hosts.pop, GS_IP) == OURS_REACHABLE, EVENT_RECOVERY_S), (
        svc.text()
    )
    assert pop.verdict() == "REDIRECT"


def test_sighup_applies_the_changed_config_and_keeps_it_on_a_bad_file(
    pop: Pop, svc: Service
) -> None:
    assert wait_for(lambda: neigh(pop.hosts.pop, GS_IP) == OURS_REACHABLE, 3), svc.text()
    assert pop.verdict(27016) == "DROP"  # an anycast address without a rule for the port

    pop.write_config(ports=("27015-27016",))
    svc.signal(signal.SIGHUP)
    assert wait_for(lambda: pop.verdict(27016) == "REDIRECT", 5), svc.text()
    # Logged after the maps are written, so possibly after the verdict changed.
    assert wait_for(lambda: "reload: changed rule 'game' changed" in svc.text(), 5), svc.text()
    assert svc.notified("READY=1", 5)  # RELOADING=1 ... READY=1 around it

    pop.toml.write_text(pop.toml.read_text().replace(GS_IP, "10.42.0.300"))
    svc.signal(signal.SIGHUP)
    assert wait_for(lambda: "keeping the running config" in svc.text(), 5), svc.text()
    assert "xdp.rule[0].game_server = '10.42.0.300': expected an IPv4 address" in svc.text()
    assert svc.proc.poll() is None
    assert pop.verdict(27016) == "REDIRECT"


def test_serves_per_rule_and_reason_counters_to_prometheus(pop: Pop, svc: Service) -> None:
    """The daemons' metrics base (prometheus-client) on xdp.metrics_port, in the POP's netns."""
    assert wait_for(lambda: neigh(pop.hosts.pop, GS_IP) == OURS_REACHABLE, 3), svc.text()
    for _ in range(3):
        assert pop.verdict() == "REDIRECT"
    assert pop.verdict(27016) == "DROP"  # an anycast address without a rule for the port

    url = "http://127.0.0.1:9470/metrics"
    with pop.hosts.pop.entered(), urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    assert 'bifrost_xdp_packets_total{reason="tx_forward",rule="game"} 3.0' in text, text
    assert 'bifrost_xdp_packets_total{reason="drop_no_rule",rule="-"} 1.0' in text
    assert re.search(r'bifrost_xdp_bytes_total\{reason="tx_forward",rule="game"\} [1-9]', text)
    assert 'bifrost_metrics_source_up{source="xdp"} 1.0' in text


def test_sigterm_leaves_the_program_attached_and_detach_takes_it_off(
    pop: Pop, svc: Service
) -> None:
    """Stopping the service (a restart, an upgrade) must not stop forwarding: the program
    stays attached through its pinned link, with its maps and neighbour entries.
    Only `bifrost xdp detach` takes it off."""
    assert wait_for(lambda: neigh(pop.hosts.pop, GS_IP) == OURS_REACHABLE, 3), svc.text()
    prog_id = pop.xdp_prog_id()
    assert prog_id != 0
    svc.signal(signal.SIGTERM)
    assert svc.proc.wait(10) == 0, svc.text()
    assert svc.notified("STOPPING=1", 1)
    assert "p0: stopping; the program stays attached" in svc.text()
    assert pop.xdp_prog_id() == prog_id
    assert pop.verdict() == "REDIRECT"
    assert neigh(pop.hosts.pop, GS_IP) == OURS_REACHABLE

    netns = f"--net=/run/netns/{pop.hosts.pop.name}"
    detach = ["nsenter", netns, str(BIFROST), "-c", str(pop.toml), "xdp", "detach"]
    done = subprocess.run(detach, capture_output=True, text=True, timeout=30, check=True)
    assert "p0: detached" in done.stdout
    assert pop.xdp_prog_id() == 0
    assert not (pop.pins / "p0").exists()
    assert neigh(pop.hosts.pop, GS_IP) is None


def test_adopts_an_attached_program_and_a_restart_adopts_it_again(pop: Pop) -> None:
    """After a crash, a stop or a manual `bifrost xdp attach` the program is attached
    with its pins: the service takes it over (the same object: no swap) and applies the
    config; SIGINT leaves it attached for the next start."""
    with pop.hosts.pop.entered():
        loader.attach(load_config(pop.toml), "p0", obj=pop.obj)
    prog_id = pop.xdp_prog_id()
    for _ in range(2):
        with running(pop) as s:
            assert s.notified("READY=1", 20), s.text()
            assert f"p0: adopted the attached program (native, prog id {prog_id})" in s.text()
            assert "already running this object" in s.text()
            assert pop.xdp_prog_id() == prog_id
            s.signal(signal.SIGINT)
            assert s.proc.wait(10) == 0, s.text()
        assert pop.xdp_prog_id() == prog_id
    with pop.hosts.pop.entered():
        loader.detach("p0", pop.pins)
    assert not (pop.pins / "p0").exists()


def test_attach_failure_exits_non_zero_and_names_the_problem(pop: Pop) -> None:
    with running(pop, "--iface", "nosuch0") as s:
        assert s.proc.wait(20) == 1
        assert "interface 'nosuch0' does not exist" in s.text()
        assert not s.notified("READY=1", 0.1)
    assert not (pop.pins / "nosuch0").exists()
    # A bad config: the key and the value, before anything is attached.
    pop.toml.write_text(pop.toml.read_text().replace('"p0"', "0"))
    with running(pop) as s:
        assert s.proc.wait(20) == 1
        assert "xdp.interface = 0: " in s.text()
    assert pop.xdp_prog_id() == 0


# prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN) then exec: the kernel's own form of the
# unit's MemoryDenyWriteExecute=yes (no W+X mapping, nothing made executable later),
# kept across execve.
MDWE_EXEC = (
    "import ctypes, os, sys\n"
    "if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0):\n"
    "    sys.exit(f'PR_SET_MDWE: {os.strerror(ctypes.get_errno())}')\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)


def unit_capabilities() -> list[str]:
    """The CapabilityBoundingSet of the unit install writes, as setpriv names them."""
    example = load(install.EXAMPLE_CONFIG)
    unit = install.render_files(example)[Path("/etc/systemd/system/bifrost-xdp.service")]
    lines = unit.splitlines()
    assert "NoNewPrivileges=yes" in lines
    assert "MemoryDenyWriteExecute=yes" in lines
    (caps,) = [ln.split("=", 1)[1] for ln in lines if ln.startswith("CapabilityBoundingSet=")]
    return [c.removeprefix("CAP_").lower() for c in caps.split()]


def kernel_has_mdwe() -> bool:
    """PR_GET_MDWE answers on Linux >= 6.3 (the host); 6.1 says EINVAL."""
    return bool(ctypes.CDLL(None).prctl(66, 0, 0, 0, 0) >= 0)


def confined(caps: list[str]) -> tuple[str, ...]:
    """Root with only caps, no new privileges, no W+X memory: what the unit gives it.
    (systemd enforces MemoryDenyWriteExecute with seccomp on any kernel; this test can
    only where the kernel has PR_SET_MDWE, and keeps the rest elsewhere.)"""
    bounding = ",".join(["-all", *(f"+{c}" for c in caps)])
    mdwe = (sys.executable, "-c", MDWE_EXEC) if kernel_has_mdwe() else ()
    return ("setpriv", f"--bounding-set={bounding}", "--inh-caps=-all", "--no-new-privs", *mdwe)


def test_runs_confined_as_the_unit_confines_it(pop: Pop) -> None:
    caps = unit_capabilities()
    with running(pop, wrap=confined(caps)) as s:
        assert s.notified("READY=1", 20), s.text()
        assert pop.xdp_prog_id() != 0
        assert wait_for(lambda: neigh(pop.hosts.pop, GS_IP) == OURS_REACHABLE, 3), s.text()
        s.signal(signal.SIGTERM)
        assert s.proc.wait(10) == 0, s.text()
    assert pop.xdp_prog_id() != 0  # left attached
    with pop.hosts.pop.entered():
        loader.detach("p0", pop.pins)
    # Each capability is needed: without CAP_PERFMON the verifier refuses the program.
    with running(pop, wrap=confined([c for c in caps if c != "perfmon"])) as s:
        assert s.proc.wait(20) == 1
        assert "Permission denied" in s.text()
