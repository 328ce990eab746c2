"""The config reader: every error names the full key and the offending value."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from bifrost import config, config_schema
from bifrost.config import ConfigError, Reader

pytestmark = pytest.mark.unit

DOC = """
[pop]
name = "fra1"
port = 27015
rate = 2.5
enabled = true
address = "192.0.2.1"
mode = "strict"

[[pop.rules]]
port = 27015
address = "198.51.100.10"

[[pop.rules]]
port = 70000
address = "198.51.100.300"
"""


def _pop() -> Reader:
    top = Reader(tomllib.loads(DOC))
    sec = top.section("pop")
    assert sec is not None
    return sec


def test_good_values_are_typed() -> None:
    pop = _pop()
    assert pop.string("name") == "fra1"
    assert pop.port("port") == 27015
    assert pop.number("rate") == 2.5
    assert pop.boolean("enabled") is True
    assert str(pop.ipv4("address")) == "192.0.2.1"
    assert pop.string("mode", choices=("strict", "loose")) == "strict"
    assert pop.integer("absent", default=7) == 7


def test_missing_key_names_it() -> None:
    with pytest.raises(ConfigError, match=r"^pop\.max_entries: required key is missing$"):
        _pop().integer("max_entries")


def test_unknown_key_names_it() -> None:
    with pytest.raises(ConfigError, match=r"^pop\.mode: unknown key$"):
        _done_after(_pop(), "name", "port", "rate", "enabled", "address", "rules")


def test_bad_type_names_key_and_value() -> None:
    with pytest.raises(ConfigError, match=r"^pop\.name = 'fra1': expected an integer$"):
        _pop().integer("name")
    with pytest.raises(ConfigError, match=r"^pop\.port = 27015: expected true or false$"):
        _pop().boolean("port")
    with pytest.raises(ConfigError, match=r"^pop\.enabled = True: expected an integer$"):
        _pop().integer("enabled")  # a bool is not an int here


def test_bad_range_names_key_and_value() -> None:
    with pytest.raises(ConfigError, match=r"^pop\.port = 27015: must be <= 1024$"):
        _pop().integer("port", hi=1024)
    with pytest.raises(ConfigError, match=r"^pop\.rate = 2\.5: must be >= 10$"):
        _pop().number("rate", lo=10)
    with pytest.raises(ConfigError, match=r"^pop\.mode = 'strict': must be one of a, b$"):
        _pop().string("mode", choices=("a", "b"))


def test_bad_ip_names_key_and_value() -> None:
    with pytest.raises(ConfigError, match=r"^pop\.name = 'fra1': expected an IPv4 address"):
        _pop().ipv4("name")
    with pytest.raises(ConfigError, match=r"^pop\.name = 'fra1': expected an IPv4 prefix"):
        _pop().ipv4_network("name", "fra1")


def test_nested_tables_name_the_index() -> None:
    rules = _pop().tables("rules")
    assert len(rules) == 2
    assert rules[0].port("port") == 27015
    assert str(rules[0].ipv4("address")) == "198.51.100.10"
    with pytest.raises(ConfigError, match=r"^pop\.rules\[1\]\.port = 70000: must be <= 65535$"):
        rules[1].port("port")
    with pytest.raises(
        ConfigError, match=r"^pop\.rules\[1\]\.address = '198\.51\.100\.300': expected an IPv4"
    ):
        rules[1].ipv4("address")
    # A key nobody reads inside an array element is reported with its index.
    with pytest.raises(ConfigError, match=r"^pop\.rules\[0\]\.address: unknown key$"):
        _done_after(rules[0], "port")


def _done_after(r: Reader, *read: str) -> None:
    fresh = Reader(r.data, r.where)
    for k in read:
        fresh._get(k, None)
    fresh.done()


def test_list_items_name_the_index() -> None:
    r = Reader({"ports": [1, 2, 0]}, "xdp")
    with pytest.raises(ConfigError, match=r"^xdp\.ports\[2\] = 0: expected a port number"):
        r.items("ports", config_schema.port_of)


def test_tables_must_be_an_array() -> None:
    with pytest.raises(ConfigError, match=r"^pop\.name = 'fra1': expected an array of tables"):
        _pop().tables("name")


def test_unknown_top_level_section(tmp_path: Path) -> None:
    p = tmp_path / "b.toml"
    p.write_text("[xdp]\nmodules = []\n\n[pops]\nx = 1\n")
    with pytest.raises(ConfigError, match=r"^pops: unknown key$"):
        config.load(p)


def test_unreadable_and_invalid_toml_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.toml: config file does not exist"):
        config.load(tmp_path / "missing.toml")
    unreadable = tmp_path / "dir.toml"
    unreadable.mkdir()
    with pytest.raises(ConfigError, match=r"dir\.toml: cannot read config"):
        config.load(unreadable)
    bad = tmp_path / "bad.toml"
    bad.write_text("[xdp\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        config.load(bad)


def test_example_config_loads() -> None:
    cfg = config.load(Path(__file__).parents[2] / "etc" / "bifrost.example.toml")
    assert cfg.xdp is not None
    assert cfg.cache is not None
    assert cfg.fou_map is not None


def test_cli_config_named_but_missing_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`-c /typo` must not fall back to the defaults; no -c and no default file does."""
    with pytest.raises(ConfigError, match=r"typo\.toml: config file does not exist"):
        config.load_for_cli(tmp_path / "typo.toml")
    monkeypatch.setattr(config, "DEFAULT_CONFIG", tmp_path / "absent.toml")
    empty = config.load_for_cli(None)
    assert (empty.source, empty.xdp, empty.cache, empty.fou_map) == (None, None, None, None)
    present = tmp_path / "present.toml"
    present.write_text("[fou_map]\nports = [6000]\n")
    monkeypatch.setattr(config, "DEFAULT_CONFIG", present)
    got = config.load_for_cli(None)
    assert got.source == present
    assert got.fou_map is not None and got.fou_map.table.ports == (6000,)


def test_config_sections_are_typed_and_import_no_cycle() -> None:
    """config_schema imports no component; the components import only config_schema."""
    import subprocess
    import sys

    probe = (
        "import sys, bifrost.config_schema as s; "
        "assert not any(m.startswith(('bifrost.xdp', 'bifrost.fou_map', 'bifrost.bifrost_nf', "
        "'bifrost.config')) and m != 'bifrost.config_schema' for m in sys.modules), "
        "sorted(m for m in sys.modules if m.startswith('bifrost'))"
    )
    subprocess.run([sys.executable, "-c", probe], check=True)
    for comp in ("bifrost.xdp.config", "bifrost.fou_map.config", "bifrost.bifrost_nf.config"):
        done = subprocess.run(
            [sys.executable, "-c", f"import sys, {comp}; print('bifrost.config' in sys.modules)"],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        assert done.stdout.strip() == "False", f"{comp} imports bifrost.config"
    hints = config.Config.__annotations__
    assert hints["xdp"] == "XdpConfig | None" and hints["fou_map"] == "FouMapConfig | None"
