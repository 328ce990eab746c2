// SPDX-License-Identifier: GPL-2.0
/*
 * /dev/fou_map: the control device. Every open() is bound to the opener's
 * network namespace (as drivers/net/tun.c does), so a daemon in a container
 * sees and changes only that container's table.
 *
 * write() takes exactly one record (uapi/fou_map.h); replies queue up per
 * file and are read() back in order. A dump walks the hash table across as
 * many read()s as it takes.
 */
#include <linux/fs.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/nsproxy.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/jiffies.h>

#include "fm.h"

/* Unread replies a file may hold: a writer that never reads gets ENOBUFS. */
#define FM_MAX_PENDING 16
/* The largest record anyone may write (and the largest reply). */
#define FM_MAX_RECORD sizeof(struct fm_info_reply)

struct fm_reply {
	struct list_head list;
	size_t len;
	union {
		struct fm_hdr hdr;
		struct fm_info_reply info;
		struct fm_config cfg;
		struct fm_stats_reply stats;
	} u;
};

struct fm_file {
	struct net *net;
	struct mutex lock;	/* everything below */
	struct list_head replies;
	unsigned int n_replies;
	bool dumping;
	bool dump_held;		/* held: an entry that did not fit the last read */
	struct rhashtable_iter iter;
	u64 dumped;
	struct fm_entry held;
	u8 wbuf[FM_MAX_RECORD];
};

static void fm_hdr_init(struct fm_hdr *hdr, u16 type, u32 len)
{
	hdr->magic = FM_MAGIC;
	hdr->version = FM_ABI_VERSION;
	hdr->type = type;
	hdr->length = len;
	hdr->flags = 0;
}

static struct fm_reply *fm_reply_new(struct fm_file *ff, u16 type, size_t len)
{
	struct fm_reply *r;

	if (ff->n_replies >= FM_MAX_PENDING)
		return ERR_PTR(-ENOBUFS);
	r = kzalloc(sizeof(*r), GFP_KERNEL);
	if (!r)
		return ERR_PTR(-ENOMEM);
	r->len = len;
	fm_hdr_init(&r->u.hdr, type, len);
	return r;
}

static void fm_reply_queue(struct fm_file *ff, struct fm_reply *r)
{
	list_add_tail(&r->list, &ff->replies);
	ff->n_replies++;
}

static void fm_sum_counters(struct fm_net *fn, u64 *out)
{
	int cpu, i;

	for (i = 0; i < FM_CNT_MAX; i++)
		out[i] = 0;
	for_each_possible_cpu(cpu) {
		const struct fm_counters *c = per_cpu_ptr(fn->counters, cpu);

		for (i = 0; i < FM_CNT_MAX; i++)
			out[i] += READ_ONCE(c->cnt[i]);
	}
}

static int fm_do_info(struct fm_file *ff, struct fm_net *fn)
{
	struct fm_reply *r = fm_reply_new(ff, FM_MSG_INFO_REPLY, sizeof(struct fm_info_reply));

	if (IS_ERR(r))
		return PTR_ERR(r);
	BUILD_BUG_ON(FM_CNT_MAX > ARRAY_SIZE(r->u.info.counters));
	r->u.info.abi_version = FM_ABI_VERSION;
	r->u.info.n_counters = FM_CNT_MAX;
	r->u.info.netns_inum = ff->net->ns.inum;
	strscpy(r->u.info.module_version, FM_MODULE_VERSION, sizeof(r->u.info.module_version));
	fm_sum_counters(fn, r->u.info.counters);
	fm_reply_queue(ff, r);
	return 0;
}

static int fm_do_config_get(struct fm_file *ff, struct fm_net *fn)
{
	struct fm_reply *r = fm_reply_new(ff, FM_MSG_CONFIG, sizeof(struct fm_config));
	const struct fm_cfg *cfg;

	if (IS_ERR(r))
		return PTR_ERR(r);
	rcu_read_lock();
	cfg = rcu_dereference(fn->cfg);
	r->u.cfg.n_ports = cfg->n_ports;
	r->u.cfg.idle_timeout_ms = cfg->idle_timeout_ms;
	r->u.cfg.max_entries = cfg->max_entries;
	r->u.cfg.miss_policy = cfg->miss_policy;
	memcpy(r->u.cfg.ports, cfg->ports, sizeof(r->u.cfg.ports));
	rcu_read_unlock();
	fm_reply_queue(ff, r);
	return 0;
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
	cfg.n_ports = rec->n_ports;
	cfg.idle_timeout_ms = rec->idle_timeout_ms;
	cfg.max_entries = rec->max_entries;
	cfg.miss_policy = rec->miss_policy;
	return fm_config_set(fn, &cfg);
}

static int fm_do_stats(struct fm_file *ff, struct fm_net *fn)
{
	struct fm_reply *r = fm_reply_new(ff, FM_MSG_STATS_REPLY, sizeof(struct fm_stats_reply));
	u32 entries, buckets;

	if (IS_ERR(r))
		return PTR_ERR(r);
	spin_lock_bh(&fn->lock);
	entries = fn->n_learned + fn->n_static;
	r->u.stats.static_entries = fn->n_static;
	r->u.stats.max_entries = rcu_dereference_protected(fn->cfg,
							   lockdep_is_held(&fn->lock))->max_entries;
	spin_unlock_bh(&fn->lock);
	buckets = fm_table_buckets(fn);
	r->u.stats.entries = entries;
	r->u.stats.buckets = buckets;
	r->u.stats.entry_size = kmem_cache_size(fm_entry_cache);
	r->u.stats.created_ns = fn->created_ns;
	r->u.stats.table_bytes = (u64)entries * kmem_cache_size(fm_entry_cache) +
				 (u64)buckets * sizeof(void *);
	fm_reply_queue(ff, r);
	return 0;
}

static void fm_dump_stop(struct fm_file *ff)
{
	if (ff->dumping) {
		rhashtable_walk_exit(&ff->iter);
		ff->dumping = false;
		ff->dump_held = false;
	}
}

static int fm_do_dump(struct fm_file *ff, struct fm_net *fn)
{
	/* A new dump replaces one that was not read to its end. */
	fm_dump_stop(ff);
	rhashtable_walk_enter(&fn->table, &ff->iter);
	ff->dumping = true;
	ff->dumped = 0;
	return 0;
}

static bool fm_valid_unicast(__be32 addr)
{
	return !(ipv4_is_zeronet(addr) || ipv4_is_multicast(addr) ||
		 ipv4_is_lbcast(addr) || ipv4_is_loopback(addr));
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

static size_t fm_record_size(u16 type)
{
	switch (type) {
	case FM_MSG_INFO_REQ:
		return sizeof(struct fm_info_req);
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
	default:
		/* Replies and unknown types are not requests. */
		return 0;
	}
}

static int fm_handle(struct fm_file *ff, size_t len)
{
	const struct fm_hdr *hdr = (const struct fm_hdr *)ff->wbuf;
	struct fm_net *fn = fm_pernet(ff->net);
	size_t want;

	if (len < sizeof(*hdr) || hdr->magic != FM_MAGIC)
		return -EINVAL;
	if (hdr->version != FM_ABI_VERSION)
		return -EPROTO;
	want = fm_record_size(hdr->type);
	if (!want || hdr->length != len || len != want || hdr->flags)
		return -EINVAL;

	switch (hdr->type) {
	case FM_MSG_INFO_REQ:
		return fm_do_info(ff, fn);
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
	}
	return -EINVAL;
}

static ssize_t fm_write(struct file *file, const char __user *buf, size_t len, loff_t *ppos)
{
	struct fm_file *ff = file->private_data;
	int err;

	if (len > FM_MAX_RECORD) {
		err = -E2BIG;
		goto out_bad;
	}
	mutex_lock(&ff->lock);
	if (copy_from_user(ff->wbuf, buf, len)) {
		mutex_unlock(&ff->lock);
		return -EFAULT;
	}
	err = fm_handle(ff, len);
	mutex_unlock(&ff->lock);
	if (!err)
		return len;
	if (err == -ENOMEM || err == -ENOBUFS || err == -ENOENT)
		return err;
out_bad:
	fm_count(fm_pernet(ff->net), FM_CNT_BAD_WRITES);
	return err;
}

static void fm_entry_to_rec(const struct fm_map_entry *e, struct fm_entry *rec, u32 now)
{
	fm_hdr_init(&rec->hdr, FM_MSG_ENTRY, sizeof(*rec));
	rec->client = e->client;
	rec->pop = READ_ONCE(e->pop);
	rec->age_ms = jiffies_to_msecs(now - READ_ONCE(e->last_seen));
	rec->entry_flags = e->flags & FM_ENTRY_STATIC;
	rec->packets = READ_ONCE(e->packets);
}

/* Fill kbuf (room bytes) with ENTRY records; the DUMP_END when the walk ends. */
static size_t fm_dump_fill(struct fm_file *ff, u8 *kbuf, size_t room)
{
	const size_t esz = sizeof(struct fm_entry);
	u32 now = fm_now();
	struct fm_map_entry *e;
	size_t used = 0;

	if (ff->dump_held) {
		if (room < esz)
			return 0;
		memcpy(kbuf, &ff->held, esz);
		used = esz;
		ff->dump_held = false;
		ff->dumped++;
	}
	rhashtable_walk_start(&ff->iter);
	while (true) {
		e = rhashtable_walk_next(&ff->iter);
		if (IS_ERR(e)) {
			/* -EAGAIN: a resize restarted the walk; entries may repeat. */
			continue;
		}
		if (!e)
			break;
		fm_entry_to_rec(e, &ff->held, now);
		if (room - used < esz) {
			ff->dump_held = true;
			break;
		}
		memcpy(kbuf + used, &ff->held, esz);
		used += esz;
		ff->dumped++;
	}
	rhashtable_walk_stop(&ff->iter);

	if (!e && room - used >= sizeof(struct fm_dump_end)) {
		struct fm_dump_end end = {};

		fm_hdr_init(&end.hdr, FM_MSG_DUMP_END, sizeof(end));
		end.count = ff->dumped;
		memcpy(kbuf + used, &end, sizeof(end));
		used += sizeof(end);
		rhashtable_walk_exit(&ff->iter);
		ff->dumping = false;
	} else if (!e) {
		/* Room for the end record next time: walk again finds nothing. */
	}
	return used;
}

static ssize_t fm_read(struct file *file, char __user *buf, size_t len, loff_t *ppos)
{
	struct fm_file *ff = file->private_data;
	struct fm_reply *r, *tmp;
	size_t used = 0, room;
	ssize_t ret;
	u8 *kbuf;

	mutex_lock(&ff->lock);
	if (!list_empty(&ff->replies)) {
		list_for_each_entry_safe(r, tmp, &ff->replies, list) {
			if (r->len > len - used)
				break;
			if (copy_to_user(buf + used, &r->u, r->len)) {
				ret = -EFAULT;
				goto out_unlock;
			}
			used += r->len;
			list_del(&r->list);
			ff->n_replies--;
			kfree(r);
		}
		ret = used ? used : -EMSGSIZE;
		goto out_unlock;
	}
	if (!ff->dumping) {
		ret = 0;
		goto out_unlock;
	}
	room = min_t(size_t, len, 64 * 1024);
	if (room < sizeof(struct fm_entry)) {
		ret = -EMSGSIZE;
		goto out_unlock;
	}
	kbuf = kvmalloc(room, GFP_KERNEL);
	if (!kbuf) {
		ret = -ENOMEM;
		goto out_unlock;
	}
	used = fm_dump_fill(ff, kbuf, room);
	ret = used;
	if (copy_to_user(buf, kbuf, used))
		ret = -EFAULT;
	kvfree(kbuf);
out_unlock:
	mutex_unlock(&ff->lock);
	return ret;
}

static int fm_open(struct inode *inode, struct file *file)
{
	struct fm_file *ff;

	ff = kvzalloc(sizeof(*ff), GFP_KERNEL);
	if (!ff)
		return -ENOMEM;
	ff->net = get_net(current->nsproxy->net_ns);
	mutex_init(&ff->lock);
	INIT_LIST_HEAD(&ff->replies);
	file->private_data = ff;
	return stream_open(inode, file);
}

static int fm_release(struct inode *inode, struct file *file)
{
	struct fm_file *ff = file->private_data;
	struct fm_reply *r, *tmp;

	fm_dump_stop(ff);
	list_for_each_entry_safe(r, tmp, &ff->replies, list)
		kfree(r);
	put_net(ff->net);
	mutex_destroy(&ff->lock);
	kvfree(ff);
	return 0;
}

static const struct file_operations fm_fops = {
	.owner = THIS_MODULE,
	.open = fm_open,
	.release = fm_release,
	.read = fm_read,
	.write = fm_write,
};

static struct miscdevice fm_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "fou_map",
	.fops = &fm_fops,
	.mode = 0600,
};

int fm_chardev_init(void)
{
	return misc_register(&fm_misc);
}

void fm_chardev_exit(void)
{
	misc_deregister(&fm_misc);
}
