"""Typed access to /dev/fou_map: config, stats, dump, add/del/flush."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bifrost import chardev
from bifrost.abi import fou_map as abi

DEFAULT_DEVICE = "/dev/fou_map"
MISS_POLICIES = {"pass": abi.MISS_PASS, "drop": abi.MISS_DROP}


@dataclass(frozen=True)
class TableConfig:
    """What the module needs: FOU ports, idle timeout, table bound, miss policy, POP prefixes.

    pops: the prefixes ("198.51.100.0/24") FOU packets are accepted and learned from;
    none means the module drops every FOU packet (it learns from no one).
    """

    ports: tuple[int, ...] = ()
    idle_timeout_ms: int = abi.DEFAULT_IDLE_TIMEOUT_MS
    max_entries: int = abi.DEFAULT_MAX_ENTRIES
    miss_policy: str = "pass"
    pops: tuple[str, ...] = ()


def pack_pops(pops: Sequence[str]) -> tuple[bytes, bytes]:
    """CONFIG's pop_addrs (4 bytes each, network order) and pop_lens."""
    if len(pops) > abi.MAX_POPS:
        raise ValueError(f"at most {abi.MAX_POPS} POP prefixes, got {len(pops)}")
    nets = [ipaddress.IPv4Network(p) for p in pops]
    return b"".join(n.network_address.packed for n in nets), bytes(n.prefixlen for n in nets)


def pack_keys(keys: Sequence[bytes]) -> bytes:
    if len(keys) > abi.MAX_KEYS or any(len(k) != abi.KEY_SIZE for k in keys):
        raise ValueError(f"expected at most {abi.MAX_KEYS} keys of {abi.KEY_SIZE} bytes")
    return b"".join(keys)


@dataclass(frozen=True)
class MapEntry:
    client: ipaddress.IPv4Address
    pop: ipaddress.IPv4Address
    age_ms: int
    static: bool
    packets: int


@dataclass(frozen=True)
class TableStats:
    entries: int
    static_entries: int
    max_entries: int
    buckets: int
    entry_size: int
    created_ns: int
    table_bytes: int


class FouMap(chardev.Device):
    """One open of /dev/fou_map, bound by the kernel to the opener's netns."""

    def __init__(self, path: str | Path = DEFAULT_DEVICE) -> None:
        super().__init__(path, abi)

    def configure(self, cfg: TableConfig) -> None:
        if len(cfg.ports) > abi.MAX_PORTS:
            raise ValueError(f"at most {abi.MAX_PORTS} FOU ports, got {len(cfg.ports)}")
        pop_addrs, pop_lens = pack_pops(cfg.pops)
        self.send(
            abi.Config(
                n_ports=len(cfg.ports),
                idle_timeout_ms=cfg.idle_timeout_ms,
                max_entries=cfg.max_entries,
                miss_policy=MISS_POLICIES[cfg.miss_policy],
                ports=tuple(cfg.ports),
                n_pops=len(cfg.pops),
                pop_addrs=pop_addrs,
                pop_lens=pop_lens,
            )
        )

    def config(self) -> TableConfig:
        rec = self.call(abi.ConfigGet())
        policy = {v: k for k, v in MISS_POLICIES.items()}[rec.miss_policy]
        return TableConfig(
            ports=tuple(rec.ports[: rec.n_ports]),
            idle_timeout_ms=rec.idle_timeout_ms,
            max_entries=rec.max_entries,
            miss_policy=policy,
            pops=tuple(
                str(ipaddress.IPv4Network((rec.pop_addrs[4 * i : 4 * i + 4], rec.pop_lens[i])))
                for i in range(rec.n_pops)
            ),
        )

    def set_auth(self, keys: Sequence[bytes]) -> None:
        """Swap the whole key set at once: keys[0] is sent, all are accepted; () is auth off."""
        self.send(abi.Auth(n_keys=len(keys), keys=pack_keys(keys)))

    def auth(self) -> tuple[bytes, ...]:
        rec = self.call(abi.AuthGet())
        size = abi.KEY_SIZE
        return tuple(rec.keys[i * size : (i + 1) * size] for i in range(rec.n_keys))

    def stats(self) -> TableStats:
        rec = self.call(abi.StatsReq())
        return TableStats(
            entries=rec.entries,
            static_entries=rec.static_entries,
            max_entries=rec.max_entries,
            buckets=rec.buckets,
            entry_size=rec.entry_size,
            created_ns=rec.created_ns,
            table_bytes=rec.table_bytes,
        )

    def counters(self) -> dict[str, int]:
        counters: dict[str, int] = self.info()["counters"]
        return counters

    def dump(self) -> list[MapEntry]:
        """Every entry; a client repeated by a resize during the dump appears once."""
        seen: dict[ipaddress.IPv4Address, MapEntry] = {}
        for rec in self.dump_records(abi.Entry):
            seen[rec.client] = MapEntry(
                client=rec.client,
                pop=rec.pop,
                age_ms=rec.age_ms,
                static=bool(rec.entry_flags & abi.ENTRY_STATIC),
                packets=rec.packets,
            )
        return list(seen.values())

    def table(self) -> dict[str, str]:
        """client -> POP as strings: what tests and the lab compare."""
        return {str(e.client): str(e.pop) for e in self.dump()}

    def add(self, client: Any, pop: Any, static: bool = True, age_ms: int = 0) -> None:
        self.send(
            abi.Add(
                client=ipaddress.IPv4Address(client),
                pop=ipaddress.IPv4Address(pop),
                entry_flags=abi.ENTRY_STATIC if static else 0,
                age_ms=age_ms,
            )
        )

    def delete(self, client: Any) -> None:
        self.send(abi.Del(client=ipaddress.IPv4Address(client)))

    def flush(self, static: bool = False) -> None:
        self.send(abi.Flush(scope=abi.FLUSH_STATIC if static else 0))
