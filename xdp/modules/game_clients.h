/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What the Rust, Steam-networking and Unreal modules share: the validated
 * clients and the budget of handshake packets from clients not validated yet.
 *
 * A client (address and port, of one service) is validated only by the
 * return path, when the game server's reply that proves the client's
 * address (RakNet open connection reply 2, Steam networking ConnectOK,
 * Unreal's challenge ack) passes through this POP: bfx_modules_return()
 * runs only after the return packet passed the game-server and relay checks
 * (and the FOU authentication), so an off-path spoofer cannot forge it.
 *
 * Until then, a client may send only well-formed handshake packets (each
 * module says which), and only within a per-rule aggregate budget: a flood
 * of spoofed handshakes reaches the game server at no more than
 * BFX_GAME_HANDSHAKE_PPS per CPU, and inserts no per-source state (the
 * budget is an array slot per rule, not a bucket per source).
 */
#ifndef BIFROST_XDP_MODULE_GAME_CLIENTS_H
#define BIFROST_XDP_MODULE_GAME_CLIENTS_H

#include "../maps.h"
#include "../parsing.h"

/*
 * Validated clients of every rule that enables rust, steam or ue3 (the key
 * names the service, so a validation holds for that service only). The
 * key and value are SRCDS's: the same thing, a client of a service and
 * its expiry (xdp.srcds_ttl_s, sliding with traffic, like SRCDS's).
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, BFX_MAX_GAME_CLIENTS);
	__type(key, struct bfx_srcds_key);
	__type(value, struct bfx_srcds_state);
} game_clients SEC(".maps");

/* Handshake budget per rule and CPU: a token bucket in ns of credit (see bfx_rate_ok). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BFX_MAX_RULES + 1);
	__type(key, __u32);
	__type(value, struct bfx_rate_state);
} game_handshake_budget SEC(".maps");

#define BFX_GAME_HANDSHAKE_COST_NS (1000000000ULL / BFX_GAME_HANDSHAKE_PPS)
#define BFX_GAME_HANDSHAKE_BURST_NS (BFX_GAME_HANDSHAKE_COST_NS * BFX_GAME_HANDSHAKE_PPS)

/* 1 when the sender of this forward packet is a validated client of its service. */
static __always_inline int bfx_game_validated(const struct iphdr *ip, const struct bfx_l4 *l4,
					      const struct bfx_settings *s)
{
	struct bfx_srcds_key key = {};
	struct bfx_srcds_state *st;
	__u64 now;

	key.client = ip->saddr;
	key.service = ip->daddr;
	key.client_port = bpf_ntohs(l4->sport);
	key.service_port = bpf_ntohs(l4->dport);
	st = bpf_map_lookup_elem(&game_clients, &key);
	if (!st)
		return 0;
	now = bfx_now(s);
	if (now >= st->expires_ns)
		return 0;
	/* Slide the expiry with traffic, but write only once per half TTL. */
	if (st->expires_ns - now < s->srcds_ttl_ns / 2)
		st->expires_ns = now + s->srcds_ttl_ns;
	return 1;
}

/* 1 when the rule's handshake budget on this CPU still has room for one packet. */
static __always_inline int bfx_game_budget_ok(__u32 rule_id, const struct bfx_settings *s)
{
	struct bfx_rate_state *b = bpf_map_lookup_elem(&game_handshake_budget, &rule_id);
	__u64 now, credit;

	if (!b)
		return 0;
	now = bfx_now(s);
	/* A fresh slot (last_ns 0) starts with a full bucket. */
	credit = b->credit_ns + (now > b->last_ns ? now - b->last_ns : 0);
	if (credit > BFX_GAME_HANDSHAKE_BURST_NS)
		credit = BFX_GAME_HANDSHAKE_BURST_NS;
	b->last_ns = now;
	if (credit < BFX_GAME_HANDSHAKE_COST_NS) {
		b->credit_ns = credit;
		return 0;
	}
	b->credit_ns = credit - BFX_GAME_HANDSHAKE_COST_NS;
	return 1;
}

/*
 * The forward decision of every module here: a validated client passes;
 * anyone else only with a well-formed handshake packet (handshake: the
 * module's verdict on this packet) and room in the rule's budget.
 */
static __always_inline int bfx_game_forward(int handshake, const struct iphdr *ip,
					    const struct bfx_l4 *l4, const struct bfx_settings *s,
					    __u32 rule_id)
{
	if (bfx_game_validated(ip, l4, s))
		return 1;
	return handshake && bfx_game_budget_ok(rule_id, s);
}

/* Return path: the game server's reply proved the client's address: validate it. */
static __always_inline void bfx_game_validate(const struct bfx_inner *in, const struct bfx_l4 *l4,
					      const struct bfx_settings *s)
{
	struct bfx_srcds_key key = {};
	struct bfx_srcds_state st;

	key.client = in->daddr;
	key.service = in->saddr;
	key.client_port = bpf_ntohs(l4->dport);
	key.service_port = bpf_ntohs(l4->sport);
	st.expires_ns = bfx_now(s) + s->srcds_ttl_ns;
	bpf_map_update_elem(&game_clients, &key, &st, BPF_ANY);
}

/* The payload's first n bytes are inside the packet: the verifier needs it per access. */
#define BFX_HAVE(p, n, data_end) ((void *)(p) + (n) <= (data_end))

#endif /* BIFROST_XDP_MODULE_GAME_CLIENTS_H */
