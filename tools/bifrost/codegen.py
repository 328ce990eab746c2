"""Code generation (Jinja2): uapi headers, codecs, XDP map header, dkms.conf, module_config.h.

One Jinja environment renders every template, from one kind of definition
(``bifrost.abi.spec`` fields laid out by ``field_layout``), and one writer puts
the results on disk: the chardev ABIs (``bifrost.abi.defs``), the XDP map
layouts (``bifrost.xdp.maps_def``) and the per-host files under build/.
"""

from __future__ import annotations

import importlib
import logging
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import jinja2

from bifrost import __version__
from bifrost.abi.spec import HEADER_FIELDS, SCALARS, Device, Field, Record
from bifrost.paths import BUILD_DIR, KMOD_DIR, MODULES, PACKAGE_DIR, SOURCE_ROOT, TEMPLATES_DIR
from bifrost.xdp import maps_def

log = logging.getLogger(__name__)


def _ctype(f: Field) -> str:
    return SCALARS[f.type][0]


def _pyfield(f: Field) -> str:
    """A codec dataclass field: name, the Python type it decodes to, its default."""
    if f.type == "ipv4":
        return f"{f.name}: ipaddress.IPv4Address = ANY_IPV4"
    if f.is_bytes:
        return f'{f.name}: bytes = b""'
    return f"{f.name}: tuple[int, ...] = ()" if f.count > 1 else f"{f.name}: int = 0"


def _pydoc(text: str, indent: int = 4) -> str:
    """A docstring literal that fits the line length (ruff format does not wrap them)."""
    lines = textwrap.wrap(" ".join(text.split()), width=100 - indent - 3)
    if len(lines) <= 1:
        return '"""' + (lines[0] if lines else "") + '"""'
    pad = " " * indent
    return '"""' + lines[0] + "\n" + "".join(f"{pad}{ln}\n" for ln in lines[1:]) + pad + '"""'


def _classname(r: Record) -> str:
    return "".join(part.capitalize() for part in r.name.split("_"))


def _env() -> jinja2.Environment:
    """The one environment: every template, the helpers they share, undefined is an error."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(TEMPLATES_DIR), str(SOURCE_ROOT / "dkms")]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.globals.update(ctype=_ctype, classname=_classname, pyfield=_pyfield, pydoc=_pydoc)
    return env


def render(template: str, **context: object) -> str:
    return _env().get_template(template).render(**context)


def render_uapi(dev: Device) -> str:
    """A device's uapi header: its own records; the shared ones are in bifrost_uapi.h."""
    from bifrost.abi.defs import common

    if len(dev.counters) > common.MAX_COUNTERS:
        raise ValueError(
            f"{dev.name}: {len(dev.counters)} counters, INFO has room for {common.MAX_COUNTERS}"
        )
    shared = [r for r in dev.records if r in common.RECORDS]
    return render("uapi.h.j2", dev=dev, p=dev.prefix, P=dev.prefix.upper(), shared=shared)


def render_common_uapi() -> str:
    """kmod/common/bifrost_uapi.h: the header and records every device shares, once."""
    from bifrost.abi.defs import common

    return render("uapi_common.h.j2", header=HEADER_FIELDS, records=common.RECORDS)


def _spec_names(module: ModuleType) -> dict[str, str]:
    """Record name -> the name its definition has in its defs module (a codec class's SPEC)."""
    return {v.name: k for k, v in vars(module).items() if isinstance(v, Record)}


def render_codec(dev: Device) -> str:
    """A device's codec: its own records, subclasses of the common ones (abi/common.py).
    Classes name their definition; runtime.Record derives the layout from it."""
    from bifrost.abi.defs import common

    text = render(
        "codec.py.j2",
        dev=dev,
        ipv4=any(f.type == "ipv4" for r in dev.records for f in r.fields),
        shared=[r for r in dev.records if r in common.RECORDS],
        spec_names=_spec_names(importlib.import_module(f"bifrost.abi.defs.{dev.name}")),
    )
    return _ruff_format(text)


def render_common_codec() -> str:
    """abi/common.py: the records every device shares, rendered once (every device's
    records start with spec.HEADER_FIELDS)."""
    from bifrost.abi.defs import common

    text = render("abi_common.py.j2", records=common.RECORDS, spec_names=_spec_names(common))
    return _ruff_format(text)


def _ruff_format(text: str) -> str:
    """Format generated Python with the pinned ruff, so it passes the same lint as the rest."""
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        raise RuntimeError("ruff is not installed: run ./setup.sh deps")
    done = subprocess.run(
        [ruff, "format", "--quiet", "--config", str(SOURCE_ROOT / "pyproject.toml"), "-"],
        input=text,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def render_xdp_maps() -> str:
    """xdp/generated/bifrost_maps.h: the XDP program's map layouts, reasons and constants."""
    for s in maps_def.STRUCTS:
        s.layout()  # raises on padding before anything is written
    return render(
        "xdp_maps.h.j2",
        structs=maps_def.STRUCTS,
        reasons=maps_def.REASONS,
        constants=maps_def.CONSTANTS,
    )


def render_dkms_conf(name: str, version: str = __version__) -> str:
    return render("dkms.conf.j2", name=name, version=version)


def render_module_config(game_modules: list[str], source: str) -> str:
    """module_config.h: the defines that compile the given game modules in."""
    defines = [maps_def.AVAILABLE_MODULES[m].define for m in game_modules]
    return render("module_config.h.j2", modules=defines, source=source)


def uapi_path(dev: Device) -> Path:
    return KMOD_DIR / dev.name / "uapi" / f"{dev.name}.h"


def codec_path(dev: Device) -> Path:
    return PACKAGE_DIR / "abi" / f"{dev.name}.py"


COMMON_CODEC_PATH = PACKAGE_DIR / "abi" / "common.py"
COMMON_UAPI_PATH = KMOD_DIR / "common" / "bifrost_uapi.h"


@dataclass(frozen=True)
class Generated:
    path: Path
    text: str


def abi_outputs() -> list[Generated]:
    """The chardev uapi headers and codecs."""
    from bifrost.abi.defs import DEVICES

    out = [
        Generated(COMMON_UAPI_PATH, render_common_uapi()),
        Generated(COMMON_CODEC_PATH, render_common_codec()),
    ]
    for dev in DEVICES:
        out.append(Generated(uapi_path(dev), render_uapi(dev)))
        out.append(Generated(codec_path(dev), render_codec(dev)))
    return out


def xdp_outputs() -> list[Generated]:
    """The XDP program's map header."""
    return [Generated(maps_def.HEADER_PATH, render_xdp_maps())]


def committed_outputs() -> list[Generated]:
    """Every generated file kept in git: a unit test checks they are up to date."""
    return abi_outputs() + xdp_outputs()


def build_outputs(
    game_modules: list[str], source: str, build_dir: Path = BUILD_DIR
) -> list[Generated]:
    """Per-host files under build/: dkms.conf per module and module_config.h."""
    out = [Generated(build_dir / "dkms" / m / "dkms.conf", render_dkms_conf(m)) for m in MODULES]
    out.append(
        Generated(build_dir / "xdp" / "module_config.h", render_module_config(game_modules, source))
    )
    return out


def write(files: list[Generated]) -> list[Path]:
    """Write files whose content changed; return the paths written."""
    written = []
    for g in files:
        if g.path.exists() and g.path.read_text() == g.text:
            continue
        g.path.parent.mkdir(parents=True, exist_ok=True)
        g.path.write_text(g.text)
        written.append(g.path)
        log.info("generated %s", g.path.relative_to(SOURCE_ROOT))
    return written
