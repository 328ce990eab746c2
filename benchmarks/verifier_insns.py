"""The verifier's cost of the all-modules XDP object: "processed N insns" per build.

The kernel refuses a program whose verification processes more than 1,000,000
instructions (BPF_COMPLEXITY_LIMIT_INSNS), and how many it processes depends on the
kernel's verifier: 6.1's prunes less than 6.12's or 6.18's. This prints the count
for this tree's object and, side by side, for a git ref's (default main), both built
with every game module compiled in, so a change's growth is seen before a kernel
refuses it. Run as root on the host, and in the guest on each kernel line:

    .venv/bin/python benchmarks/verifier_insns.py --build   # on the host (clang)
    .venv/bin/python benchmarks/verifier_insns.py           # load and count (root)

--build compiles both objects into build/verifier/; a plain run loads what is there
(the guest mounts the tree, so it counts the host's builds). A load the kernel
refuses prints the verifier's last lines and exits non-zero.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from bifrost import codegen
from bifrost.codegen import render_module_config
from bifrost.paths import BUILD_DIR, SOURCE_ROOT
from bifrost.xdp import libbpf

MODULES = ["srcds", "rust", "steam", "ue3"]
PROGRAM = "bifrost_xdp"
LIMIT = 1_000_000
OUT = BUILD_DIR / "verifier"
LOG_STATS = 4  # BPF_LOG_STATS: only the summary lines, not the 1M-line trace
LOG_SIZE = 16 << 20


def _compile(tree: Path, out: Path) -> Path:
    """The all-modules object of the source tree at `tree` (clang, as build.py)."""
    out.mkdir(parents=True, exist_ok=True)
    header = out / "module_config.h"
    header.write_text(render_module_config(MODULES, "benchmarks/verifier_insns.py"))
    argv = ["clang", "-O2", "-g", "-target", "bpf", "-mcpu=v3", "-Wall", "-Werror"]
    argv += ["-I/usr/include/x86_64-linux-gnu", "-I", str(tree / "xdp")]
    argv += ["-include", str(header), "-c", str(tree / "xdp" / "bifrost_xdp.bpf.c")]
    obj = out / "bifrost_xdp.o"
    subprocess.run([*argv, "-o", str(obj)], check=True)
    return obj


def build_all(ref: str) -> None:
    codegen.write(codegen.xdp_outputs())  # this tree's generated headers, current
    _compile(SOURCE_ROOT, OUT / "tree")
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(
            ["git", "-C", str(SOURCE_ROOT), "archive", ref, "xdp"],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        _compile(Path(tmp), OUT / "ref")
    (OUT / "ref" / "REF").write_text(
        subprocess.run(
            ["git", "-C", str(SOURCE_ROOT), "rev-parse", "--short", ref],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )


def processed(obj: Path) -> tuple[int | None, str]:
    """(processed insns, or None if the kernel refused it; the verifier's stats) of PROGRAM."""
    lib = libbpf.lib()
    vp = ctypes.c_void_p
    lib.bpf_object__next_program.restype = vp
    lib.bpf_object__next_program.argtypes = [vp, vp]
    lib.bpf_program__name.restype = ctypes.c_char_p
    lib.bpf_program__name.argtypes = [vp]
    lib.bpf_program__set_autoload.argtypes = [vp, ctypes.c_bool]
    lib.bpf_program__set_log_level.argtypes = [vp, ctypes.c_uint32]
    lib.bpf_program__set_log_buf.argtypes = [vp, ctypes.c_char_p, ctypes.c_size_t]
    buf = ctypes.create_string_buffer(LOG_SIZE)
    loaded = False
    with libbpf.BpfObject(obj, load=False) as o:
        prog = lib.bpf_object__next_program(o._obj, None)
        while prog:
            # Only PROGRAM: the others are a few insns each.
            if lib.bpf_program__name(prog).decode() == PROGRAM:
                lib.bpf_program__set_log_level(prog, LOG_STATS)
                lib.bpf_program__set_log_buf(prog, buf, LOG_SIZE)
            else:
                lib.bpf_program__set_autoload(prog, False)
            prog = lib.bpf_object__next_program(o._obj, prog)
        try:
            o.load()
            loaded = True
        except libbpf.BpfError:
            pass
    log = buf.value.decode(errors="replace")
    counts = re.findall(r"processed (\d+) insns", log)
    return (int(counts[-1]) if loaded and counts else None), log


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", action="store_true", help="compile both objects, then count")
    ap.add_argument("--ref", default="main", help="git ref to compare with (default main)")
    ap.add_argument("objects", nargs="*", type=Path, help="count these objects instead")
    args = ap.parse_args()
    if args.objects:
        for obj in args.objects:
            n, log = processed(obj)
            print(f"{platform.release()}  {obj}: {n if n is not None else 'REFUSED'}")
        return 0
    if args.build:
        build_all(args.ref)
    ref = (OUT / "ref" / "REF").read_text().strip()
    kernel = platform.release()
    status = 0
    counts = {}
    for label, d in ((f"ref {ref}", OUT / "ref"), ("this tree", OUT / "tree")):
        n, log = processed(d / "bifrost_xdp.o")
        counts[label] = n
        if n is None:
            status = 1
            print(f"{kernel}  {label:14} REFUSED; the verifier's last lines:")
            print("\n".join(log.strip().splitlines()[-6:]))
        else:
            print(f"{kernel}  {label:14} processed {n:>9,} insns ({n / LIMIT:.1%} of the limit)")
    a, b = counts.values()
    if a and b:
        print(f"{kernel}  this tree / ref = {b / a:.3f}")
    return status


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("verifier_insns: loading BPF programs needs root")
    sys.exit(main())
