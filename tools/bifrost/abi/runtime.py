"""Packing shared by the generated record codecs and the XDP map structs."""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields
from typing import Any, ClassVar, Self


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


class Record:
    """A fixed-size record; subclasses are generated per device (see codec.py.j2)."""

    TYPE: ClassVar[int]
    FORMAT: ClassVar[str]
    SIZE: ClassVar[int]
    OFFSETS: ClassVar[dict[str, int]]
    # (name, type, count) of the body fields, in order.
    FIELDS: ClassVar[tuple[FieldSpec, ...]]
    MAGIC: ClassVar[int]
    ABI_VERSION: ClassVar[int]
    HEADER_FORMAT: ClassVar[str]

    def pack(self, flags: int = 0) -> bytes:
        header = [self.MAGIC, self.ABI_VERSION, self.TYPE, self.SIZE, flags]
        body = flatten(self.FIELDS, lambda name: getattr(self, name))
        return struct.pack(self.FORMAT, *header, *body)

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
        return cls(**unflatten(cls.FIELDS, raw[5:]))

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]  # type: ignore[arg-type]


def decode(
    buf: bytes, records: dict[int, type[Record]], magic: int, version: int, header_format: str
) -> Record:
    """Decode one record of a device's `records`, checking magic, version and length."""
    header_size = struct.calcsize(header_format)
    if len(buf) < header_size:
        raise AbiError(f"record of {len(buf)} bytes is shorter than the header")
    got_magic, got_version, rtype, length, _flags = struct.unpack_from(header_format, buf)
    if got_magic != magic or got_version != version:
        raise AbiError(f"bad magic/version {got_magic:#x}/{got_version}")
    cls = records.get(rtype)
    if cls is None:
        raise AbiError(f"unknown record type {rtype}")
    return cls.unpack(buf[:length])


def split(buf: bytes, header_format: str, decode_one: Callable[[bytes], Record]) -> list[Record]:
    """Decode a read() that returned several whole records back to back."""
    header_size = struct.calcsize(header_format)
    out = []
    while buf:
        if len(buf) < header_size:
            raise AbiError(f"{len(buf)} trailing bytes")
        length = struct.unpack_from(header_format, buf)[3]
        if length < header_size or length > len(buf):
            raise AbiError(f"bad record length {length}")
        out.append(decode_one(buf[:length]))
        buf = buf[length:]
    return out


def codec(
    records: dict[int, type[Record]], magic: int, version: int, header_format: str
) -> tuple[Callable[[bytes], Record], Callable[[bytes], list[Record]]]:
    """A device's decode (one record of any type, magic, version and length checked) and
    decode_all (a read() that returned several whole records back to back); binds the
    device's magic, version and header to its record classes."""
    for cls in records.values():
        cls.MAGIC, cls.ABI_VERSION, cls.HEADER_FORMAT = magic, version, header_format

    def decode_one(buf: bytes) -> Record:
        return decode(buf, records, magic, version, header_format)

    def decode_many(buf: bytes) -> list[Record]:
        return split(buf, header_format, decode_one)

    return decode_one, decode_many
