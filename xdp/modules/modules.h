/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Game handshake modules. module_config.h (generated from [xdp].modules and
 * passed with -include by the build) defines one macro per module compiled
 * in; the rule_modules map then says which of them apply to a rule.
 *
 * Adding a module: modules/<name>.h with a forward hook (return 1 to let
 * the packet through) and optionally a return-path hook, a GameModule
 * (name, BFX_MOD_<NAME> bit, define) in maps_def.GAME_MODULES, its maps in
 * maps.MAP_SPECS, and one guarded call in each dispatcher below. Modules
 * that validate clients from the return path share game_clients.h.
 */
#ifndef BIFROST_XDP_MODULES_H
#define BIFROST_XDP_MODULES_H

#include "../encap.h"
#include "../maps.h"
#include "../parsing.h"

#ifdef SRCDS_HANDSHAKE
#include "srcds.h"
#endif
#ifdef RUST_HANDSHAKE
#include "rust.h"
#endif
#ifdef STEAM_HANDSHAKE
#include "steam.h"
#endif
#ifdef UE3_HANDSHAKE
#include "ue.h"
#endif

/* The modules compiled into this object (what `bifrost_modules` reports to the loader). */
#ifdef SRCDS_HANDSHAKE
#define BFX_COMPILED_SRCDS BFX_MOD_SRCDS
#else
#define BFX_COMPILED_SRCDS 0
#endif
#ifdef RUST_HANDSHAKE
#define BFX_COMPILED_RUST BFX_MOD_RUST
#else
#define BFX_COMPILED_RUST 0
#endif
#ifdef STEAM_HANDSHAKE
#define BFX_COMPILED_STEAM BFX_MOD_STEAM
#else
#define BFX_COMPILED_STEAM 0
#endif
#ifdef UE3_HANDSHAKE
#define BFX_COMPILED_UE3 BFX_MOD_UE3
#else
#define BFX_COMPILED_UE3 0
#endif
#define BFX_MODULES_COMPILED \
	(BFX_COMPILED_SRCDS | BFX_COMPILED_RUST | BFX_COMPILED_STEAM | BFX_COMPILED_UE3)

static __always_inline __u32 bfx_rule_module_bits(__u32 gen, __u32 rule_id)
{
	__u32 idx = gen * (BFX_MAX_RULES + 1) + rule_id;
	struct bfx_rule_modules *m = bpf_map_lookup_elem(&rule_modules, &idx);

	return m ? m->bits : 0;
}

/*
 * Forward path: 1 when every module that applies lets the packet through.
 * Runs before any per-source state is inserted (issue 10): a packet a module
 * drops costs no rate-limit bucket, and the modules insert none on this path
 * (the handshake budget of rust, steam, ue3 is per rule). *own: set to the
 * validated client's state (with its own rate bucket) when a module vouches
 * for the source.
 */
static __always_inline int bfx_modules_forward(__u32 bits, const struct iphdr *ip,
					       const struct bfx_l4 *l4, void *data_end,
					       const struct bfx_settings *s, __u32 rule_id,
					       struct bfx_srcds_state **own)
{
#ifdef SRCDS_HANDSHAKE
	if ((bits & BFX_MOD_SRCDS) && ip->protocol == IPPROTO_UDP &&
	    !bfx_srcds_forward(ip, l4, data_end, s, rule_id, own))
		return 0;
#endif
#ifdef RUST_HANDSHAKE
	if ((bits & BFX_MOD_RUST) && ip->protocol == IPPROTO_UDP &&
	    !bfx_rust_forward(ip, l4, data_end, s, rule_id, own))
		return 0;
#endif
#ifdef STEAM_HANDSHAKE
	if ((bits & BFX_MOD_STEAM) && ip->protocol == IPPROTO_UDP &&
	    !bfx_steam_forward(ip, l4, data_end, s, rule_id, own))
		return 0;
#endif
#ifdef UE3_HANDSHAKE
	if ((bits & BFX_MOD_UE3) && ip->protocol == IPPROTO_UDP &&
	    !bfx_ue_forward(ip, l4, data_end, s, rule_id, own))
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
#ifdef RUST_HANDSHAKE
	if ((bits & BFX_MOD_RUST) && in->proto == IPPROTO_UDP)
		bfx_rust_return(in, l4, data_end, s);
#endif
#ifdef STEAM_HANDSHAKE
	if ((bits & BFX_MOD_STEAM) && in->proto == IPPROTO_UDP)
		bfx_steam_return(in, l4, data_end, s);
#endif
#ifdef UE3_HANDSHAKE
	if ((bits & BFX_MOD_UE3) && in->proto == IPPROTO_UDP)
		bfx_ue_return(in, l4, data_end, s);
#endif
}

#endif /* BIFROST_XDP_MODULES_H */
