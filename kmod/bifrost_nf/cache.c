// SPDX-License-Identifier: GPL-2.0
/*
 * The cache: up to BFNF_MAX_SERVICES services per netns, each with one
 * answer per query type. Writers hold bfnf_net.lock and publish with RCU;
 * the hook reads without locks. Refresh requests are one bit per service,
 * query type and reason, so however many queries miss, the daemon reads one
 * event for each until it reads it.
 */
#include <linux/slab.h>

#include "bfnf.h"

#define bfnf_svc_locked(bn, i) \
	rcu_dereference_protected((bn)->svc[i], lockdep_is_held(&(bn)->lock))

struct bfnf_service *bfnf_service_find_rcu(struct bfnf_net *bn, __be32 addr, __be16 port)
{
	struct bfnf_service *svc;
	int i;

	for (i = 0; i < BFNF_MAX_SERVICES; i++) {
		svc = rcu_dereference(bn->svc[i]);
		if (svc && svc->addr == addr && svc->port == port)
			return svc;
	}
	return NULL;
}

struct bfnf_service *bfnf_service_find_locked(struct bfnf_net *bn, __be32 addr, __be16 port)
{
	struct bfnf_service *svc;
	int i;

	for (i = 0; i < BFNF_MAX_SERVICES; i++) {
		svc = bfnf_svc_locked(bn, i);
		if (svc && svc->addr == addr && svc->port == port)
			return svc;
	}
	return NULL;
}

static void bfnf_bloom_update(struct bfnf_net *bn)
{
	struct bfnf_service *svc;
	u64 bloom = 0;
	int i;

	for (i = 0; i < BFNF_MAX_SERVICES; i++) {
		svc = bfnf_svc_locked(bn, i);
		if (svc)
			bloom |= BIT_ULL(ntohs(svc->port) & 63);
	}
	WRITE_ONCE(bn->port_bloom, bloom);
}

int bfnf_service_set(struct bfnf_net *bn, __be32 addr, __be16 port, u16 flags)
{
	struct bfnf_service *svc;
	int i, err, free_slot = -1;

	lockdep_assert_held(&bn->lock);
	svc = bfnf_service_find_locked(bn, addr, port);
	if (svc) {
		WRITE_ONCE(svc->flags, flags);
		return 0;
	}
	for (i = 0; i < BFNF_MAX_SERVICES && free_slot < 0; i++)
		if (!bfnf_svc_locked(bn, i))
			free_slot = i;
	if (free_slot < 0)
		return -ENOSPC;
	/* The data path costs nothing in a netns until it has a service. */
	err = bfnf_rl_init(bn);
	if (err)
		return err;
	err = bfnf_hook_register(bn);
	if (err)
		return err;
	svc = kzalloc(sizeof(*svc), GFP_KERNEL);
	if (!svc)
		return -ENOMEM;
	svc->addr = addr;
	svc->port = port;
	svc->flags = flags;
	rcu_assign_pointer(bn->svc[free_slot], svc);
	bfnf_bloom_update(bn);
	return 0;
}

static void bfnf_service_free(struct bfnf_service *svc)
{
	int q;

	for (q = 0; q < BFNF_N_QTYPES; q++)
		kfree(rcu_dereference_protected(svc->entry[q], true));
	kfree(svc);
}

static void bfnf_service_free_rcu(struct rcu_head *head)
{
	bfnf_service_free(container_of(head, struct bfnf_service, rcu));
}

int bfnf_service_del(struct bfnf_net *bn, __be32 addr, __be16 port)
{
	struct bfnf_service *svc;
	int i;

	lockdep_assert_held(&bn->lock);
	for (i = 0; i < BFNF_MAX_SERVICES; i++) {
		svc = bfnf_svc_locked(bn, i);
		if (svc && svc->addr == addr && svc->port == port) {
			RCU_INIT_POINTER(bn->svc[i], NULL);
			bfnf_bloom_update(bn);
			call_rcu(&svc->rcu, bfnf_service_free_rcu);
			return 0;
		}
	}
	return -ENOENT;
}

void bfnf_services_free_all(struct bfnf_net *bn)
{
	struct bfnf_service *svc;
	int i;

	for (i = 0; i < BFNF_MAX_SERVICES; i++) {
		svc = rcu_dereference_protected(bn->svc[i], true);
		RCU_INIT_POINTER(bn->svc[i], NULL);
		if (svc)
			bfnf_service_free(svc);
	}
}

int bfnf_entry_publish(struct bfnf_net *bn, __be32 addr, __be16 port, u8 qtype,
		       struct bfnf_entry *entry)
{
	struct bfnf_service *svc;
	struct bfnf_entry *old;

	lockdep_assert_held(&bn->lock);
	svc = bfnf_service_find_locked(bn, addr, port);
	if (!svc)
		return -ENOENT;
	old = rcu_replace_pointer(svc->entry[qtype - 1], entry, lockdep_is_held(&bn->lock));
	if (old)
		kfree_rcu(old, rcu);
	bfnf_count(bn, BFNF_CNT_ENTRIES_SET);
	return 0;
}

static bool bfnf_entry_clear(struct bfnf_net *bn, struct bfnf_service *svc, int q)
{
	struct bfnf_entry *old;

	old = rcu_replace_pointer(svc->entry[q], NULL, lockdep_is_held(&bn->lock));
	if (!old)
		return false;
	kfree_rcu(old, rcu);
	bfnf_count(bn, BFNF_CNT_ENTRIES_DELETED);
	return true;
}

int bfnf_entry_del(struct bfnf_net *bn, __be32 addr, __be16 port, u8 qtype)
{
	struct bfnf_service *svc;
	int q;

	lockdep_assert_held(&bn->lock);
	svc = bfnf_service_find_locked(bn, addr, port);
	if (!svc)
		return -ENOENT;
	for (q = 0; q < BFNF_N_QTYPES; q++)
		if (!qtype || qtype == q + 1)
			bfnf_entry_clear(bn, svc, q);
	return 0;
}

void bfnf_entries_flush(struct bfnf_net *bn)
{
	struct bfnf_service *svc;
	int i, q;

	lockdep_assert_held(&bn->lock);
	for (i = 0; i < BFNF_MAX_SERVICES; i++) {
		svc = bfnf_svc_locked(bn, i);
		if (!svc)
			continue;
		for (q = 0; q < BFNF_N_QTYPES; q++)
			bfnf_entry_clear(bn, svc, q);
	}
}

/* From the hook: ask the daemon to refresh; once until it reads the event. */
void bfnf_event_raise(struct bfnf_net *bn, struct bfnf_service *svc, u8 qtype, u8 reason)
{
	int bit = (reason - 1) * BFNF_N_QTYPES + (qtype - 1);

	if (test_bit(bit, &svc->events) || test_and_set_bit(bit, &svc->events))
		return;
	bfnf_count(bn, BFNF_CNT_EVENTS_RAISED);
	wake_up_interruptible(&bn->event_wq);
}

/*
 * For poll(): scanning the table (not a counter) means a service deleted
 * while the hook flagged it can never leave a phantom event behind.
 */
bool bfnf_events_pending(struct bfnf_net *bn)
{
	struct bfnf_service *svc;
	bool pending = false;
	int i;

	rcu_read_lock();
	for (i = 0; i < BFNF_MAX_SERVICES && !pending; i++) {
		svc = rcu_dereference(bn->svc[i]);
		pending = svc && READ_ONCE(svc->events);
	}
	rcu_read_unlock();
	return pending;
}

/* Take up to max pending events (caller holds bn->lock). */
size_t bfnf_events_take(struct bfnf_net *bn, struct bfnf_event *out, size_t max)
{
	struct bfnf_service *svc;
	size_t n = 0;
	int i, bit;

	lockdep_assert_held(&bn->lock);
	for (i = 0; i < BFNF_MAX_SERVICES && n < max; i++) {
		svc = bfnf_svc_locked(bn, i);
		if (!svc || !READ_ONCE(svc->events))
			continue;
		for (bit = 0; bit < 2 * BFNF_N_QTYPES && n < max; bit++) {
			if (!test_and_clear_bit(bit, &svc->events))
				continue;
			memset(&out[n], 0, sizeof(out[n]));
			out[n].hdr.magic = BFNF_MAGIC;
			out[n].hdr.version = BFNF_ABI_VERSION;
			out[n].hdr.type = BFNF_MSG_EVENT;
			out[n].hdr.length = sizeof(out[n]);
			out[n].addr = svc->addr;
			out[n].port = ntohs(svc->port);
			out[n].qtype = bit % BFNF_N_QTYPES + 1;
			out[n].reason = bit / BFNF_N_QTYPES + 1;
			n++;
		}
	}
	bfnf_count_add(bn, BFNF_CNT_EVENTS_READ, n);
	return n;
}
