"""Base class of the generated record codecs."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import fields
from typing import Any, ClassVar, Self


class AbiError(ValueError):
    """A record read from or written to a device does not match the ABI."""


class Record:
    """A fixed-size record; subclasses are generated per device (see codec.py.j2)."""

    TYPE: ClassVar[int]
    FORMAT: ClassVar[str]
    SIZE: ClassVar[int]
    OFFSETS: ClassVar[dict[str, int]]
    # (name, type, count) of the body fields, in order.
    FIELDS: ClassVar[tuple[tuple[str, str, int], ...]]
    MAGIC: ClassVar[int]
    ABI_VERSION: ClassVar[int]
    HEADER_FORMAT: ClassVar[str]

    def pack(self, flags: int = 0) -> bytes:
        values: list[Any] = [self.MAGIC, self.ABI_VERSION, self.TYPE, self.SIZE, flags]
        for name, ftype, count in self.FIELDS:
            v = getattr(self, name)
            if ftype == "ipv4":
                values.append(ipaddress.IPv4Address(v).packed)
            elif ftype == "u8" and count > 1:
                values.append(bytes(v))
            elif count > 1:
                seq = list(v)
                if len(seq) > count:
                    raise AbiError(f"{name}: {len(seq)} values, room for {count}")
                values.extend(seq + [0] * (count - len(seq)))
            else:
                values.append(v)
        return struct.pack(self.FORMAT, *values)

    @classmethod
    def unpack(cls, buf: bytes) -> Self:
        if len(buf) != cls.SIZE:
            raise AbiError(f"{cls.__name__}: {len(buf)} bytes, expected {cls.SIZE}")
        raw = struct.unpack(cls.FORMAT, buf)
        magic, version, rtype, length = raw[:4]
        if magic != cls.MAGIC or version != cls.ABI_VERSION or rtype != cls.TYPE:
            raise AbiError(f"{cls.__name__}: header {magic:#x}/{version}/{rtype} does not match")
        if length != cls.SIZE:
            raise AbiError(f"{cls.__name__}: length field {length}, expected {cls.SIZE}")
        pos = 5
        kwargs: dict[str, Any] = {}
        for name, ftype, count in cls.FIELDS:
            if ftype == "ipv4":
                kwargs[name] = ipaddress.IPv4Address(raw[pos])
                pos += 1
            elif ftype == "u8" and count > 1:
                kwargs[name] = raw[pos]
                pos += 1
            elif count > 1:
                kwargs[name] = tuple(raw[pos : pos + count])
                pos += count
            else:
                kwargs[name] = raw[pos]
                pos += 1
        return cls(**kwargs)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]  # type: ignore[arg-type]
