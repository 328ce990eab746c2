// SPDX-License-Identifier: GPL-2.0
/*
 * The data path: a PRE_ROUTING hook per netns (registered with the netns's
 * first service), so a service address may be local to the POP or one it only
 * forwards (the anycast address of game servers behind it). UDP to a configured service carrying A2S_INFO / A2S_PLAYER /
 * A2S_RULES is answered here and consumed; anything else is left untouched.
 *
 * Amplification rule: a source that has not echoed a valid challenge only
 * ever gets the 9-byte S2C_CHALLENGE, never more bytes than its query had
 * (A2S_INFO is 25 bytes, PLAYER/RULES 9), unless the operator turned the
 * challenge off for A2S_INFO on that service.
 *
 * Reflection rule: a query is answered only when its source could have sent
 * it, as the kernel's own input routing would judge it: not a martian, not one
 * of the POP's own addresses, and with a unicast route back. The others are
 * dropped before they touch any state, each reason under its own counter.
 */
#include <linux/ip.h>
#include <linux/netfilter_ipv4.h>
#include <linux/skbuff.h>
#include <linux/udp.h>
#include <net/ip.h>
#include <net/route.h>
#include <linux/version.h>
/* moved from asm/ to linux/ in 6.12 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 12, 0)
#include <linux/unaligned.h>
#else
#include <asm/unaligned.h>
#endif

#include "bfnf.h"

#define A2S_HDR 0xFFFFFFFFU
#define A2S_INFO 'T'
#define A2S_PLAYER 'U'
#define A2S_RULES 'V'
#define S2C_CHALLENGE 'A'
static const char a2s_info_body[] = "Source Engine Query";	/* NUL included: 20 bytes */
#define A2S_INFO_LEN (5 + sizeof(a2s_info_body))		/* 25 */
#define A2S_CHAL_LEN 4
/* the most we look at: an A2S_INFO with its challenge */
#define A2S_PEEK (A2S_INFO_LEN + A2S_CHAL_LEN)

enum bfnf_freshness { BFNF_FRESH, BFNF_STALE, BFNF_UNUSABLE };

static enum bfnf_freshness bfnf_entry_state(const struct bfnf_entry *e, u64 now)
{
	u64 age_ms;

	if (!e)
		return BFNF_UNUSABLE;
	age_ms = div_u64(bfnf_age_ns(now, e->stored_ns), NSEC_PER_MSEC);
	if (age_ms < e->ttl_ms)
		return BFNF_FRESH;
	if (age_ms < (u64)e->ttl_ms + e->max_stale_ms)
		return BFNF_STALE;
	return BFNF_UNUSABLE;
}

/*
 * The UDP checksum covers the UDP length, which may be shorter than the IP
 * payload (trailing bytes after the datagram are legal and ignored).
 * nf_ip_checksum() sums to the end of the skb, so it is only right when the
 * two agree.
 */
static bool bfnf_udp_csum_bad(struct sk_buff *skb, unsigned int hook, unsigned int ihl,
			      unsigned int ulen)
{
	const struct iphdr *iph = ip_hdr(skb);
	__wsum csum;

	if (ulen == skb->len - ihl)
		return nf_ip_checksum(skb, hook, ihl, IPPROTO_UDP) != 0;
	csum = skb_checksum(skb, ihl, ulen, 0);
	return csum_tcpudp_magic(iph->saddr, iph->daddr, ulen, IPPROTO_UDP, csum) != 0;
}

/*
 * Sources no reply may go to, whatever the routes say: "this network" (0/8),
 * loopback (127/8), multicast (224/4), reserved (240/4) and the limited
 * broadcast. ip_route_input() drops most of them as martians, but this hook
 * runs before routing, and 0/8 and 240/4 may have a (default) route.
 * ipv4_is_zeronet() is 0.0.0.0 alone since Linux 5.3: test 0/8 here.
 */
static bool bfnf_martian_src(__be32 saddr)
{
	return (saddr & htonl(0xff000000)) == 0 || ipv4_is_loopback(saddr) ||
	       ipv4_is_multicast(saddr) || ipv4_is_lbcast(saddr) ||
	       (saddr & htonl(0xf0000000)) == htonl(0xf0000000);
}

/*
 * 0 and the route back to the client in back (put it when done), or the
 * counter saying why there is none we may use (never 0, bad_writes): a
 * source that routes back to one of the POP's own addresses (RTN_LOCAL, as
 * inet_addr_type() would say), or to anything but a unicast route (a subnet
 * broadcast, multicast, or blackhole, unreachable, prohibit and throw routes,
 * which fail the lookup), as fib_validate_source() refuses.
 */
static int bfnf_route_check(struct bfnf_net *bn, const struct iphdr *iph,
			    const struct udphdr *uh, struct bfnf_route *back)
{
	unsigned int type;

	if (bfnf_route_back(bn->net, iph->daddr, uh->dest, iph->saddr, uh->source, back))
		return BFNF_CNT_NO_UNICAST_ROUTE;
	type = back->rt->rt_type;
	if (type == RTN_UNICAST)
		return 0;
	bfnf_route_put(back);
	return type == RTN_LOCAL ? BFNF_CNT_LOCAL_SRC : BFNF_CNT_NO_UNICAST_ROUTE;
}

/* Returns the payload bytes sent. */
static unsigned int bfnf_send_challenge(struct bfnf_net *bn, const struct bfnf_route *back,
					const struct iphdr *iph, const struct udphdr *uh, u64 now)
{
	u8 pkt[9];

	put_unaligned_le32(A2S_HDR, pkt);
	pkt[4] = S2C_CHALLENGE;
	put_unaligned_le32(bfnf_challenge_make(bn, iph->saddr, uh->source, now), pkt + 5);
	if (bfnf_send(bn->net, back, pkt, sizeof(pkt))) {
		bfnf_count(bn, BFNF_CNT_TX_ERRORS);
		return 0;
	}
	bfnf_count(bn, BFNF_CNT_CHALLENGES_SENT);
	return sizeof(pkt);
}

static unsigned int bfnf_send_entry(struct bfnf_net *bn, const struct bfnf_route *back,
				    const struct bfnf_entry *e)
{
	unsigned int i, sent = 0;

	for (i = 0; i < e->n_packets; i++) {
		if (bfnf_send(bn->net, back, e->data + i * BFNF_PAYLOAD_MAX, e->len[i])) {
			bfnf_count(bn, BFNF_CNT_TX_ERRORS);
			continue;
		}
		sent += e->len[i];
		bfnf_count(bn, BFNF_CNT_ANSWER_PACKETS);
	}
	bfnf_count(bn, BFNF_CNT_ANSWERS);
	return sent;
}

static unsigned int bfnf_hook(void *priv, struct sk_buff *skb, const struct nf_hook_state *state)
{
	struct bfnf_net *bn = priv;
	const struct iphdr *iph = ip_hdr(skb);
	unsigned int ihl, plen, out = 0;
	bool has_chal, verified, want_chal, stale = false;
	const struct bfnf_entry *entry;
	struct bfnf_service *svc;
	struct bfnf_route back;
	struct udphdr _uh;
	const struct udphdr *uh;
	u8 _peek[A2S_PEEK];
	const u8 *p;
	u32 chal = 0;
	int refused;
	u8 qtype;
	u64 now;

	/*
	 * A GRO-merged skb holds several datagrams behind one header: not a
	 * query we can parse; fragments carry no (or part of a) UDP header.
	 */
	if (iph->protocol != IPPROTO_UDP || ip_is_fragment(iph) || skb_is_gso(skb))
		return NF_ACCEPT;
	ihl = ip_hdrlen(skb);
	uh = skb_header_pointer(skb, ihl, sizeof(_uh), &_uh);
	if (!uh)
		return NF_ACCEPT;
	if (!(READ_ONCE(bn->port_bloom) & BIT_ULL(ntohs(uh->dest) & 63)))
		return NF_ACCEPT;
	svc = bfnf_service_find_rcu(bn, iph->daddr, uh->dest);
	if (!svc)
		return NF_ACCEPT;

	plen = ntohs(uh->len);
	if (plen < sizeof(*uh) || plen > skb->len - ihl)
		goto malformed;
	plen -= sizeof(*uh);
	p = skb_header_pointer(skb, ihl + sizeof(*uh), min_t(unsigned int, plen, A2S_PEEK),
			       _peek);
	if (!p || plen < 5 || get_unaligned_le32(p) != A2S_HDR ||
	    (p[4] != A2S_INFO && p[4] != A2S_PLAYER && p[4] != A2S_RULES)) {
		/* game traffic, handshakes, other connectionless packets */
		bfnf_count(bn, BFNF_CNT_PASSED_OTHER);
		return NF_ACCEPT;
	}
	if (uh->check && bfnf_udp_csum_bad(skb, state->hook, ihl, ntohs(uh->len)))
		goto malformed;

	switch (p[4]) {
	case A2S_INFO:
		/* 25 bytes, or 29+ with the challenge (trailing padding ignored) */
		if ((plen != A2S_INFO_LEN && plen < A2S_PEEK) ||
		    memcmp(p + 5, a2s_info_body, sizeof(a2s_info_body)))
			goto malformed;
		qtype = BFNF_QT_INFO;
		if (plen >= A2S_PEEK)
			chal = get_unaligned_le32(p + A2S_INFO_LEN);
		/* some clients ask for the INFO challenge with FF FF FF FF appended */
		has_chal = plen >= A2S_PEEK && chal != 0 && chal != U32_MAX;
		want_chal = false;
		break;
	default:
		if (plen != 5 + A2S_CHAL_LEN)
			goto malformed;
		qtype = p[4] == A2S_PLAYER ? BFNF_QT_PLAYER : BFNF_QT_RULES;
		chal = get_unaligned_le32(p + 5);
		want_chal = chal == 0 || chal == U32_MAX;
		has_chal = !want_chal;
		break;
	}

	/*
	 * Whom the answer would go to, before the query touches any state (rate
	 * limiter, refresh events): a spoofed martian or unroutable source is
	 * dropped here, counted under its reason and not as a query.
	 */
	if (bfnf_martian_src(iph->saddr)) {
		bfnf_count(bn, BFNF_CNT_MARTIAN_SRC);
		return NF_DROP;
	}
	refused = bfnf_route_check(bn, iph, uh, &back);
	if (refused) {
		bfnf_count(bn, refused);
		return NF_DROP;
	}

	bfnf_count(bn, qtype == BFNF_QT_INFO ? BFNF_CNT_INFO_QUERIES :
		   qtype == BFNF_QT_PLAYER ? BFNF_CNT_PLAYER_QUERIES : BFNF_CNT_RULES_QUERIES);
	bfnf_count(bn, BFNF_CNT_QUERIES);
	bfnf_count_add(bn, BFNF_CNT_BYTES_IN, plen);

	now = ktime_get_ns();
	if (!bfnf_rl_allow(bn, iph->saddr, now)) {
		bfnf_count(bn, BFNF_CNT_RATE_LIMITED);
		bfnf_count_add(bn, BFNF_CNT_UNVERIFIED_BYTES_IN, plen);
		goto consumed;
	}

	entry = rcu_dereference(svc->entry[qtype - 1]);
	switch (bfnf_entry_state(entry, now)) {
	case BFNF_UNUSABLE:
		bfnf_event_raise(bn, svc, qtype, BFNF_EV_MISSING);
		if (READ_ONCE(svc->flags) & BFNF_SVC_F_MISS_PASS) {
			bfnf_count(bn, BFNF_CNT_MISS_PASS);
			bfnf_route_put(&back);
			return NF_ACCEPT;
		}
		bfnf_count(bn, BFNF_CNT_MISS_DROP);
		bfnf_count_add(bn, BFNF_CNT_UNVERIFIED_BYTES_IN, plen);
		goto consumed;
	case BFNF_STALE:
		/* asked for by challenge requests too: the next answer will be fresh */
		bfnf_event_raise(bn, svc, qtype, BFNF_EV_STALE);
		stale = true;
		break;
	case BFNF_FRESH:
		break;
	}

	verified = has_chal && bfnf_challenge_check(bn, iph->saddr, uh->source, chal, now);
	if (verified) {
		out = bfnf_send_entry(bn, &back, entry);
		if (stale)
			bfnf_count(bn, BFNF_CNT_STALE_ANSWERS);
	} else if (qtype == BFNF_QT_INFO &&
		   (READ_ONCE(svc->flags) & BFNF_SVC_F_NO_CHALLENGE)) {
		/* the operator's explicit choice for games without challenges */
		bfnf_count(bn, BFNF_CNT_ANSWERS_NO_CHALLENGE);
		out = bfnf_send_entry(bn, &back, entry);
		if (stale)
			bfnf_count(bn, BFNF_CNT_STALE_ANSWERS);
		bfnf_count_add(bn, BFNF_CNT_UNVERIFIED_BYTES_IN, plen);
		bfnf_count_add(bn, BFNF_CNT_UNVERIFIED_BYTES_OUT, out);
	} else {
		if (has_chal)
			bfnf_count(bn, BFNF_CNT_BAD_CHALLENGE);
		out = bfnf_send_challenge(bn, &back, iph, uh, now);
		bfnf_count_add(bn, BFNF_CNT_UNVERIFIED_BYTES_IN, plen);
		bfnf_count_add(bn, BFNF_CNT_UNVERIFIED_BYTES_OUT, out);
	}
	bfnf_count_add(bn, BFNF_CNT_BYTES_OUT, out);
consumed:
	bfnf_route_put(&back);
	consume_skb(skb);
	return NF_STOLEN;

malformed:
	bfnf_count(bn, BFNF_CNT_MALFORMED);
	consume_skb(skb);
	return NF_STOLEN;
}

int bfnf_hook_register(struct bfnf_net *bn)
{
	int err;

	lockdep_assert_held(&bn->lock);
	if (bn->hook_registered)
		return 0;
	bn->ops.hook = bfnf_hook;
	bn->ops.priv = bn;
	bn->ops.pf = NFPROTO_IPV4;
	bn->ops.hooknum = NF_INET_PRE_ROUTING;
	/*
	 * After the raw table (an operator's early drops still apply), before
	 * conntrack: a query flood must not fill the conntrack table.
	 */
	bn->ops.priority = NF_IP_PRI_RAW + 10;
	err = nf_register_net_hook(bn->net, &bn->ops);
	if (err)
		return err;
	bn->hook_registered = true;
	return 0;
}

void bfnf_hook_unregister(struct bfnf_net *bn)
{
	if (!bn->hook_registered)
		return;
	nf_unregister_net_hook(bn->net, &bn->ops);
	bn->hook_registered = false;
}
