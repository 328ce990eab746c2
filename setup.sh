#!/usr/bin/env bash
# Set up a fresh Debian 12 machine for Bifrost (as root) and run one job.
#   ./setup.sh lab    boot the test VM and bring up the POP + game-server lab
#   ./setup.sh test   run the whole test suite (unit, bpf, kernel on 6.1 and 6.12)
#   ./setup.sh deps   only install what is needed
# Every step is idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")"
here=$PWD

job=${1:-deps}
case "$job" in lab|test|deps) ;; *) echo "usage: $0 lab|test|deps" >&2; exit 2 ;; esac
if [ "$(id -u)" -ne 0 ]; then
	echo "setup.sh must run as root (it installs packages and kernels): sudo $0 $job" >&2
	exit 1
fi

# shellcheck source=packaging/kernels.env
. packaging/kernels.env

apt_packages=(
	"linux-image-$KERNEL_61" "linux-headers-$KERNEL_61"
	"linux-image-$KERNEL_612" "linux-headers-$KERNEL_612"
	dkms qemu-system-x86 busybox-static clang llvm libbpf-dev bpftool
	iproute2 nftables libkmod-dev python3-venv python3-dev gcc make cpio kmod
	xz-utils zstd file shellcheck tcpdump iputils-ping udev systemd curl
	openssh-server
)
missing=()
for p in "${apt_packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "setup: installing ${missing[*]}"
	apt-get update -qq
	# INITRD=No: the test VM boots with its own tiny initramfs, so the kernel
	# postinst need not spend ~20 s per kernel on update-initramfs.
	INITRD=No DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

venv=$here/.venv
if [ ! -x "$venv/bin/python" ]; then
	/usr/bin/python3 -m venv "$venv"
fi
stamp=$venv/.bifrost-deps
want=$(cat requirements.lock packaging/kmod-0.9.2-py311.patch pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
	"$venv/bin/pip" install -q --require-hashes -r requirements.lock
	packaging/build-python-kmod.sh "$venv"
	"$venv/bin/pip" install -q --no-deps --no-build-isolation -e .
	echo "$want" > "$stamp"
fi

case "$job" in
lab) exec "$venv/bin/invoke" lab ;;
test) exec "$venv/bin/invoke" test ;;
deps) echo "setup: done" ;;
esac
