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
 * Checksum of a fresh 20-byte IPv4 header (no options: the program never
 * writes any); ip->check must be 0. Unrolled: a loop costs more than it saves.
 */
static __always_inline __u16 bfx_ipv4_csum(const struct iphdr *ip)
{
	const __u16 *w = (const __u16 *)ip;
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += w[i];
	return bfx_csum_fold(sum);
}

#endif /* BIFROST_XDP_CSUM_H */
