"""A small ctypes binding to libbpf.so.1: load objects, maps, XDP attach, test runs."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
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


def _load() -> ctypes.CDLL:
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as e:
        raise BpfError(f"cannot load libbpf ({e}): apt-get install libbpf1") from None
    vp, i, u32, cp = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_char_p
    sigs: dict[str, tuple[object, list[object]]] = {
        "bpf_object__open_file": (vp, [cp, vp]),
        "bpf_object__load": (i, [vp]),
        "bpf_object__close": (None, [vp]),
        "bpf_object__find_program_by_name": (vp, [vp, cp]),
        "bpf_object__next_map": (vp, [vp, vp]),
        "bpf_map__name": (cp, [vp]),
        "bpf_map__fd": (i, [vp]),
        "bpf_program__fd": (i, [vp]),
        "bpf_obj_pin": (i, [i, cp]),
        "bpf_obj_get": (i, [cp]),
        "bpf_map_update_elem": (i, [i, vp, vp, ctypes.c_uint64]),
        "bpf_map_lookup_elem": (i, [i, vp, vp]),
        "bpf_map_delete_elem": (i, [i, vp]),
        "bpf_map_get_next_key": (i, [i, vp, vp]),
        "bpf_map_lookup_batch": (i, [i, vp, vp, vp, vp, ctypes.POINTER(u32), vp]),
        "bpf_prog_test_run_opts": (i, [i, ctypes.POINTER(_TestRunOpts)]),
        "bpf_xdp_attach": (i, [i, i, u32, vp]),
        "bpf_xdp_detach": (i, [i, u32, vp]),
        "bpf_xdp_query_id": (i, [i, i, ctypes.POINTER(u32)]),
        "libbpf_num_possible_cpus": (i, []),
    }
    for fn, (res, args) in sigs.items():
        f = getattr(lib, fn)
        f.restype = res
        f.argtypes = args
    return lib


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


class BpfObject:
    """A loaded BPF object file: its programs and maps by name."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._obj = lib().bpf_object__open_file(os.fsencode(path), None)
        if not self._obj:
            err = ctypes.get_errno()
            raise BpfError(err, f"open {path}: {os.strerror(err)}")
        rc = lib().bpf_object__load(self._obj)
        if rc < 0:
            lib().bpf_object__close(self._obj)
            self._obj = None
            _check(rc, f"load {path} (the verifier log is above)")

    def prog_fd(self, name: str) -> int:
        prog = lib().bpf_object__find_program_by_name(self._obj, name.encode())
        if not prog:
            raise BpfError(2, f"no program {name!r} in the object")
        return _check(lib().bpf_program__fd(prog), f"fd of {name}")

    def map_fds(self) -> dict[str, int]:
        out = {}
        m = lib().bpf_object__next_map(self._obj, None)
        while m:
            name = lib().bpf_map__name(m).decode()
            if not name.startswith("."):  # .rodata/.bss: not ours to manage
                out[name] = _check(lib().bpf_map__fd(m), f"fd of map {name}")
            m = lib().bpf_object__next_map(self._obj, m)
        return out

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
    return _check(lib().bpf_obj_get(path.encode()), f"open pinned {path}")


@dataclass
class Map:
    """A map by fd with fixed key/value sizes (value_size: per CPU for per-CPU maps)."""

    fd: int
    key_size: int
    value_size: int
    percpu: bool = False

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
