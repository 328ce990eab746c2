"""Swapping in a newly built object (`bifrost xdp upgrade`): one bpf_link_update, the
maps kept, a changed state-map layout refused unless migrated, a config needing a game
module the object lacks refused, concurrent commands serialized by the pin-dir lock.

::

    [pop] x0 10.8.0.1 ---- 10.8.0.2 y0 [peer]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from xdp_harness import compile_object, make_config, x0_link, xdp_toml

from bifrost.netns import Namespace
from bifrost.xdp import libbpf, loader, maps, maps_def, pins

pytestmark = pytest.mark.bpf

BIFROST = Path(sys.executable).parent / "bifrost"
S = maps_def.BY_NAME


@dataclass
class Pop:
    ns: Namespace
    with_srcds: Path
    without: Path
    base: Path

    @property
    def pdir(self) -> Path:
        return self.base / "x0"

    def link_info(self) -> libbpf.LinkInfo:
        fd = libbpf.get_pinned(str(self.pdir / loader.LINK_PIN))
        try:
            return libbpf.link_info(fd)
        finally:
            os.close(fd)

    def attached_id(self) -> int:
        with self.ns.entered():
            return libbpf.xdp_query_id(loader.ifindex("x0"))


@pytest.fixture
def pop(tmp_path_factory: pytest.TempPathFactory, pin_base: Path) -> Iterator[Pop]:
    with_srcds = compile_object(tmp_path_factory.mktemp("srcds"), ("srcds",))
    without = compile_object(tmp_path_factory.mktemp("none"), ())
    with x0_link("bfx-upg") as (a, _):
        yield Pop(a, with_srcds, without, pin_base)


def plain_config():
    """The harness config without game modules: both objects can run it."""
    cfg = make_config(modules=())
    return replace(cfg, rules=tuple(replace(r, modules=()) for r in cfg.rules))


RATE_KEY = S["rate_key"].pack(src="192.0.2.50", rule_id=3)
RATE_STATE = S["rate_state"].pack(last_ns=1, credit_ns=12345)
# A validated client in the game modules' overflow LRU (an object without modules has none).
GAME_KEY = S["srcds_key"].pack(client="192.0.2.50", service="198.51.100.10", client_port=4)
GAME_STATE = S["srcds_state"].pack(expires_ns=2**62)


def pinned(pop: Pop, name: str) -> libbpf.Map:
    spec = maps.MAP_SPECS[name]
    fd = libbpf.get_pinned(str(pop.pdir / name))
    return libbpf.Map(fd, spec.key_size, spec.value_size, spec.percpu, owned=True)


def lookup(pop: Pop, name: str, key: bytes) -> bytes | None:
    m = pinned(pop, name)
    try:
        return m.lookup(key)
    finally:
        m.close()


def test_upgrade_swaps_the_program_in_one_step_and_keeps_the_maps(pop: Pop) -> None:
    cfg = plain_config()
    with pop.ns.entered():
        loader.attach(cfg, "x0", obj=pop.with_srcds, pin_base=pop.base)
        first = pop.attached_id()
        link_id = pop.link_info().id
        for name, k, v in (
            ("rate_limit", RATE_KEY, RATE_STATE),
            ("game_clients_overflow", GAME_KEY, GAME_STATE),
        ):
            m = pinned(pop, name)
            m.update(k, v)
            m.close()
        assert loader.running_modules(pop.pdir) == {"srcds"}

        up = loader.upgrade(cfg, "x0", obj=pop.without, pin_base=pop.base)
        assert up.swapped and up.old_prog_id == first and up.new_prog_id == pop.attached_id()
        assert pop.link_info().id == link_id, "the same link: no detach in between"
        assert {"rate_limit", "counters", "nexthops", "config_gen", "rule_names"} <= set(up.reused)
        assert up.fresh == ()
        assert lookup(pop, "rate_limit", RATE_KEY) == RATE_STATE
        assert loader.running_modules(pop.pdir) == set()
        # The object without modules has no game_clients_overflow: the pin waits, untouched.
        assert lookup(pop, "game_clients_overflow", GAME_KEY) == GAME_STATE

        same = loader.upgrade(cfg, "x0", obj=pop.without, pin_base=pop.base)
        assert not same.swapped and "already running this object" in str(same)
        back = loader.upgrade(cfg, "x0", obj=pop.with_srcds, pin_base=pop.base)
        assert back.swapped and "game_clients_overflow" in back.reused
        assert lookup(pop, "game_clients_overflow", GAME_KEY) == GAME_STATE
        loader.detach("x0", pop.base)


def test_a_changed_state_map_layout_is_refused_unless_migrated(pop: Pop) -> None:
    """rate_limit pinned with another max_entries (as a build with another capacity
    would leave it): refused, the running program untouched, until --migrate says how."""
    cfg = plain_config()
    with pop.ns.entered():
        loader.attach(cfg, "x0", obj=pop.with_srcds, pin_base=pop.base)
        running = pop.attached_id()
        spec = maps.MAP_SPECS["rate_limit"]
        fd = libbpf.map_create(spec.type, "rate_limit", spec.key_size, spec.value_size, 1024)
        libbpf.Map(fd, spec.key_size, spec.value_size).update(RATE_KEY, RATE_STATE)
        pins.replace_pin(fd, pop.pdir / "rate_limit")
        os.close(fd)

        with pytest.raises(pins.LayoutChanged, match=r"rate_limit \(max_entries 1024 -> \d+"):
            loader.upgrade(cfg, "x0", obj=pop.without, pin_base=pop.base)
        assert pop.attached_id() == running

        up = loader.upgrade(
            cfg, "x0", obj=pop.without, pin_base=pop.base, migrate={"rate_limit": "copy"}
        )
        assert up.swapped and up.fresh == ("rate_limit",) and up.copied == {"rate_limit": 1}
        assert lookup(pop, "rate_limit", RATE_KEY) == RATE_STATE
        m = pinned(pop, "rate_limit")
        try:
            assert libbpf.map_info(m.fd).max_entries == spec.max_entries
        finally:
            m.close()
        loader.detach("x0", pop.base)


def test_a_changed_config_map_layout_gives_the_new_object_a_whole_config_set(pop: Pop) -> None:
    """Config maps need no migration (the config refills them), but they go together:
    one changed layout and the new object gets all of them (and config_gen) afresh,
    so the old program reads a complete, untouched set until the swap."""
    cfg = plain_config()
    with pop.ns.entered():
        loader.attach(cfg, "x0", obj=pop.with_srcds, pin_base=pop.base)
        spec = maps.MAP_SPECS["anycast"]
        fd = libbpf.map_create(spec.type, "anycast", spec.key_size, spec.value_size, 100)
        pins.replace_pin(fd, pop.pdir / "anycast")
        os.close(fd)
        up = loader.upgrade(cfg, "x0", obj=pop.without, pin_base=pop.base)
        assert up.swapped
        assert set(up.fresh) == set(pins.CONFIG_GROUP)
        assert {"rate_limit", "rule_names", "counters"} <= set(up.reused)
        with maps.MapSet.from_pins(pop.pdir) as ms:  # every pin has this build's layout
            (settings,) = maps.in_force(ms, "settings").values()
            assert S["settings"].unpack(settings)["fou_port"] == cfg.fou_port
            assert maps.rule_names(ms, cfg) == {r.id: r.name for r in cfg.rules}
        loader.detach("x0", pop.base)


def test_a_config_needing_a_module_the_object_lacks_is_refused(pop: Pop) -> None:
    plain = plain_config()
    srcds = make_config()  # rule 'srcds' asks for the SRCDS module
    with pop.ns.entered():
        with pytest.raises(loader.ModuleMissing, match="not built with"):
            loader.attach(srcds, "x0", obj=pop.without, pin_base=pop.base)
        assert pop.attached_id() == 0
        loader.attach(plain, "x0", obj=pop.without, pin_base=pop.base)
        with maps.MapSet.from_pins(pop.pdir) as ms:
            gen = maps.active_generation(ms)
        with pytest.raises(loader.ModuleMissing) as e:
            loader.apply(srcds, "x0", pop.base)
        msg = str(e.value)
        assert "xdp.rule 'srcds' needs game module 'srcds'" in msg
        assert "the running program" in msg and "(it has: none)" in msg
        assert "invoke generate" in msg and "bifrost xdp upgrade" in msg
        with maps.MapSet.from_pins(pop.pdir) as ms:
            assert maps.active_generation(ms) == gen, "nothing written"
        with pytest.raises(loader.ModuleMissing):
            loader.upgrade(srcds, "x0", obj=pop.without, pin_base=pop.base)
        # The rebuilt object has it: the swap carries the config that needs it.
        assert loader.upgrade(srcds, "x0", obj=pop.with_srcds, pin_base=pop.base).swapped
        loader.apply(srcds, "x0", pop.base)
        loader.detach("x0", pop.base)


def test_concurrent_commands_wait_for_the_pin_dir_lock(pop: Pop, tmp_path: Path) -> None:
    """A manual `bifrost xdp apply` while another command (here: the test, as a SIGHUP
    reload would) holds the lock waits, then applies."""
    toml = tmp_path / "bifrost.toml"
    toml.write_text(xdp_toml(pop.base, modules=()))
    with pop.ns.entered():
        loader.attach(plain_config(), "x0", obj=pop.without, pin_base=pop.base)
    argv = ["nsenter", f"--net=/run/netns/{pop.ns.name}", str(BIFROST), "-c", str(toml)]
    err = tmp_path / "apply.err"
    with pins.locked(pop.base), err.open("wb") as stderr:
        proc = subprocess.Popen([*argv, "xdp", "apply"], stdout=subprocess.PIPE, stderr=stderr)
        end = time.monotonic() + 20
        while "holds the lock; waiting" not in err.read_text() and time.monotonic() < end:
            time.sleep(0.05)
        assert "holds the lock; waiting" in err.read_text()
        assert proc.poll() is None
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.read_text()
    assert b"generation 1" in out
    with pop.ns.entered():
        loader.detach("x0", pop.base)
