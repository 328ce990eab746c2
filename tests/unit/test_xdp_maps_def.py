"""XDP map layouts: the generated C header matches the Python struct formats."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bifrost import codegen
from bifrost.abi.spec import Field, SpecError, Struct
from bifrost.xdp import maps_def

pytestmark = pytest.mark.unit


def test_generated_header_is_committed_and_current() -> None:
    assert maps_def.HEADER_PATH.read_text() == codegen.render_xdp_maps(), (
        "xdp/generated/bifrost_maps.h is stale: run `invoke generate` and commit"
    )


def test_c_layout_matches_python(tmp_path: Path) -> None:
    gcc = shutil.which("gcc") or shutil.which("cc")
    assert gcc, "gcc is needed for this test"
    lines = ["#include <stdio.h>", "#include <stddef.h>", f'#include "{maps_def.HEADER_PATH}"']
    lines.append("int main(void) {")
    for s in maps_def.STRUCTS:
        lines.append(f'printf("{s.name} size %zu\\n", sizeof(struct bfx_{s.name}));')
        for f in s.fields:
            lines.append(
                f'printf("{s.name}.{f.name} %zu\\n", offsetof(struct bfx_{s.name}, {f.name}));'
            )
    lines.append(f'printf("reasons %d\\n", (int)BFX_{maps_def.REASONS[-1][0].upper()} + 1);')
    lines.append("return 0; }")
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines))
    exe = tmp_path / "layout"
    subprocess.run([gcc, "-Wall", "-Werror", str(src), "-o", str(exe)], check=True)
    got = dict(
        line.rsplit(" ", 1) for line in subprocess.check_output([exe], text=True).splitlines()
    )
    for s in maps_def.STRUCTS:
        assert int(got[f"{s.name} size"]) == s.size, s.name
        for name, off in s.offsets().items():
            assert int(got[f"{s.name}.{name}"]) == off, f"{s.name}.{name}"
    assert int(got["reasons"]) == len(maps_def.REASONS)


def test_pack_unpack_roundtrip() -> None:
    st = maps_def.BY_NAME["rule"]
    data = st.pack(id=3, gs_addr="10.0.0.2", fou_port=5555, flags=1, rate_burst_ns=7)
    assert len(data) == st.size == 32
    assert data[4:8] == bytes([10, 0, 0, 2]), "ipv4 fields are network order"
    back = st.unpack(data)
    assert (back["id"], back["fou_port"], back["rate_burst_ns"]) == (3, 5555, 7)
    with pytest.raises(KeyError):
        st.pack(nope=1)


def test_implicit_padding_is_rejected() -> None:
    bad = Struct("bad", "", (Field("a", "u8"), Field("b", "u32")))
    with pytest.raises(SpecError, match="alignment"):
        bad.layout()
    tail = Struct("tail", "", (Field("a", "u64"), Field("b", "u32")))
    with pytest.raises(SpecError, match="tail padding"):
        tail.layout()
