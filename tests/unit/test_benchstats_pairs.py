"""paired_rounds(): the measuring loop bench_xdp and bench_xdp_modules share."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from bifrost.benchstats import BenchPath, Pairs, Report, paired_rounds

pytestmark = pytest.mark.unit


@dataclass
class FakeRun:
    verdict: str
    duration_ns: int


def test_each_path_runs_right_after_the_baseline_and_counts_as_proven() -> None:
    order: list[str] = []
    counter = {"n": 0}
    base_ns = iter([10, 20, 30, 40])

    def base() -> FakeRun:
        order.append("base")
        return FakeRun("PASS", next(base_ns))

    def fwd() -> FakeRun:
        order.append("fwd")
        counter["n"] += 5
        return FakeRun("TX", 15)

    def drop() -> FakeRun:
        order.append("drop")
        return FakeRun("DROP", 30)

    prepared: list[str] = []
    report = Report("t")
    pairs = paired_rounds(
        report,
        2,
        5,
        base,
        "PASS",
        {
            "fwd": BenchPath(fwd, "TX", lambda: counter["n"], lambda: prepared.append("fwd")),
            "drop": BenchPath(drop),  # any verdict, no counter
        },
    )
    assert pairs is not None and not report.not_exercised
    assert order == ["base", "fwd", "base", "drop"] * 2
    assert prepared == ["fwd", "fwd"]
    assert pairs.base == {"fwd": [10, 30], "drop": [20, 40]}
    assert pairs.path == {"fwd": [15, 15], "drop": [30, 30]}
    assert pairs.ratio("fwd").rounds == (1.5, 0.5)
    assert sorted(pairs.all_base()) == [10, 20, 30, 40]


@pytest.mark.parametrize(
    ("verdict", "moved", "why"),
    [("DROP", 5, "verdict DROP"), ("TX", 4, "counters moved 4, not 5")],
)
def test_a_run_that_proves_nothing_ends_the_rounds(verdict: str, moved: int, why: str) -> None:
    runs = {"n": 0}

    def fwd() -> FakeRun:
        runs["n"] += 1
        return FakeRun(verdict, 1)

    report = Report("t")
    pairs = paired_rounds(
        report,
        3,
        5,
        lambda: FakeRun("PASS", 1),
        "PASS",
        {"fwd": BenchPath(fwd, "TX", lambda: runs["n"] * moved)},
    )
    assert pairs is None and runs["n"] == 1
    assert len(report.not_exercised) == 1 and why in report.not_exercised[0]
    assert report.exit_code() == 2


def test_pairs_extend_pools_another_loads_rounds_of_the_same_paths() -> None:
    a = Pairs({"fwd": [2.0]}, {"fwd": [1.0]})
    a.extend(Pairs({"fwd": [3.0, 4.0]}, {"fwd": [1.0, 2.0]}))
    assert a.path == {"fwd": [2.0, 3.0, 4.0]} and a.base == {"fwd": [1.0, 1.0, 2.0]}
    assert a.ratio("fwd").median == 2.0
    with pytest.raises(ValueError, match="paths differ"):
        a.extend(Pairs({"ret": [1.0]}, {"ret": [1.0]}))
