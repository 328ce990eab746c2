"""The [auth] section: every bad key value is reported with its key and value."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from bifrost import config
from bifrost.auth_config import AuthConfig, parse_key
from bifrost.config import ConfigError

pytestmark = pytest.mark.unit

K1 = "0123456789abcdef"
K2 = "fedcba9876543210"


def _parse(text: str) -> config.Config:
    return config.parse(tomllib.loads(text))


def test_keys_are_wire_bytes_in_hex_order_first_is_sent() -> None:
    cfg = _parse(f'[auth]\nkeys = ["{K1}", "{K2.upper()}"]\n')
    assert cfg.auth == AuthConfig(
        keys=(bytes.fromhex("0123456789abcdef"), bytes.fromhex("fedcba9876543210"))
    )
    assert cfg.auth.send_key == b"\x01\x23\x45\x67\x89\xab\xcd\xef"


def test_absent_section_means_auth_off() -> None:
    assert _parse("[fou_map]\nports = [5555]\n").auth is None
    assert config.Config(source=None, xdp=None, cache=None, fou_map=None).auth is None


def test_four_keys_is_the_most() -> None:
    keys = [f"{i:016x}" for i in range(1, 5)]
    assert len(_parse(f"[auth]\nkeys = {keys!r}\n".replace("'", '"')).auth.keys) == 4  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (f'["{K1}", "0123456789abcde"]', r"^auth\.keys\[1\] = '0123456789abcde': expected 16 hex"),
        (f'["{K1}", "0123456789abcdef0"]', r"^auth\.keys\[1\] = '0123456789abcdef0': expected 16"),
        ('["0123456789abcdeg"]', r"^auth\.keys\[0\] = '0123456789abcdeg': expected 16 hex"),
        ('["0x23456789abcdef"]', r"^auth\.keys\[0\] = '0x23456789abcdef': expected 16 hex"),
        ('[" 123456789abcdef"]', r"^auth\.keys\[0\] = ' 123456789abcdef': expected 16 hex"),
        ('[""]', r"^auth\.keys\[0\] = '': expected 16 hex digits"),
        ('["0000000000000000"]', r"^auth\.keys\[0\] = '0000000000000000': the all-zero key"),
        (f'["{K1}", 1234]', r"^auth\.keys\[1\] = 1234: expected a string of 16 hex digits$"),
        (f'["{K1}", true]', r"^auth\.keys\[1\] = True: expected a string"),
        (f'["{K1}", ["{K2}"]]', r"^auth\.keys\[1\] = \['fedcba9876543210'\]: expected a string"),
        (
            f'["{K1}", "{K2}", "{K1}"]',
            r"^auth\.keys\[2\] = '0123456789abcdef': the same key as auth\.keys\[0\]$",
        ),
        (
            f'["{K1}", "{K1.upper()}"]',
            r"^auth\.keys\[1\] = '0123456789ABCDEF': the same key as auth\.keys\[0\]$",
        ),
        ("[]", r"^auth\.keys = \[\]: expected 1 to 4 keys$"),
        (
            '["0000000000000001", "0000000000000002", "0000000000000003", "0000000000000004", '
            '"0000000000000005"]',
            r"^auth\.keys = \['0000000000000001', .*'0000000000000005'\]: expected 1 to 4 keys$",
        ),
        (f'"{K1}"', r"^auth\.keys = '0123456789abcdef': expected a list$"),
    ],
)  # fmt: skip
def test_bad_keys_name_the_key_and_value(keys: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _parse(f"[auth]\nkeys = {keys}\n")


def test_missing_keys_and_unknown_keys_are_named() -> None:
    with pytest.raises(ConfigError, match=r"^auth\.keys: required key is missing$"):
        _parse("[auth]\n")
    with pytest.raises(ConfigError, match=r"^auth\.key: unknown key$"):
        _parse(f'[auth]\nkeys = ["{K1}"]\nkey = "{K2}"\n')
    with pytest.raises(ConfigError, match=r"^auth: expected a table, got '0123456789abcdef'$"):
        _parse(f'auth = "{K1}"\n')


def test_parse_key_alone() -> None:
    assert parse_key("FFFFFFFFFFFFFFFF") == b"\xff" * 8
    with pytest.raises(ValueError, match="16 hex digits"):
        parse_key("f" * 15)


def test_auth_in_a_file(tmp_path: Path) -> None:
    p = tmp_path / "b.toml"
    p.write_text(f'[auth]\nkeys = ["{K2}"]\n\n[fou_map]\nports = [5555]\n')
    cfg = config.load(p)
    assert cfg.auth is not None and cfg.auth.keys == (bytes.fromhex(K2),)
    assert cfg.fou_map is not None
