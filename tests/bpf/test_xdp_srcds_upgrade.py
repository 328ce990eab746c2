"""An upgrade from an object that kept SRCDS's validated clients in their own LRU
(`srcds_clients`) to one that keeps them in `game_clients`: the validated client is
carried over and loses no packet.

Same network as test_xdp_live (its Live service runner and game server): `bifrost
xdp run` with the old object validates the client through the server's 'B'; then,
under 1000 packets a second, `bifrost xdp upgrade --obj` swaps in this tree's object.
The old object is this tree with modules/srcds.h as it was before the move
(legacy/srcds_lru.h, a copy of it). The game server here sends no session data,
so nothing but the upgrade can validate the client in the new object: right after
the swap it must be in game_clients. The rule's budget for unvalidated packets
(modules/budget.h) is emptied first, so a client not carried over loses packets
(drop_module) until the budget refills.
"""

from __future__ import annotations

import shutil
import socket
import struct
import threading
import time
from pathlib import Path

import pytest
from test_xdp_live import (  # noqa: F401 (live: the fixture)
    CLIENT_PORT,
    Live,
    game_path,
    live,
)
from xdp_harness import VIP, wait_for

from bifrost import codegen
from bifrost.xdp import build, libbpf, loader, maps, maps_def
from bifrost.xdp.build import XDP_DIR
from bifrost_testing import xdp_topology as topo

pytestmark = pytest.mark.bpf

LEGACY_SRCDS = Path(__file__).parent / "legacy" / "srcds_lru.h"
S = maps_def.BY_NAME
RULE_ID = 3  # "srcds", third of config()'s rules
NEVER = 1 << 62  # a budget last refilled then never refills: it is empty


def legacy_object(out: Path) -> Path:
    """This tree's program with SRCDS's validated clients in srcds_clients, as before."""
    src = out / "xdp"
    shutil.copytree(XDP_DIR, src)
    shutil.copy(LEGACY_SRCDS, src / "modules" / "srcds.h")
    hdr = out / "module_config.h"
    hdr.write_text(codegen.render_module_config(["srcds"], "tests"))
    return build._compile(src / "bifrost_xdp.bpf.c", hdr, out / "bifrost_xdp.o")


@pytest.fixture
def upgrade(live: Live, tmp_path_factory: pytest.TempPathFactory) -> Live:  # noqa: F811
    """test_xdp_live's service and network; obj_on: the old object, obj_off: this tree's
    object with SRCDS (live's obj_on)."""
    live.obj_on, live.obj_off = legacy_object(tmp_path_factory.mktemp("srcds-lru")), live.obj_on
    return live


def _pinned(pdir: Path, name: str, spec: maps.MapSpec) -> libbpf.Map:
    fd = libbpf.get_pinned(str(pdir / name))
    return libbpf.Map(fd, spec.key_size, spec.value_size, spec.percpu, owned=True)


def _carried(pdir: Path, client: bytes, service: bytes) -> bool:
    """game_clients holds the client of the service, live (expiry set)."""
    idx = maps_def.game_set_index(client, CLIENT_PORT, service, 27015)
    m = _pinned(pdir, "game_clients", maps.MAP_SPECS["game_clients"])
    try:
        raw = m.lookup(idx.to_bytes(4, "little"))
    finally:
        m.close()
    assert raw is not None
    ways = S["game_client_set"].unpack(raw)
    c = int.from_bytes(client, "little")
    ports = maps_def.game_ports(CLIENT_PORT, 27015)
    return any(
        ways["client"][w] == c and ways["ports"][w] == ports and ways["state"][3 * w] > 0
        for w in range(maps_def.GAME_CLIENT_WAYS)
    )


def test_an_upgrade_carries_validated_srcds_clients_into_game_clients(upgrade: Live) -> None:
    pdir = loader.pin_dir_for(upgrade.pins, topo.POP_C_IF)
    sent = [0]

    def packet(i: int) -> bytes:
        # A netchannel datagram's 12-byte header at least (srcds.h); seq for serve().
        return b"\x01" + struct.pack("!I", i) + bytes(8)

    with game_path(upgrade) as g:  # upgrade.obj_on: the old object
        client, got1 = g.client, g.got1
        legacy = _pinned(pdir, maps.LEGACY_SRCDS_CLIENTS, maps.LEGACY_SRCDS_SPEC)
        try:
            assert len(legacy.dump()) == 1, "the old object validated the client in its LRU"
        finally:
            legacy.close()
        client_b, vip_b = socket.inet_aton(topo.CLIENT_IP), socket.inet_aton(VIP)
        assert not (pdir / "game_clients").exists(), "the old object has no game_clients"
        # Empty the rule's budget for unvalidated packets, on every CPU.
        spec = maps.MAP_SPECS["game_handshake_budget"]
        budget = _pinned(pdir, "game_handshake_budget", spec)
        try:
            budget.update(RULE_ID.to_bytes(4, "little"), S["rate_state"].pack(last_ns=NEVER))
        finally:
            budget.close()

        stop_sending = threading.Event()

        def send() -> None:
            while not stop_sending.is_set():
                client.sendto(packet(sent[0]), (VIP, 27015))
                sent[0] += 1
                time.sleep(0.001)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        mark = sent[0]
        assert wait_for(lambda: bool(got1.seqs) and got1.seqs[-1] > mark + 50, 20)
        out = upgrade.cli("upgrade", "--obj", str(upgrade.obj_off))
        assert "swapped prog id" in out, out
        carried_at_once = _carried(pdir, client_b, vip_b)
        mark = sent[0]
        # Positive control: packets sent after the swap arrive (or the budget was
        # all that carried them, and then the loss check below names them).
        wait_for(lambda: bool(got1.seqs) and got1.seqs[-1] > mark + 200, 5)
        stop_sending.set()
        sender.join(5)
        total = sent[0]

        def last_arrived() -> bool:
            client.sendto(packet(sent[0]), (VIP, 27015))
            sent[0] += 1
            return bool(got1.seqs) and got1.seqs[-1] >= total

        assert wait_for(last_arrived, 20), "no packet arrived after the last one\n" + upgrade.log()

    assert total > 200
    lost = sorted(set(range(total)) - set(got1.seqs))
    stats = upgrade.cli("stats")
    assert not lost, f"{len(lost)} lost, first {lost[:20]}\n{stats}"
    assert g.got2.seqs == [] and g.got2.foreign == [], "a packet went to the wrong game server"
    assert "drop_module" not in stats, stats
    assert carried_at_once, "the client is in game_clients as the new object starts"
    assert "1 SRCDS client(s) carried into game_clients" in out, out
    assert not (pdir / maps.LEGACY_SRCDS_CLIENTS).exists(), "the old map's pin is gone"
