/* SPDX-License-Identifier: GPL-2.0 */
/*
 * GENERATED from tools/bifrost/xdp/maps_def.py; do not edit.
 * Key/value layouts of the XDP program's maps, shared with the Python loader.
 * __be32 fields are network order; every other field is host order.
 */
#ifndef BIFROST_MAPS_H
#define BIFROST_MAPS_H

#include <linux/types.h>

#define BFX_NR_REASONS 30	/* counters per rule */
#define BFX_RULE_CACHE 1	/* rule flag: pass well-formed A2S queries up */
#define BFX_MOD_SRCDS 1	/* rule_modules bit: srcds */
#define BFX_MOD_RUST 2	/* rule_modules bit: rust */
#define BFX_MOD_UE3 4	/* rule_modules bit: ue3 */
#define BFX_MOD_STEAM 8	/* rule_modules bit: steam */
#define BFX_SET_HAVE_FIREWALL 1	/* settings flag: firewall trie not empty */
#define BFX_SET_AUTH 2	/* settings flag: FOU is authenticated (token after the inner packet) */
#define BFX_AUTH_KEY_BYTES 8	/* the FOU token's size */
#define BFX_AUTH_KEYS 4	/* accepted keys per generation (settings.auth_keys) */
#define BFX_FW_ALLOW 1	/* firewall value: allow-listed source */
#define BFX_FW_BLOCK 2	/* firewall value: block-listed source */
#define BFX_FW_GEN_BITS 16	/* firewall value: bits per config generation */
#define BFX_FW_VERDICT_MASK 255	/* firewall value: the verdict in a generation's bits */
#define BFX_FW_MEMBER 32768	/* firewall value: the prefix is the generation's own */
#define BFX_GENERATIONS 2	/* configs side by side in the config maps */
#define BFX_IPV6_PASS 0	/* settings.ipv6_policy */
#define BFX_IPV6_DROP 1	/* settings.ipv6_policy */
#define BFX_MAX_RULES 256	/* rule ids are 1..MAX_RULES */
#define BFX_SLOT_OVERFLOW 1	/* rule_slots flag: a colliding key is in rule_overflow */
#define BFX_MAX_RULE_KEYS 65536	/* rule keys (one per port) and rule_overflow entries */
#define BFX_RULE_SLOTS 131072	/* rule_slots entries (power of two) */
#define BFX_ADDR_SLOTS 4096	/* addr_slots entries per generation (power of two) */
#define BFX_ADDR_ANYCAST 2	/* addr_slots flag: an anycast address */
#define BFX_ADDR_GAMESERVER 4	/* addr_slots flag: a game-server address */
#define BFX_MAX_GAMESERVERS 1024
#define BFX_MAX_ANYCAST 1024
#define BFX_MAX_PREFIXES 16384	/* per block/allow list */
#define BFX_MAX_RATE_SOURCES 131072	/* LRU: (source, rule) buckets */
#define BFX_MAX_NEXTHOPS 65536	/* LRU: destination -> MACs cache */
#define BFX_MAX_SRCDS_CLIENTS 131072	/* srcds_clients of older objects (upgrade migrates) */
#define BFX_GAME_CLIENT_WAYS 4	/* validated clients per game_client_set */
#define BFX_GAME_CLIENT_SETS 32768	/* game_clients sets (power of two) */
#define BFX_MAX_GAME_CLIENTS_OVERFLOW 16384	/* LRU: a full set's clients */
#define BFX_GAME_SET_OVERFLOW 1	/* game_client_set flag: look in the overflow */
#define BFX_GAME_HANDSHAKE_PPS 1024	/* unvalidated handshakes per rule and CPU */
#define BFX_RATE_FILTER_BITS 1048576	/* rate_known bits (power of two) */
#define BFX_ICMP_REPLY_PPS 1000	/* ICMP fragmentation-needed replies per CPU */

/* Why a packet ended where it did: one counter per (rule, reason). */
enum bfx_reason {
	BFX_PASS_NON_IP,	/* not IPv4/IPv6 (ARP, LLDP...): the host's business */
	BFX_PASS_HOST,	/* IPv4 not to an anycast service nor the FOU port: host traffic */
	BFX_PASS_IPV6,	/* IPv6 with ipv6 = pass */
	BFX_DROP_IPV6,	/* IPv6 with ipv6 = drop */
	BFX_DROP_MALFORMED,	/* truncated or inconsistent Ethernet/IPv4/UDP/TCP headers */
	BFX_DROP_FRAGMENT,	/* IPv4 fragment to an anycast service */
	BFX_DROP_NO_RULE,	/* anycast address, but no forward rule covers proto/port */
	BFX_DROP_BLOCKED,	/* source in the block list */
	BFX_DROP_RATE_LIMIT,	/* source over the rule's packet rate */
	BFX_DROP_MODULE,	/* a game module rejected it (e.g. SRCDS client not validated) */
	BFX_PASS_CACHE,	/* well-formed A2S query to a caching rule: bifrost_nf answers */
	BFX_TX_FORWARD,	/* FOU-encapsulated to the game server and transmitted */
	BFX_DROP_NO_NEIGH,	/* game server's neighbour not resolved (see managed neighbours) */
	BFX_DROP_NO_ROUTE,	/* no route / forwarding disabled for the next hop */
	BFX_DROP_TOO_BIG,	/* encapsulated packet exceeds the egress MTU */
	BFX_DROP_ENCAP,	/* no headroom to encapsulate / decapsulate */
	BFX_TX_RETURN,	/* decapsulated from a game server and transmitted to the client */
	BFX_PASS_RETURN_NEIGH,	/* decapsulated, client next hop not resolved: the stack sends it */
	BFX_DROP_UNKNOWN_GS,	/* FOU to the POP port from an address not a game-server machine */
	BFX_DROP_RELAY,	/* return path inner source is not a service forwarded to that machine */
	BFX_DROP_AUTH,	/* auth on: FOU without the exact length or an accepted key (AUTH.md) */
	BFX_DROP_MARTIAN,	/* martian client source, or a return-path destination that is martian, the POP or a game server */
	BFX_DROP_FLOOD,	/* flood mode: an unknown source over the rule's aggregate budget */
	BFX_PASS_IPV6_ND,	/* IPv6 with ipv6 = drop, but neighbour discovery (ICMPv6 133-137, hop limit 255, RFC 4861): the host's own */
	BFX_DROP_UNREACHABLE,	/* the FIB lookup found a blackhole, unreachable or prohibit route */
	BFX_DROP_REDIRECT,	/* bpf_redirect refused the redirect (counted, not transmitted) */
	BFX_TX_ICMP_TOO_BIG,	/* DF packet over the path MTU once encapsulated: ICMP fragmentation needed sent back */
	BFX_TX_ICMP_FORWARD,	/* ICMP error to an anycast address quoting a rule's flow: to its game server */
	BFX_DROP_ICMP_ERROR,	/* ICMP error to an anycast address quoting no forwarded flow, or over the budget */
	BFX_PASS_VLAN_NO_META,	/* 802.1Q/QinQ frame on a driver without XDP metadata: passed unfiltered */
};

/* rule_overflow key: anycast address, destination port (0 = any), protocol */
struct bfx_rule_key {
	__be32 addr;
	__u16 port;
	__u8 proto;
	__u8 gen;	/* config generation (config_gen) */
};

/* rule_slots value (index: rule_slot_index of the key); proto 0 = empty */
struct bfx_rule_slot {
	__be32 addr;
	__u16 port;	/* destination port, 0 = any */
	__u8 proto;
	__u8 flags;	/* SLOT_* */
	__u32 rule_id;	/* index into rules */
};

/* rule_overflow value */
struct bfx_rule_ref {
	__u32 rule_id;
};

/* addr_slots value (index: gen * ADDR_SLOTS + addr_slot_index); addr 0 = empty */
struct bfx_addr_slot {
	__be32 addr;
	__u32 flags;	/* ADDR_*, SLOT_OVERFLOW */
};

/* rules value (index: rule id): where a service goes and what applies to it */
struct bfx_rule {
	__u32 id;	/* 1..MAX_RULES (0: no rule): counters, rule_modules index */
	__be32 gs_addr;	/* game-server machine (outer destination) */
	__u16 fou_port;	/* FOU port on the game-server machine */
	__u16 flags;	/* RULE_* */
	__u32 rate_cost_ns;	/* credit one packet costs (1e9/pps); 0 = no limit */
	__u32 gs_slot;	/* index of the game server's next hop in gs_nexthops */
	__u32 reserved;
	__u64 rate_burst_ns;	/* bucket size: burst * rate_cost_ns */
};

/* rule_modules value (index: rule id) */
struct bfx_rule_modules {
	__u32 bits;
};

/* rule_names value (index: rule id): which rule name holds the id */
struct bfx_rule_name {
	__u8 digest[16];	/* first 16 bytes of sha256(name); zero: free */
};

/* gameservers value (key: __be32 address) */
struct bfx_gameserver {
	__u32 gens;	/* bit g: a game server in config generation g */
};

/* anycast value (key: __be32 address): traffic to it no rule covers is dropped */
struct bfx_anycast {
	__u32 gens;	/* bit g: served in config generation g */
};

/* firewall key (BPF LPM trie layout) */
struct bfx_lpm_key {
	__u32 prefixlen;
	__be32 addr;
};

/* rate_limit key: one token bucket per (source, rule) */
struct bfx_rate_key {
	__be32 src;
	__u32 rule_id;
};

/* rate_limit value */
struct bfx_rate_state {
	__u64 last_ns;
	__u64 credit_ns;
};

/* nexthops / gs_nexthops value: filled by bpf_fib_lookup on a miss or expiry */
struct bfx_nexthop {
	__u8 smac[6];
	__u8 dmac[6];
	__u32 ifindex;
	__u32 mtu;	/* egress MTU: larger encapsulated packets are dropped */
	__be32 dst;	/* the destination this entry is for */
	__u64 expires_ns;	/* bfx_now() after which to look up again */
};

/* a client of one service: game_clients_overflow key (srcds_clients' before) */
struct bfx_srcds_key {
	__be32 client;
	__be32 service;
	__u16 client_port;
	__u16 service_port;
};

/* a validated client, with its own rate bucket, out of the reach of unknown sources (only authenticated return traffic inserts): game_clients' ways, game_clients_overflow value */
struct bfx_srcds_state {
	__u64 expires_ns;
	__u64 last_ns;	/* token bucket (as rate_state); 0: full */
	__u64 credit_ns;
};

/* flood value (per CPU): new sources in the current one-second window */
struct bfx_flood_state {
	__u64 window_ns;	/* bfx_now() the window started */
	__u64 new_sources;
};

/* game_clients value (index: hash of the key): a set of validated clients, by way */
struct bfx_game_client_set {
	__u32 lock;	/* struct bpf_spin_lock: held by the return path's insert */
	__u32 flags;	/* GAME_SET_* */
	__u32 client[4];	/* network order */
	__u32 service[4];	/* network order */
	__u32 ports[4];	/* client then service port, network order */
	__u64 state[12];	/* srcds_state by way */
};

/* settings[gen]: POP-wide parameters, changed without reloading */
struct bfx_settings {
	__be32 pop_addr;	/* outer source of encapsulated packets */
	__u16 fou_port;	/* FOU port the POP receives the return path on */
	__u8 ipv6_policy;	/* IPV6_* */
	__u8 flags;	/* SET_* */
	__u64 nexthop_ttl_ns;	/* how long a next-hop entry is trusted */
	__u64 srcds_ttl_ns;	/* how long a validated SRCDS client stays valid */
	__u32 ns_per_jiffy;	/* 1e9/HZ, calibrated by the loader; 0: use ktime */
	__u32 flood_new_sources;	/* new sources per second per CPU: flood above */
	__u8 auth_keys[32];	/* AUTH_KEYS keys in wire order; [0] is sent; unused slots repeat [0] */
	__u64 flood_cost_ns;	/* aggregate bucket of unknown sources per rule/CPU */
	__u64 flood_burst_ns;
	__u32 tunnel_mtu;	/* outer packets to game servers at most this long (NO_TUNNEL_MTU: none) */
	__u32 reserved;
};

/* counters value (per CPU) */
struct bfx_counter {
	__u64 packets;
	__u64 bytes;
};

#endif /* BIFROST_MAPS_H */
