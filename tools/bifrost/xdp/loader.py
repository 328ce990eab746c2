"""Attach the XDP program, swap in a new build, apply the config, detach.

The program is attached through a bpf_link pinned, with the maps and the
program, under <pin_dir>/<iface>/ (pins.py), so `bifrost xdp apply|upgrade|
stats|status|detach` in a later process find them and the attachment outlives
every process: stopping `bifrost xdp run` leaves it in place. A newly built
object replaces it in one step (bpf_link_update) and keeps every map whose
layout is unchanged. Ownership is the link: attach refuses an interface where
any XDP program is attached, and detach takes off only the program of our link.

Game servers' neighbours. The forward path takes each game server's next hop
(gateway, or the server itself on a connected subnet) from bpf_fib_lookup,
which only reads the kernel's neighbour table: XDP cannot make the kernel
resolve (ARP) a neighbour, and a forward packet cannot be handed to the stack
instead (its outer source is our own address, a martian on input). An entry
that is missing, INCOMPLETE or FAILED therefore drops the forward traffic
(`drop_no_neigh`) until something else talks to that host, which on a POP
nothing does. So attach/apply install a *managed* neighbour entry
(NTF_EXT_MANAGED, Linux 5.16+, `ip neigh replace ADDR dev DEV managed`) for
every next hop: the kernel resolves it at once and then, every
interval_probe_time_ms (5 s; the initial netns's net.ipv4.neigh.default value
serves the whole host), starts resolving again any of them that is no longer
REACHABLE, FAILED included. So it stays valid and follows a MAC change with
no traffic at all. The entries carry NDA_PROTOCOL RTPROT_BIFROST (`proto 191`
in `ip neigh`) and are recorded under <pin_dir>/<iface>/neighbours/; detach
deletes exactly those that are still ours. A PERMANENT entry an operator set
is left alone.

What the kernel does NOT do for us: a carrier loss on the device flushes the
managed entries with every other dynamic one (measured on 6.1, 6.12 and
6.18), and under ARP-table pressure (more than gc_thresh1 entries) its GC
may drop one that is FAILED. `bifrost xdp apply` re-creates them (it is
idempotent and does not disturb a valid entry), and `bifrost xdp run`
(bifrost.xdp.service) does so by itself when it sees one deleted.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import shutil
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import ndmsg

from bifrost.xdp import bpffs, libbpf, maps, maps_def, pins
from bifrost.xdp.build import OBJECT
from bifrost.xdp.config import XdpConfig
from bifrost.xdp.libbpf import XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE, BpfError

log = logging.getLogger(__name__)

PROG_PIN = "prog"
MODULES_PIN = "modules"  # bifrost_modules: which game modules the attached object has
LINK_PIN = "link"  # the bpf_link attaching the program: whoever holds it owns the attachment
NEIGHBOURS_RECORD = "neighbours"  # one directory per entry made, in the pin dir

# include/uapi/linux/neighbour.h. pyroute2 (0.9) knows the NDA_FLAGS_EXT
# attribute (`flags_ext=`) but has no name for its bits.
NTF_EXT_MANAGED = 0x01
# Our mark in NDA_PROTOCOL (u8; unassigned in iproute2's rt_protos), so detach
# can tell an entry it made from one an operator has since replaced.
RTPROT_BIFROST = 0xBF
RTN_UNICAST, RTN_LOCAL = 1, 2  # include/uapi/linux/rtnetlink.h


def pin_dir_for(base: str | Path, iface: str) -> Path:
    return Path(base) / iface


def ifindex(iface: str) -> int:
    try:
        return socket.if_nametoindex(iface)
    except OSError:
        raise ValueError(f"interface {iface!r} does not exist (in this netns)") from None


@dataclass(frozen=True)
class NextHop:
    """The neighbour the kernel's FIB picks for one or more game servers."""

    address: ipaddress.IPv4Address
    ifname: str
    servers: tuple[ipaddress.IPv4Address, ...]

    def __str__(self) -> str:
        behind = [str(s) for s in self.servers if s != self.address]
        via = f" (gateway for {', '.join(behind)})" if behind else ""
        return f"{self.address} dev {self.ifname}{via}"


@dataclass(frozen=True)
class NeighbourReport:
    managed: tuple[NextHop, ...] = ()
    kept: tuple[str, ...] = ()  # next hops left as someone else set them, and why
    errors: tuple[str, ...] = ()  # game servers without a usable route, kernel refusals
    released: tuple[str, ...] = ()  # our entries deleted because no server needs them now

    def lines(self) -> list[str]:
        out = [f"managed neighbour {nh}" for nh in self.managed]
        out += [f"left alone: {k}" for k in self.kept]
        out += [f"released neighbour {r}" for r in self.released]
        return out


@dataclass(frozen=True)
class Attached:
    iface: str
    mode: str  # "native" or "generic"
    pin_dir: Path
    report: maps.ApplyReport
    neighbours: NeighbourReport = field(default_factory=NeighbourReport)
    reused: tuple[str, ...] = ()  # maps kept from the pins (state carried over)


class AttachError(RuntimeError):
    """The interface is not in a state this command can act on (named in the message)."""


class ModuleMissing(RuntimeError):
    """The config needs a game module the (running or new) object was not built with."""


REBUILD = "`invoke generate` then `invoke build` (or bifrost.xdp.build)"


def compiled_modules(modules_prog_fd: int) -> set[str]:
    """The game modules compiled into an object, as its bifrost_modules program says."""
    bits = struct.unpack("=I", libbpf.test_run(modules_prog_fd, bytes(64)).data[:4])[0]
    return {m.name for m in maps_def.GAME_MODULES if m.bit & bits}


def check_modules(cfg: XdpConfig, have: set[str], what: str) -> None:
    """Refuse cfg if a rule needs a game module that `what` lacks: such a rule would be
    accepted and do nothing (no handshake validation)."""
    for module, rules in sorted(maps.config_modules(cfg).items()):
        if module not in have:
            raise ModuleMissing(
                f"xdp.rule {rules[0]!r} needs game module {module!r}, which {what} was not "
                f"built with (it has: {', '.join(sorted(have)) or 'none'}); nothing was "
                f"changed. Rebuild with it (xdp.modules lists it, then {REBUILD}) and "
                "swap the new object in with `bifrost xdp upgrade`"
            )


def _pin_base(cfg: XdpConfig | None, pin_base: str | Path | None) -> Path:
    if pin_base is not None:
        return Path(pin_base)
    assert cfg is not None
    return Path(cfg.pin_dir)


def _where(
    cfg: XdpConfig, iface: str | None, pin_base: str | Path | None
) -> tuple[str, Path, Path]:
    """(interface, pin base, its pin directory) of a call: the arguments, else cfg's."""
    iface = iface or cfg.interface
    if not iface:
        raise ValueError("no interface: set xdp.interface or pass one")
    base = _pin_base(cfg, pin_base)
    return iface, base, pin_dir_for(base, iface)


def _loadable(obj: Path, base: Path) -> None:
    """What loading obj needs: the object built and bpffs mounted under base."""
    if not obj.exists():
        raise FileNotFoundError(f"{obj}: not built (invoke build)")
    bpffs.ensure(base)


def _attached_ids(idx: int) -> tuple[int, int]:
    """(native, generic) ids of the programs attached to ifindex idx (0: none)."""
    return libbpf.xdp_query_id(idx, XDP_FLAGS_DRV_MODE), libbpf.xdp_query_id(
        idx, XDP_FLAGS_SKB_MODE
    )


def our_link(pdir: Path, idx: int) -> int | None:
    """An fd of the pinned link if it still attaches our program to ifindex idx, else None.

    A link whose device went away is defunct (ifindex 0) and attaches nothing.
    """
    path = pdir / LINK_PIN
    if not path.exists():
        return None
    fd = libbpf.get_pinned(str(path))
    info = libbpf.link_info(fd)
    if info.type == libbpf.BPF_LINK_TYPE_XDP and idx and info.ifindex == idx:
        return fd
    os.close(fd)
    return None


def _describe_prog(prog_id: int) -> str:
    try:
        fd = libbpf.prog_fd_by_id(prog_id)
    except BpfError:
        return f"prog id {prog_id}"
    try:
        return f"{libbpf.prog_info(fd).name or '?'} (prog id {prog_id})"
    finally:
        os.close(fd)


def _refuse_foreign(idx: int, iface: str) -> None:
    for prog_id, how in zip(_attached_ids(idx), ("native", "generic"), strict=True):
        if prog_id:
            raise AttachError(
                f"{iface}: another XDP program is attached ({how}): {_describe_prog(prog_id)}, "
                f"not through bifrost's pinned link; bifrost replaces no one else's program "
                f"(remove it first, e.g. `ip link set {iface} xdp off`)"
            )


def _link(idx: int, prog_fd: int, mode: str, iface: str) -> tuple[int, str]:
    """A new XDP link (native, else generic with a warning in auto mode): (fd, mode)."""
    if mode in ("auto", "native"):
        try:
            return libbpf.xdp_link_create(prog_fd, idx, XDP_FLAGS_DRV_MODE), "native"
        except BpfError as e:
            if mode == "native":
                raise
            log.warning("%s: native XDP failed (%s); falling back to generic (slower)", iface, e)
    return libbpf.xdp_link_create(prog_fd, idx, XDP_FLAGS_SKB_MODE), "generic"


def _pin_object(pdir: Path, loaded: pins.Loaded) -> None:
    """Pin the maps the object made (those it shares are pinned already) and the program."""
    fds = loaded.obj.map_fds()
    for name in loaded.fresh:
        pins.replace_pin(fds[name], pdir / name)
    pins.replace_pin(loaded.obj.prog_fd("bifrost_modules"), pdir / MODULES_PIN)
    pins.replace_pin(loaded.obj.prog_fd("bifrost_xdp"), pdir / PROG_PIN)


def attach(
    cfg: XdpConfig,
    iface: str | None = None,
    obj: Path = OBJECT,
    mode: str | None = None,
    pin_base: str | Path | None = None,
    migrate: dict[str, str] | None = None,
) -> Attached:
    """Load the object (keeping the state maps pinned by an earlier attachment of
    iface, when their layout is unchanged), apply cfg, attach it through a pinned
    bpf_link (native, else generic with a warning), then install managed neighbour
    entries for the game servers' next hops.

    Refused when iface already has our program (`upgrade` swaps it) or anyone else's.
    """
    iface, base, pdir = _where(cfg, iface, pin_base)
    mode = mode or cfg.mode
    idx = ifindex(iface)
    _loadable(obj, base)
    with pins.locked(base):
        link = our_link(pdir, idx)
        if link is not None:
            os.close(link)
            raise AttachError(
                f"{iface}: bifrost_xdp is already attached (link pinned in {pdir}): "
                "`bifrost xdp upgrade` swaps in a newly built object, `bifrost xdp apply` "
                "a changed config"
            )
        _refuse_foreign(idx, iface)
        loaded = pins.load_reusing(obj, pdir, migrate)
        with loaded.obj as bo:
            check_modules(cfg, compiled_modules(bo.prog_fd("bifrost_modules")), str(obj))
            ms = maps.MapSet.from_fds(bo.map_fds())
            npj = maps.calibrate_clock(bo.prog_fd("bifrost_clock"))
            report = maps.apply(ms, cfg, npj)
            carried = carry_srcds_clients(pdir, ms, npj, bo.prog_fd("bifrost_clock"))
            link_fd, used = _link(idx, bo.prog_fd("bifrost_xdp"), mode, iface)
            try:
                pdir.mkdir(parents=True, exist_ok=True)
                _pin_object(pdir, loaded)
                pins.replace_pin(link_fd, pdir / LINK_PIN)
            finally:
                # Pinned, the link outlives this fd; not pinned, closing it detaches.
                os.close(link_fd)
            if carried is not None:
                (pdir / maps.LEGACY_SRCDS_CLIENTS).unlink()
    log.info("attached bifrost_xdp on %s (%s, bpf_link), pinned in %s", iface, used, pdir)
    if loaded.reused:
        log.info("kept the pinned maps %s", ", ".join(loaded.reused))
    # After the attach: a game server without a route is reported, not fatal
    # (its traffic is counted as drop_no_route), and the program stays attached.
    neigh = manage_neighbours(cfg, record=pdir / NEIGHBOURS_RECORD)
    return Attached(iface, used, pdir, report, neigh, tuple(loaded.reused))


@dataclass(frozen=True)
class Upgraded:
    iface: str
    swapped: bool  # False: the object is the one running, nothing was changed
    old_prog_id: int
    new_prog_id: int
    reused: tuple[str, ...]
    fresh: tuple[str, ...]
    copied: dict[str, int]
    report: maps.ApplyReport | None

    def __str__(self) -> str:
        if not self.swapped:
            return f"{self.iface}: already running this object (prog id {self.old_prog_id})"
        kept = ", ".join(self.reused) or "none"
        new = ", ".join(
            f"{n} (copied {self.copied[n]})" if n in self.copied else n for n in self.fresh
        )
        carried = self.copied.get(maps.LEGACY_SRCDS_CLIENTS)
        return (
            f"{self.iface}: swapped prog id {self.old_prog_id} -> {self.new_prog_id} "
            f"atomically; maps kept: {kept}; new maps: {new or 'none'}"
        ) + ("" if carried is None else f"; {carried} SRCDS client(s) carried into game_clients")


def upgrade(
    cfg: XdpConfig,
    iface: str | None = None,
    obj: Path = OBJECT,
    pin_base: str | Path | None = None,
    migrate: dict[str, str] | None = None,
) -> Upgraded:
    """Replace our attached program by obj's in one step (bpf_link_update), keeping every
    map whose layout is unchanged; cfg is applied to the new maps first, so the new
    program starts with the config and the state of the old one. Refused, with the
    old program left running, when a state map's layout changed and migrate does not
    say how to carry it over (pins.load_reusing)."""
    iface, base, pdir = _where(cfg, iface, pin_base)
    idx = ifindex(iface)
    _loadable(obj, base)
    with pins.locked(base):
        link = our_link(pdir, idx)
        if link is None:
            raise AttachError(f"{iface}: bifrost_xdp is not attached here: `bifrost xdp attach`")
        try:
            old_id = libbpf.link_info(link).prog_id
            old_fd = libbpf.prog_fd_by_id(old_id)
            try:
                return _swap(cfg, iface, obj, base, pdir, link, old_fd, old_id, migrate)
            finally:
                os.close(old_fd)
        finally:
            os.close(link)


def _swap(
    cfg: XdpConfig,
    iface: str,
    obj: Path,
    base: Path,
    pdir: Path,
    link: int,
    old_fd: int,
    old_id: int,
    migrate: dict[str, str] | None,
) -> Upgraded:
    loaded = pins.load_reusing(obj, pdir, migrate)
    with loaded.obj as bo:
        check_modules(cfg, compiled_modules(bo.prog_fd("bifrost_modules")), str(obj))
        new_fd = bo.prog_fd("bifrost_xdp")
        new_info = libbpf.prog_info(new_fd)
        if new_info.tag == libbpf.prog_info(old_fd).tag and not loaded.fresh:
            return Upgraded(iface, False, old_id, old_id, tuple(loaded.reused), (), {}, None)
        ms = maps.MapSet.from_fds(bo.map_fds())
        npj = maps.calibrate_clock(bo.prog_fd("bifrost_clock"))
        report = maps.apply(ms, cfg, npj)
        carried = carry_srcds_clients(pdir, ms, npj, bo.prog_fd("bifrost_clock"))
        # Every interface attached to the old program (attach_also) follows it.
        for other in _links_to(base, old_id):
            try:
                libbpf.link_update(other, new_fd, old_fd)
            finally:
                os.close(other)
        libbpf.link_update(link, new_fd, old_fd)
        _pin_object(pdir, loaded)
        if carried is not None:
            # Again: the old program validated clients until the swap. Then the pin goes.
            carried = carry_srcds_clients(pdir, ms, npj, bo.prog_fd("bifrost_clock"))
            (pdir / maps.LEGACY_SRCDS_CLIENTS).unlink()
            loaded.copied[maps.LEGACY_SRCDS_CLIENTS] = carried or 0
    log.info("%s: swapped prog id %d -> %d (bpf_link_update)", iface, old_id, new_info.id)
    return Upgraded(
        iface,
        True,
        old_id,
        new_info.id,
        tuple(loaded.reused),
        tuple(loaded.fresh),
        loaded.copied,
        report,
    )


def carry_srcds_clients(
    pdir: Path, ms: maps.MapSet, ns_per_jiffy: int, clock_fd: int
) -> int | None:
    """A pinned srcds_clients (an object from before SRCDS kept its clients in
    game_clients): copy its live clients into the new object's game_clients, so
    validated players keep playing across the upgrade; how many, or None when there is
    nothing to carry (no such pin, or the new object has no game module to take them:
    the pin then waits, untouched, for one that has)."""
    path = pdir / maps.LEGACY_SRCDS_CLIENTS
    if "game_clients" not in ms or not path.exists():
        return None
    spec = maps.LEGACY_SRCDS_SPEC
    fd = libbpf.get_pinned(str(path))
    old = libbpf.Map(fd, spec.key_size, spec.value_size, False, owned=True)
    try:
        info = libbpf.map_info(fd)
        if (info.type, info.key_size, info.value_size) != (
            spec.type,
            spec.key_size,
            spec.value_size,
        ):
            raise pins.LayoutChanged(
                f"{path}: not the srcds_clients this bifrost can carry over "
                f"(type {info.type}, key {info.key_size}, value {info.value_size} bytes)"
            )
        n = maps.carry_srcds_clients(old, ms, maps.program_now(ns_per_jiffy, clock_fd))
    finally:
        old.close()
    log.info("carried %d validated SRCDS client(s) from %s into game_clients", n, path)
    return n


def _links_to(base: Path, prog_id: int) -> Iterator[int]:
    """fds of the pinned links under base, other than pins of a program's own pin dir
    (those with maps), that attach prog_id: interfaces added with attach_also."""
    for d in sorted(base.iterdir()) if base.is_dir() else []:
        path = d / LINK_PIN
        if (d / PROG_PIN).exists() or not path.exists():
            continue
        fd = libbpf.get_pinned(str(path))
        if libbpf.link_info(fd).prog_id == prog_id:
            yield fd
        else:
            os.close(fd)


def attach_pass(iface: str, obj: Path = OBJECT) -> None:
    """Attach the XDP_PASS program (veth peers in labs: turns on NAPI for XDP_TX/REDIRECT)."""
    with libbpf.BpfObject(obj) as bo:
        libbpf.xdp_attach(ifindex(iface), bo.prog_fd("bifrost_pass"), XDP_FLAGS_DRV_MODE)


@dataclass(frozen=True)
class Applied:
    report: str
    neighbours: NeighbourReport


def apply(cfg: XdpConfig, iface: str | None = None, pin_base: str | Path | None = None) -> Applied:
    """Re-apply cfg to the pinned maps of a running program (no reload) and bring the
    managed neighbours in line with its game servers (re-creating any the kernel flushed)."""
    iface, base, pdir = _where(cfg, iface, pin_base)
    if not pdir.is_dir():
        raise FileNotFoundError(f"{pdir}: no pinned maps (is the program attached?)")
    with pins.locked(base):
        check_modules(cfg, running_modules(pdir), "the running program")
        with maps.MapSet.from_pins(pdir) as ms:
            report = str(maps.apply(ms, cfg))
    return Applied(report, ensure_neighbours(cfg, iface, pin_base))


def running_modules(pdir: Path) -> set[str]:
    """The game modules of the program attached from pdir (its pinned bifrost_modules)."""
    fd = libbpf.get_pinned(str(pdir / MODULES_PIN))
    try:
        return compiled_modules(fd)
    finally:
        os.close(fd)


def ensure_neighbours(
    cfg: XdpConfig, iface: str, pin_base: str | Path | None = None
) -> NeighbourReport:
    """apply()'s neighbour half alone, maps untouched: re-install (and record) the managed
    entries for cfg's next hops. Idempotent; for a process that re-creates the entries
    a carrier loss flushed as soon as it sees that happen (`bifrost xdp run`)."""
    record = pin_dir_for(pin_base or cfg.pin_dir, iface) / NEIGHBOURS_RECORD
    return manage_neighbours(cfg, record=record)


def recorded_neighbours(iface: str, pin_base: str | Path) -> list[tuple[str, str]]:
    """(address, device) of each neighbour entry attach/apply made for iface's program."""
    return _read_record(pin_dir_for(pin_base, iface) / NEIGHBOURS_RECORD)


def detach(iface: str, pin_base: str | Path) -> str:
    """Take our program off iface (its pinned link; a program attached otherwise is left
    alone and named), delete the neighbour entries attach/apply made (only those still
    ours), and remove the pins. What was done, for the operator."""
    try:
        idx = ifindex(iface)
    except ValueError:
        idx = 0
    base = Path(pin_base)
    pdir = pin_dir_for(base, iface)
    if not base.is_dir():
        return f"{iface}: nothing pinned in {base}"
    with pins.locked(base):
        link = our_link(pdir, idx)
        what = f"{iface}: detached"
        if link is not None:
            try:
                libbpf.link_detach(link)
            finally:
                os.close(link)
        elif idx and any(_attached_ids(idx)):
            prog = next(p for p in _attached_ids(idx) if p)
            what = f"{iface}: left {_describe_prog(prog)} attached: not bifrost's (no pinned link)"
        else:
            what = f"{iface}: was not attached"
        release_neighbours(pdir / NEIGHBOURS_RECORD)
        shutil.rmtree(pdir, ignore_errors=True)
    return what


@dataclass(frozen=True)
class Status:
    iface: str
    native_prog_id: int
    generic_prog_id: int
    pinned: bool
    ours: bool = False  # attached through our pinned link

    @property
    def attached(self) -> bool:
        return bool(self.native_prog_id or self.generic_prog_id)

    def __str__(self) -> str:
        if self.native_prog_id:
            how = f"attached (native, prog id {self.native_prog_id})"
        elif self.generic_prog_id:
            how = f"attached (generic, prog id {self.generic_prog_id})"
        else:
            how = "not attached"
        if self.attached and not self.ours:
            how += " by someone else (no bifrost link)"
        return f"{self.iface}: {how}; maps {'pinned' if self.pinned else 'not pinned'}"


def status(iface: str, pin_base: str | Path) -> Status:
    idx = ifindex(iface)
    pdir = pin_dir_for(pin_base, iface)
    link = our_link(pdir, idx)
    ours = False
    if link is not None:
        ours = libbpf.link_info(link).prog_id in _attached_ids(idx)
        os.close(link)
    native, generic = _attached_ids(idx)
    return Status(iface, native, generic, pdir.is_dir(), ours)


def attach_also(iface: str, first_iface: str, pin_base: str | Path, mode: str = "auto") -> str:
    """Attach the program already attached on first_iface (same maps) to one more interface.

    A POP with separate client- and game-server-facing interfaces needs one
    program with one set of maps on both, so SRCDS validation learned on the
    return path applies on the forward path. Its link is pinned in iface's pin
    dir, `upgrade` of first_iface swaps it too, `detach(iface, ...)` undoes it.
    """
    base = Path(pin_base)
    idx = ifindex(iface)
    with pins.locked(base):
        _refuse_foreign(idx, iface)
        prog = libbpf.get_pinned(str(pin_dir_for(base, first_iface) / PROG_PIN))
        try:
            link_fd, used = _link(idx, prog, mode, iface)
        finally:
            os.close(prog)
        try:
            pin_dir_for(base, iface).mkdir(parents=True, exist_ok=True)
            pins.replace_pin(link_fd, pin_dir_for(base, iface) / LINK_PIN)
        finally:
            os.close(link_fd)
    return used


# -- game servers' neighbours (see the module docstring) -----------------------


class NoRoute(ValueError):
    pass


def next_hop(ipr: IPRoute, server: ipaddress.IPv4Address) -> NextHop:
    """The next hop of the kernel's route to server (as `ip route get`), in this netns.

    Only the destination is looked up: bpf_fib_lookup also passes the POP
    address as source and the ingress device, which matters only with policy
    routing by source or interface. Of a multipath route only the leg this
    lookup hashes to is returned (bpf_fib_lookup may pick another per flow).
    """
    try:
        route = ipr.route("get", dst=str(server))[0]
    except NetlinkError as e:
        why = "blackhole or prohibit route" if e.code == errno.EINVAL else os.strerror(e.code)
        raise NoRoute(
            f"game server {server}: no route in this netns ({why}); "
            "the XDP program drops its traffic as drop_no_route"
        ) from None
    if route["type"] == RTN_LOCAL:
        raise NoRoute(f"game server {server}: is an address of this host, not a remote server")
    if route["type"] != RTN_UNICAST:
        raise NoRoute(f"game server {server}: not a unicast route (type {route['type']})")
    gateway = route.get_attr("RTA_GATEWAY")
    address = ipaddress.IPv4Address(gateway) if gateway else server
    return NextHop(address, socket.if_indextoname(route.get_attr("RTA_OIF")), (server,))


def _neighbour(ipr: IPRoute, address: ipaddress.IPv4Address, ifname: str) -> Any | None:
    try:
        return ipr.neigh("get", dst=str(address), ifindex=socket.if_nametoindex(ifname))[0]
    except NetlinkError as e:
        if e.code == errno.ENOENT:
            return None
        raise


def _is_managed(entry: Any) -> bool:
    return bool((entry.get_attr("NDA_FLAGS_EXT") or 0) & NTF_EXT_MANAGED)


def _is_ours(entry: Any) -> bool:
    return _is_managed(entry) and entry.get_attr("NDA_PROTOCOL") == RTPROT_BIFROST


def _next_hops(ipr: IPRoute, cfg: XdpConfig) -> tuple[list[NextHop], list[str]]:
    """One NextHop per (address, device): servers behind one gateway share its entry."""
    hops: dict[tuple[ipaddress.IPv4Address, str], NextHop] = {}
    errors = []
    for server in cfg.all_game_servers():
        try:
            nh = next_hop(ipr, server)
        except NoRoute as e:
            errors.append(str(e))
            continue
        key = (nh.address, nh.ifname)
        if key in hops:
            nh = NextHop(nh.address, nh.ifname, (*hops[key].servers, server))
        hops[key] = nh
    return list(hops.values()), errors


def manage_neighbours(cfg: XdpConfig, record: Path | None = None) -> NeighbourReport:
    """Install a managed neighbour entry for every game server's next hop, in this netns.

    Idempotent: replacing an entry with NTF_EXT_MANAGED keeps its state and
    MAC (the kernel ignores the given state when the managed flag is set), so
    a valid entry is never disturbed; the kernel starts resolving a new one at
    once (measured: REACHABLE within a millisecond on veth), so the datagram
    nudge this used to send is gone.

    Left alone: PERMANENT/NOARP entries (making them managed would drop their
    permanence) and managed entries someone else made. With record (a
    directory in the pin dir), the entries made are listed there, and ones
    listed earlier that no game server needs any more are deleted. Without
    it (labs and tests that attach the program themselves) nothing is
    recorded, so `detach` leaves those entries in place.
    """
    managed: list[NextHop] = []
    kept: list[str] = []
    with IPRoute() as ipr:
        hops, errors = _next_hops(ipr, cfg)
        for nh in hops:
            entry = _neighbour(ipr, nh.address, nh.ifname)
            if entry is not None and entry["state"] & (ndmsg.NUD_PERMANENT | ndmsg.NUD_NOARP):
                kept.append(f"{nh}: a permanent entry (set by an operator)")
                continue
            if entry is not None and _is_managed(entry) and not _is_ours(entry):
                kept.append(f"{nh}: already managed by someone else")
                continue
            try:
                ipr.neigh(
                    "replace",
                    dst=str(nh.address),
                    ifindex=socket.if_nametoindex(nh.ifname),
                    state=ndmsg.NUD_NONE,  # PERMANENT (pyroute2's default) + managed is EINVAL
                    flags_ext=NTF_EXT_MANAGED,
                    protocol=RTPROT_BIFROST,
                )
            except NetlinkError as e:
                errors.append(f"{nh}: the kernel refused a managed neighbour entry: {e}")
                continue
            after = _neighbour(ipr, nh.address, nh.ifname)
            if after is None or not _is_ours(after):
                # A kernel older than 5.16 ignores NDA_FLAGS_EXT without an error.
                errors.append(f"{nh}: the kernel did not keep it managed (Linux < 5.16?)")
                continue
            managed.append(nh)
        released = _reconcile(ipr, record, managed) if record is not None else []
    for msg in errors:
        log.error("%s", msg)
    for nh in managed:
        log.info("managed neighbour %s", nh)
    return NeighbourReport(tuple(managed), tuple(kept), tuple(errors), tuple(released))


def _record_name(address: str, ifname: str) -> str:
    # bpffs holds only pins and directories, and refuses a '.' in a name: ':'
    # stands for it (no interface name or IPv4 address contains one).
    return f"{address}@{ifname}".replace(".", ":")


def _read_record(record: Path) -> list[tuple[str, str]]:
    if not record.is_dir():
        return []
    entries = [d.name.replace(":", ".").split("@", 1) for d in record.iterdir()]
    return [(addr, dev) for addr, dev in entries]


def _reconcile(ipr: IPRoute, record: Path, managed: list[NextHop]) -> list[str]:
    now = [(str(nh.address), nh.ifname) for nh in managed]
    released = []
    for addr, dev in _read_record(record):
        if (addr, dev) not in now:
            released.append(_delete_if_ours(ipr, addr, dev))
            (record / _record_name(addr, dev)).rmdir()
    for addr, dev in now:
        (record / _record_name(addr, dev)).mkdir(parents=True, exist_ok=True)
    return [r for r in released if r]


def _delete_if_ours(ipr: IPRoute, address: str, ifname: str) -> str:
    """Delete the entry if it is still the managed one we made; its description, else ''."""
    try:
        entry = _neighbour(ipr, ipaddress.IPv4Address(address), ifname)
    except OSError:  # the device is gone, and its entries with it
        return ""
    if entry is None or not _is_ours(entry):
        return ""
    ipr.neigh("del", dst=address, ifindex=socket.if_nametoindex(ifname))
    return f"{address} dev {ifname}"


def release_neighbours(record: Path) -> list[str]:
    """Delete the neighbour entries listed in record that are still ours (in this netns)."""
    entries = _read_record(record)
    if not entries:
        return []
    with IPRoute() as ipr:
        done = [_delete_if_ours(ipr, addr, dev) for addr, dev in entries]
    shutil.rmtree(record, ignore_errors=True)
    return [d for d in done if d]
