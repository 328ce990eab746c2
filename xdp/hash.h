/* SPDX-License-Identifier: GPL-2.0 */
/* The one integer hash of the program: flow ports and rule slots use it. */
#ifndef BIFROST_XDP_HASH_H
#define BIFROST_XDP_HASH_H

#include <linux/types.h>

/*
 * murmur3's 32-bit finalizer: a bijection that spreads every input bit over
 * the output, two multiplies. Mirrored in Python by maps_def.rule_slot_index
 * and by the tests' flow_port; those must change with it.
 */
static __always_inline __u32 bfx_fmix32(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6bU;
	h ^= h >> 13;
	h *= 0xc2b2ae35U;
	h ^= h >> 16;
	return h;
}

#endif /* BIFROST_XDP_HASH_H */
