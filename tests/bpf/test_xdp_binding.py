"""The libbpf binding and the loader's checks: libbpf.so.1, pinned maps checked against
the kernel, no fd leak over 1,000 applies, no one else's program replaced or removed.

::

    [pop] x0 10.8.0.1 ---- 10.8.0.2 y0 [peer]
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from xdp_harness import compile_object, make_config, x0_link

from bifrost.netns import Namespace
from bifrost.xdp import libbpf, loader, maps, maps_def, pins
from bifrost.xdp.libbpf import XDP_FLAGS_DRV_MODE, BpfObject

pytestmark = pytest.mark.bpf


@dataclass
class Net:
    pop: Namespace
    peer: Namespace
    obj: Path
    pins: Path

    def ifindex(self) -> int:
        with self.pop.entered():
            return loader.ifindex("x0")


@pytest.fixture
def net(tmp_path_factory: pytest.TempPathFactory, pin_base: Path) -> Iterator[Net]:
    obj = compile_object(tmp_path_factory.mktemp("binding"))
    with x0_link("bfx-bind") as (a, b):
        yield Net(a, b, obj, pin_base)


def test_loads_libbpf_so_1_and_checks_its_version() -> None:
    assert libbpf.version() >= libbpf.MIN_VERSION
    assert libbpf.version()[0] == 1
    loaded = Path("/proc/self/maps").read_text()
    assert "libbpf.so.1" in loaded
    assert "libbpf.so.0" not in loaded


def test_map_specs_match_the_objects_map_definitions(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The Python side's idea of every map (what it reads and writes, and what pinned maps
    are checked against) is the object's own."""
    every = tuple(maps_def.AVAILABLE_MODULES)  # each module's maps too
    with BpfObject(compile_object(tmp_path_factory.mktemp("specs"), every), load=False) as bo:
        defs = bo.map_defs()
    assert set(maps.MAP_SPECS) == set(defs)
    for name, spec in maps.MAP_SPECS.items():
        d = defs[name]
        mmapable = d.flags & libbpf.BPF_F_MMAPABLE
        assert (d.type, d.key_size, d.value_size, d.max_entries, mmapable) == (
            spec.type,
            spec.key_size,
            spec.value_size,
            spec.max_entries,
            spec.flags,
        ), name


def test_a_pinned_map_of_another_layout_is_refused_before_use(net: Net) -> None:
    """A map pinned by another build (here: settings with a smaller value) is never
    read or written with this build's sizes."""
    pdir = net.pins / "x0"
    with net.pop.entered():
        loader.attach(make_config(), "x0", obj=net.obj, pin_base=net.pins)
    spec = maps.MAP_SPECS["settings"]
    fd = libbpf.map_create(spec.type, "settings", spec.key_size, spec.value_size - 8, 1)
    try:
        pins.replace_pin(fd, pdir / "settings")
    finally:
        os.close(fd)
    with pytest.raises(maps.MapMismatch, match=r"pinned map settings: .*value_size \d+ -> \d+"):
        maps.MapSet.from_pins(pdir)
    with net.pop.entered():
        loader.detach("x0", net.pins)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_thousand_applies_leak_no_fd(net: Net) -> None:
    """13 fds leaked per apply used to exhaust systemd's default limit after ~75 reloads."""
    cfg = make_config()
    with net.pop.entered():
        loader.attach(cfg, "x0", obj=net.obj, pin_base=net.pins)
        try:
            loader.apply(cfg, "x0", net.pins)  # anything opened once (libbpf, netlink caches)
            before = open_fds()
            for i in range(1000):
                # Alternate two configs, so every other apply really writes.
                loader.apply(make_config(ipv6="drop" if i % 2 else "pass"), "x0", net.pins)
            assert open_fds() == before
        finally:
            loader.detach("x0", net.pins)


def test_never_replaces_nor_removes_someone_elses_program(net: Net) -> None:
    """A program attached by someone else (netlink, no bifrost link) blocks attach, and
    detach leaves it in place and says so."""
    with net.pop.entered(), BpfObject(net.obj) as other:
        libbpf.xdp_attach(net.ifindex(), other.prog_fd("bifrost_pass"), XDP_FLAGS_DRV_MODE)
        theirs = libbpf.xdp_query_id(net.ifindex())
        with pytest.raises(loader.AttachError, match=rf"bifrost_pass \(prog id {theirs}\)"):
            loader.attach(make_config(), "x0", obj=net.obj, pin_base=net.pins)
        assert not (net.pins / "x0" / loader.LINK_PIN).exists()
        st = loader.status("x0", net.pins)
        assert st.attached and not st.ours
        assert "by someone else" in str(st)
        net.pins.mkdir(parents=True, exist_ok=True)
        assert "left bifrost_pass" in loader.detach("x0", net.pins)
        assert libbpf.xdp_query_id(net.ifindex()) == theirs


def test_status_and_detach_know_our_link(net: Net) -> None:
    with net.pop.entered():
        loader.attach(make_config(), "x0", obj=net.obj, pin_base=net.pins)
        st = loader.status("x0", net.pins)
        assert st.ours and st.native_prog_id
        fd = libbpf.get_pinned(str(net.pins / "x0" / loader.LINK_PIN))
        try:
            info = libbpf.link_info(fd)
        finally:
            os.close(fd)
        assert info.type == libbpf.BPF_LINK_TYPE_XDP
        assert (info.prog_id, info.ifindex) == (st.native_prog_id, net.ifindex())
        assert loader.detach("x0", net.pins) == "x0: detached"
        assert libbpf.xdp_query_id(net.ifindex()) == 0
