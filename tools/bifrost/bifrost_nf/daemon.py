"""bifrost-cached: keeps bifrost_nf's A2S cache filled from the real game servers.

Queries each configured game server for INFO / PLAYER / RULES (answering the
server's own challenge, collecting split answers), stores the answers in the
kernel, refreshes on a schedule and at once when the kernel asks (events,
de-duplicated), and removes a dead server's answers after the maximum
staleness so monitoring sees it offline. systemd Type=notify; Prometheus text
counters on 127.0.0.1:<metrics_port>/metrics.
"""

from __future__ import annotations

import argparse
import logging
import select
import signal
import socket
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from bifrost import config as cfgmod
from bifrost.bifrost_nf import a2s
from bifrost.bifrost_nf.config import CacheConfig, ServiceConfig
from bifrost.bifrost_nf.nf import CacheDevice
from bifrost.paths import DEFAULT_CONFIG
from bifrost.sdnotify import sd_notify

log = logging.getLogger("bifrost-cached")
KINDS = ("info", "player", "rules")


class FetchError(RuntimeError):
    """The game server did not give a usable answer."""


def fetch(server: tuple[str, int], kind: str, timeout: float) -> list[bytes]:
    """Ask a game server for one answer; return its packets as sent (split or not)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        chal: int | None = None
        for _ in range(3):
            s.sendto(a2s.request(kind, chal), server)
            try:
                first = s.recv(4096)
            except TimeoutError:
                raise FetchError(f"{server[0]}:{server[1]} {kind}: no answer") from None
            got = a2s.parse_challenge(first)
            if got is not None:
                chal = got
                continue
            packets = [first]
            if first[:4] == a2s.SPLIT:
                total = a2s.parse_split(first).total
                while len(packets) < total:
                    try:
                        packets.append(s.recv(4096))
                    except TimeoutError:
                        raise FetchError(f"{kind}: split answer incomplete") from None
            try:
                payload = a2s.join(packets)
            except a2s.A2SError as e:
                raise FetchError(f"{kind}: {e}") from None
            if len(payload) < 5 or payload[4] != a2s.RESPONSE_OF[kind]:
                raise FetchError(f"{kind}: unexpected answer type {payload[4:5].hex()}")
            return packets
        raise FetchError(f"{server[0]}:{server[1]} {kind}: server keeps sending challenges")


@dataclass
class ServiceState:
    cfg: ServiceConfig
    next_due: float = 0.0
    last_ok: float = field(default_factory=time.monotonic)
    last_fetch: dict[str, float] = field(default_factory=dict)
    removed: bool = False


class CacheDaemon:
    def __init__(self, cfg: CacheConfig, dev: CacheDevice) -> None:
        self.cfg = cfg
        self.dev = dev
        self.services = {(str(s.address), s.port): ServiceState(s) for s in cfg.services}
        self.stats: Counter[str] = Counter()
        self.stop = threading.Event()

    def setup(self) -> None:
        c = self.cfg
        self.dev.configure(c.rate_pps, c.rate_burst, c.rotate_s)
        for st in self.services.values():
            s = st.cfg
            self.dev.set_service(
                str(s.address), s.port, no_challenge=s.no_challenge, miss_pass=s.on_miss == "pass"
            )

    def refresh(self, st: ServiceState, kinds: tuple[str, ...] = KINDS) -> None:
        s = st.cfg
        now = time.monotonic()
        ok = 0
        for kind in kinds:
            st.last_fetch[kind] = now
            try:
                packets = fetch((str(s.server), s.server_port), kind, self.cfg.query_timeout_s)
            except FetchError as e:
                self.stats["fetch_failures"] += 1
                log.info("%s:%d: %s", s.address, s.port, e)
                continue
            self.dev.set_answer(
                str(s.address), s.port, kind, packets,
                ttl_ms=int(self.cfg.ttl_s * 1000), max_stale_ms=int(self.cfg.max_stale_s * 1000),
            )  # fmt: skip
            self.stats["answers_stored"] += 1
            ok += 1
        if ok:
            st.last_ok = time.monotonic()
            st.removed = False
        elif not st.removed and time.monotonic() - st.last_ok > self.cfg.max_stale_s:
            # a dead server must look offline, not frozen in its last state
            self.dev.del_answer(str(s.address), s.port)
            st.removed = True
            self.stats["services_removed"] += 1
            log.warning("%s:%d: game server silent, answers removed", s.address, s.port)

    def on_events(self) -> None:
        window = min(1.0, self.cfg.refresh_s / 2)
        for ev in self.dev.events():
            self.stats["events"] += 1
            st = self.services.get((str(ev.addr), ev.port))
            if st is None:
                continue
            if time.monotonic() - st.last_fetch.get(ev.qtype, 0.0) < window:
                self.stats["events_deduplicated"] += 1
                continue
            self.stats["event_refreshes"] += 1
            self.refresh(st, (ev.qtype,))

    def run_once(self) -> None:
        now = time.monotonic()
        for st in self.services.values():
            if now >= st.next_due:
                st.next_due = now + self.cfg.refresh_s
                self.stats["scheduled_refreshes"] += 1
                self.refresh(st)

    def run(self) -> None:
        poller = select.poll()
        poller.register(self.dev.fd, select.POLLIN)
        while not self.stop.is_set():
            self.run_once()
            due = min((st.next_due for st in self.services.values()), default=time.monotonic() + 1)
            wait = max(0.0, min(due - time.monotonic(), 1.0))
            if poller.poll(int(wait * 1000)):
                self.on_events()

    def metrics(self) -> str:
        lines = []
        for name, value in sorted(self.stats.items()):
            lines.append(f"# TYPE bifrost_cached_{name}_total counter")
            lines.append(f"bifrost_cached_{name}_total {value}")
        try:
            with CacheDevice(self.cfg.device) as dev:
                counters = dev.counters()
        except OSError:
            counters = {}
        for name, value in counters.items():
            lines.append(f"# TYPE bifrost_nf_{name}_total counter")
            lines.append(f"bifrost_nf_{name}_total {value}")
        lines.append("# TYPE bifrost_cached_services gauge")
        lines.append(f"bifrost_cached_services {len(self.services)}")
        return "\n".join(lines) + "\n"


def serve_metrics(daemon: CacheDaemon, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path not in ("/metrics", "/"):
                self.send_error(404)
                return
            body = daemon.metrics().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True, name="metrics").start()
    return httpd


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bifrost-cached", description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(name)s: %(message)s",
    )
    try:
        cfg = cfgmod.load(args.config).cache
    except cfgmod.ConfigError as e:
        print(f"bifrost-cached: {e}", file=sys.stderr)
        return 1
    if cfg is None:
        print(f"bifrost-cached: {args.config} has no [cache] section", file=sys.stderr)
        return 1
    try:
        dev = CacheDevice(cfg.device)
    except OSError as e:
        print(f"bifrost-cached: {e}", file=sys.stderr)
        return 1
    daemon = CacheDaemon(cfg, dev)

    def on_signal(*_: object) -> None:
        daemon.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    httpd = serve_metrics(daemon, cfg.metrics_port) if cfg.metrics_port else None
    try:
        daemon.setup()
        daemon.run_once()
        sd_notify("READY=1")
        log.info("ready: %d service(s)", len(daemon.services))
        daemon.run()
    finally:
        sd_notify("STOPPING=1")
        if httpd:
            httpd.shutdown()
        dev.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
