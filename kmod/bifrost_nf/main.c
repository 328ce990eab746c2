// SPDX-License-Identifier: GPL-2.0
/*
 * bifrost_nf: answers A2S server queries (INFO, PLAYER, RULES) for configured
 * services from a kernel cache, challenge first, so a POP never reflects more
 * bytes to an unverified source than it received. A user-space daemon fills
 * the cache through /dev/bifrost_nf. All state is per network namespace.
 */
#include <linux/module.h>
#include <linux/slab.h>
#include <net/netns/generic.h>

#include "bfnf.h"

unsigned int bfnf_net_id __read_mostly;

static int __net_init bfnf_net_init(struct net *net)
{
	struct bfnf_net *bn = bfnf_pernet(net);
	int err;

	bn->net = net;
	mutex_init(&bn->lock);
	spin_lock_init(&bn->secret_lock);
	init_waitqueue_head(&bn->event_wq);
	bn->rate_pps = BFNF_DEFAULT_RATE_PPS;
	bn->rate_burst = BFNF_DEFAULT_RATE_BURST;
	bn->rotate_s = BFNF_DEFAULT_ROTATE_S;
	bn->cnt = alloc_percpu(struct bfnf_counters);
	if (!bn->cnt)
		return -ENOMEM;
	err = bfnf_secret_init(bn);
	if (err)
		goto err_free_counters;
	return 0;

err_free_counters:
	free_percpu(bn->cnt);
	return err;
}

/*
 * Unhook first: a CPU may still be inside bfnf_hook() after
 * nf_unregister_net_hook() returns. The netns core calls synchronize_rcu()
 * between every .pre_exit and every .exit (netns dismantle and module unload
 * alike), so by .exit no packet can see the state it frees.
 */
static void __net_exit bfnf_net_pre_exit(struct net *net)
{
	struct bfnf_net *bn = bfnf_pernet(net);

	/* No file holds this netns (each holds a reference), so no writer runs. */
	bfnf_hook_unregister(bn);
}

static void __net_exit bfnf_net_exit(struct net *net)
{
	struct bfnf_net *bn = bfnf_pernet(net);

	bfnf_services_free_all(bn);
	bfnf_rl_free(bn);
	bfnf_secret_free(bn);
	free_percpu(bn->cnt);
}

static struct pernet_operations bfnf_net_ops = {
	.init = bfnf_net_init,
	.pre_exit = bfnf_net_pre_exit,
	.exit = bfnf_net_exit,
	.id = &bfnf_net_id,
	.size = sizeof(struct bfnf_net),
};

static int __init bfnf_init(void)
{
	int err;

	err = register_pernet_subsys(&bfnf_net_ops);
	if (err)
		return err;
	err = bfnf_chardev_init();
	if (err)
		goto err_unregister_pernet;
	pr_info("loaded, version %s, ABI %d\n", BIFROST_VERSION, BFNF_ABI_VERSION);
	return 0;

err_unregister_pernet:
	unregister_pernet_subsys(&bfnf_net_ops);
	return err;
}

static void __exit bfnf_exit(void)
{
	bfnf_chardev_exit();
	unregister_pernet_subsys(&bfnf_net_ops);
	/* entries and secrets freed with kfree_rcu must be gone before the code */
	rcu_barrier();
	pr_info("unloaded\n");
}

module_init(bfnf_init);
module_exit(bfnf_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Bifrost: A2S query cache answered from netfilter");
MODULE_VERSION(BIFROST_VERSION);
