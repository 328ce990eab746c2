// SPDX-License-Identifier: GPL-2.0
/*
 * Netfilter hooks, registered in a network namespace while it has FOU ports
 * configured:
 *
 * - ingress (PRE_ROUTING, before defragmentation): an outer FOU packet to a
 *   configured port, seen before the kernel's fou socket strips it, teaches
 *   client (inner source) -> POP (outer source);
 * - egress (LOCAL_OUT, before conntrack): after ipip/fou encapsulation, the
 *   outer destination of a reply becomes the POP of its inner destination.
 *
 * Neither hook ever drops an incoming packet: the kernel's fou and ipip code
 * decides what to do with it. Only the miss policy "drop" drops, on egress.
 */
#include <linux/ip.h>
#include <linux/udp.h>
#include <linux/netfilter.h>
#include <linux/netfilter_ipv4.h>
#include <net/ip.h>
#include <net/checksum.h>
#include <net/route.h>

#include "fm.h"

static bool fm_port_match(const struct fm_cfg *cfg, __be16 port)
{
	u16 p = ntohs(port);
	u32 i;

	for (i = 0; i < cfg->n_ports; i++)
		if (cfg->ports[i] == p)
			return true;
	return false;
}

/*
 * Is the FOU payload (len bytes at off) a whole inner IPv4 header whose
 * total length fits in it?
 */
static const struct iphdr *fm_inner_iph(struct sk_buff *skb, unsigned int off,
					unsigned int len, struct iphdr *buf)
{
	const struct iphdr *inner;
	unsigned int ihl, tot;

	if (len < sizeof(*inner))
		return NULL;
	inner = skb_header_pointer(skb, off, sizeof(*inner), buf);
	if (!inner || inner->version != 4)
		return NULL;
	ihl = inner->ihl * 4;
	tot = ntohs(inner->tot_len);
	if (ihl < sizeof(*inner) || ihl > len || tot < ihl || tot > len)
		return NULL;
	return inner;
}

static unsigned int fm_ingress(void *priv, struct sk_buff *skb,
			       const struct nf_hook_state *state)
{
	struct fm_net *fn = fm_pernet(state->net);
	const struct fm_cfg *cfg = rcu_dereference(fn->cfg);
	struct iphdr inner_buf;
	const struct iphdr *iph, *inner;
	struct udphdr uh_buf;
	const struct udphdr *uh;
	unsigned int ihl, avail, ulen;

	if (!cfg->n_ports)
		return NF_ACCEPT;
	iph = ip_hdr(skb);
	/* Later fragments carry no UDP header: they cannot be told apart. */
	if (iph->protocol != IPPROTO_UDP || (iph->frag_off & htons(IP_OFFSET)))
		return NF_ACCEPT;
	ihl = iph->ihl * 4;
	uh = skb_header_pointer(skb, ihl, sizeof(uh_buf), &uh_buf);
	if (!uh || !fm_port_match(cfg, uh->dest))
		return NF_ACCEPT;

	fm_count(fn, FM_CNT_RX_FOU);
	if (iph->frag_off & htons(IP_MF)) {
		/* A first fragment: only part of the payload is here. */
		fm_count(fn, FM_CNT_RX_FRAGMENT);
		return NF_ACCEPT;
	}
	/* ip_rcv() already trimmed the skb to the outer tot_len. */
	avail = skb->len - ihl;
	ulen = ntohs(uh->len);
	if (ulen < sizeof(*uh) + sizeof(struct iphdr) || ulen > avail) {
		fm_count(fn, FM_CNT_RX_TRUNCATED);
		return NF_ACCEPT;
	}
	inner = fm_inner_iph(skb, ihl + sizeof(*uh), ulen - sizeof(*uh), &inner_buf);
	if (!inner || ipv4_is_zeronet(inner->saddr) || ipv4_is_multicast(inner->saddr) ||
	    ipv4_is_lbcast(inner->saddr) || ipv4_is_loopback(inner->saddr)) {
		fm_count(fn, FM_CNT_RX_BAD_INNER);
		return NF_ACCEPT;
	}
	fm_learn(fn, inner->saddr, iph->saddr);
	return NF_ACCEPT;
}

/*
 * The outer UDP checksum after udp_set_csum() (encap-csum) is one of two
 * things. With GSO, or when the outer header is what the checksum offload
 * will finish (CHECKSUM_PARTIAL starting at it), it is the pseudo-header
 * seed: inet_proto_csum_replace4() updates that. When the inner packet was
 * CHECKSUM_PARTIAL, udp_set_csum() completed the outer checksum in software
 * (local checksum offload) while ip_summed stays CHECKSUM_PARTIAL for the
 * inner one: it is then a complete checksum, which only csum_replace4() is
 * right for; inet_proto_csum_replace4() would treat it as a seed and break
 * it.
 */
static void fm_outer_csum_update(struct sk_buff *skb, struct udphdr *uh, __be32 from,
				 __be32 to)
{
	if (skb_is_gso(skb) ||
	    (skb->ip_summed == CHECKSUM_PARTIAL && skb_checksum_start(skb) == (u8 *)uh)) {
		inet_proto_csum_replace4(&uh->check, skb, from, to, true);
		return;
	}
	csum_replace4(&uh->check, from, to);
	if (!uh->check)
		uh->check = CSUM_MANGLED_0;
}

static unsigned int fm_miss(struct fm_net *fn, const struct fm_cfg *cfg)
{
	if (cfg->miss_policy == FM_MISS_DROP) {
		fm_count(fn, FM_CNT_TX_MISS_DROP);
		return NF_DROP;
	}
	fm_count(fn, FM_CNT_TX_MISS_PASS);
	return NF_ACCEPT;
}

static unsigned int fm_egress(void *priv, struct sk_buff *skb,
			      const struct nf_hook_state *state)
{
	struct fm_net *fn = fm_pernet(state->net);
	const struct fm_cfg *cfg = rcu_dereference(fn->cfg);
	struct iphdr inner_buf;
	const struct iphdr *inner;
	struct fm_map_entry *e;
	struct udphdr uh_buf;
	struct udphdr *uh;
	struct iphdr *iph;
	unsigned int ihl;
	__be32 pop, old;

	if (!cfg->n_ports)
		return NF_ACCEPT;
	iph = ip_hdr(skb);
	if (iph->protocol != IPPROTO_UDP || ip_is_fragment(iph))
		return NF_ACCEPT;
	ihl = iph->ihl * 4;
	uh = skb_header_pointer(skb, ihl, sizeof(uh_buf), &uh_buf);
	if (!uh || !fm_port_match(cfg, uh->dest))
		return NF_ACCEPT;

	fm_count(fn, FM_CNT_TX_FOU);
	inner = fm_inner_iph(skb, ihl + sizeof(*uh), skb->len - ihl - sizeof(*uh), &inner_buf);
	if (!inner) {
		fm_count(fn, FM_CNT_TX_BAD);
		return NF_ACCEPT;
	}
	e = rhashtable_lookup(&fn->table, &inner->daddr, fm_table_params);
	if (!e)
		return fm_miss(fn, cfg);
	pop = READ_ONCE(e->pop);
	if (pop == iph->daddr) {
		fm_count(fn, FM_CNT_TX_SAME_POP);
		return NF_ACCEPT;
	}

	if (skb_ensure_writable(skb, ihl + sizeof(*uh))) {
		fm_count(fn, FM_CNT_TX_BAD);
		return NF_ACCEPT;
	}
	iph = ip_hdr(skb);
	uh = (struct udphdr *)((u8 *)iph + ihl);
	old = iph->daddr;
	iph->daddr = pop;
	csum_replace4(&iph->check, old, pop);
	/* fou sends a zero checksum unless encap-csum; zero means "none". */
	if (uh->check)
		fm_outer_csum_update(skb, uh, old, pop);
	/*
	 * The tunnel routed towards its own remote: route to the POP instead.
	 * The source is the tunnel's local address (RTN_LOCAL spares a lookup).
	 */
	if (ip_route_me_harder(state->net, state->sk, skb, RTN_LOCAL)) {
		fm_count(fn, FM_CNT_TX_REROUTE_FAILED);
		return NF_DROP;
	}
	fm_count(fn, FM_CNT_TX_REWRITTEN);
	return NF_ACCEPT;
}

static const struct nf_hook_ops fm_hook_ops[] = {
	{
		.hook = fm_ingress,
		.pf = NFPROTO_IPV4,
		.hooknum = NF_INET_PRE_ROUTING,
		/* Before defrag, so fragments are seen (and never learned). */
		.priority = NF_IP_PRI_RAW_BEFORE_DEFRAG,
	},
	{
		.hook = fm_egress,
		.pf = NFPROTO_IPV4,
		.hooknum = NF_INET_LOCAL_OUT,
		/* Before conntrack, so it records the rewritten destination. */
		.priority = NF_IP_PRI_RAW_BEFORE_DEFRAG,
	},
};

int fm_hooks_register(struct net *net)
{
	return nf_register_net_hooks(net, fm_hook_ops, ARRAY_SIZE(fm_hook_ops));
}

void fm_hooks_unregister(struct net *net)
{
	nf_unregister_net_hooks(net, fm_hook_ops, ARRAY_SIZE(fm_hook_ops));
}
