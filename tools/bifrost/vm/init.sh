#!/bin/busybox sh
# shellcheck shell=dash
# /init of the test VM's initramfs: mount the host root read-only over 9p, the
# project's work tree read-write at the same path, then run the requested script.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
while read -r m; do
	insmod "/lib/modules/$m" || echo "bifrost-vm: insmod $m failed"
done < /lib/modules/load.order
arg() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
WORK=$(arg bifrost.work)
SCRIPT=$(arg bifrost.script)
R=/newroot
if ! mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot $R; then
	echo "bifrost-vm: 9p root mount failed"
	poweroff -f
fi
mount -t proc proc $R/proc
mount -t sysfs sys $R/sys
mount -t devtmpfs dev $R/dev
for d in tmp run var/tmp var/log var/lib/dkms; do
	mount -t tmpfs tmpfs "$R/$d" 2>/dev/null
done
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts devpts $R/dev/pts
mount -t tmpfs shm $R/dev/shm
mount -t debugfs none $R/sys/kernel/debug 2>/dev/null
mount -t bpf bpf $R/sys/fs/bpf 2>/dev/null
mount -t cgroup2 none $R/sys/fs/cgroup 2>/dev/null
# A tree under a path that is tmpfs in the guest (/tmp/...) needs its mount point.
mkdir -p "$R$WORK" 2>/dev/null
if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 work "$R$WORK"; then
	echo "bifrost-vm: work share mount failed"
	poweroff -f
fi
# The host's boot watchdog (runner.BOOT_TIMEOUT) waits for this file.
: >"$R$SCRIPT.started"
echo "=== BIFROST GUEST START $(cut -d' ' -f1 /proc/uptime) ==="
chroot $R /bin/sh -c "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp; cd '$WORK' && sh '$SCRIPT'"
rc=$?
echo "=== BIFROST GUEST EXIT rc=$rc uptime=$(cut -d' ' -f1 /proc/uptime) ==="
echo $rc > "$R$SCRIPT.rc"
sync
umount "$R$WORK" 2>/dev/null
poweroff -f
