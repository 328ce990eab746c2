"""Talking to a Bifrost control device: one record per write(), replies by read()."""

from __future__ import annotations

import errno
import os
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self, TypeVar

from bifrost.abi.runtime import AbiError, Record

# A read() must have room for the largest record a device sends back.
READ_SIZE = 1 << 16

R = TypeVar("R", bound=Record)


class DeviceError(OSError):
    """A device refused a record; the message says which record and why."""


class Device:
    """An open control device, bound by the kernel to the opener's netns."""

    def __init__(self, path: str | Path, codec: types.ModuleType) -> None:
        self.path = Path(path)
        self.codec = codec
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise DeviceError(
                errno.ENOENT,
                f"{self.path} does not exist: is the module loaded? (modprobe {self.path.name})",
            ) from None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fileno(self) -> int:
        return self.fd

    def send(self, rec: Record | bytes) -> None:
        data = rec if isinstance(rec, bytes) else rec.pack()
        try:
            os.write(self.fd, data)
        except OSError as e:
            name = type(rec).__name__ if not isinstance(rec, bytes) else "raw record"
            raise DeviceError(e.errno, f"{self.path}: {name} refused: {e.strerror}") from None

    def recv(self) -> list[Record]:
        """One read(): the whole records the device had ready (empty at end of a dump)."""
        return self.codec.decode_all(os.read(self.fd, READ_SIZE))

    def call(self, rec: Record) -> Any:
        """Send a request and return its single reply."""
        self.send(rec)
        replies = self.recv()
        if len(replies) != 1:
            raise AbiError(f"{type(rec).__name__}: expected one reply, got {len(replies)}")
        return replies[0]

    def dump_records(self, item: type[R]) -> Iterator[R]:
        """Send DUMP_REQ and yield the item records read back until DUMP_END.

        A dump spans several read()s; ending without DUMP_END, or any other
        record in between, is an ABI error rather than a short or mixed dump.
        """
        self.send(self.codec.DumpReq())
        while True:
            recs = self.recv()
            if not recs:
                raise AbiError(f"{self.path}: dump ended without a DUMP_END record")
            for rec in recs:
                if isinstance(rec, self.codec.DumpEnd):
                    return
                if not isinstance(rec, item):
                    raise AbiError(f"{self.path}: unexpected {type(rec).__name__} in a dump")
                yield rec

    def info(self) -> dict[str, Any]:
        reply = self.call(self.codec.InfoReq())
        return {
            "abi_version": reply.abi_version,
            "module_version": reply.module_version.split(b"\0", 1)[0].decode(),
            "netns_inum": reply.netns_inum,
            "counters": dict(
                zip(self.codec.COUNTERS, reply.counters[: reply.n_counters], strict=False)
            ),
        }
