"""Schema of the [auth] section: the FOU token shared by every POP and game server.

Example::

    [auth]
    keys = ["0123456789abcdef", "fedcba9876543210"]   # 1..4 keys, 16 hex digits each

An authenticated FOU packet carries 8 bytes after the inner IPv4 packet (the
inner tot_len delimits it); the POP's XDP program and fou_map append the SEND
key (the first) and accept any listed key. A key is sent as 8 raw bytes in the
order its hex string gives ("0123456789abcdef" is 01 23 45 67 89 ab cd ef).
Rollover with no packet lost: append the new key on every host, then move it
first on every host, then remove the old one.

The section absent means auth is off (``parse`` is not called; the host
config's ``auth`` is None): FOU packets are then not authenticated. Imported
by ``bifrost.config`` and by the components, it imports only config_schema.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from bifrost.config_schema import ConfigError, Reader

__all__ = ["AUTH_OFF_WARNING", "KEY_BYTES", "MAX_KEYS", "AuthConfig", "parse", "parse_key"]

KEY_BYTES = 8
MAX_KEYS = 4
AUTH_OFF_WARNING = (
    "auth off: FOU packets are not authenticated, a spoofer can relay through this "
    "host and move or validate clients; configure [auth] keys on every POP and game server"
)


@dataclass(frozen=True)
class AuthConfig:
    keys: tuple[bytes, ...]  # 8 bytes each, wire order; keys[0] is sent, all are accepted

    @property
    def send_key(self) -> bytes:
        return self.keys[0]


def parse_key(value: object) -> bytes:
    """One key: 16 hex digits (either case), not all zero -> its 8 wire bytes."""
    if not isinstance(value, str):
        raise ValueError("expected a string of 16 hex digits")
    if len(value) != 2 * KEY_BYTES or not all(c in string.hexdigits for c in value):
        raise ValueError("expected 16 hex digits like 0123456789abcdef")
    key = bytes.fromhex(value)
    if key == bytes(KEY_BYTES):
        raise ValueError("the all-zero key is not allowed")
    return key


def parse(sec: Reader) -> AuthConfig:
    keys = sec.items("keys", parse_key)
    raw = sec.data["keys"]
    if not 1 <= len(keys) <= MAX_KEYS:
        raise sec.fail("keys", raw, f"expected 1 to {MAX_KEYS} keys")
    for i, k in enumerate(keys):
        first = keys.index(k)
        if first != i:
            raise ConfigError(
                f"{sec.key('keys')}[{i}] = {raw[i]!r}: the same key as {sec.key('keys')}[{first}]"
            )
    sec.done()
    return AuthConfig(keys=tuple(keys))
