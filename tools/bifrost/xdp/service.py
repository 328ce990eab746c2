"""`bifrost xdp run`: the POP's XDP program as a long-running service (bifrost-xdp.service).

The attachment and the maps outlive any process (the interface and bpffs hold
them), so why a process: the managed neighbour entries of the game servers'
next hops do not survive a carrier loss on their device (the kernel flushes
them with every other dynamic entry), and while one is missing every packet
forwarded to its game server is dropped (drop_no_neigh). This process watches
rtnetlink and re-installs them through the loader as soon as one it recorded
is deleted or a link comes back up, and re-checks every `recheck` seconds as
a safety net (lost netlink events, a route that moved to a new gateway).

Per-rule, per-reason counters are served to Prometheus on
xdp.metrics_address:metrics_port (bifrost.daemon.MetricsServer, as the
daemons do). SIGHUP re-reads the config and re-applies it. SIGTERM/SIGINT stop the process
and leave the program attached through its pinned bpf_link, with its maps
(traffic keeps flowing): a restart adopts it, swapping in a newly built
object if --obj is one (maps kept, pins.load_reusing). Only `bifrost xdp
detach` takes the program off.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import select
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.core import Metric
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTMGRP_LINK, RTMGRP_NEIGH
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from bifrost import config as cfgmod
from bifrost.auth_config import AUTH_OFF_WARNING
from bifrost.daemon import MetricsServer, gauges, labelled_counter
from bifrost.sdnotify import sd_notify
from bifrost.xdp import loader, maps, pins
from bifrost.xdp.config import XdpConfig
from bifrost.xdp.libbpf import BpfError

log = logging.getLogger("bifrost-xdp")

IFF_UP, IFF_LOWER_UP = 0x1, 0x10000  # include/uapi/linux/if.h
RECHECK_S = 30.0
# After a re-install that left a game server without a usable next hop (its
# route is gone while the link is down), try again soon, backing off to RECHECK_S.
FIRST_RETRY_S = 1.0
# Changing these moves the attachment itself: a reload cannot do that safely.
NEEDS_RESTART = ("interface", "pin_dir", "mode")


def load_config(path: Path) -> XdpConfig:
    cfg = cfgmod.load(path).xdp
    if cfg is None:
        raise cfgmod.ConfigError(f"{path}: no [xdp] section")
    result: XdpConfig = cfg
    return result


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


def config_changes(old: XdpConfig, new: XdpConfig) -> list[str]:
    """What a reload changes, one line per setting or rule, for the log."""
    out = []
    for f in dataclasses.fields(XdpConfig):
        a, b = getattr(old, f.name), getattr(new, f.name)
        if f.name == "auth_keys" and a != b:  # secrets: never in the log
            out.append(f"auth.keys: {len(a)} -> {len(b)} keys (values not logged)")
        elif f.name != "rules" and a != b:
            out.append(f"xdp.{f.name}: {_show(a)} -> {_show(b)}")
    # A rule's id in the program comes from its name (maps.assign_ids), not from its
    # position, which the parsed config still carries: compare without it.
    before = {r.name: dataclasses.replace(r, id=0) for r in old.rules}
    after = {r.name: dataclasses.replace(r, id=0) for r in new.rules}
    out += [f"rule {n!r} added" for n in after if n not in before]
    out += [f"rule {n!r} removed" for n in before if n not in after]
    out += [f"rule {n!r} changed" for n in after if n in before and after[n] != before[n]]
    return out


def _open_watch() -> socket.socket:
    """An rtnetlink socket subscribed to link and neighbour changes (non-blocking).

    A raw socket read until EAGAIN, with pyroute2 only parsing: pyroute2's own
    socket queues datagrams inside its asyncio loop, where select() on its fd
    would not see them.
    """
    sock = socket.socket(
        socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
    )
    sock.bind((0, RTMGRP_LINK | RTMGRP_NEIGH))
    return sock


def _running(flags: int) -> bool:
    return bool(flags & IFF_UP and flags & IFF_LOWER_UP)


@dataclass
class Service:
    config_path: Path
    iface_arg: str | None = None
    obj: Path = loader.OBJECT
    mode: str | None = None
    recheck_s: float = RECHECK_S
    migrate: dict[str, str] | None = None

    def __post_init__(self) -> None:
        self.cfg = load_config(self.config_path)
        iface = self.iface_arg or self.cfg.interface
        if not iface:
            raise ValueError("no interface: pass --iface or set xdp.interface")
        self.iface: str = iface
        self.pin_base = self.cfg.pin_dir
        self.link_running: dict[int, bool] = {}
        self.last_neighbours: tuple[list[str], tuple[str, ...]] | None = None
        self.retry_s = FIRST_RETRY_S
        self.next_check = 0.0

    # -- start, stop ---------------------------------------------------------

    def start(self) -> None:
        """Attach per the config, or adopt our program attached through its pinned link
        (a restart, a crash, `bifrost xdp attach`): swap in the object at --obj if it is
        another build (bpf_link_update, maps kept) and apply the config to it."""
        if not self.cfg.auth_keys:
            log.warning("%s: %s", self.iface, AUTH_OFF_WARNING)
        st = loader.status(self.iface, self.pin_base)
        if st.ours:
            self._adopt(st)
            return
        if st.attached:
            raise loader.AttachError(f"{st}: bifrost replaces no one else's program")
        att = loader.attach(self.cfg, self.iface, self.obj, self.mode, self.pin_base, self.migrate)
        kept = f"; kept the pinned maps {', '.join(att.reused)}" if att.reused else ""
        log.info(
            "%s: attached (%s); maps in %s; %s%s",
            att.iface,
            att.mode,
            att.pin_dir,
            att.report,
            kept,
        )
        self._neighbours_done(att.neighbours, "start")

    def _adopt(self, st: loader.Status) -> None:
        log.info(
            "%s: adopted the attached program (%s, prog id %d) and its maps in %s",
            self.iface,
            "native" if st.native_prog_id else "generic",
            st.native_prog_id or st.generic_prog_id,
            loader.pin_dir_for(self.pin_base, self.iface),
        )
        if self.obj.exists():
            try:
                up = loader.upgrade(self.cfg, self.iface, self.obj, self.pin_base, self.migrate)
                log.info("%s", up)
                if up.swapped:  # the config went in with the new program
                    log.info("%s: config applied: %s", self.iface, up.report)
                    self.ensure("start")
                    return
            except (pins.LayoutChanged, loader.ModuleMissing, BpfError) as e:
                # The running program keeps serving; the operator decides the migration.
                log.error("%s: not swapping in %s: %s", self.iface, self.obj, e)
        else:
            log.warning("%s: %s does not exist: keeping the running program", self.iface, self.obj)
        res = loader.apply(self.cfg, self.iface, self.pin_base)
        log.info("%s: config applied: %s", self.iface, res.report)
        self._neighbours_done(res.neighbours, "start")

    def stop(self) -> None:
        """Leave the program attached with its maps (a restart or upgrade adopts it):
        forwarding goes on without this process. `bifrost xdp detach` takes it off."""
        log.info(
            "%s: stopping; the program stays attached (`bifrost xdp detach` takes it off)",
            self.iface,
        )

    # -- metrics -------------------------------------------------------------

    def collect(self) -> list[Metric]:
        """Per-rule, per-reason packet and byte counters, read at each scrape (the
        daemons' MetricsServer: an unreadable map costs only these families)."""
        with maps.MapSet.from_pins(loader.pin_dir_for(self.pin_base, self.iface)) as ms:
            cfg = self.cfg
            names = maps.rule_names(ms, cfg)
            counts = maps.counters(ms)
        rows = {
            (names.get(rid, f"#{rid}") if rid else "-", reason): c
            for (rid, reason), c in counts.items()
        }
        labels = ("rule", "reason")
        auth = {"auth": 1.0 if cfg.auth_keys else 0.0, "auth_keys": float(len(cfg.auth_keys))}
        return [
            *gauges("bifrost_xdp", auth, "1: FOU authenticated ([auth]); number of keys accepted"),
            labelled_counter(
                "bifrost_xdp_packets",
                "packets by forward rule (- : none) and why they ended where they did",
                labels,
                [(k, c.packets) for k, c in rows.items()],
            ),
            labelled_counter(
                "bifrost_xdp_bytes",
                "bytes by forward rule (- : none) and reason",
                labels,
                [(k, c.bytes) for k, c in rows.items()],
            ),
        ]

    # -- neighbours ----------------------------------------------------------

    def ensure(self, why: str) -> None:
        try:
            rep = loader.ensure_neighbours(self.cfg, self.iface, self.pin_base)
        except (OSError, NetlinkError) as e:
            # Transient (a device renamed or gone mid-call, netlink busy): dying would
            # only restart into the same state, so retry on the error schedule.
            log.error("re-installing the managed neighbours (%s) failed: %s", why, e)
            rep = loader.NeighbourReport(errors=(str(e),))
        self._neighbours_done(rep, why)

    def _neighbours_done(self, rep: loader.NeighbourReport, why: str) -> None:
        """Log the outcome when it differs from the last one (a periodic re-check that
        changes nothing stays quiet) and schedule the next check."""
        now = (rep.lines(), rep.errors)
        level = logging.INFO if now != self.last_neighbours or why != "re-check" else logging.DEBUG
        log.log(level, "neighbours (%s): %s", why, "; ".join(rep.lines()) or "none managed")
        self.last_neighbours = now
        # The loader has logged each error already.
        if rep.errors:
            self.next_check = time.monotonic() + self.retry_s
            self.retry_s = min(self.retry_s * 2, self.recheck_s)
        else:
            self.next_check = time.monotonic() + self.recheck_s
            self.retry_s = FIRST_RETRY_S

    def _seed_links(self) -> None:
        with IPRoute() as ipr:
            for link in ipr.get_links():
                self.link_running[link["index"]] = _running(link["flags"])

    def read_events(self, sock: socket.socket, marshal: MarshalRtnl) -> list[str]:
        """Drain the watch socket; why a re-install is due (empty: not due)."""
        recorded = set(loader.recorded_neighbours(self.iface, self.pin_base))
        reasons = []
        while True:
            try:
                data = sock.recv(1 << 16)
            except BlockingIOError:
                return reasons
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                reasons.append("netlink overrun, events lost")
                continue
            for msg in marshal.parse(data):
                event = msg.get("event")
                if event == "RTM_DELNEIGH":
                    try:
                        dev = socket.if_indextoname(msg["ifindex"])
                    except OSError:
                        continue  # the device is gone, and its entries with it
                    if (msg.get_attr("NDA_DST"), dev) in recorded:
                        reasons.append(f"neighbour {msg.get_attr('NDA_DST')} dev {dev} deleted")
                elif event == "RTM_NEWLINK":
                    running = _running(msg["flags"])
                    was = self.link_running.get(msg["index"])
                    self.link_running[msg["index"]] = running
                    if running and not was:
                        reasons.append(f"link {msg.get_attr('IFLA_IFNAME')} up")

    # -- reload --------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: re-read the config, apply it to the maps and the neighbours, log what
        changed. A bad file is reported and the running config kept."""
        try:
            new = load_config(self.config_path)
        except cfgmod.ConfigError as e:
            log.error("reload: %s; keeping the running config", e)
            return
        fixed = [k for k in NEEDS_RESTART if getattr(new, k) != getattr(self.cfg, k)]
        if self.iface_arg and "interface" in fixed:
            fixed.remove("interface")  # --iface overrides the file
        if fixed:
            for k in fixed:
                log.error(
                    "reload: xdp.%s changed (%s -> %s): that needs a restart "
                    "(systemctl restart bifrost-xdp); keeping the running config",
                    k,
                    getattr(self.cfg, k),
                    getattr(new, k),
                )
            return
        changes = config_changes(self.cfg, new)
        try:
            res = loader.apply(new, self.iface, self.pin_base)
        except (OSError, ValueError, RuntimeError, NetlinkError) as e:
            log.error("reload: applying %s failed: %s", self.config_path, e)
            return
        self.cfg = new
        for line in changes or ["nothing"]:
            log.info("reload: changed %s", line)
        log.info("reload: maps %s", res.report)
        self._neighbours_done(res.neighbours, "reload")

    # -- the loop ------------------------------------------------------------

    def run(self) -> int:
        """Start, then serve until SIGTERM/SIGINT; 0 after a clean stop."""
        # Signals arrive through a wakeup socket so select() sees them; each byte
        # read is a signal number. Set up before attaching: a SIGTERM during the
        # attach is then served (a clean stop) right after it, not lost.
        wake_r, wake_w = socket.socketpair()
        for s in (wake_r, wake_w):
            s.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno())
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda *_: None)
        # Watching starts before the attach so no deletion in between goes unseen.
        watch = _open_watch()
        marshal = MarshalRtnl()
        metrics = MetricsServer(self.cfg.metrics_address, self.cfg.metrics_port)
        metrics.add("xdp", self.collect)
        try:
            self._seed_links()
            self.start()
            metrics.start()
            sd_notify("READY=1")
            while True:
                timeout = max(0.0, self.next_check - time.monotonic())
                ready, _, _ = select.select([wake_r, watch], [], [], timeout)
                sigs = wake_r.recv(64) if wake_r in ready else b""
                if signal.SIGTERM in sigs or signal.SIGINT in sigs:
                    break
                if signal.SIGHUP in sigs:
                    sd_notify("RELOADING=1")
                    self.reload()
                    sd_notify("READY=1")
                reasons = self.read_events(watch, marshal) if watch in ready else []
                if reasons:
                    log.info("%s: re-installing the managed neighbours", "; ".join(reasons))
                    self.ensure("event")
                elif time.monotonic() >= self.next_check:
                    self.ensure("re-check")
        finally:
            metrics.close()
            signal.set_wakeup_fd(-1)
            for s in (wake_r, wake_w, watch):
                s.close()
        sd_notify("STOPPING=1")
        self.stop()
        return 0
