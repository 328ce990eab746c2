/* SPDX-License-Identifier: GPL-2.0 */
/*
 * bifrost_nf internals: per-netns state shared by the chardev (control), the
 * netfilter hook (data path), the cache, the challenge and the rate limiter.
 *
 * Locking: every writer (chardev) holds bfnf_net.lock; the hook only reads,
 * under the RCU read lock netfilter already holds. Services and entries are
 * immutable once published and freed after a grace period. Counters are
 * per-CPU.
 *
 * Symbols are prefixed bfnf_ (BiFrost NetFilter), not bifrost_nf_: short as
 * WireGuard's wg_, and distinct from the other module's fm_ (fou_map); the
 * module, device and uapi header carry the full name bifrost_nf.
 */
#ifndef _BFNF_H
#define _BFNF_H

#include <linux/types.h>
#include <linux/mutex.h>
#include <linux/netfilter.h>
#include <linux/percpu.h>
#include <linux/rcupdate.h>
#include <linux/siphash.h>
#include <linux/spinlock.h>
#include <linux/wait.h>
#include <net/flow.h>
#include <net/net_namespace.h>
#include <net/netns/generic.h>

#include "bifrost_nf.h"
#include "bifrost_version.h"

#define BFNF_N_QTYPES 3
/*
 * Rate-limit table: a source maps to one slot; a new source takes a slot over
 * only once the previous holder's bucket has drained, else it shares it.
 */
#define BFNF_RL_BITS 12
#define BFNF_RL_SLOTS (1U << BFNF_RL_BITS)

/* Defaults until the daemon sends CONFIG_SET. */
#define BFNF_DEFAULT_RATE_PPS 20
#define BFNF_DEFAULT_RATE_BURST 40
#define BFNF_DEFAULT_ROTATE_S 60

/* One cached answer: count packets, replayed in order. Immutable once published. */
struct bfnf_entry {
	struct rcu_head rcu;
	u64 stored_ns;
	u32 ttl_ms;
	u32 max_stale_ms;
	u32 n_packets;
	u32 total_bytes;
	u16 len[BFNF_MAX_PACKETS];
	/* packet i is at data + i * BFNF_PAYLOAD_MAX */
	u8 data[];
};

struct bfnf_service {
	struct rcu_head rcu;
	__be32 addr;
	__be16 port;
	u16 flags;
	struct bfnf_entry __rcu *entry[BFNF_N_QTYPES];
	/* pending refresh requests: bit (reason - 1) * 3 + (qtype - 1) */
	unsigned long events;
};

struct bfnf_secret {
	struct rcu_head rcu;
	/* generation g uses key[g & 1]; g and g - 1 are accepted */
	siphash_key_t key[2];
	u32 gen;
	u64 rotated_ns;
};

struct bfnf_rl_slot {
	u32 addr;
	u32 reserved;
	u64 tat_ns;	/* GCRA theoretical arrival time */
};

struct bfnf_counters {
	u64 c[BFNF_CNT_MAX];
};

struct bfnf_net {
	struct net *net;
	/* serialises writers: services, entries, config, hook registration */
	struct mutex lock;
	bool hook_registered;
	struct nf_hook_ops ops;
	struct bfnf_service __rcu *svc[BFNF_MAX_SERVICES];
	/* bit (port & 63) set when a service uses that port: cheap reject */
	u64 port_bloom;
	struct bfnf_secret __rcu *secret;
	spinlock_t secret_lock;
	u32 rate_pps;
	u32 rate_burst;
	u32 rotate_s;
	u32 rl_seed;
	struct bfnf_rl_slot *rl;
	struct bfnf_counters __percpu *cnt;
	wait_queue_head_t event_wq;
};

extern unsigned int bfnf_net_id;

static inline struct bfnf_net *bfnf_pernet(struct net *net)
{
	return net_generic(net, bfnf_net_id);
}

#define bfnf_count(bn, idx) this_cpu_inc((bn)->cnt->c[idx])
#define bfnf_count_add(bn, idx, v) this_cpu_add((bn)->cnt->c[idx], (v))

/*
 * Nanoseconds from then to now, 0 when then is later: a packet reads its
 * `now` before its work, and meanwhile another CPU or a write may stamp a
 * newer time (a rotation, an answer). An unsigned now - then would wrap.
 */
static inline u64 bfnf_age_ns(u64 now, u64 then)
{
	return (s64)(now - then) > 0 ? now - then : 0;
}

/* chardev.c */
int bfnf_chardev_init(void);
void bfnf_chardev_exit(void);

/* hook.c */
int bfnf_hook_register(struct bfnf_net *bn);
void bfnf_hook_unregister(struct bfnf_net *bn);

/* cache.c */
struct bfnf_service *bfnf_service_find_rcu(struct bfnf_net *bn, __be32 addr, __be16 port);
struct bfnf_service *bfnf_service_find_locked(struct bfnf_net *bn, __be32 addr, __be16 port);
int bfnf_service_set(struct bfnf_net *bn, __be32 addr, __be16 port, u16 flags);
int bfnf_service_del(struct bfnf_net *bn, __be32 addr, __be16 port);
int bfnf_entry_publish(struct bfnf_net *bn, __be32 addr, __be16 port, u8 qtype,
		       struct bfnf_entry *entry);
int bfnf_entry_del(struct bfnf_net *bn, __be32 addr, __be16 port, u8 qtype);
void bfnf_entries_flush(struct bfnf_net *bn);
void bfnf_services_free_all(struct bfnf_net *bn);
void bfnf_event_raise(struct bfnf_net *bn, struct bfnf_service *svc, u8 qtype, u8 reason);
size_t bfnf_events_take(struct bfnf_net *bn, struct bfnf_event *out, size_t max);
bool bfnf_events_pending(struct bfnf_net *bn);

/* challenge.c */
int bfnf_secret_init(struct bfnf_net *bn);
void bfnf_secret_free(struct bfnf_net *bn);
int bfnf_secret_rotate(struct bfnf_net *bn, const struct bfnf_secret *seen, unsigned int times);
u32 bfnf_challenge_make(struct bfnf_net *bn, __be32 addr, __be16 port, u64 now);
bool bfnf_challenge_check(struct bfnf_net *bn, __be32 addr, __be16 port, u32 chal, u64 now);

/* ratelimit.c */
int bfnf_rl_init(struct bfnf_net *bn);
void bfnf_rl_free(struct bfnf_net *bn);
bool bfnf_rl_allow(struct bfnf_net *bn, __be32 saddr, u64 now);

/* reply.c */
/* The route from a service back to one client, shared by every packet of a reply. */
struct bfnf_route {
	struct flowi4 fl4;
	struct rtable *rt;
};

int bfnf_route_back(struct net *net, __be32 saddr, __be16 sport, __be32 daddr, __be16 dport,
		    struct bfnf_route *back);
void bfnf_route_put(struct bfnf_route *back);
int bfnf_send(struct net *net, const struct bfnf_route *back, const u8 *data, unsigned int len);

#endif /* _BFNF_H */
