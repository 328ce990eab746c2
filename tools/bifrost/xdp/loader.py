"""Attach the XDP program, pin its maps, apply the config, detach.

Maps and the program are pinned under <pin_dir>/<iface>/ so that `bifrost xdp
apply|stats|status` in a later process find them; the XDP attachment itself
is held by the interface (netlink), not by this process.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import ndmsg

from bifrost.xdp import bpffs, libbpf, maps
from bifrost.xdp.build import OBJECT
from bifrost.xdp.config import XdpConfig
from bifrost.xdp.libbpf import XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE, BpfError

log = logging.getLogger(__name__)

PROG_PIN = "prog"
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


def attach(
    cfg: XdpConfig,
    iface: str | None = None,
    obj: Path = OBJECT,
    mode: str | None = None,
    pin_base: str | Path | None = None,
) -> Attached:
    """Load the object, pin its maps, apply cfg, attach (native, else generic with a warning),
    then install managed neighbour entries for the game servers' next hops."""
    iface = iface or cfg.interface
    if not iface:
        raise ValueError("no interface: set xdp.interface or pass one")
    mode = mode or cfg.mode
    idx = ifindex(iface)
    pdir = pin_dir_for(pin_base or cfg.pin_dir, iface)
    bpffs.ensure(pdir.parent)
    if pdir.exists():
        raise RuntimeError(f"{pdir} exists: already attached? run `bifrost xdp detach` first")
    if not obj.exists():
        raise FileNotFoundError(f"{obj}: not built (invoke build)")
    with libbpf.BpfObject(obj) as bo:
        fds = bo.map_fds()
        prog = bo.prog_fd("bifrost_xdp")
        ms = maps.MapSet.from_fds(fds)
        report = maps.apply(ms, cfg, maps.calibrate_clock(bo.prog_fd("bifrost_clock")))
        pdir.mkdir(parents=True)
        try:
            for name, fd in fds.items():
                libbpf.pin(fd, str(pdir / name))
            libbpf.pin(prog, str(pdir / PROG_PIN))
            used = _attach_fd(idx, prog, mode, iface)
        except BaseException:
            shutil.rmtree(pdir, ignore_errors=True)
            raise
    log.info("attached bifrost_xdp on %s (%s), maps pinned in %s", iface, used, pdir)
    # After the attach: a game server without a route is reported, not fatal
    # (its traffic is counted as drop_no_route), and the program stays attached.
    neigh = manage_neighbours(cfg, record=pdir / NEIGHBOURS_RECORD)
    return Attached(iface, used, pdir, report, neigh)


def _attach_fd(idx: int, prog_fd: int, mode: str, iface: str) -> str:
    if mode in ("auto", "native"):
        try:
            libbpf.xdp_attach(idx, prog_fd, XDP_FLAGS_DRV_MODE)
            return "native"
        except BpfError as e:
            if mode == "native":
                raise
            log.warning("%s: native XDP failed (%s); falling back to generic (slower)", iface, e)
    libbpf.xdp_attach(idx, prog_fd, XDP_FLAGS_SKB_MODE)
    return "generic"


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
    iface = iface or cfg.interface
    if not iface:
        raise ValueError("no interface: set xdp.interface or pass one")
    ms = maps.MapSet.from_pins(pin_dir_for(pin_base or cfg.pin_dir, iface))
    report = str(maps.apply(ms, cfg))
    return Applied(report, ensure_neighbours(cfg, iface, pin_base))


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


def detach(iface: str, pin_base: str | Path) -> None:
    """Detach in whichever mode it is attached, delete the neighbour entries attach/apply
    made (only those still ours), and remove the pins."""
    try:
        idx = ifindex(iface)
    except ValueError:
        idx = 0
    if idx:
        for flags in (XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE):
            if libbpf.xdp_query_id(idx, flags):
                libbpf.xdp_detach(idx, flags)
    pdir = pin_dir_for(pin_base, iface)
    release_neighbours(pdir / NEIGHBOURS_RECORD)
    shutil.rmtree(pdir, ignore_errors=True)


@dataclass(frozen=True)
class Status:
    iface: str
    native_prog_id: int
    generic_prog_id: int
    pinned: bool

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
        return f"{self.iface}: {how}; maps {'pinned' if self.pinned else 'not pinned'}"


def status(iface: str, pin_base: str | Path) -> Status:
    idx = ifindex(iface)
    return Status(
        iface,
        libbpf.xdp_query_id(idx, XDP_FLAGS_DRV_MODE),
        libbpf.xdp_query_id(idx, XDP_FLAGS_SKB_MODE),
        pin_dir_for(pin_base, iface).is_dir(),
    )


def attach_also(iface: str, first_iface: str, pin_base: str | Path, mode: str = "auto") -> str:
    """Attach the program already attached on first_iface (same maps) to one more interface.

    A POP with separate client- and game-server-facing interfaces needs one
    program with one set of maps on both, so SRCDS validation learned on the
    return path applies on the forward path. `detach(iface, ...)` undoes it.
    """
    prog = libbpf.get_pinned(str(pin_dir_for(pin_base, first_iface) / PROG_PIN))
    return _attach_fd(ifindex(iface), prog, mode, iface)


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
