// SPDX-License-Identifier: GPL-2.0
/*
 * The client -> POP table: an rhashtable (lock-free lookups), an LRU list of
 * learned entries for expiry and eviction, and a GC work item.
 *
 * The packet path refreshes an entry without any lock (last_seen, packets);
 * it takes fn->lock to insert a new client or to move one to another POP
 * (rare), so that an operator's pin (fm_add) and a move never interleave. The LRU list is kept
 * in placement order and corrected lazily ("second chance"): an entry at the
 * head whose last_seen moved since it was placed is re-placed at the tail
 * instead of being evicted or expired.
 */
#include <linux/slab.h>
#include <linux/jiffies.h>
#include <linux/sched.h>

#include "fm.h"

/* Work done under fn->lock at a time, so learning never waits long. */
#define FM_LOCK_BATCH 256
/* Re-placements tried before eviction falls back to the list head. */
#define FM_EVICT_TRIES 64
/*
 * Evictions one learning packet may do (in softirq, under the lock): room for
 * itself plus one. After max_entries went down, fm_shrink_to() does the rest
 * in process context, a batch per lock hold; until then new clients are
 * refused (LEARN_FULL), never a million evictions in one packet.
 */
#define FM_LEARN_EVICT 2

const struct rhashtable_params fm_table_params = {
	.key_len = sizeof(__be32),
	.key_offset = offsetof(struct fm_map_entry, client),
	.head_offset = offsetof(struct fm_map_entry, node),
	.max_size = FM_TABLE_MAX_BUCKETS,
	.automatic_shrinking = true,
};

static void fm_entry_free_rcu(struct rcu_head *head)
{
	kmem_cache_free(fm_entry_cache, container_of(head, struct fm_map_entry, rcu));
}

static u32 fm_idle_timeout_jiffies(struct fm_net *fn)
{
	struct fm_cfg *cfg;
	u32 ms;

	rcu_read_lock();
	cfg = rcu_dereference(fn->cfg);
	ms = cfg->idle_timeout_ms;
	rcu_read_unlock();
	return msecs_to_jiffies(ms);
}

static u32 fm_max_entries(struct fm_net *fn)
{
	return rcu_dereference_check(fn->cfg, lockdep_is_held(&fn->lock))->max_entries;
}

/* Unlink under fn->lock; readers may still hold it for one grace period. */
static void fm_entry_remove(struct fm_net *fn, struct fm_map_entry *e)
{
	lockdep_assert_held(&fn->lock);
	rhashtable_remove_fast(&fn->table, &e->node, fm_table_params);
	list_del(&e->lru);
	if (e->flags & FM_ENTRY_STATIC)
		fn->n_static--;
	else
		fn->n_learned--;
	call_rcu(&e->rcu, fm_entry_free_rcu);
}

/*
 * Evict the least recently seen learned entry. Returns false when there is
 * no learned entry (the table is full of static ones).
 */
static bool fm_evict_one(struct fm_net *fn)
{
	struct fm_map_entry *e;
	int tries;

	lockdep_assert_held(&fn->lock);
	for (tries = 0; tries < FM_EVICT_TRIES; tries++) {
		e = list_first_entry_or_null(&fn->lru, struct fm_map_entry, lru);
		if (!e)
			return false;
		if (READ_ONCE(e->last_seen) == e->lru_stamp)
			break;
		e->lru_stamp = READ_ONCE(e->last_seen);
		list_move_tail(&e->lru, &fn->lru);
	}
	e = list_first_entry_or_null(&fn->lru, struct fm_map_entry, lru);
	if (!e)
		return false;
	fm_entry_remove(fn, e);
	fm_count(fn, FM_CNT_EVICTED);
	return true;
}

/*
 * Make room for one more entry, evicting at most budget learned ones; false
 * when that is not enough (or only static entries are left).
 */
static bool fm_make_room(struct fm_net *fn, unsigned int budget)
{
	lockdep_assert_held(&fn->lock);
	while (fn->n_learned + fn->n_static >= fm_max_entries(fn)) {
		if (!budget-- || !fm_evict_one(fn))
			return false;
	}
	return true;
}

/* rhashtable_lookup_fast() takes the RCU read lock that fn->lock is not. */
static struct fm_map_entry *fm_lookup(struct fm_net *fn, __be32 client)
{
	return rhashtable_lookup_fast(&fn->table, &client, fm_table_params);
}

/* The first learned entry starts the GC; with none left it stops. */
void fm_gc_kick(struct fm_net *fn)
{
	queue_delayed_work(system_power_efficient_wq, &fn->gc_work, HZ / 20);
}

/* Move a learned client to another POP, unless it was pinned meanwhile. */
static void fm_move(struct fm_net *fn, struct fm_map_entry *e, __be32 pop)
{
	spin_lock_bh(&fn->lock);
	if (READ_ONCE(e->flags) & FM_ENTRY_STATIC) {
		spin_unlock_bh(&fn->lock);
		fm_count(fn, FM_CNT_LEARN_STATIC);
		return;
	}
	WRITE_ONCE(e->pop, pop);
	spin_unlock_bh(&fn->lock);
	fm_count(fn, FM_CNT_MOVED);
}

/* Packet path, under RCU (netfilter hooks run under rcu_read_lock). */
void fm_learn(struct fm_net *fn, __be32 client, __be32 pop)
{
	struct fm_map_entry *e, *old;
	u32 now = fm_now();
	int err;

	e = rhashtable_lookup(&fn->table, &client, fm_table_params);
	if (likely(e)) {
		if (READ_ONCE(e->last_seen) != now)
			WRITE_ONCE(e->last_seen, now);
		atomic64_inc(&e->packets);
		if (likely(READ_ONCE(e->pop) == pop))
			fm_count(fn, FM_CNT_REFRESHED);
		else if (READ_ONCE(e->flags) & FM_ENTRY_STATIC)
			/* The operator pinned this client; learning does not move it. */
			fm_count(fn, FM_CNT_LEARN_STATIC);
		else
			fm_move(fn, e, pop);
		return;
	}

	e = kmem_cache_alloc(fm_entry_cache, GFP_ATOMIC | __GFP_NOWARN);
	if (!e) {
		fm_count(fn, FM_CNT_LEARN_NOMEM);
		return;
	}
	e->client = client;
	e->pop = pop;
	e->last_seen = now;
	e->lru_stamp = now;
	atomic64_set(&e->packets, 1);
	e->flags = 0;

	spin_lock_bh(&fn->lock);
	if (!fm_make_room(fn, FM_LEARN_EVICT)) {
		spin_unlock_bh(&fn->lock);
		kmem_cache_free(fm_entry_cache, e);
		fm_count(fn, FM_CNT_LEARN_FULL);
		return;
	}
	old = rhashtable_lookup_get_insert_fast(&fn->table, &e->node, fm_table_params);
	if (likely(!old)) {
		list_add_tail(&e->lru, &fn->lru);
		fn->n_learned++;
		spin_unlock_bh(&fn->lock);
		fm_count(fn, FM_CNT_LEARNED);
		fm_gc_kick(fn);
		return;
	}
	spin_unlock_bh(&fn->lock);
	kmem_cache_free(fm_entry_cache, e);
	err = IS_ERR(old) ? PTR_ERR(old) : 0;
	/* old is a valid entry when another CPU learned the client first. */
	if (err)
		fm_count(fn, err == -ENOMEM ? FM_CNT_LEARN_NOMEM : FM_CNT_LEARN_FULL);
	else
		fm_count(fn, FM_CNT_REFRESHED);
}

/*
 * max_entries bounds every entry, static ones included: learned entries exist
 * only while the total fits, so turning a static entry into a learned one in
 * a table already over its maximum is refused (ENOSPC) like adding one.
 */
int fm_add(struct fm_net *fn, __be32 client, __be32 pop, u32 flags, u32 age_ms)
{
	bool is_static = flags & FM_ENTRY_STATIC;
	struct fm_map_entry *e, *old;
	u32 now = fm_now();
	u32 seen = now - msecs_to_jiffies(is_static ? 0 : age_ms);
	u32 max;

	rcu_read_lock();
	max = rcu_dereference(fn->cfg)->max_entries;
	rcu_read_unlock();
	/* A new client: leave the lock-held eviction below one batch at most. */
	if (!fm_lookup(fn, client))
		fm_shrink_to(fn, max - 1);

	e = kmem_cache_alloc(fm_entry_cache, GFP_KERNEL);
	if (!e)
		return -ENOMEM;
	e->client = client;
	e->pop = pop;
	e->last_seen = seen;
	e->lru_stamp = seen;
	atomic64_set(&e->packets, 0);
	e->flags = is_static ? FM_ENTRY_STATIC : 0;

	spin_lock_bh(&fn->lock);
	old = fm_lookup(fn, client);
	if (old) {
		bool was_static = old->flags & FM_ENTRY_STATIC;

		if (!is_static && was_static &&
		    fn->n_learned + fn->n_static > fm_max_entries(fn)) {
			spin_unlock_bh(&fn->lock);
			kmem_cache_free(fm_entry_cache, e);
			return -ENOSPC;
		}
		/*
		 * Replace in place: lookups see either the old or the new pop.
		 * The flag goes first; a learner moves a client only under
		 * this lock, after checking it (fm_move()).
		 */
		if (is_static && !was_static) {
			WRITE_ONCE(old->flags, old->flags | FM_ENTRY_STATIC);
			list_move_tail(&old->lru, &fn->statics);
			fn->n_learned--;
			fn->n_static++;
		} else if (!is_static && was_static) {
			WRITE_ONCE(old->flags, old->flags & ~FM_ENTRY_STATIC);
			WRITE_ONCE(old->last_seen, seen);
			old->lru_stamp = seen;
			list_move_tail(&old->lru, &fn->lru);
			fn->n_static--;
			fn->n_learned++;
		}
		WRITE_ONCE(old->pop, pop);
		spin_unlock_bh(&fn->lock);
		kmem_cache_free(fm_entry_cache, e);
		fm_count(fn, FM_CNT_ADDED);
		if (!is_static)
			fm_gc_kick(fn);
		return 0;
	}
	if (!fm_make_room(fn, FM_LOCK_BATCH)) {
		spin_unlock_bh(&fn->lock);
		kmem_cache_free(fm_entry_cache, e);
		return -ENOSPC;
	}
	old = rhashtable_lookup_get_insert_fast(&fn->table, &e->node, fm_table_params);
	if (old) {
		spin_unlock_bh(&fn->lock);
		kmem_cache_free(fm_entry_cache, e);
		/* Only -ENOMEM/-E2BIG can get here: writers are serialised. */
		return IS_ERR(old) ? PTR_ERR(old) : -EEXIST;
	}
	if (is_static) {
		list_add_tail(&e->lru, &fn->statics);
		fn->n_static++;
	} else {
		list_add_tail(&e->lru, &fn->lru);
		fn->n_learned++;
	}
	spin_unlock_bh(&fn->lock);
	fm_count(fn, FM_CNT_ADDED);
	if (!is_static)
		fm_gc_kick(fn);
	return 0;
}

int fm_del(struct fm_net *fn, __be32 client)
{
	struct fm_map_entry *e;

	spin_lock_bh(&fn->lock);
	e = fm_lookup(fn, client);
	if (!e) {
		spin_unlock_bh(&fn->lock);
		return -ENOENT;
	}
	fm_entry_remove(fn, e);
	spin_unlock_bh(&fn->lock);
	fm_count(fn, FM_CNT_DELETED);
	return 0;
}

/* Remove every entry of one list, a batch per lock hold. */
static void fm_flush_list(struct fm_net *fn, struct list_head *list)
{
	struct fm_map_entry *e;
	bool more = true;
	int n;

	while (more) {
		spin_lock_bh(&fn->lock);
		for (n = 0; n < FM_LOCK_BATCH; n++) {
			e = list_first_entry_or_null(list, struct fm_map_entry, lru);
			if (!e)
				break;
			fm_entry_remove(fn, e);
			fm_count(fn, FM_CNT_FLUSHED);
		}
		more = n == FM_LOCK_BATCH;
		spin_unlock_bh(&fn->lock);
		cond_resched();
	}
}

void fm_flush(struct fm_net *fn, bool statics)
{
	fm_flush_list(fn, &fn->lru);
	if (statics)
		fm_flush_list(fn, &fn->statics);
}

/* After max_entries went down: evict learned entries until it holds. */
void fm_shrink_to(struct fm_net *fn, u32 max)
{
	bool more = true;
	int n;

	while (more) {
		spin_lock_bh(&fn->lock);
		for (n = 0; n < FM_LOCK_BATCH; n++) {
			if (fn->n_learned + fn->n_static <= max || !fm_evict_one(fn))
				break;
		}
		more = n == FM_LOCK_BATCH;
		spin_unlock_bh(&fn->lock);
		cond_resched();
	}
}

/*
 * Expire idle learned entries from the LRU head. Stops at the first entry
 * that is neither idle nor re-placed: the ones behind it were placed later.
 */
static void fm_gc(struct fm_net *fn)
{
	u32 timeout = fm_idle_timeout_jiffies(fn);
	u32 budget, now;
	struct fm_map_entry *e;
	bool more = true;
	int n;

	spin_lock_bh(&fn->lock);
	/* Each entry is re-placed at most once per run. */
	budget = fn->n_learned;
	spin_unlock_bh(&fn->lock);

	while (more) {
		spin_lock_bh(&fn->lock);
		now = fm_now();
		for (n = 0; n < FM_LOCK_BATCH; n++) {
			u32 seen;

			e = list_first_entry_or_null(&fn->lru, struct fm_map_entry, lru);
			if (!e)
				break;
			seen = READ_ONCE(e->last_seen);
			if ((s32)(now - seen) >= (s32)timeout) {
				fm_entry_remove(fn, e);
				fm_count(fn, FM_CNT_EXPIRED);
				continue;
			}
			if (seen == e->lru_stamp || !budget)
				break;
			budget--;
			e->lru_stamp = seen;
			list_move_tail(&e->lru, &fn->lru);
		}
		more = n == FM_LOCK_BATCH;
		spin_unlock_bh(&fn->lock);
		cond_resched();
	}
}

static unsigned long fm_gc_period(struct fm_net *fn)
{
	u32 t = fm_idle_timeout_jiffies(fn) / 4;

	return clamp_t(u32, t, HZ / 20, 5 * HZ);
}

/*
 * Runs only while the netns has learned entries (fm_gc_kick() restarts it),
 * so netns that do not use fou_map are never woken.
 */
static void fm_gc_work(struct work_struct *work)
{
	struct fm_net *fn = container_of(to_delayed_work(work), struct fm_net, gc_work);
	bool more;

	fm_gc(fn);
	spin_lock_bh(&fn->lock);
	more = fn->n_learned > 0;
	spin_unlock_bh(&fn->lock);
	if (more)
		queue_delayed_work(system_power_efficient_wq, &fn->gc_work, fm_gc_period(fn));
}

void fm_gc_schedule(struct fm_net *fn, unsigned long delay)
{
	mod_delayed_work(system_power_efficient_wq, &fn->gc_work, delay);
}

u32 fm_table_buckets(struct fm_net *fn)
{
	const struct bucket_table *tbl;
	u32 size;

	rcu_read_lock();
	tbl = rcu_dereference(fn->table.tbl);
	size = tbl->size;
	rcu_read_unlock();
	return size;
}

int fm_table_init(struct fm_net *fn)
{
	int err;

	err = rhashtable_init(&fn->table, &fm_table_params);
	if (err)
		return err;
	fn->table_ready = true;
	INIT_DELAYED_WORK(&fn->gc_work, fm_gc_work);
	return 0;
}

static void fm_entry_free_now(void *ptr, void *arg)
{
	kmem_cache_free(fm_entry_cache, ptr);
}

/* The hooks are gone (fm_net_pre_exit) and no file holds the netns: nobody reads the table. */
void fm_table_exit(struct fm_net *fn)
{
	if (!fn->table_ready)
		return;
	cancel_delayed_work_sync(&fn->gc_work);
	rhashtable_free_and_destroy(&fn->table, fm_entry_free_now, NULL);
	fn->table_ready = false;
}
