"""bifrost-cached: keeps bifrost_nf's A2S cache filled from the real game servers.

Queries each configured game server for INFO / PLAYER / RULES (answering the
server's own challenge, collecting split answers), stores the answers in the
kernel, refreshes on a schedule and at once when the kernel asks (events,
de-duplicated), and removes a dead server's answers after the maximum
staleness so monitoring sees it offline. systemd Type=notify; Prometheus
counters on <metrics_address>:<metrics_port>/metrics (start-up, signals, notify and
metrics: ``bifrost.daemon``).
"""

from __future__ import annotations

import argparse
import logging
import select
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Self

from prometheus_client.core import Metric

from bifrost.bifrost_nf import a2s
from bifrost.bifrost_nf.config import CacheConfig, ServiceConfig
from bifrost.bifrost_nf.nf import CacheDevice
from bifrost.daemon import Daemon, MetricsServer, counters, gauges

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


class CacheDaemon(Daemon[CacheConfig]):
    PROG = "bifrost-cached"
    SECTION = "cache"

    def __init__(
        self,
        cfg: CacheConfig,
        args: argparse.Namespace,
        metrics: MetricsServer,
        dev: CacheDevice,
    ) -> None:
        super().__init__(cfg, args, metrics)
        self.dev = dev
        self.services = {(str(s.address), s.port): ServiceState(s) for s in cfg.services}
        self.stats: Counter[str] = Counter()
        metrics.add("bifrost-cached", self.own_metrics)
        metrics.add("bifrost_nf", self.module_metrics)

    @classmethod
    def create(cls, cfg: CacheConfig, args: argparse.Namespace, metrics: MetricsServer) -> Self:
        return cls(cfg, args, metrics, CacheDevice(cfg.device))

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

    def serve(self) -> None:
        poller = select.poll()
        poller.register(self.dev.fd, select.POLLIN)
        while not self.stop.is_set():
            self.run_once()
            due = min((st.next_due for st in self.services.values()), default=time.monotonic() + 1)
            wait = max(0.0, min(due - time.monotonic(), 1.0))
            if poller.poll(int(wait * 1000)):
                self.on_events()

    def run(self) -> int:
        try:
            self.setup()
            self.run_once()
            self.ready()
            log.info("ready: %d service(s)", len(self.services))
            self.serve()
        finally:
            self.stopping()
            self.dev.close()
        return 0

    def own_metrics(self) -> list[Metric]:
        return [
            *counters("bifrost_cached", dict(sorted(self.stats.items())), "bifrost-cached"),
            *gauges("bifrost_cached", {"services": len(self.services)}, "bifrost-cached"),
        ]

    def module_metrics(self) -> list[Metric]:
        # A fresh open: the daemon's own descriptor is busy with events.
        with CacheDevice(self.cfg.device) as dev:
            return counters("bifrost_nf", dev.counters(), "bifrost_nf module counter")


main = CacheDaemon.main

if __name__ == "__main__":
    sys.exit(main())
