"""GENERATED codec for /dev/fou_map (ABI version 2), from
tools/bifrost/abi/defs/fou_map.py by ``invoke generate``: do not edit.

Each class names its definition (spec=); runtime.Record derives its layout from it."""

from __future__ import annotations

import ipaddress

from bifrost.abi import common, runtime
from bifrost.abi.common import ANY_IPV4
from bifrost.abi.defs import fou_map as defs
from bifrost.abi.runtime import HEADER_SIZE as HEADER_SIZE  # the codec's, for its users
from bifrost.abi.runtime import Record

MAGIC = defs.DEVICE.magic
ABI_VERSION = defs.DEVICE.abi_version
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

# Counter names in the module's enum order: InfoReply.counters[i] is COUNTERS[i].
COUNTERS = defs.DEVICE.counters


class InfoReq(common.InfoReq):
    """common.InfoReq of /dev/fou_map."""


class InfoReply(common.InfoReply):
    """common.InfoReply of /dev/fou_map."""


class Config(Record, spec=defs.CONFIG):
    """Set the netns's config (write), or the reply to CONFIG_GET. Entries are kept."""

    n_ports: int = 0
    idle_timeout_ms: int = 0
    max_entries: int = 0
    miss_policy: int = 0
    ports: tuple[int, ...] = ()
    n_pops: int = 0
    reserved: int = 0
    pop_addrs: bytes = b""
    pop_lens: bytes = b""


class ConfigGet(Record, spec=defs.CONFIG_GET):
    """Ask for the current CONFIG; it is read() back."""


class StatsReq(Record, spec=defs.STATS_REQ):
    """Ask for STATS_REPLY (table gauges)."""


class StatsReply(Record, spec=defs.STATS_REPLY):
    """Table gauges of the opener's netns."""

    entries: int = 0
    static_entries: int = 0
    max_entries: int = 0
    buckets: int = 0
    entry_size: int = 0
    reserved: int = 0
    created_ns: int = 0
    table_bytes: int = 0


class DumpReq(Record, spec=defs.DUMP_REQ):
    """Start a dump: the next read()s return ENTRY records, then one DUMP_END, then 0."""


class Entry(Record, spec=defs.ENTRY):
    """One table entry (dump output)."""

    client: ipaddress.IPv4Address = ANY_IPV4
    pop: ipaddress.IPv4Address = ANY_IPV4
    age_ms: int = 0
    entry_flags: int = 0
    packets: int = 0


class DumpEnd(Record, spec=defs.DUMP_END):
    """Ends a dump. A dump returns, once each, every client present from DUMP_REQ until its record
    is read; clients learned after DUMP_REQ may be missing.
    """

    count: int = 0


class Add(Record, spec=defs.ADD):
    """Add or replace an entry: FM_ENTRY_STATIC never expires nor moves; without it the entry is
    learned-like (used to restore snapshots) and may expire.
    """

    client: ipaddress.IPv4Address = ANY_IPV4
    pop: ipaddress.IPv4Address = ANY_IPV4
    entry_flags: int = 0
    age_ms: int = 0


class Del(Record, spec=defs.DEL):
    """Delete the client's entry (ENOENT when there is none)."""

    client: ipaddress.IPv4Address = ANY_IPV4
    reserved: int = 0


class Flush(Record, spec=defs.FLUSH):
    """Delete every learned entry; with FM_FLUSH_STATIC static ones too."""

    scope: int = 0
    reserved: int = 0


class Auth(Record, spec=defs.AUTH):
    """Set the netns's FOU authentication keys (write, swapped whole), or the reply to AUTH_GET.
    keys[0] is appended to every FOU packet sent; each of the n_keys is accepted. n_keys 0: auth
    off (nothing appended, no token required).
    """

    n_keys: int = 0
    reserved: int = 0
    keys: bytes = b""


class AuthGet(Record, spec=defs.AUTH_GET):
    """Ask for the current AUTH; it is read() back."""


RECORDS: dict[int, type[Record]] = {
    cls.TYPE: cls
    for cls in (
        InfoReq,
        InfoReply,
        Config,
        ConfigGet,
        StatsReq,
        StatsReply,
        DumpReq,
        Entry,
        DumpEnd,
        Add,
        Del,
        Flush,
        Auth,
        AuthGet,
    )
}

# decode(buf): one record of any type, magic, version and length checked;
# decode_all(buf): a read() that returned several whole records back to back.
# Binds this device's magic and version to its record classes.
decode, decode_all = runtime.codec(defs.DEVICE, RECORDS)
