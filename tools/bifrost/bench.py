"""`invoke bench`: run every benchmarks/bench_*.py where it belongs.

A benchmark declares ``WHERE = "host"`` (run here, directly) or ``WHERE =
"guest"`` (needs the modules: all guest benchmarks run in ONE guest boot, after
a DKMS build + install for that kernel). Each prints its own table.
"""

from __future__ import annotations

import ast
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bifrost import dkms, vm
from bifrost.paths import SOURCE_ROOT

BENCH_DIR = SOURCE_ROOT / "benchmarks"
GUEST_TIMEOUT = 3600  # bench_fou_map alone may take its 10-minute echo budget and a 1M fill


@dataclass(frozen=True)
class Bench:
    path: Path
    where: str


def where_of(path: Path) -> str:
    """The module constant WHERE, read without importing (imports may need the guest)."""
    tree = ast.parse(path.read_text(), str(path))
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "WHERE" for t in node.targets)
            and isinstance(node.value, ast.Constant)
            and node.value.value in ("host", "guest")
        ):
            return str(node.value.value)
    raise ValueError(f'{path.name}: needs a module constant WHERE = "host" or "guest"')


def discover(bench_dir: Path = BENCH_DIR) -> list[Bench]:
    return [Bench(p, where_of(p)) for p in sorted(bench_dir.glob("bench_*.py"))]


def _rel(path: Path) -> str:
    """Relative to the source root (the guest's cwd) when inside it."""
    return str(path.relative_to(SOURCE_ROOT)) if path.is_relative_to(SOURCE_ROOT) else str(path)


def run(kernel: str, only: str | None = None, bench_dir: Path = BENCH_DIR) -> int:
    """Run the benchmarks (those whose name contains `only`); return non-zero on failure."""
    benches = [b for b in discover(bench_dir) if only is None or only in b.path.name]
    if not benches:
        print(f"no benchmarks in {bench_dir}" + (f" matching {only!r}" if only else ""))
        return 1
    failed: list[str] = []
    for b in (b for b in benches if b.where == "host"):
        print(f"\n=== {b.path.name} (host) ===", flush=True)
        rc = subprocess.run([sys.executable, _rel(b.path)], cwd=SOURCE_ROOT, check=False).returncode
        if rc:
            failed.append(f"{b.path.name} (rc {rc})")
    guest = [b for b in benches if b.where == "guest"]
    if guest:
        dkms.build([kernel], install=True)
        script = ["rc=0"]
        for b in guest:
            script += [
                f"echo '=== {b.path.name} (guest {kernel}) ==='",
                f".venv/bin/python {shlex.quote(_rel(b.path))} || "
                f"{{ echo 'BENCH FAILED {b.path.name}'; rc=1; }}",
            ]
        script.append("exit $rc")
        try:
            result = vm.run(kernel, "\n".join(script), timeout=GUEST_TIMEOUT)
        except vm.GuestFailure as e:
            failed.append(str(e))
        else:
            failed += [
                ln.split("BENCH FAILED ", 1)[1]
                for ln in result.console.splitlines()
                if ln.startswith("BENCH FAILED ")
            ]
            if result.rc and not failed:
                failed.append(f"guest rc {result.rc}")
    print(f"\nbench: {len(benches)} benchmark(s), {len(failed)} failed")
    for f in failed:
        print(f"  FAILED {f}")
    return 1 if failed else 0
