"""What the bifrost daemons share: command line, config, logging, signals, sd_notify, metrics.

``bifrost-cached`` (``bifrost.bifrost_nf.daemon``) and ``bifrost-foumapd``
(``bifrost.fou_map.daemon``) subclass ``Daemon``: each names its program and
config section, builds itself from the typed section, and implements
``run()``; ``Daemon.main`` does the rest the same way for both (``-c`` must
name an existing file, a bad config exits 2 naming key and value, SIGTERM and
SIGINT set ``stop``, READY=1 / STOPPING=1 to systemd, the metrics listener is
closed on the way out).

Metrics go through prometheus-client. A daemon, or any other long-running
process such as the XDP service, makes a ``MetricsServer`` and adds
*collect* functions to it; each is called at every scrape and returns metric
families built from the counters it reads then (usually from the kernel)::

    server = MetricsServer("127.0.0.1", 9470)
    server.add("xdp", lambda: [
        labelled_counter("bifrost_xdp_packets", "packets by rule and reason",
                         ("rule", "reason"), [((rule, reason), n) for ...]),
    ])
    server.start()      # nothing is served when the port is 0
    ...
    server.close()

A collect function that raises OSError (device gone, module unloaded) costs
only its own families: the scrape still answers, with
``bifrost_metrics_source_up{source="xdp"} 0``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import ClassVar, Generic, Protocol, Self, TypeVar
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bifrost import config as cfgmod
from bifrost.paths import DEFAULT_CONFIG
from bifrost.sdnotify import sd_notify


class SectionConfig(Protocol):
    """What the base needs of a daemon's config section."""

    @property
    def metrics_address(self) -> str: ...

    @property
    def metrics_port(self) -> int: ...  # 0: no metrics listener


C = TypeVar("C", bound=SectionConfig)  # the daemon's typed config section
CollectFn = Callable[[], Iterable[Metric]]
log = logging.getLogger(__name__)


def counters(prefix: str, values: Mapping[str, float], doc: str) -> list[Metric]:
    """One counter family per name: ``{prefix}_{name}_total``."""
    return [
        CounterMetricFamily(f"{prefix}_{name}", f"{doc}: {name}", v) for name, v in values.items()
    ]


def gauges(prefix: str, values: Mapping[str, float], doc: str) -> list[Metric]:
    """One gauge family per name: ``{prefix}_{name}``."""
    return [
        GaugeMetricFamily(f"{prefix}_{name}", f"{doc}: {name}", v) for name, v in values.items()
    ]


def labelled_counter(
    name: str, doc: str, labels: Sequence[str], rows: Iterable[tuple[Sequence[str], float]]
) -> Metric:
    """One counter family with labels, e.g. packets by (rule, reason): ``{name}_total{...}``."""
    family = CounterMetricFamily(name, doc, labels=labels)
    for label_values, value in rows:
        family.add_metric(list(label_values), value)
    return family


class _Sources(Collector):
    """The registered collect functions, each isolated from the others' failures."""

    def __init__(self) -> None:
        self.sources: dict[str, CollectFn] = {}

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "bifrost_metrics_source_up", "1 if the source could be read", labels=["source"]
        )
        for name, fn in self.sources.items():
            try:
                families = list(fn())
            except OSError as e:
                log.warning("metrics: %s unreadable: %s", name, e)
                up.add_metric([name], 0)
                continue
            up.add_metric([name], 1)
            yield from families
        yield up


class MetricsServer:
    """A Prometheus /metrics listener with its own registry (no process-wide state)."""

    def __init__(self, address: str, port: int) -> None:
        self.address = address
        self.port = port  # 0: serve nothing
        self._sources = _Sources()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self._sources)
        self._httpd: WSGIServer | None = None

    def add(self, source: str, collect: CollectFn) -> None:
        """Call ``collect`` at each scrape; ``source`` labels bifrost_metrics_source_up."""
        self._sources.sources[source] = collect

    def start(self) -> None:
        if self.port and self._httpd is None:
            self._httpd, _ = start_http_server(self.port, self.address, self.registry)

    def close(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None


class Daemon(Generic[C]):
    """Base of a bifrost daemon run by systemd (Type=notify)."""

    PROG: ClassVar[str]  # program, log and unit name, e.g. "bifrost-foumapd"
    SECTION: ClassVar[str]  # config section it needs, e.g. "fou_map" (a field of Config)

    def __init__(self, cfg: C, args: argparse.Namespace, metrics: MetricsServer) -> None:
        self.cfg = cfg
        self.args = args
        self.metrics = metrics
        self.stop = threading.Event()

    # -- what a subclass provides --------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Options beyond -c/--config and -v/--verbose."""

    @classmethod
    def create(cls, cfg: C, args: argparse.Namespace, metrics: MetricsServer) -> Self:
        """Build the daemon; OSError (e.g. its device cannot be opened) ends start-up."""
        return cls(cfg, args, metrics)

    def run(self) -> int:
        """Work until ``stop`` is set; call ready() once serving, stopping() when leaving."""
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------
    def ready(self) -> None:
        self.metrics.start()
        sd_notify("READY=1")

    def stopping(self) -> None:
        sd_notify("STOPPING=1")

    @classmethod
    def parser(cls) -> argparse.ArgumentParser:
        doc = sys.modules[cls.__module__].__doc__ or cls.PROG
        p = argparse.ArgumentParser(prog=cls.PROG, description=doc.strip().splitlines()[0])
        p.add_argument(
            "-c", "--config", type=Path, default=DEFAULT_CONFIG,
            help=f"host config file (default: {DEFAULT_CONFIG})",
        )  # fmt: skip
        p.add_argument("-v", "--verbose", action="store_true", help="log each step")
        cls.add_arguments(p)
        return p

    @classmethod
    def load(cls, path: Path) -> C:
        """The daemon's section of the config file, or ConfigError naming what is wrong."""
        section: C | None = getattr(cfgmod.load(path), cls.SECTION)
        if section is None:
            raise cfgmod.ConfigError(f"{path}: no [{cls.SECTION}] section")
        return section

    @classmethod
    def main(cls, argv: Sequence[str] | None = None) -> int:
        args = cls.parser().parse_args(argv)
        logging.basicConfig(
            level=logging.INFO if args.verbose else logging.WARNING,
            format=f"{cls.PROG}: %(message)s",
        )
        try:
            cfg = cls.load(args.config)
        except cfgmod.ConfigError as e:
            print(f"{cls.PROG}: {e}", file=sys.stderr)
            return 2
        metrics = MetricsServer(cfg.metrics_address, cfg.metrics_port)
        try:
            daemon = cls.create(cfg, args, metrics)
        except OSError as e:
            print(f"{cls.PROG}: {e}", file=sys.stderr)
            return 1
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: daemon.stop.set())
        try:
            return daemon.run()
        finally:
            metrics.close()
