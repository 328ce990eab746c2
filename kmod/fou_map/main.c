// SPDX-License-Identifier: GPL-2.0
/*
 * fou_map: on a game-server machine, learn client -> POP from incoming FOU
 * packets and send each reply back through the POP its client came in by.
 *
 * This file: module init/exit and the per-netns state.
 */
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/ktime.h>
#include <net/net_namespace.h>
#include <net/netns/generic.h>

#include "fm.h"

unsigned int fm_net_id __read_mostly;
struct kmem_cache *fm_entry_cache __read_mostly;

/*
 * Swap in a new config; entries stay, the table shrinks if max went down.
 * The hooks are registered only while FOU ports are configured, so a netns
 * that does not use fou_map (the POPs, every container without a game
 * server) pays nothing for it on its packet path.
 *
 * All of it under cfg_lock, and only from the caller's copy of the values:
 * once another writer swaps the config, ours may be freed.
 */
int fm_config_set(struct fm_net *fn, const struct fm_cfg *newcfg)
{
	u32 max_entries = newcfg->max_entries;
	struct fm_cfg *cfg, *old;
	int err = 0;

	cfg = kmemdup(newcfg, sizeof(*cfg), GFP_KERNEL);
	if (!cfg)
		return -ENOMEM;
	mutex_lock(&fn->cfg_lock);
	if (newcfg->n_ports && !fn->hooks_on) {
		err = fm_hooks_register(fn->net);
		if (err) {
			mutex_unlock(&fn->cfg_lock);
			kfree(cfg);
			return err;
		}
		fn->hooks_on = true;
	}
	spin_lock_bh(&fn->lock);
	old = rcu_dereference_protected(fn->cfg, lockdep_is_held(&fn->lock));
	rcu_assign_pointer(fn->cfg, cfg);
	spin_unlock_bh(&fn->lock);
	if (!newcfg->n_ports && fn->hooks_on) {
		/* Packets may still be in the hooks; they only read fn state. */
		fm_hooks_unregister(fn->net);
		fn->hooks_on = false;
	}
	if (old)
		kfree_rcu(old, rcu);
	/* In process context, a batch per lock hold: learning evicts little. */
	fm_shrink_to(fn, max_entries);
	mutex_unlock(&fn->cfg_lock);
	/* A shorter timeout must take effect now, not after the old period. */
	fm_gc_schedule(fn, 0);
	return 0;
}

/*
 * Swap in a whole new key set (n == 0: auth off). A packet in a hook reads
 * the pointer once, so it checks and appends with one set throughout; the
 * old set is freed after every such reader is done.
 */
int fm_keys_set(struct fm_net *fn, const u64 *keys, u32 n)
{
	struct fm_keys *new = NULL, *old;

	if (n) {
		new = kzalloc(sizeof(*new), GFP_KERNEL);
		if (!new)
			return -ENOMEM;
		new->n = n;
		memcpy(new->key, keys, n * sizeof(*keys));
	}
	spin_lock_bh(&fn->lock);
	old = rcu_replace_pointer(fn->keys, new, lockdep_is_held(&fn->lock));
	spin_unlock_bh(&fn->lock);
	if (old)
		kfree_rcu(old, rcu);
	return 0;
}

static int __net_init fm_net_init(struct net *net)
{
	struct fm_net *fn = fm_pernet(net);
	struct fm_cfg *cfg;
	int err;

	fn->net = net;
	spin_lock_init(&fn->lock);
	mutex_init(&fn->cfg_lock);
	INIT_LIST_HEAD(&fn->lru);
	INIT_LIST_HEAD(&fn->statics);
	fn->created_ns = ktime_get_real_ns();

	fn->counters = alloc_percpu(struct fm_counters);
	if (!fn->counters)
		return -ENOMEM;

	cfg = kzalloc(sizeof(*cfg), GFP_KERNEL);
	if (!cfg) {
		err = -ENOMEM;
		goto err_free_counters;
	}
	cfg->idle_timeout_ms = FM_DEFAULT_IDLE_TIMEOUT_MS;
	cfg->max_entries = FM_DEFAULT_MAX_ENTRIES;
	cfg->miss_policy = FM_MISS_PASS;
	RCU_INIT_POINTER(fn->cfg, cfg);

	err = fm_table_init(fn);
	if (err)
		goto err_free_cfg;
	return 0;

err_free_cfg:
	kfree(cfg);
	RCU_INIT_POINTER(fn->cfg, NULL);
err_free_counters:
	free_percpu(fn->counters);
	return err;
}

/*
 * nf_unregister_net_hooks() does not wait for CPUs still inside a hook: it
 * only unpublishes it. Unhook in .pre_exit; the netns core runs
 * synchronize_rcu() before any .exit (on netns dismantle and on module
 * unload alike), so by fm_net_exit() no packet can reach the table.
 */
static void __net_exit fm_net_pre_exit(struct net *net)
{
	struct fm_net *fn = fm_pernet(net);

	/* No file holds the netns (each holds a reference): no config writer. */
	if (fn->hooks_on)
		fm_hooks_unregister(net);
	fn->hooks_on = false;
}

static void __net_exit fm_net_exit(struct net *net)
{
	struct fm_net *fn = fm_pernet(net);

	fm_table_exit(fn);
	kfree(rcu_dereference_protected(fn->keys, true));
	kfree(rcu_dereference_protected(fn->cfg, true));
	free_percpu(fn->counters);
}

static struct pernet_operations fm_net_ops = {
	.init = fm_net_init,
	.pre_exit = fm_net_pre_exit,
	.exit = fm_net_exit,
	.id = &fm_net_id,
	.size = sizeof(struct fm_net),
};

static int __init fm_init(void)
{
	int err;

	fm_entry_cache = kmem_cache_create("fou_map_entry", sizeof(struct fm_map_entry),
					   0, 0, NULL);
	if (!fm_entry_cache)
		return -ENOMEM;

	err = register_pernet_subsys(&fm_net_ops);
	if (err)
		goto err_destroy_cache;

	err = fm_chardev_init();
	if (err)
		goto err_unregister_pernet;

	pr_info("loaded, version %s, ABI %d, entry %u bytes\n", BIFROST_VERSION,
		FM_ABI_VERSION, kmem_cache_size(fm_entry_cache));
	return 0;

err_unregister_pernet:
	unregister_pernet_subsys(&fm_net_ops);
err_destroy_cache:
	kmem_cache_destroy(fm_entry_cache);
	return err;
}

static void __exit fm_exit(void)
{
	fm_chardev_exit();
	unregister_pernet_subsys(&fm_net_ops);
	/* Entries freed by call_rcu() must be gone before their cache is. */
	rcu_barrier();
	kmem_cache_destroy(fm_entry_cache);
	pr_info("unloaded\n");
}

module_init(fm_init);
module_exit(fm_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("FOU return path: send replies back through the client's POP");
MODULE_VERSION(BIFROST_VERSION);
