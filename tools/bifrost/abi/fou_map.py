"""GENERATED codec for /dev/fou_map (ABI version 2), from
tools/bifrost/abi/defs/fou_map.py by ``invoke generate``: do not edit."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import ClassVar

from bifrost.abi import common, runtime
from bifrost.abi.common import ANY_IPV4, HEADER_FORMAT
from bifrost.abi.common import HEADER_SIZE as HEADER_SIZE  # the codec's, for its users
from bifrost.abi.runtime import Record

MAGIC = 0x464F554D
ABI_VERSION = 2
MAX_PORTS = 8
MAX_POPS = 16
MAX_KEYS = 4
KEY_SIZE = 8
MISS_PASS = 0
MISS_DROP = 1
ENTRY_STATIC = 1
FLUSH_STATIC = 1
MAX_ENTRIES_LIMIT = 1048576
MIN_IDLE_TIMEOUT_MS = 100
MAX_IDLE_TIMEOUT_MS = 604800000
DEFAULT_IDLE_TIMEOUT_MS = 300000
DEFAULT_MAX_ENTRIES = 65536

COUNTERS: tuple[str, ...] = (
    "bad_writes",
    "rx_fou",
    "rx_truncated",
    "rx_bad_inner",
    "rx_fragment",
    "learned",
    "moved",
    "refreshed",
    "learn_static",
    "learn_full",
    "learn_nomem",
    "tx_fou",
    "tx_bad",
    "tx_rewritten",
    "tx_same_pop",
    "tx_miss_pass",
    "tx_miss_drop",
    "tx_reroute_failed",
    "expired",
    "evicted",
    "added",
    "deleted",
    "flushed",
    "rx_not_pop",
    "rx_martian",
    "rx_bad_csum",
    "rx_auth",
    "rx_gso",
    "tx_token",
    "tx_token_failed",
    "tx_gso",
)


class InfoReq(common.InfoReq):
    """common.InfoReq of /dev/fou_map."""


class InfoReply(common.InfoReply):
    """common.InfoReply of /dev/fou_map."""


@dataclass
class Config(Record):
    """Set the netns's config (write), or the reply to CONFIG_GET. Entries are kept."""

    TYPE: ClassVar[int] = 3
    FORMAT: ClassVar[str] = "<IHHIIIIII8HII64s16s"
    SIZE: ClassVar[int] = 136
    OFFSETS: ClassVar[dict[str, int]] = {
        "n_ports": 16,
        "idle_timeout_ms": 20,
        "max_entries": 24,
        "miss_policy": 28,
        "ports": 32,
        "n_pops": 48,
        "reserved": 52,
        "pop_addrs": 56,
        "pop_lens": 120,
    }
    FIELDS: ClassVar[tuple[tuple[str, str, int], ...]] = (
        ("n_ports", "u32", 1),
        ("idle_timeout_ms", "u32", 1),
        ("max_entries", "u32", 1),
        ("miss_policy", "u32", 1),
        ("ports", "u16", 8),
        ("n_pops", "u32", 1),
        ("reserved", "u32", 1),
        ("pop_addrs", "u8", 64),
        ("pop_lens", "u8", 16),
    )
    n_ports: int = 0
    idle_timeout_ms: int = 0
    max_entries: int = 0
    miss_policy: int = 0
    ports: tuple[int, ...] = ()
    n_pops: int = 0
    reserved: int = 0
    pop_addrs: bytes = b""
    pop_lens: bytes = b""


@dataclass
class ConfigGet(Record):
    """Ask for the current CONFIG; it is read() back."""

    TYPE: ClassVar[int] = 4
    FORMAT: ClassVar[str] = "<IHHII"
    SIZE: ClassVar[int] = 16
    OFFSETS: ClassVar[dict[str, int]] = {}
    FIELDS: ClassVar[tuple[tuple[str, str, int], ...]] = ()


@dataclass
class StatsReq(Record):
    """Ask for STATS_REPLY (table gauges)."""

    TYPE: ClassVar[int] = 5
    FORMAT: ClassVar[str] = "<IHHII"
    SIZE: ClassVar[int] = 16
    OFFSETS: ClassVar[dict[str, int]] = {}
    FIELDS: ClassVar[tuple[tuple[str, str, int], ...]] = ()


@dataclass
class StatsReply(Record):
    """Table gauges of the opener's netns."""

    TYPE: ClassVar[int] = 6
    FORMAT: ClassVar[str] = "<IHHIIIIIIIIQQ"
    SIZE: ClassVar[int] = 56
    OFFSETS: ClassVar[dict[str, int]] = {
        "entries": 16,
        "static_entries": 20,
        "max_entries": 24,
        "buckets": 28,
        "entry_size": 32,
        "reserved": 36,
        "created_ns": 40,
        "table_bytes": 48,
    }
    FIELDS: ClassVar[tuple[tuple[str, str, int], ...]] = (
        ("entries", "u32", 1),
        ("static_entries", "u32", 1),
        ("max_entries", "u32", 1),
        ("buckets", "u32", 1),
        ("entry_size", "u32", 1),
        ("reserved", "u32", 1),
        ("created_ns", "u64", 1),
        ("table_bytes", "u64", 1),
    )
    entries: int = 0
    static_entries: int = 0
    max_entries: int = 0
    buckets: int = 0
    entry_size: int = 0
    reserved: int = 0
    created_ns: int = 0
    table_bytes: int = 0


@dataclass
class DumpReq(Record):
    """Start a dump: the next read()s return ENTRY records, then one DUMP_END, then 0."""

    TYPE: ClassVar[int] = 7
    FORMAT: ClassVar[str] = "<IHHII"
    SIZE: ClassVar[int] = 16
    OFFSETS: ClassVar[dict[str, int]] = {}
    FIELDS: ClassVar[tuple[tuple[str, str, int], ...]] = ()


@dataclass
class Entry(Record):
    """One table entry (dump output)."""

    TYPE: ClassVar[int] = 8
    FORMAT: ClassVar[str] = "<IHHII4s4sIIQ"
    SIZE: ClassVar[int] = 40
    OFFSETS: ClassVar[dict[str, int]] = {
        "client": 16,
        "pop": 20,
        "age_ms": 24,
        "entry_flags": 28,
        "packets": 32,
    }
    FIELDS: ClassVar[tuple[tuple[str, str, int], ...]] = (
        ("client", "ipv4", 1),
        ("pop", "ipv4", 1),
        ("age_ms", "u32", 1),
        ("entry_flags", "u32", 1),
        ("packets", "u64", 1),
    )
    client: ipaddress.IPv4Address = ANY_IPV4
    pop: ipaddress.IPv4Address = ANY_IPV4
    age_ms: int = 0
    entry_flags: int = 0
    packets: int = 0


@dataclass
class DumpEnd(Record):
    """Ends a dump. A dump returns, once each, every client present from DUMP_REQ until its record
    is read; clients learned after DUMP_REQ may be missing.
    """

    TYPE: ClassVar[int] = 9
    FORMAT: ClassVar[str] = "<IHHIIQ"
    SIZE: ClassVar[int] = 24
    OFFSETS: ClassVar[dict[str, int]] = {"count": 16}
    FIELDS: ClassVar[tuple[tuple[str, str, int], ...]] = (("count", "u64", 1),)
    count: int = 0


@dataclass
class Add(Record):
    """Add or replace an entry: FM_ENTRY_STATIC never expires nor moves; without it the entry is
    learned-like (used to restore snapshots) and may expire.
    """

    TYPE: ClassVar[int] = 10
    FORMAT: ClassVar[str] = "<IHHII4s4sII"
    SIZE: ClassVar[int] = 32
    OFFSETS: ClassVar[dict[str, int]] = {"client": 16, "pop": 20, "entry_flags": 24, "age_ms": 28}
    FIELDS: ClassVar[tuple[tuple[str, str, int], ...]] = (
        ("client", "ipv4", 1),
        ("pop", "ipv4", 1),
        ("entry_flags", "u32", 1),
        ("age_ms", "u32", 1),
    )
    client: ipaddress.IPv4Address = ANY_IPV4
    pop: ipaddress.IPv4Address = ANY_IPV4
    entry_flags: int = 0
    age_ms: int = 0


@dataclass
class Del(Record):
    """Delete the client's entry (ENOENT when there is none)."""

    TYPE: ClassVar[int] = 11
    FORMAT: ClassVar[str] = "<IHHII4sI"
    SIZE: ClassVar[int] = 24
    OFFSETS: ClassVar[dict[str, int]] = {"client": 16, "reserved": 20}
    FIELDS: ClassVar[tuple[tuple[str, str, int], ...]] = (
        ("client", "ipv4", 1),
        ("reserved", "u32", 1),
    )
    client: ipaddress.IPv4Address = ANY_IPV4
    reserved: int = 0


@dataclass
class Flush(Record):
    """Delete every learned entry; with FM_FLUSH_STATIC static ones too."""

    TYPE: ClassVar[int] = 12
    FORMAT: ClassVar[str] = "<IHHIIII"
    SIZE: ClassVar[int] = 24
    OFFSETS: ClassVar[dict[str, int]] = {"scope": 16, "reserved": 20}
    FIELDS: ClassVar[tuple[tuple[str, str, int], ...]] = (
        ("scope", "u32", 1),
        ("reserved", "u32", 1),
    )
    scope: int = 0
    reserved: int = 0


@dataclass
class Auth(Record):
    """Set the netns's FOU authentication keys (write, swapped whole), or the reply to AUTH_GET.
    keys[0] is appended to every FOU packet sent; each of the n_keys is accepted. n_keys 0: auth
    off (nothing appended, no token required).
    """

    TYPE: ClassVar[int] = 13
    FORMAT: ClassVar[str] = "<IHHIIII32s"
    SIZE: ClassVar[int] = 56
    OFFSETS: ClassVar[dict[str, int]] = {"n_keys": 16, "reserved": 20, "keys": 24}
    FIELDS: ClassVar[tuple[tuple[str, str, int], ...]] = (
        ("n_keys", "u32", 1),
        ("reserved", "u32", 1),
        ("keys", "u8", 32),
    )
    n_keys: int = 0
    reserved: int = 0
    keys: bytes = b""


@dataclass
class AuthGet(Record):
    """Ask for the current AUTH; it is read() back."""

    TYPE: ClassVar[int] = 14
    FORMAT: ClassVar[str] = "<IHHII"
    SIZE: ClassVar[int] = 16
    OFFSETS: ClassVar[dict[str, int]] = {}
    FIELDS: ClassVar[tuple[tuple[str, str, int], ...]] = ()


RECORDS: dict[int, type[Record]] = {
    1: InfoReq,
    2: InfoReply,
    3: Config,
    4: ConfigGet,
    5: StatsReq,
    6: StatsReply,
    7: DumpReq,
    8: Entry,
    9: DumpEnd,
    10: Add,
    11: Del,
    12: Flush,
    13: Auth,
    14: AuthGet,
}

# decode(buf): one record of any type, magic, version and length checked;
# decode_all(buf): a read() that returned several whole records back to back.
# Binds this device's magic and version to its record classes.
decode, decode_all = runtime.codec(RECORDS, MAGIC, ABI_VERSION, HEADER_FORMAT)
