"""DKMS packaging: the generated dkms.conf, and staging the source under /usr/src."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bifrost import __version__, codegen, dkms
from bifrost.paths import MODULES

pytestmark = pytest.mark.unit


def _sourced(conf: str, var: str) -> str:
    """What DKMS sees: dkms.conf is sourced by bash with these variables set."""
    script = (
        "kernel_source_dir=/lib/modules/K/build dkms_tree=/var/lib/dkms\n"
        f"{conf}\nprintf '%s' \"${{{var}}}\""
    )
    return subprocess.run(["bash", "-c", script], check=True, capture_output=True, text=True).stdout


@pytest.mark.parametrize("module", MODULES)
def test_dkms_conf_names_module_version_and_autoinstalls(module: str) -> None:
    conf = codegen.render_dkms_conf(module)
    assert 'AUTOINSTALL="yes"' in conf.splitlines()
    assert _sourced(conf, "PACKAGE_NAME") == module
    assert _sourced(conf, "PACKAGE_VERSION") == __version__
    assert _sourced(conf, "BUILT_MODULE_NAME[0]") == module
    assert _sourced(conf, "DEST_MODULE_LOCATION[0]") == "/updates/dkms"
    assert _sourced(conf, "MAKE[0]") == (
        f"make -C /lib/modules/K/build M=/var/lib/dkms/{module}/{__version__}/build modules"
    )


@pytest.mark.parametrize("module", MODULES)
def test_kbuild_makes_warnings_errors(module: str) -> None:
    kbuild = (dkms.KMOD_DIR / module / "Kbuild").read_text()
    assert "-Werror" in kbuild


def test_build_outputs_cover_every_module(tmp_path: Path) -> None:
    outs = codegen.build_outputs(["srcds"], "cfg.toml", tmp_path)
    paths = {g.path.relative_to(tmp_path).as_posix() for g in outs}
    assert paths == {f"dkms/{m}/dkms.conf" for m in MODULES} | {"xdp/module_config.h"}


@pytest.fixture
def staged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fake kmod/ tree and /usr/src under tmp_path; dkms commands recorded, not run."""
    kmod = tmp_path / "kmod"
    (kmod / "fake" / "uapi").mkdir(parents=True)
    (kmod / "fake" / "main.c").write_text("int x;\n")
    (kmod / "fake" / "uapi" / "fake.h").write_text("/* h */\n")
    (kmod / "common").mkdir()
    (kmod / "common" / "shared.h").write_text("/* shared */\n")
    (kmod / "fake" / "main.o").write_bytes(b"\x7fELF")
    (kmod / "fake" / ".main.o.cmd").write_text("cmd\n")
    (kmod / "fake" / "fake.ko").write_bytes(b"\x7fELF")
    calls: list[list[str]] = []
    monkeypatch.setattr(dkms, "KMOD_DIR", kmod)
    monkeypatch.setattr(dkms, "SRC_ROOT", tmp_path / "usr-src")
    monkeypatch.setattr(dkms, "_run", lambda argv, check=True: calls.append(argv))
    (tmp_path / "usr-src").mkdir()
    return kmod / "fake", tmp_path / "usr-src" / f"fake-{__version__}", calls


def test_stage_copies_sources_without_build_artifacts(staged) -> None:
    _src, dst, calls = staged
    assert dkms.stage("fake") is True
    staged_files = sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file())
    assert staged_files == [
        "common/bifrost_version.h",
        "common/shared.h",
        "dkms.conf",
        "main.c",
        "uapi/fake.h",
    ]
    assert 'PACKAGE_NAME="fake"' in (dst / "dkms.conf").read_text()
    assert (
        f'#define BIFROST_VERSION "{__version__}"'
        in (dst / "common" / "bifrost_version.h").read_text()
    )
    assert calls == []


def test_stage_is_idempotent_and_restages_changed_sources(staged) -> None:
    src, dst, calls = staged
    dkms.stage("fake")
    assert dkms.stage("fake") is False
    (src / "main.c").write_text("int y;\n")
    assert dkms.stage("fake") is True
    assert (dst / "main.c").read_text() == "int y;\n"
    (src.parent / "common" / "shared.h").write_text("/* changed */\n")
    assert dkms.stage("fake") is True  # the shared header is part of each tree
    # DKMS must forget the old build of the same version before the new source counts.
    assert calls == [["dkms", "remove", f"fake/{__version__}", "--all"]] * 2


# `dkms status` as DKMS 3.0.10 (Debian 12) prints it: an older release's build next to
# this one, a second kernel, the notes it appends after a state, a version only added,
# a weak install, another module, and a line that is not a status line at all.
WARN_DIFF = " (WARNING! Diff between built and installed module!)"
STATUS = f"""\
fou_map/0.0.9, 6.1.0-56-amd64, x86_64: built
fou_map/0.1.0, 6.1.0-56-amd64, x86_64: installed
fou_map/0.1.0, 6.12.117+deb12-amd64, x86_64: installed{WARN_DIFF}
fou_map/0.1.1, 6.1.0-56-amd64, x86_64: built (original_module exists)
fou_map/0.1.2, 6.1.0-56-amd64, x86_64: installed (WARNING! Missing some built modules!)
fou_map/0.2.0: added
fou_map, 0.1.0, 6.12.110+deb12-amd64, x86_64: installed-weak from 6.12.117+deb12-amd64
bifrost_nf/0.1.0, 6.1.0-56-amd64, x86_64: installed
Deprecated feature: REMAKE_INITRD (/usr/src/fou_map-0.1.0/dkms.conf)
"""


def test_status_is_parsed_per_version_and_kernel() -> None:
    assert dkms.parse_status(STATUS, "fou_map") == {
        ("0.0.9", "6.1.0-56-amd64"): "built",
        ("0.1.0", "6.1.0-56-amd64"): "installed",
        ("0.1.0", "6.12.117+deb12-amd64"): "installed",
        ("0.1.1", "6.1.0-56-amd64"): "built",
        ("0.1.2", "6.1.0-56-amd64"): "installed",
        ("0.2.0", None): "added",
        ("0.1.0", "6.12.110+deb12-amd64"): "installed-weak",
    }
    assert dkms.parse_status(STATUS, "bifrost_nf") == {("0.1.0", "6.1.0-56-amd64"): "installed"}
    # A module whose name another's starts with is not that one.
    assert dkms.parse_status(STATUS, "fou") == {}
    assert dkms.parse_status("readelf: Warning: x\nError! No module\n", "fou_map") == {}


def test_status_is_this_release_per_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """status(): what status.py, testrun and the host tests read; another version's
    build of the same kernel does not count as this release's."""
    argvs = []

    class Done:
        stdout = STATUS

    def run(argv: list[str], check: bool = True) -> Done:
        argvs.append(argv)
        return Done()

    monkeypatch.setattr(dkms, "_run", run)
    assert dkms.status("fou_map", "0.1.0") == {
        "6.1.0-56-amd64": "installed",
        "6.12.117+deb12-amd64": "installed",
        "6.12.110+deb12-amd64": "installed-weak",
    }
    assert dkms.status("fou_map", "0.0.9") == {"6.1.0-56-amd64": "built"}
    assert dkms.status("fou_map", "0.2.0") == {}  # added, built for no kernel
    assert dkms.status("fou_map", "9.9.9") == {}
    assert argvs == [["dkms", "status", "fou_map"]] * 4


def test_missing_headers_names_the_package() -> None:
    with pytest.raises(dkms.DkmsError, match=r"apt-get install linux-headers-9\.9\.9-nope"):
        dkms.require_headers("9.9.9-nope")


def test_version_is_defined_once() -> None:
    """pyproject and the modules derive the version from bifrost.__version__."""
    import tomllib
    from importlib import metadata

    project = tomllib.loads((dkms.KMOD_DIR.parent / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert metadata.version("bifrost") == __version__
    # the repository copy (for builds without DKMS) matches what staging renders
    assert (dkms.KMOD_DIR / dkms.VERSION_HEADER).read_text() == dkms.version_header()
    for module in MODULES:
        for path in (dkms.KMOD_DIR / module).rglob("*.[ch]"):
            assert '"' + __version__ + '"' not in path.read_text(), path
