/* SPDX-License-Identifier: GPL-2.0 */
/*
 * TCP MSS clamping on TCP rules, as iptables' TCPMSS --clamp-mss-to-pmtu:
 * the MSS option of a SYN (forward path) and of a SYN-ACK (return path) is
 * lowered to what fits the tunnel, so neither end sends a segment that would
 * exceed the path MTU once encapsulated (the client's segments are bounded by
 * the server's SYN-ACK, the server's by the client's SYN). The TCP checksum
 * is updated incrementally (RFC 1624, equation 3).
 */
#ifndef BIFROST_XDP_MSS_H
#define BIFROST_XDP_MSS_H

#include <linux/bpf.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>

#include "csum.h"

#define BFX_TCPOPT_EOL 0
#define BFX_TCPOPT_NOP 1
#define BFX_TCPOPT_MSS 2
#define BFX_TCPOLEN_MSS 4
/* IPv4 and TCP headers without options (RFC 6691): MSS = MTU - 40. */
#define BFX_MSS_OVERHEAD 40
/* Up to 40 bytes of options: at most 40 steps (all NOPs). */
#define BFX_TCP_OPT_STEPS 40

static __always_inline __u16 bfx_bswap16(__u16 v)
{
	return (v << 8) | (v >> 8);
}

/*
 * Lower the MSS option of the SYN at tcp (a header the caller bounds-checked)
 * to mss. Options are walked as RFC 9293 section 3.2 lays them out; a
 * malformed list is left alone (the receiver's stack judges it).
 */
static __always_inline void bfx_clamp_mss(struct tcphdr *tcp, void *data_end, __u16 mss)
{
	__u32 off = sizeof(*tcp), doff = tcp->doff * 4, i;
	__u16 old, new, *field;
	__u8 *opt;
	__u32 sum;

	for (i = 0; i < BFX_TCP_OPT_STEPS; i++) {
		if (off >= doff)
			return;
		opt = (void *)tcp + (off & 63);
		if ((void *)(opt + 2) > data_end)
			return;
		if (opt[0] == BFX_TCPOPT_EOL)
			return;
		if (opt[0] == BFX_TCPOPT_NOP) {
			off++;
			continue;
		}
		if (opt[1] < 2)
			return;
		if (opt[0] != BFX_TCPOPT_MSS) {
			off += opt[1];
			continue;
		}
		if (opt[1] != BFX_TCPOLEN_MSS || off + BFX_TCPOLEN_MSS > doff ||
		    (void *)(opt + BFX_TCPOLEN_MSS) > data_end)
			return;
		field = (void *)(opt + 2);
		old = *field;
		if (bpf_ntohs(old) <= mss)
			return;
		new = bpf_htons(mss);
		*field = new;
		/*
		 * The checksum sums 16-bit words from the header's start; a field
		 * at an odd offset (after a NOP) straddles two of them and counts
		 * byte-swapped (RFC 1071's byte-order independence).
		 */
		if (off & 1) {
			old = bfx_bswap16(old);
			new = bfx_bswap16(new);
		}
		sum = (__u16)~tcp->check + (__u16)~old + new;
		tcp->check = bfx_csum_fold(sum);
		return;
	}
}

/*
 * SYN (forward) or SYN-ACK (return): the segments whose MSS option bounds the
 * peer. Bounds-checked again: the verifier knows only the parser's shorter
 * UDP check on the shared path.
 */
static __always_inline int bfx_is_syn(const struct tcphdr *tcp, void *data_end)
{
	return (void *)(tcp + 1) <= data_end && tcp->syn && !tcp->rst;
}

#endif /* BIFROST_XDP_MSS_H */
