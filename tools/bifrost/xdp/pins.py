"""The pin directory of one attachment: its lock, and loading an object that keeps its maps.

<pin_dir>/<iface>/ holds the maps (by name), `prog` (the program), `link` (the
bpf_link that attaches it: whoever holds the link owns the attachment) and the
neighbour record. A newly built object reuses every pinned map whose kernel
definition equals the object's (type, key and value sizes, max entries,
flags), so restarts and upgrades keep the validated clients, rate buckets,
next hops and counters. A map whose layout changed is refilled from the
config when the config owns it; a state map is refused unless the operator
says how to migrate it (reset: start empty; copy: copy the entries that fit).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bifrost.xdp import libbpf, maps
from bifrost.xdp.libbpf import BpfObject, Map

log = logging.getLogger(__name__)

MIGRATIONS = ("reset", "copy")
CONFIG_GROUP = (*maps.CONFIG_MAPS, "config_gen")


class LayoutChanged(RuntimeError):
    """The new object's state maps differ from the pinned ones and no migration was given."""


@contextmanager
def locked(base: Path) -> Iterator[None]:
    """flock(2) on the pin base directory: one attach/apply/upgrade/detach at a time
    (a SIGHUP reload of the service and a manual `bifrost xdp apply` wait for each other)."""
    base.mkdir(parents=True, exist_ok=True)
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("%s: another bifrost xdp command holds the lock; waiting", base)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def replace_pin(fd: int, path: Path) -> None:
    """Pin fd at path, replacing what is there in one rename (bpffs names cannot hold '.')."""
    tmp = path.with_name(f"new-{path.name}")
    if tmp.exists():
        tmp.unlink()
    libbpf.pin(fd, str(tmp))
    os.rename(tmp, path)


def pinned_def(path: Path) -> libbpf.MapDef | None:
    if not path.exists():
        return None
    fd = libbpf.get_pinned(str(path))
    try:
        return libbpf.map_info(fd)
    finally:
        os.close(fd)


@dataclass
class Loaded:
    """An object loaded against a pin dir: which maps it shares with the pins."""

    obj: BpfObject
    reused: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)  # new maps: pinned after the swap
    copied: dict[str, int] = field(default_factory=dict)  # name -> entries copied over


def parse_migrations(items: list[str] | None) -> dict[str, str]:
    """["game_clients=reset", ...] -> {name: how}; a clear error for anything else."""
    out = {}
    for item in items or []:
        name, _, how = item.partition("=")
        if how not in MIGRATIONS or name not in maps.MAP_SPECS:
            raise ValueError(
                f"--migrate {item!r}: expected MAP=HOW with HOW one of {', '.join(MIGRATIONS)} "
                f"and MAP one of {', '.join(sorted(maps.MAP_SPECS))}"
            )
        out[name] = how
    return out


def load_reusing(obj_path: Path, pdir: Path, migrate: dict[str, str] | None = None) -> Loaded:
    """Open obj_path, hand it every pinned map it can share, load it, copy what was asked."""
    migrate = migrate or {}
    bo = BpfObject(obj_path, load=False)
    res = Loaded(bo)
    copy_from: dict[str, int] = {}
    try:
        problems = []
        defs = bo.map_defs()
        pinned = {name: pinned_def(pdir / name) for name in defs}
        diffs = {n: d.differences(defs[n]) for n, d in pinned.items() if d is not None}
        # The config maps and config_gen go together: the old program must keep reading
        # a complete set until the swap, so one changed layout makes the new object
        # get all of them afresh (filled from the config before the swap).
        group = [n for n in defs if n in CONFIG_GROUP]
        split = any(pinned[n] is None or diffs[n] for n in group)
        for name, want in defs.items():
            have = pinned[name]
            if have is None or (split and name in CONFIG_GROUP):
                res.fresh.append(name)
                continue
            diff = diffs[name]
            if not diff:
                fd = libbpf.get_pinned(str(pdir / name))
                try:
                    bo.reuse(name, fd)  # libbpf keeps its own dup
                finally:
                    os.close(fd)
                res.reused.append(name)
                continue
            res.fresh.append(name)
            how = migrate.get(name)
            if name in maps.CONFIG_MAPS or how == "reset":
                log.info("map %s: new layout (%s), starts empty", name, "; ".join(diff))
            elif how == "copy":
                copy_from[name] = libbpf.get_pinned(str(pdir / name))
            else:
                problems.append(f"{name} ({'; '.join(diff)})")
        if problems:
            raise LayoutChanged(
                f"the new object's state maps differ from the pinned ones in {pdir}: "
                f"{', '.join(problems)}; the running program is left as it is. Say how to "
                "migrate each: --migrate MAP=reset (start it empty, its state is lost) or "
                "--migrate MAP=copy (copy the entries that fit)"
            )
        bo.load()
        fds = bo.map_fds()
        for name, old_fd in copy_from.items():
            res.copied[name] = copy_entries(old_fd, fds[name], name)
    except BaseException:
        bo.close()
        raise
    finally:
        for fd in copy_from.values():
            os.close(fd)
    return res


def copy_entries(old_fd: int, new_fd: int, name: str) -> int:
    """Copy every entry of the old map that the new one can hold (same key and value size)."""
    old, new = libbpf.map_info(old_fd), libbpf.map_info(new_fd)
    if (old.key_size, old.value_size) != (new.key_size, new.value_size):
        raise LayoutChanged(
            f"--migrate {name}=copy: key/value sizes changed ({old.key_size}/{old.value_size} "
            f"-> {new.key_size}/{new.value_size}); only reset can migrate it"
        )
    percpu = old.type == libbpf.BPF_MAP_TYPE_PERCPU_ARRAY
    src = Map(old_fd, old.key_size, old.value_size, percpu)
    dst = Map(new_fd, new.key_size, new.value_size, percpu)
    n = 0
    for key in list(src.keys()):
        value = src.lookup(key)
        if value is None:
            continue
        try:
            dst.update_raw(key, value)
        except libbpf.BpfError as e:
            if e.errno in (errno.E2BIG, errno.ENOSPC):  # array index or hash capacity
                continue
            raise
        n += 1
    log.info("map %s: copied %d entries into the new layout", name, n)
    return n
