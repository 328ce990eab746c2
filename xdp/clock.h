/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Clock calibration for the loader (bifrost.xdp.maps.calibrate_clock): writes
 * bpf_jiffies64() into the first 8 bytes of a BPF_PROG_TEST_RUN packet; two
 * runs some time apart give HZ, hence settings.ns_per_jiffy (see bfx_now()).
 * Included by every object that carries the pipeline.
 */
#ifndef BIFROST_XDP_CLOCK_H
#define BIFROST_XDP_CLOCK_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int bifrost_clock(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	if (data + sizeof(__u64) > data_end)
		return XDP_ABORTED;
	*(__u64 *)data = bpf_jiffies64();
	return XDP_PASS;
}

#endif /* BIFROST_XDP_CLOCK_H */
