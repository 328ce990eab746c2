"""The TOML reader every config section's schema uses.

Typed access to one table that remembers which keys were read (so a typo is an
error, not ignored); every error names the full key and the offending value.
It imports no schema, so ``bifrost.config`` can import every component's.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
_MISSING: Any = object()


class ConfigError(ValueError):
    """A config key is missing, unknown or has a bad value; the message names it."""


class Reader:
    """Typed access to one TOML table; remembers which keys were read."""

    def __init__(self, data: dict[str, Any], where: str = "") -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{where or '<top>'}: expected a table, got {data!r}")
        self.data = data
        self.where = where
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def has(self, name: str) -> bool:
        return name in self.data

    def _get(self, name: str, default: Any) -> Any:
        self._seen.add(name)
        if name in self.data:
            return self.data[name]
        if default is _MISSING:
            raise ConfigError(f"{self.key(name)}: required key is missing")
        return default

    def fail(self, name: str, value: Any, why: str) -> ConfigError:
        return ConfigError(f"{self.key(name)} = {value!r}: {why}")

    def integer(
        self, name: str, default: Any = _MISSING, lo: int | None = None, hi: int | None = None
    ) -> int:
        v = self._get(name, default)
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(name, v, "expected an integer")
        if lo is not None and v < lo:
            raise self.fail(name, v, f"must be >= {lo}")
        if hi is not None and v > hi:
            raise self.fail(name, v, f"must be <= {hi}")
        return v

    def number(self, name: str, default: Any = _MISSING, lo: float | None = None) -> float:
        v = self._get(name, default)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise self.fail(name, v, "expected a number")
        if lo is not None and v < lo:
            raise self.fail(name, v, f"must be >= {lo}")
        return float(v)

    def boolean(self, name: str, default: Any = _MISSING) -> bool:
        v = self._get(name, default)
        if not isinstance(v, bool):
            raise self.fail(name, v, "expected true or false")
        return v

    def string(self, name: str, default: Any = _MISSING, choices: Iterable[str] = ()) -> str:
        v = self._get(name, default)
        if not isinstance(v, str):
            raise self.fail(name, v, "expected a string")
        allowed = tuple(choices)
        if allowed and v not in allowed:
            raise self.fail(name, v, f"must be one of {', '.join(allowed)}")
        return v

    def port(self, name: str, default: Any = _MISSING) -> int:
        return self.integer(name, default, lo=1, hi=65535)

    def ipv4(self, name: str, default: Any = _MISSING) -> ipaddress.IPv4Address:
        v = self._get(name, default)
        try:
            return ipaddress.IPv4Address(v)
        except (ipaddress.AddressValueError, ValueError, TypeError):
            raise self.fail(name, v, "expected an IPv4 address like 192.0.2.1") from None

    def ipv4_network(self, name: str, value: Any) -> ipaddress.IPv4Network:
        try:
            return ipaddress.IPv4Network(value, strict=False)
        except (ValueError, TypeError):
            raise self.fail(name, value, "expected an IPv4 prefix like 192.0.2.0/24") from None

    def items(self, name: str, convert: Callable[[Any], T], default: Any = _MISSING) -> list[T]:
        """A list whose every element passes ``convert`` (which raises ValueError)."""
        v = self._get(name, default)
        if not isinstance(v, list):
            raise self.fail(name, v, "expected a list")
        out = []
        for i, item in enumerate(v):
            try:
                out.append(convert(item))
            except (ValueError, TypeError) as e:
                raise ConfigError(f"{self.key(name)}[{i}] = {item!r}: {e}") from None
        return out

    def section(self, name: str, optional: bool = False) -> Reader | None:
        v = self._get(name, None if optional else _MISSING)
        if v is None:
            return None
        return Reader(v, self.key(name))

    def tables(self, name: str) -> list[Reader]:
        """An array of tables, [[name]]."""
        v = self._get(name, [])
        if not isinstance(v, list):
            raise self.fail(name, v, "expected an array of tables ([[...]])")
        return [Reader(item, f"{self.key(name)}[{i}]") for i, item in enumerate(v)]

    def done(self) -> None:
        """Reject keys nobody read: a typo must not be silently ignored."""
        unknown = sorted(set(self.data) - self._seen)
        if unknown:
            raise ConfigError(f"{self.key(unknown[0])}: unknown key")


def port_of(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError("expected a port number 1..65535")
    return value


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """The TOML table in path; a missing, unreadable or invalid file is a ConfigError
    naming the file and saying which kind it is (what: "config", "inventory")."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} file does not exist") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read {what}: {e.strerror}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
