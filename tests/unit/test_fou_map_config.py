"""[fou_map] config schema, snapshot file, metrics text, table formatting."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from bifrost.config_schema import ConfigError, Reader
from bifrost.fou_map import config as fmconfig
from bifrost.fou_map import daemon
from bifrost.fou_map.cli import format_table
from bifrost.fou_map.control import MapEntry

pytestmark = pytest.mark.unit


def parse(data: dict) -> fmconfig.FouMapConfig:
    return fmconfig.parse(Reader(data, "fou_map"))


def test_defaults():
    cfg = fmconfig.default()
    assert cfg.table.ports == (5555,)
    assert cfg.table.idle_timeout_ms == 300_000
    assert cfg.table.miss_policy == "pass"
    assert cfg.state_file == Path("/var/lib/bifrost/fou_map.snapshot")
    assert cfg.metrics_address == "127.0.0.1" and cfg.endpoint is None


def test_pops_and_auth():
    cfg = parse({"pops": ["198.51.100.0/24", "10.41.1.1/32"]})
    assert cfg.table.pops == ("198.51.100.0/24", "10.41.1.1/32")
    assert fmconfig.default().table.pops == (), "none: fou_map learns from no one"
    assert cfg.auth is None, "[auth] is top level: the daemon attaches it"


def test_daemon_attaches_auth_keys(tmp_path):
    path = tmp_path / "bifrost.toml"
    path.write_text(
        '[auth]\nkeys = ["0123456789abcdef", "fedcba9876543210"]\n'
        '[fou_map]\npops = ["10.41.0.0/16"]\n'
    )
    cfg = daemon.FouMapDaemon.load(path)
    assert cfg.auth is not None
    assert cfg.auth.keys == (bytes.fromhex("0123456789abcdef"), bytes.fromhex("fedcba9876543210"))
    path.write_text('[fou_map]\npops = ["10.41.0.0/16"]\n')
    assert daemon.FouMapDaemon.load(path).auth is None


def test_full_section():
    cfg = parse(
        {
            "ports": [5555, 6080],
            "idle_timeout": 30,
            "max_entries": 1000,
            "miss_policy": "drop",
            "static": [{"client": "203.0.113.5", "pop": "192.0.2.1"}],
            "endpoint": {
                "netns": "gs1",
                "local": "10.200.0.1",
                "gateway": "10.41.1.1",
                "addresses": ["198.51.100.10"],
                "routes": ["0.0.0.0/0"],
            },
        }
    )
    assert cfg.table.ports == (5555, 6080) and cfg.table.idle_timeout_ms == 30_000
    assert cfg.static[0].client == ipaddress.IPv4Address("203.0.113.5")
    assert cfg.endpoint is not None and cfg.endpoint.addresses == ("198.51.100.10/32",)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"ports": [0]}, "fou_map.ports[0] = 0"),
        ({"pops": ["10.41.0.1/16"]}, "fou_map.pops[0] = '10.41.0.1/16': expected an IPv4 prefix"),
        ({"pops": ["0.0.0.0/0"]}, "fou_map.pops[0] = '0.0.0.0/0': 0.0.0.0/0 would accept"),
        ({"pops": ["127.0.0.0/8"]}, "fou_map.pops[0] = '127.0.0.0/8': overlaps 127.0.0.0/8"),
        ({"pops": ["192.0.0.0/2"]}, "fou_map.pops[0] = '192.0.0.0/2': overlaps 224.0.0.0/4"),
        ({"pops": [24]}, "fou_map.pops[0] = 24: expected an IPv4 prefix"),
        ({"pops": "10.0.0.0/8"}, "fou_map.pops = '10.0.0.0/8': expected a list"),
        (
            {"pops": ["10.0.0.0/8", "10.0.0.0/8"]},
            "fou_map.pops = ['10.0.0.0/8', '10.0.0.0/8']: expected at most 16 distinct",
        ),
        (
            {"pops": [f"10.{i}.0.0/16" for i in range(17)]},
            "fou_map.pops = ['10.0.0.0/16',",
        ),
        (
            {"ports": list(range(1, 10))},
            "fou_map.ports = [1, 2, 3, 4, 5, 6, 7, 8, 9]: expected 1..8 distinct ports",
        ),
        ({"ports": [5555, 5555]}, "fou_map.ports = [5555, 5555]: expected 1..8 distinct ports"),
        ({"idle_timeout": 0.01}, "fou_map.idle_timeout = 0.01"),
        ({"max_entries": 2_000_000}, "fou_map.max_entries = 2000000"),
        ({"miss_policy": "reject"}, "fou_map.miss_policy = 'reject'"),
        ({"static": [{"client": "x", "pop": "10.0.0.1"}]}, "fou_map.static[0].client = 'x'"),
        ({"bogus": 1}, "fou_map.bogus: unknown key"),
        ({"endpoint": {"local": "10.0.0.1"}}, "fou_map.endpoint.gateway: required key is missing"),
        (
            {"endpoint": {"local": "10.0.0.1", "gateway": "10.0.0.2", "addresses": ["1.2.3"]}},
            "fou_map.endpoint.addresses[0] = '1.2.3'",
        ),
        (
            {
                "static": [
                    {"client": "10.0.0.1", "pop": "10.0.0.2"},
                    {"client": "10.0.0.1", "pop": "10.0.0.3"},
                ]
            },
            "fou_map.static[1].client = '10.0.0.1': this client is listed twice",
        ),
        (
            {
                "max_entries": 1,
                "static": [
                    {"client": "10.0.0.1", "pop": "10.0.0.2"},
                    {"client": "10.0.0.3", "pop": "10.0.0.2"},
                ],
            },
            "fou_map.max_entries = 1: fou_map.static lists 2 entries",
        ),
        # What fou_map's ADD refuses (fm_valid_unicast) is refused here, naming key and value.
        *(
            (
                {"static": [{"client": bad, "pop": "192.0.2.1"}]},
                f"fou_map.static[0].client = '{bad}'",
            )
            for bad in (
                "0.0.0.0",
                "0.1.2.3",
                "224.0.0.1",
                "239.255.255.250",
                "255.255.255.255",
                "127.0.0.1",
            )
        ),
        *(
            (
                {"static": [{"client": "203.0.113.5", "pop": bad}]},
                f"fou_map.static[0].pop = '{bad}'",
            )
            for bad in ("0.0.0.0", "225.1.2.3", "255.255.255.255", "127.3.2.1")
        ),
    ],
)
def test_errors_name_key_and_value(data, needle):
    with pytest.raises(ConfigError) as e:
        parse(data)
    assert needle in str(e.value)


def test_kernel_refusals_match_fm_valid_unicast():
    """The same four classes as the kernel's fm_valid_unicast (0/8, multicast, broadcast,
    loopback); all of 0/8, not only 0.0.0.0 as ipv4_is_zeronet() has it now."""
    refused = fmconfig.refused_by_kernel
    for ok in ("1.0.0.1", "10.0.0.1", "192.0.2.255", "223.255.255.255", "240.0.0.1", "1.2.3.4"):
        assert refused(ipaddress.IPv4Address(ok)) is None, ok
    for bad in (
        "0.0.0.0",
        "0.9.9.9",
        "224.0.0.0",
        "239.255.255.255",
        "255.255.255.255",
        "127.255.0.1",
    ):
        assert refused(ipaddress.IPv4Address(bad)), bad


def entry(client: str, pop: str, static: bool = False, age: int = 1500) -> MapEntry:
    return MapEntry(
        client=ipaddress.IPv4Address(client),
        pop=ipaddress.IPv4Address(pop),
        age_ms=age,
        static=static,
        packets=7,
    )


def test_snapshot_roundtrip(tmp_path):
    path = tmp_path / "sub" / "fm.snapshot"
    daemon.write_snapshot(path, [entry("10.0.0.1", "10.1.0.1", True)], 42)
    snap = daemon.read_snapshot(path)
    assert snap is not None and snap["created_ns"] == 42
    assert snap["entries"] == [
        {"client": "10.0.0.1", "pop": "10.1.0.1", "static": True, "age_ms": 1500}
    ]
    assert [p.name for p in path.parent.iterdir()] == ["fm.snapshot"], "no temp file left"
    path.write_text(json.dumps({"version": 99}))
    assert daemon.read_snapshot(path) is None
    path.write_text("{not json")
    assert daemon.read_snapshot(path) is None
    assert daemon.read_snapshot(tmp_path / "missing") is None


def test_format_table():
    text = format_table(
        [entry("10.0.0.10", "10.1.0.1"), entry("10.0.0.9", "10.2.0.1", static=True, age=0)]
    )
    lines = text.splitlines()
    assert lines[0].split() == ["CLIENT", "POP", "AGE", "PACKETS", "KIND"]
    assert lines[1].split() == ["10.0.0.9", "10.2.0.1", "0.0s", "7", "static"]
    assert lines[2].split() == ["10.0.0.10", "10.1.0.1", "1.5s", "7", "learned"]
    assert lines[-1] == "2 entries"


EXAMPLE = """
[fou_map]
device = "/dev/fou_map"
ports = [5555]
idle_timeout = 300
max_entries = 65536
miss_policy = "pass"
state_file = "/var/lib/bifrost/fou_map.snapshot"
snapshot_interval = 10
metrics_address = "127.0.0.1"
metrics_port = 9469

[[fou_map.static]]
client = "203.0.113.5"
pop = "192.0.2.1"

[fou_map.endpoint]
netns = "gs1"
local = "10.200.0.1"
gateway = "192.0.2.1"
addresses = ["198.51.100.10/32"]
routes = ["0.0.0.0/0"]
"""


def test_example_section_parses_through_the_host_config():
    import tomllib

    from bifrost import config as cfgmod

    cfg = cfgmod.parse(tomllib.loads(EXAMPLE))
    fm = cfg.fou_map
    assert fm.table.max_entries == 65536 and fm.metrics_port == 9469
    assert fm.endpoint.netns == "gs1" and fm.endpoint.routes == ("0.0.0.0/0",)
    assert fm.static[0].pop == ipaddress.IPv4Address("192.0.2.1")


def test_pops_and_keys_pack_as_the_module_reads_them():
    from bifrost.abi import fou_map as abi
    from bifrost.fou_map import control

    addrs, lens = control.pack_pops(("10.41.0.0/16", "192.0.2.7/32"))
    back = abi.Config.unpack(abi.Config(n_pops=2, pop_addrs=addrs, pop_lens=lens).pack())
    assert back.pop_addrs[:8] == bytes([10, 41, 0, 0, 192, 0, 2, 7]) and back.pop_addrs[
        8:
    ] == bytes(56)
    assert back.pop_lens == bytes([16, 32]) + bytes(14)
    with pytest.raises(ValueError, match="at most 16 POP prefixes"):
        control.pack_pops([f"10.{i}.0.0/16" for i in range(17)])
    keys = (bytes(range(8)), bytes(range(8, 16)))
    assert abi.Auth.unpack(abi.Auth(n_keys=2, keys=control.pack_keys(keys)).pack()).keys == (
        b"".join(keys) + bytes(16)
    )
    with pytest.raises(ValueError):
        control.pack_keys((b"short",))
