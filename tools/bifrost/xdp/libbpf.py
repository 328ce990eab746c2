"""A small ctypes binding to libbpf.so.1: load objects, maps, XDP attach, test runs."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Self

XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
BPF_ANY = 0
BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1

XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = range(5)
ACTIONS = {0: "ABORTED", 1: "DROP", 2: "PASS", 3: "TX", 4: "REDIRECT"}


class BpfError(OSError):
    """A libbpf call failed; errno and the call are in the message."""


class _TestRunOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


# The ABI this binding is written against: libbpf 1.x (bpf_xdp_attach, bpf_link_create
# with XDP, bpf_object__open_file without the 0.x compat flags). A libbpf.so.0 (0.x)
# has another ABI for some of these calls, so only the .so.1 soname is loaded.
SONAME = "libbpf.so.1"
MIN_VERSION = (1, 0)
INSTALL_HINT = "apt-get install libbpf1"

BPF_XDP = 37  # enum bpf_attach_type
BPF_LINK_TYPE_XDP = 6
BPF_F_REPLACE = 1 << 2
BPF_F_MMAPABLE = 1 << 10
BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_PERCPU_ARRAY = 1, 2, 6
BPF_MAP_TYPE_LRU_HASH, BPF_MAP_TYPE_LPM_TRIE = 9, 11


def _load() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(SONAME, use_errno=True)
    except OSError as e:
        raise BpfError(f"cannot load {SONAME} ({e}): {INSTALL_HINT}") from None
    for fn in ("libbpf_major_version", "libbpf_minor_version"):
        getattr(lib, fn).restype = ctypes.c_uint32
        getattr(lib, fn).argtypes = []
    have = (lib.libbpf_major_version(), lib.libbpf_minor_version())
    if have[0] != MIN_VERSION[0] or have < MIN_VERSION:
        raise BpfError(
            f"{SONAME} is libbpf {have[0]}.{have[1]}; bifrost needs "
            f"{MIN_VERSION[0]}.x >= {MIN_VERSION[0]}.{MIN_VERSION[1]}: {INSTALL_HINT}"
        )
    vp, i, u32, cp = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_char_p
    sigs: dict[str, tuple[object, list[object]]] = {
        "bpf_object__open_file": (vp, [cp, vp]),
        "bpf_object__load": (i, [vp]),
        "bpf_object__close": (None, [vp]),
        "bpf_object__find_program_by_name": (vp, [vp, cp]),
        "bpf_object__next_map": (vp, [vp, vp]),
        "bpf_map__name": (cp, [vp]),
        "bpf_map__fd": (i, [vp]),
        "bpf_map__type": (u32, [vp]),
        "bpf_map__key_size": (u32, [vp]),
        "bpf_map__value_size": (u32, [vp]),
        "bpf_map__max_entries": (u32, [vp]),
        "bpf_map__map_flags": (u32, [vp]),
        "bpf_map__reuse_fd": (i, [vp, i]),
        "bpf_program__fd": (i, [vp]),
        "bpf_obj_pin": (i, [i, cp]),
        "bpf_obj_get": (i, [cp]),
        "bpf_obj_get_info_by_fd": (i, [i, vp, ctypes.POINTER(u32)]),
        "bpf_prog_get_fd_by_id": (i, [u32]),
        "bpf_map_update_elem": (i, [i, vp, vp, ctypes.c_uint64]),
        "bpf_map_lookup_elem": (i, [i, vp, vp]),
        "bpf_map_delete_elem": (i, [i, vp]),
        "bpf_map_get_next_key": (i, [i, vp, vp]),
        "bpf_map_lookup_batch": (i, [i, vp, vp, vp, vp, ctypes.POINTER(u32), vp]),
        "bpf_map_create": (i, [u32, cp, u32, u32, u32, vp]),
        "bpf_prog_test_run_opts": (i, [i, ctypes.POINTER(_TestRunOpts)]),
        "bpf_xdp_attach": (i, [i, i, u32, vp]),
        "bpf_xdp_detach": (i, [i, u32, vp]),
        "bpf_xdp_query_id": (i, [i, i, ctypes.POINTER(u32)]),
        "bpf_link_create": (i, [i, i, u32, vp]),
        "bpf_link_update": (i, [i, i, vp]),
        "bpf_link_detach": (i, [i]),
        "libbpf_num_possible_cpus": (i, []),
    }
    for fn, (res, args) in sigs.items():
        f = getattr(lib, fn)
        f.restype = res
        f.argtypes = args
    return lib


def version() -> tuple[int, int]:
    """The loaded libbpf's (major, minor)."""
    return lib().libbpf_major_version(), lib().libbpf_minor_version()


_lib: ctypes.CDLL | None = None


def lib() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        _lib = _load()
    return _lib


def _check(rc: int, what: str) -> int:
    if rc < 0:
        err = -rc if rc != -1 else ctypes.get_errno()
        raise BpfError(err, f"{what}: {os.strerror(err)}")
    return rc


def num_cpus() -> int:
    return _check(lib().libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")


@dataclass(frozen=True)
class MapDef:
    """What the kernel says a map is (or an object file says it will be)."""

    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int

    def differences(self, other: MapDef) -> list[str]:
        """Each field that differs, as "field: self -> other"."""
        out = []
        for f in ("type", "key_size", "value_size", "max_entries", "flags"):
            a, b = getattr(self, f), getattr(other, f)
            if a != b:
                out.append(f"{f} {a} -> {b}")
        return out


class BpfObject:
    """A BPF object file: its programs and maps by name.

    BpfObject(path) opens and loads it. BpfObject(path, load=False) only opens
    it: map_defs() then says what it would create, reuse() hands a map an
    existing one (a pinned map kept across an upgrade), and load() loads it.
    """

    def __init__(self, path: str | os.PathLike[str], load: bool = True) -> None:
        self.path = path
        self._obj = lib().bpf_object__open_file(os.fsencode(path), None)
        if not self._obj:
            err = ctypes.get_errno()
            raise BpfError(err, f"open {path}: {os.strerror(err)}")
        if load:
            self.load()

    def _maps(self) -> Iterator[tuple[str, int]]:
        m = lib().bpf_object__next_map(self._obj, None)
        while m:
            name = lib().bpf_map__name(m).decode()
            if not name.startswith(".") and ".rodata" not in name and ".bss" not in name:
                yield name, m  # .rodata/.bss/.data: libbpf's own, not ours to manage
            m = lib().bpf_object__next_map(self._obj, m)

    def map_defs(self) -> dict[str, MapDef]:
        out = {}
        for name, m in self._maps():
            out[name] = MapDef(
                name,
                lib().bpf_map__type(m),
                lib().bpf_map__key_size(m),
                lib().bpf_map__value_size(m),
                lib().bpf_map__max_entries(m),
                lib().bpf_map__map_flags(m),
            )
        return out

    def reuse(self, name: str, fd: int) -> None:
        """Use the map behind fd (dup'ed by libbpf) instead of creating map name at load."""
        for n, m in self._maps():
            if n == name:
                _check(lib().bpf_map__reuse_fd(m, fd), f"reuse map {name}")
                return
        raise BpfError(errno.ENOENT, f"no map {name!r} in {self.path}")

    def load(self) -> None:
        rc = lib().bpf_object__load(self._obj)
        if rc < 0:
            lib().bpf_object__close(self._obj)
            self._obj = None
            _check(rc, f"load {self.path} (the verifier log is above)")

    def prog_fd(self, name: str) -> int:
        prog = lib().bpf_object__find_program_by_name(self._obj, name.encode())
        if not prog:
            raise BpfError(2, f"no program {name!r} in the object")
        return _check(lib().bpf_program__fd(prog), f"fd of {name}")

    def map_fds(self) -> dict[str, int]:
        """The loaded maps' fds, owned by the object (closed with it)."""
        return {n: _check(lib().bpf_map__fd(m), f"fd of map {n}") for n, m in self._maps()}

    def close(self) -> None:
        if self._obj:
            lib().bpf_object__close(self._obj)
            self._obj = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def pin(fd: int, path: str) -> None:
    _check(lib().bpf_obj_pin(fd, path.encode()), f"pin {path}")


def get_pinned(path: str) -> int:
    """A new fd for a pinned object; the caller closes it."""
    return _check(lib().bpf_obj_get(path.encode()), f"open pinned {path}")


def _info(fd: int, size: int, what: str) -> bytes:
    buf = ctypes.create_string_buffer(size)
    n = ctypes.c_uint32(size)
    _check(lib().bpf_obj_get_info_by_fd(fd, buf, ctypes.byref(n)), f"info of {what}")
    return buf.raw


def map_info(fd: int) -> MapDef:
    """The kernel's view of a map (struct bpf_map_info)."""
    raw = _info(fd, 88, "map")
    t, _id, k, v, n, f = struct.unpack_from("=6I", raw)
    return MapDef(raw[24:40].split(b"\0", 1)[0].decode(), t, k, v, n, f)


@dataclass(frozen=True)
class ProgInfo:
    id: int
    tag: bytes  # sha of the instructions with map references masked: same code, same tag
    name: str


def prog_info(fd: int) -> ProgInfo:
    raw = _info(fd, 232, "program")  # struct bpf_prog_info
    return ProgInfo(
        struct.unpack_from("=I", raw, 4)[0], raw[8:16], raw[64:80].split(b"\0")[0].decode()
    )


def prog_fd_by_id(prog_id: int) -> int:
    return _check(lib().bpf_prog_get_fd_by_id(prog_id), f"program id {prog_id}")


@dataclass(frozen=True)
class LinkInfo:
    type: int
    id: int
    prog_id: int
    ifindex: int  # XDP links: the device; 0 once the link is detached (defunct)


def link_info(fd: int) -> LinkInfo:
    raw = _info(fd, 48, "link")  # struct bpf_link_info
    t, lid, prog = struct.unpack_from("=3I", raw)
    return LinkInfo(t, lid, prog, struct.unpack_from("=I", raw, 16)[0])


class _LinkCreateOpts(ctypes.Structure):
    # The head of struct bpf_link_create_opts; libbpf reads only sz bytes of it.
    _fields_ = [("sz", ctypes.c_size_t), ("flags", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


class _LinkUpdateOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("flags", ctypes.c_uint32),
        ("old_prog_fd", ctypes.c_uint32),
        ("old_map_fd", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    ]


def xdp_link_create(prog_fd: int, ifindex: int, flags: int) -> int:
    """A bpf_link attaching prog_fd to ifindex (XDP_FLAGS_*_MODE in flags); its fd.

    The kernel refuses (EBUSY) when a program is attached without a link: a
    link never replaces someone else's program.
    """
    opts = _LinkCreateOpts(ctypes.sizeof(_LinkCreateOpts), flags, 0)
    return _check(
        lib().bpf_link_create(prog_fd, ifindex, BPF_XDP, ctypes.byref(opts)),
        f"XDP link on ifindex {ifindex}",
    )


def link_update(link_fd: int, new_prog_fd: int, old_prog_fd: int | None = None) -> None:
    """Swap the link's program in one step; with old_prog_fd, only if that one is
    still the link's (EPERM otherwise): no packet runs without a program."""
    opts = _LinkUpdateOpts(ctypes.sizeof(_LinkUpdateOpts), 0, 0, 0, 0)
    if old_prog_fd is not None:
        opts.flags, opts.old_prog_fd = BPF_F_REPLACE, old_prog_fd
    _check(lib().bpf_link_update(link_fd, new_prog_fd, ctypes.byref(opts)), "XDP link update")


def link_detach(link_fd: int) -> None:
    _check(lib().bpf_link_detach(link_fd), "XDP link detach")


def map_create(map_type: int, name: str, key_size: int, value_size: int, max_entries: int) -> int:
    """A new map outside any object (control-plane state); its fd."""
    return _check(
        lib().bpf_map_create(map_type, name.encode(), key_size, value_size, max_entries, None),
        f"create map {name}",
    )


@dataclass
class Map:
    """A map by fd with fixed key/value sizes (value_size: per CPU for per-CPU maps)."""

    fd: int
    key_size: int
    value_size: int
    percpu: bool = False
    owned: bool = False  # close() closes fd (a pin opened for it), else its object does
    mmapable: bool = False  # BPF_F_MMAPABLE array: nonzero() reads it through mmap

    def close(self) -> None:
        if self.owned and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    @property
    def _value_buf_size(self) -> int:
        if not self.percpu:
            return self.value_size
        return ((self.value_size + 7) // 8 * 8) * num_cpus()

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        assert len(key) == self.key_size, (len(key), self.key_size)
        if self.percpu:
            value = value * num_cpus()
        assert len(value) == self._value_buf_size
        _check(lib().bpf_map_update_elem(self.fd, key, value, flags), "map update")

    def update_raw(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        """update() with value as lookup() returns it (per-CPU maps: every CPU's)."""
        assert len(key) == self.key_size and len(value) == self._value_buf_size
        _check(lib().bpf_map_update_elem(self.fd, key, value, flags), "map update")

    def lookup(self, key: bytes) -> bytes | None:
        """The value; per-CPU maps: every CPU's value, concatenated."""
        buf = ctypes.create_string_buffer(self._value_buf_size)
        rc = lib().bpf_map_lookup_elem(self.fd, key, buf)
        if rc < 0:
            err = ctypes.get_errno() if rc == -1 else -rc
            if err == 2:
                return None
            _check(rc, "map lookup")
        return buf.raw

    def lookup_percpu(self, key: bytes) -> list[bytes]:
        raw = self.lookup(key) or b""
        step = (self.value_size + 7) // 8 * 8
        return [raw[i : i + self.value_size] for i in range(0, len(raw), step)]

    def delete(self, key: bytes) -> bool:
        rc = lib().bpf_map_delete_elem(self.fd, key)
        if rc < 0:
            err = ctypes.get_errno() if rc == -1 else -rc
            if err == 2:
                return False
            _check(rc, "map delete")
        return True

    def keys(self) -> Iterator[bytes]:
        prev = None
        nxt = ctypes.create_string_buffer(self.key_size)
        while True:
            rc = lib().bpf_map_get_next_key(self.fd, prev, nxt)
            if rc < 0:
                return
            key = nxt.raw
            yield key
            prev = ctypes.create_string_buffer(key, self.key_size)

    def array_values(self, count: int, start: int = 0) -> bytes:
        """Values start..start+count-1 of an array map, concatenated, in one batch syscall."""
        assert not self.percpu
        keys = ctypes.create_string_buffer(count * self.key_size)
        values = ctypes.create_string_buffer(count * self.value_size)
        cursor = ctypes.create_string_buffer(8)
        # The batch resumes after its in_batch key: start - 1 (none to start at 0).
        prev = ctypes.create_string_buffer(struct.pack("=I", start - 1), 8) if start else None
        n = ctypes.c_uint32(count)
        rc = lib().bpf_map_lookup_batch(self.fd, prev, cursor, keys, values, ctypes.byref(n), None)
        err = 0 if rc >= 0 else (ctypes.get_errno() if rc == -1 else -rc)
        if err and err != errno.ENOENT:
            _check(-err, "map batch lookup")
        if n.value != count:
            raise BpfError(errno.EIO, f"array batch read {n.value} of {count} entries")
        return values.raw

    def mapped_values(self, count: int, start: int = 0) -> bytes:
        """Values start..start+count-1 of a BPF_F_MMAPABLE array, read through mmap(2):
        no copy per element in the kernel. Elements lie 8-byte aligned (elem_size)."""
        stride = (self.value_size + 7) // 8 * 8
        size = (start + count) * stride
        length = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE
        with mmap.mmap(self.fd, length, mmap.MAP_SHARED, mmap.PROT_READ) as mm:
            return mm[start * stride : size]

    def nonzero(self, count: int, start: int = 0) -> dict[int, bytes]:
        """{index: value} of an array map's entries that are not all zero ("empty").

        The scan for non-zero bytes runs in C (re), so a sparse 131072-slot
        array costs one syscall (or an mmap) and a few milliseconds, not a
        Python loop per slot.
        """
        if self.mmapable:
            raw = self.mapped_values(count, start)
            stride = (self.value_size + 7) // 8 * 8
        else:
            raw = self.array_values(count, start)
            stride = self.value_size
        vs = self.value_size
        out: dict[int, bytes] = {}
        block = 256 * stride  # compared whole (memcmp) first: most of a table is empty
        zero = bytes(block)
        for base in range(0, len(raw), block):
            chunk = raw[base : base + block]
            if chunk == zero[: len(chunk)]:
                continue
            for m in re.finditer(rb"[^\x00]+", chunk):
                for idx in range((base + m.start()) // stride, (base + m.end() - 1) // stride + 1):
                    value = raw[idx * stride : idx * stride + vs]
                    if any(value):  # a padding byte cannot be non-zero, but be exact
                        out[start + idx] = value
        return out

    def dump(self, chunk: int = 8192) -> dict[bytes, bytes]:
        """Every entry, a chunk per syscall (BPF_MAP_LOOKUP_BATCH; arrays and hashes).

        An array of 131072 slots read one key at a time is two syscalls per slot;
        a batch reads them in a few.
        """
        assert not self.percpu
        out: dict[bytes, bytes] = {}
        keys = ctypes.create_string_buffer(chunk * self.key_size)
        values = ctypes.create_string_buffer(chunk * self.value_size)
        # The batch cursor is opaque; the kernel's array and hash maps use 4 bytes.
        token, cursor = ctypes.create_string_buffer(8), ctypes.create_string_buffer(8)
        first = True
        while True:
            count = ctypes.c_uint32(chunk)
            rc = lib().bpf_map_lookup_batch(
                self.fd, None if first else token, cursor, keys, values, ctypes.byref(count), None
            )
            err = 0 if rc >= 0 else (ctypes.get_errno() if rc == -1 else -rc)
            if err and err != errno.ENOENT:
                _check(-err, "map batch lookup")
            k, v = keys.raw, values.raw
            for i in range(count.value):
                out[k[i * self.key_size : (i + 1) * self.key_size]] = v[
                    i * self.value_size : (i + 1) * self.value_size
                ]
            if err == errno.ENOENT or count.value == 0:
                return out
            ctypes.memmove(token, cursor, 8)
            first = False


@dataclass(frozen=True)
class TestRun:
    action: int
    data: bytes
    duration_ns: int

    @property
    def verdict(self) -> str:
        return ACTIONS.get(self.action, str(self.action))


def test_run(
    prog_fd: int,
    data: bytes,
    repeat: int = 1,
    ingress_ifindex: int = 0,
    flags: int = 0,
    out_size: int | None = None,
) -> TestRun:
    """BPF_PROG_TEST_RUN an XDP program on one packet (repeat=1 for exact output)."""
    out = ctypes.create_string_buffer(out_size or len(data) + 256)
    opts = _TestRunOpts()
    opts.sz = ctypes.sizeof(_TestRunOpts)
    inbuf = ctypes.create_string_buffer(data, len(data))
    opts.data_in = ctypes.cast(inbuf, ctypes.c_void_p)
    opts.data_size_in = len(data)
    opts.data_out = ctypes.cast(out, ctypes.c_void_p)
    opts.data_size_out = len(out)
    opts.repeat = repeat
    opts.flags = flags
    ctx = None
    if ingress_ifindex:
        # struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        # egress_ifindex; data/data_end must be 0 and len(data) on input.
        ctx = (ctypes.c_uint32 * 6)(0, len(data), 0, ingress_ifindex, 0, 0)
        opts.ctx_in = ctypes.cast(ctx, ctypes.c_void_p)
        opts.ctx_size_in = ctypes.sizeof(ctx)
    _check(lib().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)), "BPF_PROG_TEST_RUN")
    return TestRun(opts.retval, out.raw[: opts.data_size_out], opts.duration)


def xdp_attach(ifindex: int, prog_fd: int, flags: int) -> None:
    _check(lib().bpf_xdp_attach(ifindex, prog_fd, flags, None), f"XDP attach on ifindex {ifindex}")


def xdp_detach(ifindex: int, flags: int) -> None:
    _check(lib().bpf_xdp_detach(ifindex, flags, None), f"XDP detach on ifindex {ifindex}")


def xdp_query_id(ifindex: int, flags: int = 0) -> int:
    prog_id = ctypes.c_uint32(0)
    _check(lib().bpf_xdp_query_id(ifindex, flags, ctypes.byref(prog_id)), "XDP query")
    return prog_id.value
