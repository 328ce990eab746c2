"""Live slab objects per allocation stack, from SLUB's own tracking (slub_debug=U).

With `slub_debug=U,<caches>` on the kernel command line (`invoke vm --append ...`),
SLUB records the allocation stack of every object of those caches and
/sys/kernel/debug/slab/<cache>/alloc_traces lists the live objects grouped by
stack: a count line, then the frames, then a blank line. A frame in code that is
loaded prints as `func+0x12/0x40 [module]`; a frame in a module that has since been
unloaded has no symbol any more and prints as its bare address. So once a module
is unloaded, the live objects with such a frame in their stack are the ones its
code allocated and nobody freed: what it leaked (or what still waits for a timer or
RCU), whatever kernel function made the allocation on its behalf.
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SLAB_SYSFS = Path("/sys/kernel/slab")
DEBUGFS = Path("/sys/kernel/debug")
GONE = "<unloaded code>"
_OFFSET = re.compile(r"\+0x[0-9a-f]+/0x[0-9a-f]+")
_BARE = re.compile(r"^0x[0-9a-f]+$")

Stack = tuple[str, ...]


def tracked_caches() -> list[str]:
    """The caches whose allocation stacks SLUB records (store_user), aliases left out."""
    return sorted(
        d.name
        for d in SLAB_SYSFS.iterdir()
        if not d.is_symlink() and (d / "store_user").read_text().strip() == "1"
    )


def _frame(text: str) -> str:
    """A frame without its offsets (they differ between builds and loads); a frame in
    unloaded code (a bare address) as GONE."""
    text = text.strip()
    return GONE if _BARE.match(text) else _OFFSET.sub("", text)


def parse(text: str) -> Counter[Stack]:
    """alloc_traces text -> live objects per stack (the allocation site, then the frames)."""
    out: Counter[Stack] = Counter()
    for block in text.split("\n\n"):
        lines = [line for line in block.splitlines() if line.strip()]
        if not lines:
            continue
        count, site = lines[0].split()[:2]
        if not count.isdigit():  # "No data": no live object
            continue
        out[(_frame(site), *(_frame(line) for line in lines[1:]))] += int(count)
    return out


@contextmanager
def debugfs() -> Iterator[Path]:
    """debugfs's slab directory, mounted for the duration if it was not."""
    mounted = (DEBUGFS / "slab").is_dir()
    if not mounted:
        subprocess.run(["mount", "-t", "debugfs", "debugfs", str(DEBUGFS)], check=True)
    try:
        yield DEBUGFS / "slab"
    finally:
        if not mounted:
            subprocess.run(["umount", str(DEBUGFS)], check=True)


def snapshot(caches: list[str]) -> dict[str, Counter[Stack]]:
    """Live objects per cache and allocation stack, for caches (all tracked)."""
    with debugfs() as slab:
        return {c: parse((slab / c / "alloc_traces").read_text()) for c in caches}


def of_unloaded_code(snap: dict[str, Counter[Stack]]) -> dict[str, Counter[Stack]]:
    """Only the objects with a frame in unloaded code (see the module's docstring)."""
    out = {}
    for cache, stacks in snap.items():
        gone = Counter({s: n for s, n in stacks.items() if GONE in s})
        if gone:
            out[cache] = gone
    return out


def grown(
    before: dict[str, Counter[Stack]], after: dict[str, Counter[Stack]]
) -> dict[str, Counter[Stack]]:
    """Per cache, the stacks with more live objects after than before, by how many."""
    out = {}
    for cache, stacks in after.items():
        more = stacks - before.get(cache, Counter())  # Counter subtraction keeps n > 0
        if more:
            out[cache] = more
    return out


def render(objs: dict[str, Counter[Stack]], top: int = 5, depth: int = 14) -> str:
    """The largest stacks of each cache, for a failure message."""
    lines = []
    for cache, stacks in sorted(objs.items()):
        lines.append(f"{cache}: {sum(stacks.values())} objects")
        for stack, n in stacks.most_common(top):
            lines.append(f"  {n} at {stack[0]}")
            lines.extend(f"      {frame}" for frame in stack[1 : 1 + depth])
    return "\n".join(lines)
