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

/*
 * Run by the loader (BPF_PROG_TEST_RUN) and pinned beside the program: writes
 * the BFX_MOD_* bits of the game modules compiled into this object into the
 * packet, so a config that needs a module the running object lacks is
 * refused instead of silently doing nothing.
 */
SEC("xdp")
int bifrost_modules(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	if (data + sizeof(__u32) > data_end)
		return XDP_ABORTED;
	*(__u32 *)data = BFX_MODULES_COMPILED;
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
