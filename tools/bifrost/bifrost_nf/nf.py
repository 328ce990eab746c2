"""/dev/bifrost_nf from Python: services, cached answers, secret, config, dump, events."""

from __future__ import annotations

import ipaddress
import os
import select
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bifrost.abi import bifrost_nf as codec
from bifrost.chardev import Device

DEFAULT_PATH = Path("/dev/bifrost_nf")
QTYPES = {"info": codec.QT_INFO, "player": codec.QT_PLAYER, "rules": codec.QT_RULES}
QTYPE_NAMES = {v: k for k, v in QTYPES.items()}
REASONS = {codec.EV_STALE: "stale", codec.EV_MISSING: "missing"}


@dataclass(frozen=True)
class CachedAnswer:
    qtype: str
    bytes: int
    packets: int
    ttl_ms: int
    max_stale_ms: int
    age_ms: int


@dataclass(frozen=True)
class ServiceState:
    addr: ipaddress.IPv4Address
    port: int
    no_challenge: bool
    miss_pass: bool
    answers: tuple[CachedAnswer, ...]


@dataclass(frozen=True)
class Event:
    addr: ipaddress.IPv4Address
    port: int
    qtype: str
    reason: str


class CacheDevice(Device):
    """An open /dev/bifrost_nf, bound to the opener's netns."""

    def __init__(self, path: str | Path = DEFAULT_PATH) -> None:
        super().__init__(path, codec)

    def set_service(
        self, addr: str, port: int, no_challenge: bool = False, miss_pass: bool = False
    ) -> None:
        flags = (codec.SVC_F_NO_CHALLENGE if no_challenge else 0) | (
            codec.SVC_F_MISS_PASS if miss_pass else 0
        )
        self.send(codec.ServiceSet(addr=ipaddress.IPv4Address(addr), port=port, svc_flags=flags))

    def del_service(self, addr: str, port: int) -> None:
        self.send(codec.ServiceDel(addr=ipaddress.IPv4Address(addr), port=port))

    def set_answer(
        self,
        addr: str,
        port: int,
        qtype: str,
        packets: list[bytes],
        ttl_ms: int,
        max_stale_ms: int,
    ) -> None:
        """Store a (possibly split) answer: its packets, each a full UDP payload."""
        if not 1 <= len(packets) <= codec.MAX_PACKETS:
            raise ValueError(f"{len(packets)} packets, room for 1..{codec.MAX_PACKETS}")
        for i, pkt in enumerate(packets):
            if not 1 <= len(pkt) <= codec.PAYLOAD_MAX:
                raise ValueError(f"packet {i}: {len(pkt)} bytes, room for {codec.PAYLOAD_MAX}")
            self.send(
                codec.EntrySet(
                    addr=ipaddress.IPv4Address(addr),
                    port=port,
                    qtype=QTYPES[qtype],
                    index=i,
                    count=len(packets),
                    length=len(pkt),
                    ttl_ms=ttl_ms,
                    max_stale_ms=max_stale_ms,
                    payload=pkt.ljust(codec.PAYLOAD_MAX, b"\0"),
                )
            )

    def del_answer(self, addr: str, port: int, qtype: str | None = None) -> None:
        q = QTYPES[qtype] if qtype else 0
        self.send(codec.EntryDel(addr=ipaddress.IPv4Address(addr), port=port, qtype=q))

    def flush(self) -> None:
        self.send(codec.Flush())

    def rotate(self) -> None:
        self.send(codec.Rotate())

    def configure(self, rate_pps: int, rate_burst: int, rotate_s: int) -> None:
        self.send(codec.ConfigSet(rate_pps=rate_pps, rate_burst=rate_burst, rotate_s=rotate_s))

    def dump(self) -> list[ServiceState]:
        out: list[ServiceState] = []
        for rec in self.dump_records(codec.ServiceInfo):
            answers = tuple(
                CachedAnswer(
                    QTYPE_NAMES[i + 1],
                    rec.bytes[i],
                    rec.packets[i],
                    rec.ttl_ms[i],
                    rec.max_stale_ms[i],
                    rec.age_ms[i],
                )
                for i in range(3)
                if rec.packets[i]
            )
            out.append(
                ServiceState(
                    rec.addr,
                    rec.port,
                    bool(rec.svc_flags & codec.SVC_F_NO_CHALLENGE),
                    bool(rec.svc_flags & codec.SVC_F_MISS_PASS),
                    answers,
                )
            )
        return out

    def events(self, timeout: float | None = 0) -> list[Event]:
        """Pending refresh requests; wait up to timeout seconds (None: forever) for one."""
        if timeout != 0:
            poller = select.poll()
            poller.register(self.fd, select.POLLIN)
            if not poller.poll(None if timeout is None else int(timeout * 1000)):
                return []
        out = []
        for rec in codec.decode_all(os.read(self.fd, 64 * codec.Event.SIZE)):
            if isinstance(rec, codec.Event):
                out.append(
                    Event(rec.addr, rec.port, QTYPE_NAMES.get(rec.qtype, "?"), REASONS[rec.reason])
                )
        return out

    def counters(self) -> dict[str, Any]:
        return dict(self.info()["counters"])
