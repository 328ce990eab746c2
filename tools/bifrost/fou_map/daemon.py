"""bifrost-foumapd: apply [fou_map], keep a snapshot of the table, restore it, serve metrics.

Runs in the game server's network namespace (the device binds to the opener's
netns). It opens /dev/fou_map for each cycle and closes it again, so the module
can be reloaded while the daemon runs; a reload is noticed by the netns state's
creation time changing (or by entries missing), and then the config and the
last snapshot are put back. systemd: Type=notify (READY=1 once applied).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bifrost import config as cfgmod
from bifrost.fou_map import config as fmconfig
from bifrost.fou_map.control import FouMap, MapEntry
from bifrost.paths import DEFAULT_CONFIG
from bifrost.sdnotify import sd_notify

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


def metrics_text(counters: dict[str, int], stats: Any) -> str:
    lines = []
    for name, value in counters.items():
        metric = f"bifrost_fou_map_{name}_total"
        lines += [f"# TYPE {metric} counter", f"{metric} {value}"]
    for name in ("entries", "static_entries", "max_entries", "buckets", "table_bytes"):
        metric = f"bifrost_fou_map_{name}"
        lines += [f"# TYPE {metric} gauge", f"{metric} {getattr(stats, name)}"]
    return "\n".join(lines) + "\n"


class Daemon:
    def __init__(self, cfg: fmconfig.FouMapConfig, state: Path) -> None:
        self.cfg = cfg
        self.state = state
        self.stop = threading.Event()
        self.created_ns: int | None = None  # of the module instance we configured
        self.snapshot: dict[str, Any] | None = read_snapshot(state)
        self.lock = threading.Lock()  # one device user at a time

    def open(self) -> FouMap:
        return FouMap(self.cfg.device)

    def apply(self, fm: FouMap) -> None:
        """Config, static entries, and whatever of the snapshot is missing."""
        fm.configure(self.cfg.table)
        for s in self.cfg.static:
            fm.add(s.client, s.pop, static=True)
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

    def metrics(self) -> str:
        with self.lock, self.open() as fm:
            return metrics_text(fm.counters(), fm.stats())

    def serve_metrics(self) -> ThreadingHTTPServer | None:
        if not self.cfg.metrics_port:
            return None
        daemon = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path not in ("/metrics", "/"):
                    self.send_error(404)
                    return
                try:
                    body = daemon.metrics().encode()
                except OSError as e:
                    self.send_error(503, str(e))
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug(format, *args)

        server = ThreadingHTTPServer((self.cfg.metrics_address, self.cfg.metrics_port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def run(self) -> int:
        # The first apply must succeed before READY=1; wait for the module.
        while not self.stop.is_set():
            try:
                with self.lock, self.open() as fm:
                    self.apply(fm)
                break
            except OSError as e:
                log.warning("waiting for %s: %s", self.cfg.device, e)
                self.stop.wait(1.0)
        server = self.serve_metrics()
        sd_notify("READY=1")
        while not self.stop.wait(self.cfg.snapshot_interval):
            try:
                self.cycle()
            except OSError as e:
                log.warning("cycle failed (module unloaded?): %s", e)
        sd_notify("STOPPING=1")
        try:
            self.cycle()  # the final snapshot
        except OSError as e:
            log.warning("final snapshot failed: %s", e)
        if server:
            server.shutdown()
        return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bifrost-foumapd", description=__doc__.splitlines()[0])
    p.add_argument("-c", "--config", default=str(DEFAULT_CONFIG), help="host config file")
    p.add_argument("--state", help=f"snapshot file (default: {fmconfig.DEFAULT_STATE})")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def load_config(path: str) -> fmconfig.FouMapConfig:
    cfg = cfgmod.load(Path(path))
    if cfg.fou_map is None:
        raise cfgmod.ConfigError(f"{path}: no [fou_map] section")
    result: fmconfig.FouMapConfig = cfg.fou_map
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="bifrost-foumapd: %(message)s",
    )
    try:
        cfg = load_config(args.config)
    except cfgmod.ConfigError as e:
        print(f"bifrost-foumapd: {e}", file=sys.stderr)
        return 2
    daemon = Daemon(cfg, Path(args.state) if args.state else cfg.state_file)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: daemon.stop.set())
    return daemon.run()


if __name__ == "__main__":
    sys.exit(main())
