// SPDX-License-Identifier: GPL-2.0
/*
 * Stateless A2S challenges: siphash of (client address, client port, secret
 * generation) under the generation's key. The generation advances every
 * rotate_s seconds (checked lazily on the packet path, so no timer is needed)
 * or on ROTATE; the current and the previous generation are accepted, so a
 * challenge lives between rotate_s and 2 * rotate_s.
 */
#include <linux/random.h>
#include <linux/slab.h>

#include "bfnf.h"

int bfnf_secret_init(struct bfnf_net *bn)
{
	struct bfnf_secret *s = kzalloc(sizeof(*s), GFP_KERNEL);

	if (!s)
		return -ENOMEM;
	get_random_bytes(s->key, sizeof(s->key));
	s->gen = 1;
	s->rotated_ns = ktime_get_ns();
	RCU_INIT_POINTER(bn->secret, s);
	return 0;
}

void bfnf_secret_free(struct bfnf_net *bn)
{
	kfree(rcu_dereference_protected(bn->secret, true));
	RCU_INIT_POINTER(bn->secret, NULL);
}

/*
 * Advance the generation `times` times (2 or more forgets every old key).
 * `seen` is the secret the caller found too old: when another CPU rotated it
 * meanwhile, nothing is done. NULL forces the rotation (ROTATE record), which
 * then fails with -ENOMEM rather than report a rotation that did not happen.
 * The new secret is stamped with the time read under the lock, so stamps
 * only grow; readers holding an older `now` see an age of 0 (bfnf_age_ns()).
 */
int bfnf_secret_rotate(struct bfnf_net *bn, const struct bfnf_secret *seen, unsigned int times)
{
	struct bfnf_secret *old, *s;
	unsigned int i;

	s = kmalloc(sizeof(*s), seen ? GFP_ATOMIC : GFP_KERNEL);
	if (!s)
		return -ENOMEM;
	spin_lock_bh(&bn->secret_lock);
	old = rcu_dereference_protected(bn->secret, lockdep_is_held(&bn->secret_lock));
	if (seen && old != seen) {
		spin_unlock_bh(&bn->secret_lock);
		kfree(s);
		return 0;
	}
	*s = *old;
	for (i = 0; i < min(times, 2U); i++) {
		s->gen++;
		get_random_bytes(&s->key[s->gen & 1], sizeof(s->key[0]));
	}
	s->gen += times - min(times, 2U);
	s->rotated_ns = ktime_get_ns();
	rcu_assign_pointer(bn->secret, s);
	spin_unlock_bh(&bn->secret_lock);
	this_cpu_add(bn->cnt->c[BFNF_CNT_ROTATIONS], times);
	kfree_rcu(old, rcu);
	return 0;
}

static u32 bfnf_challenge_gen(const struct bfnf_secret *s, u32 gen, __be32 addr, __be16 port)
{
	u32 c = (u32)siphash_3u32((__force u32)addr, (__force u32)port, gen, &s->key[gen & 1]);

	/* FF FF FF FF and 00 00 00 00 mean "send me a challenge" on the wire */
	if (c == 0 || c == U32_MAX)
		c = 0x5a5a5a5a;
	return c;
}

/* Rotate when the secret has outlived rotate_s; caller holds rcu_read_lock. */
static const struct bfnf_secret *bfnf_secret_current(struct bfnf_net *bn, u64 now)
{
	const struct bfnf_secret *s = rcu_dereference(bn->secret);
	u64 life = (u64)READ_ONCE(bn->rotate_s) * NSEC_PER_SEC;
	u64 age = bfnf_age_ns(now, s->rotated_ns);

	if (unlikely(age >= life)) {
		u64 n = div64_u64(age, life);

		/* on -ENOMEM the old key serves on; the next packet tries again */
		bfnf_secret_rotate(bn, s, n > 2 ? 2 : (unsigned int)n);
		s = rcu_dereference(bn->secret);
	}
	return s;
}

u32 bfnf_challenge_make(struct bfnf_net *bn, __be32 addr, __be16 port, u64 now)
{
	const struct bfnf_secret *s = bfnf_secret_current(bn, now);

	return bfnf_challenge_gen(s, s->gen, addr, port);
}

bool bfnf_challenge_check(struct bfnf_net *bn, __be32 addr, __be16 port, u32 chal, u64 now)
{
	const struct bfnf_secret *s = bfnf_secret_current(bn, now);

	return chal == bfnf_challenge_gen(s, s->gen, addr, port) ||
	       chal == bfnf_challenge_gen(s, s->gen - 1, addr, port);
}
