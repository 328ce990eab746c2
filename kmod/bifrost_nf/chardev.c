// SPDX-License-Identifier: GPL-2.0
/*
 * /dev/bifrost_nf: one record per write(), replies read() back in order,
 * refresh events read() when no reply is queued, poll() for both. Each open
 * file is bound to the opener's netns (like tun): a daemon in a container
 * sees and changes only its own netns's cache.
 */
#include <linux/fs.h>
#include <linux/list.h>
#include <linux/miscdevice.h>
#include <linux/nsproxy.h>
#include <linux/poll.h>
#include <linux/sched.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "bfnf.h"

/* Bounds a file's reply queue: a full dump is MAX_SERVICES + 1 records. */
#define BFNF_MAX_REPLIES (2 * BFNF_MAX_SERVICES + 8)
#define BFNF_MAX_RECORD sizeof(struct bfnf_entry_set)
#define BFNF_EVENTS_PER_READ 32

struct bfnf_reply {
	struct list_head list;
	u32 len;
	u8 data[];
};

struct bfnf_file {
	struct net *net;
	struct bfnf_net *bn;
	/* protects replies and the entry being assembled */
	struct mutex lock;
	struct list_head replies;
	unsigned int n_replies;
	/* a multi-packet answer being written, published on its last packet */
	struct bfnf_entry *asm_entry;
	__be32 asm_addr;
	__be16 asm_port;
	u8 asm_qtype;
	u8 asm_next;
};

static void bfnf_hdr_fill(struct bfnf_hdr *hdr, u16 type, u32 len)
{
	hdr->magic = BFNF_MAGIC;
	hdr->version = BFNF_ABI_VERSION;
	hdr->type = type;
	hdr->length = len;
	hdr->flags = 0;
}

static void *bfnf_reply_alloc(struct bfnf_file *f, struct list_head *batch, u16 type, u32 len)
{
	struct bfnf_reply *r = kzalloc(sizeof(*r) + len, GFP_KERNEL);

	if (!r)
		return NULL;
	r->len = len;
	bfnf_hdr_fill((struct bfnf_hdr *)r->data, type, len);
	list_add_tail(&r->list, batch);
	return r->data;
}

static void bfnf_replies_free(struct list_head *list)
{
	struct bfnf_reply *r, *tmp;

	list_for_each_entry_safe(r, tmp, list, list) {
		list_del(&r->list);
		kfree(r);
	}
}

/* Queue a batch of replies whole, or none of them. Caller holds f->lock. */
static int bfnf_replies_queue(struct bfnf_file *f, struct list_head *batch, unsigned int n)
{
	if (f->n_replies + n > BFNF_MAX_REPLIES) {
		bfnf_replies_free(batch);
		return -ENOBUFS;
	}
	list_splice_tail_init(batch, &f->replies);
	WRITE_ONCE(f->n_replies, f->n_replies + n);
	return 0;
}

static int bfnf_do_info(struct bfnf_file *f)
{
	struct bfnf_info_reply *rep;
	LIST_HEAD(batch);

	rep = bfnf_reply_alloc(f, &batch, BFNF_MSG_INFO_REPLY, sizeof(*rep));
	if (!rep)
		return -ENOMEM;
	rep->abi_version = BFNF_ABI_VERSION;
	rep->n_counters = BFNF_CNT_MAX;
	rep->netns_inum = f->net->ns.inum;
	strscpy(rep->module_version, BFNF_MODULE_VERSION, sizeof(rep->module_version));
	bfnf_counters_read(f->bn, rep->counters);
	return bfnf_replies_queue(f, &batch, 1);
}

static int bfnf_do_dump(struct bfnf_file *f)
{
	struct bfnf_net *bn = f->bn;
	u64 now = ktime_get_ns();
	struct bfnf_service_info *si;
	struct bfnf_service *svc;
	struct bfnf_dump_end *end;
	unsigned int n = 0;
	LIST_HEAD(batch);
	int i, q;

	mutex_lock(&bn->lock);
	for (i = 0; i < BFNF_MAX_SERVICES; i++) {
		svc = rcu_dereference_protected(bn->svc[i], lockdep_is_held(&bn->lock));
		if (!svc)
			continue;
		si = bfnf_reply_alloc(f, &batch, BFNF_MSG_SERVICE_INFO, sizeof(*si));
		if (!si)
			goto err_nomem;
		n++;
		si->addr = svc->addr;
		si->port = ntohs(svc->port);
		si->svc_flags = svc->flags;
		for (q = 0; q < BFNF_N_QTYPES; q++) {
			const struct bfnf_entry *e = rcu_dereference_protected(svc->entry[q],
						lockdep_is_held(&bn->lock));

			if (!e)
				continue;
			si->bytes[q] = e->total_bytes;
			si->packets[q] = e->n_packets;
			si->ttl_ms[q] = e->ttl_ms;
			si->max_stale_ms[q] = e->max_stale_ms;
			si->age_ms[q] = min_t(u64, div_u64(now - e->stored_ns, NSEC_PER_MSEC),
					      U32_MAX);
		}
	}
	mutex_unlock(&bn->lock);
	end = bfnf_reply_alloc(f, &batch, BFNF_MSG_DUMP_END, sizeof(*end));
	if (!end)
		goto err_free;
	end->n_services = n;
	return bfnf_replies_queue(f, &batch, n + 1);

err_nomem:
	mutex_unlock(&bn->lock);
err_free:
	bfnf_replies_free(&batch);
	return -ENOMEM;
}

static void bfnf_asm_reset(struct bfnf_file *f)
{
	kfree(f->asm_entry);
	f->asm_entry = NULL;
	f->asm_next = 0;
}

static int bfnf_do_entry_set(struct bfnf_file *f, const struct bfnf_entry_set *rec)
{
	__be16 port = htons(rec->port);
	struct bfnf_entry *e;
	int err;

	if (rec->qtype < BFNF_QT_INFO || rec->qtype > BFNF_QT_RULES || !rec->count ||
	    rec->count > BFNF_MAX_PACKETS || rec->index >= rec->count || !rec->length ||
	    rec->length > BFNF_PAYLOAD_MAX || !rec->ttl_ms || rec->reserved0 || rec->reserved1 ||
	    !rec->port)
		return -EINVAL;
	if (rec->index == 0) {
		bfnf_asm_reset(f);
		e = kzalloc(struct_size(e, data, (size_t)rec->count * BFNF_PAYLOAD_MAX),
			    GFP_KERNEL);
		if (!e)
			return -ENOMEM;
		e->n_packets = rec->count;
		f->asm_entry = e;
		f->asm_addr = rec->addr;
		f->asm_port = port;
		f->asm_qtype = rec->qtype;
	} else {
		e = f->asm_entry;
		if (!e || rec->index != f->asm_next || rec->count != e->n_packets ||
		    rec->addr != f->asm_addr || port != f->asm_port ||
		    rec->qtype != f->asm_qtype) {
			bfnf_asm_reset(f);
			return -EINVAL;
		}
	}
	memcpy(e->data + rec->index * BFNF_PAYLOAD_MAX, rec->payload, rec->length);
	e->len[rec->index] = rec->length;
	e->total_bytes += rec->length;
	f->asm_next = rec->index + 1;
	if (f->asm_next < e->n_packets)
		return 0;

	e->ttl_ms = rec->ttl_ms;
	e->max_stale_ms = rec->max_stale_ms;
	e->stored_ns = ktime_get_ns();
	mutex_lock(&f->bn->lock);
	err = bfnf_entry_publish(f->bn, f->asm_addr, f->asm_port, f->asm_qtype, e);
	mutex_unlock(&f->bn->lock);
	if (err) {
		bfnf_asm_reset(f);
		return err;
	}
	f->asm_entry = NULL;
	f->asm_next = 0;
	return 0;
}

static int bfnf_record_size(u16 type)
{
	switch (type) {
	case BFNF_MSG_INFO_REQ:
		return sizeof(struct bfnf_info_req);
	case BFNF_MSG_SERVICE_SET:
		return sizeof(struct bfnf_service_set);
	case BFNF_MSG_SERVICE_DEL:
		return sizeof(struct bfnf_service_del);
	case BFNF_MSG_ENTRY_SET:
		return sizeof(struct bfnf_entry_set);
	case BFNF_MSG_ENTRY_DEL:
		return sizeof(struct bfnf_entry_del);
	case BFNF_MSG_FLUSH:
		return sizeof(struct bfnf_flush);
	case BFNF_MSG_ROTATE:
		return sizeof(struct bfnf_rotate);
	case BFNF_MSG_CONFIG_SET:
		return sizeof(struct bfnf_config_set);
	case BFNF_MSG_DUMP_REQ:
		return sizeof(struct bfnf_dump_req);
	default:
		/* replies and events are never written */
		return -1;
	}
}

static int bfnf_dispatch(struct bfnf_file *f, const void *buf, size_t len)
{
	const struct bfnf_hdr *hdr = buf;
	struct bfnf_net *bn = f->bn;
	int size, err;

	if (hdr->magic != BFNF_MAGIC)
		return -EINVAL;
	if (hdr->version != BFNF_ABI_VERSION)
		return -EPROTO;
	size = bfnf_record_size(hdr->type);
	if (size < 0 || hdr->length != len || len != size || hdr->flags)
		return -EINVAL;

	switch (hdr->type) {
	case BFNF_MSG_INFO_REQ:
		return bfnf_do_info(f);
	case BFNF_MSG_DUMP_REQ:
		return bfnf_do_dump(f);
	case BFNF_MSG_ENTRY_SET:
		return bfnf_do_entry_set(f, buf);
	case BFNF_MSG_ROTATE:
		bfnf_secret_rotate(bn, NULL, ktime_get_ns(), 1);
		return 0;
	case BFNF_MSG_SERVICE_SET: {
		const struct bfnf_service_set *rec = buf;

		if (!rec->port || !rec->addr ||
		    (rec->svc_flags & ~(BFNF_SVC_F_NO_CHALLENGE | BFNF_SVC_F_MISS_PASS)))
			return -EINVAL;
		mutex_lock(&bn->lock);
		err = bfnf_service_set(bn, rec->addr, htons(rec->port), rec->svc_flags);
		mutex_unlock(&bn->lock);
		return err;
	}
	case BFNF_MSG_SERVICE_DEL: {
		const struct bfnf_service_del *rec = buf;

		if (rec->reserved)
			return -EINVAL;
		mutex_lock(&bn->lock);
		err = bfnf_service_del(bn, rec->addr, htons(rec->port));
		mutex_unlock(&bn->lock);
		return err;
	}
	case BFNF_MSG_ENTRY_DEL: {
		const struct bfnf_entry_del *rec = buf;

		if (rec->qtype > BFNF_QT_RULES || rec->reserved)
			return -EINVAL;
		mutex_lock(&bn->lock);
		err = bfnf_entry_del(bn, rec->addr, htons(rec->port), rec->qtype);
		mutex_unlock(&bn->lock);
		return err;
	}
	case BFNF_MSG_FLUSH:
		mutex_lock(&bn->lock);
		bfnf_entries_flush(bn);
		mutex_unlock(&bn->lock);
		return 0;
	case BFNF_MSG_CONFIG_SET: {
		const struct bfnf_config_set *rec = buf;

		if (rec->reserved || !rec->rotate_s || rec->rotate_s > 86400 ||
		    rec->rate_pps > 10000000 || (rec->rate_pps && !rec->rate_burst) ||
		    rec->rate_burst > 1000000)
			return -EINVAL;
		WRITE_ONCE(bn->rate_pps, rec->rate_pps);
		WRITE_ONCE(bn->rate_burst, rec->rate_burst);
		WRITE_ONCE(bn->rotate_s, rec->rotate_s);
		return 0;
	}
	}
	WARN_ON_ONCE(1);	/* bfnf_record_size() and this switch disagree */
	return -EINVAL;
}

static ssize_t bfnf_write(struct file *file, const char __user *ubuf, size_t count, loff_t *ppos)
{
	struct bfnf_file *f = file->private_data;
	void *buf;
	int err;

	if (count < sizeof(struct bfnf_hdr)) {
		err = -EINVAL;
		goto err_count;
	}
	if (count > BFNF_MAX_RECORD) {
		err = -E2BIG;
		goto err_count;
	}
	buf = memdup_user(ubuf, count);
	if (IS_ERR(buf)) {
		err = PTR_ERR(buf);
		goto err_count;
	}
	mutex_lock(&f->lock);
	err = bfnf_dispatch(f, buf, count);
	mutex_unlock(&f->lock);
	kfree(buf);
	if (err)
		goto err_count;
	return count;

err_count:
	bfnf_count(f->bn, BFNF_CNT_BAD_WRITES);
	return err;
}

static ssize_t bfnf_read(struct file *file, char __user *ubuf, size_t count, loff_t *ppos)
{
	struct bfnf_file *f = file->private_data;
	struct bfnf_event *ev;
	struct bfnf_reply *r, *tmp;
	size_t done = 0, n;

	mutex_lock(&f->lock);
	if (f->n_replies) {
		list_for_each_entry_safe(r, tmp, &f->replies, list) {
			if (done + r->len > count)
				break;
			if (copy_to_user(ubuf + done, r->data, r->len)) {
				mutex_unlock(&f->lock);
				return done ? done : -EFAULT;
			}
			done += r->len;
			list_del(&r->list);
			kfree(r);
			WRITE_ONCE(f->n_replies, f->n_replies - 1);
		}
		mutex_unlock(&f->lock);
		/* the next reply does not fit the buffer */
		return done ? done : -EINVAL;
	}
	mutex_unlock(&f->lock);

	n = min_t(size_t, count / sizeof(*ev), BFNF_EVENTS_PER_READ);
	if (!n)
		return bfnf_events_pending(f->bn) ? -EINVAL : 0;
	ev = kcalloc(n, sizeof(*ev), GFP_KERNEL);
	if (!ev)
		return -ENOMEM;
	mutex_lock(&f->bn->lock);
	n = bfnf_events_take(f->bn, ev, n);
	mutex_unlock(&f->bn->lock);
	done = n * sizeof(*ev);
	if (done && copy_to_user(ubuf, ev, done))
		done = -EFAULT;
	kfree(ev);
	return done;
}

static __poll_t bfnf_poll(struct file *file, poll_table *wait)
{
	struct bfnf_file *f = file->private_data;
	__poll_t mask = EPOLLOUT | EPOLLWRNORM;

	poll_wait(file, &f->bn->event_wq, wait);
	if (READ_ONCE(f->n_replies) || bfnf_events_pending(f->bn))
		mask |= EPOLLIN | EPOLLRDNORM;
	return mask;
}

static int bfnf_open(struct inode *inode, struct file *file)
{
	struct bfnf_file *f = kzalloc(sizeof(*f), GFP_KERNEL);

	if (!f)
		return -ENOMEM;
	f->net = get_net(current->nsproxy->net_ns);
	f->bn = bfnf_pernet(f->net);
	mutex_init(&f->lock);
	INIT_LIST_HEAD(&f->replies);
	file->private_data = f;
	return stream_open(inode, file);
}

static int bfnf_release(struct inode *inode, struct file *file)
{
	struct bfnf_file *f = file->private_data;

	bfnf_replies_free(&f->replies);
	kfree(f->asm_entry);
	put_net(f->net);
	kfree(f);
	return 0;
}

static const struct file_operations bfnf_fops = {
	.owner = THIS_MODULE,
	.open = bfnf_open,
	.release = bfnf_release,
	.read = bfnf_read,
	.write = bfnf_write,
	.poll = bfnf_poll,
};

static struct miscdevice bfnf_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "bifrost_nf",
	.fops = &bfnf_fops,
	.mode = 0600,
};

int bfnf_chardev_init(void)
{
	return misc_register(&bfnf_misc);
}

void bfnf_chardev_exit(void)
{
	misc_deregister(&bfnf_misc);
}
