/* SPDX-License-Identifier: GPL-2.0 */
/*
 * fou_map internals shared by the table, the netfilter hooks and the chardev.
 *
 * One struct fm_net per network namespace (pernet_operations + net_generic).
 * Readers on the packet path use RCU only; every writer (learning a new
 * client, GC, the chardev) takes fm_net.lock. Learned entries sit on an LRU
 * list ordered by the time they were last placed there; static entries on
 * their own list, so neither GC nor eviction ever looks at them.
 *
 * Symbols are prefixed fm_ (Fou Map), not fou_map_: short as WireGuard's
 * wg_, and distinct from the other module's bfnf_ (bifrost_nf); the module,
 * device and uapi header carry the full name fou_map.
 */
#ifndef _FM_H
#define _FM_H

#include <linux/types.h>
#include <linux/list.h>
#include <linux/rhashtable.h>
#include <linux/spinlock.h>
#include <linux/mutex.h>
#include <linux/workqueue.h>
#include <linux/percpu.h>
#include <linux/in.h>
#include <net/net_namespace.h>
#include <net/netns/generic.h>

#include "fou_map.h"
#include "bifrost_version.h"


/*
 * The hash table never grows past this many buckets, so 2x that many
 * entries (FM_MAX_ENTRIES_LIMIT) run at a load factor of up to 2: 4 bytes of
 * bucket array per entry instead of 8-16 when rhashtable grows at 75%.
 */
#define FM_TABLE_MAX_BUCKETS (FM_MAX_ENTRIES_LIMIT / 2)

struct fm_cfg {
	u16 ports[FM_MAX_PORTS];
	u32 n_ports;
	/* FOU is accepted (and learned) only from these prefixes; none: from no one */
	u32 n_pops;
	__be32 pop_addr[FM_MAX_POPS];
	__be32 pop_mask[FM_MAX_POPS];
	u32 idle_timeout_ms;
	u32 max_entries;
	u32 miss_policy;
	struct rcu_head rcu;
};

/*
 * 56 bytes: the bench checks the <= 64 bytes per entry goal with the bucket
 * array included. The LRU link is dead once the entry is unlinked, so the
 * RCU head that frees it reuses its storage.
 */
struct fm_map_entry {
	struct rhash_head node;
	union {
		struct list_head lru;
		struct rcu_head rcu;
	};
	__be32 client;		/* key: inner source address */
	__be32 pop;		/* outer source address; written under fn->lock */
	u32 last_seen;		/* (u32)jiffies of the last packet */
	u32 lru_stamp;		/* last_seen when placed at the LRU tail */
	atomic64_t packets;	/* every CPU's ingress adds to it */
	u32 flags;		/* FM_ENTRY_STATIC; written under fn->lock */
};

/*
 * The authentication keys (AUTH.md): key[0] is appended to every FOU packet
 * sent, each of the n is accepted. Raw wire bytes in a u64, compared as
 * such; byte order never matters. Swapped whole under RCU, so a packet sees
 * one key set or the next, never half of each. No set (NULL): auth off.
 */
struct fm_keys {
	u32 n;
	u64 key[FM_MAX_KEYS];
	struct rcu_head rcu;
};

struct fm_counters {
	u64 cnt[FM_CNT_MAX];
};

struct fm_net {
	struct net *net;
	struct rhashtable table;
	bool table_ready;
	spinlock_t lock;		/* writers: table, lists, counts */
	struct list_head lru;		/* learned entries, oldest first */
	struct list_head statics;
	u32 n_learned;
	u32 n_static;
	struct fm_cfg __rcu *cfg;
	struct fm_keys __rcu *keys;	/* NULL: auth off */
	struct mutex cfg_lock;		/* config changes, hook (un)registration */
	bool hooks_on;			/* registered: only while ports are configured */
	struct fm_counters __percpu *counters;
	struct delayed_work gc_work;
	u64 created_ns;
};

extern unsigned int fm_net_id;
extern struct kmem_cache *fm_entry_cache;
extern const struct rhashtable_params fm_table_params;

static inline struct fm_net *fm_pernet(const struct net *net)
{
	return net_generic(net, fm_net_id);
}

static inline void fm_count(struct fm_net *fn, enum fm_counter c)
{
	this_cpu_inc(fn->counters->cnt[c]);
}

/*
 * What the chardev's ADD accepts as a client or POP, and ingress as a POP:
 * no 0/8, 127/8, multicast or broadcast. 0/8 is tested here, not with
 * ipv4_is_zeronet(): that is only 0.0.0.0 since the kernel made the rest
 * of 0/8 routable, and input routing lets such sources through.
 */
static inline bool fm_valid_unicast(__be32 addr)
{
	return !((addr & htonl(0xff000000)) == 0 || ipv4_is_multicast(addr) ||
		 ipv4_is_lbcast(addr) || ipv4_is_loopback(addr));
}

static inline u32 fm_now(void)
{
	return (u32)jiffies;
}

/* table.c */
int fm_table_init(struct fm_net *fn);
void fm_table_exit(struct fm_net *fn);
void fm_learn(struct fm_net *fn, __be32 client, __be32 pop);
int fm_add(struct fm_net *fn, __be32 client, __be32 pop, u32 flags, u32 age_ms);
int fm_del(struct fm_net *fn, __be32 client);
void fm_flush(struct fm_net *fn, bool statics);
void fm_shrink_to(struct fm_net *fn, u32 max);
void fm_gc_schedule(struct fm_net *fn, unsigned long delay);
void fm_gc_kick(struct fm_net *fn);
u32 fm_table_buckets(struct fm_net *fn);

/* hooks.c */
int fm_hooks_register(struct net *net);
void fm_hooks_unregister(struct net *net);

/* chardev.c */
int fm_chardev_init(void);
void fm_chardev_exit(void);

/* main.c */
int fm_config_set(struct fm_net *fn, const struct fm_cfg *newcfg);
int fm_keys_set(struct fm_net *fn, const u64 *keys, u32 n);

#endif /* _FM_H */
