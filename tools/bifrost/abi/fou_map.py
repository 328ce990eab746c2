"""GENERATED codec for /dev/fou_map (ABI version 1).

Rendered by ``invoke generate`` from tools/bifrost/abi/defs/fou_map.py;
do not edit. Every record is a fixed-size little-endian struct that starts
with the header (magic, version, type, length, flags).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import ClassVar

from bifrost.abi.runtime import AbiError, Record

MAGIC = 0x464F554D
ABI_VERSION = 1
HEADER_FORMAT = "<IHHII"
HEADER_SIZE = struct.calcsize(HEADER_FORMAT)

COUNTERS: tuple[str, ...] = ("bad_writes",)


@dataclass
class InfoReq(Record):
    """Ask for INFO; the reply is read() back."""

    TYPE: ClassVar[int] = 1
    FORMAT: ClassVar[str] = "<IHHII"
    SIZE: ClassVar[int] = 16
    OFFSETS: ClassVar[dict[str, int]] = {}
    FIELDS: ClassVar[tuple[tuple[str, str, int], ...]] = ()


@dataclass
class InfoReply(Record):
    """ABI and module version, the opener's netns and every counter of that netns."""

    TYPE: ClassVar[int] = 2
    FORMAT: ClassVar[str] = "<IHHIIIIII32s64Q"
    SIZE: ClassVar[int] = 576
    OFFSETS: ClassVar[dict[str, int]] = {
        "abi_version": 16,
        "n_counters": 20,
        "netns_inum": 24,
        "reserved": 28,
        "module_version": 32,
        "counters": 64,
    }
    FIELDS: ClassVar[tuple[tuple[str, str, int], ...]] = (
        ("abi_version", "u32", 1),
        ("n_counters", "u32", 1),
        ("netns_inum", "u32", 1),
        ("reserved", "u32", 1),
        ("module_version", "u8", 32),
        ("counters", "u64", 64),
    )
    abi_version: int = 0
    n_counters: int = 0
    netns_inum: int = 0
    reserved: int = 0
    module_version: bytes = b""
    counters: tuple[int, ...] = ()


RECORDS: dict[int, type[Record]] = {
    1: InfoReq,
    2: InfoReply,
}


def decode(buf: bytes) -> Record:
    """Decode one record of any type, checking magic, version and length."""
    if len(buf) < HEADER_SIZE:
        raise AbiError(f"record of {len(buf)} bytes is shorter than the header")
    magic, version, rtype, length, _flags = struct.unpack_from(HEADER_FORMAT, buf)
    if magic != MAGIC or version != ABI_VERSION:
        raise AbiError(f"bad magic/version {magic:#x}/{version}")
    cls = RECORDS.get(rtype)
    if cls is None:
        raise AbiError(f"unknown record type {rtype}")
    return cls.unpack(buf[:length])


def decode_all(buf: bytes) -> list[Record]:
    """Decode a read() that returned several whole records back to back."""
    out = []
    while buf:
        if len(buf) < HEADER_SIZE:
            raise AbiError(f"{len(buf)} trailing bytes")
        length = struct.unpack_from(HEADER_FORMAT, buf)[3]
        if length < HEADER_SIZE or length > len(buf):
            raise AbiError(f"bad record length {length}")
        out.append(decode(buf[:length]))
        buf = buf[length:]
    return out


# The codec needs to know its device; bind it once here.
for _cls in RECORDS.values():
    _cls.MAGIC = MAGIC
    _cls.ABI_VERSION = ABI_VERSION
    _cls.HEADER_FORMAT = HEADER_FORMAT
_ = ipaddress  # used by records with IPv4 fields
