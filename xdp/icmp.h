/* SPDX-License-Identifier: GPL-2.0 */
/*
 * ICMP "fragmentation needed" (type 3 code 4, RFC 1191) from XDP, for a
 * forwarded packet with DF set that would exceed the path MTU towards the
 * game server once encapsulated, so the client's path MTU discovery (e.g.
 * RakNet's 1492-byte DF probe) falls back at once instead of timing out.
 *
 * As katran does it (facebookincubator/katran, katran/lib/bpf/handle_icmp.h:
 * send_icmp_too_big() cuts the frame with bpf_xdp_adjust_tail, then
 * send_icmp4_too_big() writes IPv4 + ICMP headers in front of the quote,
 * swaps the MACs and returns XDP_TX, back the way the packet came), except:
 * the next-hop MTU is the real one (katran announces its fixed maximum), and
 * the headers are written in place over the front of the big packet instead
 * of with a second adjust_head.
 *
 * Not an amplifier: the reply (70 bytes, the quote being the inner IPv4
 * header and 8 bytes, RFC 792's minimum) is far smaller than the packet that
 * triggers it (more than the path MTU), and replies are limited per CPU to
 * BFX_ICMP_REPLY_PPS (settings-independent, as the kernel's own
 * icmp_msgs_per_sec); over it the packet is dropped as before.
 *
 * Also here: recognising an ICMP error (RFC 792: destination unreachable,
 * time exceeded, parameter problem) whose quoted packet a forward rule's
 * service sent (bfx_icmp_error_flow()), so the pipeline forwards it to the
 * game server that owns the flow, whose stack acts on it (path MTU, port
 * unreachable) as if it had received it directly.
 */
#ifndef BIFROST_XDP_ICMP_H
#define BIFROST_XDP_ICMP_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "csum.h"
#include "maps.h"

/* linux/icmp.h pulls in libc's socket headers, which a BPF build lacks. */
#define BFX_ICMP_DEST_UNREACH 3
#define BFX_ICMP_FRAG_NEEDED 4
#define BFX_ICMP_HDR 8

/* Inner IPv4 header (no options) + the first 8 bytes of its payload. */
#define BFX_ICMP_QUOTE 28
#define BFX_ICMP_REPLY_IP (sizeof(struct iphdr) + BFX_ICMP_HDR + BFX_ICMP_QUOTE)
#define BFX_ICMP_REPLY_FRAME (sizeof(struct ethhdr) + BFX_ICMP_REPLY_IP)
/* Internetwork control precedence, as the kernel's icmp_send() sets for errors. */
#define BFX_ICMP_TOS 0xc0
#define BFX_ICMP_COST_NS (1000000000ULL / BFX_ICMP_REPLY_PPS)
#define BFX_ICMP_BURST_NS (BFX_ICMP_COST_NS * BFX_ICMP_REPLY_PPS)

/* icmp_budget's buckets. */
#define BFX_ICMP_BUDGET_REPLY 0		/* fragmentation-needed replies sent */
#define BFX_ICMP_BUDGET_FORWARD 1	/* ICMP errors forwarded to game servers */

/* Per CPU, BFX_ICMP_REPLY_PPS of kind: a token bucket as bfx_bucket_take(). */
static __always_inline int bfx_icmp_budget(__u64 now, __u32 kind)
{
	struct bfx_rate_state *b = bpf_map_lookup_elem(&icmp_budget, &kind);
	__u64 credit;

	if (!b)
		return 0;
	credit = b->last_ns ? b->credit_ns + (now > b->last_ns ? now - b->last_ns : 0) :
			      BFX_ICMP_BURST_NS;
	if (credit > BFX_ICMP_BURST_NS)
		credit = BFX_ICMP_BURST_NS;
	b->last_ns = now;
	if (credit < BFX_ICMP_COST_NS) {
		b->credit_ns = credit;
		return 0;
	}
	b->credit_ns = credit - BFX_ICMP_COST_NS;
	return 1;
}

/*
 * Turn the frame (Ethernet | IPv4 without options | at least 8 more bytes)
 * into the fragmentation-needed reply to its source announcing mtu, from the
 * address it was sent to. 0 on success: the caller returns XDP_TX.
 */
static __always_inline int bfx_icmp_too_big(struct xdp_md *ctx, __u16 mtu)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	__u32 *icmp = (void *)(ip + 1);
	__u32 q[BFX_ICMP_QUOTE / 4], *quote = icmp + 2, w0, w1;
	__u16 mac[3], ver_tos, tot_len, ttl_proto;
	__be32 saddr, daddr;
	__u64 sum;
	int i;

	if (data + BFX_ICMP_REPLY_FRAME > data_end)
		return -1;
	/* The quote first: the new headers overwrite where it lies. */
	__builtin_memcpy(q, ip, sizeof(q));
	saddr = ip->daddr;
	daddr = ip->saddr;

	/* Back where it came from: swap the MACs. */
	__builtin_memcpy(mac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac, ETH_ALEN);

	/* An atomic datagram (DF, RFC 6864 section 4.1): ID 0. */
	ver_tos = bpf_htons(0x4500 | BFX_ICMP_TOS);
	tot_len = bpf_htons(BFX_ICMP_REPLY_IP);
	ttl_proto = bpf_htons(64 << 8 | IPPROTO_ICMP);
	*(__u16 *)ip = ver_tos;
	ip->tot_len = tot_len;
	ip->id = 0;
	ip->frag_off = bpf_htons(0x4000);
	*(__u16 *)&ip->ttl = ttl_proto;
	ip->saddr = saddr;
	ip->daddr = daddr;
	ip->check = bfx_ipv4_csum(ver_tos, tot_len, 0, bpf_htons(0x4000), ttl_proto, saddr, daddr);

	/* ICMP words as they lie in memory: type, code, checksum; unused, next-hop MTU. */
	w0 = BFX_ICMP_DEST_UNREACH | BFX_ICMP_FRAG_NEEDED << 8;
	w1 = (__u32)bpf_htons(mtu) << 16;
	sum = (w0 & 0xffff) + (w1 >> 16);
#pragma unroll
	for (i = 0; i < BFX_ICMP_QUOTE / 4; i++) {
		quote[i] = q[i];
		sum += (q[i] & 0xffff) + (q[i] >> 16);
	}
	sum = (sum & 0xffff) + (sum >> 16);
	icmp[0] = w0 | (__u32)bfx_csum_fold(sum) << 16;
	icmp[1] = w1;

	return bpf_xdp_adjust_tail(ctx, (int)BFX_ICMP_REPLY_FRAME - (int)(data_end - data));
}

#define BFX_ICMP_TIME_EXCEEDED 11
#define BFX_ICMP_PARAMETERPROB 12

/*
 * If the ICMP error (the caller checked its type) at icmp, inside an IPv4
 * packet ending at data_end, quotes a UDP or TCP datagram sent from to
 * (the anycast address it is addressed to): 1, with the quoted source port
 * (host order) in *port and the protocol in *proto; else 0. The quote must hold the ports: RFC 792
 * guarantees the IP header and 8 bytes.
 */
static __always_inline int bfx_icmp_error_flow(__u8 *icmp, void *data_end, __be32 to,
					       __u16 *port, __u8 *proto)
{
	struct iphdr *q = (void *)(icmp + BFX_ICMP_HDR);
	__be16 *ports;

	if ((void *)(q + 1) > data_end)
		return 0;
	if (q->version != 4 || q->ihl < 5 || q->saddr != to ||
	    (q->protocol != IPPROTO_UDP && q->protocol != IPPROTO_TCP))
		return 0;
	ports = (void *)q + (q->ihl * 4 & 0x3c);
	if ((void *)(ports + 2) > data_end)
		return 0;
	*port = bpf_ntohs(ports[0]);
	*proto = q->protocol;
	return 1;
}

#endif /* BIFROST_XDP_ICMP_H */
