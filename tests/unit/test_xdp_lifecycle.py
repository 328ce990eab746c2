"""The loader's decisions that need no kernel: where bpffs goes, --migrate parsing,
config checks before any write, generation layout of the desired content."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from pathlib import Path

import pytest

from bifrost.xdp import bpffs, maps, maps_def, pins
from bifrost.xdp.config import Rule, XdpConfig

pytestmark = pytest.mark.unit

S = maps_def.BY_NAME


def rule(name: str, port: int, **kw: object) -> Rule:
    base: dict[str, object] = dict(
        id=0,
        name=name,
        anycast=ipaddress.IPv4Address("198.51.100.10"),
        ports=((port, port),),
        proto="udp",
        game_server=ipaddress.IPv4Address("10.0.0.2"),
        fou_port=5555,
        cache=False,
        modules=(),
        rate_limit_pps=0,
        rate_limit_burst=0,
    )
    base.update(kw)
    return Rule(**base)  # type: ignore[arg-type]


def config(*rules: Rule, **kw: object) -> XdpConfig:
    cfg = XdpConfig(modules=(), pop_address=ipaddress.IPv4Address("198.51.100.1"), rules=rules)
    return replace(cfg, **kw)


@pytest.mark.parametrize(
    ("pin_dir", "target"),
    [
        ("/sys/fs/bpf/bifrost", "/sys/fs/bpf"),
        ("/sys/fs/bpf", "/sys/fs/bpf"),
        ("/sys/fs/bpf/a/b", "/sys/fs/bpf"),
        ("/run/bifrost/bpf", "/run/bifrost/bpf"),  # bpftool's way: on the pin dir itself
        ("/sys/fs/bpfx", "/sys/fs/bpfx"),
    ],
)
def test_bpffs_goes_to_sys_fs_bpf_or_the_pin_dir(pin_dir: str, target: str) -> None:
    assert bpffs.mount_target(pin_dir) == Path(target)


def test_migrations_parse_and_name_what_is_wrong() -> None:
    assert pins.parse_migrations(["rate_limit=reset", "game_clients_overflow=copy"]) == {
        "rate_limit": "reset",
        "game_clients_overflow": "copy",
    }
    assert pins.parse_migrations(None) == {}
    with pytest.raises(ValueError, match=r"--migrate 'rate_limit=keep': expected MAP=HOW"):
        pins.parse_migrations(["rate_limit=keep"])
    with pytest.raises(ValueError, match=r"--migrate 'nosuch=reset'.*rate_limit"):
        pins.parse_migrations(["nosuch=reset"])


def test_duplicate_names_and_capacities_are_refused_before_any_write() -> None:
    with pytest.raises(maps.ApplyError, match=r"xdp.rule\[1\].name = 'a': also the name of"):
        maps.check_capacity(config(rule("a", 1), rule("a", 2)))
    many = tuple(ipaddress.IPv4Address(0x0B000000 + i) for i in range(maps_def.MAX_GAMESERVERS))
    with pytest.raises(maps.ApplyError, match=r"xdp.game_servers .*: 1025 entries, at most 1024"):
        maps.check_capacity(config(rule("a", 1), game_servers=many))
    blocks = tuple(ipaddress.IPv4Network(f"10.{i // 256}.{i % 256}.0/24") for i in range(16385))
    with pytest.raises(maps.ApplyError, match=r"xdp.block: 16385 entries, at most 16384"):
        maps.check_capacity(config(block=blocks))
    maps.check_capacity(config(rule("a", 1), rule("b", 2)))


def test_desired_places_each_generation_apart() -> None:
    """Generation 1's entries sit at the second half of each array and carry gen 1 in
    hash keys and anycast bits; the rule keeps the id given by name, not position."""
    cfg = config(rule("b", 27015), rule("a", 27016))
    ids = {"a": 7, "b": 3}
    zero, one = maps.desired(cfg, ids=ids, gen=0), maps.desired(cfg, ids=ids, gen=1)
    stride = maps_def.MAX_RULES + 1
    assert sorted(int.from_bytes(k, "little") for k in one["rules"]) == [
        stride + 3,
        stride + 7,
    ]
    assert sorted(int.from_bytes(k, "little") for k in zero["rules"]) == [3, 7]
    (rule_b,) = [v for k, v in one["rules"].items() if int.from_bytes(k, "little") == stride + 3]
    assert S["rule"].unpack(rule_b)["id"] == 3
    assert all(int.from_bytes(k, "little") >= maps_def.RULE_SLOTS for k in one["rule_slots"])
    assert list(one["settings"]) == [(1).to_bytes(4, "little")]
    assert {S["anycast"].unpack(v)["gens"] for v in one["anycast"].values()} == {2}
    assert {S["anycast"].unpack(v)["gens"] for v in zero["anycast"].values()} == {1}


def test_module_needs_by_rule() -> None:
    cfg = config(rule("a", 1, modules=("srcds",)), rule("b", 2), rule("c", 3, modules=("srcds",)))
    assert maps.config_modules(cfg) == {"srcds": ["a", "c"]}
