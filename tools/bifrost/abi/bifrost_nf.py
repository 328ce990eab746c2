"""GENERATED codec for /dev/bifrost_nf (ABI version 1), from
tools/bifrost/abi/defs/bifrost_nf.py by ``invoke generate``: do not edit."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import ClassVar

from bifrost.abi import common, runtime
from bifrost.abi.common import ANY_IPV4, HEADER_FORMAT
from bifrost.abi.common import HEADER_SIZE as HEADER_SIZE  # the codec's, for its users
from bifrost.abi.runtime import Record

MAGIC = 0x42464E46
ABI_VERSION = 1
PAYLOAD_MAX = 1400
MAX_PACKETS = 16
MAX_SERVICES = 64
QT_INFO = 1
QT_PLAYER = 2
QT_RULES = 3
SVC_F_NO_CHALLENGE = 1
SVC_F_MISS_PASS = 2
EV_STALE = 1
EV_MISSING = 2

COUNTERS: tuple[str, ...] = (
    "bad_writes",
    "queries",
    "info_queries",
    "player_queries",
    "rules_queries",
    "malformed",
    "passed_other",
    "rate_limited",
    "challenges_sent",
    "bad_challenge",
    "answers",
    "answer_packets",
    "answers_no_challenge",
    "stale_answers",
    "miss_drop",
    "miss_pass",
    "events_raised",
    "events_read",
    "bytes_in",
    "bytes_out",
    "unverified_bytes_in",
    "unverified_bytes_out",
    "tx_errors",
    "entries_set",
    "entries_deleted",
    "rotations",
    "martian_src",
    "local_src",
    "no_unicast_route",
)


class InfoReq(common.InfoReq):
    """common.InfoReq of /dev/bifrost_nf."""


class InfoReply(common.InfoReply):
    """common.InfoReply of /dev/bifrost_nf."""


@dataclass
class ServiceSet(Record):
    """Add or update a cached service (address:port) of the opener's netns."""

    TYPE: ClassVar[int] = 3
    FORMAT: ClassVar[str] = "<IHHII4sHH"
    SIZE: ClassVar[int] = 24
    OFFSETS: ClassVar[dict[str, int]] = {"addr": 16, "port": 20, "svc_flags": 22}
    FIELDS: ClassVar[tuple[tuple[str, str, int], ...]] = (
        ("addr", "ipv4", 1),
        ("port", "u16", 1),
        ("svc_flags", "u16", 1),
    )
    addr: ipaddress.IPv4Address = ANY_IPV4
    port: int = 0
    svc_flags: int = 0


@dataclass
class ServiceDel(Record):
    """Delete a service and its cached entries."""

    TYPE: ClassVar[int] = 4
    FORMAT: ClassVar[str] = "<IHHII4sHH"
    SIZE: ClassVar[int] = 24
    OFFSETS: ClassVar[dict[str, int]] = {"addr": 16, "port": 20, "reserved": 22}
    FIELDS: ClassVar[tuple[tuple[str, str, int], ...]] = (
        ("addr", "ipv4", 1),
        ("port", "u16", 1),
        ("reserved", "u16", 1),
    )
    addr: ipaddress.IPv4Address = ANY_IPV4
    port: int = 0
    reserved: int = 0


@dataclass
class EntrySet(Record):
    """One packet of a cached answer. Packets of one answer are written in order, index 0..count-1;
    the answer replaces the old one when the last arrives.
    """

    TYPE: ClassVar[int] = 5
    FORMAT: ClassVar[str] = "<IHHII4sHBBBBHIII1400s"
    SIZE: ClassVar[int] = 1440
    OFFSETS: ClassVar[dict[str, int]] = {
        "addr": 16,
        "port": 20,
        "qtype": 22,
        "index": 23,
        "count": 24,
        "reserved0": 25,
        "length": 26,
        "ttl_ms": 28,
        "max_stale_ms": 32,
        "reserved1": 36,
        "payload": 40,
    }
    FIELDS: ClassVar[tuple[tuple[str, str, int], ...]] = (
        ("addr", "ipv4", 1),
        ("port", "u16", 1),
        ("qtype", "u8", 1),
        ("index", "u8", 1),
        ("count", "u8", 1),
        ("reserved0", "u8", 1),
        ("length", "u16", 1),
        ("ttl_ms", "u32", 1),
        ("max_stale_ms", "u32", 1),
        ("reserved1", "u32", 1),
        ("payload", "u8", 1400),
    )
    addr: ipaddress.IPv4Address = ANY_IPV4
    port: int = 0
    qtype: int = 0
    index: int = 0
    count: int = 0
    reserved0: int = 0
    length: int = 0
    ttl_ms: int = 0
    max_stale_ms: int = 0
    reserved1: int = 0
    payload: bytes = b""


@dataclass
class EntryDel(Record):
    """Delete one cached answer (qtype) or all of a service's answers (qtype 0)."""

    TYPE: ClassVar[int] = 6
    FORMAT: ClassVar[str] = "<IHHII4sHBB"
    SIZE: ClassVar[int] = 24
    OFFSETS: ClassVar[dict[str, int]] = {"addr": 16, "port": 20, "qtype": 22, "reserved": 23}
    FIELDS: ClassVar[tuple[tuple[str, str, int], ...]] = (
        ("addr", "ipv4", 1),
        ("port", "u16", 1),
        ("qtype", "u8", 1),
        ("reserved", "u8", 1),
    )
    addr: ipaddress.IPv4Address = ANY_IPV4
    port: int = 0
    qtype: int = 0
    reserved: int = 0


@dataclass
class Flush(Record):
    """Delete every cached answer of the netns (services stay)."""

    TYPE: ClassVar[int] = 7
    FORMAT: ClassVar[str] = "<IHHII"
    SIZE: ClassVar[int] = 16
    OFFSETS: ClassVar[dict[str, int]] = {}
    FIELDS: ClassVar[tuple[tuple[str, str, int], ...]] = ()


@dataclass
class Rotate(Record):
    """Rotate the challenge secret now (the previous one stays valid)."""

    TYPE: ClassVar[int] = 8
    FORMAT: ClassVar[str] = "<IHHII"
    SIZE: ClassVar[int] = 16
    OFFSETS: ClassVar[dict[str, int]] = {}
    FIELDS: ClassVar[tuple[tuple[str, str, int], ...]] = ()


@dataclass
class ConfigSet(Record):
    """Per-netns settings."""

    TYPE: ClassVar[int] = 9
    FORMAT: ClassVar[str] = "<IHHIIIIII"
    SIZE: ClassVar[int] = 32
    OFFSETS: ClassVar[dict[str, int]] = {
        "rate_pps": 16,
        "rate_burst": 20,
        "rotate_s": 24,
        "reserved": 28,
    }
    FIELDS: ClassVar[tuple[tuple[str, str, int], ...]] = (
        ("rate_pps", "u32", 1),
        ("rate_burst", "u32", 1),
        ("rotate_s", "u32", 1),
        ("reserved", "u32", 1),
    )
    rate_pps: int = 0
    rate_burst: int = 0
    rotate_s: int = 0
    reserved: int = 0


@dataclass
class DumpReq(Record):
    """List services and entries: SERVICE_INFO records, DUMP_END."""

    TYPE: ClassVar[int] = 10
    FORMAT: ClassVar[str] = "<IHHII"
    SIZE: ClassVar[int] = 16
    OFFSETS: ClassVar[dict[str, int]] = {}
    FIELDS: ClassVar[tuple[tuple[str, str, int], ...]] = ()


@dataclass
class ServiceInfo(Record):
    """One service and its cached answers; arrays are indexed by qtype - 1."""

    TYPE: ClassVar[int] = 11
    FORMAT: ClassVar[str] = "<IHHII4sHH3I3I3I3I3II"
    SIZE: ClassVar[int] = 88
    OFFSETS: ClassVar[dict[str, int]] = {
        "addr": 16,
        "port": 20,
        "svc_flags": 22,
        "bytes": 24,
        "packets": 36,
        "ttl_ms": 48,
        "max_stale_ms": 60,
        "age_ms": 72,
        "reserved": 84,
    }
    FIELDS: ClassVar[tuple[tuple[str, str, int], ...]] = (
        ("addr", "ipv4", 1),
        ("port", "u16", 1),
        ("svc_flags", "u16", 1),
        ("bytes", "u32", 3),
        ("packets", "u32", 3),
        ("ttl_ms", "u32", 3),
        ("max_stale_ms", "u32", 3),
        ("age_ms", "u32", 3),
        ("reserved", "u32", 1),
    )
    addr: ipaddress.IPv4Address = ANY_IPV4
    port: int = 0
    svc_flags: int = 0
    bytes: tuple[int, ...] = ()
    packets: tuple[int, ...] = ()
    ttl_ms: tuple[int, ...] = ()
    max_stale_ms: tuple[int, ...] = ()
    age_ms: tuple[int, ...] = ()
    reserved: int = 0


@dataclass
class DumpEnd(Record):
    """Ends a dump."""

    TYPE: ClassVar[int] = 12
    FORMAT: ClassVar[str] = "<IHHIIII"
    SIZE: ClassVar[int] = 24
    OFFSETS: ClassVar[dict[str, int]] = {"n_services": 16, "reserved": 20}
    FIELDS: ClassVar[tuple[tuple[str, str, int], ...]] = (
        ("n_services", "u32", 1),
        ("reserved", "u32", 1),
    )
    n_services: int = 0
    reserved: int = 0


@dataclass
class Event(Record):
    """Refresh request: read() returns these when no reply is queued; poll() says when."""

    TYPE: ClassVar[int] = 13
    FORMAT: ClassVar[str] = "<IHHII4sHBB"
    SIZE: ClassVar[int] = 24
    OFFSETS: ClassVar[dict[str, int]] = {"addr": 16, "port": 20, "qtype": 22, "reason": 23}
    FIELDS: ClassVar[tuple[tuple[str, str, int], ...]] = (
        ("addr", "ipv4", 1),
        ("port", "u16", 1),
        ("qtype", "u8", 1),
        ("reason", "u8", 1),
    )
    addr: ipaddress.IPv4Address = ANY_IPV4
    port: int = 0
    qtype: int = 0
    reason: int = 0


RECORDS: dict[int, type[Record]] = {
    1: InfoReq,
    2: InfoReply,
    3: ServiceSet,
    4: ServiceDel,
    5: EntrySet,
    6: EntryDel,
    7: Flush,
    8: Rotate,
    9: ConfigSet,
    10: DumpReq,
    11: ServiceInfo,
    12: DumpEnd,
    13: Event,
}

# decode(buf): one record of any type, magic, version and length checked;
# decode_all(buf): a read() that returned several whole records back to back.
# Binds this device's magic and version to its record classes.
decode, decode_all = runtime.codec(RECORDS, MAGIC, ABI_VERSION, HEADER_FORMAT)
