/* SPDX-License-Identifier: GPL-2.0 */
/*
 * 802.1Q and QinQ (802.1ad) frames: up to two tags, outer TPID 0x88a8 or
 * 0x8100, inner 0x8100 (and 0x8100 twice, as older QinQ gear sends).
 *
 * The pipeline works on untagged frames, so a tagged frame has its tags
 * taken out first (the MACs move up over them) and put back afterwards on
 * whatever the pipeline passes or transmits: the stack then delivers a
 * passed frame to its VLAN device as before, and XDP_TX sends the frame back
 * on the VLAN it came in on. A dropped frame needs nothing back. A
 * redirected frame keeps its tags as well: the program does not know the
 * egress VLAN (bpf_fib_lookup answers with the VLAN device, which has no
 * XDP transmit), so on a trunk the game servers must be on the same VLAN.
 * Untagged frames pay one compare.
 */
#ifndef BIFROST_XDP_VLAN_H
#define BIFROST_XDP_VLAN_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "encap.h"

#define BFX_ETH_P_8021Q 0x8100
#define BFX_ETH_P_8021AD 0x88a8
#define BFX_VLAN_TAG 4
#define BFX_MACS 12

static __always_inline int bfx_is_vlan(__be16 proto)
{
	return proto == bpf_htons(BFX_ETH_P_8021Q) || proto == bpf_htons(BFX_ETH_P_8021AD);
}

/* Move the 12 bytes of MACs at from to to (either way, overlapping): loaded first. */
static __always_inline void bfx_move_macs(void *to, const void *from)
{
	__u32 a = *(const __u32 *)from, b = *(const __u32 *)(from + 4),
	      c = *(const __u32 *)(from + 8);

	*(__u32 *)to = a;
	*(__u32 *)(to + 4) = b;
	*(__u32 *)(to + 8) = c;
}

enum bfx_vlan_result {
	BFX_VLAN_NONE,		/* untagged (or too short to tell): nothing done */
	BFX_VLAN_STRIPPED,	/* tags in the metadata, frame untagged */
	BFX_VLAN_MALFORMED,	/* truncated tags, or more than two */
	BFX_VLAN_NO_META,	/* the driver keeps no XDP metadata: frame untouched */
};

/*
 * Take the frame's tags out (*bytes: the frame's length as it came) into the XDP metadata in front of the frame:
 * two 4-byte tags (TPID and TCI as they lie), the second 0 when there is one
 * (no TPID is 0). The metadata moves with every bpf_xdp_adjust_head, so it
 * outlives encap and decap; and it keeps the tag count out of the verifier's
 * sight, which would otherwise explore the whole pipeline once per count.
 */
static __always_inline enum bfx_vlan_result bfx_vlan_strip(struct xdp_md *ctx, __u32 *bytes)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 t0, t1 = 0, len = BFX_VLAN_TAG, *meta;

	*bytes = data_end - data;
	/* One 16-bit load: ethhdr is packed, so eth->h_proto would be two byte loads. */
	if (bfx_likely((void *)(eth + 1) > data_end || !bfx_is_vlan(*(__be16 *)(data + BFX_MACS))))
		return BFX_VLAN_NONE;
	if (data + BFX_MACS + BFX_VLAN_TAG + 2 > data_end)
		return BFX_VLAN_MALFORMED;
	t0 = *(__u32 *)(data + BFX_MACS);
	if (bfx_is_vlan(*(__be16 *)(data + BFX_MACS + BFX_VLAN_TAG))) {
		if (data + BFX_MACS + 2 * BFX_VLAN_TAG + 2 > data_end)
			return BFX_VLAN_MALFORMED;
		t1 = *(__u32 *)(data + BFX_MACS + BFX_VLAN_TAG);
		len = 2 * BFX_VLAN_TAG;
		if (bfx_is_vlan(*(__be16 *)(data + BFX_MACS + 2 * BFX_VLAN_TAG)))
			return BFX_VLAN_MALFORMED;
	}
	bfx_move_macs(data + len, data);
	if (bpf_xdp_adjust_meta(ctx, -2 * BFX_VLAN_TAG)) {
		/* As it came (the helper call forgot every packet bound). */
		data = (void *)(long)ctx->data;
		data_end = (void *)(long)ctx->data_end;
		if (data + BFX_MACS + 2 * BFX_VLAN_TAG > data_end)
			return BFX_VLAN_MALFORMED;
		bfx_move_macs(data, data + len);
		return BFX_VLAN_NO_META;
	}
	meta = (void *)(long)ctx->data_meta;
	data = (void *)(long)ctx->data;
	if ((void *)(meta + 2) > data)
		return BFX_VLAN_NO_META;
	meta[0] = t0;
	meta[1] = t1;
	if (bpf_xdp_adjust_head(ctx, len))
		return BFX_VLAN_MALFORMED;
	BFX_HEAD_MOVED(len);
	return BFX_VLAN_STRIPPED;
}

/* Put len bytes of tags (t0, then t1 when len is 8) back after the MACs. */
static __always_inline int bfx_vlan_put(struct xdp_md *ctx, __u32 t0, __u32 t1, const int len,
					int act)
{
	void *data, *data_end;

	if (bpf_xdp_adjust_head(ctx, -len))
		return XDP_DROP;
	BFX_HEAD_MOVED(-len);
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + BFX_MACS + len + 2 > data_end)
		return XDP_DROP;
	bfx_move_macs(data, data + len);
	*(__u32 *)(data + BFX_MACS) = t0;
	if (len == 2 * BFX_VLAN_TAG)
		*(__u32 *)(data + BFX_MACS + BFX_VLAN_TAG) = t1;
	/* The stack need not see the metadata: give it back. */
	bpf_xdp_adjust_meta(ctx, 2 * BFX_VLAN_TAG);
	return act;
}

/*
 * After the pipeline: the tags in the metadata, if any, back on a frame it
 * passes or transmits; its verdict, or DROP. An untagged frame has no
 * metadata (data_meta is data, or past it where the driver keeps none).
 */
static __always_inline int bfx_vlan_restore(struct xdp_md *ctx, int act)
{
	__u32 *meta = (void *)(long)ctx->data_meta;
	void *data = (void *)(long)ctx->data;
	__u32 t0, t1;

	if (bfx_likely((void *)(meta + 2) > data))
		return act;
	if (act == XDP_DROP || act == XDP_ABORTED)
		return act;
	t0 = meta[0];
	t1 = meta[1];
	if (!t1)
		return bfx_vlan_put(ctx, t0, 0, BFX_VLAN_TAG, act);
	return bfx_vlan_put(ctx, t0, t1, 2 * BFX_VLAN_TAG, act);
}

#endif /* BIFROST_XDP_VLAN_H */
