"""GENERATED codec for /dev/bifrost_nf (ABI version 1), from
tools/bifrost/abi/defs/bifrost_nf.py by ``invoke generate``: do not edit.

Each class names its definition (spec=); runtime.Record derives its layout from it."""

from __future__ import annotations

import ipaddress

from bifrost.abi import common, runtime
from bifrost.abi.common import ANY_IPV4
from bifrost.abi.defs import bifrost_nf as defs
from bifrost.abi.runtime import HEADER_SIZE as HEADER_SIZE  # the codec's, for its users
from bifrost.abi.runtime import Record

MAGIC = defs.DEVICE.magic
ABI_VERSION = defs.DEVICE.abi_version
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

# Counter names in the module's enum order: InfoReply.counters[i] is COUNTERS[i].
COUNTERS = defs.DEVICE.counters


class InfoReq(common.InfoReq):
    """common.InfoReq of /dev/bifrost_nf."""


class InfoReply(common.InfoReply):
    """common.InfoReply of /dev/bifrost_nf."""


class ServiceSet(Record, spec=defs.SERVICE_SET):
    """Add or update a cached service (address:port) of the opener's netns."""

    addr: ipaddress.IPv4Address = ANY_IPV4
    port: int = 0
    svc_flags: int = 0


class ServiceDel(Record, spec=defs.SERVICE_DEL):
    """Delete a service and its cached entries."""

    addr: ipaddress.IPv4Address = ANY_IPV4
    port: int = 0
    reserved: int = 0


class EntrySet(Record, spec=defs.ENTRY_SET):
    """One packet of a cached answer. Packets of one answer are written in order, index 0..count-1;
    the answer replaces the old one when the last arrives.
    """

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


class EntryDel(Record, spec=defs.ENTRY_DEL):
    """Delete one cached answer (qtype) or all of a service's answers (qtype 0)."""

    addr: ipaddress.IPv4Address = ANY_IPV4
    port: int = 0
    qtype: int = 0
    reserved: int = 0


class Flush(Record, spec=defs.FLUSH):
    """Delete every cached answer of the netns (services stay)."""


class Rotate(Record, spec=defs.ROTATE):
    """Rotate the challenge secret now (the previous one stays valid)."""


class ConfigSet(Record, spec=defs.CONFIG_SET):
    """Per-netns settings."""

    rate_pps: int = 0
    rate_burst: int = 0
    rotate_s: int = 0
    reserved: int = 0


class DumpReq(Record, spec=defs.DUMP_REQ):
    """List services and entries: SERVICE_INFO records, DUMP_END."""


class ServiceInfo(Record, spec=defs.SERVICE_INFO):
    """One service and its cached answers; arrays are indexed by qtype - 1."""

    addr: ipaddress.IPv4Address = ANY_IPV4
    port: int = 0
    svc_flags: int = 0
    bytes: tuple[int, ...] = ()
    packets: tuple[int, ...] = ()
    ttl_ms: tuple[int, ...] = ()
    max_stale_ms: tuple[int, ...] = ()
    age_ms: tuple[int, ...] = ()
    reserved: int = 0


class DumpEnd(Record, spec=defs.DUMP_END):
    """Ends a dump."""

    n_services: int = 0
    reserved: int = 0


class Event(Record, spec=defs.EVENT):
    """Refresh request: read() returns these when no reply is queued; poll() says when."""

    addr: ipaddress.IPv4Address = ANY_IPV4
    port: int = 0
    qtype: int = 0
    reason: int = 0


RECORDS: dict[int, type[Record]] = {
    cls.TYPE: cls
    for cls in (
        InfoReq,
        InfoReply,
        ServiceSet,
        ServiceDel,
        EntrySet,
        EntryDel,
        Flush,
        Rotate,
        ConfigSet,
        DumpReq,
        ServiceInfo,
        DumpEnd,
        Event,
    )
}

# decode(buf): one record of any type, magic, version and length checked;
# decode_all(buf): a read() that returned several whole records back to back.
# Binds this device's magic and version to its record classes.
decode, decode_all = runtime.codec(defs.DEVICE, RECORDS)
