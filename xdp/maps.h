/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The program's maps. Layouts come from generated/bifrost_maps.h (rendered
 * from tools/bifrost/xdp/maps_def.py, which the Python loader also uses); the
 * loader pins every map under /sys/fs/bpf/bifrost/<iface>/ by the names below.
 */
#ifndef BIFROST_XDP_MAPS_H
#define BIFROST_XDP_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "generated/bifrost_maps.h"

/*
 * Config generations. Every map the config fills (settings, addr_slots, rules,
 * rule_modules, rule_slots, rule_overflow, anycast, gameservers, firewall)
 * holds two configs side by side, generation 0 and 1; config_gen[0] names
 * the one in force. A packet reads it once and then sees only that
 * generation, so it never sees a mix of two configs: `bifrost xdp apply`
 * writes the other generation, then switches config_gen in one store
 * (maps.py). Arrays take the generation in the index (gen * size + i), the
 * rule_overflow key in its gen field, anycast/gameservers a bit per
 * generation in their value, and the firewall a verdict per generation in
 * its value (bfx_firewall()).
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} config_gen SEC(".maps");

/* settings[gen]: POP address, FOU port, policies; an array so it is never missing. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BFX_GENERATIONS);
	__type(key, __u32);
	__type(value, struct bfx_settings);
} settings SEC(".maps");

/*
 * Rule ids are stable across configs (allocated by rule name, maps.py), so a
 * rule removed from the middle of the config renumbers no other; rule_names
 * (read by the loader only) records which name holds which id.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BFX_MAX_RULES + 1);
	__type(key, __u32);
	__type(value, struct bfx_rule_name);
} rule_names SEC(".maps");

/*
 * Forward rules, split so the per-packet lookup is two array loads, which the
 * verifier inlines, instead of a hash-map call (a third of the forward path's
 * cost when it was one): rule_slots is a direct-mapped table of rule keys
 * (anycast address, port or 0, proto; port ranges expanded by the loader) at
 * bfx_rule_hash(key), naming a rule id; rules holds the rules by id. A key
 * whose slot another key took lives in the rule_overflow hash, and its slot
 * carries BFX_SLOT_OVERFLOW, so only colliding slots pay for a hash lookup.
 * The loader places the keys (maps.py), with the same hash (maps_def.py).
 * Each holds both generations: rules[gen * (BFX_MAX_RULES + 1) + id],
 * rule_slots[gen * BFX_RULE_SLOTS + hash], rule_overflow key .gen.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BFX_GENERATIONS * (BFX_MAX_RULES + 1));
	__type(key, __u32);
	__type(value, struct bfx_rule);
} rules SEC(".maps");

/* mmap-able so the loader reads a generation's slots without a copy per slot. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BFX_GENERATIONS * BFX_RULE_SLOTS);
	__type(key, __u32);
	__type(value, struct bfx_rule_slot);
	__uint(map_flags, BPF_F_MMAPABLE);
} rule_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, BFX_GENERATIONS * BFX_MAX_RULE_KEYS);
	__type(key, struct bfx_rule_key);
	__type(value, struct bfx_rule_ref);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} rule_overflow SEC(".maps");

/*
 * The anycast and game-server addresses, direct-mapped like rule_slots but
 * small enough to stay in cache: the martian and game-server checks run on
 * every forwarded and returned packet, spoofed ones included, whose random
 * addresses would miss the cache in a big table. addr_slots[gen * ADDR_SLOTS
 * + bfx_addr_hash(addr)]; a slot with SLOT_OVERFLOW sends the lookup to the
 * anycast / gameservers hashes below (bfx_addr_is()).
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BFX_GENERATIONS * BFX_ADDR_SLOTS);
	__type(key, __u32);
	__type(value, struct bfx_addr_slot);
} addr_slots SEC(".maps");

/* Which game modules apply to a rule: rule_modules[gen * (BFX_MAX_RULES + 1) + id]. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BFX_GENERATIONS * (BFX_MAX_RULES + 1));
	__type(key, __u32);
	__type(value, struct bfx_rule_modules);
} rule_modules SEC(".maps");

/*
 * Anycast addresses this POP serves: uncovered traffic to them is dropped.
 * value.gens: bit g set = served in generation g; room for two full configs.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, BFX_GENERATIONS * BFX_MAX_ANYCAST);
	__type(key, __be32);
	__type(value, struct bfx_anycast);
} anycast SEC(".maps");

/* Game-server machines allowed to send FOU return traffic to the POP (value.gens). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, BFX_GENERATIONS * BFX_MAX_GAMESERVERS);
	__type(key, __be32);
	__type(value, struct bfx_gameserver);
} gameservers SEC(".maps");

/*
 * The block and allow lists as one trie, so a packet pays one LPM lookup:
 * the loader drops block prefixes inside an allow prefix, so the longest
 * match says what the lists together mean (allow wins). Both generations
 * share the trie: the value holds a BFX_FW_GEN_BITS-bit field per
 * generation, its verdict (BFX_FW_*) and whether the prefix is that
 * generation's own (BFX_FW_MEMBER). A prefix only one generation has
 * carries, for the other, that generation's longest-match verdict (the
 * loader computes it), so each generation's lookups answer as its own trie.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, BFX_GENERATIONS * 2 * BFX_MAX_PREFIXES);
	__type(key, struct bfx_lpm_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} firewall SEC(".maps");

/*
 * Token buckets of sources no module vouches for; LRU so old buckets go
 * first. Each CPU gets its own LRU list (BPF_F_NO_COMMON_LRU: made for
 * "external traffic facing machines under attack"): RSS spreads a flood over
 * every queue, and one common list would serialize them on its lock. The
 * price: a CPU evicts from its own share (max_entries / CPUs); a client's
 * flow stays on one queue anyway. Under a spoofed-source flood the program
 * stops inserting here (flood mode, bfx_rate_check()), and validated clients
 * keep their buckets in the modules' game_clients (modules/game_clients.h), which only
 * authenticated return traffic inserts into: a flood evicts neither.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, BFX_MAX_RATE_SOURCES);
	__type(key, struct bfx_rate_key);
	__type(value, struct bfx_rate_state);
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
} rate_limit SEC(".maps");

/*
 * Flood mode (bfx_under_flood()): per CPU, how many sources without a bucket
 * arrived in the current one-second window.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bfx_flood_state);
} flood SEC(".maps");

/*
 * A bit per hash of (source, rule) that was ever given a rate_limit bucket,
 * set on insert and never cleared: a clear bit proves there is no bucket, so
 * flood mode skips the rate_limit lookup (a random access into its 2 MB of
 * buckets, most of a flood packet's cost) for sources never seen. A set bit
 * only costs that lookup; flood mode caps inserts, so the bits fill slowly.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BFX_RATE_FILTER_BITS / 64);
	__type(key, __u32);
	__type(value, __u64);
} rate_known SEC(".maps");

/*
 * In flood mode, the one bucket per rule (per CPU, index rule id) that every
 * source without a bucket of its own is charged to.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BFX_MAX_RULES + 1);
	__type(key, __u32);
	__type(value, struct bfx_rate_state);
} flood_budget SEC(".maps");

/*
 * destination -> MACs and egress device. bpf_fib_lookup costs as much as the
 * rest of the forward path (benchmarking.md), so it runs only on a miss or
 * after expires_ns; the loader flushes the table when routes change. The
 * return path asks a direct-mapped copy in .bss first (bfx_nh_cache, encap.h).
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, BFX_MAX_NEXTHOPS);
	__type(key, __be32);
	__type(value, struct bfx_nexthop);
} nexthops SEC(".maps");

/*
 * The forward path's next hops, one slot per game server (rule->gs_slot): an
 * array lookup is inlined by the verifier, a hash lookup is not, and this is
 * the hottest path. Entries carry their destination, so a slot the loader
 * reassigned is simply looked up again.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BFX_MAX_GAMESERVERS);
	__type(key, __u32);
	__type(value, struct bfx_nexthop);
} gs_nexthops SEC(".maps");

/* Per CPU, the budgets of ICMP replies sent and errors forwarded (xdp/icmp.h). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct bfx_rate_state);
} icmp_budget SEC(".maps");

/* Per-CPU packets/bytes, index rule_id * BFX_NR_REASONS + reason (rule 0: none). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, (BFX_MAX_RULES + 1) * BFX_NR_REASONS);
	__type(key, __u32);
	__type(value, struct bfx_counter);
} counters SEC(".maps");

/*
 * The clock of every expiry: jiffies (bpf_jiffies64 is inlined by the verifier
 * into a load) scaled by the loader's calibration; the ktime helper is a real
 * call, measurable on the forward path. Both tick at HZ resolution.
 */
static __always_inline __u64 bfx_now(const struct bfx_settings *s)
{
	if (s->ns_per_jiffy)
		return bpf_jiffies64() * s->ns_per_jiffy;
	return bpf_ktime_get_coarse_ns();
}

/*
 * A branch the common packet does not take (a tag, IPv6, an MTU or a SYN to
 * handle): clang lays its block out of the straight line the common packet runs.
 */
#define bfx_unlikely(x) __builtin_expect(!!(x), 0)
#define bfx_likely(x) __builtin_expect(!!(x), 1)

/* The generation in force: read once per packet (see config_gen). */
static __always_inline __u32 bfx_generation(void)
{
	__u32 zero = 0, *gen = bpf_map_lookup_elem(&config_gen, &zero);

	return gen ? *gen & 1 : 0;
}

/* anycast/gameservers: whether the entry (NULL: none) is in generation gen. */
static __always_inline int bfx_in_gen(const __u32 *gens, __u32 gen)
{
	return gens && (*gens >> gen) & 1;
}

static __always_inline int bfx_count(__u32 rule_id, __u32 reason, __u32 bytes, int action)
{
	__u32 idx = rule_id * BFX_NR_REASONS + reason;
	struct bfx_counter *c = bpf_map_lookup_elem(&counters, &idx);

	if (bfx_likely(c)) {
		c->packets++;
		c->bytes += bytes;
	}
	return action;
}

#endif /* BIFROST_XDP_MAPS_H */
