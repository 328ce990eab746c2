"""The base of the generated record codecs: layout derived from the definitions, packing,
and a device's decoders."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Self, dataclass_transform

from bifrost.abi.packing import AbiError as AbiError  # the codecs' error, for their users
from bifrost.abi.packing import FieldSpec, flatten, unflatten
from bifrost.abi.spec import HEADER_FIELDS, Device, wire, wire_format
from bifrost.abi.spec import Record as RecordDef

# Every record's header (spec.HEADER_FIELDS), the same on every device.
HEADER_FORMAT = wire_format(HEADER_FIELDS)
HEADER_SIZE = struct.calcsize(HEADER_FORMAT)


@dataclass_transform()
class Record:
    """A fixed-size record; subclasses are generated per device (see codec.py.j2).

    A generated class is ``class X(Record, spec=defs.X)`` with its typed fields:
    every subclass is a dataclass, and its layout below is derived from its
    definition (``spec.wire``), once, when the class is made. A device's subclass
    of a common record inherits the common record's.
    """

    SPEC: ClassVar[RecordDef]
    TYPE: ClassVar[int]
    FORMAT: ClassVar[str]
    SIZE: ClassVar[int]
    # Offsets of the body fields from the start of the record.
    OFFSETS: ClassVar[dict[str, int]]
    # (name, type, count) of the body fields, in order.
    FIELDS: ClassVar[tuple[FieldSpec, ...]]
    # Bound per device by ``codec``.
    MAGIC: ClassVar[int]
    ABI_VERSION: ClassVar[int]

    def __init_subclass__(cls, spec: RecordDef | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        dataclass(cls)
        if spec is None:
            if not hasattr(cls, "SPEC"):
                raise TypeError(f"{cls.__name__}: a record class needs spec=<its definition>")
            return
        lay = wire(spec)
        cls.SPEC, cls.TYPE = spec, spec.type_id
        cls.FORMAT, cls.SIZE, cls.OFFSETS, cls.FIELDS = (
            lay.format,
            lay.size,
            lay.offsets,
            lay.fields,
        )
        # pack() reads the typed fields by name: they must be the definition's.
        typed = cls.field_names()
        if typed != [name for name, _t, _n in lay.fields]:
            raise AbiError(f"{cls.__name__}: fields {typed} are not {spec.name}'s {lay.fields}")

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


def decode(buf: bytes, records: dict[int, type[Record]], magic: int, version: int) -> Record:
    """Decode one record of a device's `records`, checking magic, version and length."""
    if len(buf) < HEADER_SIZE:
        raise AbiError(f"record of {len(buf)} bytes is shorter than the header")
    got_magic, got_version, rtype, length, _flags = struct.unpack_from(HEADER_FORMAT, buf)
    if got_magic != magic or got_version != version:
        raise AbiError(f"bad magic/version {got_magic:#x}/{got_version}")
    cls = records.get(rtype)
    if cls is None:
        raise AbiError(f"unknown record type {rtype}")
    return cls.unpack(buf[:length])


def split(buf: bytes, decode_one: Callable[[bytes], Record]) -> list[Record]:
    """Decode a read() that returned several whole records back to back."""
    out = []
    while buf:
        if len(buf) < HEADER_SIZE:
            raise AbiError(f"{len(buf)} trailing bytes")
        length = struct.unpack_from(HEADER_FORMAT, buf)[3]
        if length < HEADER_SIZE or length > len(buf):
            raise AbiError(f"bad record length {length}")
        out.append(decode_one(buf[:length]))
        buf = buf[length:]
    return out


def codec(
    device: Device, records: dict[int, type[Record]]
) -> tuple[Callable[[bytes], Record], Callable[[bytes], list[Record]]]:
    """A device's decode (one record of any type, magic, version and length checked) and
    decode_all (a read() that returned several whole records back to back); binds the
    device's magic and version to its record classes, which must be its records."""
    if [cls.SPEC for cls in records.values()] != list(device.records) or any(
        rtype != cls.TYPE for rtype, cls in records.items()
    ):
        raise AbiError(f"{device.name}: the codec's records are not the device's")
    for cls in records.values():
        cls.MAGIC, cls.ABI_VERSION = device.magic, device.abi_version
    magic, version = device.magic, device.abi_version

    def decode_one(buf: bytes) -> Record:
        return decode(buf, records, magic, version)

    def decode_many(buf: bytes) -> list[Record]:
        return split(buf, decode_one)

    return decode_one, decode_many
