"""/dev/bifrost_nf: the POP's A2S cache module's control records."""

from __future__ import annotations

from bifrost.abi.defs import common
from bifrost.abi.spec import Constant, Device, Field, Record

# One cached answer packet: the usual A2S packet limit (split answers use it too).
PAYLOAD_MAX = 1400
# Split answers of big servers: 16 x 1400 bytes is far beyond any real RULES answer.
MAX_PACKETS = 16
# Services per netns; bounds the table the hook scans and the cache's memory.
MAX_SERVICES = 64

SERVICE_SET = Record(
    "service_set",
    3,
    "Add or update a cached service (address:port) of the opener's netns.",
    (
        Field("addr", "ipv4", doc="service address (the clients' destination)"),
        Field("port", "u16", doc="service UDP port, host byte order"),
        Field("svc_flags", "u16", doc="BFNF_SVC_F_* bits"),
    ),
)
SERVICE_DEL = Record(
    "service_del",
    4,
    "Delete a service and its cached entries.",
    (
        Field("addr", "ipv4"),
        Field("port", "u16"),
        Field("reserved", "u16"),
    ),
)
ENTRY_SET = Record(
    "entry_set",
    5,
    "One packet of a cached answer. Packets of one answer are written in order, "
    "index 0..count-1; the answer replaces the old one when the last arrives.",
    (
        Field("addr", "ipv4"),
        Field("port", "u16"),
        Field("qtype", "u8", doc="BFNF_QT_INFO, _PLAYER or _RULES"),
        Field("index", "u8", doc="packet number, 0-based"),
        Field("count", "u8", doc="packets in this answer, 1..MAX_PACKETS"),
        Field("reserved0", "u8"),
        Field("length", "u16", doc="bytes used in payload[], 1..PAYLOAD_MAX"),
        Field("ttl_ms", "u32", doc="fresh for this long after the last packet"),
        Field("max_stale_ms", "u32", doc="then stale (answered + refresh) this long"),
        Field("reserved1", "u32"),
        Field("payload", "u8", PAYLOAD_MAX, doc="the UDP payload sent to clients"),
    ),
)
ENTRY_DEL = Record(
    "entry_del",
    6,
    "Delete one cached answer (qtype) or all of a service's answers (qtype 0).",
    (
        Field("addr", "ipv4"),
        Field("port", "u16"),
        Field("qtype", "u8"),
        Field("reserved", "u8"),
    ),
)
FLUSH = Record("flush", 7, "Delete every cached answer of the netns (services stay).")
ROTATE = Record("rotate", 8, "Rotate the challenge secret now (the previous one stays valid).")
CONFIG_SET = Record(
    "config_set",
    9,
    "Per-netns settings.",
    (
        Field("rate_pps", "u32", doc="queries per second per source; 0 = no limit"),
        Field("rate_burst", "u32", doc="queries a source may send at once"),
        Field("rotate_s", "u32", doc="challenge secret lifetime in seconds (>= 1)"),
        Field("reserved", "u32"),
    ),
)
DUMP_REQ = Record("dump_req", 10, "List services and entries: SERVICE_INFO records, DUMP_END.")
SERVICE_INFO = Record(
    "service_info",
    11,
    "One service and its cached answers; arrays are indexed by qtype - 1.",
    (
        Field("addr", "ipv4"),
        Field("port", "u16"),
        Field("svc_flags", "u16"),
        Field("bytes", "u32", 3, doc="payload bytes of the answer; 0 = none cached"),
        Field("packets", "u32", 3),
        Field("ttl_ms", "u32", 3),
        Field("max_stale_ms", "u32", 3),
        Field("age_ms", "u32", 3, doc="time since the answer was set (capped)"),
        Field("reserved", "u32"),
    ),
)
DUMP_END = Record(
    "dump_end",
    12,
    "Ends a dump.",
    (Field("n_services", "u32"), Field("reserved", "u32")),
)
EVENT = Record(
    "event",
    13,
    "Refresh request: read() returns these when no reply is queued; poll() says when.",
    (
        Field("addr", "ipv4"),
        Field("port", "u16"),
        Field("qtype", "u8"),
        Field("reason", "u8", doc="BFNF_EV_STALE or BFNF_EV_MISSING"),
    ),
)

DEVICE = Device(
    name="bifrost_nf",
    prefix="bfnf",
    magic=0x42464E46,  # "BFNF"
    abi_version=1,
    doc="""
Control device of the bifrost_nf module. open() needs CAP_NET_ADMIN in the user
namespace owning the opener's network namespace (EPERM otherwise) and binds the
file to that netns. write() takes exactly one record; a refused one changes
nothing (an out-of-sequence ENTRY_SET packet keeps the answer being assembled)
and fails with EINVAL (bad magic, type, length, flags, reserved or values:
CONFIG_SET needs 1 <= rotate_s <= 86400, rate_pps <= 10000000, rate_burst <=
1000000 and rate_burst >= 1 when rate_pps is set), EPROTO (other ABI version),
E2BIG (longer than any record), ENOSPC (service table full), ENOENT (no such
service), ENOMEM (a ROTATE or an answer's memory could not be had: no rotation
happened) or ENOBUFS (the file already holds too many unread replies: read them
first). Every refused write counts in bad_writes. Replies are read() back in
order, whole records only (EINVAL when the buffer cannot hold the next one);
when none is queued, read() returns pending refresh EVENT records (one per
service and query type, however often it was asked for), and 0 when there is
nothing. poll() reports POLLIN for either, and wakes for replies queued by
another thread's write().
""",
    records=(
        common.INFO_REQUEST,
        common.INFO_REPLY,
        SERVICE_SET,
        SERVICE_DEL,
        ENTRY_SET,
        ENTRY_DEL,
        FLUSH,
        ROTATE,
        CONFIG_SET,
        DUMP_REQ,
        SERVICE_INFO,
        DUMP_END,
        EVENT,
    ),
    constants=(
        Constant("PAYLOAD_MAX", PAYLOAD_MAX, "bytes of one cached answer packet"),
        Constant("MAX_PACKETS", MAX_PACKETS, "packets of one cached answer"),
        Constant("MAX_SERVICES", MAX_SERVICES, "services per netns"),
        Constant("QT_INFO", 1, "A2S_INFO"),
        Constant("QT_PLAYER", 2, "A2S_PLAYER"),
        Constant("QT_RULES", 3, "A2S_RULES"),
        Constant("SVC_F_NO_CHALLENGE", 1, "answer A2S_INFO without a challenge"),
        Constant("SVC_F_MISS_PASS", 2, "missing/too stale: pass to the game server"),
        Constant("EV_STALE", 1, "answered from a stale entry"),
        Constant("EV_MISSING", 2, "no usable entry"),
    ),
    counters=(
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
        # queries dropped unanswered for their source (before they count as queries)
        "martian_src",
        "local_src",
        "no_unicast_route",
    ),
)
