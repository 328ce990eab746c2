"""The test orchestrator's accounting: junit parsing and what makes a run fail."""

from __future__ import annotations

from pathlib import Path

import pytest

from bifrost import bench, testrun

pytestmark = pytest.mark.unit

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="5">
<testcase classname="t.a" name="ok1"/>
<testcase classname="t.a" name="ok2"><system-out>x</system-out></testcase>
<testcase classname="t.a" name="bad"><failure message="boom">tb</failure></testcase>
<testcase classname="t.a" name="err"><error message="fixture">tb</error></testcase>
<testcase classname="t.a" name="skip"><skipped message="why"/></testcase>
</testsuite></testsuites>
"""


def test_parse_junit_counts_each_outcome(tmp_path: Path) -> None:
    p = tmp_path / "r.xml"
    p.write_text(JUNIT)
    r = testrun.parse_junit(p, "unit")
    assert (r.passed, r.failed, r.errors, r.skipped) == (2, 1, 1, 1)
    assert r.skipped_names == ["t.a::skip"]


def test_missing_junit_is_an_error(tmp_path: Path) -> None:
    r = testrun.parse_junit(tmp_path / "absent.xml", "kernel 6.1")
    assert r.errors == 1
    assert testrun.verdict([r])


def test_verdict_rules() -> None:
    ok = testrun.TierResult("unit", Path("u"), passed=3)
    assert testrun.verdict([ok]) == []
    empty = testrun.TierResult("bpf", Path("b"))
    assert testrun.verdict([ok, empty]) == ["bpf: ran no test"]
    failing = testrun.TierResult("unit", Path("u"), passed=3, failed=1)
    assert "unit: 1 failed, 0 errors" in testrun.verdict([failing])
    # A skip is tolerated on the host tiers but not in the kernel tier.
    host_skip = testrun.TierResult("bpf", Path("b"), passed=1, skipped=1)
    assert testrun.verdict([host_skip]) == []
    guest_skip = testrun.TierResult(
        "kernel 6.1.0-56-amd64", Path("k"), passed=1, skipped=1, skipped_names=["t::x"]
    )
    assert testrun.verdict([guest_skip]) == ["kernel 6.1.0-56-amd64: 1 skipped (t::x)"]


def test_write_junit_round_trips(tmp_path: Path) -> None:
    p = tmp_path / "dkms.xml"
    testrun.write_junit(p, "dkms", [("fou_map 6.1", None), ("bifrost_nf 6.1", "warning: <x> & y")])
    r = testrun.parse_junit(p, "dkms")
    assert (r.passed, r.failed, r.errors, r.skipped) == (1, 1, 0, 0)


def test_kernel_lines_come_from_kernels_env() -> None:
    lines = testrun.kernel_lines()
    assert len(lines) == 2
    assert lines[0].startswith("6.1.")
    assert lines[1].startswith("6.12.")


def test_run_rejects_unknown_tier() -> None:
    with pytest.raises(ValueError, match="unknown tier 'nope'"):
        testrun.run(("nope",))


def test_summary_lists_every_tier() -> None:
    rs = [
        testrun.TierResult("unit", Path("u"), passed=10, seconds=3),
        testrun.TierResult("kernel 6.12.117+deb12-amd64", Path("k"), failed=2, notes=["rc=1"]),
    ]
    text = testrun.render_summary(rs)
    assert "unit" in text
    assert "kernel 6.12.117+deb12-amd64" in text
    assert "rc=1" in text
    # A name longer than the others' does not push its figures out of their columns.
    rs.append(testrun.TierResult("kernel 6.12.117+deb12-amd64 (slab tracked)", Path("s"), passed=1))
    rows = [ln for ln in testrun.render_summary(rs).splitlines() if not ln.startswith("    ")]
    assert len({len(ln) for ln in rows}) == 1, rows


def test_bench_where_is_read_without_import(tmp_path: Path) -> None:
    good = tmp_path / "bench_a.py"
    good.write_text('"""doc"""\nimport not_installed_anywhere\nWHERE = "guest"\n')
    assert bench.where_of(good) == "guest"
    bad = tmp_path / "bench_b.py"
    bad.write_text('WHERE = "moon"\n')
    with pytest.raises(ValueError, match=r"bench_b\.py: needs a module constant WHERE"):
        bench.where_of(bad)


def test_bench_discover_sorts_and_classifies(tmp_path: Path) -> None:
    (tmp_path / "bench_z.py").write_text('WHERE = "host"\n')
    (tmp_path / "bench_a.py").write_text('WHERE = "guest"\n')
    (tmp_path / "helper.py").write_text("x = 1\n")
    found = bench.discover(tmp_path)
    assert [(b.path.name, b.where) for b in found] == [
        ("bench_a.py", "guest"),
        ("bench_z.py", "host"),
    ]


def test_bench_runs_host_benchmarks_and_reports_failures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bench_ok.py").write_text(
        '"""ok"""\nWHERE = "host"\nprint("| path | ratio |")\nprint("| a | 1.00 |")\n'
    )
    assert bench.run("unused-kernel", bench_dir=tmp_path) == 0
    (tmp_path / "bench_broken.py").write_text('WHERE = "host"\nraise SystemExit(3)\n')
    assert bench.run("unused-kernel", bench_dir=tmp_path) == 1
    out = capsys.readouterr().out
    assert "=== bench_ok.py (host) ===" in out
    assert "FAILED bench_broken.py (rc 3)" in out
    assert bench.run("unused-kernel", only="nothing-matches", bench_dir=tmp_path) == 1


def test_kernel_tier_runs_its_host_side_per_kernel_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`invoke test` runs tests/host's kernel-marked tests once per line, told the line."""
    calls: list[tuple[list[str], dict[str, str] | None]] = []

    def fake_pytest(args: list[str], junit: Path, env: dict[str, str] | None = None) -> int:
        calls.append((args, env))
        junit.write_text(JUNIT)
        return 1

    monkeypatch.setattr(testrun, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(testrun, "_pytest", fake_pytest)
    res = testrun.run_kernel_host_tier("6.12.117+deb12-amd64")
    assert calls == [(["-m", "kernel", "tests/host"], {"BIFROST_KERNEL": "6.12.117+deb12-amd64"})]
    assert res.name == "kernel 6.12.117+deb12-amd64 (host)"
    assert (res.passed, res.failed, res.errors, res.skipped) == (2, 1, 1, 1)
    # A skip there fails the run, as in the guest's kernel tier.
    assert "kernel 6.12.117+deb12-amd64 (host): 1 skipped" in " ".join(testrun.verdict([res]))


def test_kernel_tier_boots_the_unload_test_alone_with_slab_tracking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per kernel: one boot for every kernel test but the unload test, and one for it
    with SLUB's allocation tracking on, told to insist on its exact gate."""
    boots: list[tuple[str, tuple[str, ...]]] = []

    def run(kver: str, script: str, timeout: float, append: tuple[str, ...] = ()) -> object:
        boots.append((script, tuple(append)))
        junit = Path(script.split("--junitxml=")[1])
        junit.write_text(JUNIT.replace(' name="skip"><skipped message="why"/>', ' name="s">'))
        return testrun.vm.VmResult(kver, 0, "", 1.0, [])

    monkeypatch.setattr(testrun, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(testrun.vm, "run", run)
    results = testrun.run_kernel_tier("6.1.0-56-amd64")
    assert [r.name for r in results] == [
        "kernel 6.1.0-56-amd64",
        "kernel 6.1.0-56-amd64 (slab tracked)",
    ]
    (plain, plain_append), (tracked, tracked_append) = boots
    assert f"tests/kernel --ignore={testrun.UNLOAD_TEST}" in plain and plain_append == ()
    assert tracked_append == ("slub_debug=U,kmalloc-*",)
    assert (
        tracked.startswith("BIFROST_SLAB_EXACT=1 ")
        and f"-m kernel {testrun.UNLOAD_TEST} " in tracked
    )
    assert results[0].junit != results[1].junit
    assert all(r.passed == 3 and r.failed == 1 for r in results)
