/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The control-device plumbing both Bifrost modules share: a misc device whose
 * every open() is bound to the opener's netns (as drivers/net/tun.c does), one
 * record per write(), replies queued per file and read() back whole, in order.
 *
 * DKMS builds each module from its own /usr/src/<module>-<version> tree, so
 * this header is copied into both trees (tools/bifrost/dkms.py stages it);
 * hence static inline functions, not a third module.
 *
 * Prefix bfc_ ("Bifrost chardev"): short, as WireGuard's wg_, because every
 * symbol of a module carries it.
 */
#ifndef _BIFROST_CHARDEV_H
#define _BIFROST_CHARDEV_H

#include <linux/capability.h>
#include <linux/fs.h>
#include <linux/list.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/nsproxy.h>
#include <linux/percpu.h>
#include <linux/poll.h>
#include <linux/sched.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/wait.h>
#include <net/net_namespace.h>

#include "bifrost_uapi.h"
#include "bifrost_version.h"

/* What differs between the two devices. */
struct bfc_abi {
	u32 magic;
	u16 version;
	/* errno of a read() whose buffer cannot hold the next reply */
	int too_small_err;
	/* unread replies a file may hold: a writer that never reads gets ENOBUFS */
	unsigned int max_replies;
	/* size of the request of that type; 0 for a type that is never written */
	size_t (*request_size)(u16 type);
};

/*
 * A device's struct bfc_abi, from its uapi header's P_MAGIC and P_ABI_VERSION;
 * its P_CNT_MAX counters must fit the INFO reply.
 */
#define BFC_DEFINE_ABI(name, P, too_small, max, request_size_fn)		\
	static_assert(P##_CNT_MAX <=						\
		      ARRAY_SIZE(((struct bifrost_info_reply *)0)->counters));	\
	static const struct bfc_abi name = {					\
		.magic = P##_MAGIC,						\
		.version = P##_ABI_VERSION,					\
		.too_small_err = (too_small),					\
		.max_replies = (max),						\
		.request_size = (request_size_fn),				\
	}

/*
 * Check a written record's header: -EPROTO for another ABI version, -EINVAL
 * for a wrong magic, a type that is never written, a length that is not the
 * type's size or the write's, or flags set. Every write gets this first.
 */
static inline int bfc_check_request(const struct bfc_abi *abi, const void *buf, size_t len)
{
	const struct bifrost_hdr *hdr = buf;
	size_t want;

	if (len < sizeof(*hdr) || hdr->magic != abi->magic)
		return -EINVAL;
	if (hdr->version != abi->version)
		return -EPROTO;
	want = abi->request_size(hdr->type);
	if (!want || hdr->length != len || len != want || hdr->flags)
		return -EINVAL;
	return 0;
}

/* The per-open state both devices keep; each embeds it as its first member, base. */
struct bfc_file {
	const struct bfc_abi *abi;
	struct net *net;
	/* protects replies and whatever the embedding struct says */
	struct mutex lock;
	struct list_head replies;
	unsigned int n_replies;
	/* poll() waits here for replies queued by another thread's write() */
	wait_queue_head_t wq;
};

struct bfc_reply {
	struct list_head list;
	u32 len;
	u8 data[];
};

static inline void bfc_hdr_fill(const struct bfc_abi *abi, void *rec, u16 type, u32 len)
{
	struct bifrost_hdr *hdr = rec;

	hdr->magic = abi->magic;
	hdr->version = abi->version;
	hdr->type = type;
	hdr->length = len;
	hdr->flags = 0;
}

/*
 * Open: only a netns's administrator controls its tables. The file mode
 * (0600) alone would let any root-owned process without CAP_NET_ADMIN in
 * (for example a capability-dropped daemon) change the data path.
 *
 * Allocates the device's per-open struct (size bytes, struct bfc_file first),
 * binds it to the opener's netns and makes it the file's private data.
 */
static inline void *bfc_file_open(struct inode *inode, struct file *file, size_t size,
				  const struct bfc_abi *abi)
{
	struct net *net = current->nsproxy->net_ns;
	struct bfc_file *f;

	if (!ns_capable(net->user_ns, CAP_NET_ADMIN))
		return ERR_PTR(-EPERM);
	f = kvzalloc(size, GFP_KERNEL);
	if (!f)
		return ERR_PTR(-ENOMEM);
	f->abi = abi;
	f->net = get_net(net);
	mutex_init(&f->lock);
	INIT_LIST_HEAD(&f->replies);
	init_waitqueue_head(&f->wq);
	file->private_data = f;
	stream_open(inode, file);
	return f;
}

static inline void bfc_replies_free(struct list_head *list)
{
	struct bfc_reply *r, *tmp;

	list_for_each_entry_safe(r, tmp, list, list) {
		list_del(&r->list);
		kfree(r);
	}
}

/* bfc_file_open() for a device's per-open type, checking that base comes first. */
#define bfc_file_open_as(type, inode, file, abi)				\
	({									\
		static_assert(offsetof(type, base) == 0);			\
		(type *)bfc_file_open(inode, file, sizeof(type), abi);		\
	})

/* Frees what bfc_file_open() made; the device frees its own parts first. */
static inline void bfc_file_release(struct bfc_file *f)
{
	bfc_replies_free(&f->replies);
	put_net(f->net);
	mutex_destroy(&f->lock);
	kvfree(f);
}

/* A zeroed reply of len bytes, header filled, added to batch (not yet queued). */
static inline void *bfc_reply_alloc(struct bfc_file *f, struct list_head *batch, u16 type,
				    u32 len)
{
	struct bfc_reply *r = kzalloc(sizeof(*r) + len, GFP_KERNEL);

	if (!r)
		return NULL;
	r->len = len;
	bfc_hdr_fill(f->abi, r->data, type, len);
	list_add_tail(&r->list, batch);
	return r->data;
}

/*
 * Queue a batch of n replies whole, or none of them (-ENOBUFS frees the
 * batch). Caller holds f->lock.
 */
static inline int bfc_replies_queue(struct bfc_file *f, struct list_head *batch, unsigned int n)
{
	lockdep_assert_held(&f->lock);
	if (f->n_replies + n > f->abi->max_replies) {
		bfc_replies_free(batch);
		return -ENOBUFS;
	}
	list_splice_tail_init(batch, &f->replies);
	WRITE_ONCE(f->n_replies, f->n_replies + n);
	wake_up_interruptible(&f->wq);
	return 0;
}

/*
 * Copy as many whole replies as fit in count bytes; *done is set to the bytes
 * copied. Returns 0, -EFAULT, or the ABI's too-small errno when not even the
 * first reply fits. Caller holds f->lock and has checked n_replies.
 */
static inline ssize_t bfc_replies_read(struct bfc_file *f, char __user *ubuf, size_t count)
{
	struct bfc_reply *r, *tmp;
	size_t done = 0;

	lockdep_assert_held(&f->lock);
	list_for_each_entry_safe(r, tmp, &f->replies, list) {
		if (r->len > count - done)
			break;
		if (copy_to_user(ubuf + done, r->data, r->len))
			return done ? done : -EFAULT;
		done += r->len;
		list_del(&r->list);
		kfree(r);
		WRITE_ONCE(f->n_replies, f->n_replies - 1);
	}
	return done ? done : f->abi->too_small_err;
}

/* Sum n per-CPU u64 counters (an array of n u64 per CPU) into out[]. */
static inline void bfc_counters_sum(const u64 __percpu *base, unsigned int n, u64 *out)
{
	unsigned int i;
	int cpu;

	memset(out, 0, sizeof(*out) * n);
	for_each_possible_cpu(cpu) {
		const u64 *c = per_cpu_ptr(base, cpu);

		for (i = 0; i < n; i++)
			out[i] += READ_ONCE(c[i]);
	}
}

/* Queue the INFO reply: versions, the bound netns and every counter. */
static inline int bfc_queue_info(struct bfc_file *f, const u64 __percpu *counters,
				 unsigned int n_counters)
{
	struct bifrost_info_reply *rep;
	LIST_HEAD(batch);

	rep = bfc_reply_alloc(f, &batch, BIFROST_MSG_INFO_REPLY, sizeof(*rep));
	if (!rep)
		return -ENOMEM;
	rep->abi_version = f->abi->version;
	rep->n_counters = n_counters;
	rep->netns_inum = f->net->ns.inum;
	strscpy(rep->module_version, BIFROST_VERSION, sizeof(rep->module_version));
	bfc_counters_sum(counters, n_counters, rep->counters);
	return bfc_replies_queue(f, &batch, 1);
}

/* poll(): readable while replies are queued; extra is the device's own reason. */
static inline __poll_t bfc_poll(struct bfc_file *f, struct file *file, poll_table *wait,
				bool extra)
{
	__poll_t mask = EPOLLOUT | EPOLLWRNORM;

	poll_wait(file, &f->wq, wait);
	if (READ_ONCE(f->n_replies) || extra)
		mask |= EPOLLIN | EPOLLRDNORM;
	return mask;
}

/*
 * The misc device, root-only node, and its init/exit, for a device whose
 * handlers are named <prefix>_open, _release, _read, _write and _poll.
 */
#define BFC_DEFINE_DEVICE(prefix, devname)					\
	static const struct file_operations prefix##_fops = {			\
		.owner = THIS_MODULE,						\
		.open = prefix##_open,						\
		.release = prefix##_release,					\
		.read = prefix##_read,						\
		.write = prefix##_write,					\
		.poll = prefix##_poll,						\
	};									\
	static struct miscdevice prefix##_misc = {				\
		.minor = MISC_DYNAMIC_MINOR,					\
		.name = devname,						\
		.fops = &prefix##_fops,						\
		.mode = 0600,							\
	};									\
	int prefix##_chardev_init(void)						\
	{									\
		return misc_register(&prefix##_misc);				\
	}									\
	void prefix##_chardev_exit(void)					\
	{									\
		misc_deregister(&prefix##_misc);				\
	}

#endif /* _BIFROST_CHARDEV_H */
