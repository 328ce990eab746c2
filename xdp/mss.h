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
 * Lower the MSS option of the SYN whose TCP header starts off bytes into
 * the frame to mss. Options are walked as RFC 9293 section 3.2 lays them
 * out; a malformed list is left alone (the receiver's stack judges it).
 *
 * The walk goes byte by byte (pos) and acts only where the next option
 * starts (next): pos is a constant in each step the verifier takes, and
 * next is only compared, never added to a pointer. Walking by option
 * instead (off += len) made off a precise range that differed in every
 * step, and the verifiers explored the walk path by path: ~90K insns
 * (6.18) of the all-modules object's budget, far more on 6.1.
 *
 * A global function, so the verifier checks it once on its own: inlined, the
 * walk was explored again for every state the game modules leave on the
 * forward path. It only stores into the packet, so the caller's packet
 * bounds stay valid. Called for SYNs only: the call costs nothing on
 * ordinary traffic.
 */
__noinline int bfx_clamp_mss(struct xdp_md *ctx, __u32 off_tcp, __u32 mss)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct tcphdr *tcp = data + (off_tcp & 127);
	__u32 pos, next = sizeof(*tcp), doff;
	__u16 old, new, *field;
	__u8 *opt;
	__u32 sum;

	if ((void *)(tcp + 1) > data_end)
		return 0;
	doff = tcp->doff * 4;
	for (pos = sizeof(*tcp); pos < sizeof(*tcp) + BFX_TCP_OPT_STEPS; pos++) {
		if (pos >= doff)
			return 0;
		/* Kept a value, not folded into a jump to it. */
		asm volatile("" : "+r"(next));
		if (pos != next)
			continue;
		opt = (void *)tcp + pos;
		if ((void *)(opt + 2) > data_end)
			return 0;
		if (opt[0] == BFX_TCPOPT_EOL)
			return 0;
		if (opt[0] == BFX_TCPOPT_NOP) {
			next = pos + 1;
			continue;
		}
		if (opt[1] < 2)
			return 0;
		if (opt[0] != BFX_TCPOPT_MSS) {
			next = pos + opt[1];
			continue;
		}
		if (opt[1] != BFX_TCPOLEN_MSS || pos + BFX_TCPOLEN_MSS > doff ||
		    (void *)(opt + BFX_TCPOLEN_MSS) > data_end)
			return 0;
		field = (void *)(opt + 2);
		old = *field;
		if (bpf_ntohs(old) <= mss)
			return 0;
		new = bpf_htons(mss);
		*field = new;
		/*
		 * The checksum sums 16-bit words from the header's start; a field
		 * at an odd offset (after a NOP) straddles two of them and counts
		 * byte-swapped (RFC 1071's byte-order independence).
		 */
		if (pos & 1) {
			old = bfx_bswap16(old);
			new = bfx_bswap16(new);
		}
		sum = (__u16)~tcp->check + (__u16)~old + new;
		tcp->check = bfx_csum_fold(sum);
		return 1;
	}
	return 0;
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
