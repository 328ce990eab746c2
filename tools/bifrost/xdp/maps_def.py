"""The XDP program's map key/value layouts, defined once for C and Python.

``bifrost.codegen`` renders these definitions into xdp/generated/bifrost_maps.h
(``invoke generate``; the XDP build does it too), which the BPF program
includes; ``Struct.pack``/``unpack`` (``bifrost.abi.spec``, shared with the
chardev records) are the Python side the loader uses.
tests/unit/test_xdp_maps_def.py compiles the header with gcc and compares
every size and offset with the struct formats below.

Byte order: ``ipv4`` fields are network order (as in iphdr); every other field
is host order (little-endian), ports included: the program converts with
bpf_ntohs, which costs one instruction.
"""

from __future__ import annotations

from dataclasses import dataclass

from bifrost.abi.spec import Field, Struct
from bifrost.paths import XDP_DIR

HEADER_PATH = XDP_DIR / "generated" / "bifrost_maps.h"


def _fmix32(h: int) -> int:
    m = 0xFFFFFFFF
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & m
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & m
    h ^= h >> 16
    return h


def addr_slot_index(addr: bytes) -> int:
    """The addr_slots index of an address; bfx_addr_hash() in xdp/rules.h."""
    return _fmix32(int.from_bytes(addr, "little")) & (ADDR_SLOTS - 1)


def rule_slot_index(addr: bytes, port: int, proto: int) -> int:
    """The rule_slots index of a rule key; the same function as bfx_rule_hash() in xdp/rules.h.

    addr is the address as it lies in the packet: the program loads it into a
    little-endian register, so the hash sees it byte-swapped, and so must we.
    """
    m = 0xFFFFFFFF
    h = int.from_bytes(addr, "little") ^ ((((port << 8) | proto) * 0x9E3779B1) & m)
    return _fmix32(h) & (RULE_SLOTS - 1)


def game_ports(port: int, service_port: int) -> int:
    """game_client_set.ports: the two ports' network-order bytes, as one u32 load reads them."""
    return int.from_bytes(port.to_bytes(2, "big") + service_port.to_bytes(2, "big"), "little")


def game_set_index(client: bytes, port: int, service: bytes, service_port: int) -> int:
    """The game_clients set of a validated client; the same function as
    bfx_game_set_index() in xdp/modules/game_clients.h. Addresses as they lie in the
    packet (loaded little-endian there too); ports in host order."""
    m = 0xFFFFFFFF
    c, s = int.from_bytes(client, "little"), int.from_bytes(service, "little")
    return _fmix32(c ^ ((s * 0x9E3779B1) & m) ^ game_ports(port, service_port)) & (
        GAME_CLIENT_SETS - 1
    )


# Why a packet ended where it did. Every packet the program sees increments
# exactly one (rule, reason) counter, so the counters account for all traffic.
REASONS: tuple[tuple[str, str], ...] = (
    ("pass_non_ip", "not IPv4/IPv6 (ARP, LLDP...): the host's business"),
    ("pass_host", "IPv4 not to an anycast service nor the FOU port: host traffic"),
    ("pass_ipv6", "IPv6 with ipv6 = pass"),
    ("drop_ipv6", "IPv6 with ipv6 = drop"),
    ("drop_malformed", "truncated or inconsistent Ethernet/IPv4/UDP/TCP headers"),
    ("drop_fragment", "IPv4 fragment to an anycast service"),
    ("drop_no_rule", "anycast address, but no forward rule covers proto/port"),
    ("drop_blocked", "source in the block list"),
    ("drop_rate_limit", "source over the rule's packet rate"),
    ("drop_module", "a game module rejected it (e.g. SRCDS client not validated)"),
    ("pass_cache", "well-formed A2S query to a caching rule: bifrost_nf answers"),
    ("tx_forward", "FOU-encapsulated to the game server and transmitted"),
    ("drop_no_neigh", "game server's neighbour not resolved (see managed neighbours)"),
    ("drop_no_route", "no route / forwarding disabled for the next hop"),
    ("drop_too_big", "encapsulated packet exceeds the egress MTU"),
    ("drop_encap", "no headroom to encapsulate / decapsulate"),
    ("tx_return", "decapsulated from a game server and transmitted to the client"),
    ("pass_return_neigh", "decapsulated, client next hop not resolved: the stack sends it"),
    ("drop_unknown_gs", "FOU to the POP port from an address not a game-server machine"),
    ("drop_relay", "return path inner source is not a service forwarded to that machine"),
    # Appended, so the counters of the reasons above keep their indices.
    ("drop_auth", "auth on: FOU without the exact length or an accepted key (AUTH.md)"),
    (
        "drop_martian",
        "martian client source, or a return-path destination that is martian, "
        "the POP or a game server",
    ),
    ("drop_flood", "flood mode: an unknown source over the rule's aggregate budget"),
    (
        "pass_ipv6_nd",
        "IPv6 with ipv6 = drop, but neighbour discovery (ICMPv6 133-137, hop "
        "limit 255, RFC 4861): the host's own",
    ),
    ("drop_unreachable", "the FIB lookup found a blackhole, unreachable or prohibit route"),
    ("drop_redirect", "bpf_redirect refused the redirect (counted, not transmitted)"),
    (
        "tx_icmp_too_big",
        "DF packet over the path MTU once encapsulated: ICMP fragmentation needed sent back",
    ),
    (
        "tx_icmp_forward",
        "ICMP error to an anycast address quoting a rule's flow: to its game server",
    ),
    (
        "drop_icmp_error",
        "ICMP error to an anycast address quoting no forwarded flow, or over the budget",
    ),
    (
        "pass_vlan_no_meta",
        "802.1Q/QinQ frame on a driver without XDP metadata: passed unfiltered",
    ),
)
REASON_INDEX = {name: i for i, (name, _) in enumerate(REASONS)}

# Forward rule flags.
RULE_CACHE = 1  # well-formed A2S queries are passed up to bifrost_nf

# rule_slots flags: another key hashes to this slot and lives in rule_overflow.
SLOT_OVERFLOW = 1

# addr_slots flags: what an address is (ADDR_*), and SLOT_OVERFLOW as above: then
# the program asks the anycast / gameservers hashes.
ADDR_ANYCAST = 2
ADDR_GAMESERVER = 4


@dataclass(frozen=True)
class GameModule:
    """A game handshake-validation module of the XDP program: the one table of them."""

    name: str  # in the config: xdp.modules, xdp.rule[].modules
    bit: int  # rule_modules bit; a bit only matters when the module is compiled in
    define: str | None  # module_config.h define that compiles it in; None: reserved


GAME_MODULES: tuple[GameModule, ...] = (
    GameModule("srcds", 1 << 0, "SRCDS_HANDSHAKE"),
    GameModule("rust", 1 << 1, "RUST_HANDSHAKE"),  # RakNet or Steam networking
    GameModule("ue3", 1 << 2, "UE3_HANDSHAKE"),  # Unreal: UE4's stateless handshake
    GameModule("steam", 1 << 3, "STEAM_HANDSHAKE"),  # Steam networking (CS2)
)
# What the config accepts: the modules the program implements.
AVAILABLE_MODULES = {m.name: m for m in GAME_MODULES if m.define}
MODULE_BITS = {m.name: m.bit for m in GAME_MODULES}

# settings.flags
SET_HAVE_FIREWALL = 1  # skip the LPM lookup when the block and allow lists are empty
SET_AUTH = 2  # FOU carries an 8-byte token after the inner packet (settings.auth_keys)

# Authenticated FOU (AUTH.md): the token's size and how many keys a generation accepts.
AUTH_KEY_BYTES = 8
AUTH_KEYS = 4

# firewall (LPM trie) values: what the longest matching prefix says.
FW_ALLOW = 1  # exempt from rate limits (and from any block prefix it is inside)
FW_BLOCK = 2
# ... one FW_GEN_BITS-bit field per config generation: verdict | FW_MEMBER (the
# prefix is that generation's own, not a stand-in for its longest match).
FW_GEN_BITS = 16
FW_VERDICT_MASK = 0xFF
FW_MEMBER = 1 << 15

# Config generations side by side in every config map; config_gen names the one in force.
GENERATIONS = 2

IPV6_PASS = 0
IPV6_DROP = 1

# Capacities (max_entries). Rule ids are 1..MAX_RULES; 0 means "no rule".
MAX_RULES = 256
MAX_RULE_KEYS = 65536  # port ranges are expanded to one entry per port
RULE_SLOTS = 1 << 17  # rule_slots size: a power of two, twice MAX_RULE_KEYS
# addr_slots per generation: a power of two, twice MAX_ANYCAST + MAX_GAMESERVERS, and
# small (32 KiB each) so a spoofed source's lookup stays in the CPU's cache.
ADDR_SLOTS = 1 << 12
MAX_GAMESERVERS = 1024
MAX_ANYCAST = 1024
MAX_PREFIXES = 16384  # per list; the firewall trie holds both
MAX_RATE_SOURCES = 131072
MAX_NEXTHOPS = 65536
MAX_SRCDS_CLIENTS = 131072
# Validated clients of every game module: GAME_CLIENT_SETS sets of
# GAME_CLIENT_WAYS (game_client_set), and an LRU for a set's overflow.
GAME_CLIENT_WAYS = 4
GAME_CLIENT_SETS = 32768
MAX_GAME_CLIENTS_OVERFLOW = 16384
GAME_SET_OVERFLOW = 1  # game_client_set.flags: a client of this set is in the overflow LRU
# Handshake packets from clients not yet validated, per rule and CPU, a second's worth
# of burst (rust, steam, ue3): what a spoofed-handshake flood gets to the game server.
GAME_HANDSHAKE_PPS = 1024
# ICMP fragmentation-needed replies per CPU and second (xdp/icmp.h), as the kernel's
# icmp_msgs_per_sec: over it, a too-big packet is only dropped (drop_too_big). The
# same again for ICMP errors forwarded to game servers (drop_icmp_error over it).
ICMP_REPLY_PPS = 1000
# The smallest tunnel_mtu: the minimal IPv4 datagram (68, RFC 791) plus FOU's 28 bytes.
# settings.tunnel_mtu without one (xdp.tunnel_mtu = 0): no packet is longer.
NO_TUNNEL_MTU = 0xFFFF
MIN_TUNNEL_MTU = 96
RATE_FILTER_BITS = 1 << 20  # rate_known: a bit per (source, rule) hash given a bucket

CONSTANTS: tuple[tuple[str, int, str], ...] = (
    ("NR_REASONS", len(REASONS), "counters per rule"),
    ("RULE_CACHE", RULE_CACHE, "rule flag: pass well-formed A2S queries up"),
    *((f"MOD_{m.name.upper()}", m.bit, f"rule_modules bit: {m.name}") for m in GAME_MODULES),
    ("SET_HAVE_FIREWALL", SET_HAVE_FIREWALL, "settings flag: firewall trie not empty"),
    ("SET_AUTH", SET_AUTH, "settings flag: FOU is authenticated (token after the inner packet)"),
    ("AUTH_KEY_BYTES", AUTH_KEY_BYTES, "the FOU token's size"),
    ("AUTH_KEYS", AUTH_KEYS, "accepted keys per generation (settings.auth_keys)"),
    ("FW_ALLOW", FW_ALLOW, "firewall value: allow-listed source"),
    ("FW_BLOCK", FW_BLOCK, "firewall value: block-listed source"),
    ("FW_GEN_BITS", FW_GEN_BITS, "firewall value: bits per config generation"),
    ("FW_VERDICT_MASK", FW_VERDICT_MASK, "firewall value: the verdict in a generation's bits"),
    ("FW_MEMBER", FW_MEMBER, "firewall value: the prefix is the generation's own"),
    ("GENERATIONS", GENERATIONS, "configs side by side in the config maps"),
    ("IPV6_PASS", IPV6_PASS, "settings.ipv6_policy"),
    ("IPV6_DROP", IPV6_DROP, "settings.ipv6_policy"),
    ("MAX_RULES", MAX_RULES, "rule ids are 1..MAX_RULES"),
    ("SLOT_OVERFLOW", SLOT_OVERFLOW, "rule_slots flag: a colliding key is in rule_overflow"),
    ("MAX_RULE_KEYS", MAX_RULE_KEYS, "rule keys (one per port) and rule_overflow entries"),
    ("RULE_SLOTS", RULE_SLOTS, "rule_slots entries (power of two)"),
    ("ADDR_SLOTS", ADDR_SLOTS, "addr_slots entries per generation (power of two)"),
    ("ADDR_ANYCAST", ADDR_ANYCAST, "addr_slots flag: an anycast address"),
    ("ADDR_GAMESERVER", ADDR_GAMESERVER, "addr_slots flag: a game-server address"),
    ("MAX_GAMESERVERS", MAX_GAMESERVERS, ""),
    ("MAX_ANYCAST", MAX_ANYCAST, ""),
    ("MAX_PREFIXES", MAX_PREFIXES, "per block/allow list"),
    ("MAX_RATE_SOURCES", MAX_RATE_SOURCES, "LRU: (source, rule) buckets"),
    ("MAX_NEXTHOPS", MAX_NEXTHOPS, "LRU: destination -> MACs cache"),
    ("MAX_SRCDS_CLIENTS", MAX_SRCDS_CLIENTS, "srcds_clients of older objects (upgrade migrates)"),
    ("GAME_CLIENT_WAYS", GAME_CLIENT_WAYS, "validated clients per game_client_set"),
    ("GAME_CLIENT_SETS", GAME_CLIENT_SETS, "game_clients sets (power of two)"),
    ("MAX_GAME_CLIENTS_OVERFLOW", MAX_GAME_CLIENTS_OVERFLOW, "LRU: a full set's clients"),
    ("GAME_SET_OVERFLOW", GAME_SET_OVERFLOW, "game_client_set flag: look in the overflow"),
    ("GAME_HANDSHAKE_PPS", GAME_HANDSHAKE_PPS, "unvalidated handshakes per rule and CPU"),
    ("RATE_FILTER_BITS", RATE_FILTER_BITS, "rate_known bits (power of two)"),
    ("ICMP_REPLY_PPS", ICMP_REPLY_PPS, "ICMP fragmentation-needed replies per CPU"),
)

F = Field
STRUCTS: tuple[Struct, ...] = (
    Struct(
        "rule_key",
        "rule_overflow key: anycast address, destination port (0 = any), protocol",
        (
            F("addr", "ipv4"),
            F("port", "u16"),
            F("proto", "u8"),
            F("gen", "u8", doc="config generation (config_gen)"),
        ),
    ),
    Struct(
        "rule_slot",
        "rule_slots value (index: rule_slot_index of the key); proto 0 = empty",
        (
            F("addr", "ipv4"),
            F("port", "u16", doc="destination port, 0 = any"),
            F("proto", "u8"),
            F("flags", "u8", doc="SLOT_*"),
            F("rule_id", "u32", doc="index into rules"),
        ),
    ),
    Struct("rule_ref", "rule_overflow value", (F("rule_id", "u32"),)),
    Struct(
        "addr_slot",
        "addr_slots value (index: gen * ADDR_SLOTS + addr_slot_index); addr 0 = empty",
        (F("addr", "ipv4"), F("flags", "u32", doc="ADDR_*, SLOT_OVERFLOW")),
    ),
    Struct(
        "rule",
        "rules value (index: rule id): where a service goes and what applies to it",
        (
            F("id", "u32", doc="1..MAX_RULES (0: no rule): counters, rule_modules index"),
            F("gs_addr", "ipv4", doc="game-server machine (outer destination)"),
            F("fou_port", "u16", doc="FOU port on the game-server machine"),
            F("flags", "u16", doc="RULE_*"),
            F("rate_cost_ns", "u32", doc="credit one packet costs (1e9/pps); 0 = no limit"),
            F("gs_slot", "u32", doc="index of the game server's next hop in gs_nexthops"),
            F("reserved", "u32"),
            F("rate_burst_ns", "u64", doc="bucket size: burst * rate_cost_ns"),
        ),
    ),
    Struct("rule_modules", "rule_modules value (index: rule id)", (F("bits", "u32"),)),
    Struct(
        "rule_name",
        "rule_names value (index: rule id): which rule name holds the id",
        (F("digest", "u8", 16, doc="first 16 bytes of sha256(name); zero: free"),),
    ),
    Struct(
        "gameserver",
        "gameservers value (key: __be32 address)",
        (F("gens", "u32", doc="bit g: a game server in config generation g"),),
    ),
    Struct(
        "anycast",
        "anycast value (key: __be32 address): traffic to it no rule covers is dropped",
        (F("gens", "u32", doc="bit g: served in config generation g"),),
    ),
    Struct(
        "lpm_key",
        "firewall key (BPF LPM trie layout)",
        (F("prefixlen", "u32"), F("addr", "ipv4")),
    ),
    Struct(
        "rate_key",
        "rate_limit key: one token bucket per (source, rule)",
        (F("src", "ipv4"), F("rule_id", "u32")),
    ),
    Struct(
        "rate_state",
        "rate_limit value",
        (F("last_ns", "u64"), F("credit_ns", "u64")),
    ),
    Struct(
        "nexthop",
        "nexthops / gs_nexthops value: filled by bpf_fib_lookup on a miss or expiry",
        (
            F("smac", "u8", 6),
            F("dmac", "u8", 6),
            F("ifindex", "u32"),
            F("mtu", "u32", doc="egress MTU: larger encapsulated packets are dropped"),
            F("dst", "ipv4", doc="the destination this entry is for"),
            F("expires_ns", "u64", doc="bfx_now() after which to look up again"),
        ),
    ),
    Struct(
        "srcds_key",
        "a client of one service: game_clients_overflow key (srcds_clients' before)",
        (
            F("client", "ipv4"),
            F("service", "ipv4"),
            F("client_port", "u16"),
            F("service_port", "u16"),
        ),
    ),
    Struct(
        "srcds_state",
        "a validated client, with its own rate bucket, out of the reach of unknown "
        "sources (only authenticated return traffic inserts): game_clients' ways, "
        "game_clients_overflow value",
        (
            F("expires_ns", "u64"),
            F("last_ns", "u64", doc="token bucket (as rate_state); 0: full"),
            F("credit_ns", "u64"),
        ),
    ),
    Struct(
        "flood_state",
        "flood value (per CPU): new sources in the current one-second window",
        (F("window_ns", "u64", doc="bfx_now() the window started"), F("new_sources", "u64")),
    ),
    Struct(
        "game_client_set",
        "game_clients value (index: hash of the key): a set of validated clients, by way",
        (
            F("lock", "u32", doc="struct bpf_spin_lock: held by the return path's insert"),
            F("flags", "u32", doc="GAME_SET_*"),
            # Addresses as they lie in the packet (network order), read as native u32s:
            # the Python codec has no ipv4 arrays.
            F("client", "u32", GAME_CLIENT_WAYS, doc="network order"),
            F("service", "u32", GAME_CLIENT_WAYS, doc="network order"),
            F("ports", "u32", GAME_CLIENT_WAYS, doc="client then service port, network order"),
            # A srcds_state per way (C: struct bfx_srcds_state state[WAYS]): expires_ns
            # (0: free), then the client's own rate bucket, last_ns and credit_ns.
            F("state", "u64", 3 * GAME_CLIENT_WAYS, doc="srcds_state by way"),
        ),
    ),
    Struct(
        "settings",
        "settings[gen]: POP-wide parameters, changed without reloading",
        (
            F("pop_addr", "ipv4", doc="outer source of encapsulated packets"),
            F("fou_port", "u16", doc="FOU port the POP receives the return path on"),
            F("ipv6_policy", "u8", doc="IPV6_*"),
            F("flags", "u8", doc="SET_*"),
            F("nexthop_ttl_ns", "u64", doc="how long a next-hop entry is trusted"),
            F("srcds_ttl_ns", "u64", doc="how long a validated SRCDS client stays valid"),
            F("ns_per_jiffy", "u32", doc="1e9/HZ, calibrated by the loader; 0: use ktime"),
            F("flood_new_sources", "u32", doc="new sources per second per CPU: flood above"),
            F(
                "auth_keys",
                "u8",
                AUTH_KEYS * AUTH_KEY_BYTES,
                doc="AUTH_KEYS keys in wire order; [0] is sent; unused slots repeat [0]",
            ),
            F("flood_cost_ns", "u64", doc="aggregate bucket of unknown sources per rule/CPU"),
            F("flood_burst_ns", "u64"),
            F(
                "tunnel_mtu",
                "u32",
                doc="outer packets to game servers at most this long (NO_TUNNEL_MTU: none)",
            ),
            F("reserved", "u32"),
        ),
    ),
    Struct("counter", "counters value (per CPU)", (F("packets", "u64"), F("bytes", "u64"))),
)
BY_NAME = {s.name: s for s in STRUCTS}
