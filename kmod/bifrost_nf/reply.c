// SPDX-License-Identifier: GPL-2.0
/*
 * Replies are new packets built here, from the service's address and port to
 * the client, routed like any locally generated packet (so they follow the
 * netns's routes, neighbours and OUTPUT/POSTROUTING rules).
 *
 * DF is set only on a reply that fits the route's MTU, as __ip_make_skb()
 * does for a UDP socket: a bigger answer (up to 1428 bytes) on a smaller-MTU
 * uplink is fragmented by ip_output() instead of dropped.
 */
#include <linux/ip.h>
#include <linux/skbuff.h>
#include <linux/udp.h>
#include <net/checksum.h>
#include <net/ip.h>
#include <net/route.h>

#include "bfnf.h"

int bfnf_send(struct net *net, __be32 saddr, __be16 sport, __be32 daddr, __be16 dport,
	      const u8 *data, unsigned int len)
{
	unsigned int ulen = sizeof(struct udphdr) + len;
	struct flowi4 fl4;
	struct sk_buff *skb;
	struct udphdr *uh;
	struct iphdr *iph;
	struct rtable *rt;
	unsigned int hh_len;
	__wsum csum;
	int err;

	/*
	 * ANYSRC: the service address need not be local (an anycast address
	 * the POP only forwards), like a transparent proxy's replies.
	 */
	flowi4_init_output(&fl4, 0, 0, 0, RT_SCOPE_UNIVERSE, IPPROTO_UDP, FLOWI_FLAG_ANYSRC,
			   daddr, saddr, dport, sport, sock_net_uid(net, NULL));
	rt = ip_route_output_key(net, &fl4);
	if (IS_ERR(rt))
		return PTR_ERR(rt);
	hh_len = LL_RESERVED_SPACE(rt->dst.dev);
	skb = alloc_skb(hh_len + sizeof(*iph) + ulen, GFP_ATOMIC);
	if (!skb) {
		ip_rt_put(rt);
		return -ENOMEM;
	}
	skb_reserve(skb, hh_len);
	skb_reset_network_header(skb);
	iph = skb_put(skb, sizeof(*iph));
	skb_set_transport_header(skb, sizeof(*iph));
	uh = skb_put(skb, sizeof(*uh));
	skb_put_data(skb, data, len);

	uh->source = sport;
	uh->dest = dport;
	uh->len = htons(ulen);
	uh->check = 0;
	csum = csum_partial(uh, ulen, 0);
	uh->check = csum_tcpudp_magic(fl4.saddr, fl4.daddr, ulen, IPPROTO_UDP, csum);
	if (!uh->check)
		uh->check = CSUM_MANGLED_0;
	skb->ip_summed = CHECKSUM_NONE;

	iph->version = 4;
	iph->ihl = sizeof(*iph) / 4;
	iph->tos = 0;
	iph->tot_len = htons(skb->len);
	iph->frag_off = skb->len <= dst_mtu(&rt->dst) ? htons(IP_DF) : 0;
	iph->ttl = ip4_dst_hoplimit(&rt->dst);
	iph->protocol = IPPROTO_UDP;
	iph->saddr = fl4.saddr;
	iph->daddr = fl4.daddr;
	skb->protocol = htons(ETH_P_IP);
	skb_dst_set(skb, &rt->dst);
	ip_select_ident(net, skb, NULL);

	err = ip_local_out(net, NULL, skb);
	return err > 0 ? net_xmit_errno(err) : err;
}
