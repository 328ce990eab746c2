"""`invoke test`: every tier on both kernel lines, junit XML per tier, one summary.

Order: unit (lint included, as tests/unit/test_lint.py) and bpf on the host;
DKMS build + install for each kernel (a warning fails it); per kernel one guest
boot running the kernel tier but the unload test, a second one running the unload
test with SLUB's allocation tracking on (its exact leak gate), then the kernel tier's host side
(tests/host, marker kernel: the VM runner fails a panic and a timeout, a
compiler warning fails a DKMS build); last the DKMS kernel-upgrade test
(tests/host/test_dkms_upgrade.py), which drives DKMS's own hook on the host and
boots the new kernel. The run fails when any test fails or errors, when a tier
ran no test, or when a kernel-tier test was skipped.
"""

from __future__ import annotations

import errno
import logging
import os
import shlex
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from bifrost import __version__, codegen, dkms, vm
from bifrost.paths import BUILD_DIR, MODULES, SOURCE_ROOT
from bifrost.vm import kernlog
from bifrost.xdp import build as xdp_build
from bifrost.xdp import maps_def

log = logging.getLogger(__name__)

RESULTS_DIR = BUILD_DIR / "test-results"
TIERS = ("unit", "bpf", "kernel", "upgrade")
# seconds per guest boot: the tier aims at ~5 min per component, but issue 11's
# acceptance (200 unloads under traffic, a 1M-entry table) takes far longer under TCG
KERNEL_TIER_TIMEOUT = 3600


def kernel_lines() -> list[str]:
    """The kernels the project tests on (packaging/kernels.env): 6.1 first, then 6.12."""
    env = SOURCE_ROOT / "packaging" / "kernels.env"
    return [
        line.split("=", 1)[1].strip()
        for line in env.read_text().splitlines()
        if line.startswith("KERNEL_")
    ]


@dataclass
class TierResult:
    name: str
    junit: Path
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    skipped_names: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.passed + self.failed + self.errors + self.skipped

    def problems(self, skips_fail: bool) -> list[str]:
        out = []
        if self.failed or self.errors:
            out.append(f"{self.name}: {self.failed} failed, {self.errors} errors")
        if self.total == 0:
            out.append(f"{self.name}: ran no test")
        if skips_fail and self.skipped:
            out.append(f"{self.name}: {self.skipped} skipped ({', '.join(self.skipped_names[:5])})")
        return out


def parse_junit(path: Path, name: str) -> TierResult:
    """Count a pytest junit file; a missing or unreadable file is one error."""
    res = TierResult(name, path)
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        res.errors = 1
        res.notes.append(f"no junit results ({e})")
        return res
    for case in root.iter("testcase"):
        tags = {child.tag for child in case}
        if "failure" in tags:
            res.failed += 1
        elif "error" in tags:
            res.errors += 1
        elif "skipped" in tags:
            res.skipped += 1
            res.skipped_names.append(f"{case.get('classname')}::{case.get('name')}")
        else:
            res.passed += 1
    return res


def write_junit(path: Path, suite: str, cases: list[tuple[str, str | None]]) -> None:
    """A junit file for a tier that is not pytest (DKMS builds): (name, failure or None)."""
    failures = sum(1 for _, f in cases if f is not None)
    body = []
    for name, failure in cases:
        inner = (
            f"<failure message={quoteattr(failure[:200])}>{escape(failure)}</failure>"
            if (failure is not None)
            else ""
        )
        body.append(
            f"<testcase classname={quoteattr(suite)} name={quoteattr(name)}>{inner}</testcase>"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f'<testsuites><testsuite name={quoteattr(suite)} tests="{len(cases)}" '
        f'failures="{failures}" errors="0" skipped="0">'
        + "".join(body)
        + "</testsuite></testsuites>\n"
    )


def _pytest(args: list[str], junit: Path, env: dict[str, str] | None = None) -> int:
    argv = [
        str(Path(sys.executable).parent / "pytest"),
        "-p",
        "no:cacheprovider",
        "-q",
        f"--junitxml={junit}",
        *args,
    ]
    log.info("$ %s", shlex.join(argv))
    return subprocess.run(
        argv, cwd=SOURCE_ROOT, env={**os.environ, **(env or {})}, check=False
    ).returncode


def run_host_tier(marker: str) -> TierResult:
    junit = RESULTS_DIR / f"{marker}.xml"
    start = time.monotonic()
    if marker == "bpf" and os.geteuid() != 0:
        res = TierResult(marker, junit, errors=1, notes=["needs root: sudo .venv/bin/invoke test"])
        return res
    # tests/kernel only runs in the guest; tests/host holds the upgrade test.
    _pytest(["-m", marker, "--ignore=tests/kernel", "tests"], junit)
    res = parse_junit(junit, marker)
    res.seconds = time.monotonic() - start
    return res


def _make_log(module: str, kver: str) -> Path:
    return Path(f"/var/lib/dkms/{module}/{__version__}/{kver}/x86_64/log/make.log")


def _build_xdp() -> str | None:
    """Compile build/xdp/bifrost_xdp.o, which the kernel tier's XDP tests and lab load.

    Every game module is compiled in, whatever the host config says: the tests
    exercise them all. Returns the failure, or None.
    """
    header = BUILD_DIR / "xdp" / "module_config.h"
    codegen.write(
        [
            codegen.Generated(
                header, codegen.render_module_config(list(maps_def.AVAILABLE_MODULES), "tests")
            )
        ]
    )
    try:
        xdp_build.compile_program(header, header.parent)
    except (xdp_build.BuildError, OSError) as e:
        return f"XDP build failed: {e}"
    return None


def run_dkms_tier(kernels: list[str]) -> TierResult:
    """The XDP object, then dkms build + install of both modules per kernel.

    A compiler warning is a failure.
    """
    junit = RESULTS_DIR / "dkms.xml"
    start = time.monotonic()
    cases: list[tuple[str, str | None]] = []
    cases.append(("xdp program", _build_xdp()))
    for kver in kernels:
        try:
            dkms.build([kver], install=True)
        except dkms.DkmsError as e:
            cases.extend((f"{m} {kver}", str(e)) for m in MODULES)
            continue
        states = {m: dkms.status(m).get(kver) for m in MODULES}
        for m in MODULES:
            failure = None
            if states[m] != "installed":
                failure = f"dkms status says {states[m]!r}, not installed"
            elif _make_log(m, kver).exists():
                warnings = [
                    line
                    for line in _make_log(m, kver).read_text().splitlines()
                    if "warning:" in line
                ]
                if warnings:
                    failure = "compiler warnings:\n" + "\n".join(warnings[:20])
            cases.append((f"{m} {kver}", failure))
    write_junit(junit, "dkms", cases)
    res = parse_junit(junit, "dkms")
    res.seconds = time.monotonic() - start
    return res


# The unload test's exact leak gate reads SLUB's allocation stacks, so it gets a boot of
# its own with tracking on (it slows every kmalloc, so the other tests do not get it).
UNLOAD_TEST = "tests/kernel/test_kmod_unload_under_traffic.py"
SLAB_TRACKING = "slub_debug=U,kmalloc-*"


def run_kernel_tier(kver: str) -> list[TierResult]:
    """Two guest boots: every test of tests/kernel but the unload test, then the unload
    test with allocation tracking (it must use its exact gate: BIFROST_SLAB_EXACT)."""
    return [
        _kernel_boot(kver, f"kernel {kver}", f"tests/kernel --ignore={UNLOAD_TEST}"),
        _kernel_boot(
            kver,
            f"kernel {kver} (slab tracked)",
            UNLOAD_TEST,
            env="BIFROST_SLAB_EXACT=1 ",
            append=(SLAB_TRACKING,),
        ),
    ]


def _kernel_boot(
    kver: str, name: str, tests: str, env: str = "", append: tuple[str, ...] = ()
) -> TierResult:
    """ONE guest boot running `tests` (marker kernel); junit comes back over 9p."""
    junit = RESULTS_DIR / f"{name.replace(' ', '-').replace('(', '').replace(')', '')}.xml"
    junit.unlink(missing_ok=True)
    script = (
        f"{env}BIFROST_GUEST=1 .venv/bin/pytest -p no:cacheprovider -v --tb=short --color=no "
        f"-m kernel {tests} "
        f"--junitxml={shlex.quote(str(junit))}"
    )
    start = time.monotonic()
    note = ""
    try:
        result = vm.run(kver, script, timeout=KERNEL_TIER_TIMEOUT, append=append)
        note = f"guest rc={result.rc} in {result.seconds:.0f}s"
    except vm.GuestFailure as e:
        note = str(e)
        if e.console:
            console = RESULTS_DIR / f"console-{kver}{'-tracked' if append else ''}.log"
            console.write_text(e.console)
            context = kernlog.trouble_context(e.console)
            note += f"\n      console saved to {console}"
            note += "".join(f"\n      | {line}" for line in context)
    except RuntimeError as e:
        note = str(e)
    res = parse_junit(junit, name)
    res.notes.append(note)
    if "rc=" not in note:  # the guest failed: that is an error even if the junit looks fine
        res.errors += 1
    res.seconds = time.monotonic() - start
    return res


def run_kernel_host_tier(kver: str) -> TierResult:
    """The kernel tier's tests that run on the host and boot the guest themselves."""
    junit = RESULTS_DIR / f"kernel-host-{kver}.xml"
    start = time.monotonic()
    _pytest(["-m", "kernel", "tests/host"], junit, env={"BIFROST_KERNEL": kver})
    res = parse_junit(junit, f"kernel {kver} (host)")
    res.seconds = time.monotonic() - start
    return res


def run_upgrade_tier() -> TierResult:
    junit = RESULTS_DIR / "upgrade.xml"
    start = time.monotonic()
    _pytest(["-m", "upgrade", "tests/host/test_dkms_upgrade.py"], junit)
    res = parse_junit(junit, "dkms upgrade")
    res.seconds = time.monotonic() - start
    return res


def render_summary(results: list[TierResult]) -> str:
    # The name column is as wide as the longest name, so the figures line up.
    w = max([len("tier"), *(len(r.name) for r in results)])
    lines = [
        f"{'tier':<{w}} {'passed':>6} {'failed':>6} {'errors':>6} {'skipped':>7} {'secs':>6}",
    ]
    for r in results:
        lines.append(
            f"{r.name:<{w}} {r.passed:>6} {r.failed:>6} {r.errors:>6} {r.skipped:>7} "
            f"{r.seconds:>6.0f}"
        )
        lines.extend(f"    {n}" for n in r.notes if n)
    return "\n".join(lines)


def verdict(results: list[TierResult]) -> list[str]:
    """Why the run failed; empty when it passed."""
    out = []
    for r in results:
        out.extend(r.problems(skips_fail=r.name.startswith(("kernel", "dkms upgrade"))))
    return out


def run(tiers: tuple[str, ...] = TIERS, kernels: list[str] | None = None) -> int:
    """Run the chosen tiers; print a summary; return the exit status."""
    for t in tiers:
        if t not in TIERS:
            raise ValueError(f"unknown tier {t!r}: choose from {', '.join(TIERS)}")
    lines = kernel_lines()
    kernels = kernels or lines
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    if not os.access(RESULTS_DIR, os.W_OK):
        # pytest would only find out when it writes its junit file, with a traceback.
        raise PermissionError(errno.EACCES, "cannot write test results", str(RESULTS_DIR))
    for stale in [*RESULTS_DIR.glob("*.xml"), *RESULTS_DIR.glob("console-*.log")]:
        stale.unlink()
    results: list[TierResult] = []
    begin = time.monotonic()
    if "unit" in tiers:
        results.append(run_host_tier("unit"))
    if "bpf" in tiers:
        results.append(run_host_tier("bpf"))
    if "kernel" in tiers or "upgrade" in tiers:
        build_for = sorted(set(kernels) | (set(lines) if "upgrade" in tiers else set()))
        results.append(run_dkms_tier(build_for))
    if "kernel" in tiers:
        for k in kernels:
            results.extend(run_kernel_tier(k))
            results.append(run_kernel_host_tier(k))
    if "upgrade" in tiers:
        results.append(run_upgrade_tier())
    print("\n=== bifrost test summary ===")
    print(render_summary(results))
    print(f"total {time.monotonic() - begin:.0f}s; junit files in {RESULTS_DIR}")
    problems = verdict(results)
    if problems:
        print("FAILED:\n  " + "\n  ".join(problems))
        return 1
    print("PASSED")
    return 0
