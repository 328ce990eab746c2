"""Schema of the [cache] section: bifrost_nf and bifrost-cached."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from bifrost.config_schema import ConfigError, Reader


@dataclass(frozen=True)
class ServiceConfig:
    address: ipaddress.IPv4Address  # what clients query (the POP's service address)
    port: int
    server: ipaddress.IPv4Address  # the game server the daemon queries
    server_port: int
    no_challenge: bool  # answer A2S_INFO without a challenge
    on_miss: str  # "drop" or "pass" when no usable answer is cached


@dataclass(frozen=True)
class CacheConfig:
    device: str
    refresh_s: float
    ttl_s: float
    max_stale_s: float
    query_timeout_s: float
    rate_pps: int
    rate_burst: int
    rotate_s: int
    metrics_address: str
    metrics_port: int  # 0: no metrics endpoint
    services: tuple[ServiceConfig, ...]


def _service(sec: Reader) -> ServiceConfig:
    address = sec.ipv4("address")
    port = sec.port("port")
    svc = ServiceConfig(
        address=address,
        port=port,
        server=sec.ipv4("server", str(address)),
        server_port=sec.port("server_port", port),
        no_challenge=sec.boolean("no_challenge", False),
        on_miss=sec.string("on_miss", "drop", choices=("drop", "pass")),
    )
    sec.done()
    return svc


def parse(sec: Reader) -> CacheConfig:
    refresh = sec.number("refresh_s", 5.0, lo=0.1)
    cfg = CacheConfig(
        device=sec.string("device", "/dev/bifrost_nf"),
        refresh_s=refresh,
        ttl_s=sec.number("ttl_s", 2 * refresh, lo=0.1),
        max_stale_s=sec.number("max_stale_s", 30.0, lo=0.0),
        query_timeout_s=sec.number("query_timeout_s", 1.0, lo=0.05),
        rate_pps=sec.integer("rate_pps", 20, lo=0, hi=10_000_000),
        rate_burst=sec.integer("rate_burst", 40, lo=1, hi=1_000_000),
        rotate_s=sec.integer("rotate_s", 60, lo=1, hi=86400),
        metrics_address=str(sec.ipv4("metrics_address", "127.0.0.1")),
        metrics_port=sec.integer("metrics_port", 9117, lo=0, hi=65535),
        services=tuple(_service(s) for s in sec.tables("service")),
    )
    seen = set()
    for i, s in enumerate(cfg.services):
        key = (s.address, s.port)
        if key in seen:
            raise ConfigError(f"cache.service[{i}]: {s.address}:{s.port} is configured twice")
        seen.add(key)
    if len(cfg.services) > 64:
        raise ConfigError(f"cache.service: {len(cfg.services)} services, the module holds 64")
    sec.done()
    return cfg
