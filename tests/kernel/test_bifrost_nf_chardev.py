"""/dev/bifrost_nf: INFO, per-netns binding, 10,000 malformed records, clean unload."""

from __future__ import annotations

import errno
import ipaddress
import os
import random
import stat
import struct

import cache_env
import pytest

import bifrost
from bifrost import netns
from bifrost.abi import bifrost_nf as codec
from bifrost.bifrost_nf.nf import CacheDevice

pytestmark = pytest.mark.kernel

HDR = struct.Struct("<IHHII")


@pytest.fixture(scope="module", autouse=True)
def module():
    cache_env.load()
    yield
    cache_env.unload()


def hdr(rtype: int, length: int, magic: int = codec.MAGIC, version: int = codec.ABI_VERSION):
    return HDR.pack(magic, version, rtype, length, 0)


def malformed_records() -> list[tuple[bytes, int]]:
    """(record, expected errno) for every way a write can be wrong."""
    info = hdr(codec.InfoReq.TYPE, 16)
    svc = codec.ServiceSet(addr=ipaddress.IPv4Address("10.9.9.9"), port=27015).pack()
    entry = codec.EntrySet(
        addr=ipaddress.IPv4Address("10.9.9.9"),
        port=27015,
        qtype=1,
        index=0,
        count=1,
        length=10,
        ttl_ms=1000,
        payload=b"x" * codec.PAYLOAD_MAX,
    )
    cases = [
        (b"", errno.EINVAL),
        (b"\x01" * 15, errno.EINVAL),
        (hdr(1, 16, magic=0xDEADBEEF), errno.EINVAL),
        (hdr(1, 16, version=2), errno.EPROTO),
        (hdr(1, 16, version=0), errno.EPROTO),
        (hdr(99, 16), errno.EINVAL),
        (hdr(0, 16), errno.EINVAL),
        (hdr(codec.InfoReply.TYPE, codec.InfoReply.SIZE) + bytes(560), errno.EINVAL),
        (hdr(codec.Event.TYPE, codec.Event.SIZE) + bytes(8), errno.EINVAL),
        (hdr(1, 17), errno.EINVAL),
        (info + b"\0" * 8, errno.EINVAL),
        (HDR.pack(codec.MAGIC, codec.ABI_VERSION, 1, 16, 1), errno.EINVAL),
        (svc[:20], errno.EINVAL),
        (b"\0" * (codec.EntrySet.SIZE + 1), errno.E2BIG),
        (b"\xff" * 65536, errno.E2BIG),
        (svc[:8] + struct.pack("<I", 0) + svc[12:], errno.EINVAL),
        (svc[:20] + struct.pack("<HH", 0, 0), errno.EINVAL),  # port 0
        (svc[:20] + struct.pack("<HH", 27015, 0x80), errno.EINVAL),  # unknown flag
        (entry.pack()[:-8], errno.EINVAL),
    ]
    bad_entries = [
        {"qtype": 0},
        {"qtype": 4},
        {"count": 0},
        {"count": codec.MAX_PACKETS + 1},
        {"index": 1},
        {"length": 0},
        {"length": codec.PAYLOAD_MAX + 1},
        {"ttl_ms": 0},
        {"reserved0": 1},
    ]
    for change in bad_entries:
        rec = codec.EntrySet(**{**entry.__dict__, **change})
        cases.append((rec.pack(), errno.EINVAL))
    cases.append((codec.ConfigSet(rate_pps=10, rate_burst=10, rotate_s=0).pack(), errno.EINVAL))
    cases.append((codec.ConfigSet(rate_pps=10, rate_burst=0, rotate_s=5).pack(), errno.EINVAL))
    cases.append((codec.EntryDel(addr=ipaddress.IPv4Address("10.1.1.1"), port=1).pack(),
                  errno.ENOENT))  # fmt: skip
    cases.append((codec.ServiceDel(addr=ipaddress.IPv4Address("10.1.1.1"), port=1).pack(),
                  errno.ENOENT))  # fmt: skip
    return cases


def test_device_node_is_root_only():
    st = os.stat(cache_env.DEV)
    assert stat.S_ISCHR(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600


def test_info_answers_with_versions_and_netns():
    with CacheDevice() as dev:
        info = dev.info()
    assert info["abi_version"] == codec.ABI_VERSION
    assert info["module_version"] == bifrost.__version__
    assert info["netns_inum"] == os.stat("/proc/self/ns/net").st_ino
    assert set(info["counters"]) == set(codec.COUNTERS)


def test_10000_malformed_records_get_errnos():
    before_dmesg = cache_env.dmesg()
    cases = malformed_records()
    with CacheDevice() as dev:
        start = dev.counters()["bad_writes"]
        seen: dict[int, int] = {}
        for i in range(10_000):
            data, want = cases[i % len(cases)]
            with pytest.raises(OSError) as exc:
                os.write(dev.fd, data)
            assert exc.value.errno == want, (i % len(cases), data[:24].hex())
            seen[want] = seen.get(want, 0) + 1
        info = dev.info()
    assert info["counters"]["bad_writes"] - start == 10_000
    assert {errno.EINVAL, errno.EPROTO, errno.E2BIG, errno.ENOENT} <= set(seen)
    new = cache_env.dmesg()[len(before_dmesg) :]
    assert cache_env.kernel_trouble(new) == []


def test_partial_answer_is_not_published_and_bad_sequence_refused():
    with CacheDevice() as dev:
        dev.set_service("10.9.8.7", 27016)
        rec = codec.EntrySet(
            addr=ipaddress.IPv4Address("10.9.8.7"), port=27016, qtype=3, index=0, count=3,
            length=100, ttl_ms=1000, payload=b"y" * codec.PAYLOAD_MAX,
        )  # fmt: skip
        dev.send(rec)
        with pytest.raises(OSError) as exc:
            dev.send(codec.EntrySet(**{**rec.__dict__, "index": 2}))  # skipped packet 1
        assert exc.value.errno == errno.EINVAL
        [svc] = [s for s in dev.dump() if s.port == 27016]
        assert svc.answers == ()
        dev.set_answer("10.9.8.7", 27016, "rules", [b"a" * 1400, b"b" * 7], 1000, 2000)
        [svc] = [s for s in dev.dump() if s.port == 27016]
        [ans] = svc.answers
        assert (ans.qtype, ans.packets, ans.bytes, ans.ttl_ms) == ("rules", 2, 1407, 1000)
        dev.del_service("10.9.8.7", 27016)
        assert 27016 not in {s.port for s in dev.dump()}


def test_state_is_per_netns():
    with (
        netns.Namespace("bfnf-iso") as other,
        CacheDevice() as here,
        cache_env.open_in(other) as there,
    ):
        here.set_service("10.5.5.5", 27017)
        there.set_service("10.6.6.6", 27018)
        assert there.info()["netns_inum"] != here.info()["netns_inum"]
        # each dump holds its own service and not the other's
        assert {s.port for s in there.dump()} == {27018}
        here_ports = {s.port for s in here.dump()}
        assert 27017 in here_ports and 27018 not in here_ports
        here.del_service("10.5.5.5", 27017)


def test_unload_and_reload_clean():
    cache_env.unload()
    assert not cache_env.DEV.exists()
    cache_env.load()
    with CacheDevice() as dev:
        assert dev.info()["counters"]["bad_writes"] == 0


def _valid_records() -> list[codec.Record]:  # type: ignore[name-defined]
    a = ipaddress.IPv4Address("10.9.9.9")
    return [
        codec.InfoReq(),
        codec.DumpReq(),
        codec.Flush(),
        codec.Rotate(),
        codec.ServiceSet(addr=a, port=27015),
        codec.ServiceDel(addr=a, port=27015),
        codec.EntryDel(addr=a, port=27015, qtype=1),
        codec.ConfigSet(rate_pps=10, rate_burst=20, rotate_s=60),
        codec.EntrySet(
            addr=a,
            port=27015,
            qtype=1,
            index=0,
            count=1,
            length=10,
            ttl_ms=1000,
            payload=b"x" * codec.PAYLOAD_MAX,
        ),
    ]


# Field values that make a well-formed record invalid: (record type, field, value).
_BAD_FIELDS = [
    (codec.ServiceSet, "port", 0),
    (codec.ServiceSet, "addr", ipaddress.IPv4Address("0.0.0.0")),
    (codec.ServiceSet, "svc_flags", 4),
    (codec.ServiceSet, "svc_flags", 0x8000),
    (codec.ServiceDel, "reserved", 1),
    (codec.EntryDel, "qtype", 4),
    (codec.EntryDel, "reserved", 9),
    (codec.ConfigSet, "rotate_s", 0),
    (codec.ConfigSet, "rotate_s", 86401),
    (codec.ConfigSet, "rate_pps", 10_000_001),
    (codec.ConfigSet, "rate_burst", 0),
    (codec.ConfigSet, "rate_burst", 1_000_001),
    (codec.ConfigSet, "reserved", 1),
    (codec.EntrySet, "qtype", 0),
    (codec.EntrySet, "qtype", 4),
    (codec.EntrySet, "count", 0),
    (codec.EntrySet, "count", codec.MAX_PACKETS + 1),
    (codec.EntrySet, "index", 1),
    (codec.EntrySet, "length", 0),
    (codec.EntrySet, "length", codec.PAYLOAD_MAX + 1),
    (codec.EntrySet, "ttl_ms", 0),
    (codec.EntrySet, "reserved0", 1),
    (codec.EntrySet, "reserved1", 1),
    (codec.EntrySet, "port", 0),
]
# Types no writer may send (replies, events, unknown); never a valid request type.
_NOT_REQUESTS = [0, codec.InfoReply.TYPE, codec.ServiceInfo.TYPE, codec.DumpEnd.TYPE,
                 codec.Event.TYPE, 14, 200, 0xFFFF]  # fmt: skip


def mutated_records(n: int, seed: int = 11) -> list[tuple[bytes, int]]:
    """n records, each one valid record broken by one mutation, with the errno it must get."""
    rng = random.Random(seed)
    valid = _valid_records()
    out: list[tuple[bytes, int]] = []
    while len(out) < n:
        rec = rng.choice(valid)
        data = bytearray(rec.pack())
        kind = rng.randrange(8)
        if kind == 0:  # magic
            data[rng.randrange(4)] ^= 1 << rng.randrange(8)
            want = errno.EINVAL
        elif kind == 1:  # ABI version
            data[4:6] = struct.pack("<H", rng.choice([0, 2, 3, 0x100, 0xFFFF]))
            want = errno.EPROTO
        elif kind == 2:  # type
            data[6:8] = struct.pack("<H", rng.choice(_NOT_REQUESTS))
            want = errno.EINVAL
        elif kind == 3:  # length field disagrees with the write
            data[8:12] = struct.pack("<I", len(data) + rng.choice([-9, -1, 1, 4, 1 << 20]))
            want = errno.EINVAL
        elif kind == 4:  # header flags
            data[12:16] = struct.pack("<I", 1 << rng.randrange(32))
            want = errno.EINVAL
        elif kind == 5:  # truncated
            data = data[: rng.randrange(len(data))]
            want = errno.EINVAL
        elif kind == 6:  # extended
            extra = rng.choice([1, 8, codec.EntrySet.SIZE])
            data += rng.randbytes(extra)
            want = errno.E2BIG if len(data) > codec.EntrySet.SIZE else errno.EINVAL
        else:  # one field out of range
            typ, field, value = rng.choice(_BAD_FIELDS)
            base = next(r for r in valid if isinstance(r, typ))
            data = bytearray(typ(**{**base.__dict__, field: value}).pack())
            want = errno.EINVAL
        out.append((bytes(data), want))
    return out


def _state(dev: CacheDevice) -> list[tuple[object, ...]]:
    """What the netns holds, without the ages (which move with time)."""
    return sorted(
        (str(s.addr), s.port, s.no_challenge, s.miss_pass,
         tuple((a.qtype, a.bytes, a.packets, a.ttl_ms, a.max_stale_ms) for a in s.answers))
        for s in dev.dump()
    )  # fmt: skip


def test_mutated_records_get_errnos_and_change_nothing():
    """Issue 14: 10,000 records made by mutating valid ones; after EACH, the reply queue
    is empty (read() returns nothing) and the dump is what it was before."""
    cases = mutated_records(10_000)
    before_dmesg = cache_env.dmesg()
    with CacheDevice() as dev:
        dev.set_service("10.9.9.9", 27015)
        dev.set_answer("10.9.9.9", 27015, "info", [b"i" * 50], 60_000, 1000)
        dev.set_service("10.9.9.8", 27016, no_challenge=True)
        state0 = _state(dev)
        assert len(state0) == 2 and any(svc[4] for svc in state0), "the state checked is not empty"
        c0 = dev.counters()
        wrong, changed = [], []
        for i, (data, want) in enumerate(cases):
            try:
                os.write(dev.fd, data)
                got = 0
            except OSError as e:
                got = e.errno
            if got != want:
                wrong.append((i, data[:20].hex(), len(data), want, got))
            leftover = os.read(dev.fd, 1 << 16)
            if leftover or _state(dev) != state0:
                changed.append((i, data[:20].hex(), len(leftover)))
        c1 = dev.counters()
        # an accepted record may have deleted them: the asserts below say which
        for svc in ("10.9.9.9", 27015), ("10.9.9.8", 27016):
            if any((str(s.addr), s.port) == svc for s in dev.dump()):
                dev.del_service(*svc)
    assert not wrong, f"{len(wrong)} wrong errnos, e.g. {wrong[:5]}"
    assert not changed, f"{len(changed)} writes changed state, e.g. {changed[:5]}"
    assert c1["bad_writes"] - c0["bad_writes"] == len(cases)
    assert c1["rotations"] == c0["rotations"] and c1["entries_set"] == c0["entries_set"]
    new = cache_env.dmesg()[len(before_dmesg) :]
    assert cache_env.kernel_trouble(new) == []
