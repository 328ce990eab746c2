// SPDX-License-Identifier: GPL-2.0
/*
 * Replies are new packets built here, from the service's address and port to
 * the client, routed like any locally generated packet (so they follow the
 * netns's routes, neighbours and OUTPUT/POSTROUTING rules). The route back is
 * looked up once per query, before anything else is done for it: the hook
 * answers only a source whose route back is unicast, and every packet of the
 * answer shares that route.
 *
 * DF is set only on a reply that fits the route's MTU, as __ip_make_skb()
 * does for a UDP socket: a bigger answer (up to 1428 bytes) on a smaller-MTU
 * uplink is fragmented by ip_output() instead of dropped.
 *
 * Replies are untracked: with conntrack active in the netns, each reply to a
 * new (possibly spoofed) source would otherwise create an entry at LOCAL_OUT,
 * and a spoofed-source flood would fill the conntrack table. The query itself
 * never reaches conntrack (the hook runs before it and consumes the query).
 */
#include <linux/ip.h>
#include <linux/skbuff.h>
#include <linux/udp.h>
#include <net/checksum.h>
#include <net/ip.h>
#include <net/route.h>
#include <net/netfilter/nf_conntrack.h>

#include "bfnf.h"

int bfnf_route_back(struct net *net, __be32 saddr, __be16 sport, __be32 daddr, __be16 dport,
		    struct bfnf_route *back)
{
	struct rtable *rt;

	/*
	 * ANYSRC: the service address need not be local (an anycast address
	 * the POP only forwards), like a transparent proxy's replies.
	 */
	flowi4_init_output(&back->fl4, 0, 0, 0, RT_SCOPE_UNIVERSE, IPPROTO_UDP, FLOWI_FLAG_ANYSRC,
			   daddr, saddr, dport, sport, sock_net_uid(net, NULL));
	rt = ip_route_output_key(net, &back->fl4);
	if (IS_ERR(rt))
		return PTR_ERR(rt);
	back->rt = rt;
	return 0;
}

void bfnf_route_put(struct bfnf_route *back)
{
	ip_rt_put(back->rt);
}

int bfnf_send(struct net *net, const struct bfnf_route *back, const u8 *data, unsigned int len)
{
	unsigned int ulen = sizeof(struct udphdr) + len;
	const struct flowi4 *fl4 = &back->fl4;
	struct dst_entry *dst = &back->rt->dst;
	struct sk_buff *skb;
	struct udphdr *uh;
	struct iphdr *iph;
	unsigned int hh_len;
	__wsum csum;
	int err;

	hh_len = LL_RESERVED_SPACE(dst->dev);
	skb = alloc_skb(hh_len + sizeof(*iph) + ulen, GFP_ATOMIC);
	if (!skb)
		return -ENOMEM;
	skb_reserve(skb, hh_len);
	skb_reset_network_header(skb);
	iph = skb_put(skb, sizeof(*iph));
	skb_set_transport_header(skb, sizeof(*iph));
	uh = skb_put(skb, sizeof(*uh));
	skb_put_data(skb, data, len);

	uh->source = fl4->fl4_sport;
	uh->dest = fl4->fl4_dport;
	uh->len = htons(ulen);
	uh->check = 0;
	csum = csum_partial(uh, ulen, 0);
	uh->check = csum_tcpudp_magic(fl4->saddr, fl4->daddr, ulen, IPPROTO_UDP, csum);
	if (!uh->check)
		uh->check = CSUM_MANGLED_0;
	skb->ip_summed = CHECKSUM_NONE;

	iph->version = 4;
	iph->ihl = sizeof(*iph) / 4;
	iph->tos = 0;
	iph->tot_len = htons(skb->len);
	iph->frag_off = skb->len <= dst_mtu(dst) ? htons(IP_DF) : 0;
	iph->ttl = ip4_dst_hoplimit(dst);
	iph->protocol = IPPROTO_UDP;
	iph->saddr = fl4->saddr;
	iph->daddr = fl4->daddr;
	skb->protocol = htons(ETH_P_IP);
	skb_dst_set(skb, dst_clone(dst));
	ip_select_ident(net, skb, NULL);
	/*
	 * What `notrack` does (nft_notrack_eval, xt_CT): an inline store into
	 * the skb, no symbol of nf_conntrack, so the module loads and works
	 * whether or not conntrack is loaded; nf_conntrack_in() then accepts
	 * the packet without creating an entry.
	 */
#if IS_ENABLED(CONFIG_NF_CONNTRACK)
	nf_ct_set(skb, NULL, IP_CT_UNTRACKED);
#endif

	err = ip_local_out(net, NULL, skb);
	return err > 0 ? net_xmit_errno(err) : err;
}
