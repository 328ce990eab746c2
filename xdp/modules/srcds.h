/* SPDX-License-Identifier: GPL-2.0 */
/*
 * SRCDS handshake validation (compiled in with SRCDS_HANDSHAKE).
 *
 * Source engine handshake (protocols.md): client `q` -> server `A` -> client
 * `k` -> server `B` (connection accepted), all connectionless (FF FF FF FF);
 * then netchannel traffic without that prefix. The POP sees both directions,
 * so a client is validated when the server's `B` to it passes the return
 * path. Until then only connectionless packets reach the server, which is
 * what a netchannel flood from spoofed sources cannot get past. Only
 * authenticated FOU validates (the return path checks the token first), and
 * srcds_clients holds nothing else, so a spoofed flood evicts no client.
 */
#ifndef BIFROST_XDP_MODULE_SRCDS_H
#define BIFROST_XDP_MODULE_SRCDS_H

#include "../maps.h"
#include "../parsing.h"

/* S2C_CONNECTION: the server accepted the client. */
#define BFX_SRCDS_ACCEPT 'B'

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, BFX_MAX_SRCDS_CLIENTS);
	__type(key, struct bfx_srcds_key);
	__type(value, struct bfx_srcds_state);
} srcds_clients SEC(".maps");

/*
 * Forward path: 1 = let it through. A validated client's entry is returned in
 * *own: its rate bucket lives there, where unknown sources cannot evict it.
 */
static __always_inline int bfx_srcds_forward(const struct iphdr *ip, const struct bfx_l4 *l4,
					     void *data_end, const struct bfx_settings *s,
					     struct bfx_srcds_state **own)
{
	struct bfx_srcds_key key = {};
	struct bfx_srcds_state *st;
	__u64 now;

	if (bfx_is_connectionless(l4->payload, l4->payload_len, data_end))
		return 1;
	key.client = ip->saddr;
	key.service = ip->daddr;
	key.client_port = bpf_ntohs(l4->sport);
	key.service_port = bpf_ntohs(l4->dport);
	st = bpf_map_lookup_elem(&srcds_clients, &key);
	if (!st)
		return 0;
	now = bfx_now(s);
	if (now >= st->expires_ns)
		return 0;
	/* Slide the expiry with traffic, but write only once per half TTL. */
	if (st->expires_ns - now < s->srcds_ttl_ns / 2)
		st->expires_ns = now + s->srcds_ttl_ns;
	*own = st;
	return 1;
}

/* Return path (inner packet service -> client): validate on the server's accept. */
static __always_inline void bfx_srcds_return(const struct bfx_inner *in, const struct bfx_l4 *l4,
					     void *data_end, const struct bfx_settings *s)
{
	struct bfx_srcds_key key = {};
	struct bfx_srcds_state st = {};	/* last_ns 0: the bucket starts full */
	void *p = l4->payload;

	if (in->proto != IPPROTO_UDP || l4->payload_len < 5 || p + 5 > data_end)
		return;
	if (*(__u32 *)p != BFX_CONNECTIONLESS || *(__u8 *)(p + 4) != BFX_SRCDS_ACCEPT)
		return;
	key.client = in->daddr;
	key.service = in->saddr;
	key.client_port = bpf_ntohs(l4->dport);
	key.service_port = bpf_ntohs(l4->sport);
	st.expires_ns = bfx_now(s) + s->srcds_ttl_ns;
	bpf_map_update_elem(&srcds_clients, &key, &st, BPF_ANY);
}

#endif /* BIFROST_XDP_MODULE_SRCDS_H */
