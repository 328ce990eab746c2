"""/dev/fou_map: the game-server FOU driver's control records."""

from __future__ import annotations

from bifrost.abi.defs import common
from bifrost.abi.spec import Constant, Device, Field, Record

MAX_PORTS = 8
MAX_POPS = 16
MAX_KEYS = 4
KEY_SIZE = 8

CONFIG = Record(
    "config",
    3,
    "Set the netns's config (write), or the reply to CONFIG_GET. Entries are kept.",
    (
        Field("n_ports", "u32", doc="how many entries of ports[] are used (0..8)"),
        Field("idle_timeout_ms", "u32", doc="a learned entry expires after this idle time"),
        Field("max_entries", "u32", doc="table size bound (1..MAX_ENTRIES_LIMIT)"),
        Field("miss_policy", "u32", doc="FM_MISS_PASS or FM_MISS_DROP"),
        Field("ports", "u16", MAX_PORTS, doc="FOU UDP ports, host byte order"),
        Field("n_pops", "u32", doc="how many entries of pop_addrs[]/pop_lens[] are used (0..16)"),
        Field("reserved", "u32"),
        Field(
            "pop_addrs",
            "u8",
            MAX_POPS * 4,
            doc="POP prefixes FOU is accepted and learned from: 4 bytes each, network order,"
            " no host bits set",
        ),
        Field("pop_lens", "u8", MAX_POPS, doc="their prefix lengths, 1..32"),
    ),
)
CONFIG_GET = Record("config_get", 4, "Ask for the current CONFIG; it is read() back.")
STATS_REQ = Record("stats_req", 5, "Ask for STATS_REPLY (table gauges).")
STATS_REPLY = Record(
    "stats_reply",
    6,
    "Table gauges of the opener's netns.",
    (
        Field("entries", "u32", doc="all entries, static included"),
        Field("static_entries", "u32"),
        Field("max_entries", "u32"),
        Field("buckets", "u32", doc="current hash table size"),
        Field("entry_size", "u32", doc="bytes of one entry's slab object"),
        Field("reserved", "u32"),
        Field("created_ns", "u64", doc="CLOCK_REALTIME when this netns state was made"),
        Field("table_bytes", "u64", doc="entry objects plus bucket array"),
    ),
)
DUMP_REQ = Record(
    "dump_req",
    7,
    "Start a dump: the next read()s return ENTRY records, then one DUMP_END, then 0.",
)
ENTRY = Record(
    "entry",
    8,
    "One table entry (dump output).",
    (
        Field("client", "ipv4", doc="inner source address of the client"),
        Field("pop", "ipv4", doc="outer source address of the POP it came through"),
        Field("age_ms", "u32", doc="time since the last packet (or since added)"),
        Field("entry_flags", "u32", doc="FM_ENTRY_STATIC"),
        Field("packets", "u64", doc="packets learned from"),
    ),
)
DUMP_END = Record(
    "dump_end",
    9,
    "Ends a dump. A dump returns, once each, every client present from DUMP_REQ "
    "until its record is read; clients learned after DUMP_REQ may be missing.",
    (Field("count", "u64", doc="ENTRY records returned by this dump"),),
)
ADD = Record(
    "add",
    10,
    "Add or replace an entry: FM_ENTRY_STATIC never expires nor moves; without it"
    " the entry is learned-like (used to restore snapshots) and may expire.",
    (
        Field("client", "ipv4"),
        Field("pop", "ipv4"),
        Field("entry_flags", "u32", doc="FM_ENTRY_STATIC or 0"),
        Field("age_ms", "u32", doc="for learned-like entries: age to restore"),
    ),
)
DEL = Record(
    "del",
    11,
    "Delete the client's entry (ENOENT when there is none).",
    (Field("client", "ipv4"), Field("reserved", "u32")),
)
FLUSH = Record(
    "flush",
    12,
    "Delete every learned entry; with FM_FLUSH_STATIC static ones too.",
    (Field("scope", "u32", doc="0 or FM_FLUSH_STATIC"), Field("reserved", "u32")),
)
AUTH = Record(
    "auth",
    13,
    "Set the netns's FOU authentication keys (write, swapped whole), or the reply to AUTH_GET."
    " keys[0] is appended to every FOU packet sent; each of the n_keys is accepted. n_keys 0:"
    " auth off (nothing appended, no token required).",
    (
        Field("n_keys", "u32", doc="0 (off) or 1..MAX_KEYS; unused keys must be zero"),
        Field("reserved", "u32"),
        Field("keys", "u8", MAX_KEYS * KEY_SIZE, doc="8 bytes each, as on the wire; not all zero"),
    ),
)
AUTH_GET = Record("auth_get", 14, "Ask for the current AUTH; it is read() back.")

DEVICE = Device(
    name="fou_map",
    prefix="fm",
    magic=0x464F554D,  # "FOUM"
    abi_version=2,
    doc="""
Control device of the fou_map module. open() needs CAP_NET_ADMIN in the user
namespace owning the opener's network namespace (EPERM otherwise) and binds the
file to that netns. write() takes exactly one record; a refused one changes
nothing and fails with EINVAL (bad magic, type, length, flags, reserved or
values), EPROTO (other ABI version), E2BIG (longer than any record), ENOSPC (no
room: max_entries bounds every entry, static ones included, so a learned-like
ADD, new or turning a static entry learned, is refused when the table is full of
static entries or already over max_entries), ENOENT (DEL of a missing client),
ENOMEM, or ENOBUFS (too many unread replies). CONFIG's POP prefixes and AUTH's
keys are refused with EINVAL when a used one is malformed (host bits set, length
0 or over 32, a martian prefix; an all-zero or repeated key) or an unused one is
not zero. bad_writes counts the refusals
that are the writer's fault: not ENOENT, ENOMEM or ENOBUFS. Replies are read()
back in order; read() returns whole records only (EMSGSIZE when the buffer
cannot hold the next one) and 0 when nothing is pending. A dump (DUMP_REQ)
continues over several read()s. poll() reports POLLIN while a reply or dump
records are pending.
""",
    records=(
        common.INFO_REQUEST,
        common.INFO_REPLY,
        CONFIG,
        CONFIG_GET,
        STATS_REQ,
        STATS_REPLY,
        DUMP_REQ,
        ENTRY,
        DUMP_END,
        ADD,
        DEL,
        FLUSH,
        AUTH,
        AUTH_GET,
    ),
    constants=(
        Constant("MAX_PORTS", MAX_PORTS, "room in CONFIG.ports"),
        Constant("MAX_POPS", MAX_POPS, "room in CONFIG.pop_addrs"),
        Constant("MAX_KEYS", MAX_KEYS, "room in AUTH.keys"),
        Constant("KEY_SIZE", KEY_SIZE, "bytes of one key, appended as the FOU trailer"),
        Constant("MISS_PASS", 0, "unmapped client: send unchanged to the tunnel's remote"),
        Constant("MISS_DROP", 1, "unmapped client: drop the packet"),
        Constant("ENTRY_STATIC", 1, "entry flag: added by the operator, never expires"),
        Constant("FLUSH_STATIC", 1, "flush scope: static entries too"),
        Constant("MAX_ENTRIES_LIMIT", 1 << 20, "largest max_entries a netns may set"),
        Constant("MIN_IDLE_TIMEOUT_MS", 100, "smallest idle_timeout_ms"),
        Constant("MAX_IDLE_TIMEOUT_MS", 7 * 24 * 3600 * 1000, "largest idle_timeout_ms"),
        Constant("DEFAULT_IDLE_TIMEOUT_MS", 300000, "idle timeout until configured"),
        Constant("DEFAULT_MAX_ENTRIES", 65536, "max_entries until configured"),
    ),
    counters=(
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
    ),
)
