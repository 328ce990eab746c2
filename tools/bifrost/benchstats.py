"""What every benchmark shares: per-round ratios, their median and 95% interval, goals.

One method everywhere (benchmarking.md): the two paths of a comparison run side
by side in each round, the figure is the MEDIAN of the per-round ratios, and its
spread is a distribution-free 95% confidence interval of that median (order
statistics of the rounds: no assumption about the noise of a shared machine).
A benchmark records what it checked and what it measured in a Report, whose
exit code fails the run when the thing measured was not exercised (2) or a
goal was missed (1); `invoke bench` fails on either.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

CONFIDENCE = 0.95


def median_interval(values: Sequence[float]) -> tuple[float, float] | None:
    """A >= 95% confidence interval of the median: the k-th smallest and k-th largest
    value, k the largest with P(Binomial(n, 1/2) < k) <= 2.5%. None below 6 values,
    where even (min, max) covers the median with less than 95%."""
    xs = sorted(values)
    n = len(xs)
    tail, k = 0.0, 0
    while True:
        p = math.comb(n, k) / 2**n  # P(exactly k values below the median)
        if tail + p > (1 - CONFIDENCE) / 2:
            break
        tail += p
        k += 1
    if k == 0:
        return None
    return xs[k - 1], xs[n - k]


@dataclass(frozen=True)
class Ratio:
    """Per-round ratios a/b of two paths measured in the same rounds."""

    rounds: tuple[float, ...]

    @classmethod
    def of(cls, a: Sequence[float], b: Sequence[float]) -> Ratio:
        if len(a) != len(b) or not a:
            raise ValueError(f"per-round ratios need equal, non-empty rounds: {len(a)} vs {len(b)}")
        return cls(tuple(x / y for x, y in zip(a, b, strict=True)))

    @property
    def median(self) -> float:
        return statistics.median(self.rounds)

    @property
    def interval(self) -> tuple[float, float] | None:
        return median_interval(self.rounds)

    @property
    def half_width(self) -> float:
        """The larger distance from the median to an end of the interval (inf: none)."""
        iv = self.interval
        if iv is None:
            return math.inf
        return max(self.median - iv[0], iv[1] - self.median)

    def __str__(self) -> str:
        iv = self.interval
        spread = f"95% {iv[0]:.3f}..{iv[1]:.3f}" if iv else "95% n/a"
        return f"{self.median:.3f} ({spread}, {len(self.rounds)} rounds)"


def alternate(
    a: Callable[[], float],
    b: Callable[[], float],
    min_rounds: int,
    max_rounds: int,
    half_width: float = 0.0,
    budget_s: float = math.inf,
    label: str = "a / b",
    stop: Callable[[], bool] = lambda: False,
) -> tuple[Ratio, str]:
    """Rounds of a and b side by side (A B, then B A, so neither always goes first);
    see rounds_until() for when it stops and what it returns."""

    def pair(i: int) -> tuple[float, float]:
        if i % 2 == 0:
            x = a()
            return x, b()
        y = b()
        return a(), y

    return rounds_until(pair, min_rounds, max_rounds, half_width, budget_s, label, stop)


def interleaved(
    a: Callable[[], tuple[float, float]],
    b: Callable[[], tuple[float, float]],
    slices: int,
) -> Callable[[int], tuple[float, float]]:
    """A round for rounds_until() made of `slices` short measurements of each path,
    A B A B ... (B A B A ... in odd rounds): each call returns (events, seconds), and
    the round's figures are each path's events / seconds over its slices together.
    Noise of a shared machine that lasts longer than a slice then weighs on both
    paths alike, where two long measurements one after the other catch it apart."""

    def pair(i: int) -> tuple[float, float]:
        tot = {"a": [0.0, 0.0], "b": [0.0, 0.0]}
        order = (("a", a), ("b", b)) if i % 2 == 0 else (("b", b), ("a", a))
        for _ in range(slices):
            for name, measure in order:
                events, seconds = measure()
                tot[name][0] += events
                tot[name][1] += seconds
        return tot["a"][0] / tot["a"][1], tot["b"][0] / tot["b"][1]

    return pair


def rounds_until(
    pair: Callable[[int], tuple[float, float]],
    min_rounds: int,
    max_rounds: int,
    half_width: float = 0.0,
    budget_s: float = math.inf,
    label: str = "a / b",
    stop: Callable[[], bool] = lambda: False,
) -> tuple[Ratio, str]:
    """Rounds of pair(round index) -> (a, b), until the ratio a / b has a 95% interval
    within +-half_width, max_rounds or the time budget is reached (never fewer than
    min_rounds), or at once when stop() says so (e.g. a round could not prove what it
    measured). Returns the ratio and, when the interval is still wider than asked, a
    sentence that says so."""
    xs: list[float] = []
    ys: list[float] = []
    start = time.monotonic()
    ratio = None
    for i in range(max_rounds):
        x, y = pair(i)
        xs.append(x)
        ys.append(y)
        ratio = Ratio.of(xs, ys)
        print(f"{label} round {i + 1}: {xs[-1]:.0f} / {ys[-1]:.0f}: {ratio}", flush=True)
        if stop():
            break
        if i + 1 >= min_rounds and (
            ratio.half_width <= half_width or time.monotonic() - start > budget_s
        ):
            break
    if ratio is None:
        raise ValueError("rounds_until() needs at least one round")
    why = ""
    if half_width and ratio.half_width > half_width:
        why = (
            f"could not narrow the 95% interval of {label} to +-{half_width} in "
            f"{len(ratio.rounds)} rounds ({time.monotonic() - start:.0f}s): "
            f"it is +-{ratio.half_width:.3f}"
        )
    return ratio, why


class Run(Protocol):
    """One measured run (e.g. libbpf.TestRun): its verdict and ns per repeat."""

    @property
    def verdict(self) -> str: ...

    @property
    def duration_ns(self) -> int: ...


@dataclass(frozen=True)
class BenchPath:
    """A path measured against the baseline by paired_rounds().

    run: one measurement of the path; verdict: what every run must return
    (None: anything); counted: the sum of the counters that the path moves by
    exactly `repeat` a run (None: none); prepare: called before each pair,
    e.g. to put the path's config in place between measurements, never during one."""

    run: Callable[[], Run]
    verdict: str | None = None
    counted: Callable[[], int] | None = None
    prepare: Callable[[], None] | None = None


@dataclass
class Pairs:
    """ns per repeat of each path and of the baseline run right before it, by round."""

    path: dict[str, list[float]] = field(default_factory=dict)
    base: dict[str, list[float]] = field(default_factory=dict)

    def ratio(self, name: str) -> Ratio:
        return Ratio.of(self.path[name], self.base[name])

    def all_base(self) -> list[float]:
        return [ns for runs in self.base.values() for ns in runs]

    def extend(self, other: Pairs) -> None:
        """Add other's rounds (of the same paths) to these, e.g. another load's."""
        if other.path.keys() != self.path.keys():
            raise ValueError(f"paths differ: {list(other.path)} vs {list(self.path)}")
        for name in self.path:
            self.path[name].extend(other.path[name])
            self.base[name].extend(other.base[name])


def paired_rounds(
    report: Report,
    rounds: int,
    repeat: int,
    baseline: Callable[[], Run],
    base_verdict: str,
    paths: Mapping[str, BenchPath],
) -> Pairs | None:
    """rounds x (for each path: the baseline, then the path), each run proven to be
    the path named: its verdict, and its counters moved by exactly repeat. The
    first run that proves nothing is recorded in report and ends the rounds: None."""
    pairs = Pairs({name: [] for name in paths}, {name: [] for name in paths})
    for _ in range(rounds):
        for name, p in paths.items():
            if p.prepare:
                p.prepare()
            before = p.counted() if p.counted else 0
            b, r = baseline(), p.run()
            ok = report.require(
                b.verdict == base_verdict and p.verdict in (None, r.verdict),
                f"{name}: verdict {r.verdict} (baseline {b.verdict}), expected {p.verdict}",
            )
            if p.counted:
                moved = p.counted() - before
                ok &= report.require(
                    moved == repeat, f"{name}: counters moved {moved}, not {repeat}"
                )
            if not ok:
                return None
            pairs.base[name].append(b.duration_ns)
            pairs.path[name].append(r.duration_ns)
    return pairs


@dataclass(frozen=True)
class Goal:
    name: str
    value: float
    op: str  # ">=" or "<="
    target: float
    detail: str = ""

    @property
    def met(self) -> bool:
        if self.op == ">=":
            return self.value >= self.target
        if self.op == "<=":
            return self.value <= self.target
        raise ValueError(f"goal {self.name}: unknown comparison {self.op!r}")


@dataclass
class Report:
    """Goals and the checks that the measured thing really ran; decides the exit code."""

    title: str
    goals: list[Goal] = field(default_factory=list)
    not_exercised: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def require(self, ok: bool, what: str) -> bool:
        """A proof that the path measured was exercised (e.g. counters moved)."""
        if not ok:
            self.not_exercised.append(what)
        return ok

    def goal(self, name: str, value: float, op: str, target: float, detail: str = "") -> bool:
        g = Goal(name, value, op, target, detail)
        self.goals.append(g)
        return g.met

    def note(self, text: str) -> None:
        self.notes.append(text)

    def render(self) -> str:
        lines = [f"== {self.title}: goals =="]
        for g in self.goals:
            verdict = "MET" if g.met else "MISSED"
            lines.append(f"{g.name}: {g.value:.3f} (goal {g.op} {g.target:g}) {verdict}")
            if g.detail:
                lines.append(f"    {g.detail}")
        lines.extend(f"NOTE: {n}" for n in self.notes)
        lines.extend(f"NOT EXERCISED: {w}" for w in self.not_exercised)
        return "\n".join(lines)

    def exit_code(self) -> int:
        """0: every goal met on a path proven exercised; 2: not exercised; 1: a goal missed."""
        if self.not_exercised:
            return 2
        if not self.goals:
            return 2  # a benchmark that decided nothing cannot pass
        return 0 if all(g.met for g in self.goals) else 1

    def finish(self) -> int:
        print(self.render(), flush=True)
        rc = self.exit_code()
        print(f"{self.title}: {'PASSED' if rc == 0 else 'FAILED'} (exit {rc})", flush=True)
        return rc
