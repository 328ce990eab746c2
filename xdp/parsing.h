/* SPDX-License-Identifier: GPL-2.0 */
/* Header parsing and A2S query recognition; every access is bounds-checked. */
#ifndef BIFROST_XDP_PARSING_H
#define BIFROST_XDP_PARSING_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>

/* MF flag or a non-zero offset: only a whole datagram carries the ports we match. */
#define BFX_IP_FRAG_MASK 0x3fff

struct bfx_l4 {
	void *hdr;		/* UDP or TCP header */
	void *payload;		/* UDP payload (TCP: after the header) */
	__u32 payload_len;	/* UDP: udp->len - 8; TCP: from the IP length */
	__u16 sport;		/* network order */
	__u16 dport;		/* network order */
};

/*
 * A big-endian u16 that is added to a packet pointer. The 6.1 verifier does
 * not bound the result of a byte swap (nor an OR, which clang turns byte
 * loads into), so mask it where clang cannot see and drop the mask.
 */
static __always_inline __u32 bfx_load_be16(const __be16 *p)
{
	__u64 v = bpf_ntohs(*p);

	asm volatile("%[v] &= 0xffff" : [v] "+r"(v));
	return v;
}

/*
 * A sane IPv4 header: version 4, 20..60 bytes, total length covering the
 * header and within the frame (the frame may be longer: Ethernet padding).
 * Returns the header length in bytes, or 0 when malformed.
 */
static __always_inline __u32 bfx_ipv4_check(struct iphdr *ip, void *data_end)
{
	__u32 ihl, tot;

	if ((void *)(ip + 1) > data_end)
		return 0;
	if (ip->version != 4 || ip->ihl < 5)
		return 0;
	ihl = ip->ihl * 4;
	tot = bfx_load_be16(&ip->tot_len);
	if (tot < ihl || (void *)ip + tot > data_end)
		return 0;
	return ihl;
}

/*
 * UDP or TCP header after an IPv4 header of ihl bytes. Returns 0 when the
 * header is truncated or its lengths disagree with the IP length.
 */
static __always_inline int bfx_l4_parse(struct iphdr *ip, __u32 ihl, void *data_end,
					struct bfx_l4 *l4)
{
	__u32 ip_payload = bpf_ntohs(ip->tot_len) - ihl;
	void *hdr = (void *)ip + (ihl & 0x3c);

	l4->hdr = hdr;
	if (ip->protocol == IPPROTO_UDP) {
		struct udphdr *udp = hdr;
		__u32 len;

		if ((void *)(udp + 1) > data_end)
			return 0;
		len = bpf_ntohs(udp->len);
		if (len < sizeof(*udp) || len > ip_payload)
			return 0;
		l4->sport = udp->source;
		l4->dport = udp->dest;
		l4->payload = udp + 1;
		l4->payload_len = len - sizeof(*udp);
		return 1;
	}
	if (ip->protocol == IPPROTO_TCP) {
		struct tcphdr *tcp = hdr;
		__u32 doff;

		if ((void *)(tcp + 1) > data_end)
			return 0;
		doff = tcp->doff * 4;
		if (doff < sizeof(*tcp) || doff > ip_payload)
			return 0;
		l4->sport = tcp->source;
		l4->dport = tcp->dest;
		l4->payload = hdr + (doff & 0x3c);
		l4->payload_len = ip_payload - doff;
		return 1;
	}
	return 0;
}

/* Router solicitation .. redirect (RFC 4861 section 4). */
#define BFX_ND_FIRST 133
#define BFX_ND_LAST 137

/*
 * Neighbour discovery: ICMPv6 right after the fixed header (RFC 4861 sends
 * these without extension headers), hop limit 255 (a receiver must drop any
 * other: proof the sender is on the link, section 7.1.1), type 133..137.
 * ipv6 = "drop" passes these so the host keeps its neighbours and routers.
 */
static __always_inline int bfx_is_ipv6_nd(void *l3, void *data_end)
{
	struct ipv6hdr *ip6 = l3;
	__u8 *type = (void *)(ip6 + 1);

	if ((void *)(type + 4) > data_end)
		return 0;
	return ip6->version == 6 && ip6->nexthdr == IPPROTO_ICMPV6 && ip6->hop_limit == 255 &&
	       *type >= BFX_ND_FIRST && *type <= BFX_ND_LAST;
}

/* Every connectionless Source engine packet starts with FF FF FF FF. */
#define BFX_CONNECTIONLESS 0xffffffffU

static __always_inline int bfx_is_connectionless(void *payload, __u32 len, void *data_end)
{
	if (len < 4 || payload + 4 > data_end)
		return 0;
	return *(__u32 *)payload == BFX_CONNECTIONLESS;
}

/* "Source Engine Query\0" as little-endian words (bytes 5..24 of A2S_INFO). */
#define BFX_A2S_INFO_W0 0x4520656372756f53ULL	/* "Source E" */
#define BFX_A2S_INFO_W1 0x755120656e69676eULL	/* "ngine Qu" */
#define BFX_A2S_INFO_W2 0x00797265U		/* "ery\0" */

/*
 * A well-formed A2S query that bifrost_nf answers from its cache:
 * A2S_INFO (25 bytes, or 29 with the challenge), A2S_PLAYER / A2S_RULES
 * (9 bytes: kind + 4-byte challenge). Anything else, e.g. a padded or
 * truncated query, goes to the game server, which knows best.
 */
static __always_inline int bfx_is_a2s_query(void *p, __u32 len, void *data_end)
{
	__u8 kind;

	if (len != 9 && len != 25 && len != 29)
		return 0;
	if (p + 9 > data_end)
		return 0;
	if (*(__u32 *)p != BFX_CONNECTIONLESS)
		return 0;
	kind = *(__u8 *)(p + 4);
	if (len == 9)
		return kind == 0x55 || kind == 0x56;
	if (kind != 0x54 || p + 25 > data_end)
		return 0;
	return *(__u64 *)(p + 5) == BFX_A2S_INFO_W0 &&
	       *(__u64 *)(p + 13) == BFX_A2S_INFO_W1 &&
	       *(__u32 *)(p + 21) == BFX_A2S_INFO_W2;
}

#endif /* BIFROST_XDP_PARSING_H */
