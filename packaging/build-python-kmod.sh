#!/usr/bin/env bash
# Build python-kmod 0.9.2 from its sdist into the venv given as $1.
# The published sdist does not build on Python 3.11 (its setup.py assigns
# Extension.__dict__ and needs the dead setuptools_cython); the patch next to this
# script makes it use setuptools' Extension and Cython's cythonize instead.
# The sdist is pinned by sha256, like everything in requirements.lock.
set -euo pipefail
venv=${1:?usage: build-python-kmod.sh VENV}
here=$(cd "$(dirname "$0")" && pwd)
url=https://files.pythonhosted.org/packages/0c/b0/29b56de484e132366eb83e20c8847a72ea959e44360a47bffbdd2ad7c698/kmod-0.9.2.tar.gz
sha256=4ddc73391a9937690f4ca5d8ededf679fae8e212d057fe40cfbb76fc63b5b03e

if "$venv/bin/python" -c 'import kmod; kmod.Kmod' 2>/dev/null; then
	exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
curl -fsSL -o "$work/kmod-0.9.2.tar.gz" "$url"
echo "$sha256  $work/kmod-0.9.2.tar.gz" | sha256sum -c --quiet
tar -C "$work" -xzf "$work/kmod-0.9.2.tar.gz"
patch -s -d "$work/kmod-0.9.2" -p1 < "$here/kmod-0.9.2-py311.patch"
"$venv/bin/pip" install -q --no-deps --no-build-isolation "$work/kmod-0.9.2"
