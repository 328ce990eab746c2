// SPDX-License-Identifier: GPL-2.0
/*
 * Netfilter hooks, registered in a network namespace while it has FOU ports
 * configured:
 *
 * - ingress (LOCAL_IN, after the filter table): an outer FOU packet to a
 *   configured port, seen before the kernel's fou socket strips it, is
 *   checked (POP prefix, martian source, lengths, checksum, auth token) and
 *   dropped if it fails; else it teaches client (inner source) -> POP
 *   (outer source);
 * - egress (LOCAL_OUT, before conntrack): after ipip/fou encapsulation, the
 *   outer destination of a reply becomes the POP of its inner destination,
 *   and with auth keys set the send key is appended.
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

static bool fm_from_pop(const struct fm_cfg *cfg, __be32 saddr)
{
	u32 i;

	for (i = 0; i < cfg->n_pops; i++)
		if ((saddr & cfg->pop_mask[i]) == cfg->pop_addr[i])
			return true;
	return false;
}

/*
 * Is the 8-byte trailer at off one of the accepted keys? A plain compare:
 * the off-path attacker of the threat model cannot time our drops, and a
 * mismatch costs it the same single packet whatever the position.
 */
static bool fm_token_ok(const struct fm_keys *keys, struct sk_buff *skb, unsigned int off)
{
	u64 buf, tok;
	const void *p;
	u32 i;

	p = skb_header_pointer(skb, off, sizeof(buf), &buf);
	if (!p)
		return false;
	memcpy(&tok, p, sizeof(tok));	/* any alignment */
	for (i = 0; i < keys->n; i++)
		if (tok == keys->key[i])
			return true;
	return false;
}

static unsigned int fm_rx_drop(struct fm_net *fn, enum fm_counter why)
{
	fm_count(fn, why);
	return NF_DROP;
}

/*
 * A FOU packet to a configured port is accepted, and taught from, only when
 * all of these hold, in this order (each failure is dropped and counted
 * under its own counter, so the kernel's fou never sees it):
 *
 * 1. the outer source is a unicast host address (as the chardev's ADD
 *    wants: no 0/8, 127/8, multicast, broadcast; routing already refused
 *    such sources from the wire, but not those looped back locally);
 * 2. it lies in one of the configured POP prefixes;
 * 3. the UDP length is exactly the IP payload and holds an inner header;
 * 4. a non-zero outer UDP checksum is right (nf_ip_checksum(), as
 *    conntrack does; it reuses a device's verdict or CHECKSUM_COMPLETE sum
 *    and leaves a software sum on the skb, so udp_rcv() does not redo it);
 * 5. the inner IPv4 header is whole, its source a unicast host address;
 * 6. with auth keys set: UDP length == 8 + inner tot_len + 8 exactly, and
 *    the 8-byte trailer is an accepted key (AUTH.md). A GRO-merged packet
 *    cannot carry one trailer per packet: it is refused. The trailer needs
 *    no stripping: after fou decap, ip_rcv() trims the inner packet to its
 *    tot_len.
 */
static unsigned int fm_ingress(void *priv, struct sk_buff *skb,
			       const struct nf_hook_state *state)
{
	struct fm_net *fn = fm_pernet(state->net);
	const struct fm_cfg *cfg = rcu_dereference(fn->cfg);
	const struct fm_keys *keys;
	struct iphdr inner_buf;
	const struct iphdr *iph, *inner;
	struct udphdr uh_buf;
	const struct udphdr *uh;
	unsigned int ihl, ulen;

	if (!cfg->n_ports)
		return NF_ACCEPT;
	iph = ip_hdr(skb);
	if (iph->protocol != IPPROTO_UDP)
		return NF_ACCEPT;
	/*
	 * ip_local_deliver() reassembles before LOCAL_IN, so no fragment gets
	 * here; later fragments could not be told apart anyway.
	 */
	if (iph->frag_off & htons(IP_OFFSET))
		return NF_ACCEPT;
	ihl = iph->ihl * 4;
	uh = skb_header_pointer(skb, ihl, sizeof(uh_buf), &uh_buf);
	if (!uh || !fm_port_match(cfg, uh->dest))
		return NF_ACCEPT;

	fm_count(fn, FM_CNT_RX_FOU);
	if (iph->frag_off & htons(IP_MF))
		return fm_rx_drop(fn, FM_CNT_RX_FRAGMENT);
	if (!fm_valid_unicast(iph->saddr))
		return fm_rx_drop(fn, FM_CNT_RX_MARTIAN);
	if (!fm_from_pop(cfg, iph->saddr))
		return fm_rx_drop(fn, FM_CNT_RX_NOT_POP);
	/* ip_rcv() already trimmed the skb to the outer tot_len. */
	ulen = ntohs(uh->len);
	if (ulen < sizeof(*uh) + sizeof(struct iphdr) || ulen != skb->len - ihl)
		return fm_rx_drop(fn, FM_CNT_RX_TRUNCATED);
	if (uh->check && nf_ip_checksum(skb, state->hook, ihl, IPPROTO_UDP))
		return fm_rx_drop(fn, FM_CNT_RX_BAD_CSUM);
	inner = fm_inner_iph(skb, ihl + sizeof(*uh), ulen - sizeof(*uh), &inner_buf);
	if (!inner || !fm_valid_unicast(inner->saddr))
		return fm_rx_drop(fn, FM_CNT_RX_BAD_INNER);
	keys = rcu_dereference(fn->keys);
	if (keys) {
		if (skb_is_gso(skb))
			return fm_rx_drop(fn, FM_CNT_RX_GSO);
		if (ulen != sizeof(*uh) + ntohs(inner->tot_len) + FM_KEY_SIZE ||
		    !fm_token_ok(keys, skb, ihl + ulen - FM_KEY_SIZE))
			return fm_rx_drop(fn, FM_CNT_RX_AUTH);
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

/*
 * Append the send key to an outgoing FOU packet (AUTH.md) and count it in
 * the outer UDP and IP lengths and checksums. The outer UDP checksum is one
 * of three things (see fm_outer_csum_update()):
 *
 * - zero (noencap-csum): nothing to update;
 * - a pseudo-header seed the offload completes from csum_start to the end
 *   of the packet (outer CHECKSUM_PARTIAL): the seed is redone for the new
 *   length and the offload sums the trailer with the rest;
 * - complete: updated for the two length words (header and pseudo-header)
 *   and the trailer, which starts at an odd offset when the inner packet
 *   has an odd length (csum_block_add() swaps it then).
 *
 * An inner checksum still pending (CHECKSUM_PARTIAL below the outer UDP
 * header, local checksum offload) is finished first: the offload would sum
 * up to the end of the packet, over the trailer too. A GSO packet would be
 * cut into segments of which only the last carried the trailer: refused
 * (bifrost endpoint turns GSO off on the tunnel device, so none is built).
 */
static int fm_put_token(struct fm_net *fn, struct sk_buff *skb, u64 key)
{
	unsigned int ihl, ulen;
	struct udphdr *uh;
	struct iphdr *iph;
	__be16 old_len;
	bool seed;

	if (skb_is_gso(skb)) {
		fm_count(fn, FM_CNT_TX_GSO);
		return -EINVAL;
	}
	iph = ip_hdr(skb);
	ihl = iph->ihl * 4;
	seed = skb->ip_summed == CHECKSUM_PARTIAL &&
	       skb_checksum_start(skb) == skb_network_header(skb) + ihl;
	if (skb->ip_summed == CHECKSUM_PARTIAL && !seed && skb_checksum_help(skb))
		return -EINVAL;
	if (skb_linearize_cow(skb))
		return -ENOMEM;
	if (skb_tailroom(skb) < FM_KEY_SIZE &&
	    pskb_expand_head(skb, 0, FM_KEY_SIZE - skb_tailroom(skb), GFP_ATOMIC))
		return -ENOMEM;
	iph = ip_hdr(skb);
	uh = (struct udphdr *)((u8 *)iph + ihl);
	ulen = ntohs(uh->len);
	/* The datagram must end where the packet does: that is where the key goes. */
	if (ntohs(iph->tot_len) != skb->len || ihl + ulen != skb->len ||
	    ulen + FM_KEY_SIZE > 0xffff)
		return -EINVAL;
	skb_put_data(skb, &key, FM_KEY_SIZE);

	csum_replace2(&iph->check, iph->tot_len, htons(skb->len));
	iph->tot_len = htons(skb->len);
	old_len = uh->len;
	uh->len = htons(ulen + FM_KEY_SIZE);
	if (seed) {
		uh->check = ~csum_tcpudp_magic(iph->saddr, iph->daddr, ulen + FM_KEY_SIZE,
					       IPPROTO_UDP, 0);
	} else if (uh->check) {
		/* The length is summed twice: in the header and in the pseudo-header. */
		csum_replace2(&uh->check, old_len, uh->len);
		csum_replace2(&uh->check, old_len, uh->len);
		uh->check = csum_fold(csum_block_add(~csum_unfold(uh->check),
						     csum_partial(&key, FM_KEY_SIZE, 0), ulen));
		if (!uh->check)
			uh->check = CSUM_MANGLED_0;
	}
	return 0;
}

static unsigned int fm_egress(void *priv, struct sk_buff *skb,
			      const struct nf_hook_state *state)
{
	struct fm_net *fn = fm_pernet(state->net);
	const struct fm_cfg *cfg = rcu_dereference(fn->cfg);
	const struct fm_keys *keys;
	struct iphdr inner_buf;
	const struct iphdr *inner;
	struct fm_map_entry *e;
	struct udphdr uh_buf;
	struct udphdr *uh;
	struct iphdr *iph;
	unsigned int ihl;
	bool reroute = false;
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
		goto token;
	}
	e = rhashtable_lookup(&fn->table, &inner->daddr, fm_table_params);
	if (!e) {
		if (cfg->miss_policy == FM_MISS_DROP) {
			fm_count(fn, FM_CNT_TX_MISS_DROP);
			return NF_DROP;
		}
		fm_count(fn, FM_CNT_TX_MISS_PASS);
		goto token;
	}
	pop = READ_ONCE(e->pop);
	if (pop == iph->daddr) {
		fm_count(fn, FM_CNT_TX_SAME_POP);
		goto token;
	}

	if (skb_ensure_writable(skb, ihl + sizeof(*uh))) {
		fm_count(fn, FM_CNT_TX_BAD);
		goto token;
	}
	iph = ip_hdr(skb);
	uh = (struct udphdr *)((u8 *)iph + ihl);
	old = iph->daddr;
	iph->daddr = pop;
	csum_replace4(&iph->check, old, pop);
	/* fou sends a zero checksum unless encap-csum; zero means "none". */
	if (uh->check)
		fm_outer_csum_update(skb, uh, old, pop);
	reroute = true;

token:
	/* Every FOU packet sent carries the key, rewritten or not: the POP checks each. */
	keys = rcu_dereference(fn->keys);
	if (keys) {
		if (fm_put_token(fn, skb, keys->key[0])) {
			fm_count(fn, FM_CNT_TX_TOKEN_FAILED);
			return NF_DROP;
		}
		fm_count(fn, FM_CNT_TX_TOKEN);
	}
	if (!reroute)
		return NF_ACCEPT;
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
		/*
		 * LOCAL_IN, just after the filter table: the packet is
		 * reassembled (ip_local_deliver()), routed (rp_filter and the
		 * martian-source checks of input routing are done), and the
		 * operator's raw, mangle and filter rules ran first, so a
		 * packet they drop teaches nothing. It is still before the
		 * UDP socket, so the kernel's fou never sees a dropped packet,
		 * and before conntrack confirms: a drop here leaves no entry.
		 */
		.hooknum = NF_INET_LOCAL_IN,
		.priority = NF_IP_PRI_FILTER + 1,
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
