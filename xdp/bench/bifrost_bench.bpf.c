// SPDX-License-Identifier: GPL-2.0
/*
 * Bench-only wrappers (benchmarks/bench_xdp.py). BPF_PROG_TEST_RUN does not
 * restore the packet between repeats on the hosts we measure on, so an
 * encapsulating program would re-encapsulate its own output (benchmarking.md).
 * Each wrapper saves the first BENCH_SAVE and the last BENCH_TAIL bytes, runs
 * the real pipeline, undoes the head and tail adjustments and copies the
 * bytes back, so every repeat sees the original packet. The parse-only
 * baseline pays the same save/restore.
 */
#include <linux/bpf.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

/*
 * What the body did to the frame (encap.h): how far it moved the frame's
 * start (BFX_HEAD_MOVED), and the inner packet it moved by 8 bytes instead
 * of growing or cutting the tail (BFX_MOVED: encap -len, decap +len). The
 * restore undoes exactly that. One CPU runs the bench, so one variable each.
 */
static int bench_head, bench_moved;
#define BFX_HEAD_MOVED(delta) (bench_head += (delta))
#define BFX_MOVED(len) (bench_moved = (len))

#include "../clock.h"
#include "../pipeline.h"

#define BENCH_SAVE 64

/* The baseline: parse Ethernet/IPv4/UDP with the same checks, then XDP_PASS. */
static __always_inline int bfx_parse_only(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct bfx_l4 l4;
	struct iphdr *ip;
	__u32 ihl;

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_DROP;
	ip = (void *)(eth + 1);
	ihl = bfx_ipv4_check(ip, data_end);
	if (!ihl || !bfx_l4_parse(ip, ihl, data_end, &l4))
		return XDP_DROP;
	return XDP_PASS;
}

/*
 * The floor of any encapsulation under this harness: push 28 bytes and write
 * fixed headers, no lookups. Tells how much of the forward path's ratio is
 * bpf_xdp_adjust_head (twice: the program's and the wrapper's restore).
 */
static __always_inline int bfx_encap_floor(struct xdp_md *ctx)
{
	struct bfx_nexthop nh = { .smac = { 2 }, .dmac = { 4 } };
	struct bfx_inner in = { .tot_len = 88, .proto = IPPROTO_UDP };

	if (bfx_fou_encap(ctx, &in, &nh, 1, 2, 5555, 0, 0))
		return XDP_DROP;
	return XDP_TX;
}

/*
 * The floor of authenticated encapsulation: the encap floor plus the 8-byte
 * token (for this short packet by moving it, which the restore undoes).
 */
static __always_inline int bfx_auth_floor(struct xdp_md *ctx)
{
	struct bfx_nexthop nh = { .smac = { 2 }, .dmac = { 4 } };
	struct bfx_inner in = { .tot_len = 88, .proto = IPPROTO_UDP };

	if (bfx_fou_encap(ctx, &in, &nh, 1, 2, 5555, 1, 0x0123456789abcdefULL))
		return XDP_DROP;
	return XDP_TX;
}

/*
 * Undo what the pipeline did to the frame's ends: the head moved by
 * bench_head (FOU encap pushed, decap pulled), the rest of the length change
 * was at the tail (with auth, the token's 8 bytes, unless encap or decap
 * moved the packet instead). Then the first BENCH_SAVE bytes and the last
 * BENCH_TAIL go back.
 */
#define BENCH_TAIL 8

/*
 * Copy the frame's last BENCH_TAIL bytes to buf (save) or back from it; 0 on
 * success. A subprogram, so the offset is computed from ctx where it is used.
 */
static __attribute__((noinline)) int bench_tail(struct xdp_md *ctx, __u8 *buf, int save)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 at = (__u64)(data_end - data) - BENCH_TAIL;
	__u8 *p;

	asm volatile("%[at] &= 0x3fff" : [at] "+r"(at));
	p = data + at;
	if ((void *)(p + BENCH_TAIL) > data_end)
		return -1;
	if (save)
		__builtin_memcpy(buf, p, BENCH_TAIL);
	else
		__builtin_memcpy(p, buf, BENCH_TAIL);
	return 0;
}

/*
 * Move back the inner packet that encap or decap moved by 8 bytes (BFX_MOVED),
 * in the frame whose ends are restored, as far as the copies of its first
 * BENCH_SAVE and last BENCH_TAIL bytes that follow do not put it back anyway:
 * encap moved it from just after the Ethernet header to 8 bytes before that,
 * decap from just after the outer UDP header to 8 bytes after it. A middle
 * shorter than 8 bytes is moved as 8, whose excess the copies overwrite.
 */
static __always_inline int bench_unmove(void *data, void *data_end, int len0)
{
	int moved = bench_moved, mid = len0 - BENCH_TAIL - BENCH_SAVE;

	bench_moved = 0;
	if (mid <= 0)
		return 0;
	if (moved < 0)
		return bfx_move_up8(data + BENCH_SAVE - 8, (mid < 8 ? 8 : mid) & BFX_MOVE_MAX,
				    data_end);
	if (mid < 8)	/* the 8 bytes that end the middle */
		return bfx_move_down8(data + BENCH_SAVE + (mid & 7), 8, data_end);
	return bfx_move_down8(data + BENCH_SAVE + 8, mid & BFX_MOVE_MAX, data_end);
}

/*
 * NEXT_SOURCE: after the restore, bump the IPv4 source address (offset 26 of
 * an untagged frame), so every repeat comes from a new client: a
 * spoofed-source flood, which makes the rate limiter insert on every packet.
 */
#define BENCH_PROG(name, body, NEXT_SOURCE)					\
SEC("xdp")									\
int name(struct xdp_md *ctx)							\
{										\
	void *data = (void *)(long)ctx->data;					\
	void *data_end = (void *)(long)ctx->data_end;				\
	int len0 = data_end - data, grown, head, act;				\
	__u8 saved[BENCH_SAVE], tail[BENCH_TAIL];				\
										\
	if (data + BENCH_SAVE > data_end)					\
		return XDP_ABORTED;						\
	__builtin_memcpy(saved, data, BENCH_SAVE);				\
	if (bench_tail(ctx, tail, 1))						\
		return XDP_ABORTED;						\
	act = body(ctx);							\
	data = (void *)(long)ctx->data;						\
	data_end = (void *)(long)ctx->data_end;					\
	head = bench_head;							\
	grown = data_end - data;						\
	/* A length first: clang would otherwise add pointers. */		\
	asm volatile("" : "+r"(grown));						\
	grown += head - len0;							\
	if (grown && bpf_xdp_adjust_tail(ctx, -grown))			\
		return XDP_ABORTED;						\
	if (head) {								\
		bench_head = 0;							\
		if (bpf_xdp_adjust_head(ctx, -head))				\
			return XDP_ABORTED;					\
	}									\
	data = (void *)(long)ctx->data;						\
	data_end = (void *)(long)ctx->data_end;					\
	if (bench_moved && bench_unmove(data, data_end, len0))		\
		return XDP_ABORTED;						\
	if (data + BENCH_SAVE > data_end)					\
		return XDP_ABORTED;						\
	__builtin_memcpy(data, saved, BENCH_SAVE);				\
	if (NEXT_SOURCE)							\
		*(__u32 *)(data + 26) =						\
			bpf_htonl(bpf_ntohl(*(__u32 *)(data + 26)) + 1);	\
	if (bench_tail(ctx, tail, 0))						\
		return XDP_ABORTED;						\
	return act;								\
}

BENCH_PROG(bench_baseline, bfx_parse_only, 0)
BENCH_PROG(bench_pipeline, bfx_process, 0)
BENCH_PROG(bench_pipeline_flood, bfx_process, 1)
BENCH_PROG(bench_encap_floor, bfx_encap_floor, 0)
BENCH_PROG(bench_auth_floor, bfx_auth_floor, 0)

char _license[] SEC("license") = "GPL";
