/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The per-rule budget of packets from clients not validated (yet) at this
 * POP, which every module that validates from the return path shares: a
 * client's handshake, or the game data of a client validated at another POP
 * whose route moved here (issue 13 deliver 2). An aggregate per rule and
 * CPU, not a bucket per source: a spoofed flood of such packets reaches the
 * game server at no more than BFX_GAME_HANDSHAKE_PPS per CPU and inserts no
 * per-source state. game_clients.h includes it for every module.
 */
#ifndef BIFROST_XDP_MODULE_BUDGET_H
#define BIFROST_XDP_MODULE_BUDGET_H

#include "../maps.h"

/*
 * Handshake budget per rule and CPU: a token bucket in ns of credit, as
 * bfx_bucket_take() in pipeline.h (which comes after the modules).
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BFX_MAX_RULES + 1);
	__type(key, __u32);
	__type(value, struct bfx_rate_state);
} game_handshake_budget SEC(".maps");

#define BFX_GAME_HANDSHAKE_COST_NS (1000000000ULL / BFX_GAME_HANDSHAKE_PPS)
#define BFX_GAME_HANDSHAKE_BURST_NS (BFX_GAME_HANDSHAKE_COST_NS * BFX_GAME_HANDSHAKE_PPS)

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

#endif /* BIFROST_XDP_MODULE_BUDGET_H */
