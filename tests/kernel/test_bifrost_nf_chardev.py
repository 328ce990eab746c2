"""/dev/bifrost_nf: INFO, per-netns binding, 10,000 malformed records, clean unload."""

from __future__ import annotations

import errno
import ipaddress
import os
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
        assert all(s.port != 27016 for s in dev.dump())


def test_state_is_per_netns():
    with (
        netns.Namespace("bfnf-iso") as other,
        CacheDevice() as here,
        cache_env.open_in(other) as there,
    ):
        here.set_service("10.5.5.5", 27017)
        assert there.info()["netns_inum"] != here.info()["netns_inum"]
        assert all(s.port != 27017 for s in there.dump())
        there.set_service("10.6.6.6", 27018)
        assert all(s.port != 27018 for s in here.dump())
        assert any(s.port == 27017 for s in here.dump())
        here.del_service("10.5.5.5", 27017)


def test_unload_and_reload_clean():
    cache_env.unload()
    assert not cache_env.DEV.exists()
    cache_env.load()
    with CacheDevice() as dev:
        assert dev.info()["counters"]["bad_writes"] == 0
