"""Attach the XDP program, pin its maps, apply the config, detach.

Maps and the program are pinned under <pin_dir>/<iface>/ so that `bifrost xdp
apply|stats|status` in a later process find them; the XDP attachment itself
is held by the interface (netlink), not by this process.
"""

from __future__ import annotations

import logging
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from bifrost.xdp import libbpf, maps
from bifrost.xdp.build import OBJECT
from bifrost.xdp.config import XdpConfig
from bifrost.xdp.libbpf import XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE, BpfError

log = logging.getLogger(__name__)

PROG_PIN = "prog"


def pin_dir_for(base: str | Path, iface: str) -> Path:
    return Path(base) / iface


def ifindex(iface: str) -> int:
    try:
        return socket.if_nametoindex(iface)
    except OSError:
        raise ValueError(f"interface {iface!r} does not exist (in this netns)") from None


@dataclass(frozen=True)
class Attached:
    iface: str
    mode: str  # "native" or "generic"
    pin_dir: Path
    report: maps.ApplyReport


def attach(
    cfg: XdpConfig,
    iface: str | None = None,
    obj: Path = OBJECT,
    mode: str | None = None,
    pin_base: str | Path | None = None,
) -> Attached:
    """Load the object, pin its maps, apply cfg, attach (native, else generic with a warning)."""
    iface = iface or cfg.interface
    if not iface:
        raise ValueError("no interface: set xdp.interface or pass one")
    mode = mode or cfg.mode
    idx = ifindex(iface)
    pdir = pin_dir_for(pin_base or cfg.pin_dir, iface)
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
    return Attached(iface, used, pdir, report)


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


def apply(cfg: XdpConfig, iface: str | None = None, pin_base: str | Path | None = None) -> str:
    """Re-apply cfg to the pinned maps of a running program (no reload)."""
    iface = iface or cfg.interface
    if not iface:
        raise ValueError("no interface: set xdp.interface or pass one")
    ms = maps.MapSet.from_pins(pin_dir_for(pin_base or cfg.pin_dir, iface))
    return str(maps.apply(ms, cfg))


def detach(iface: str, pin_base: str | Path) -> None:
    """Detach in whichever mode it is attached and remove the pins."""
    try:
        idx = ifindex(iface)
    except ValueError:
        idx = 0
    if idx:
        for flags in (XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE):
            if libbpf.xdp_query_id(idx, flags):
                libbpf.xdp_detach(idx, flags)
    shutil.rmtree(pin_dir_for(pin_base, iface), ignore_errors=True)


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


def prime_neighbours(cfg: XdpConfig) -> int:
    """Make the kernel resolve each game server's next hop (ARP) for the fast path.

    XDP never makes the kernel resolve a neighbour, and a forward packet cannot
    be handed to the stack instead (its outer source is our own address), so
    one datagram to the discard port of every game server does it. Call it from
    the POP's netns after attach/apply and periodically.
    """
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for gs in cfg.all_game_servers():
            try:
                s.sendto(b"", (str(gs), 9))
                sent += 1
            except OSError as e:
                log.warning("cannot reach game server %s: %s", gs, e)
    return sent


def attach_also(iface: str, first_iface: str, pin_base: str | Path, mode: str = "auto") -> str:
    """Attach the program already attached on first_iface (same maps) to one more interface.

    A POP with separate client- and game-server-facing interfaces needs one
    program with one set of maps on both, so SRCDS validation learned on the
    return path applies on the forward path. `detach(iface, ...)` undoes it.
    """
    prog = libbpf.get_pinned(str(pin_dir_for(pin_base, first_iface) / PROG_PIN))
    return _attach_fd(ifindex(iface), prog, mode, iface)
