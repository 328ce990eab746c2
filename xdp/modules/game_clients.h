/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What every game module shares (SRCDS, Rust, Steam networking, Unreal): the
 * validated clients, and the budget of packets from clients not validated
 * yet (budget.h).
 *
 * A client (address and port, of one service) is validated only by the
 * return path, when the game server's reply that proves the client's
 * address (SRCDS's accept `B`, RakNet open connection reply 2, Steam
 * networking ConnectOK, Unreal's challenge ack) passes through this POP, or its session data,
 * which a server sends only on a connection it made after such a proof:
 * bfx_modules_return() runs only after the return packet passed the
 * game-server and relay checks and the FOU authentication, so an off-path
 * spoofer cannot forge either.
 *
 * Until then, a client may send only well-formed packets (each module says
 * which): handshakes, and game data, which is what a client validated at
 * another POP sends when its route moves here (issue 13 deliver 2: that
 * data reaches the server, fou_map learns the move, the server's session
 * replies come back this way and validate the client here). Both only within
 * a per-rule aggregate budget: a spoofed flood of either reaches the game
 * server at no more than BFX_GAME_HANDSHAKE_PPS per CPU, and inserts no
 * per-source state (the budget is an array slot per rule, not a bucket per
 * source).
 */
#ifndef BIFROST_XDP_MODULE_GAME_CLIENTS_H
#define BIFROST_XDP_MODULE_GAME_CLIENTS_H

#include "../hash.h"
#include "../maps.h"
#include "../parsing.h"
#include "budget.h"

/*
 * Validated clients of every rule that enables a game module (the key
 * names the service, so a validation holds for that service only), with
 * their expiry (xdp.srcds_ttl_s, sliding with traffic, like SRCDS's).
 *
 * Every forward packet of a game in progress asks this table, so it is an
 * array of 4-way sets at a hash of the key: one array lookup, which the
 * verifier inlines, and three compares a way. An LRU hash lookup cost 0.5x
 * the parse-only baseline (benchmarks/bench_xdp_modules.py), this about
 * 0.03x. Inserts come only from the authenticated return path: they take
 * a free or expired way under the set's lock; a set whose four clients are
 * all live sends the fifth to game_clients_overflow (an LRU) and is marked,
 * so only lookups in such a set pay for a hash lookup. A live client is
 * never replaced in its set. Readers take no lock: an insert writes the key
 * first and the expiry last, so a half-written way reads as expired. Each
 * way carries the client's rate bucket (the pipeline's *own): a validated
 * client's rate state is out of the reach of unknown sources.
 */
struct bfx_game_client_set_locked {
	struct bpf_spin_lock lock;
	__u32 flags;
	__be32 client[BFX_GAME_CLIENT_WAYS];
	__be32 service[BFX_GAME_CLIENT_WAYS];
	__u32 ports[BFX_GAME_CLIENT_WAYS];
	/* Expiry and the client's own rate bucket (see bfx_rate_check()), by way. */
	struct bfx_srcds_state state[BFX_GAME_CLIENT_WAYS];
};

/* The layout Python reads (maps_def game_client_set), with the lock's BTF type. */
#define BFX_SAME_AT(f) \
	_Static_assert(__builtin_offsetof(struct bfx_game_client_set_locked, f) == \
			       __builtin_offsetof(struct bfx_game_client_set, f), #f)
BFX_SAME_AT(flags);
BFX_SAME_AT(client);
BFX_SAME_AT(service);
BFX_SAME_AT(ports);
BFX_SAME_AT(state);
_Static_assert(sizeof(struct bfx_game_client_set_locked) == sizeof(struct bfx_game_client_set),
	       "game_client_set size");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BFX_GAME_CLIENT_SETS);
	__type(key, __u32);
	__type(value, struct bfx_game_client_set_locked);
} game_clients SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, BFX_MAX_GAME_CLIENTS_OVERFLOW);
	__type(key, struct bfx_srcds_key);
	__type(value, struct bfx_srcds_state);
} game_clients_overflow SEC(".maps");

/*
 * A client of a service as the table holds it: the addresses and the ports as
 * they lie in a client -> service packet (ports: its UDP header's first four
 * bytes, as one load reads them), so a forward packet needs no byte swap and
 * three compares.
 */
struct bfx_game_key {
	__be32 client;
	__be32 service;
	__u32 ports;
};

static __always_inline __u32 bfx_game_set_index(const struct bfx_game_key *k)
{
	return bfx_fmix32(k->client ^ (k->service * 0x9e3779b1U) ^ k->ports) &
	       (BFX_GAME_CLIENT_SETS - 1);
}

/* The way of set holding k, or BFX_GAME_CLIENT_WAYS. */
static __always_inline __u32 bfx_game_way(const struct bfx_game_client_set_locked *set,
					  const struct bfx_game_key *k)
{
	__u32 i;

#pragma unroll
	for (i = 0; i < BFX_GAME_CLIENT_WAYS; i++)
		if (set->client[i] == k->client && set->ports[i] == k->ports &&
		    set->service[i] == k->service)
			return i;
	return BFX_GAME_CLIENT_WAYS;
}

/* game_clients_overflow's key (srcds_key: ports in host order). */
static __always_inline void bfx_game_overflow_key(struct bfx_srcds_key *o,
						  const struct bfx_game_key *k)
{
	o->client = k->client;
	o->service = k->service;
	o->client_port = bpf_ntohs(k->ports & 0xffff);
	o->service_port = bpf_ntohs(k->ports >> 16);
}

/* A live entry: slide its expiry with traffic, but write only once per half TTL. */
static __always_inline int bfx_game_live(struct bfx_srcds_state *st, const struct bfx_settings *s)
{
	__u64 now = bfx_now(s), exp = *(volatile __u64 *)&st->expires_ns;

	if (now >= exp)
		return 0;
	if (exp - now < s->srcds_ttl_ns / 2)
		st->expires_ns = now + s->srcds_ttl_ns;
	return 1;
}

/* 1 when the sender of this forward packet is a validated client of its service. */
static __always_inline int bfx_game_validated(const struct iphdr *ip, const struct bfx_l4 *l4,
					      const struct bfx_settings *s,
					      struct bfx_srcds_state **own)
{
	struct bfx_game_key key = {
		.client = ip->saddr,
		.service = ip->daddr,
		.ports = (__u32)l4->sport | (__u32)l4->dport << 16,
	};
	struct bfx_game_client_set_locked *set;
	struct bfx_srcds_key okey = {};
	struct bfx_srcds_state *st;
	__u32 idx = bfx_game_set_index(&key), way;

	set = bpf_map_lookup_elem(&game_clients, &idx);
	if (!set)
		return 0;
	way = bfx_game_way(set, &key);
	if (way < BFX_GAME_CLIENT_WAYS) {
		st = &set->state[way & (BFX_GAME_CLIENT_WAYS - 1)];
	} else {
		if (!(set->flags & BFX_GAME_SET_OVERFLOW))
			return 0;
		bfx_game_overflow_key(&okey, &key);
		st = bpf_map_lookup_elem(&game_clients_overflow, &okey);
		if (!st)
			return 0;
	}
	if (!bfx_game_live(st, s))
		return 0;
	*own = st;
	return 1;
}

/*
 * Return path, a session reply (the server's game data to the client, which
 * a server sends only on a connection it made after the handshake): the
 * client is validated here too, which is how a client whose route moved to
 * this POP gets validated without a handshake (issue 13 deliver 2: its first
 * packets here came through on the rule's budget, fou_map learned the move,
 * and the server's replies now come this way). Most replies find the client
 * live already: a lockless check first, the locked insert only when not.
 */
static __always_inline void bfx_game_validate(const struct bfx_inner *in, const struct bfx_l4 *l4,
					      const struct bfx_settings *s);

static __always_inline void bfx_game_session(const struct bfx_inner *in, const struct bfx_l4 *l4,
					     const struct bfx_settings *s)
{
	struct bfx_game_key key = {
		.client = in->daddr,
		.service = in->saddr,
		.ports = (__u32)l4->dport | (__u32)l4->sport << 16,
	};
	struct bfx_game_client_set_locked *set;
	__u32 idx = bfx_game_set_index(&key), way;

	set = bpf_map_lookup_elem(&game_clients, &idx);
	if (!set)
		return;
	way = bfx_game_way(set, &key);
	if (way < BFX_GAME_CLIENT_WAYS &&
	    set->state[way & (BFX_GAME_CLIENT_WAYS - 1)].expires_ns > bfx_now(s))
		return;
	bfx_game_validate(in, l4, s);
}

/* Return path: the game server's reply proved the client's address: validate it. */
static __always_inline void bfx_game_validate(const struct bfx_inner *in, const struct bfx_l4 *l4,
					      const struct bfx_settings *s)
{
	struct bfx_game_key key = {
		.client = in->daddr,
		.service = in->saddr,
		.ports = (__u32)l4->dport | (__u32)l4->sport << 16,	/* as the client sends */
	};
	struct bfx_game_client_set_locked *set;
	struct bfx_srcds_key okey = {};
	struct bfx_srcds_state st = {};	/* last_ns 0: the bucket starts full */
	__u64 now = bfx_now(s);
	__u32 idx = bfx_game_set_index(&key), i, way;

	st.expires_ns = now + s->srcds_ttl_ns;
	set = bpf_map_lookup_elem(&game_clients, &idx);
	if (!set)
		return;
	bpf_spin_lock(&set->lock);
	/* Renew it where it is (live or not), else take the first free or expired way. */
	way = bfx_game_way(set, &key);
#pragma unroll
	for (i = 0; i < BFX_GAME_CLIENT_WAYS; i++)
		if (way == BFX_GAME_CLIENT_WAYS && set->state[i].expires_ns <= now)
			way = i;
	if (way < BFX_GAME_CLIENT_WAYS) {
		way &= BFX_GAME_CLIENT_WAYS - 1;
		if (set->client[way] != key.client || set->ports[way] != key.ports ||
		    set->service[way] != key.service) {
			/* A new client: the key, a full bucket, then the expiry. */
			set->client[way] = key.client;
			set->service[way] = key.service;
			set->ports[way] = key.ports;
			set->state[way].last_ns = 0;
			set->state[way].credit_ns = 0;
			/* A reader never sees a live half-written way. */
			asm volatile("" ::: "memory");
		}
		set->state[way].expires_ns = st.expires_ns;
		bpf_spin_unlock(&set->lock);
		return;
	}
	set->flags |= BFX_GAME_SET_OVERFLOW;
	bpf_spin_unlock(&set->lock);
	bfx_game_overflow_key(&okey, &key);
	bpf_map_update_elem(&game_clients_overflow, &okey, &st, BPF_ANY);
}

/* The payload's first n bytes are inside the packet: the verifier needs it per access. */
#define BFX_HAVE(p, n, data_end) ((void *)(p) + (n) <= (data_end))

#endif /* BIFROST_XDP_MODULE_GAME_CLIENTS_H */
