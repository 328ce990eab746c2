/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The POP's per-packet pipeline, as one inline function so the production
 * program (bifrost_xdp.bpf.c) and the bench wrapper (bench/) run the same code.
 *
 *   IPv6               -> settings.ipv6_policy
 *   not IPv4           -> PASS (ARP...)
 *   to POP:fou_port    -> return path: known game server, authenticated (auth
 *                         on), inner source is a service forwarded to it,
 *                         destination not martian -> decap -> TX to client
 *   to an anycast addr -> fragments, malformed, no rule: DROP
 *                         martian source, block/allow lists, game modules,
 *                         rate limit (flood mode: no new per-source state)
 *                         A2S query to a caching rule -> PASS (bifrost_nf)
 *                         else FOU encap -> TX to the game server
 *   anything else      -> PASS (the host's own traffic)
 *
 * Every exit goes through bfx_count(), so the counters account for every packet.
 */
#ifndef BIFROST_XDP_PIPELINE_H
#define BIFROST_XDP_PIPELINE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "encap.h"
#include "hash.h"
#include "icmp.h"
#include "maps.h"
#include "modules/modules.h"
#include "mss.h"
#include "parsing.h"
#include "rules.h"
#include "vlan.h"

/* The firewall's verdict for a source in generation gen: BFX_FW_ALLOW, BFX_FW_BLOCK or 0. */
static __always_inline __u32 bfx_firewall(__u32 gen, __be32 addr)
{
	struct bfx_lpm_key key = { .prefixlen = 32, .addr = addr };
	__u32 *value = bpf_map_lookup_elem(&firewall, &key);

	if (!value)
		return 0;
	return (*value >> (gen * BFX_FW_GEN_BITS)) & BFX_FW_VERDICT_MASK;
}

/*
 * 0/8, 127/8, 224/4 (multicast) and 240/4 (reserved, 255.255.255.255 with
 * it): never a client's address; the kernel's input routing drops them as
 * martians, and so does the program, both ways (issue 10).
 */
static __always_inline int bfx_martian(__be32 addr)
{
	__u32 top = bpf_ntohl(addr) >> 24;

	return top == 0 || top == 127 || top >= 224;
}

/*
 * A token bucket in nanoseconds of credit: a packet costs cost_ns, the bucket
 * holds burst_ns. No multiplication on the packet path, so nothing overflows.
 * A bucket whose last_ns is 0 is full. Updates race between CPUs; a client's
 * flow normally stays on one RX queue, and an approximate limit is fine.
 */
static __always_inline int bfx_bucket_take(__u64 *last_ns, __u64 *credit_ns, __u64 now,
					   __u64 cost_ns, __u64 burst_ns)
{
	__u64 credit = *credit_ns + (now > *last_ns ? now - *last_ns : 0);

	if (credit > burst_ns)
		credit = burst_ns;
	*last_ns = now;
	if (credit < cost_ns) {
		*credit_ns = credit;
		return 0;
	}
	*credit_ns = credit - cost_ns;
	return 1;
}

#define BFX_NS_PER_SEC 1000000000ULL

/*
 * Flood mode, as katran does it: is_under_flood() in katran's
 * lib/bpf/balancer.bpf.c counts new connections per CPU in a one-second
 * window and, above MAX_CONN_RATE (balancer_consts.h), bypasses its LRU
 * update. Here: sources without a bucket, per CPU per second, above
 * settings.flood_new_sources; then no bucket is inserted, so a spoofed-source
 * flood cannot churn the rate_limit LRU, and its packets are charged to the
 * rule's aggregate budget instead (bfx_rate_check()).
 */
static __always_inline int bfx_under_flood(const struct bfx_settings *s, __u64 now)
{
	__u32 zero = 0;
	struct bfx_flood_state *f = bpf_map_lookup_elem(&flood, &zero);

	if (!f)
		return 1;
	if (now - f->window_ns > BFX_NS_PER_SEC) {
		f->window_ns = now;
		f->new_sources = 1;
		return 0;
	}
	return ++f->new_sources > s->flood_new_sources;
}

enum bfx_rate { BFX_RATE_OK, BFX_RATE_OVER, BFX_RATE_FLOOD };

/* The rate_known word and bit of a (source, rule). */
static __always_inline __u64 *bfx_known_word(__be32 src, __u32 rule_id, __u64 *bit)
{
	__u32 h = bfx_fmix32(src ^ (rule_id * 0x9e3779b1U)) & (BFX_RATE_FILTER_BITS - 1);
	__u32 word = h / 64;

	*bit = 1ULL << (h % 64);
	return bpf_map_lookup_elem(&rate_known, &word);
}

/*
 * The rule's rate limit for this source: the validated client's own bucket
 * (own, from a module), else its bucket in rate_limit, else (a new source) a
 * fresh bucket, or in flood mode a share of the rule's aggregate budget.
 */
static __always_inline enum bfx_rate bfx_rate_check(__be32 src, const struct bfx_rule *rule,
						    const struct bfx_settings *s,
						    struct bfx_srcds_state *own)
{
	struct bfx_rate_key key = { .src = src, .rule_id = rule->id };
	struct bfx_rate_state *st = NULL, fresh;
	__u64 now = bfx_now(s), bit, *known;
	__u32 id = rule->id;

	if (own)
		return bfx_bucket_take(&own->last_ns, &own->credit_ns, now, rule->rate_cost_ns,
				       rule->rate_burst_ns) ? BFX_RATE_OK : BFX_RATE_OVER;
	/* A clear bit in rate_known: no bucket to look for. */
	known = bfx_known_word(src, rule->id, &bit);
	if (!known || (*known & bit))
		st = bpf_map_lookup_elem(&rate_limit, &key);
	if (st)
		return bfx_bucket_take(&st->last_ns, &st->credit_ns, now, rule->rate_cost_ns,
				       rule->rate_burst_ns) ? BFX_RATE_OK : BFX_RATE_OVER;
	if (bfx_under_flood(s, now)) {
		st = bpf_map_lookup_elem(&flood_budget, &id);
		if (st && bfx_bucket_take(&st->last_ns, &st->credit_ns, now, s->flood_cost_ns,
					  s->flood_burst_ns))
			return BFX_RATE_OK;
		return BFX_RATE_FLOOD;
	}
	fresh.last_ns = now;
	fresh.credit_ns = rule->rate_burst_ns - rule->rate_cost_ns;
	bpf_map_update_elem(&rate_limit, &key, &fresh, BPF_ANY);
	if (known && !(*known & bit))
		__sync_fetch_and_or(known, bit);
	return BFX_RATE_OK;
}

/*
 * Transmit and count. What the program can observe of a failure is only
 * bpf_redirect's return value, which is XDP_ABORTED for bad flags alone; a
 * full TX ring, a down device or one without ndo_xdp_xmit fail after the
 * program returned (tracepoints xdp:xdp_exception, xdp:xdp_redirect_err,
 * and the driver's own counters), so those stay counted as transmitted.
 */
static __always_inline int bfx_send(struct xdp_md *ctx, const struct bfx_nexthop *nh, __u32 id,
				    __u32 reason, __u32 bytes)
{
	int act = bfx_transmit(ctx, nh);

	if (bfx_unlikely(act != XDP_TX && act != XDP_REDIRECT))
		return bfx_count(id, BFX_DROP_REDIRECT, bytes, XDP_DROP);
	return bfx_count(id, reason, bytes, act);
}

static __always_inline void bfx_inner_from(struct bfx_inner *in, const struct iphdr *ip,
					   const struct bfx_l4 *l4)
{
	in->saddr = ip->saddr;
	in->daddr = ip->daddr;
	in->ports = ((__u32)l4->dport << 16) | l4->sport;
	in->tot_len = bpf_ntohs(ip->tot_len);
	in->frag_off = ip->frag_off;
	in->tos = ip->tos;
	in->proto = ip->protocol;
	in->id = ip->id;
}

/*
 * The MSS that fits the tunnel to a rule's game server, for the return
 * path's SYN-ACK: the path MTU the forward path last learned for it (its
 * gs_nexthops slot) or tunnel_mtu, less FOU, the token and 40 (RFC 6691).
 */
static __always_inline __u16 bfx_tunnel_mss(const struct bfx_rule *rule,
					    const struct bfx_settings *s)
{
	__u32 slot = rule->gs_slot, mtu = 0xffff;
	struct bfx_nexthop *nh = bpf_map_lookup_elem(&gs_nexthops, &slot);

	if (nh && nh->mtu)
		mtu = nh->mtu;
	if (s->tunnel_mtu < mtu)
		mtu = s->tunnel_mtu;
	mtu -= BFX_FOU_OVERHEAD + BFX_MSS_OVERHEAD;
	if (s->flags & BFX_SET_AUTH)
		mtu -= BFX_AUTH_KEY_BYTES;
	return mtu;
}

/* FOU from a game-server machine to the POP's FOU port: decapsulate to the client. */
static __always_inline int bfx_return_path(struct xdp_md *ctx, struct ethhdr *eth,
					   struct iphdr *ip, struct udphdr *udp, void *data_end,
					   const struct bfx_settings *s, __u32 gen, __u32 bytes)
{
	enum bfx_nh_result res;
	struct bfx_nexthop *nh, keep_macs = {}, nh_copy;
	struct bfx_rule *rule;
	struct bfx_inner in;
	struct bfx_l4 l4;
	struct iphdr *inner = (void *)(udp + 1);
	__u32 ihl, inner_len, udp_len = bpf_ntohs(udp->len);
	int auth = s->flags & BFX_SET_AUTH;

	if (!bfx_addr_is(gen, ip->saddr, BFX_ADDR_GAMESERVER))
		return bfx_count(0, BFX_DROP_UNKNOWN_GS, bytes, XDP_DROP);
	/* The kernel's ipip/fou transmit path never writes outer options. */
	if (ip->ihl != 5 || udp_len < sizeof(*udp) + sizeof(*inner) ||
	    udp_len > bpf_ntohs(ip->tot_len) - sizeof(*ip))
		return bfx_count(0, BFX_DROP_MALFORMED, bytes, XDP_DROP);
	ihl = bfx_ipv4_check(inner, data_end);
	if (!ihl)
		return bfx_count(0, BFX_DROP_MALFORMED, bytes, XDP_DROP);
	inner_len = bfx_load_be16(&inner->tot_len);
	if (inner_len > udp_len - sizeof(*udp))
		return bfx_count(0, BFX_DROP_MALFORMED, bytes, XDP_DROP);
	/*
	 * Authenticated FOU (AUTH.md): the token is exactly the 8 bytes after the
	 * inner packet and must be an accepted key. Before anything is learned.
	 */
	if (auth && (udp_len != sizeof(*udp) + inner_len + BFX_AUTH_KEY_BYTES ||
		     !bfx_auth_ok(s, (void *)inner + (inner_len & 0x3fff), data_end)))
		return bfx_count(0, BFX_DROP_AUTH, bytes, XDP_DROP);
	if (inner->frag_off & bpf_htons(BFX_IP_FRAG_MASK))
		return bfx_count(0, BFX_DROP_FRAGMENT, bytes, XDP_DROP);
	if (inner->protocol != IPPROTO_UDP && inner->protocol != IPPROTO_TCP)
		return bfx_count(0, BFX_DROP_RELAY, bytes, XDP_DROP);
	if (!bfx_l4_parse(inner, ihl, data_end, &l4))
		return bfx_count(0, BFX_DROP_MALFORMED, bytes, XDP_DROP);

	/* No open relay: the inner source must be a service forwarded to this machine. */
	rule = bfx_rule_lookup(gen, inner->saddr, bpf_ntohs(l4.sport), inner->protocol);
	if (!rule || rule->gs_addr != ip->saddr)
		return bfx_count(0, BFX_DROP_RELAY, bytes, XDP_DROP);

	/*
	 * No reflection to what the kernel's input routing would drop: martian
	 * destinations, the POP itself, and game-server machines (the sender too).
	 */
	if (bfx_martian(inner->daddr) || inner->daddr == s->pop_addr ||
	    bfx_addr_is(gen, inner->daddr, BFX_ADDR_GAMESERVER))
		return bfx_count(rule->id, BFX_DROP_MARTIAN, bytes, XDP_DROP);

	if (inner->protocol == IPPROTO_TCP && bfx_is_syn(l4.hdr, data_end))
		bfx_clamp_mss(ctx, sizeof(*eth) + BFX_FOU_OVERHEAD + ihl, bfx_tunnel_mss(rule, s));
	bfx_inner_from(&in, inner, &l4);
	/* Modules validate clients only from authenticated traffic (issue 10). */
	if (auth)
		bfx_modules_return(bfx_rule_module_bits(gen, rule->id), &in, &l4, data_end, s);
	else
		inner_len = 0;	/* decap keeps the tail as it is */

	nh = bfx_nexthop(ctx, in.saddr, in.daddr, s, &res, &nh_copy);
	if (res == BFX_NH_NEIGH) {
		/* Hand the decapsulated packet to the stack, still addressed to us. */
		__builtin_memcpy(keep_macs.dmac, eth->h_dest, ETH_ALEN);
		__builtin_memcpy(keep_macs.smac, eth->h_source, ETH_ALEN);
		if (bfx_fou_decap(ctx, &keep_macs, inner_len))
			return bfx_count(rule->id, BFX_DROP_ENCAP, bytes, XDP_DROP);
		return bfx_count(rule->id, BFX_PASS_RETURN_NEIGH, bytes, XDP_PASS);
	}
	if (!nh)
		return bfx_count(rule->id, bfx_nh_drop_reason(res), bytes, XDP_DROP);
	if (bfx_fou_decap(ctx, nh, inner_len))
		return bfx_count(rule->id, BFX_DROP_ENCAP, bytes, XDP_DROP);
	return bfx_send(ctx, nh, rule->id, BFX_TX_RETURN, bytes);
}

/*
 * A forwarded packet that would exceed the path MTU once encapsulated. With
 * DF set (the sender does path MTU discovery) and within the reply budget:
 * ICMP fragmentation needed announcing inner_mtu, the largest inner packet
 * that fits (xdp/icmp.h). Otherwise dropped: XDP cannot fragment.
 */
static __always_inline int bfx_too_big(struct xdp_md *ctx, const struct bfx_inner *in, __u32 ihl,
				       __u32 inner_mtu, const struct bfx_settings *s, __u32 id,
				       __u32 bytes)
{
	if (!(in->frag_off & bpf_htons(BFX_IP_DF)) || ihl != 5 || inner_mtu < 68 ||
	    !bfx_icmp_budget(bfx_now(s), BFX_ICMP_BUDGET_REPLY))
		return bfx_count(id, BFX_DROP_TOO_BIG, bytes, XDP_DROP);
	if (bfx_icmp_too_big(ctx, inner_mtu))
		return bfx_count(id, BFX_DROP_TOO_BIG, bytes, XDP_DROP);
	return bfx_count(id, BFX_TX_ICMP_TOO_BIG, bytes, XDP_TX);
}

/* Traffic to an anycast service covered by a rule. */
static __always_inline int bfx_forward_path(struct xdp_md *ctx, struct ethhdr *eth,
					    struct iphdr *ip, const struct bfx_l4 *l4,
					    const struct bfx_rule *rule, void *data_end,
					    const struct bfx_settings *s, __u32 gen, __u32 bytes)
{
	enum bfx_nh_result res;
	struct bfx_srcds_state *own = NULL;
	struct bfx_nexthop *nh;
	struct bfx_inner in;
	__u32 id = rule->id;
	__u32 bits, fw = 0, trailer = 0, mtu, len;
	enum bfx_rate rate;

	/* A client is never martian, the POP itself or an anycast service. */
	if (bfx_unlikely(bfx_martian(ip->saddr) || ip->saddr == s->pop_addr ||
			 bfx_addr_is(gen, ip->saddr, BFX_ADDR_ANYCAST)))
		return bfx_count(id, BFX_DROP_MARTIAN, bytes, XDP_DROP);
	if (s->flags & BFX_SET_HAVE_FIREWALL)
		fw = bfx_firewall(gen, ip->saddr);
	if (bfx_unlikely(fw == BFX_FW_BLOCK))
		return bfx_count(id, BFX_DROP_BLOCKED, bytes, XDP_DROP);

	/* Modules before the rate limit: what they drop inserts no per-source state. */
	bits = bfx_rule_module_bits(gen, id);
	if (bits && !bfx_modules_forward(bits, ip, l4, data_end, s, id, &own))
		return bfx_count(id, BFX_DROP_MODULE, bytes, XDP_DROP);
	if (fw != BFX_FW_ALLOW && rule->rate_cost_ns) {
		rate = bfx_rate_check(ip->saddr, rule, s, own);
		if (rate == BFX_RATE_OVER)
			return bfx_count(id, BFX_DROP_RATE_LIMIT, bytes, XDP_DROP);
		if (rate == BFX_RATE_FLOOD)
			return bfx_count(id, BFX_DROP_FLOOD, bytes, XDP_DROP);
	}

	if ((rule->flags & BFX_RULE_CACHE) && ip->protocol == IPPROTO_UDP &&
	    bfx_is_a2s_query(l4->payload, l4->payload_len, data_end))
		return bfx_count(id, BFX_PASS_CACHE, bytes, XDP_PASS);

	bfx_inner_from(&in, ip, l4);
	if (s->flags & BFX_SET_AUTH)
		trailer = BFX_AUTH_KEY_BYTES;
	if (in.tot_len > 0xffff - BFX_FOU_OVERHEAD - trailer)
		return bfx_count(id, BFX_DROP_TOO_BIG, bytes, XDP_DROP);

	nh = bfx_gs_nexthop(ctx, rule->gs_slot, s->pop_addr, rule->gs_addr, s, &res);
	/*
	 * The stack cannot take this one over: the outer source is the POP's own
	 * address, which the stack drops as martian on input. The loader makes the
	 * game servers' neighbour entries managed instead, which the kernel keeps
	 * resolved (loader.manage_neighbours).
	 */
	if (bfx_unlikely(res == BFX_NH_NEIGH))
		return bfx_count(id, BFX_DROP_NO_NEIGH, bytes, XDP_DROP);
	if (bfx_unlikely(!nh))
		return bfx_count(id, bfx_nh_drop_reason(res), bytes, XDP_DROP);
	/* Two compares, not a min(): the common packet is far below both. */
	len = in.tot_len + BFX_FOU_OVERHEAD + trailer;
	if (bfx_unlikely(len > nh->mtu || len > s->tunnel_mtu)) {
		mtu = nh->mtu < s->tunnel_mtu ? nh->mtu : s->tunnel_mtu;
		return bfx_too_big(ctx, &in, ip->ihl, mtu - BFX_FOU_OVERHEAD - trailer, s, id, bytes);
	}
	if (bfx_unlikely(in.proto == IPPROTO_TCP) && bfx_is_syn(l4->hdr, data_end)) {
		mtu = nh->mtu < s->tunnel_mtu ? nh->mtu : s->tunnel_mtu;
		bfx_clamp_mss(ctx, sizeof(*eth) + ip->ihl * 4,
			      mtu - BFX_FOU_OVERHEAD - trailer - BFX_MSS_OVERHEAD);
	}
	if (bfx_fou_encap(ctx, &in, nh, s->pop_addr, rule->gs_addr, rule->fou_port,
			  trailer, *(const __u64 *)s->auth_keys))
		return bfx_count(id, BFX_DROP_ENCAP, bytes, XDP_DROP);
	return bfx_send(ctx, nh, id, BFX_TX_FORWARD, bytes);
}

/*
 * An ICMP message to an anycast address (no rule covers ICMP). An error
 * quoting a datagram a rule's service sent goes to that rule's game server,
 * encapsulated like forwarded traffic, within a per-CPU budget (a spoofer
 * can make these up: the budget bounds what reaches the game servers, and
 * a blocked or martian source is refused as on the forward path). Other
 * errors: drop_icmp_error; anything else ICMP: drop_no_rule, as before.
 */
static __always_inline int bfx_icmp_to_anycast(struct xdp_md *ctx, struct iphdr *ip, __u32 ihl,
					       void *data_end, const struct bfx_settings *s,
					       __u32 gen, __u32 bytes)
{
	__u8 *icmp = (void *)ip + (ihl & 0x3c), proto = 0;
	struct bfx_nexthop *nh;
	struct bfx_rule *rule;
	enum bfx_nh_result res;
	struct bfx_inner in = {};
	__u32 trailer = 0, id;
	__u16 port = 0;

	if ((void *)(icmp + BFX_ICMP_HDR) > data_end)
		return bfx_count(0, BFX_DROP_MALFORMED, bytes, XDP_DROP);
	if (icmp[0] != BFX_ICMP_DEST_UNREACH && icmp[0] != BFX_ICMP_TIME_EXCEEDED &&
	    icmp[0] != BFX_ICMP_PARAMETERPROB)
		return bfx_count(0, BFX_DROP_NO_RULE, bytes, XDP_DROP);
	if (!bfx_icmp_error_flow(icmp, data_end, ip->daddr, &port, &proto))
		return bfx_count(0, BFX_DROP_ICMP_ERROR, bytes, XDP_DROP);
	rule = bfx_rule_lookup(gen, ip->daddr, port, proto);
	if (!rule)
		return bfx_count(0, BFX_DROP_ICMP_ERROR, bytes, XDP_DROP);
	id = rule->id;
	if (bfx_martian(ip->saddr) || ip->saddr == s->pop_addr ||
	    bfx_addr_is(gen, ip->saddr, BFX_ADDR_ANYCAST))
		return bfx_count(id, BFX_DROP_MARTIAN, bytes, XDP_DROP);
	if ((s->flags & BFX_SET_HAVE_FIREWALL) && bfx_firewall(gen, ip->saddr) == BFX_FW_BLOCK)
		return bfx_count(id, BFX_DROP_BLOCKED, bytes, XDP_DROP);
	if (!bfx_icmp_budget(bfx_now(s), BFX_ICMP_BUDGET_FORWARD))
		return bfx_count(id, BFX_DROP_ICMP_ERROR, bytes, XDP_DROP);

	in.saddr = ip->saddr;
	in.daddr = ip->daddr;
	in.tot_len = bpf_ntohs(ip->tot_len);
	in.frag_off = ip->frag_off;
	in.tos = ip->tos;
	in.proto = IPPROTO_ICMP;
	in.id = ip->id;
	if (s->flags & BFX_SET_AUTH)
		trailer = BFX_AUTH_KEY_BYTES;
	nh = bfx_gs_nexthop(ctx, rule->gs_slot, s->pop_addr, rule->gs_addr, s, &res);
	if (res == BFX_NH_NEIGH)
		return bfx_count(id, BFX_DROP_NO_NEIGH, bytes, XDP_DROP);
	if (!nh)
		return bfx_count(id, bfx_nh_drop_reason(res), bytes, XDP_DROP);
	/* Never an ICMP error about an ICMP error (RFC 1122 3.2.2): just dropped. */
	if (in.tot_len + BFX_FOU_OVERHEAD + trailer > nh->mtu ||
	    in.tot_len + BFX_FOU_OVERHEAD + trailer > s->tunnel_mtu)
		return bfx_count(id, BFX_DROP_TOO_BIG, bytes, XDP_DROP);
	if (bfx_fou_encap(ctx, &in, nh, s->pop_addr, rule->gs_addr, rule->fou_port, trailer,
			  *(const __u64 *)s->auth_keys))
		return bfx_count(id, BFX_DROP_ENCAP, bytes, XDP_DROP);
	return bfx_send(ctx, nh, id, BFX_TX_ICMP_FORWARD, bytes);
}

static __always_inline int bfx_process_untagged(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 bytes = data_end - data;
	struct ethhdr *eth = data;
	const struct bfx_settings *s;
	struct bfx_rule *rule;
	struct bfx_l4 l4;
	struct iphdr *ip;
	__u32 gen, ihl;
	int is_anycast;

	if ((void *)(eth + 1) > data_end)
		return bfx_count(0, BFX_DROP_MALFORMED, bytes, XDP_DROP);
	/* Read once: everything below sees this one config (see config_gen in maps.h). */
	gen = bfx_generation();
	s = bpf_map_lookup_elem(&settings, &gen);
	if (!s)
		return bfx_count(0, BFX_PASS_HOST, bytes, XDP_PASS);
	if (bfx_unlikely(eth->h_proto == bpf_htons(ETH_P_IPV6))) {
		if (s->ipv6_policy == BFX_IPV6_DROP) {
			if (bfx_is_ipv6_nd(eth + 1, data_end))
				return bfx_count(0, BFX_PASS_IPV6_ND, bytes, XDP_PASS);
			return bfx_count(0, BFX_DROP_IPV6, bytes, XDP_DROP);
		}
		return bfx_count(0, BFX_PASS_IPV6, bytes, XDP_PASS);
	}
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return bfx_count(0, BFX_PASS_NON_IP, bytes, XDP_PASS);

	ip = (void *)(eth + 1);
	ihl = bfx_ipv4_check(ip, data_end);
	if (!ihl)
		return bfx_count(0, BFX_DROP_MALFORMED, bytes, XDP_DROP);

	if (ip->daddr == s->pop_addr) {
		struct udphdr *udp = (void *)ip + (ihl & 0x3c);

		/* The UDP header must lie inside the IP packet, not in padding after it. */
		if (ip->protocol == IPPROTO_UDP && !(ip->frag_off & bpf_htons(BFX_IP_FRAG_MASK)) &&
		    (void *)(udp + 1) <= data_end &&
		    (ihl & 0x3c) + sizeof(*udp) <= bpf_ntohs(ip->tot_len) &&
		    udp->dest == bpf_htons(s->fou_port))
			return bfx_return_path(ctx, eth, ip, udp, data_end, s, gen, bytes);
		return bfx_count(0, BFX_PASS_HOST, bytes, XDP_PASS);
	}

	/* Fast path first: a whole UDP/TCP datagram that a rule covers. */
	if (!(ip->frag_off & bpf_htons(BFX_IP_FRAG_MASK)) && bfx_l4_parse(ip, ihl, data_end, &l4)) {
		rule = bfx_rule_lookup(gen, ip->daddr, bpf_ntohs(l4.dport), ip->protocol);
		if (rule)
			return bfx_forward_path(ctx, eth, ip, &l4, rule, data_end, s, gen, bytes);
		is_anycast = bfx_addr_is(gen, ip->daddr, BFX_ADDR_ANYCAST);
		return is_anycast ? bfx_count(0, BFX_DROP_NO_RULE, bytes, XDP_DROP) :
				    bfx_count(0, BFX_PASS_HOST, bytes, XDP_PASS);
	}
	if (!bfx_addr_is(gen, ip->daddr, BFX_ADDR_ANYCAST))
		return bfx_count(0, BFX_PASS_HOST, bytes, XDP_PASS);
	if (ip->frag_off & bpf_htons(BFX_IP_FRAG_MASK))
		return bfx_count(0, BFX_DROP_FRAGMENT, bytes, XDP_DROP);
	if (ip->protocol == IPPROTO_UDP || ip->protocol == IPPROTO_TCP)
		return bfx_count(0, BFX_DROP_MALFORMED, bytes, XDP_DROP);
	if (ip->protocol == IPPROTO_ICMP)
		return bfx_icmp_to_anycast(ctx, ip, ihl, data_end, s, gen, bytes);
	return bfx_count(0, BFX_DROP_NO_RULE, bytes, XDP_DROP);
}

/*
 * The pipeline, for untagged and 802.1Q/QinQ-tagged frames alike: tags are
 * taken out before and put back after (vlan.h), so a tagged frame is parsed
 * and filtered as an untagged one and leaves (PASS, TX) on its VLAN.
 */
static __always_inline int bfx_process(struct xdp_md *ctx)
{
	__u32 bytes;
	enum bfx_vlan_result vlan = bfx_vlan_strip(ctx, &bytes);

	if (bfx_unlikely(vlan == BFX_VLAN_MALFORMED))
		return bfx_count(0, BFX_DROP_MALFORMED, bytes, XDP_DROP);
	if (bfx_unlikely(vlan == BFX_VLAN_NO_META))
		return bfx_count(0, BFX_PASS_VLAN_NO_META, bytes, XDP_PASS);
	/* Not a branch on vlan: the metadata says whether there are tags to put back. */
	return bfx_vlan_restore(ctx, bfx_process_untagged(ctx));
}

#endif /* BIFROST_XDP_PIPELINE_H */
