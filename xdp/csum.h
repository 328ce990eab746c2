/* SPDX-License-Identifier: GPL-2.0 */
/* Checksums for the headers the program writes. */
#ifndef BIFROST_XDP_CSUM_H
#define BIFROST_XDP_CSUM_H

#include <linux/ip.h>
#include <linux/types.h>

static __always_inline __u16 bfx_csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/*
 * Checksum of a 20-byte IPv4 header without options whose 16-bit words, as
 * they lie in memory, are the arguments (check itself 0); addresses count
 * as two words each. Summed from registers, not re-read from the header
 * just written: that costs a store-to-load forward per word.
 */
static __always_inline __u16 bfx_ipv4_csum(__u16 ver_tos, __u16 tot_len, __u16 id, __u16 frag,
					   __u16 ttl_proto, __be32 saddr, __be32 daddr)
{
	__u32 sum = (__u32)ver_tos + tot_len + id + frag + ttl_proto;

	sum += (saddr & 0xffff) + (saddr >> 16) + (daddr & 0xffff) + (daddr >> 16);
	return bfx_csum_fold(sum);
}

#endif /* BIFROST_XDP_CSUM_H */
