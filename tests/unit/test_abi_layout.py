"""ABI spec rules: no implicit padding, sizes a multiple of 8, sane types and ids."""

from __future__ import annotations

import pytest

from bifrost.abi.defs import DEVICES
from bifrost.abi.spec import Device, Field, Record, SpecError, layout, record_size

pytestmark = pytest.mark.unit


def _device(*records: Record) -> Device:
    return Device("t", "t", 0x54455354, 1, "test", records)


def test_implicit_padding_raises() -> None:
    # header is 16 bytes; a u8 then a u32 would need 3 bytes of padding
    rec = Record("bad", 1, "", (Field("a", "u8"), Field("b", "u32")))
    with pytest.raises(SpecError, match=r"t\.bad\.b: at offset 17, needs 4-byte alignment"):
        _device(rec)


def test_u64_after_u32_raises() -> None:
    rec = Record("bad", 1, "", (Field("a", "u32"), Field("b", "u64")))
    with pytest.raises(SpecError, match="b: at offset 20, needs 8-byte"):
        _device(rec)


def test_explicit_reserved_field_fixes_padding() -> None:
    rec = Record("ok", 1, "", (Field("a", "u8"), Field("reserved", "u8", 3), Field("b", "u32")))
    dev = _device(rec)
    offs = {f.name: off for f, off in layout(dev, rec)}
    assert offs == {
        "magic": 0, "version": 4, "type": 6, "length": 8, "flags": 12,
        "a": 16, "reserved": 17, "b": 20,
    }  # fmt: skip
    assert record_size(dev, rec) == 24


def test_size_not_multiple_of_8_raises() -> None:
    with pytest.raises(SpecError, match="size 20 is not a multiple of 8"):
        _device(Record("short", 1, "", (Field("a", "u32"),)))


def test_unknown_type_and_bad_count_raise() -> None:
    with pytest.raises(SpecError, match="unknown type 'i32'"):
        _device(Record("r", 1, "", (Field("a", "i32"), Field("b", "u32"))))
    with pytest.raises(SpecError, match="count must be >= 1"):
        _device(Record("r", 1, "", (Field("a", "u64", count=0),)))


def test_duplicate_type_ids_raise() -> None:
    rec = Record("r", 1, "", (Field("a", "u64"),))
    with pytest.raises(SpecError, match="duplicate record type ids"):
        _device(rec, Record("s", 1, "", (Field("a", "u64"),)))


@pytest.mark.parametrize("dev", DEVICES, ids=lambda d: d.name)
def test_real_devices_follow_the_rules(dev: Device) -> None:
    ids = [r.type_id for r in dev.records]
    assert {1, 2} <= set(ids), "INFO_REQUEST is type 1 and INFO_REPLY type 2 on every device"
    for r in dev.records:
        lay = layout(dev, r)
        assert [f.name for f, _ in lay[:5]] == ["magic", "version", "type", "length", "flags"]
        assert record_size(dev, r) % 8 == 0
        assert all(f.type in ("u8", "u16", "u32", "u64", "ipv4") for f, _ in lay)
