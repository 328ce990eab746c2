/* SPDX-License-Identifier: GPL-2.0 */
/*
 * SRCDS handshake validation (compiled in with SRCDS_HANDSHAKE).
 *
 * Source engine handshake (protocols.md): client `q` -> server `A` -> client
 * `k` -> server `B` (connection accepted), all connectionless (FF FF FF FF);
 * then netchannel traffic without that prefix. The POP sees both directions,
 * so a client is validated when the server's `B` to it passes the return
 * path. Until then connectionless packets reach the server, and well-formed
 * netchannel packets only within the rule's budget (budget.h): that is
 * what a client validated at another POP sends when its route moves here
 * (issue 13 deliver 2). Its packets reach the server, fou_map learns the
 * move, and the server's netchannel replies, which it sends only on a
 * connection it accepted, validate the client here. A spoofed netchannel
 * flood gets no more than the budget through. Only authenticated FOU
 * validates (the return path checks the token first), and the validated
 * clients live in game_clients (game_clients.h), which the other modules
 * share: an array of sets the verifier inlines, where the LRU hash SRCDS
 * had (srcds_clients, which an upgrade migrates: loader.py) cost a helper
 * call per forward packet. Nothing unauthenticated inserts there, so a
 * spoofed flood evicts no client.
 */
#ifndef BIFROST_XDP_MODULE_SRCDS_H
#define BIFROST_XDP_MODULE_SRCDS_H

#include "../maps.h"
#include "../parsing.h"
#include "game_clients.h"

/* S2C_CONNECTION: the server accepted the client. */
#define BFX_SRCDS_ACCEPT 'B'
/*
 * A netchannel datagram's header (Source engine net_chan.cpp,
 * CNetChan::ProcessPacketHeader): sequence (4), ack (4), flags (1), the
 * checksum (2: ShouldChecksumPackets() holds for every multiplayer game)
 * and the reliable state (1). The largest one fits the game server's
 * Ethernet MTU with the FOU header.
 */
#define BFX_SRCDS_NETCHAN_MIN 12
#define BFX_SRCDS_NETCHAN_MAX (1500 - 28 - 28)

/*
 * Forward path: 1 = let it through. A validated client's state is returned in
 * *own: its rate bucket lives there, where unknown sources cannot evict it.
 */
static __always_inline int bfx_srcds_forward(const struct iphdr *ip, const struct bfx_l4 *l4,
					     void *data_end, const struct bfx_settings *s,
					     __u32 rule_id, struct bfx_srcds_state **own)
{
	if (bfx_is_connectionless(l4->payload, l4->payload_len, data_end) ||
	    bfx_game_validated(ip, l4, s, own))
		return 1;
	/* Not validated here: a client whose route moved, within the budget. */
	if (l4->payload_len < BFX_SRCDS_NETCHAN_MIN || l4->payload_len > BFX_SRCDS_NETCHAN_MAX)
		return 0;
	return bfx_game_budget_ok(rule_id, s);
}

/*
 * Return path (inner packet service -> client): validate on the server's
 * accept, or on its netchannel data, which it sends only on a connection it
 * accepted (a client whose route moved here; bfx_game_session() looks
 * before it locks, as most replies find the client live already).
 */
static __always_inline void bfx_srcds_return(const struct bfx_inner *in, const struct bfx_l4 *l4,
					     void *data_end, const struct bfx_settings *s)
{
	void *p = l4->payload;

	if (in->proto != IPPROTO_UDP || l4->payload_len < 5 || p + 5 > data_end)
		return;
	if (*(__u32 *)p == BFX_CONNECTIONLESS) {
		if (*(__u8 *)(p + 4) == BFX_SRCDS_ACCEPT)
			bfx_game_validate(in, l4, s);
	} else if (l4->payload_len >= BFX_SRCDS_NETCHAN_MIN) {
		bfx_game_session(in, l4, s);
	}
}

#endif /* BIFROST_XDP_MODULE_SRCDS_H */
