// SPDX-License-Identifier: GPL-2.0
/*
 * Bifrost POP: the XDP program on the anycast-facing interface.
 * See pipeline.h for the per-packet decisions and maps.h for the state.
 * Built by tools/bifrost/xdp/build.py with the generated module_config.h
 * passed through -include.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "clock.h"
#include "pipeline.h"

SEC("xdp")
int bifrost_xdp(struct xdp_md *ctx)
{
	return bfx_process(ctx);
}

/*
 * Attached to the receiving end of a veth pair in labs and tests: a veth
 * delivers XDP_TX/XDP_REDIRECT frames only to a peer running NAPI, which
 * an XDP program (or GRO) turns on. Physical NICs do not need it.
 */
SEC("xdp")
int bifrost_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
