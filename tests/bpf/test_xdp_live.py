"""Live traffic on veth through `bifrost xdp run`: a validated SRCDS client loses no packet,
and none reaches the wrong game server, while the service restarts, a rule is removed
from the middle of the config, and newly built objects (another module_config.h: the
SRCDS module off, then on again) are swapped in.

::

    [client] c0 10.98.0.2 ---- 10.98.0.1 p0 [pop] p1 10.42.0.254 ---- 10.42.0.1 g0 [gs]
                                  bifrost_xdp on p0 (the service) and p1      10.42.0.2 (gs2)
    VIP 198.51.100.10:27015 ("srcds") -> FOU to 10.42.0.1:5555; every other rule -> 10.42.0.2.
    The host has no fou module, so each game server is a UDP socket on :5555: its
    payload IS the inner packet, and sending an inner packet to the POP's :5555 is FOU.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from xdp_harness import VIP, wait_for

from bifrost import codegen
from bifrost.xdp import build, loader
from bifrost_testing import xdp_topology as topo

pytestmark = pytest.mark.bpf

BIFROST = Path(sys.executable).parent / "bifrost"
GS1, GS2 = topo.GS_IP, "10.42.0.2"
CLIENT_PORT = 40123
SEND_EVERY_S = 0.001
SO_RCVBUFFORCE = 33  # asm-generic/socket.h; root may exceed net.core.rmem_max
AUTH_KEY = bytes.fromhex("0123456789abcdef")  # [auth]: a game module needs authenticated FOU

RULE = """
[[xdp.rule]]
name = "{name}"
anycast = "{vip}"
ports = [{port}]
game_server = "{gs}"
modules = {modules}
"""


def config(pins: Path, srcds_module: bool = True, middle: bool = True) -> str:
    """Four rules; the client's ("srcds") is third, after "middle", which a step removes."""
    rules = [("alpha", 27010, GS2, "[]")]
    if middle:
        rules.append(("middle", 27011, GS2, "[]"))
    rules += [("srcds", 27015, GS1, '["srcds"]' if srcds_module else "[]")]
    rules += [("omega", 27020, GS2, "[]")]
    head = (
        f'[auth]\nkeys = ["{AUTH_KEY.hex()}"]\n'
        f'[xdp]\nmodules = ["srcds"]\ninterface = "p0"\npin_dir = "{pins}"\n'
        f'pop_address = "{topo.POP_G_IP}"\n'
    )
    return head + "".join(
        RULE.format(name=n, vip=VIP, port=p, gs=g, modules=m) for n, p, g, m in rules
    )


def build_object(out: Path, modules: list[str]) -> Path:
    """A newly built object from its own module_config.h, as `invoke build` would make."""
    out.mkdir(parents=True, exist_ok=True)
    hdr = out / "module_config.h"
    hdr.write_text(codegen.render_module_config(modules, "tests"))
    return build.compile_program(hdr, out)


@dataclass
class Received:
    """What one game server's socket got from the client, by sequence number."""

    seqs: list[int] = field(default_factory=list)
    foreign: list[bytes] = field(default_factory=list)


def serve(sock: socket.socket, got: Received, stop: threading.Event, answer: bool) -> None:
    """A game server: record the client's netchannel packets; answer a connect with 'B'
    (S2C_CONNECTION) through the POP, which is what validates the client."""
    sock.settimeout(0.1)
    while not stop.is_set():
        try:
            inner, _ = sock.recvfrom(4096)
        except TimeoutError:
            continue
        pkt = IP(inner)
        payload = bytes(pkt[UDP].payload)
        if payload.startswith(b"\xff\xff\xff\xff"):
            if answer:
                reply = IP(src=pkt.dst, dst=pkt.src) / UDP(
                    sport=pkt[UDP].dport, dport=pkt[UDP].sport
                )
                sock.sendto(bytes(reply / b"\xff\xff\xff\xffB") + AUTH_KEY, (topo.POP_G_IP, 5555))
            continue
        if pkt[UDP].sport == CLIENT_PORT and payload[:1] == b"\x01":
            got.seqs.append(struct.unpack("!I", payload[1:5])[0])
        else:
            got.foreign.append(inner)


@dataclass
class Live:
    hosts: topo.Hosts
    pins: Path
    toml: Path
    tmp: Path
    obj_on: Path
    obj_off: Path
    proc: subprocess.Popen[bytes] | None = None
    notify: socket.socket | None = None

    def start(self, obj: Path) -> None:
        notify_path = self.tmp / "notify"
        notify_path.unlink(missing_ok=True)
        self.notify = notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(notify_path))
        notify.settimeout(60)
        netns = f"--net=/run/netns/{self.hosts.pop.name}"
        run = ["run", "--config", str(self.toml), "--obj", str(obj)]
        with (self.tmp / "service.log").open("ab") as log:
            self.proc = subprocess.Popen(
                ["nsenter", netns, str(BIFROST), "xdp", *run],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "NOTIFY_SOCKET": str(notify_path)},
            )
        assert notify.recv(64) == b"READY=1", self.log()

    def stop(self) -> None:
        assert self.proc is not None and self.notify is not None
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(30) == 0, self.log()
        self.notify.close()

    def log(self) -> str:
        return (self.tmp / "service.log").read_text()

    def cli(self, *args: str) -> str:
        argv = ["nsenter", f"--net=/run/netns/{self.hosts.pop.name}", str(BIFROST)]
        done = subprocess.run(
            [*argv, "-c", str(self.toml), "xdp", *args], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout


@dataclass
class GamePath:
    """The path under test, running: GS1 answers, GS2 only records, the client's socket."""

    client: socket.socket
    got1: Received
    got2: Received


@contextmanager
def game_path(live: Live) -> Iterator[GamePath]:
    """live.obj_on serving p0 and p1, bifrost_pass on the peers, both game servers on
    :5555 and the client's bound socket, validated by the SRCDS handshake; servers
    stopped and sockets closed on exit."""
    h = live.hosts
    live.start(live.obj_on)
    with h.pop.entered():
        # The return path (the server's 'B' that validates the client) arrives on p1.
        loader.attach_also(topo.POP_G_IF, topo.POP_C_IF, live.pins)
    # veth peers hand XDP_TX/REDIRECT frames on only with an XDP program of their own.
    for ns, dev in ((h.client, topo.CLIENT_IF), (h.gs, topo.GS_IF)):
        with ns.entered():
            loader.attach_pass(dev, live.obj_on)

    stop = threading.Event()
    got1, got2 = Received(), Received()
    servers = []
    for ip, got, answer in ((GS1, got1, True), (GS2, got2, False)):
        sock = h.gs.socket()
        # Room for seconds of traffic: on a loaded machine the receiving thread may
        # not run for a while, and a full socket queue is not the POP losing packets.
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
        sock.bind((ip, 5555))
        t = threading.Thread(target=serve, args=(sock, got, stop, answer), daemon=True)
        t.start()
        servers.append((t, sock))
    client = h.client.socket()
    client.bind((topo.CLIENT_IP, CLIENT_PORT))
    client.settimeout(0.5)
    try:
        # The handshake: connectionless to the server, its 'B' back through the POP.
        for _ in range(20):
            client.sendto(b"\xff\xff\xff\xffq0000", (VIP, 27015))
            try:
                if client.recv(64) == b"\xff\xff\xff\xffB":
                    break
            except TimeoutError:
                continue
        else:
            pytest.fail("no S2C_CONNECTION: the client was never validated\n" + live.log())
        yield GamePath(client, got1, got2)
    finally:
        stop.set()
        client.close()
        for t, sock in servers:
            t.join(5)
            sock.close()


@pytest.fixture
def live(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Iterator[Live]:
    obj_on = build_object(tmp_path_factory.mktemp("srcds-on"), ["srcds"])
    obj_off = build_object(tmp_path_factory.mktemp("srcds-off"), [])
    pins = Path(f"/sys/fs/bpf/bfx-test-live-{os.getpid()}")
    lv = None
    try:
        with topo.hosts("bfx-l", VIP) as h:
            h.gs.address(topo.GS_IF, f"{GS2}/24")
            lv = Live(h, pins, tmp_path / "bifrost.toml", tmp_path, obj_on, obj_off)
            lv.toml.write_text(config(pins))
            yield lv
            if lv.proc and lv.proc.poll() is None:
                lv.stop()
            with h.pop.entered():
                for dev in (topo.POP_C_IF, topo.POP_G_IF):
                    loader.detach(dev, pins)
    finally:
        if lv and lv.proc and lv.proc.poll() is None:
            lv.proc.kill()
            lv.proc.wait()
        if lv and lv.notify:
            lv.notify.close()
        shutil.rmtree(pins, ignore_errors=True)


def test_a_validated_client_loses_nothing_through_restarts_rule_removal_and_upgrades(
    live: Live,
) -> None:
    h = live.hosts
    with game_path(live) as g:
        client, got1 = g.client, g.got1

        sent = [0]
        stop_sending = threading.Event()

        def send() -> None:
            while not stop_sending.is_set():
                client.sendto(b"\x01" + struct.pack("!I", sent[0]), (VIP, 27015))
                sent[0] += 1
                time.sleep(SEND_EVERY_S)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()

        def flowing(what: str) -> None:
            """Positive control: packets sent after the step arrive."""
            mark = sent[0]
            assert wait_for(lambda: bool(got1.seqs) and got1.seqs[-1] > mark + 50, 20), what

        flowing("validated traffic flows")
        # 1. Restart the service: the program stays attached and is adopted.
        live.stop()
        live.start(live.obj_on)
        assert "already running this object" in live.log()
        flowing("after the restart")
        # 2. Remove a rule from the middle of the config (SIGHUP reload).
        live.toml.write_text(config(live.pins, middle=False))
        assert live.proc is not None
        live.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "reload: changed rule 'middle' removed" in live.log(), 20)
        assert "rule 'srcds' changed" not in live.log(), "ids follow names, not positions"
        flowing("after removing 'middle'")
        # 3. The SRCDS module off for the rule, then restart on an object built without it.
        live.toml.write_text(config(live.pins, srcds_module=False, middle=False))
        live.stop()
        live.start(live.obj_off)
        assert "swapped prog id" in live.log()
        flowing("after swapping in the object without SRCDS")
        # 4. And back: the rebuilt object with SRCDS, the module on again (`upgrade`).
        live.toml.write_text(config(live.pins, middle=False))
        assert "swapped prog id" in live.cli("upgrade", "--obj", str(live.obj_on))
        flowing("after swapping the SRCDS object back in")
        stop_sending.set()
        sender.join(5)
        total = sent[0]

        def last_arrived() -> bool:
            """The positive control: packets after the last one counted, on the same
            path (one queue, in order), until one arrives: nothing is in flight then."""
            client.sendto(b"\x01" + struct.pack("!I", sent[0]), (VIP, 27015))
            sent[0] += 1
            return bool(got1.seqs) and got1.seqs[-1] >= total

        assert wait_for(last_arrived, 20), "no packet arrived after the last one\n" + live.log()

    assert total > 1000
    lost = sorted(set(range(total)) - set(got1.seqs))
    if lost:  # where: the POP's counters and the game server's socket drops
        udp = h.gs.run(["grep", "^Udp:", "/proc/net/snmp"]).stdout
        pytest.fail(f"{len(lost)} lost, first {lost[:20]}\n{udp}\n{live.cli('stats')}")
    assert g.got2.seqs == [] and g.got2.foreign == [], "a packet went to the wrong game server"
    assert got1.foreign == []
    # Validated throughout: the SRCDS module never dropped the client.
    assert "drop_module" not in live.cli("stats")
