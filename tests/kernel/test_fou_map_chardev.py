"""/dev/fou_map: INFO, records, per-netns binding, 10,000 malformed records, clean unload."""

from __future__ import annotations

import errno
import ipaddress
import os
import random
import stat
import struct

import foumap_topology as topo
import pytest

import bifrost
from bifrost import netns
from bifrost.abi import fou_map as abi
from bifrost.fou_map.control import FouMap, TableConfig

pytestmark = pytest.mark.kernel

HDR = struct.Struct("<IHHII")
MAX_RECORD = abi.InfoReply.SIZE


@pytest.fixture(scope="module", autouse=True)
def module():
    topo.load()
    yield
    topo.unload()


@pytest.fixture
def ns():
    n = netns.Namespace("fmch")
    yield n
    n.close()


def hdr(rtype: int, length: int, magic: int = abi.MAGIC, version: int = abi.ABI_VERSION) -> bytes:
    return HDR.pack(magic, version, rtype, length, 0)


def write_errno(fd: int, data: bytes) -> int:
    try:
        os.write(fd, data)
    except OSError as e:
        return e.errno
    return 0


def test_device_node_is_root_only():
    st = os.stat(topo.DEV)
    assert stat.S_ISCHR(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600


def test_info_names_the_openers_netns(ns):
    with open_here() as fm:
        host = fm.info()
    with topo.open_in(ns) as fm:
        inner = fm.info()
    assert host["abi_version"] == abi.ABI_VERSION == inner["abi_version"]
    assert host["module_version"] == bifrost.__version__
    assert host["netns_inum"] == os.stat("/proc/self/ns/net").st_ino
    assert inner["netns_inum"] == os.stat(f"/run/netns/{ns.name}").st_ino
    assert inner["netns_inum"] != host["netns_inum"]
    assert set(inner["counters"]) == set(abi.COUNTERS)


def open_here() -> FouMap:
    return FouMap(topo.DEV)


def _pop(addr: str) -> bytes:
    return ipaddress.IPv4Address(addr).packed


# CONFIG pop fields the module refuses (EINVAL): each names what is wrong with it.
BAD_POPS = (
    {"n_pops": abi.MAX_POPS + 1},  # more than there is room for
    {"n_pops": 1, "pop_addrs": _pop("10.41.0.1"), "pop_lens": bytes([16])},  # host bits
    {"n_pops": 1, "pop_addrs": _pop("10.41.0.0"), "pop_lens": bytes([0])},  # /0: anyone
    {"n_pops": 1, "pop_addrs": _pop("10.41.0.0"), "pop_lens": bytes([33])},
    {"n_pops": 1, "pop_addrs": _pop("127.0.0.0"), "pop_lens": bytes([8])},  # martian
    {"n_pops": 1, "pop_addrs": _pop("224.0.0.0"), "pop_lens": bytes([4])},
    {"n_pops": 0, "pop_addrs": _pop("10.41.0.0"), "pop_lens": bytes([16])},  # unused, not 0
    {"n_pops": 1, "pop_addrs": _pop("10.41.0.0") * 2, "pop_lens": bytes([16, 0])},
    {"n_pops": 1, "pop_addrs": _pop("10.41.0.0"), "pop_lens": bytes([16]), "reserved": 1},
)


def test_config_roundtrip_and_validation(ns):
    with topo.open_in(ns) as fm:
        assert fm.config() == TableConfig()
        cfg = TableConfig(
            ports=(5555, 6080),
            idle_timeout_ms=2000,
            max_entries=10,
            miss_policy="drop",
            pops=("10.41.0.0/16", "192.0.2.7/32"),
        )
        fm.configure(cfg)
        assert fm.config() == cfg
        bad = [
            abi.Config(n_ports=9, idle_timeout_ms=1000, max_entries=1, ports=(1,) * 8),
            abi.Config(n_ports=1, idle_timeout_ms=99, max_entries=1, ports=(1,)),
            abi.Config(n_ports=1, idle_timeout_ms=1000, max_entries=0, ports=(1,)),
            abi.Config(
                n_ports=1, idle_timeout_ms=1000, max_entries=abi.MAX_ENTRIES_LIMIT + 1, ports=(1,)
            ),
            abi.Config(n_ports=1, idle_timeout_ms=1000, max_entries=1, miss_policy=2, ports=(1,)),
            abi.Config(n_ports=1, idle_timeout_ms=1000, max_entries=1, ports=(0,)),
            abi.Config(n_ports=1, idle_timeout_ms=1000, max_entries=1, ports=(1, 2)),
            *(
                abi.Config(n_ports=1, idle_timeout_ms=1000, max_entries=1, ports=(1,), **pops)
                for pops in BAD_POPS
            ),
        ]
        for rec in bad:
            assert write_errno(fm.fd, rec.pack()) == errno.EINVAL, rec
        assert fm.config() == cfg


def test_add_del_flush_dump(ns):
    with topo.open_in(ns) as fm:
        fm.add("10.99.0.1", "10.41.1.1")
        fm.add("10.99.0.2", "10.41.2.1", static=False, age_ms=500)
        entries = {str(e.client): e for e in fm.dump()}
        assert set(entries) == {"10.99.0.1", "10.99.0.2"}
        assert entries["10.99.0.1"].static and str(entries["10.99.0.1"].pop) == "10.41.1.1"
        assert not entries["10.99.0.2"].static and entries["10.99.0.2"].age_ms >= 500
        assert fm.stats().entries == 2 and fm.stats().static_entries == 1
        fm.add("10.99.0.2", "10.41.1.1")  # learned -> static, new POP
        assert fm.table()["10.99.0.2"] == "10.41.1.1"
        assert fm.stats().static_entries == 2
        assert (
            write_errno(fm.fd, abi.Del(client=ipaddress.IPv4Address("10.9.9.9")).pack())
            == errno.ENOENT
        )
        fm.delete("10.99.0.1")
        assert set(fm.table()) == {"10.99.0.2"}
        fm.flush()
        assert set(fm.table()) == {"10.99.0.2"}, "flush without scope keeps static entries"
        fm.flush(static=True)
        assert fm.table() == {}
        for bad_addr in ("0.0.0.0", "0.1.2.3", "224.0.0.1", "255.255.255.255", "127.0.0.1"):
            rec = abi.Add(
                client=ipaddress.IPv4Address(bad_addr), pop=ipaddress.IPv4Address("10.1.1.1")
            )
            assert write_errno(fm.fd, rec.pack()) == errno.EINVAL


def test_dump_spans_many_reads(ns):
    n = 3000  # more than one 64 KiB read of 40-byte records
    with topo.open_in(ns) as fm:
        fm.configure(TableConfig(max_entries=n))
        base = int(ipaddress.IPv4Address("10.50.0.0"))
        for i in range(n):
            fm.add(ipaddress.IPv4Address(base + i), "10.41.1.1", static=False)
        fm.send(abi.DumpReq())
        reads, entries, end = 0, 0, None
        while end is None:
            recs = fm.codec.decode_all(os.read(fm.fd, 4000))
            reads += 1
            for r in recs:
                if isinstance(r, abi.DumpEnd):
                    end = r
                else:
                    entries += 1
        assert reads > 10
        assert entries == n and end.count == n
        assert os.read(fm.fd, 4000) == b""
        fm.flush()


def test_replies_queue_bounded(ns):
    with topo.open_in(ns) as fm:
        req = abi.InfoReq().pack()
        results = [write_errno(fm.fd, req) for _ in range(20)]
        assert results[:16] == [0] * 16
        assert set(results[16:]) == {errno.ENOBUFS}
        got = fm.codec.decode_all(os.read(fm.fd, 1 << 16))
        assert len(got) == 16 and all(isinstance(r, abi.InfoReply) for r in got)
        assert os.read(fm.fd, 1 << 16) == b""


def malformed_records() -> list[tuple[bytes, int]]:
    """(record, expected errno) for every way a write can be wrong."""
    info = hdr(abi.InfoReq.TYPE, 16)
    add = abi.Add(client=ipaddress.IPv4Address("10.9.9.9"), pop=ipaddress.IPv4Address("10.1.1.1"))
    cases = [
        (b"", errno.EINVAL),
        (b"\x01" * 15, errno.EINVAL),
        (hdr(1, 16, magic=0xDEADBEEF), errno.EINVAL),
        (hdr(1, 16, version=abi.ABI_VERSION + 1), errno.EPROTO),
        (hdr(1, 16, version=abi.ABI_VERSION - 1), errno.EPROTO),
        (hdr(1, 16, version=0), errno.EPROTO),
        (hdr(99, 16), errno.EINVAL),
        (hdr(0, 16), errno.EINVAL),
        (
            hdr(abi.InfoReply.TYPE, abi.InfoReply.SIZE) + bytes(abi.InfoReply.SIZE - 16),
            errno.EINVAL,
        ),
        (hdr(abi.Entry.TYPE, abi.Entry.SIZE) + bytes(abi.Entry.SIZE - 16), errno.EINVAL),
        (hdr(abi.DumpEnd.TYPE, abi.DumpEnd.SIZE) + bytes(8), errno.EINVAL),
        (
            hdr(abi.StatsReply.TYPE, abi.StatsReply.SIZE) + bytes(abi.StatsReply.SIZE - 16),
            errno.EINVAL,
        ),
        (hdr(1, 17), errno.EINVAL),
        (info + b"\0" * 8, errno.EINVAL),
        (HDR.pack(abi.MAGIC, abi.ABI_VERSION, 1, 16, 1), errno.EINVAL),
        (add.pack()[:-1], errno.EINVAL),
        (add.pack() + b"\0" * 8, errno.EINVAL),
        (add.pack(flags=2), errno.EINVAL),
        (abi.Add(client=add.client, pop=add.pop, entry_flags=4).pack(), errno.EINVAL),
        (abi.Add(client=add.client, pop=add.pop, entry_flags=1, age_ms=5).pack(), errno.EINVAL),
        (abi.Del(client=add.client, reserved=1).pack(), errno.EINVAL),
        (abi.Flush(scope=2).pack(), errno.EINVAL),
        (abi.Flush(reserved=7).pack(), errno.EINVAL),
        (bytes(MAX_RECORD + 1), errno.E2BIG),
        (b"\xff" * (1 << 16), errno.E2BIG),
    ]
    rng = random.Random(1234)
    valid = [
        abi.InfoReq().pack(),
        abi.ConfigGet().pack(),
        abi.StatsReq().pack(),
        add.pack(),
        abi.Del(client=add.client).pack(),
    ]
    while len(cases) < 10_000:
        kind = rng.randrange(6)
        if kind == 0:  # random bytes
            n = rng.randrange(0, MAX_RECORD + 1)
            data = rng.randbytes(n)
            if len(data) >= 4 and data[:4] == struct.pack("<I", abi.MAGIC):
                continue
            cases.append((data, errno.EINVAL))
        elif kind == 1:  # truncated valid record
            rec = rng.choice(valid)
            cases.append((rec[: rng.randrange(0, len(rec))], errno.EINVAL))
        elif kind == 2:  # bad magic
            rec = bytearray(rng.choice(valid))
            rec[rng.randrange(4)] ^= 1 + rng.randrange(255)
            cases.append((bytes(rec), errno.EINVAL))
        elif kind == 3:  # bad version
            rec = bytearray(rng.choice(valid))
            v = rng.choice([v for v in (0, 1, 2, 3, 0xFFFF) if v != abi.ABI_VERSION])
            rec[4:6] = struct.pack("<H", v)
            cases.append((bytes(rec), errno.EPROTO))
        elif kind == 4:  # bad type or length field
            rec = bytearray(rng.choice(valid))
            if rng.random() < 0.5:
                rec[6:8] = struct.pack("<H", rng.choice([0, 2, 6, 8, 9, 15, 200, 0xFFFF]))
            else:
                rec[8:12] = struct.pack("<I", len(rec) + rng.choice([-8, -1, 1, 8, 4096]))
            cases.append((bytes(rec), errno.EINVAL))
        else:  # oversize
            cases.append(
                (rng.randbytes(rng.randrange(MAX_RECORD + 1, 3 * MAX_RECORD)), errno.E2BIG)
            )
    return cases


def test_ten_thousand_malformed_records_get_errnos(ns):
    cases = malformed_records()
    assert len(cases) >= 10_000
    before = topo.dmesg()
    with topo.open_in(ns) as fm:
        fm.add("10.99.0.77", "10.41.1.1")
        bad0 = fm.counters()["bad_writes"]
        wrong = []
        for data, want in cases:
            got = write_errno(fm.fd, data)
            if got != want:
                wrong.append((data[:24].hex(), len(data), want, got))
        assert not wrong, f"{len(wrong)} records got the wrong errno, e.g. {wrong[:5]}"
        info = fm.info()
        assert info["counters"]["bad_writes"] - bad0 == len(cases)
        assert os.read(fm.fd, 1 << 16) == b"", "malformed writes queued no reply"
        assert fm.table() == {"10.99.0.77": "10.41.1.1"}, "malformed writes changed nothing"
        fm.flush(static=True)
    after = topo.dmesg()[len(before) :]
    assert not topo.kernel_trouble(after), after


K1, K2, K3 = bytes.fromhex("0123456789abcdef"), bytes(range(1, 9)), b"\xff" * 8


def test_auth_keys_roundtrip_and_validation(ns):
    """AUTH swaps the whole set; every malformed record is EINVAL and changes nothing."""
    with topo.open_in(ns) as fm:
        assert fm.auth() == (), "auth is off until keys are set"
        fm.set_auth((K1,))
        assert fm.auth() == (K1,)
        fm.set_auth((K2, K1, K3))
        assert fm.auth() == (K2, K1, K3)
        bad = [
            abi.Auth(n_keys=abi.MAX_KEYS + 1, keys=(K1 + K2 + K3 + bytes(range(9, 17)))),
            abi.Auth(n_keys=1, keys=bytes(8)),  # the all-zero key
            abi.Auth(n_keys=2, keys=K1 + K1),  # the same key twice
            abi.Auth(n_keys=1, keys=K1 + K2),  # an unused key not zero
            abi.Auth(n_keys=1, keys=K1, reserved=1),
        ]
        bad_writes = fm.counters()["bad_writes"]
        for rec in bad:
            assert write_errno(fm.fd, rec.pack()) == errno.EINVAL, rec
        assert fm.auth() == (K2, K1, K3), "a refused AUTH changed nothing"
        assert fm.counters()["bad_writes"] == bad_writes + len(bad)
        fm.set_auth(())
        assert fm.auth() == ()


def test_unload_and_reload_with_state():
    """Entries, files in other netns: unload frees everything, reload starts empty."""
    n = netns.Namespace("fmul")
    try:
        with topo.open_in(n) as fm:
            fm.configure(TableConfig(ports=(5555,)))
            for i in range(100):
                fm.add(f"10.60.0.{i + 1}", "10.41.1.1", static=bool(i % 2))
        topo.unload()
        assert not topo.loaded()
        topo.load()
        with topo.open_in(n) as fm:
            assert fm.table() == {}
            assert fm.config() == TableConfig()
    finally:
        n.close()
    assert not topo.kernel_trouble(topo.dmesg())
