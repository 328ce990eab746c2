// SPDX-License-Identifier: GPL-2.0
/*
 * /dev/fou_map: the control device. Every open() is bound to the opener's
 * network namespace (as drivers/net/tun.c does), so a daemon in a container
 * sees and changes only that container's table.
 *
 * write() takes exactly one record (uapi/fou_map.h); replies queue up per
 * file and are read() back in order; poll() says when. A dump snapshots the
 * clients and returns them across as many read()s as it takes.
 */
#include <linux/jiffies.h>
#include <linux/sort.h>
#include <linux/inetdevice.h>

#include "fm.h"
#include "bifrost_chardev.h"

/* Unread replies a file may hold: a writer that never reads gets ENOBUFS. */
#define FM_MAX_PENDING 16
/* The largest record anyone may write (and the largest reply). */
#define FM_MAX_RECORD sizeof(struct bifrost_info_reply)

static size_t fm_record_size(u16 type)
{
	switch (type) {
	case FM_MSG_INFO_REQ:
		return sizeof(struct bifrost_info_req);
	case FM_MSG_CONFIG:
		return sizeof(struct fm_config);
	case FM_MSG_CONFIG_GET:
		return sizeof(struct fm_config_get);
	case FM_MSG_STATS_REQ:
		return sizeof(struct fm_stats_req);
	case FM_MSG_DUMP_REQ:
		return sizeof(struct fm_dump_req);
	case FM_MSG_ADD:
		return sizeof(struct fm_add);
	case FM_MSG_DEL:
		return sizeof(struct fm_del);
	case FM_MSG_FLUSH:
		return sizeof(struct fm_flush);
	case FM_MSG_AUTH:
		return sizeof(struct fm_auth);
	case FM_MSG_AUTH_GET:
		return sizeof(struct fm_auth_get);
	default:
		/* replies and unknown types are never written */
		return 0;
	}
}

BFC_DEFINE_ABI(fm_abi, FM, -EMSGSIZE, FM_MAX_PENDING, fm_record_size);

/*
 * A dump is a snapshot of the clients (keys) present at DUMP_REQ; each read()
 * looks the next ones up again and returns those still there, with their
 * values as of that read. The cursor is an index into the snapshot, so
 * entries removed between reads (GC, eviction) cannot make it skip others,
 * as a hash-table walk resumed across reads can.
 */
struct fm_file {
	/* first: bfc_file_open_as() allocates the whole; base.lock also guards the rest */
	struct bfc_file base;
	__be32 *dump_keys;	/* kvmalloc'ed; NULL when no dump is under way */
	u32 dump_n;
	u32 dump_next;
	u64 dumped;
	u8 wbuf[FM_MAX_RECORD];
};

/* A zeroed reply of len bytes in batch; the caller fills it, then queues the batch. */
static void *fm_reply(struct fm_file *ff, struct list_head *batch, u16 type, size_t len)
{
	return bfc_reply_alloc(&ff->base, batch, type, len);
}

static int fm_do_config_get(struct fm_file *ff, struct fm_net *fn)
{
	struct fm_config *rep;
	const struct fm_cfg *cfg;
	LIST_HEAD(batch);
	u32 i;

	rep = fm_reply(ff, &batch, FM_MSG_CONFIG, sizeof(*rep));
	if (!rep)
		return -ENOMEM;
	rcu_read_lock();
	cfg = rcu_dereference(fn->cfg);
	rep->n_ports = cfg->n_ports;
	rep->idle_timeout_ms = cfg->idle_timeout_ms;
	rep->max_entries = cfg->max_entries;
	rep->miss_policy = cfg->miss_policy;
	memcpy(rep->ports, cfg->ports, sizeof(rep->ports));
	rep->n_pops = cfg->n_pops;
	for (i = 0; i < cfg->n_pops; i++) {
		memcpy(rep->pop_addrs + 4 * i, &cfg->pop_addr[i], 4);
		rep->pop_lens[i] = inet_mask_len(cfg->pop_mask[i]);
	}
	rcu_read_unlock();
	return bfc_replies_queue(&ff->base, &batch, 1);
}

static int fm_do_config_set(struct fm_net *fn, const struct fm_config *rec)
{
	struct fm_cfg cfg = {};
	u32 i;

	if (rec->n_ports > FM_MAX_PORTS ||
	    rec->idle_timeout_ms < FM_MIN_IDLE_TIMEOUT_MS ||
	    rec->idle_timeout_ms > FM_MAX_IDLE_TIMEOUT_MS ||
	    rec->max_entries < 1 || rec->max_entries > FM_MAX_ENTRIES_LIMIT ||
	    (rec->miss_policy != FM_MISS_PASS && rec->miss_policy != FM_MISS_DROP))
		return -EINVAL;
	for (i = 0; i < FM_MAX_PORTS; i++) {
		/* Used ports are 1..65535; the unused tail must be zero. */
		if ((i < rec->n_ports) != (rec->ports[i] != 0))
			return -EINVAL;
		cfg.ports[i] = rec->ports[i];
	}
	if (rec->n_pops > FM_MAX_POPS || rec->reserved)
		return -EINVAL;
	for (i = 0; i < FM_MAX_POPS; i++) {
		__be32 addr, mask;

		memcpy(&addr, rec->pop_addrs + 4 * i, 4);
		if (i >= rec->n_pops) {
			if (addr || rec->pop_lens[i])
				return -EINVAL;
			continue;
		}
		if (rec->pop_lens[i] < 1 || rec->pop_lens[i] > 32)
			return -EINVAL;
		mask = inet_make_mask(rec->pop_lens[i]);
		/* No host bits, and the prefix's own address is a unicast one. */
		if ((addr & ~mask) || !fm_valid_unicast(addr))
			return -EINVAL;
		cfg.pop_addr[i] = addr;
		cfg.pop_mask[i] = mask;
	}
	cfg.n_pops = rec->n_pops;
	cfg.n_ports = rec->n_ports;
	cfg.idle_timeout_ms = rec->idle_timeout_ms;
	cfg.max_entries = rec->max_entries;
	cfg.miss_policy = rec->miss_policy;
	return fm_config_set(fn, &cfg);
}

static int fm_do_stats(struct fm_file *ff, struct fm_net *fn)
{
	struct fm_stats_reply *rep;
	u32 entries, buckets;
	LIST_HEAD(batch);

	rep = fm_reply(ff, &batch, FM_MSG_STATS_REPLY, sizeof(*rep));
	if (!rep)
		return -ENOMEM;
	spin_lock_bh(&fn->lock);
	entries = fn->n_learned + fn->n_static;
	rep->static_entries = fn->n_static;
	rep->max_entries = rcu_dereference_protected(fn->cfg,
						     lockdep_is_held(&fn->lock))->max_entries;
	spin_unlock_bh(&fn->lock);
	buckets = fm_table_buckets(fn);
	rep->entries = entries;
	rep->buckets = buckets;
	rep->entry_size = kmem_cache_size(fm_entry_cache);
	rep->created_ns = fn->created_ns;
	rep->table_bytes = (u64)entries * kmem_cache_size(fm_entry_cache) +
			   (u64)buckets * sizeof(void *);
	return bfc_replies_queue(&ff->base, &batch, 1);
}

static void fm_dump_stop(struct fm_file *ff)
{
	kvfree(ff->dump_keys);
	ff->dump_keys = NULL;
}

static int fm_key_cmp(const void *a, const void *b)
{
	u32 x = *(const u32 *)a, y = *(const u32 *)b;

	return x < y ? -1 : x > y;
}

/*
 * Collect every client key in one RCU walk. A resize during it makes the
 * walk go on in the new table (-EAGAIN), so keys may repeat but none is
 * missed; sorting drops the repeats. Clients learned meanwhile may overflow
 * the estimate: then try again with more room.
 */
static int fm_do_dump(struct fm_file *ff, struct fm_net *fn)
{
	struct rhashtable_iter iter;
	struct fm_map_entry *e;
	u32 cap, n, i, uniq;
	__be32 *keys;
	bool full;

	fm_dump_stop(ff);
	spin_lock_bh(&fn->lock);
	cap = fn->n_learned + fn->n_static;
	spin_unlock_bh(&fn->lock);
	do {
		cap += cap / 4 + 64;
		keys = kvmalloc_array(cap, sizeof(*keys), GFP_KERNEL);
		if (!keys)
			return -ENOMEM;
		n = 0;
		full = false;
		rhashtable_walk_enter(&fn->table, &iter);
		rhashtable_walk_start(&iter);
		while ((e = rhashtable_walk_next(&iter)) != NULL) {
			if (IS_ERR(e))
				continue;	/* -EAGAIN: resized, the walk goes on */
			if (n == cap) {
				full = true;
				break;
			}
			keys[n++] = e->client;
		}
		rhashtable_walk_stop(&iter);
		rhashtable_walk_exit(&iter);
		if (full)
			kvfree(keys);
		cond_resched();
	} while (full);
	sort(keys, n, sizeof(*keys), fm_key_cmp, NULL);
	for (i = 0, uniq = 0; i < n; i++)
		if (!uniq || keys[i] != keys[uniq - 1])
			keys[uniq++] = keys[i];
	ff->dump_keys = keys;
	ff->dump_n = uniq;
	ff->dump_next = 0;
	ff->dumped = 0;
	return 0;
}

/* 1..FM_MAX_KEYS distinct keys, none all zero; the unused tail zero (uapi). */
static int fm_do_auth_set(struct fm_net *fn, const struct fm_auth *rec)
{
	u64 keys[FM_MAX_KEYS] = {};
	u32 i, j;

	if (rec->n_keys > FM_MAX_KEYS || rec->reserved)
		return -EINVAL;
	for (i = 0; i < FM_MAX_KEYS; i++) {
		memcpy(&keys[i], rec->keys + i * FM_KEY_SIZE, FM_KEY_SIZE);
		if ((i < rec->n_keys) != (keys[i] != 0))
			return -EINVAL;
		for (j = 0; j < i && i < rec->n_keys; j++)
			if (keys[j] == keys[i])
				return -EINVAL;
	}
	return fm_keys_set(fn, keys, rec->n_keys);
}

static int fm_do_auth_get(struct fm_file *ff, struct fm_net *fn)
{
	const struct fm_keys *keys;
	struct fm_auth *rep;
	LIST_HEAD(batch);

	rep = fm_reply(ff, &batch, FM_MSG_AUTH, sizeof(*rep));
	if (!rep)
		return -ENOMEM;
	rcu_read_lock();
	keys = rcu_dereference(fn->keys);
	if (keys) {
		rep->n_keys = keys->n;
		memcpy(rep->keys, keys->key, keys->n * FM_KEY_SIZE);
	}
	rcu_read_unlock();
	return bfc_replies_queue(&ff->base, &batch, 1);
}

static int fm_do_add(struct fm_net *fn, const struct fm_add *rec)
{
	if ((rec->entry_flags & ~FM_ENTRY_STATIC) || !fm_valid_unicast(rec->client) ||
	    !fm_valid_unicast(rec->pop))
		return -EINVAL;
	if ((rec->entry_flags & FM_ENTRY_STATIC) && rec->age_ms)
		return -EINVAL;
	if (rec->age_ms > FM_MAX_IDLE_TIMEOUT_MS)
		return -EINVAL;
	return fm_add(fn, rec->client, rec->pop, rec->entry_flags, rec->age_ms);
}

static int fm_handle(struct fm_file *ff, size_t len)
{
	const struct bifrost_hdr *hdr = (const struct bifrost_hdr *)ff->wbuf;
	struct fm_net *fn = fm_pernet(ff->base.net);
	int err;

	err = bfc_check_request(&fm_abi, hdr, len);
	if (err)
		return err;

	switch (hdr->type) {
	case FM_MSG_INFO_REQ:
		return bfc_queue_info(&ff->base, (const u64 __percpu *)fn->counters, FM_CNT_MAX);
	case FM_MSG_CONFIG:
		return fm_do_config_set(fn, (const struct fm_config *)ff->wbuf);
	case FM_MSG_CONFIG_GET:
		return fm_do_config_get(ff, fn);
	case FM_MSG_STATS_REQ:
		return fm_do_stats(ff, fn);
	case FM_MSG_DUMP_REQ:
		return fm_do_dump(ff, fn);
	case FM_MSG_ADD:
		return fm_do_add(fn, (const struct fm_add *)ff->wbuf);
	case FM_MSG_DEL: {
		const struct fm_del *rec = (const struct fm_del *)ff->wbuf;

		if (rec->reserved)
			return -EINVAL;
		return fm_del(fn, rec->client);
	}
	case FM_MSG_FLUSH: {
		const struct fm_flush *rec = (const struct fm_flush *)ff->wbuf;

		if (rec->reserved || (rec->scope & ~FM_FLUSH_STATIC))
			return -EINVAL;
		fm_flush(fn, rec->scope & FM_FLUSH_STATIC);
		return 0;
	}
	case FM_MSG_AUTH:
		return fm_do_auth_set(fn, (const struct fm_auth *)ff->wbuf);
	case FM_MSG_AUTH_GET:
		return fm_do_auth_get(ff, fn);
	}
	return -EINVAL;
}

/*
 * BAD_WRITES counts refused records; ENOMEM, ENOBUFS (replies unread) and
 * ENOENT (DEL of a client already gone, e.g. expired) are not the writer's
 * fault and are not counted (uapi/fou_map.h).
 */
static ssize_t fm_write(struct file *file, const char __user *buf, size_t len, loff_t *ppos)
{
	struct fm_file *ff = file->private_data;
	int err;

	if (len > FM_MAX_RECORD) {
		err = -E2BIG;
		goto out_bad;
	}
	mutex_lock(&ff->base.lock);
	if (copy_from_user(ff->wbuf, buf, len)) {
		mutex_unlock(&ff->base.lock);
		return -EFAULT;
	}
	err = fm_handle(ff, len);
	mutex_unlock(&ff->base.lock);
	if (!err)
		return len;
	if (err == -ENOMEM || err == -ENOBUFS || err == -ENOENT)
		return err;
out_bad:
	fm_count(fm_pernet(ff->base.net), FM_CNT_BAD_WRITES);
	return err;
}

static void fm_entry_to_rec(const struct fm_map_entry *e, struct fm_entry *rec, u32 now)
{
	bfc_hdr_fill(&fm_abi, rec, FM_MSG_ENTRY, sizeof(*rec));
	rec->client = e->client;
	rec->pop = READ_ONCE(e->pop);
	rec->age_ms = jiffies_to_msecs(now - READ_ONCE(e->last_seen));
	rec->entry_flags = READ_ONCE(e->flags) & FM_ENTRY_STATIC;
	rec->packets = atomic64_read(&e->packets);
}

/*
 * Fill kbuf (room bytes) with ENTRY records of the snapshot's clients still
 * present, then the DUMP_END once they are all out and it fits.
 */
static size_t fm_dump_fill(struct fm_file *ff, struct fm_net *fn, u8 *kbuf, size_t room)
{
	const size_t esz = sizeof(struct fm_entry);
	u32 now = fm_now();
	struct fm_map_entry *e;
	size_t used = 0;

	rcu_read_lock();
	while (ff->dump_next < ff->dump_n && room - used >= esz) {
		e = rhashtable_lookup(&fn->table, &ff->dump_keys[ff->dump_next],
				      fm_table_params);
		ff->dump_next++;
		if (!e)
			continue;	/* gone since DUMP_REQ: not live */
		fm_entry_to_rec(e, (struct fm_entry *)(kbuf + used), now);
		used += esz;
		ff->dumped++;
	}
	rcu_read_unlock();

	if (ff->dump_next == ff->dump_n && room - used >= sizeof(struct fm_dump_end)) {
		struct fm_dump_end *end = (struct fm_dump_end *)(kbuf + used);

		bfc_hdr_fill(&fm_abi, end, FM_MSG_DUMP_END, sizeof(*end));
		end->count = ff->dumped;
		used += sizeof(*end);
		fm_dump_stop(ff);
	}
	return used;
}

static ssize_t fm_read(struct file *file, char __user *buf, size_t len, loff_t *ppos)
{
	struct fm_file *ff = file->private_data;
	size_t used, room;
	ssize_t ret;
	u8 *kbuf;

	mutex_lock(&ff->base.lock);
	if (ff->base.n_replies) {
		ret = bfc_replies_read(&ff->base, buf, len);
		goto out_unlock;
	}
	if (!ff->dump_keys) {
		ret = 0;
		goto out_unlock;
	}
	room = min_t(size_t, len, 64 * 1024);
	if (room < sizeof(struct fm_entry)) {
		ret = -EMSGSIZE;
		goto out_unlock;
	}
	kbuf = kvzalloc(room, GFP_KERNEL);
	if (!kbuf) {
		ret = -ENOMEM;
		goto out_unlock;
	}
	used = fm_dump_fill(ff, fm_pernet(ff->base.net), kbuf, room);
	ret = used;
	if (copy_to_user(buf, kbuf, used))
		ret = -EFAULT;
	kvfree(kbuf);
out_unlock:
	mutex_unlock(&ff->base.lock);
	return ret;
}

/* Readable while replies are queued or a dump has records left. */
static __poll_t fm_poll(struct file *file, poll_table *wait)
{
	struct fm_file *ff = file->private_data;

	return bfc_poll(&ff->base, file, wait, READ_ONCE(ff->dump_keys) != NULL);
}

static int fm_open(struct inode *inode, struct file *file)
{
	struct fm_file *ff = bfc_file_open_as(struct fm_file, inode, file, &fm_abi);

	return PTR_ERR_OR_ZERO(ff);
}

static int fm_release(struct inode *inode, struct file *file)
{
	struct fm_file *ff = file->private_data;

	fm_dump_stop(ff);
	bfc_file_release(&ff->base);
	return 0;
}

BFC_DEFINE_DEVICE(fm, "fou_map");
