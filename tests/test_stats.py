"""aslquant.stats against hand-computed cases and independent methods.

The bootstrap's distribution for a mean of 0/1 values is known exactly (a binomial, or for a
paired drop the difference of two multinomial counts), so its percentile limits can be
computed by hand from ``math.comb`` and compared with what the resampling code returns.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from aslquant import stats
from aslquant.stats import Interval


def _quantiles_from_pmf(pmf: dict[int, float]) -> tuple[int, int, float]:
    """2.5% and 97.5% quantiles of a discrete distribution, and how far each CDF step is
    from 0.025/0.975 (the case is only a fair test of resampling when that margin is wide)."""
    values, cdf = sorted(pmf), np.cumsum([pmf[v] for v in sorted(pmf)])
    lo = values[int(np.searchsorted(cdf, 0.025))]
    hi = values[int(np.searchsorted(cdf, 0.975))]
    margin = float(np.min(np.abs(cdf - 0.025)).item())
    margin = min(margin, float(np.min(np.abs(cdf - 0.975))))
    return lo, hi, margin


def _binomial_pmf(n: int, p: float) -> dict[int, float]:
    return {x: math.comb(n, x) * p**x * (1 - p) ** (n - x) for x in range(n + 1)}


def _paired_pmf(n: int, b: int, c: int) -> dict[int, float]:
    """Distribution of (#b - #c) in a resample of n images drawn with replacement."""
    pb, pc = b / n, c / n
    pmf: dict[int, float] = {}
    # Counts above 100 have probability < 1e-40 for b, c <= 12 of 200: left out for speed.
    for nb in range(min(n, 100) + 1):
        for nc in range(min(n - nb, 100) + 1):
            prob = (
                math.factorial(n)
                // (math.factorial(nb) * math.factorial(nc) * math.factorial(n - nb - nc))
                * pb**nb
                * pc**nc
                * (1 - pb - pc) ** (n - nb - nc)
            )
            pmf[nb - nc] = pmf.get(nb - nc, 0.0) + prob
    return pmf


# ---------------------------------------------------------------------------------------------
# McNemar


def test_mcnemar_hand_computed_cases():
    # b=1, c=7: 2 * (C(8,0) + C(8,1)) / 2^8 = 2 * 9 / 256
    assert stats.mcnemar_from_counts(1, 7).p_value == 0.0703125
    assert stats.mcnemar_from_counts(7, 1).p_value == 0.0703125
    assert stats.mcnemar_from_counts(0, 5).p_value == 2 / 32
    assert stats.mcnemar_from_counts(10, 0).p_value == 2 / 1024
    assert stats.mcnemar_from_counts(5, 5).p_value == 1.0
    assert stats.mcnemar_from_counts(0, 0).p_value == 1.0


def test_mcnemar_matches_scipy_binomial_test():
    scipy_stats = pytest.importorskip("scipy.stats")
    for b, c in [(3, 9), (12, 2), (40, 25), (0, 1), (150, 180), (1000, 1100)]:
        expected = scipy_stats.binomtest(b, b + c, 0.5).pvalue
        assert stats.mcnemar_from_counts(b, c).p_value == pytest.approx(expected, rel=1e-9)


def test_mcnemar_counts_come_from_the_right_images_and_verdict_reads_them():
    fp32 = np.array([True] * 12 + [False] * 2 + [True] * 50 + [False] * 6)
    int8 = np.array([False] * 12 + [True] * 2 + [True] * 50 + [False] * 6)
    result = stats.mcnemar_exact(fp32, int8)
    assert (result.b, result.c) == (12, 2)
    assert result.significant
    assert result.verdict.startswith("INT8 makes more errors than FP32")
    assert "12 images only FP32 got right, 2 only INT8 got right" in result.verdict
    fewer = stats.mcnemar_exact(fp32[12:], int8[12:] | True)  # b=0, c=8: p = 2/256
    assert fewer.verdict.startswith("INT8 makes fewer errors than FP32")
    quiet = stats.mcnemar_from_counts(4, 3)
    assert quiet.verdict.startswith("INT8 errors are not distinguishable from FP32's")
    assert "(p=1)" in quiet.verdict
    assert "FP32 and INT8 are right and wrong on exactly the same images" in (
        stats.mcnemar_from_counts(0, 0).verdict
    )


# ---------------------------------------------------------------------------------------------
# Bootstrap intervals


def test_accuracy_interval_equals_the_exact_bootstrap_quantiles():
    # 40 of 50 right: a resample's accuracy is Binomial(50, 0.8) / 50 exactly.
    lo, hi, margin = _quantiles_from_pmf(_binomial_pmf(50, 0.8))
    assert (lo, hi) == (34, 45) and margin > 0.005  # 5 Monte-Carlo SEs at 50,000 resamples
    correct = np.array([True] * 40 + [False] * 10)
    interval = stats.accuracy_interval(correct, n_boot=50_000, seed=3)
    assert interval.method.startswith("percentile bootstrap")
    assert interval.estimate == 0.8
    assert (interval.low, interval.high) == (lo / 50, hi / 50)
    assert interval.unit == "fraction" and interval.n == 50


@pytest.mark.parametrize("b, c", [(12, 0), (10, 10)])
def test_paired_drop_interval_equals_the_exact_paired_bootstrap_quantiles(b, c):
    n, both_wrong = 200, 40
    lo, hi, margin = _quantiles_from_pmf(_paired_pmf(n, b, c))
    assert margin > 0.0035
    fp32 = np.array([True] * b + [False] * c + [True] * (n - b - c - both_wrong) + [False] * 40)
    int8 = np.array([False] * b + [True] * c + [True] * (n - b - c - both_wrong) + [False] * 40)
    interval = stats.paired_drop_interval(fp32, int8, n_boot=50_000, seed=5)
    assert interval.method.startswith("percentile bootstrap")
    assert interval.estimate == pytest.approx(100 * (b - c) / n)
    assert interval.low == pytest.approx(100 * lo / n)
    assert interval.high == pytest.approx(100 * hi / n)
    assert interval.unit == "points"


def test_paired_drop_keeps_the_pairing():
    """Resampling the two models' results independently would add each accuracy's own
    variance (here ~100 shared errors) to the drop; jointly, only the 20 changed images count."""
    rng = np.random.default_rng(0)
    n = 400
    fp32 = rng.random(n) < 0.75
    int8 = fp32.copy()
    changed = rng.choice(np.flatnonzero(fp32), 12, replace=False)
    int8[changed] = False
    fixed = rng.choice(np.flatnonzero(~fp32), 8, replace=False)
    int8[fixed] = True
    paired = stats.paired_drop_interval(fp32, int8, seed=1)
    separate = [stats.accuracy_interval(x, seed=s) for s, x in ((1, fp32), (2, int8))]
    unpaired_width = 100 * math.hypot(*(iv.width for iv in separate))
    assert paired.width < 0.5 * unpaired_width
    assert paired.contains(paired.estimate)


def test_bootstrap_is_seeded_and_fast():
    rng = np.random.default_rng(7)
    correct = rng.random(2000) < 0.9
    first = stats.accuracy_interval(correct, n_boot=1000, seed=11)
    assert first == stats.accuracy_interval(correct, n_boot=1000, seed=11)
    assert first != stats.accuracy_interval(correct, n_boot=1000, seed=12)
    started = time.perf_counter()
    stats.bootstrap_means(np.stack([correct, ~correct], axis=1), n_boot=1000, seed=0)
    assert time.perf_counter() - started < 1.0


def test_pair_summary_is_consistent_with_the_single_intervals():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 29, 600)
    fp32 = np.where(rng.random(600) < 0.9, labels, (labels + 1) % 29)
    int8 = np.where(rng.random(600) < 0.95, fp32, (fp32 + 2) % 29)
    summary = stats.pair_summary(labels, fp32, int8, n_boot=500, seed=4)
    assert summary.n == 600
    assert summary.fp32_accuracy == stats.accuracy_interval(fp32 == labels, n_boot=500, seed=4)
    assert summary.agreement.estimate == pytest.approx(np.mean(fp32 == int8))
    assert summary.drop.estimate == pytest.approx(
        100 * (summary.fp32_accuracy.estimate - summary.int8_accuracy.estimate)
    )
    assert summary.drop == stats.paired_drop_interval(
        fp32 == labels, int8 == labels, n_boot=500, seed=4
    )
    assert summary.mcnemar == stats.mcnemar_exact(fp32 == labels, int8 == labels)
    assert set(summary.to_dict()) == {
        "n",
        "fp32_accuracy",
        "int8_accuracy",
        "drop",
        "agreement",
        "mcnemar",
    }


# ---------------------------------------------------------------------------------------------
# Small counts and degenerate cases


def test_all_correct_uses_wilson_whose_limit_is_known_in_closed_form():
    z2 = 1.959963984540054**2
    interval = stats.accuracy_interval(np.ones(870, bool))
    assert interval.method == "Wilson score"
    assert (interval.estimate, interval.high) == (1.0, 1.0)
    assert interval.low == pytest.approx(870 / (870 + z2))  # Wilson at k = n
    none = stats.accuracy_interval(np.zeros(10, bool))
    assert (none.low, none.estimate) == (0.0, 0.0)
    assert none.high == pytest.approx(z2 / (10 + z2))  # Wilson at k = 0


def test_wilson_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    for k, n in [(0, 7), (3, 30), (27, 30), (450, 500), (999, 1000)]:
        ours = stats.wilson_interval(k, n)
        ci = scipy_stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
        assert (ours.low, ours.high) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_no_images_gives_unknown_intervals_that_decide_nothing():
    empty = stats.accuracy_interval(np.zeros(0, bool))
    assert math.isnan(empty.low) and not empty.excludes(0.0) and not empty.contains(0.0)
    summary = stats.pair_summary([], [], [])
    assert summary.n == 0 and math.isnan(summary.drop.estimate)
    assert summary.mcnemar.p_value == 1.0


def test_no_changed_image_gives_the_exact_bound_on_the_rate_of_changes():
    fp32 = np.array([True] * 800 + [False] * 70)
    interval = stats.paired_drop_interval(fp32, fp32.copy())
    bound = 100 * (1 - 0.025 ** (1 / 870))  # Clopper-Pearson upper limit at 0 of 870
    assert interval.method == "exact bound (no image changed)"
    assert (interval.low, interval.estimate, interval.high) == pytest.approx((-bound, 0, bound))
    assert interval.high == pytest.approx(0.4231, abs=1e-4)


def test_few_changed_images_use_newcombe():
    fp32 = np.array([True] * 300 + [False] * 20)
    int8 = fp32.copy()
    int8[:3] = False  # 3 changed images: too few for a bootstrap
    interval = stats.paired_drop_interval(fp32, int8)
    assert interval.method == "Newcombe paired score"
    assert interval == stats.newcombe_drop_interval(297, 3, 0, 20)
    assert interval.low < 0 < interval.high  # 3 of 320 is not evidence of a drop (McNemar: 0.25)


def test_newcombe_with_zero_correlation_is_square_and_add_of_independent_wilson_limits():
    scipy_stats = pytest.importorskip("scipy.stats")
    a, b, c, d = 4, 2, 2, 1  # ad == bc, so phi = 0
    n = a + b + c + d
    w1 = scipy_stats.binomtest(a + b, n).proportion_ci(0.95, method="wilson")
    w2 = scipy_stats.binomtest(a + c, n).proportion_ci(0.95, method="wilson")
    p1, p2 = (a + b) / n, (a + c) / n
    low = p1 - p2 - math.hypot(p1 - w1.low, w2.high - p2)
    high = p1 - p2 + math.hypot(w1.high - p1, p2 - w2.low)
    interval = stats.newcombe_drop_interval(a, b, c, d)
    assert (interval.low, interval.high) == pytest.approx((100 * low, 100 * high), abs=1e-9)


def test_newcombe_narrows_with_positive_correlation_and_covers_at_small_n():
    # Same margins (p1 = 0.7, p2 = 0.6); the correlated table has fewer discordant images.
    correlated = stats.newcombe_drop_interval(55, 15, 5, 25)
    independent = stats.newcombe_drop_interval(42, 28, 18, 12)
    assert correlated.estimate == independent.estimate == pytest.approx(10.0)
    assert correlated.width < 0.8 * independent.width
    rng = np.random.default_rng(0)
    for probs in [(0.7, 0.1, 0.05, 0.15), (0.5, 0.15, 0.15, 0.2), (0.85, 0.08, 0.02, 0.05)]:
        true_drop = 100 * (probs[1] - probs[2])
        tables = rng.multinomial(30, probs, size=2000)
        covered = np.mean(
            [stats.newcombe_drop_interval(*map(int, t)).contains(true_drop) for t in tables]
        )
        # A score interval's coverage wanders a few points around 95% at n = 30 (0.92 to 0.98
        # for these tables when this test was written); a broken formula lands far outside.
        assert 0.90 <= covered <= 0.99, (probs, covered)


def test_at_the_small_count_threshold_bootstrap_and_newcombe_both_cover():
    """SMALL_COUNT hands over from Newcombe to the bootstrap at 10 changed images: there,
    both should cover the true drop about 95% of the time."""
    rng = np.random.default_rng(2)
    n, probs = 500, (0.88, 0.015, 0.005, 0.10)  # ~10 changed images expected
    true_drop = 100 * (probs[1] - probs[2])
    boot_hits = newcombe_hits = runs = 0
    for table in rng.multinomial(n, probs, size=300):
        a, b, c, d = map(int, table)
        fp32 = np.array([True] * (a + b) + [False] * (c + d))
        int8 = np.array([True] * a + [False] * b + [True] * c + [False] * d)
        diff = fp32.astype(float) - int8
        reps = 100 * stats.bootstrap_means(diff, n_boot=400, seed=runs)[:, 0]
        low, high = np.percentile(reps, [2.5, 97.5])
        boot_hits += low <= true_drop <= high
        newcombe_hits += stats.newcombe_drop_interval(a, b, c, d).contains(true_drop)
        runs += 1
    assert 0.90 <= boot_hits / runs <= 0.99
    assert 0.90 <= newcombe_hits / runs <= 0.99


# ---------------------------------------------------------------------------------------------
# Seeds, gates, ranks, classes


def test_seed_spread_by_hand():
    spread = stats.seed_spread([0.23, 0.34, 0.69, 1.15])
    assert spread.k == 4
    assert spread.mean == pytest.approx(0.6025)
    assert (spread.min, spread.max) == (0.23, 1.15)
    deviations = [v - 0.6025 for v in (0.23, 0.34, 0.69, 1.15)]
    assert spread.std == pytest.approx(math.sqrt(sum(d * d for d in deviations) / 3))
    interval = spread.interval
    assert (interval.low, interval.high, interval.level) == (0.23, 1.15, pytest.approx(0.6))
    assert spread.to_dict()["values"] == [0.23, 0.34, 0.69, 1.15]
    assert math.isnan(stats.seed_spread([0.5]).std)
    with pytest.raises(ValueError):
        stats.seed_spread([])
    with pytest.raises(ValueError):
        stats.seed_spread([0.1, float("nan")])


def _drop(estimate: float, low: float, high: float) -> Interval:
    return Interval(estimate, low, high, unit="points")


def test_gate_outcomes():
    seeds = stats.seed_spread
    assert stats.gate_verdict(_drop(0.1, -0.2, 0.4), 0.5).outcome == "pass"
    assert stats.gate_verdict(_drop(0.3, -0.1, 0.7), 0.5).outcome == "pass within uncertainty"
    assert stats.gate_verdict(_drop(0.7, 0.3, 1.1), 0.5).outcome == "fail within uncertainty"
    assert stats.gate_verdict(_drop(1.2, 0.8, 1.6), 0.5).outcome == "fail beyond uncertainty"
    # A calibration seed on the other side of the threshold makes the verdict uncertain.
    interval_only = _drop(1.2, 0.8, 1.6)
    verdict = stats.gate_verdict(interval_only, 0.5, seeds([0.23, 0.34, 0.69, 1.15]))
    assert verdict.outcome == "fail within uncertainty" and verdict.failed
    assert not verdict.beyond_uncertainty
    assert "4 calibration seeds 0.23 to 1.15" in verdict.reason
    passing = stats.gate_verdict(_drop(0.1, -0.2, 0.4), 0.5, seeds([0.1, 0.6]))
    assert passing.outcome == "pass within uncertainty" and not passing.failed
    # The figure equal to the threshold passes, as `--fail-if-drop` fails only above it.
    assert stats.gate_verdict(_drop(0.5, 0.5, 0.5), 0.5).outcome == "pass"
    assert set(stats.GATE_OUTCOMES) == {
        stats.gate_verdict(_drop(e, lo, hi), 0.5).outcome
        for e, lo, hi in [(0.1, 0, 0.2), (0.3, 0, 0.7), (0.7, 0.3, 0.9), (1, 0.8, 1.2)]
    }
    with pytest.raises(ValueError):
        stats.gate_verdict(_drop(math.nan, math.nan, math.nan), 0.5)


def test_ranking_marks_overlaps_tiers_and_distinct_neighbours():
    candidates = {
        "a": Interval(0.90, 0.88, 0.92),
        "b": Interval(0.95, 0.93, 0.97),
        "c": Interval(0.94, 0.92, 0.96),
        "d": Interval(0.80, 0.78, 0.82),
    }
    ranked = stats.rank_candidates(candidates)
    assert [r.name for r in ranked] == ["b", "c", "a", "d"]
    assert [r.rank for r in ranked] == [1, 2, 3, 4]
    assert [r.tier for r in ranked] == [1, 1, 2, 3]
    assert [r.distinct_from_next for r in ranked] == [False, False, True, None]
    assert ranked[1].overlaps_with == ("a", "b")
    assert stats.overlapping_pairs(ranked) == [("b", "c"), ("c", "a")]
    drops = stats.rank_candidates(
        [("x", _drop(1.0, 0.5, 1.5)), ("y", _drop(0.2, 0.0, 0.4))], higher_is_better=False
    )
    assert [r.name for r in drops] == ["y", "x"] and drops[0].distinct_from_next
    with pytest.raises(ValueError):
        stats.rank_candidates([("x", _drop(1, 0, 2)), ("x", _drop(1, 0, 2))])


def test_per_class_drops_flag_only_clear_changes():
    labels, fp32, int8 = [], [], []

    def add(cls: int, both: int, only_fp32: int, only_int8: int, neither: int) -> None:
        wrong = (cls + 1) % 3
        for f, q, k in ((cls, cls, both), (cls, wrong, only_fp32), (wrong, cls, only_int8)):
            labels.extend([cls] * k)
            fp32.extend([f] * k)
            int8.extend([q] * k)
        labels.extend([cls] * neither)
        fp32.extend([wrong] * neither)
        int8.extend([wrong] * neither)

    add(0, 15, 14, 0, 1)  # 14 of 30 flipped to wrong: clearly worse
    add(1, 27, 2, 0, 1)  # 2 of 30: chance
    rows = stats.per_class_drops(labels, fp32, int8, ["A", "B", "C"])
    a, b, c = rows
    assert (a.b, a.c, a.n) == (14, 0, 30)
    assert a.drop.estimate == pytest.approx(100 * 14 / 30)
    assert a.fp32_accuracy == pytest.approx(29 / 30) and a.int8_accuracy == pytest.approx(0.5)
    assert a.flagged and a.direction == "worse"
    assert not b.flagged and b.direction == "no clear change"
    assert c.n == 0 and math.isnan(c.drop.estimate) and not c.flagged
    assert a.to_dict()["flagged"] is True


def test_interval_helpers():
    interval = Interval(0.5, 0.4, 0.6, unit="fraction")
    assert interval.contains(0.4) and interval.excludes(0.39) and not interval.excludes(0.6)
    assert interval.overlaps(Interval(0.6, 0.6, 0.7))
    assert not interval.overlaps(Interval(0.7, 0.61, 0.8))
    assert interval.overlaps(Interval(math.nan, math.nan, math.nan))
    percent = interval.scaled(100, "percent")
    assert (percent.low, percent.estimate, percent.high, percent.unit) == (40, 50, 60, "percent")
    assert interval.to_dict()["estimate"] == 0.5
    with pytest.raises(ValueError):
        Interval(0.5, 0.6, 0.4)
