"""The benchmarks' shared statistics: per-round ratios, the median's interval, exit codes."""

from __future__ import annotations

import math

import pytest

from bifrost.benchstats import Ratio, Report, alternate, interleaved, median_interval, rounds_until

pytestmark = pytest.mark.unit


def test_interval_of_the_median_is_order_statistics() -> None:
    assert median_interval([1.0] * 5) is None, "5 rounds cannot give 95%"
    assert median_interval([3, 1, 2, 6, 5, 4]) == (1, 6), "6 rounds: min..max (96.9%)"
    # 25 rounds: the 8th smallest and 8th largest (P(Bin(25, .5) < 8) = 2.16%).
    assert median_interval(list(range(1, 26))) == (8, 18)


def test_ratio_is_the_median_of_per_round_ratios_not_a_ratio_of_medians() -> None:
    a = [10.0, 30.0, 50.0]
    b = [5.0, 10.0, 100.0]
    r = Ratio.of(a, b)
    assert r.rounds == (2.0, 3.0, 0.5)
    assert r.median == 2.0  # the ratio of the medians would be 30 / 10 = 3
    assert r.half_width == math.inf
    assert str(r) == "2.000 (95% n/a, 3 rounds)"
    six = Ratio.of([1.0, 1.02, 0.98, 1.01, 0.99, 1.0], [1.0] * 6)
    assert six.interval == (0.98, 1.02)
    assert six.half_width == pytest.approx(0.02)
    with pytest.raises(ValueError, match="equal, non-empty rounds"):
        Ratio.of([1.0], [1.0, 2.0])


def test_report_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    met = Report("b")
    assert met.goal("x", 1.5, "<=", 2.0) is True
    assert met.finish() == 0
    missed = Report("b")
    missed.goal("x", 2.5, "<=", 2.0)
    missed.goal("y", 11.0, ">=", 10.0)
    assert missed.finish() == 1
    unproven = Report("b")
    unproven.goal("x", 1.0, ">=", 0.95)
    assert unproven.require(False, "replies did not come back through POP 2") is False
    assert unproven.finish() == 2
    assert Report("empty").exit_code() == 2, "a benchmark that decided nothing fails"
    out = capsys.readouterr().out
    assert "x: 2.500 (goal <= 2) MISSED" in out
    assert "y: 11.000 (goal >= 10) MET" in out
    assert "NOT EXERCISED: replies did not come back through POP 2" in out
    assert out.count("FAILED (exit") == 2


def test_alternate_runs_until_the_interval_is_narrow_and_says_when_it_is_not() -> None:
    order: list[str] = []

    def a() -> float:
        order.append("a")
        return 100.0

    def b() -> float:
        order.append("b")
        return 100.0

    narrow, why = alternate(a, b, 6, 30, half_width=0.03, label="x")
    assert len(narrow.rounds) == 6 and narrow.median == 1.0 and why == ""
    assert order[:4] == ["a", "b", "b", "a"], "A B, then B A"
    order.clear()
    noisy = iter([1.0, 2.0] * 20)
    wide, why = alternate(lambda: next(noisy), lambda: 1.0, 6, 10, half_width=0.03, label="x")
    assert len(wide.rounds) == 10
    assert why.startswith("could not narrow the 95% interval of x to +-0.03 in 10 rounds")


def test_alternate_stops_at_once_when_told() -> None:
    calls: list[int] = []
    ratio, _ = alternate(lambda: calls.append(1) or 1.0, lambda: 1.0, 6, 30, stop=lambda: True)
    assert len(ratio.rounds) == 1 and calls == [1]


def test_interleaved_rounds_alternate_slices_and_pool_each_path() -> None:
    order: list[str] = []

    def a() -> tuple[float, float]:
        order.append("a")
        return 30.0, 1.0

    def b() -> tuple[float, float]:
        order.append("b")
        return 10.0, (0.5 if order.count("b") == 1 else 1.5)

    ratio, why = rounds_until(interleaved(a, b, 2), 2, 2, label="x")
    # Round 1: A B A B; round 2: B A B A.
    assert order == ["a", "b", "a", "b", "b", "a", "b", "a"]
    # A path's rate pools its slices: b did 20 in 0.5 + 1.5 s, then 20 in 3 s.
    assert ratio.rounds == pytest.approx((30.0 / 10.0, 30.0 / (20.0 / 3.0)))
    assert why == ""
