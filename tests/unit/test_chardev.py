"""The shared control-device client (bifrost.chardev) against a FIFO that plays the device.

A FIFO opened read-write hands back what was written to it, so a test writes
the records the "module" would answer with, then the client's own request
lands behind them: what a dump makes of that stream is what is checked.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from bifrost.abi import fou_map as abi
from bifrost.abi.runtime import AbiError
from bifrost.fou_map.control import FouMap

pytestmark = pytest.mark.unit


def _device(tmp_path: Path, *answers: abi.Record) -> FouMap:
    fifo = tmp_path / "fou_map"
    os.mkfifo(fifo)
    dev = FouMap(fifo)
    for rec in answers:
        os.write(dev.fd, rec.pack())
    return dev


def _entry(client: str, pop: str) -> abi.Entry:
    return abi.Entry(client=ipaddress.IPv4Address(client), pop=ipaddress.IPv4Address(pop))


def test_dump_returns_the_entries_up_to_dump_end_once_per_client(tmp_path: Path) -> None:
    moved = _entry("10.99.0.10", "10.41.2.1")  # a resize repeated it: the last one counts
    with _device(
        tmp_path,
        _entry("10.99.0.10", "10.41.1.1"),
        _entry("10.99.0.11", "10.41.1.1"),
        moved,
        abi.DumpEnd(),
    ) as dev:
        got = {str(e.client): str(e.pop) for e in dev.dump()}
    assert got == {"10.99.0.10": "10.41.2.1", "10.99.0.11": "10.41.1.1"}


def test_a_foreign_record_in_a_dump_is_an_abi_error(tmp_path: Path) -> None:
    # No DUMP_END queued: the next record read is the client's own DUMP_REQ.
    with (
        _device(tmp_path, _entry("10.99.0.10", "10.41.1.1")) as dev,
        pytest.raises(AbiError, match="unexpected DumpReq in a dump"),
    ):
        dev.dump()
