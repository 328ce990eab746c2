"""The whole Bifrost system on the test network, each host run from its own bifrost.toml.

On topology.build(pops=2, container=True):

- each POP runs `bifrost xdp run` (as bifrost-xdp.service does) on its one
  interface, the bifrost_nf module and `bifrost-cached`;
- the game-server machine brings up its FOU endpoint into the game service's
  container-like netns with `bifrost endpoint up` ([fou_map.endpoint] netns),
  and runs `bifrost-foumapd` there, where fou_map sees the tunnel's packets;
- the game service is the reference server (A2S + SRCDS handshake + echo),
  on the anycast address (clients, through the tunnel) and on the endpoint
  address (the POPs' bifrost-cached queries it there); beside it a RakNet and
  a Steam-networking game (bifrost_testing.game_peers) on the anycast address,
  each behind its own POP rule (rust, steam).

The TOML files are written as an operator writes etc/bifrost.example.toml,
and kept in the work directory for a reader.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bifrost import codegen
from bifrost.bifrost_nf.nf import CacheDevice
from bifrost.fou_map.control import FouMap
from bifrost.netns import Namespace
from bifrost.paths import BUILD_DIR
from bifrost.xdp import build as xdp_build
from bifrost.xdp import loader, maps
from bifrost.xdp.build import OBJECT
from bifrost_testing import game_peers, kmods, refserver, topology
from bifrost_testing.services import Service
from bifrost_testing.topology import FOU_PORT, GAME_PORT, GS_LOCAL, SERVICE_IP, Network

BIN = Path(sys.executable).parent
MODULES = ("veth", "fou", "ipip", "bifrost_nf", "fou_map")
BPFFS = Path("/sys/fs/bpf")  # the POPs' pin dirs go under it
MAP_NAME = "de_bifrost"
GAME_MODULES = ("srcds", "rust", "steam")  # compiled in, and named by the POPs' rules
LAB_OBJECT = BUILD_DIR / "lab" / "bifrost_xdp.o"
RULE_ID = 1  # the SRCDS game's rule, the POPs' first (ids follow the rules' order)
RUST_PORT, STEAM_PORT = 28015, 27016  # the RakNet and the Steam-networking game
# The other rules: name -> (id, port, module).
GAME_RULES = {"rust": (2, RUST_PORT, "rust"), "steam": (3, STEAM_PORT, "steam")}
# A Python process starting in a TCG guest on a loaded host can take a minute.
READY_TIMEOUT_S = 300.0
# The system runs as an operator would run it: FOU authenticated both ways (the
# POPs' XDP and fou_map append and check this key), so the game module validates.
AUTH_KEYS = ("5bd0c2a1e4f39687",)


def _rule_toml(name: str, port: int, module: str, auth: bool, cache: bool = False) -> str:
    """One forward rule for the game service; its module only with auth (see pop_toml)."""
    cached = "cache = true\n" if cache else ""
    return f"""
[[xdp.rule]]
name = "{name}"
anycast = "{SERVICE_IP}"
ports = ["{port}"]
proto = "udp"
game_server = "{GS_LOCAL}"
{cached}modules = {json.dumps([module] if auth else [])}
"""


def pop_toml(
    n: int, pin_base: Path, auth_keys: tuple[str, ...] = (), xdp_mode: str = "native"
) -> str:
    """auth_keys: [auth] keys (16 hex digits each) for authenticated FOU; none: auth
    off, and then the rule has no game module (config validation refuses one).
    xdp_mode: the [xdp] mode (native, or generic as on a NIC without an XDP driver)."""
    auth = f"[auth]\nkeys = {json.dumps(list(auth_keys))}\n\n" if auth_keys else ""
    on = bool(auth_keys)
    rules = _rule_toml("game", GAME_PORT, "srcds", on, cache=True) + "".join(
        _rule_toml(name, port, module, on) for name, (_, port, module) in GAME_RULES.items()
    )
    return f"""\
# POP {n}: the XDP program on its uplink, the A2S cache.
{auth}[xdp]
modules = {json.dumps(list(GAME_MODULES))}
interface = "eth0"
mode = "{xdp_mode}"
pop_address = "{topology.pop_ip(n)}"
fou_port = {FOU_PORT}
pin_dir = "{pin_base}"

{rules}
[cache]
refresh_s = 1.0
ttl_s = 30.0
max_stale_s = 60.0
query_timeout_s = 1.0

[[cache.service]]
address = "{SERVICE_IP}"
port = {GAME_PORT}
server = "{GS_LOCAL}"
"""


def gs_toml(service_netns: str, state_file: Path, auth_keys: tuple[str, ...] = ()) -> str:
    """auth_keys: the same [auth] keys as the POPs' (fou_map checks and appends them)."""
    auth = f"[auth]\nkeys = {json.dumps(list(auth_keys))}\n\n" if auth_keys else ""
    return f"""\
# The game-server machine: fou_map and the FOU endpoint of the game service's netns.
{auth}[fou_map]
ports = [{FOU_PORT}]
pops = ["{topology.POP_NET}"]
idle_timeout = 300
miss_policy = "pass"
state_file = "{state_file}"

[fou_map.endpoint]
netns = "{service_netns}"
local = "{GS_LOCAL}"
gateway = "{topology.pop_ip(1)}"
addresses = ["{SERVICE_IP}/32"]
routes = ["{topology.CLIENT_NET}"]
"""


def build_object(obj: Path = LAB_OBJECT) -> Path:
    """The XDP object these POP configs need (GAME_MODULES compiled in), built into
    obj's directory with its own module_config.h: the host config's stays as it is."""
    header = obj.parent / "module_config.h"
    text = codegen.render_module_config(list(GAME_MODULES), "bifrost_testing.system")
    codegen.write([codegen.Generated(header, text)])
    built = xdp_build.compile_program(header, obj.parent)
    if built != obj:
        built.replace(obj)
    return obj


def load_modules() -> None:
    kmods.load(*MODULES)


@dataclass
class System:
    nw: Network
    work: Path
    pin_bases: dict[int, Path]
    control: Path  # the game service's control socket
    services: dict[str, Service] = field(default_factory=dict)
    peers: game_peers.GameServer | None = None  # the RakNet and Steam games

    # -- what each hop counted ---------------------------------------------------

    def xdp(self, n: int, rule: int = RULE_ID) -> dict[str, int]:
        """POP n's XDP counters of a rule (default the SRCDS game's), by reason (packets)."""
        with maps.MapSet.from_pins(loader.pin_dir_for(self.pin_bases[n], "eth0")) as ms:
            counters = maps.counters(ms)
        return {reason: c.packets for (rid, reason), c in counters.items() if rid == rule}

    def nf(self, n: int) -> dict[str, int]:
        with self.nw.pop(n).entered(), CacheDevice() as dev:
            return {k: int(v) for k, v in dev.counters().items()}

    def cached_answers(self, n: int) -> int:
        with self.nw.pop(n).entered(), CacheDevice() as dev:
            return sum(len(s.answers) for s in dev.dump())

    def fou_map(self) -> dict[str, int]:
        with self.nw.endpoint_ns.entered(), FouMap() as fm:
            return fm.counters()

    def fou_map_table(self) -> dict[str, str]:
        with self.nw.endpoint_ns.entered(), FouMap() as fm:
            return fm.table()

    def game(self) -> dict[str, Any]:
        return refserver.control(self.control, "stats")

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Every hop's counters: pop<n>.xdp, pop<n>.bifrost_nf, fou_map, and what the
        game service received from the client (A2S queries, game packets, handshakes)."""
        snap: dict[str, dict[str, int]] = {}
        for n in self.pin_bases:
            snap[f"pop{n}.xdp"] = self.xdp(n)
            for name, (rid, _, _) in GAME_RULES.items():
                snap[f"pop{n}.xdp.{name}"] = self.xdp(n, rid)
            snap[f"pop{n}.bifrost_nf"] = self.nf(n)
        snap["fou_map"] = self.fou_map()
        game = self.game()
        client = topology.client_ip(0)
        snap["game_service"] = {
            "client_a2s_queries": game["queries"].get(client, 0),
            "client_game_packets": game["game_packets"].get(client, 0),
            "client_handshakes": game["handshakes"].get(client, 0),
            "a2s_queries_from_pops": sum(
                game["queries"].get(topology.pop_ip(n), 0) for n in self.pin_bases
            ),
        }
        if self.peers:
            for proto, counts in self.peers.stats().items():
                snap[f"{proto}_service"] = counts
        return snap


def delta(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> dict:
    """after - before per hop, non-zero counters only."""
    out: dict[str, dict[str, int]] = {}
    for hop, now in after.items():
        was = before.get(hop, {})
        changed = {k: v - was.get(k, 0) for k, v in now.items() if v != was.get(k, 0)}
        if changed:
            out[hop] = changed
    return out


@contextlib.contextmanager
def running(
    work: Path,
    obj: Path = OBJECT,
    prefix: str = "bfe",
    auth_keys: tuple[str, ...] = AUTH_KEYS,
    xdp_mode: str = "native",
) -> Iterator[System]:
    """Bring the whole system up on a fresh network; tear all of it down on exit.
    auth_keys: the POPs' [auth] keys (see pop_toml); none: FOU is not authenticated.
    xdp_mode: the POPs' XDP mode; generic takes NAPI off the router's POP-link ends
    (topology.build's pop_napi): generic XDP_TX goes through the stack, not a ring."""
    if not obj.exists():
        raise FileNotFoundError(f"{obj}: not built (invoke build)")
    work.mkdir(parents=True, exist_ok=True)
    load_modules()
    # No bpffs mount here: `bifrost xdp run` mounts it where the pins go when missing.
    napi = xdp_mode != "generic"
    with topology.build(pops=2, container=True, prefix=prefix, pop_napi=napi) as nw:
        assert nw.service is not None
        pin_bases = {n: BPFFS / f"{prefix}-{os.getpid()}-pop{n}" for n in (1, 2)}
        system = System(nw, work, pin_bases, work / "game.sock")
        try:
            _start(system, obj, auth_keys, xdp_mode)
            yield system
        finally:
            # Stopping bifrost-xdp detaches and unpins; removing the namespaces takes
            # the endpoint (tunnel, fou port) and the modules' per-netns state with them.
            if system.peers:
                system.peers.close()
            for svc in reversed(list(system.services.values())):
                svc.stop()
            # A stopped bifrost xdp run leaves the program attached (traffic keeps
            # flowing); the operator's `bifrost xdp detach` takes it off and unpins.
            for n, base in pin_bases.items():
                with nw.pop(n).entered(), contextlib.suppress(FileNotFoundError, ValueError):
                    loader.detach("eth0", base)
                # The pin dir itself is ours. Not empty = something was left pinned:
                # rmdir fails and says so.
                with contextlib.suppress(FileNotFoundError):
                    base.rmdir()


def _start(
    system: System, obj: Path, auth_keys: tuple[str, ...] = (), xdp_mode: str = "native"
) -> None:
    """Every host's services, started together (each Python start is slow in a TCG
    guest), then waited for as systemd would: READY=1 from each."""
    nw, work = system.nw, system.work
    assert nw.service is not None
    gs_conf = work / "gs.toml"
    gs_conf.write_text(gs_toml(nw.service.name, work / "fou_map.snapshot", auth_keys))
    svcs = system.services

    def start(name: str, ns: Namespace, argv: list[str | Path]) -> None:
        svcs[name] = Service(name, ns, argv, work)

    # The game-server machine: its endpoint into the service's netns, fou_map's daemon
    # there (the tunnel's packets pass that netns's hooks), then the game service.
    endpoint = Service(
        "endpoint-up", nw.gs, [BIN / "bifrost", "-c", gs_conf, "endpoint", "up"], work
    )
    start("bifrost-foumapd", nw.service, [BIN / "bifrost-foumapd", "-c", gs_conf])
    for n, pin_base in system.pin_bases.items():
        conf = work / f"pop{n}.toml"
        conf.write_text(pop_toml(n, pin_base, auth_keys, xdp_mode))
        start(
            f"pop{n}-bifrost-xdp",
            nw.pop(n),
            [BIN / "bifrost", "xdp", "run", "-c", conf, "--obj", obj],
        )
        start(f"pop{n}-bifrost-cached", nw.pop(n), [BIN / "bifrost-cached", "-c", conf, "-v"])
    if endpoint.proc.wait(timeout=READY_TIMEOUT_S) != 0:
        raise RuntimeError(f"bifrost endpoint up failed:\n{endpoint.text()}")
    endpoint.stop()
    start(
        "game-service",
        nw.service,
        [
            sys.executable, "-m", "bifrost_testing.refserver", "--game",
            "--bind", f"{SERVICE_IP}:{GAME_PORT}", "--bind", f"{GS_LOCAL}:{GAME_PORT}",
            "--control", system.control, "--map", MAP_NAME,
        ],
    )  # fmt: skip
    for name, svc in svcs.items():
        if name != "game-service":
            svc.wait_ready(READY_TIMEOUT_S)
    if not topology.wait_for(system.control.exists, READY_TIMEOUT_S, step=0.2):
        raise RuntimeError(f"game service did not start:\n{svcs['game-service'].text()}")
    system.peers = game_peers.GameServer(nw.service, SERVICE_IP, RUST_PORT, STEAM_PORT)
    for n in system.pin_bases:
        # INFO, PLAYER and RULES: the cache answers once the daemon fetched all three.
        if not topology.wait_for(lambda n=n: system.cached_answers(n) >= 3, 60, step=0.2):
            raise RuntimeError(f"pop{n}: bifrost-cached did not fill the cache")
