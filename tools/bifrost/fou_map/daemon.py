"""bifrost-foumapd: apply [fou_map], keep a snapshot of the table, restore it, serve metrics.

Runs in the game server's network namespace (the device binds to the opener's
netns). It opens /dev/fou_map for each cycle and closes it again, so the module
can be reloaded while the daemon runs; a reload is noticed by the netns state's
creation time changing (or by entries missing), and then the config and the
last snapshot are put back. systemd: Type=notify (READY=1 once applied). A
record the module refuses (a static entry it will never take) ends the daemon
with the key named, instead of retrying forever. Start-up, signals, notify and
metrics: ``bifrost.daemon``.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import ipaddress
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from prometheus_client.core import Metric

from bifrost import config as cfgmod
from bifrost.auth_config import AUTH_OFF_WARNING
from bifrost.chardev import DeviceError
from bifrost.config import ConfigError
from bifrost.daemon import Daemon, MetricsServer, counters, gauges
from bifrost.fou_map.config import DEFAULT_STATE, FouMapConfig
from bifrost.fou_map.control import FouMap, MapEntry

log = logging.getLogger("bifrost-foumapd")

SNAPSHOT_VERSION = 1


def write_snapshot(path: Path, entries: list[MapEntry], created_ns: int) -> None:
    """Atomically: a reader sees the old or the new snapshot, never half of one."""
    data = {
        "version": SNAPSHOT_VERSION,
        "taken": time.time(),
        "created_ns": created_ns,
        "entries": [
            {"client": str(e.client), "pop": str(e.pop), "static": e.static, "age_ms": e.age_ms}
            for e in entries
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")))
    os.replace(tmp, path)


def read_snapshot(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("%s: unreadable snapshot ignored: %s", path, e)
        return None
    if not isinstance(data, dict) or data.get("version") != SNAPSHOT_VERSION:
        log.warning("%s: snapshot of another version ignored", path)
        return None
    return data


class Refused(ConfigError):
    """The module refused part of the config: retrying cannot help, the config must change."""


# A write refused with these is about the record, not about the module being away.
_REFUSALS = (errno.EINVAL, errno.ENOSPC)


class FouMapDaemon(Daemon[FouMapConfig]):
    PROG = "bifrost-foumapd"
    SECTION = "fou_map"

    def __init__(self, cfg: FouMapConfig, args: argparse.Namespace, metrics: MetricsServer) -> None:
        super().__init__(cfg, args, metrics)
        self.state = Path(args.state) if args.state else cfg.state_file
        self.created_ns: int | None = None  # of the module instance we configured
        self.snapshot: dict[str, Any] | None = read_snapshot(self.state)
        self.lock = threading.Lock()  # one device user at a time
        metrics.add("fou_map", self.module_metrics)

    @classmethod
    def load(cls, path: Path) -> FouMapConfig:
        """[fou_map] with the host's [auth] attached: the keys go to the module too."""
        top = cfgmod.load(path)
        if top.fou_map is None:
            raise ConfigError(f"{path}: no [{cls.SECTION}] section")
        return dataclasses.replace(top.fou_map, auth=top.auth)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--state", help=f"snapshot file (default: {DEFAULT_STATE})")

    def open(self) -> FouMap:
        return FouMap(self.cfg.device)

    def apply(self, fm: FouMap) -> None:
        """Auth keys, config, static entries, and whatever of the snapshot is missing.

        The keys go first: once the config names the ports and POPs, packets are
        checked, and with keys configured none may pass unauthenticated meanwhile.
        """
        keys = self.cfg.auth.keys if self.cfg.auth else ()
        try:
            fm.set_auth(keys)
        except DeviceError as e:
            if e.errno in _REFUSALS:
                raise Refused(f"[auth] keys ({len(keys)}): {e}") from None
            raise
        try:
            fm.configure(self.cfg.table)
        except DeviceError as e:
            if e.errno in _REFUSALS:
                raise Refused(f"[{self.SECTION}] table settings {self.cfg.table}: {e}") from None
            raise
        for i, s in enumerate(self.cfg.static):
            try:
                fm.add(s.client, s.pop, static=True)
            except DeviceError as e:
                if e.errno in _REFUSALS:
                    raise Refused(
                        f"{self.SECTION}.static[{i}] = {{client = {str(s.client)!r}, "
                        f"pop = {str(s.pop)!r}}}: {e}"
                    ) from None
                raise
        restored = self.restore(fm)
        self.created_ns = fm.stats().created_ns
        log.info("applied config; restored %d entries", restored)

    def restore(self, fm: FouMap) -> int:
        snap = self.snapshot
        if not snap:
            return 0
        have = fm.table()
        elapsed_ms = max(0, int((time.time() - float(snap.get("taken", 0))) * 1000))
        timeout = self.cfg.table.idle_timeout_ms
        n = 0
        for item in snap.get("entries", []):
            try:
                client = ipaddress.IPv4Address(item["client"])
                pop = ipaddress.IPv4Address(item["pop"])
                static = bool(item["static"])
                age = int(item["age_ms"]) + elapsed_ms
            except (KeyError, TypeError, ValueError):
                continue
            if str(client) in have:
                continue  # the kernel knows better (it may have moved since)
            if not static and age >= timeout:
                continue  # it would have expired meanwhile
            try:
                fm.add(client, pop, static=static, age_ms=0 if static else age)
            except OSError as e:
                log.warning("restore %s -> %s: %s", client, pop, e)
                continue
            n += 1
        return n

    def cycle(self) -> None:
        """One pass: notice a reload (and repair), then snapshot."""
        with self.lock, self.open() as fm:
            stats = fm.stats()
            if stats.created_ns != self.created_ns:
                log.warning("fou_map state is new (module reloaded?): re-applying")
                self.apply(fm)
            entries = fm.dump()
            write_snapshot(self.state, entries, stats.created_ns)
            self.snapshot = read_snapshot(self.state)

    def module_metrics(self) -> list[Metric]:
        with self.lock, self.open() as fm:
            counters_now, st, keys = fm.counters(), fm.stats(), fm.auth()
        return [
            *counters("bifrost_fou_map", counters_now, "fou_map module counter"),
            *gauges("bifrost_fou_map", {n: getattr(st, n) for n in GAUGES}, "fou_map table"),
            *gauges(
                "bifrost_fou_map", {"auth_keys": len(keys)}, "accepted FOU auth keys (0: auth off)"
            ),
        ]

    def run(self) -> int:
        try:
            return self._run()
        except Refused as e:
            log.error("%s", e)
            self.stopping()
            return 2

    def _run(self) -> int:
        if self.cfg.auth is None:
            log.warning("%s", AUTH_OFF_WARNING)
        if not self.cfg.table.pops:
            log.warning(
                "%s.pops is empty: fou_map accepts FOU from no POP and learns nothing", self.SECTION
            )
        # The first apply must succeed before READY=1; wait for the module.
        while not self.stop.is_set():
            try:
                with self.lock, self.open() as fm:
                    self.apply(fm)
                break
            except OSError as e:
                log.warning("waiting for %s: %s", self.cfg.device, e)
                self.stop.wait(1.0)
        self.ready()
        while not self.stop.wait(self.cfg.snapshot_interval):
            try:
                self.cycle()
            except OSError as e:
                log.warning("cycle failed (module unloaded?): %s", e)
        self.stopping()
        try:
            self.cycle()  # the final snapshot
        except OSError as e:
            log.warning("final snapshot failed: %s", e)
        return 0


GAUGES = ("entries", "static_entries", "max_entries", "buckets", "table_bytes")

main = FouMapDaemon.main

if __name__ == "__main__":
    sys.exit(main())
