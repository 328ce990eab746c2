/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Game handshake modules. module_config.h (generated from [xdp].modules and
 * passed with -include by the build) defines one macro per module compiled
 * in; the rule_modules map then says which of them apply to a rule.
 *
 * Adding a module (Rust, UE3...): modules/<name>.h with a forward hook
 * (return 1 to let the packet through) and optionally a return-path hook,
 * a BFX_MOD_<NAME> bit in maps_def.py, its define in codegen's
 * GAME_MODULE_DEFINES, and one guarded call in each dispatcher below.
 */
#ifndef BIFROST_XDP_MODULES_H
#define BIFROST_XDP_MODULES_H

#include "../encap.h"
#include "../maps.h"
#include "../parsing.h"

#ifdef SRCDS_HANDSHAKE
#include "srcds.h"
#endif

/* The modules compiled into this object (what `bifrost_modules` reports to the loader). */
#ifdef SRCDS_HANDSHAKE
#define BFX_COMPILED_SRCDS BFX_MOD_SRCDS
#else
#define BFX_COMPILED_SRCDS 0
#endif
#define BFX_MODULES_COMPILED (BFX_COMPILED_SRCDS)

static __always_inline __u32 bfx_rule_module_bits(__u32 gen, __u32 rule_id)
{
	__u32 idx = gen * (BFX_MAX_RULES + 1) + rule_id;
	struct bfx_rule_modules *m = bpf_map_lookup_elem(&rule_modules, &idx);

	return m ? m->bits : 0;
}

/*
 * Forward path: 1 when every module that applies lets the packet through.
 * Runs before any per-source state is inserted (issue 10): a packet a module
 * drops costs no rate-limit bucket. *own: set to the validated client's state
 * (with its own rate bucket) when a module vouches for the source.
 */
static __always_inline int bfx_modules_forward(__u32 bits, const struct iphdr *ip,
					       const struct bfx_l4 *l4, void *data_end,
					       const struct bfx_settings *s,
					       struct bfx_srcds_state **own)
{
#ifdef SRCDS_HANDSHAKE
	if ((bits & BFX_MOD_SRCDS) && ip->protocol == IPPROTO_UDP &&
	    !bfx_srcds_forward(ip, l4, data_end, s, own))
		return 0;
#endif
	return 1;
}

/*
 * Return path: modules learn from what the server sends; called only for
 * authenticated FOU (issue 10: an off-path spoofer validates nobody).
 */
static __always_inline void bfx_modules_return(__u32 bits, const struct bfx_inner *in,
					       const struct bfx_l4 *l4, void *data_end,
					       const struct bfx_settings *s)
{
#ifdef SRCDS_HANDSHAKE
	if (bits & BFX_MOD_SRCDS)
		bfx_srcds_return(in, l4, data_end, s);
#endif
}

#endif /* BIFROST_XDP_MODULES_H */
