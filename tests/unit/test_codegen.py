"""Codegen: the C uapi header and the Python codec agree, round-trip, and are up to date."""

from __future__ import annotations

import ipaddress
import struct
import subprocess
from pathlib import Path

import pytest

from bifrost import codegen
from bifrost.abi.defs import DEVICES, common
from bifrost.abi.spec import HEADER_FIELDS, SCALARS, Device, layout, record_size
from bifrost.xdp import maps_def

pytestmark = pytest.mark.unit


def _codec(dev: Device):
    import importlib

    return importlib.import_module(f"bifrost.abi.{dev.name}")


def _c_layout(dev: Device, tmp_path: Path) -> dict[str, int]:
    """Compile a program against the generated header; return name -> number it prints."""
    p = dev.prefix
    lines = [
        "#include <stdio.h>",
        "#include <stddef.h>",
        f'#include "{dev.name}.h"',
        "int main(void) {",
        '\tprintf("hdr.sizeof %zu\\n", sizeof(struct bifrost_hdr));',
    ]
    for f in HEADER_FIELDS:
        lines.append(f'\tprintf("hdr.{f.name} %zu\\n", offsetof(struct bifrost_hdr, {f.name}));')
    for r in dev.records:
        # The records every device shares are bifrost_uapi.h's, named bifrost_<name>.
        s = f"struct {'bifrost' if r in common.RECORDS else p}_{r.name}"
        lines.append(f'\tprintf("{r.name}.sizeof %zu\\n", sizeof({s}));')
        lines.append(f'\tprintf("{r.name}.type %d\\n", (int){p.upper()}_MSG_{r.name.upper()});')
        for f in r.fields:
            lines.append(f'\tprintf("{r.name}.{f.name} %zu\\n", offsetof({s}, {f.name}));')
            lines.append(
                f'\tprintf("{r.name}.{f.name}.size %zu\\n", sizeof((({s} *)0)->{f.name}));'
            )
    lines += [f'\tprintf("magic %u\\n", (unsigned){p.upper()}_MAGIC);', "\treturn 0;", "}"]
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines) + "\n")
    exe = tmp_path / "layout"
    # -Wpadded: the C compiler must see no padding either.
    subprocess.run(
        [
            "gcc", "-std=c11", "-Wall", "-Wextra", "-Wpadded", "-Werror",
            "-I", str(codegen.uapi_path(dev).parent),
            "-I", str(codegen.COMMON_UAPI_PATH.parent), "-o", str(exe), str(src),
        ],
        check=True,
        capture_output=True,
        text=True,
    )  # fmt: skip
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


@pytest.mark.parametrize("dev", DEVICES, ids=lambda d: d.name)
def test_c_header_matches_python_codec(dev: Device, tmp_path: Path) -> None:
    c = _c_layout(dev, tmp_path)
    codec = _codec(dev)
    assert c["magic"] == codec.MAGIC == dev.magic
    assert c["hdr.sizeof"] == codec.HEADER_SIZE
    for f, off in layout(dev, dev.records[0])[: len(HEADER_FIELDS)]:
        assert c[f"hdr.{f.name}"] == off, f.name
    classes = {cls.TYPE: cls for cls in codec.RECORDS.values()}
    assert set(classes) == {r.type_id for r in dev.records}
    for r in dev.records:
        # The class's layout is derived from its definition at import (runtime.Record):
        # what gcc makes of the header rendered from the same definition must equal it.
        cls = classes[r.type_id]
        assert r == cls.SPEC, r.name
        assert c[f"{r.name}.type"] == r.type_id
        assert c[f"{r.name}.sizeof"] == cls.SIZE == record_size(dev, r), r.name
        assert struct.calcsize(cls.FORMAT) == cls.SIZE, r.name
        assert set(cls.OFFSETS) == {f.name for f in r.fields}, r.name
        for f in r.fields:
            assert c[f"{r.name}.{f.name}"] == cls.OFFSETS[f.name], f"{r.name}.{f.name}"
            assert c[f"{r.name}.{f.name}.size"] == f.size, f"{r.name}.{f.name}"


def _sample(ftype: str, count: int, seed: int) -> object:
    if ftype == "ipv4":
        return ipaddress.IPv4Address(f"192.0.2.{seed % 250 + 1}")
    bits = {"u8": 8, "u16": 16, "u32": 32, "u64": 64}[ftype]
    if ftype == "u8" and count > 1:
        return bytes((seed + i) % 256 for i in range(count))
    vals = tuple(((seed + i) * 2654435761) % (1 << bits) for i in range(count))
    return vals if count > 1 else vals[0]


@pytest.mark.parametrize("dev", DEVICES, ids=lambda d: d.name)
def test_every_record_round_trips(dev: Device) -> None:
    codec = _codec(dev)
    for seed, cls in enumerate(codec.RECORDS.values(), start=1):
        kwargs = {name: _sample(t, n, seed + i) for i, (name, t, n) in enumerate(cls.FIELDS)}
        rec = cls(**kwargs)
        raw = rec.pack()
        assert len(raw) == cls.SIZE
        assert codec.decode(raw) == rec
        # Two records back to back, as one read() returns them.
        assert codec.decode_all(raw + raw) == [rec, rec]
        for name, _t, _n in cls.FIELDS:
            assert getattr(codec.decode(raw), name) == kwargs[name], f"{cls.__name__}.{name}"
        # Each value lies at its OFFSETS entry (the offsets the C header is checked against).
        for name, ftype, count in cls.FIELDS:
            at = raw[cls.OFFSETS[name] :]
            if ftype == "ipv4":
                assert at[:4] == kwargs[name].packed, f"{cls.__name__}.{name}"
            elif ftype == "u8" and count > 1:
                assert at[:count] == kwargs[name], f"{cls.__name__}.{name}"
            else:
                got = struct.unpack_from(f"<{count}{SCALARS[ftype][1]}", at)
                assert got == (kwargs[name] if count > 1 else (kwargs[name],)), (
                    f"{cls.__name__}.{name}"
                )


@pytest.mark.parametrize("dev", DEVICES, ids=lambda d: d.name)
def test_decode_rejects_wrong_header(dev: Device) -> None:
    from bifrost.abi.runtime import AbiError

    codec = _codec(dev)
    raw = bytearray(codec.InfoReq().pack())
    with pytest.raises(AbiError):
        codec.decode(bytes(raw[:-1] if len(raw) > codec.HEADER_SIZE else raw[:8]))
    bad_magic = bytes([raw[0] ^ 0xFF]) + bytes(raw[1:])
    with pytest.raises(AbiError):
        codec.decode(bad_magic)


def test_generated_files_are_up_to_date() -> None:
    stale = [
        str(g.path.relative_to(codegen.SOURCE_ROOT))
        for g in codegen.committed_outputs()
        if not g.path.exists() or g.path.read_text() != g.text
    ]
    assert not stale, f"run `invoke generate` and commit: {stale}"


def test_module_config_defines_each_enabled_module() -> None:
    text = codegen.render_module_config(["srcds"], "etc/x.toml")
    assert "#define SRCDS_HANDSHAKE" in text
    assert "etc/x.toml" in text
    empty = codegen.render_module_config([], "etc/x.toml")
    assert "#define SRCDS_HANDSHAKE" not in empty
    assert "no game modules enabled" in empty


def test_module_config_header_compiles(tmp_path: Path) -> None:
    hdr = tmp_path / "module_config.h"
    hdr.write_text(codegen.render_module_config(list(maps_def.AVAILABLE_MODULES), "t"))
    src = tmp_path / "t.c"
    defines = "".join(
        f"#ifndef {m.define}\n#error {m.define} missing\n#endif\n"
        for m in maps_def.AVAILABLE_MODULES.values()
    )
    src.write_text(f'#include "module_config.h"\n{defines}int main(void) {{ return 0; }}\n')
    subprocess.run(
        ["gcc", "-Wall", "-Werror", "-I", str(tmp_path), "-o", str(tmp_path / "t"), str(src)],
        check=True,
        capture_output=True,
    )


def test_record_class_fields_must_be_its_definitions() -> None:
    from bifrost.abi.common import ANY_IPV4
    from bifrost.abi.defs import fou_map as defs
    from bifrost.abi.runtime import AbiError, Record

    with pytest.raises(AbiError, match=r"Del: fields \['client'\] are not del's"):

        class Del(Record, spec=defs.DEL):  # the definition also has "reserved"
            client: ipaddress.IPv4Address = ANY_IPV4

    with pytest.raises(TypeError, match="Stray: a record class needs spec="):

        class Stray(Record):
            scope: int = 0

    class Flush(Record, spec=defs.FLUSH):
        scope: int = 0
        reserved: int = 0

    assert (Flush.TYPE, Flush.SIZE, Flush.OFFSETS) == (12, 24, {"scope": 16, "reserved": 20})
    assert Flush.FIELDS == (("scope", "u32", 1), ("reserved", "u32", 1))
    assert Flush(scope=1) == Flush(1, 0) != Flush()  # a dataclass without @dataclass


def test_codec_binds_only_the_devices_own_records() -> None:
    from bifrost.abi import bifrost_nf, fou_map, runtime
    from bifrost.abi.defs import fou_map as defs

    swapped = dict(fou_map.RECORDS)
    swapped[fou_map.Flush.TYPE] = bifrost_nf.Flush
    with pytest.raises(runtime.AbiError, match="fou_map: the codec's records are not the device's"):
        runtime.codec(defs.DEVICE, swapped)
    missing = {t: cls for t, cls in fou_map.RECORDS.items() if cls is not fou_map.AuthGet}
    with pytest.raises(runtime.AbiError, match="not the device's"):
        runtime.codec(defs.DEVICE, missing)
