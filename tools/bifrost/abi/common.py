"""GENERATED: what every Bifrost device's codec shares, from tools/bifrost/abi/defs/common.py
and spec.HEADER_FIELDS by ``invoke generate``: do not edit.

Every record is a fixed-size little-endian struct that starts with the header
(magic, version, type, length, flags). The records here (INFO) are unbound: each
device's codec (bifrost.abi.bifrost_nf, bifrost.abi.fou_map) subclasses them and
binds its magic and ABI version to its subclasses.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import ClassVar

from bifrost.abi.runtime import Record

HEADER_FORMAT = "<IHHII"
HEADER_SIZE = struct.calcsize(HEADER_FORMAT)
# Default of IPv4 fields: one immutable instance shared by every record.
ANY_IPV4 = ipaddress.IPv4Address("0.0.0.0")


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
