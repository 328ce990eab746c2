"""A fleet of real OpenSSH servers for the fleet tests: one sshd per POP or game server,
each in its own network namespace with its own state, plus the back-end's namespace.

::

    [backend] m1 10.77.1.1 ---- 10.77.1.2 e0 [pop1: sshd] x0 10.8.1.1 ---- 10.8.1.2 c0 [client1]
              m2 10.77.2.1 ---- 10.77.2.2 e0 [pop2: sshd] x0 10.8.2.1 ---- 10.8.2.2 c0 [client2]
              m3 10.77.3.1 ---- 10.77.3.2 e0 [gs1:  sshd]

Each sshd (`-D -e`, a free port, its own host key, AuthorizedKeysFile in the host's
directory) runs the back-end's key only as `bifrost fleet agent` with that host's
config path and agent state directory, so no two hosts share a file. In each sshd's
mount namespace the host's own directories are bound over /usr/src and
/var/lib/dkms, and `dkms` is bifrost_testing.dkms_stub (real DKMS state is global
to the machine, and its kernel has no headers for a lab host to build against):
the agent's DKMS code runs unchanged and the test reads what it asked DKMS to do.
Loading is stood in for the same way: modprobe/rmmod are
bifrost_testing.modprobe_stub, over a /sys/module of the host's own. A POP's client
sends A2S queries to the POP's anycast service all along (what its health check
sees served). sshd runs under `ip netns exec`, so whatever the agent mounts (the
bpffs on the POP's pin directory) lives in that sshd's mount namespace and goes
with it. Everything is stopped and removed on exit.
"""

from __future__ import annotations

import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bifrost.netns import Namespace, link
from bifrost_testing import dkms_stub, modprobe_stub

SSHD = "/usr/sbin/sshd"
DKMS = "/usr/sbin/dkms"  # what the stub is bound over (setup.sh installs dkms)
# sshd's start in its mount namespace (`ip netns exec` made it one, slave to the
# machine's): the host's own DKMS directories and the stub, then sshd itself.
MODPROBE = "/usr/sbin/modprobe"  # a link to kmod's one binary: the bind covers rmmod too
PRIVATE_DKMS = (
    'set -e; mount --bind "$1" /usr/src; mount --bind "$2" /var/lib/dkms; '
    'mount --bind "$3" ' + DKMS + '; mount --bind "$4" ' + MODPROBE + "; "
    'mount --bind "$5" /sys/module; shift 5; exec "$@"'
)
ANYCAST, GAME_PORT = "198.51.100.10", 27015
A2S_INFO = b"\xff\xff\xff\xffTSource Engine Query\x00"

POP_CONFIG = """\
[xdp]
modules = {modules}
interface = "x0"
pin_dir = "{pins}"
pop_address = "10.8.{i}.1"
{extra}
[[xdp.rule]]
name = "cs2"
anycast = "{anycast}"
ports = [{port}]
game_server = "10.8.{i}.3"
cache = true
"""
GAMESERVER_CONFIG = """\
[fou_map]
ports = [5555]
pops = ["10.8.0.0/16"]
state_file = "{dir}/fou_map.snapshot"
{extra}"""

SSHD_CONFIG = """\
ListenAddress {address}:{port}
HostKey {dir}/ssh_host_ed25519_key
PidFile none
AuthorizedKeysFile {dir}/authorized_keys
PermitRootLogin forced-commands-only
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# The temp directory is not root's home: its modes are the test's business.
StrictModes no
LogLevel VERBOSE
"""

# The client's loop: an A2S query every 50 ms to the POP's cached service.
TRAFFIC = (
    "import socket, time\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "while True:\n"
    f"    s.sendto({A2S_INFO!r}, ({ANYCAST!r}, {GAME_PORT}))\n"
    "    time.sleep(0.05)\n"
)


@dataclass
class LabHost:
    name: str
    role: str
    index: int
    ns: Namespace
    dir: Path
    port: int
    host_key: str  # "ssh-ed25519 AAAA..." as the inventory wants it
    sshd: subprocess.Popen[bytes] | None = None
    client: Namespace | None = None

    @property
    def address(self) -> str:
        return f"10.77.{self.index}.2"

    @property
    def config(self) -> Path:
        """What the host runs (the agent installs it)."""
        return self.dir / "etc" / "bifrost.toml"

    @property
    def agent_state(self) -> Path:
        return self.dir / "agent"

    @property
    def dkms_dir(self) -> Path:
        """The host's /var/lib/dkms: the stub's state and its calls.log."""
        return self.dir / "dkms"

    @property
    def usr_src(self) -> Path:
        return self.dir / "usr-src"

    def dkms_calls(self) -> list[list[str]]:
        """Every `dkms` command the host's agent ran, in order."""
        return dkms_stub.calls(self.dkms_dir)

    def dkms_state(self) -> list[dkms_stub.Entry]:
        return dkms_stub.load(self.dkms_dir)

    def set_dkms_state(self, entries: list[dkms_stub.Entry]) -> None:
        dkms_stub.save(entries, self.dkms_dir)

    def fail_dkms_build(self, fail: bool) -> None:
        flag = self.dkms_dir / dkms_stub.FAIL_BUILD
        if fail:
            flag.touch()
        else:
            flag.unlink(missing_ok=True)

    @property
    def sys_module(self) -> Path:
        """The host's /sys/module (the modprobe stub's)."""
        return self.dir / "sys-module"

    def loaded(self, module: str) -> str | None:
        """The version of module the host has loaded, None if it is not loaded."""
        ver = self.sys_module / module / "version"
        return ver.read_text().strip() if ver.exists() else None

    def set_loaded(self, module: str, version: str | None) -> None:
        shutil.rmtree(self.sys_module / module, ignore_errors=True)
        if version is not None:
            (self.sys_module / module).mkdir()
            (self.sys_module / module / "version").write_text(version + "\n")

    def shadow_module(self, module: str, version: str | None) -> None:
        """modprobe loads this version of module whatever DKMS installed (None: stop)."""
        flag = self.dkms_dir / f"shadow-{module}"
        if version is None:
            flag.unlink(missing_ok=True)
        else:
            flag.write_text(version)

    @contextmanager
    def without_dkms(self) -> Iterator[None]:
        """The agent's PATH lacks dkms (every other /usr/sbin command is there)."""
        bin_dir = self.dir / "no-dkms-bin"
        bin_dir.mkdir(exist_ok=True)
        for tool in Path("/usr/sbin").iterdir():
            if tool.name != "dkms" and not (bin_dir / tool.name).is_symlink():
                (bin_dir / tool.name).symlink_to(tool)
        keys = self.dir / "authorized_keys"
        line = keys.read_text()
        keys.write_text(line.replace('command="', f'command="env PATH={bin_dir}:/usr/bin:/bin ', 1))
        try:
            yield
        finally:
            keys.write_text(line)

    def agent_command(self) -> str:
        bifrost = [sys.executable, "-m", "bifrost.cli.main", "-c", str(self.config)]
        return shlex.join([*bifrost, "fleet", "agent", "--state-dir", str(self.agent_state)])


@dataclass
class FleetLab:
    backend: Namespace
    dir: Path
    hosts: dict[str, LabHost] = field(default_factory=dict)

    @property
    def backend_state(self) -> Path:
        return self.dir / "backend"

    @property
    def key(self) -> Path:
        return self.backend_state / "id_ed25519"

    @property
    def inventory(self) -> Path:
        return self.backend_state / "fleet.toml"

    def host_config_path(self, name: str) -> Path:
        return self.backend_state / "hosts" / f"{name}.toml"

    def set_config(self, name: str, modules: tuple[str, ...] = ("srcds",), extra: str = "") -> str:
        """Write the back-end's copy of a host's config; return its text."""
        h = self.hosts[name]
        if h.role == "pop":
            text = POP_CONFIG.format(
                modules=list(modules),
                pins=h.dir / "pins",
                i=h.index,
                extra=extra,
                anycast=ANYCAST,
                port=GAME_PORT,
            ).replace("'", '"')
        else:
            text = GAMESERVER_CONFIG.format(dir=h.dir, extra=extra)
        path = self.host_config_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return text

    def write_inventory(self, canary: str | None = None, extra_hosts: str = "") -> None:
        lines = ["[fleet]", "connect_timeout = 30"]  # a loaded CI machine is slow to answer
        if canary:
            lines.append(f'canary = "{canary}"')
        lines += ["", "[groups]", f"pops = {[n for n, h in self.hosts.items() if h.role == 'pop']}"]
        for h in self.hosts.values():
            lines += [
                "",
                f"[host.{h.name}]",
                f'address = "{h.address}"',
                f"port = {h.port}",
                f'host_key = "{h.host_key}"',
                f'role = "{h.role}"',
                f'config = "hosts/{h.name}.toml"',
            ]
        self.inventory.write_text("\n".join(lines).replace("'", '"') + "\n" + extra_hosts)

    def bifrost(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """`bifrost ARGS` run in the back-end's namespace."""
        return self.backend.run([sys.executable, "-m", "bifrost.cli.main", *args], False, timeout)

    def fleet(self, action: str, *args: str) -> subprocess.CompletedProcess[str]:
        """`bifrost fleet ACTION --state-dir ... -i INVENTORY ARGS`."""
        return self.bifrost(
            "fleet",
            action,
            "--state-dir",
            str(self.backend_state),
            "-i",
            str(self.inventory),
            *args,
        )

    def ssh(
        self, name: str, *command: str, options: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess[str]:
        """OpenSSH's own client with the back-end's key (host key checked strictly)."""
        h = self.hosts[name]
        known = self.dir / "known_hosts"
        known.write_text(f"[{h.address}]:{h.port} {h.host_key}\n")
        argv = ["ssh", "-i", str(self.key), "-p", str(h.port), "-F", "/dev/null"]
        argv += ["-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes"]
        argv += ["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", *options, f"root@{h.address}"]
        return self.backend.run([*argv, *command], check=False, timeout=120)


def _free_port(ns: Namespace, address: str) -> int:
    with ns.entered():
        s = socket.socket()
    try:
        s.bind((address, 0))
        port: int = s.getsockname()[1]
        return port
    finally:
        s.close()


def _wait_listening(lab: FleetLab, h: LabHost, log: Path, deadline_s: float = 15) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        assert h.sshd is not None
        if h.sshd.poll() is not None:
            raise RuntimeError(f"sshd of {h.name} exited: {log.read_text()}")
        with lab.backend.entered():
            s = socket.socket()
        s.settimeout(1)
        try:
            s.connect((h.address, h.port))
            return
        except OSError:
            time.sleep(0.05)
        finally:
            s.close()
    raise RuntimeError(f"sshd of {h.name} does not listen on {h.address}:{h.port}")


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])


def other_host_key(tmp: Path) -> str:
    """A valid host key that no host of the lab has."""
    return _keygen(tmp / "stranger_key")


def _quiet_ipv6(ns: Namespace) -> None:
    # Router solicitations and MLD would count as served traffic on the POP.
    ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")
    ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")


def _start_pop_traffic(stack: ExitStack, h: LabHost) -> None:
    assert h.client is not None
    link(h.ns, "x0", f"10.8.{h.index}.1/24", h.client, "c0", f"10.8.{h.index}.2/24")
    h.client.route(f"{ANYCAST}/32", gateway=f"10.8.{h.index}.1")
    # A permanent entry for the gateway: no ARP probe ever reaches the POP (it would
    # count as traffic served while the health check looks for game traffic).
    mac = h.ns.run(["cat", "/sys/class/net/x0/address"]).stdout.strip()
    gw = f"10.8.{h.index}.1"
    h.client.run(["ip", "neigh", "replace", gw, "lladdr", mac, "dev", "c0", "nud", "permanent"])
    proc = h.client.popen([sys.executable, "-c", TRAFFIC])
    stack.callback(_stop, proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def fleet_lab(tmp: Path, pops: int = 2, gameservers: int = 1) -> Iterator[FleetLab]:
    """The namespaces, sshds and the back-end's key; removed on exit, whatever happened."""
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
    if not Path(DKMS).exists():
        raise RuntimeError(f"{DKMS} is missing (the lab binds its stub there): ./setup.sh deps")
    with ExitStack() as stack:
        backend = stack.enter_context(Namespace("bff-be"))
        _quiet_ipv6(backend)
        lab = FleetLab(backend, tmp)
        roles = [("pop", f"pop{i + 1}") for i in range(pops)]
        roles += [("gameserver", f"gs{i + 1}") for i in range(gameservers)]
        for index, (role, name) in enumerate(roles, start=1):
            ns = stack.enter_context(Namespace(f"bff-{name}"))
            _quiet_ipv6(ns)
            hdir = tmp / name
            hdir.mkdir()
            link(backend, f"m{index}", f"10.77.{index}.1/24", ns, "e0", f"10.77.{index}.2/24")
            h = LabHost(name, role, index, ns, hdir, 0, _keygen(hdir / "ssh_host_ed25519_key"))
            h.port = _free_port(ns, h.address)
            if role == "pop":
                h.client = stack.enter_context(Namespace(f"bff-{name}-c"))
                _quiet_ipv6(h.client)
            lab.hosts[name] = h
        # The back-end's key (the CLI under test), one forced command per host.
        for h in lab.hosts.values():
            out = lab.bifrost(
                "fleet",
                "keygen",
                "--state-dir",
                str(lab.backend_state),
                "--agent-command",
                h.agent_command(),
            )
            if out.returncode != 0:
                raise RuntimeError(f"fleet keygen failed: {out.stderr}")
            (h.dir / "authorized_keys").write_text(out.stdout.splitlines()[-1] + "\n")
        for h in lab.hosts.values():
            (h.dir / "sshd_config").write_text(
                SSHD_CONFIG.format(address=h.address, port=h.port, dir=h.dir)
            )
            log = h.dir / "sshd.log"
            logf = stack.enter_context(open(log, "wb"))
            h.dkms_dir.mkdir()
            h.usr_src.mkdir()
            stub = h.dir / "dkms-stub"
            stub.write_text(f'#!/bin/sh\nexec {sys.executable} {dkms_stub.__file__} "$@"\n')
            stub.chmod(0o755)
            modprobe = h.dir / "modprobe-stub"
            modprobe.write_text(
                f'#!/bin/sh\nexec {sys.executable} {modprobe_stub.__file__} "$0" "$@"\n'
            )
            modprobe.chmod(0o755)
            h.sys_module.mkdir()
            mounts = [str(h.usr_src), str(h.dkms_dir), str(stub), str(modprobe), str(h.sys_module)]
            sshd = [SSHD, "-D", "-e", "-f", str(h.dir / "sshd_config")]
            h.sshd = h.ns.popen(
                ["sh", "-c", PRIVATE_DKMS, "sh", *mounts, *sshd],
                stdout=logf,
                stderr=subprocess.STDOUT,
            )
            stack.callback(_stop, h.sshd)
            _wait_listening(lab, h, log)
            if h.role == "pop":
                _start_pop_traffic(stack, h)
            lab.set_config(h.name)
        lab.write_inventory()
        yield lab
