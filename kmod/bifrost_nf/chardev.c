// SPDX-License-Identifier: GPL-2.0
/*
 * /dev/bifrost_nf: one record per write(), replies read() back in order,
 * refresh events read() when no reply is queued, poll() for both. Each open
 * file is bound to the opener's netns (like tun): a daemon in a container
 * sees and changes only its own netns's cache.
 */
#include "bfnf.h"
#include "bifrost_chardev.h"

/* Bounds a file's reply queue: a full dump is MAX_SERVICES + 1 records. */
#define BFNF_MAX_REPLIES (2 * BFNF_MAX_SERVICES + 8)
#define BFNF_MAX_RECORD sizeof(struct bfnf_entry_set)
#define BFNF_EVENTS_PER_READ 32

static size_t bfnf_record_size(u16 type)
{
	switch (type) {
	case BFNF_MSG_INFO_REQ:
		return sizeof(struct bifrost_info_req);
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
		return 0;
	}
}

BFC_DEFINE_ABI(bfnf_abi, BFNF, -EINVAL, BFNF_MAX_REPLIES, bfnf_record_size);

struct bfnf_file {
	/* first: bfc_file_open_as() allocates the whole; base.lock also guards asm_* */
	struct bfc_file base;
	struct bfnf_net *bn;
	/* a multi-packet answer being written, published on its last packet */
	struct bfnf_entry *asm_entry;
	__be32 asm_addr;
	__be16 asm_port;
	u8 asm_qtype;
	u8 asm_next;
};

static int bfnf_do_dump(struct bfnf_file *f)
{
	struct bfnf_net *bn = f->bn;
	struct bfnf_service_info *si;
	struct bfnf_service *svc;
	struct bfnf_dump_end *end;
	unsigned int n = 0;
	LIST_HEAD(batch);
	int i, q;
	u64 now;

	mutex_lock(&bn->lock);
	/* read under the lock: an entry published before it is never "from the future" */
	now = ktime_get_ns();
	for (i = 0; i < BFNF_MAX_SERVICES; i++) {
		svc = rcu_dereference_protected(bn->svc[i], lockdep_is_held(&bn->lock));
		if (!svc)
			continue;
		si = bfc_reply_alloc(&f->base, &batch, BFNF_MSG_SERVICE_INFO, sizeof(*si));
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
			si->age_ms[q] = min_t(u64, div_u64(bfnf_age_ns(now, e->stored_ns),
							   NSEC_PER_MSEC), U32_MAX);
		}
	}
	mutex_unlock(&bn->lock);
	end = bfc_reply_alloc(&f->base, &batch, BFNF_MSG_DUMP_END, sizeof(*end));
	if (!end)
		goto err_free;
	end->n_services = n;
	return bfc_replies_queue(&f->base, &batch, n + 1);

err_nomem:
	mutex_unlock(&bn->lock);
err_free:
	bfc_replies_free(&batch);
	return -ENOMEM;
}

static void bfnf_asm_reset(struct bfnf_file *f)
{
	kfree(f->asm_entry);
	f->asm_entry = NULL;
	f->asm_next = 0;
}

/*
 * A refused write changes nothing: a packet that does not continue the answer
 * being assembled is refused and that answer stays, so the writer can still
 * send the right packet. Index 0 starts a new answer (replacing the one being
 * assembled) only once its memory is there.
 */
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
		e = kzalloc(struct_size(e, data, (size_t)rec->count * BFNF_PAYLOAD_MAX),
			    GFP_KERNEL);
		if (!e)
			return -ENOMEM;
		bfnf_asm_reset(f);
		e->n_packets = rec->count;
		f->asm_entry = e;
		f->asm_addr = rec->addr;
		f->asm_port = port;
		f->asm_qtype = rec->qtype;
	} else {
		e = f->asm_entry;
		if (!e || rec->index != f->asm_next || rec->count != e->n_packets ||
		    rec->addr != f->asm_addr || port != f->asm_port ||
		    rec->qtype != f->asm_qtype)
			return -EINVAL;
	}
	memcpy(e->data + rec->index * BFNF_PAYLOAD_MAX, rec->payload, rec->length);
	e->len[rec->index] = rec->length;
	e->total_bytes += rec->length;
	f->asm_next = rec->index + 1;
	if (f->asm_next < e->n_packets)
		return 0;

	e->ttl_ms = rec->ttl_ms;
	e->max_stale_ms = rec->max_stale_ms;
	mutex_lock(&f->bn->lock);
	/* under the lock: see bfnf_age_ns() */
	e->stored_ns = ktime_get_ns();
	err = bfnf_entry_publish(f->bn, f->asm_addr, f->asm_port, f->asm_qtype, e);
	mutex_unlock(&f->bn->lock);
	if (err) {
		/* the last packet is refused; the answer waits for a retry of it */
		e->total_bytes -= rec->length;
		f->asm_next = rec->index;
		return err;
	}
	f->asm_entry = NULL;
	f->asm_next = 0;
	return 0;
}

static int bfnf_dispatch(struct bfnf_file *f, const void *buf, size_t len)
{
	const struct bifrost_hdr *hdr = buf;
	struct bfnf_net *bn = f->bn;
	int err;

	err = bfc_check_request(&bfnf_abi, buf, len);
	if (err)
		return err;

	switch (hdr->type) {
	case BFNF_MSG_INFO_REQ:
		return bfc_queue_info(&f->base, (const u64 __percpu *)bn->cnt, BFNF_CNT_MAX);
	case BFNF_MSG_DUMP_REQ:
		return bfnf_do_dump(f);
	case BFNF_MSG_ENTRY_SET:
		return bfnf_do_entry_set(f, buf);
	case BFNF_MSG_ROTATE:
		return bfnf_secret_rotate(bn, NULL, 1);
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

	if (count < sizeof(struct bifrost_hdr)) {
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
	mutex_lock(&f->base.lock);
	err = bfnf_dispatch(f, buf, count);
	mutex_unlock(&f->base.lock);
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
	ssize_t done;
	size_t n;

	mutex_lock(&f->base.lock);
	if (f->base.n_replies) {
		done = bfc_replies_read(&f->base, ubuf, count);
		mutex_unlock(&f->base.lock);
		return done;
	}
	mutex_unlock(&f->base.lock);

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

	poll_wait(file, &f->bn->event_wq, wait);
	return bfc_poll(&f->base, file, wait, bfnf_events_pending(f->bn));
}

static int bfnf_open(struct inode *inode, struct file *file)
{
	struct bfnf_file *f = bfc_file_open_as(struct bfnf_file, inode, file, &bfnf_abi);

	if (IS_ERR(f))
		return PTR_ERR(f);
	f->bn = bfnf_pernet(f->base.net);
	return 0;
}

static int bfnf_release(struct inode *inode, struct file *file)
{
	struct bfnf_file *f = file->private_data;

	kfree(f->asm_entry);
	bfc_file_release(&f->base);
	return 0;
}

BFC_DEFINE_DEVICE(bfnf, "bifrost_nf");
