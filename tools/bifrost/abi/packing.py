"""Field values <-> struct arguments, for the chardev record codecs (``runtime``) and
the XDP map structs (``spec.Struct``).

Its own module so that ``spec`` (layouts) and ``runtime`` (the codecs' record base,
which derives its layout from ``spec``) both use it without importing each other.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence
from typing import Any


class AbiError(ValueError):
    """A record read from or written to a device does not match the ABI."""


# (name, type, count) of one field: what the packers need of a spec.Field.
FieldSpec = tuple[str, str, int]


def flatten(specs: Iterable[FieldSpec], get: Callable[[str], Any]) -> list[Any]:
    """Python field values -> struct.pack arguments; a value of None packs as zero.

    ipv4 takes str, IPv4Address or 4 bytes; u8 arrays take bytes; other arrays
    are padded with zeros to their count.
    """
    out: list[Any] = []
    for name, ftype, count in specs:
        v = get(name)
        if ftype == "ipv4":
            out.append(b"\0\0\0\0" if v is None else ipaddress.IPv4Address(v).packed)
        elif ftype == "u8" and count > 1:
            out.append(bytes(v or b""))
        elif count > 1:
            seq = list(v or ())
            if len(seq) > count:
                raise AbiError(f"{name}: {len(seq)} values, room for {count}")
            out.extend(seq + [0] * (count - len(seq)))
        else:
            out.append(int(v or 0))
    return out


def unflatten(
    specs: Iterable[FieldSpec], raw: Sequence[Any], ipv4_as_address: bool = True
) -> dict[str, Any]:
    """struct.unpack results -> field values by name (the inverse of ``flatten``)."""
    out: dict[str, Any] = {}
    pos = 0
    for name, ftype, count in specs:
        if ftype == "ipv4":
            out[name] = ipaddress.IPv4Address(raw[pos]) if ipv4_as_address else raw[pos]
            pos += 1
        elif ftype == "u8" and count > 1:
            out[name] = raw[pos]
            pos += 1
        elif count > 1:
            out[name] = tuple(raw[pos : pos + count])
            pos += count
        else:
            out[name] = raw[pos]
            pos += 1
    return out
