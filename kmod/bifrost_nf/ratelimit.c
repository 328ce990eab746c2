// SPDX-License-Identifier: GPL-2.0
/*
 * Per-source query rate limit: a token bucket in GCRA form (one timestamp per
 * source) in a fixed, direct-mapped table, so memory stays bounded whatever
 * the number of sources. A source that lands on a slot held by another takes
 * it over only when that bucket has drained (its theoretical arrival time is
 * past); until then the two share the bucket. Letting a newcomer reset a busy
 * bucket would let a spoofer who churns sources (or a flood that collides)
 * wipe every source's history, so nobody would ever be limited. Slots are
 * updated without a lock; a race only makes the limit slightly loose.
 */
#include <linux/hash.h>
#include <linux/jhash.h>
#include <linux/random.h>
#include <linux/slab.h>

#include "bfnf.h"

int bfnf_rl_init(struct bfnf_net *bn)
{
	struct bfnf_rl_slot *rl;

	if (bn->rl)
		return 0;
	rl = kvcalloc(BFNF_RL_SLOTS, sizeof(*rl), GFP_KERNEL);
	if (!rl)
		return -ENOMEM;
	bn->rl_seed = get_random_u32();
	WRITE_ONCE(bn->rl, rl);
	return 0;
}

void bfnf_rl_free(struct bfnf_net *bn)
{
	kvfree(bn->rl);
	bn->rl = NULL;
}

bool bfnf_rl_allow(struct bfnf_net *bn, __be32 saddr, u64 now)
{
	u32 rate = READ_ONCE(bn->rate_pps);
	u32 burst = max(READ_ONCE(bn->rate_burst), 1U);
	struct bfnf_rl_slot *slot;
	u64 interval, tat;

	if (!rate || !bn->rl)
		return true;
	interval = div_u64(NSEC_PER_SEC, rate);
	slot = &bn->rl[hash_32(jhash_1word((__force u32)saddr, bn->rl_seed), BFNF_RL_BITS)];
	tat = READ_ONCE(slot->tat_ns);
	if ((s64)(tat - now) <= 0) {
		/* drained: whoever held it has nothing left to remember */
		tat = now;
		if (READ_ONCE(slot->addr) != (__force u32)saddr)
			WRITE_ONCE(slot->addr, (__force u32)saddr);
	}
	if (tat - now >= (u64)burst * interval)
		return false;
	WRITE_ONCE(slot->tat_ns, tat + interval);
	return true;
}
