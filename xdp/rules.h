/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Forward-rule lookup: (anycast address, port, proto) -> rule, through the
 * direct-mapped rule_slots table (see maps.h). Used by the forward path with
 * the packet's destination and by the return path with the inner source.
 */
#ifndef BIFROST_XDP_RULES_H
#define BIFROST_XDP_RULES_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "hash.h"
#include "maps.h"

/*
 * murmur3's finalizer (hash.h) over the key; maps_def.rule_slot_index() is the same
 * function in Python and the two must not drift (tests/bpf places colliding
 * keys with it and checks the program finds them). addr is network order as
 * loaded from the packet.
 */
static __always_inline __u32 bfx_rule_hash(__be32 addr, __u16 port, __u8 proto)
{
	__u32 h = addr ^ ((((__u32)port << 8) | proto) * 0x9e3779b1U);

	return bfx_fmix32(h) & (BFX_RULE_SLOTS - 1);
}

static __always_inline struct bfx_rule *bfx_rule_find(__u32 gen, __be32 addr, __u16 port,
						      __u8 proto)
{
	__u32 idx = gen * BFX_RULE_SLOTS + bfx_rule_hash(addr, port, proto);
	struct bfx_rule_slot *slot = bpf_map_lookup_elem(&rule_slots, &idx);
	struct bfx_rule *rule;
	__u32 id;

	if (!slot)
		return NULL;
	if (bfx_likely(slot->addr == addr && slot->port == port && slot->proto == proto)) {
		id = slot->rule_id;
	} else if (slot->flags & BFX_SLOT_OVERFLOW) {
		struct bfx_rule_key key = { .addr = addr, .port = port, .proto = proto, .gen = gen };
		struct bfx_rule_ref *ref = bpf_map_lookup_elem(&rule_overflow, &key);

		if (!ref)
			return NULL;
		id = ref->rule_id;
	} else {
		return NULL;
	}
	id += gen * (BFX_MAX_RULES + 1);
	rule = bpf_map_lookup_elem(&rules, &id);
	/* id 0 or a rule the loader is removing: no rule. */
	return rule && rule->id ? rule : NULL;
}

/*
 * Whether addr is an anycast (BFX_ADDR_ANYCAST) or a game-server
 * (BFX_ADDR_GAMESERVER) address in generation gen: one inlined load from the
 * small addr_slots table; a hash lookup only when its slot overflowed.
 * maps_def.addr_slot_index() is the same hash in Python.
 */
static __always_inline int bfx_addr_is(__u32 gen, __be32 addr, __u32 kind)
{
	__u32 idx = gen * BFX_ADDR_SLOTS + (bfx_fmix32(addr) & (BFX_ADDR_SLOTS - 1));
	struct bfx_addr_slot *slot = bpf_map_lookup_elem(&addr_slots, &idx);

	if (!slot)
		return 0;
	if (slot->addr == addr)
		return !!(slot->flags & kind);
	if (!(slot->flags & BFX_SLOT_OVERFLOW))
		return 0;
	if (kind == BFX_ADDR_ANYCAST)
		return bfx_in_gen(bpf_map_lookup_elem(&anycast, &addr), gen);
	return bfx_in_gen(bpf_map_lookup_elem(&gameservers, &addr), gen);
}

/* The rule of generation gen for the key (see config_gen in maps.h). */
static __always_inline struct bfx_rule *bfx_rule_lookup(__u32 gen, __be32 addr, __u16 port,
							__u8 proto)
{
	struct bfx_rule *rule = bfx_rule_find(gen, addr, port, proto);

	if (bfx_likely(rule))
		return rule;
	/* A whole-address rule is stored with port 0. */
	return bfx_rule_find(gen, addr, 0, proto);
}

#endif /* BIFROST_XDP_RULES_H */
