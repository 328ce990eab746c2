/* SPDX-License-Identifier: GPL-2.0 */
/*
 * FOU encapsulation and decapsulation, and the next-hop cache.
 *
 * FOU as the kernel does it (protocols.md): outer IPv4 (proto 17) | UDP |
 * inner IPv4. No header of its own, so +28 bytes. UDP checksum 0, as the
 * kernel's own `noencap-csum` default: legal for IPv4 and the inner packet
 * keeps its own checksum.
 */
#ifndef BIFROST_XDP_ENCAP_H
#define BIFROST_XDP_ENCAP_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "csum.h"
#include "hash.h"
#include "maps.h"

#ifndef AF_INET
#define AF_INET 2
#endif

#define BFX_FOU_OVERHEAD ((int)(sizeof(struct iphdr) + sizeof(struct udphdr)))
#define BFX_IP_DF 0x4000
#define BFX_OUTER_TTL 64

/*
 * The bench wrapper (xdp/bench/) restores the frame after every repeat and
 * must know how far each adjust_head moved its start, and how long an inner
 * packet the authenticated encap (-len) or decap (+len) moved by 8 bytes;
 * the program itself never needs either, so both are empty outside the bench.
 */
#ifndef BFX_HEAD_MOVED
#define BFX_HEAD_MOVED(delta) do { } while (0)
#endif
#ifndef BFX_MOVED
#define BFX_MOVED(len) do { } while (0)
#endif
/*
 * How bfx_auth_append() grows the tail; a test build (tests/bpf/
 * test_xdp_token_shift.py) makes growing fail, so every length takes the
 * no-tailroom fallback, which real frames take only at some lengths.
 */
#ifndef BFX_GROW_TAIL
#define BFX_GROW_TAIL(ctx, delta) bpf_xdp_adjust_tail(ctx, delta)
#endif

/* Outcome of a next-hop resolution. */
enum bfx_nh_result {
	BFX_NH_OK,
	BFX_NH_NEIGH,		/* route known, neighbour not: let the stack resolve it */
	BFX_NH_NO_ROUTE,	/* no route, or forwarding off on the ingress device */
	BFX_NH_UNREACHABLE,	/* a blackhole, unreachable or prohibit route */
};

/* The counter of a next hop that could not be resolved (anything but BFX_NH_OK/NEIGH). */
static __always_inline __u32 bfx_nh_drop_reason(enum bfx_nh_result res)
{
	if (res == BFX_NH_UNREACHABLE)
		return BFX_DROP_UNREACHABLE;
	return BFX_DROP_NO_ROUTE;
}

static __always_inline void bfx_fib_init(struct bpf_fib_lookup *fib, struct xdp_md *ctx,
					 __be32 src, __be32 dst)
{
	fib->family = AF_INET;
	fib->l4_protocol = IPPROTO_UDP;
	fib->ipv4_src = src;
	fib->ipv4_dst = dst;
	fib->ifindex = ctx->ingress_ifindex;
}

/*
 * bpf_fib_lookup into *nh. It looks up twice: once for the MACs (tot_len 0
 * skips the MTU check) and once with an oversized length to learn the route
 * MTU (mtu_result). Only on a cache miss or expiry.
 */
static __always_inline enum bfx_nh_result
bfx_fib_resolve(struct xdp_md *ctx, __be32 src, __be32 dst, __u64 expires,
		struct bfx_nexthop *nh)
{
	struct bpf_fib_lookup fib = {};
	long rc;

	bfx_fib_init(&fib, ctx, src, dst);
	rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return BFX_NH_NEIGH;
	if (rc == BPF_FIB_LKUP_RET_BLACKHOLE || rc == BPF_FIB_LKUP_RET_UNREACHABLE ||
	    rc == BPF_FIB_LKUP_RET_PROHIBIT)
		return BFX_NH_UNREACHABLE;
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return BFX_NH_NO_ROUTE;
	__builtin_memcpy(nh->smac, fib.smac, ETH_ALEN);
	__builtin_memcpy(nh->dmac, fib.dmac, ETH_ALEN);
	nh->ifindex = fib.ifindex;
	nh->mtu = 0xffff;
	nh->dst = dst;

	__builtin_memset(&fib, 0, sizeof(fib));
	bfx_fib_init(&fib, ctx, src, dst);
	fib.tot_len = 0xffff;
	if (bpf_fib_lookup(ctx, &fib, sizeof(fib), 0) == BPF_FIB_LKUP_RET_FRAG_NEEDED)
		nh->mtu = fib.mtu_result;
	nh->expires_ns = expires;
	return BFX_NH_OK;
}

/*
 * In front of nexthops, a direct-mapped copy of its entries at a hash of the
 * destination, in the object's own .bss: an array element is a load, an LRU
 * lookup is a call that cost 0.4x the parse-only baseline on the return path
 * (benchmarks/bench_xdp.py). A cache and no more: nothing pins it, a new
 * object starts empty, and each entry keeps the expiry of the nexthops entry
 * it copies, so a route change takes effect exactly as before. A slot holds
 * one destination at a time; a colliding one finds it in nexthops.
 */
#define BFX_NH_CACHE_SLOTS 16384
static struct bfx_nexthop bfx_nh_cache[BFX_NH_CACHE_SLOTS];

/*
 * Copy the slot to *out if it holds dst, unexpired. A writer clears dst
 * first and sets it last, and the copy is checked against dst again, so a
 * copy torn by a writer on another CPU is a miss, never another's MACs.
 */
static __always_inline int bfx_nh_cache_get(struct bfx_nexthop *slot, __be32 dst, __u64 now,
					    struct bfx_nexthop *out)
{
	if (*(volatile __be32 *)&slot->dst != dst)
		return 0;
	*out = *slot;
	asm volatile("" ::: "memory");
	return *(volatile __be32 *)&slot->dst == dst && now < out->expires_ns;
}

static __always_inline void bfx_nh_cache_put(struct bfx_nexthop *slot,
					     const struct bfx_nexthop *nh, __be32 dst)
{
	*(volatile __be32 *)&slot->dst = 0;
	asm volatile("" ::: "memory");
	__builtin_memcpy(slot->smac, nh->smac, ETH_ALEN);
	__builtin_memcpy(slot->dmac, nh->dmac, ETH_ALEN);
	slot->ifindex = nh->ifindex;
	slot->mtu = nh->mtu;
	slot->expires_ns = nh->expires_ns;
	asm volatile("" ::: "memory");
	*(volatile __be32 *)&slot->dst = dst;
}

/*
 * Next hop towards a client (return path): the cache above, else the LRU
 * hash by destination, else bpf_fib_lookup. *copy holds a cache hit.
 */
static __always_inline struct bfx_nexthop *
bfx_nexthop(struct xdp_md *ctx, __be32 src, __be32 dst, const struct bfx_settings *s,
	    enum bfx_nh_result *res, struct bfx_nexthop *copy)
{
	struct bfx_nexthop *slot = &bfx_nh_cache[bfx_fmix32(dst) & (BFX_NH_CACHE_SLOTS - 1)];
	struct bfx_nexthop *nh, fresh = {};
	__u64 now = bfx_now(s);

	*res = BFX_NH_OK;
	if (bfx_nh_cache_get(slot, dst, now, copy))
		return copy;
	nh = bpf_map_lookup_elem(&nexthops, &dst);
	if (nh && now < nh->expires_ns) {
		bfx_nh_cache_put(slot, nh, dst);
		return nh;
	}
	*res = bfx_fib_resolve(ctx, src, dst, now + s->nexthop_ttl_ns, &fresh);
	if (*res != BFX_NH_OK)
		return NULL;
	bpf_map_update_elem(&nexthops, &dst, &fresh, BPF_ANY);
	bfx_nh_cache_put(slot, &fresh, dst);
	nh = bpf_map_lookup_elem(&nexthops, &dst);
	if (!nh)
		*res = BFX_NH_NO_ROUTE;
	return nh;
}

/*
 * Next hop towards a game server (forward path): its array slot, refreshed in
 * place. Two CPUs refreshing one slot write the same values; a reader racing
 * a refresh can at worst use the previous MACs for a packet.
 */
static __always_inline struct bfx_nexthop *
bfx_gs_nexthop(struct xdp_md *ctx, __u32 slot, __be32 src, __be32 dst,
	       const struct bfx_settings *s, enum bfx_nh_result *res)
{
	struct bfx_nexthop *nh = bpf_map_lookup_elem(&gs_nexthops, &slot);
	__u64 now = bfx_now(s);

	if (!nh) {
		*res = BFX_NH_NO_ROUTE;
		return NULL;
	}
	if (bfx_likely(nh->dst == dst && now < nh->expires_ns)) {
		*res = BFX_NH_OK;
		return nh;
	}
	*res = bfx_fib_resolve(ctx, src, dst, now + s->nexthop_ttl_ns, nh);
	return *res == BFX_NH_OK ? nh : NULL;
}

/* Spread flows over the game server's RX queues: murmur3's finalizer over the 5-tuple. */
static __always_inline __u16 bfx_flow_port(__be32 saddr, __be32 daddr, __u32 ports, __u8 proto)
{
	__u32 h = bfx_fmix32(saddr ^ (daddr * 0x9e3779b1U) ^ ports ^ proto);

	/* 49152..65535, the IANA dynamic range. */
	return 0xc000 | (h & 0x3fff);
}

/* What the encapsulation needs from the inner packet, read before adjust_head. */
struct bfx_inner {
	__be32 saddr;
	__be32 daddr;
	__u32 ports;		/* sport/dport as they lie in the packet */
	__u16 tot_len;		/* host order */
	__be16 frag_off;
	__u8 tos;
	__u8 proto;
	__be16 id;
};

/*
 * Make room for the token when the frame has no tailroom: grow the head by
 * 8 bytes and move the first len bytes (headers and inner packet) down into
 * it, leaving the 8 bytes after them free. A driver's frame usually has
 * tailroom; veth on 6.12 builds a copied frame (skb_pp_cow_data) whose
 * tailroom is only its cache-line slack, so bpf_xdp_adjust_tail() fails for
 * about one length in eight. Chunks are copied front to back: each reads 8
 * bytes above where it writes, so no chunk overwrites bytes not yet read.
 */
#define BFX_SHIFT_CHUNK 64
static __always_inline int bfx_shift_to_head(struct xdp_md *ctx, __u32 len)
{
	__u8 buf[2 * BFX_SHIFT_CHUNK];
	__u32 i, off;
	__u64 n;

	if (len > 32 * BFX_SHIFT_CHUNK || bpf_xdp_adjust_head(ctx, -BFX_AUTH_KEY_BYTES))
		return -1;
	BFX_HEAD_MOVED(-BFX_AUTH_KEY_BYTES);
	for (i = 0; i < 32; i++) {
		off = i * BFX_SHIFT_CHUNK;
		if (off >= len)
			break;
		n = len - off;
		if (n > BFX_SHIFT_CHUNK)
			n = BFX_SHIFT_CHUNK;
		/*
		 * The verifier must see the size within 1..sizeof(buf) (6.1
		 * refuses a size that may be zero); clang drops a plain mask it
		 * can prove redundant, so the bounding is asm: n is 1..64 here,
		 * and ((n - 1) & 127) + 1 leaves it so.
		 */
		asm volatile("%[n] += -1" : [n] "+r"(n));
		asm volatile("%[n] &= 127" : [n] "+r"(n));
		asm volatile("%[n] += 1" : [n] "+r"(n));
		if (bpf_xdp_load_bytes(ctx, off + BFX_AUTH_KEY_BYTES, buf, n) ||
		    bpf_xdp_store_bytes(ctx, off, buf, n))
			return -1;
	}
	return 0;
}

/*
 * Authenticated FOU (AUTH.md): the send key, 8 bytes in wire order, right
 * after the inner packet of an encapsulated frame, which then ends there
 * (Ethernet padding behind the inner packet is cut). 0 on success.
 */
static __always_inline int bfx_auth_append(struct xdp_md *ctx, __u32 inner_len, __u64 key)
{
	/* An XDP frame fits in a page: the mask only tells the verifier so. */
	__u32 at = sizeof(struct ethhdr) + BFX_FOU_OVERHEAD + (inner_len & 0x3fff);
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	int delta = (int)(at + BFX_AUTH_KEY_BYTES) - (int)(data_end - data);
	void *tok;

	if (delta && BFX_GROW_TAIL(ctx, delta)) {
		/* Only growing fails: no tailroom (below). */
		if (bfx_shift_to_head(ctx, at) || bpf_xdp_adjust_tail(ctx, delta - BFX_AUTH_KEY_BYTES))
			return -1;
	}
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	tok = data + at;
	if (tok + BFX_AUTH_KEY_BYTES > data_end)
		return -1;
	*(__u64 *)tok = key;
	return 0;
}

/*
 * The Ethernet header towards nh, 16 bits at a time: memcpy into the packed
 * ethhdr would go a byte at a time, and the MACs in bfx_nexthop are only
 * 2-byte aligned (the verifier refuses a misaligned load from the stack).
 */
static __always_inline void bfx_write_eth(struct ethhdr *eth, const struct bfx_nexthop *nh)
{
	__u16 *d = (__u16 *)eth;
	const __u16 *dmac = (const __u16 *)nh->dmac, *smac = (const __u16 *)nh->smac;

	d[0] = dmac[0];
	d[1] = dmac[1];
	d[2] = dmac[2];
	d[3] = smac[0];
	d[4] = smac[1];
	d[5] = smac[2];
	d[6] = bpf_htons(ETH_P_IP);
}

/*
 * The authenticated encap and decap move the token's 8 bytes with one
 * adjust_head and a copy of the inner packet, instead of adjust_head plus
 * adjust_tail: on the hosts measured a helper call costs about as much as
 * copying 100-200 bytes (benchmarks/bench_xdp.py), and game datagrams are
 * mostly that small. Longer packets, and frames with Ethernet padding after
 * the packet, take bpf_xdp_adjust_tail.
 */
#define BFX_MOVE_MAX 255

/*
 * An offset into the packet, masked where clang cannot see it: clang folds a
 * plain mask into arithmetic the verifier cannot bound (as bfx_load_be16()).
 */
static __always_inline __u64 bfx_move_off(__u64 off)
{
	asm volatile("%[off] &= 255" : [off] "+r"(off));
	return off;
}

/*
 * Move the len bytes at p 8 bytes towards the frame's start, front to back
 * (each store lands below every byte not yet loaded): a chunk per set bit
 * of len, each with one bounds check, then the last 1..7 bytes as one
 * 8-byte move ending at len. 8 <= len <= BFX_MOVE_MAX; the caller proved
 * p - 8 is inside the frame.
 */
#define BFX_DOWN_CHUNK(n)						\
	if (len & (n)) {						\
		s = p + bfx_move_off(off);				\
		if ((void *)s + (n) > data_end)				\
			return -1;					\
		_Pragma("unroll")					\
		for (i = 0; i < (n) / 8; i++)				\
			s[i - 1] = s[i];				\
		off += (n);						\
	}
static __always_inline int bfx_move_down8(void *p, __u32 len, void *data_end)
{
	int i;
	__u32 off = 0;
	__u64 *s;

	BFX_DOWN_CHUNK(128)
	BFX_DOWN_CHUNK(64)
	BFX_DOWN_CHUNK(32)
	BFX_DOWN_CHUNK(16)
	BFX_DOWN_CHUNK(8)
	if (len & 7) {
		s = p + bfx_move_off(len - 8);
		if ((void *)(s + 1) > data_end)
			return -1;
		s[-1] = s[0];
	}
	return 0;
}

/*
 * Move the len bytes at p 8 bytes towards the frame's end, back to front:
 * the chunks of bfx_move_down8() from the end, then the first 1..7 bytes as
 * one 8-byte move from p. 8 <= len <= BFX_MOVE_MAX; the caller proved
 * p + len + 8 is inside the frame.
 */
#define BFX_UP_CHUNK(n)							\
	if (len & (n)) {						\
		end -= (n);						\
		s = p + bfx_move_off(end);				\
		if ((void *)s + (n) + 8 > data_end)			\
			return -1;					\
		_Pragma("unroll")					\
		for (i = (n) / 8; i > 0; i--)				\
			s[i] = s[i - 1];				\
	}
static __always_inline int bfx_move_up8(void *p, __u32 len, void *data_end)
{
	int i;
	__u32 end = len;
	__u64 *s;

	BFX_UP_CHUNK(128)
	BFX_UP_CHUNK(64)
	BFX_UP_CHUNK(32)
	BFX_UP_CHUNK(16)
	BFX_UP_CHUNK(8)
	if (len & 7) {
		s = p;
		if ((void *)(s + 2) > data_end)
			return -1;
		s[1] = s[0];
	}
	return 0;
}

/*
 * Push outer Ethernet/IPv4/UDP in front of the IPv4 packet; 0 on success.
 * auth: put key, the auth token (AUTH.md), right after the inner packet,
 * where the outer lengths count it and it ends the frame. A value, not a
 * pointer into settings: 6.1's verifier loses a maybe-NULL pointer's check
 * across the helper call.
 */
static __always_inline int bfx_fou_encap(struct xdp_md *ctx, const struct bfx_inner *in,
					 const struct bfx_nexthop *nh, __be32 pop_addr,
					 __be32 gs_addr, __u16 fou_port, int auth, __u64 key)
{
	struct ethhdr *eth;
	struct iphdr *ip;
	struct udphdr *udp;
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 trailer = auth ? BFX_AUTH_KEY_BYTES : 0, len = in->tot_len;
	__u16 ver_tos, tot_len, frag, ttl_proto, id, sport;
	/* Token by moving the packet: the frame ends with it, and it is short. */
	int move = auth && data_end - data == sizeof(*eth) + len && len <= BFX_MOVE_MAX;
	int push = BFX_FOU_OVERHEAD + (move ? BFX_AUTH_KEY_BYTES : 0);
	__u64 *tok;

	if (bfx_unlikely(bpf_xdp_adjust_head(ctx, -push)))
		return -1;
	BFX_HEAD_MOVED(-push);
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	ip = (void *)(eth + 1);
	udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > data_end)
		return -1;
	if (move) {
		/* The inner packet lies 8 bytes past the outer UDP header: close the gap. */
		if (len < sizeof(struct iphdr) ||
		    bfx_move_down8((void *)(udp + 1) + BFX_AUTH_KEY_BYTES, len, data_end))
			return -1;
		BFX_MOVED(-(int)len);
		tok = (void *)(udp + 1) + (len & BFX_MOVE_MAX);
		if ((void *)(tok + 1) > data_end)
			return -1;
		*tok = key;
	}

	bfx_write_eth(eth, nh);
	/* Whole 16-bit words: version/ihl and tos, ttl and protocol. */
	ver_tos = bpf_htons(0x4500 | in->tos);
	tot_len = bpf_htons(len + BFX_FOU_OVERHEAD + trailer);
	/*
	 * Keep the client's DF choice (RFC 2003 section 3.1, as the kernel's
	 * ipip): with DF, path MTU discovery works end to end (a router's
	 * frag-needed reaches the POP's kernel, whose route MTU the FIB lookup
	 * then reports, and bfx_too_big() tells the client); without DF the
	 * sender allowed fragmentation, so the outer may be fragmented too.
	 * ID (RFC 6864): an atomic datagram's (DF) means nothing, so 0; a
	 * fragmentable one needs an ID unique per (POP, game server, UDP) for
	 * the reassembly time: the inner ID, which its sender keeps unique for
	 * its own datagrams, xor the flow's source port, so clients whose IDs
	 * run in step do not collide. Free: no counter shared between CPUs.
	 */
	frag = in->frag_off & bpf_htons(BFX_IP_DF);
	sport = bpf_htons(bfx_flow_port(in->saddr, in->daddr, in->ports, in->proto));
	id = frag ? 0 : in->id ^ sport;
	ttl_proto = bpf_htons(BFX_OUTER_TTL << 8 | IPPROTO_UDP);
	*(__u16 *)ip = ver_tos;
	ip->tot_len = tot_len;
	ip->id = id;
	ip->frag_off = frag;
	*(__u16 *)&ip->ttl = ttl_proto;
	ip->check = bfx_ipv4_csum(ver_tos, tot_len, id, frag, ttl_proto, pop_addr, gs_addr);
	ip->saddr = pop_addr;
	ip->daddr = gs_addr;

	udp->source = sport;
	udp->dest = bpf_htons(fou_port);
	udp->len = bpf_htons(len + sizeof(*udp) + trailer);
	udp->check = 0;
	if (auth && !move)
		return bfx_auth_append(ctx, len, key);
	return 0;
}

/*
 * Strip outer IPv4 (20 bytes, no options) + UDP; write the new Ethernet header.
 * inner_len: non-zero (auth on) cuts the frame to the inner packet, which
 * removes the token and any Ethernet padding; 0 leaves the tail as it is.
 */
static __always_inline int bfx_fou_decap(struct xdp_md *ctx, const struct bfx_nexthop *nh,
					 __u32 inner_len)
{
	struct ethhdr *eth;
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	int delta = 0, pull = BFX_FOU_OVERHEAD;

	if (inner_len) {
		delta = (int)(sizeof(*eth) + BFX_FOU_OVERHEAD + inner_len) - (int)(data_end - data);
		if (delta == -BFX_AUTH_KEY_BYTES && inner_len <= BFX_MOVE_MAX) {
			/* Only the token after the packet: move the packet over it. */
			if (inner_len < sizeof(struct iphdr) ||
			    bfx_move_up8(data + sizeof(*eth) + BFX_FOU_OVERHEAD, inner_len, data_end))
				return -1;
			BFX_MOVED(inner_len);
			pull += BFX_AUTH_KEY_BYTES;
			delta = 0;
		}
	}
	if (delta && bpf_xdp_adjust_tail(ctx, delta))
		return -1;
	if (bpf_xdp_adjust_head(ctx, pull))
		return -1;
	BFX_HEAD_MOVED(pull);
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return -1;
	bfx_write_eth(eth, nh);
	return 0;
}

/*
 * Whether the 8 bytes at tok are an accepted key: unused key slots repeat
 * the send key, so this is four compares, no loop and no count.
 */
static __always_inline int bfx_auth_ok(const struct bfx_settings *s, void *tok, void *data_end)
{
	const __u64 *keys = (const __u64 *)s->auth_keys;
	__u64 t;

	if (tok + BFX_AUTH_KEY_BYTES > data_end)
		return 0;
	t = *(__u64 *)tok;
	return (t == keys[0]) | (t == keys[1]) | (t == keys[2]) | (t == keys[3]);
}

/* Same device: XDP_TX; another: redirect. */
static __always_inline int bfx_transmit(struct xdp_md *ctx, const struct bfx_nexthop *nh)
{
	if (nh->ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect(nh->ifindex, 0);
}

#endif /* BIFROST_XDP_ENCAP_H */
