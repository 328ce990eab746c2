"""Types that describe a chardev ABI: devices, records, fields, constants.

A device's definition (see ``defs/``) is the single source of truth for its
records. ``bifrost.codegen`` renders it into the C uapi header the module
includes and into the Python codec the daemons use. The codec's classes carry
only their typed fields and name their definition; ``runtime.Record`` derives
their wire layout from it here (``wire``), with the same ``field_layout`` that
checks the header's. ``tests/unit`` compiles the header and compares every size
and offset with the derived layout.

The XDP program's map keys and values (``bifrost.xdp.maps_def``) are
``Struct``s made of the same fields under the same padding rules; the same
Jinja environment renders them (``bifrost.codegen``).

Rules (from Documentation/driver-api/ioctl.rst): fixed-size little-endian
records, ``__u8``..``__u64`` (and ``__be32`` for IPv4 addresses) only, no
pointers, no implicit padding: a layout that would need padding is an error
here, so reserved fields are always explicit.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bifrost.abi.packing import FieldSpec, flatten, unflatten

# name -> (C type, struct format char, size); "ipv4" is an IPv4 address in
# network byte order, the way the kernel keeps it in iphdr.
SCALARS: dict[str, tuple[str, str, int]] = {
    "u8": ("__u8", "B", 1),
    "u16": ("__u16", "H", 2),
    "u32": ("__u32", "I", 4),
    "u64": ("__u64", "Q", 8),
    "ipv4": ("__be32", "4s", 4),
}


class SpecError(ValueError):
    """An ABI definition breaks the layout rules."""


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    count: int = 1
    doc: str = ""

    @property
    def size(self) -> int:
        return SCALARS[self.type][2] * self.count

    @property
    def align(self) -> int:
        return SCALARS[self.type][2]

    @property
    def is_bytes(self) -> bool:
        """u8 arrays travel as Python bytes (names, payloads)."""
        return self.type == "u8" and self.count > 1


@dataclass(frozen=True)
class Record:
    """One message type. Every record starts with HEADER_FIELDS (struct bifrost_hdr)."""

    name: str
    type_id: int
    doc: str
    fields: tuple[Field, ...] = ()


@dataclass(frozen=True)
class Constant:
    name: str
    value: int
    doc: str = ""


@dataclass(frozen=True)
class Device:
    name: str  # module and device node name, e.g. "fou_map"
    prefix: str  # C identifier prefix, e.g. "fm"
    magic: int
    abi_version: int
    doc: str
    records: tuple[Record, ...]
    constants: tuple[Constant, ...] = ()
    # Counter names, in order: the C enum and the Python names come from here.
    counters: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        ids = [r.type_id for r in self.records]
        if len(set(ids)) != len(ids):
            raise SpecError(f"{self.name}: duplicate record type ids {ids}")
        for rec in self.records:
            layout(self, rec)


# Every record starts with this: magic and version catch a wrong or stale
# reader/writer, type selects the record, length must equal the record's size.
HEADER_FIELDS: tuple[Field, ...] = (
    Field("magic", "u32", doc="the device's magic number"),
    Field("version", "u16", doc="ABI version the writer was built for"),
    Field("type", "u16", doc="record type"),
    Field("length", "u32", doc="size of the whole record in bytes"),
    Field("flags", "u32", doc="per-record flags; 0 unless the record says otherwise"),
)


def field_format(f: Field) -> str:
    """The struct-module format of one field (byte order is the caller's)."""
    if f.type == "ipv4":
        return "4s" * f.count
    if f.is_bytes:
        return f"{f.count}s"
    ch = SCALARS[f.type][1]
    return ch if f.count == 1 else f"{f.count}{ch}"


def field_layout(where: str, fields: Sequence[Field], multiple: int = 1) -> list[tuple[Field, int]]:
    """Offsets of fields laid out in order, as a C compiler would; raise on any padding.

    The size must be a multiple of the largest alignment (no tail padding) and
    of ``multiple`` (8 for chardev records, so records can be read back to back).
    """
    out: list[tuple[Field, int]] = []
    off = 0
    align = 1
    for f in fields:
        if f.type not in SCALARS:
            raise SpecError(f"{where}.{f.name}: unknown type {f.type!r}")
        if f.count < 1:
            raise SpecError(f"{where}.{f.name}: count must be >= 1")
        if off % f.align:
            raise SpecError(
                f"{where}.{f.name}: at offset {off}, needs {f.align}-byte "
                "alignment; add an explicit reserved field"
            )
        out.append((f, off))
        off += f.size
        align = max(align, f.align)
    need = max(align, multiple)
    if off % need:
        raise SpecError(
            f"{where}: size {off} is not a multiple of {need} (tail padding); "
            "add an explicit reserved field"
        )
    return out


def record_layout(rec: Record, where: str = "") -> list[tuple[Field, int]]:
    """Field offsets of a record, HEADER_FIELDS first (every device's records start with
    them: one struct bifrost_hdr); raise on implicit padding."""
    return field_layout(f"{where}{rec.name}", (*HEADER_FIELDS, *rec.fields), multiple=8)


def layout(dev: Device, rec: Record) -> list[tuple[Field, int]]:
    """Field offsets of one of a device's records (header included)."""
    return record_layout(rec, f"{dev.name}.")


def record_size(dev: Device, rec: Record) -> int:
    return wire(rec).size


def wire_format(fields: Sequence[Field], order: str = "<") -> str:
    """The struct format of fields laid out in order; chardev records are little-endian."""
    return order + "".join(field_format(f) for f in fields)


def field_specs(fields: Sequence[Field]) -> tuple[FieldSpec, ...]:
    """What the packers (``packing.flatten``/``unflatten``) need of each field, in order."""
    return tuple((f.name, f.type, f.count) for f in fields)


@dataclass(frozen=True, eq=False)
class Wire:
    """A record as its codec packs it (``runtime.Record``), derived by ``wire``."""

    format: str  # struct format of the whole record, header first
    size: int
    offsets: dict[str, int]  # of the body fields, from the start of the record
    fields: tuple[FieldSpec, ...]  # (name, type, count) of the body fields, in order


def wire(rec: Record) -> Wire:
    """A record's wire layout from its definition: what its codec class packs with."""
    lay = record_layout(rec)
    last, end = lay[-1]
    return Wire(
        format=wire_format([f for f, _ in lay]),
        size=end + last.size,
        offsets={f.name: off for f, off in lay[len(HEADER_FIELDS) :]},
        fields=field_specs(rec.fields),
    )


@dataclass(frozen=True)
class Struct:
    """A C struct shared with a BPF program (a map key or value), in host byte order.

    Same types and padding rules as records, without the chardev header. Python
    values travel as dicts: ``pack(**values)`` and ``unpack(data)``; IPv4 fields
    unpack to their 4 bytes as they lie in the map (network order).
    """

    name: str
    doc: str
    fields: tuple[Field, ...]

    def layout(self) -> list[tuple[Field, int]]:
        return field_layout(self.name, self.fields)

    @property
    def size(self) -> int:
        f, off = self.layout()[-1]
        return off + f.size

    @property
    def format(self) -> str:
        return wire_format(self.fields, "=")

    @property
    def specs(self) -> tuple[FieldSpec, ...]:
        return field_specs(self.fields)

    def offsets(self) -> dict[str, int]:
        return {f.name: off for f, off in self.layout()}

    def pack(self, **values: Any) -> bytes:
        """Pack by field name; missing fields are zero, ipv4 takes str/IPv4Address/bytes."""
        unknown = set(values) - {f.name for f in self.fields}
        if unknown:
            raise KeyError(f"{self.name}: no field {sorted(unknown)[0]}")
        return struct.pack(self.format, *flatten(self.specs, values.get))

    def unpack(self, data: bytes) -> dict[str, Any]:
        raw = struct.unpack(self.format, data[: self.size])
        return unflatten(self.specs, raw, ipv4_as_address=False)
