"""Uncertainty in one place: intervals, the McNemar test, calibration-seed spread, gates, ranks.

Every accuracy, drop and agreement aslquant shows rests on a finite set of evaluation images
and on one random draw of calibration images. This module turns those numbers into verdicts
that say how sure they are. NumPy and the standard library only; every random draw is seeded,
so the same inputs give the same intervals.

How to read the numbers
-----------------------
- **Units.** Accuracies and agreement are fractions in 0..1 (as ``aslquant.measure``); drops
  are in percentage points, FP32 minus INT8 (as ``RunResult.accuracy_drop_points``), so a
  positive drop means INT8 is worse. ``Interval.unit`` says which.
- **Intervals over images** (``accuracy_interval``, ``agreement_interval``,
  ``paired_drop_interval``, ``pair_summary``) are 95% *percentile bootstrap* intervals: the
  evaluation images are resampled with replacement ``n_boot`` times and the 2.5th and 97.5th
  percentiles of the statistic are the limits. For the drop the two models' results are
  resampled *jointly*, image by image, so the pairing is kept: an image both models get wrong
  costs nothing, which makes the drop interval much narrower than two separate accuracy
  intervals would suggest. They answer "how much could this figure move on another set of
  images like these?"; they do not cover calibration luck (see the seed spread).

  Why percentile and not BCa: each statistic here is a mean of per-image 0/1 (or -1/0/1)
  values over hundreds or thousands of images, where the bootstrap distribution is close to
  symmetric; the percentile interval never leaves the valid range (0..1, -100..100 points),
  and BCa's bias correction is computed from the share of resamples below the estimate, which
  is ill-defined for these discrete statistics where many resamples tie with it.
- **Few events.** When the count a proportion rests on is small (fewer than
  ``SMALL_COUNT`` errors, disagreements or changed images), the bootstrap distribution is a
  handful of discrete values and its percentiles under-cover (with zero errors it collapses to a
  point). Then the score interval built for small counts is used instead: Wilson's for a
  proportion, Newcombe's paired "method 10" for a drop (Newcombe 1998, Stat. Med. 17:2635).
  ``Interval.method`` says which was used.
- **McNemar** (``mcnemar_exact``) asks whether INT8's errors differ from FP32's beyond chance,
  using only the images the two models disagree on about correctness: b (FP32 right, INT8
  wrong) and c (the reverse). Under "no difference" each such image is a fair coin, so the
  two-sided exact binomial p-value is exact for any b and c.
- **Calibration-seed spread** (``seed_spread``) is the drop re-measured with k different
  calibration draws. Its interval is the range min..max of the k values; for k exchangeable
  draws the chance that one more draw lands inside that range is (k-1)/(k+1), which is the
  interval's ``level`` (0.5 for k=3, 0.6 for k=4): a spread from 3 seeds is a lower bound on
  how much luck moves the drop, not a 95% statement.
- **Gates** (``gate_verdict``) combine both kinds of uncertainty. See ``GATE_OUTCOMES``.
- **Ranks** (``rank_candidates``) mark which neighbours' intervals overlap. Non-overlapping 95%
  intervals imply a real difference; overlapping ones do not prove there is none (two recipes
  scored on the same images are compared more sharply with ``paired_drop_interval`` on their
  two correctness arrays).
- **Per-class drops** (``per_class_drops``) use Newcombe's interval in every class, because a
  class has tens of images, not thousands. A class is flagged only when its interval excludes
  zero. With 29 classes and 95% intervals, about one class in 40 is flagged by chance even when
  INT8 changes nothing: pass ``level=1 - 0.05 / n_classes`` for a family-wise 5% guarantee.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from statistics import NormalDist

import numpy as np

#: Bootstrap resamples: enough that the Monte-Carlo error of a 2.5% percentile is small
#: against the interval's width, and 2000 resamples of 2000 images take well under a second.
DEFAULT_N_BOOT = 2000
#: Seed of every bootstrap unless the caller passes one: same inputs, same interval.
DEFAULT_SEED = 0
DEFAULT_LEVEL = 0.95
#: Below this many events (errors, disagreements, changed images) the bootstrap distribution
#: is too discrete to trust (with 1 changed image it is a Poisson(1) count: 37% of resamples
#: show none; with 0 it is a single point) and the score intervals take over. From about 10
#: on, both cover the true drop about 95% of the time (tests/test_stats.py simulates it).
SMALL_COUNT = 10
#: A McNemar p-value below this is reported as a real difference between the models.
MCNEMAR_ALPHA = 0.05
#: Gathers per bootstrap block (resamples x images), to bound memory for large image sets.
_BLOCK_DRAWS = 4_000_000

FRACTION = "fraction"
POINTS = "points"

GATE_OUTCOMES: tuple[str, ...] = (
    "pass",
    "pass within uncertainty",
    "fail within uncertainty",
    "fail beyond uncertainty",
)
"""Outcomes of ``gate_verdict`` for a figure that must not exceed a threshold.

- ``pass``: the figure, its whole interval and every calibration seed are at or below it.
- ``pass within uncertainty``: the figure is at or below it, but the interval's upper end or
  some seed is above: another image set or calibration draw could fail.
- ``fail within uncertainty``: the figure is above it, but the interval's lower end or some
  seed is at or below: another image set or calibration draw could pass.
- ``fail beyond uncertainty``: the figure, its whole interval and every seed are above it.
"""


def _z(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be between 0 and 1, got {level}")
    return NormalDist().inv_cdf(0.5 + level / 2.0)


@dataclass(frozen=True)
class Interval:
    """An estimate with its uncertainty: ``low <= estimate <= high`` at confidence ``level``.

    ``n`` is what the interval rests on (images, or seeds for a seed spread); ``method`` names
    how it was computed. NaN limits mean "not computable" (e.g. no images).
    """

    estimate: float
    low: float
    high: float
    level: float = DEFAULT_LEVEL
    method: str = ""
    unit: str = ""
    n: int = 0

    def __post_init__(self) -> None:
        if self.low > self.high:  # NaN compares False, so unknown limits are allowed
            raise ValueError(f"interval low {self.low} is above high {self.high}")

    @property
    def known(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)

    @property
    def width(self) -> float:
        return self.high - self.low

    def contains(self, value: float) -> bool:
        return self.known and self.low <= value <= self.high

    def excludes(self, value: float) -> bool:
        """True when ``value`` lies outside the interval (False when the limits are unknown)."""
        return self.known and (value < self.low or value > self.high)

    def overlaps(self, other: Interval) -> bool:
        """True when the two intervals share a point; unknown limits count as overlapping."""
        if not (self.known and other.known):
            return True
        return not (self.high < other.low or other.high < self.low)

    def scaled(self, factor: float, unit: str) -> Interval:
        """The same interval in other units, e.g. ``scaled(100, "percent")`` for display."""
        lo, hi = sorted((self.low * factor, self.high * factor))
        return Interval(self.estimate * factor, lo, hi, self.level, self.method, unit, self.n)

    def to_dict(self) -> dict:
        return asdict(self)


def _nan_interval(method: str, unit: str) -> Interval:
    return Interval(math.nan, math.nan, math.nan, method=f"{method} (no images)", unit=unit)


# ---------------------------------------------------------------------------------------------
# Score intervals for small counts


def _wilson(k: int, n: int, level: float) -> tuple[float, float]:
    z = _z(level)
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # Clamp the rounding of the closed form: at k == 0 or k == n one limit is exactly 0 or 1.
    return max(0.0, centre - half) if k else 0.0, min(1.0, centre + half) if k < n else 1.0


def wilson_interval(successes: int, n: int, level: float = DEFAULT_LEVEL) -> Interval:
    """Wilson's score interval for a proportion (fraction units); good down to 0 or n events."""
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return _nan_interval("Wilson score", FRACTION)
    lo, hi = _wilson(successes, n, level)
    return Interval(successes / n, lo, hi, level, "Wilson score", FRACTION, n)


def _newcombe_paired(a: int, b: int, c: int, d: int, level: float) -> tuple[float, float]:
    """Newcombe's method 10 for p1 - p2 from a paired 2x2 table, in fraction units.

    a: both right, b: only model 1 right, c: only model 2 right, d: both wrong; p1 = (a+b)/n,
    p2 = (a+c)/n. Wilson limits of each proportion are combined with the phi correlation of
    the table ("square and add"). With no discordant pair at all the difference is bounded by
    the rate of discordant pairs, whose exact (Clopper-Pearson) upper limit at 0 events is
    1 - (alpha/2)^(1/n); that is used instead, because method 10 then gives a zero-width
    interval when the table is symmetric.
    """
    n = a + b + c + d
    if b + c == 0:
        bound = 1.0 - ((1.0 - level) / 2.0) ** (1.0 / n)
        return -bound, bound
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = _wilson(a + b, n, level)
    l2, u2 = _wilson(a + c, n, level)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    phi = (a * d - b * c) / math.sqrt(margins) if margins > 0 else 0.0
    below = (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2
    above = (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2
    theta = p1 - p2
    low = theta - math.sqrt(max(below, 0.0))
    high = theta + math.sqrt(max(above, 0.0))
    return max(-1.0, low), min(1.0, high)


def newcombe_drop_interval(
    a: int, b: int, c: int, d: int, level: float = DEFAULT_LEVEL
) -> Interval:
    """Newcombe's paired interval for the drop (FP32 minus INT8) in points, from table counts.

    a: both right; b: FP32 right and INT8 wrong; c: INT8 right and FP32 wrong; d: both wrong.
    """
    if min(a, b, c, d) < 0:
        raise ValueError(f"table counts must be >= 0, got {(a, b, c, d)}")
    n = a + b + c + d
    if n == 0:
        return _nan_interval("Newcombe paired score", POINTS)
    lo, hi = _newcombe_paired(a, b, c, d, level)
    method = "Newcombe paired score" if b + c else "exact bound (no image changed)"
    return Interval(100.0 * (b - c) / n, 100.0 * lo, 100.0 * hi, level, method, POINTS, n)


# ---------------------------------------------------------------------------------------------
# Bootstrap over images


def _as_bool(values: Sequence[bool] | np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be one value per image (1-D), got shape {arr.shape}")
    return arr.astype(bool)


def _same_length(*arrays: np.ndarray) -> int:
    lengths = {len(a) for a in arrays}
    if len(lengths) != 1:
        raise ValueError(f"per-image arrays differ in length: {sorted(lengths)}")
    return lengths.pop()


def bootstrap_means(
    columns: np.ndarray, n_boot: int = DEFAULT_N_BOOT, seed: int = DEFAULT_SEED
) -> np.ndarray:
    """Means of each column over ``n_boot`` resamples of the rows (images), drawn jointly.

    ``columns``: (n_images, k) per-image values. Returns (n_boot, k). Every column sees the
    same resampled images, so paired statistics (FP32 vs INT8) keep their pairing. The draw
    depends only on ``seed``, ``n_boot`` and n_images.
    """
    columns = np.asarray(columns, dtype=np.float64)
    if columns.ndim == 1:
        columns = columns[:, None]
    n, k = columns.shape
    if n == 0 or n_boot < 1:
        raise ValueError(f"need at least one image and one resample, got {n} and {n_boot}")
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, k))
    block = max(1, _BLOCK_DRAWS // n)
    for start in range(0, n_boot, block):
        stop = min(n_boot, start + block)
        idx = rng.integers(0, n, size=(stop - start, n))
        for j in range(k):
            out[start:stop, j] = columns[:, j][idx].mean(axis=1)
    return out


def _percentile(
    replicates: np.ndarray, estimate: float, level: float, unit: str, n: int, n_boot: int
) -> Interval:
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(replicates, [tail, 100.0 - tail])
    return Interval(
        float(estimate), float(lo), float(hi), level, f"percentile bootstrap ({n_boot})", unit, n
    )


def _few(hits: np.ndarray) -> bool:
    k = int(hits.sum())
    return min(k, len(hits) - k) < SMALL_COUNT


def _proportion(
    hits: np.ndarray, replicates: np.ndarray | None, level: float, n_boot: int
) -> Interval:
    """Bootstrap interval of a proportion, or Wilson's when either count is small."""
    n, k = len(hits), int(hits.sum())
    if replicates is None or _few(hits):
        return wilson_interval(k, n, level)
    return _percentile(replicates, k / n, level, FRACTION, n, n_boot)


def accuracy_interval(
    correct: Sequence[bool] | np.ndarray,
    *,
    level: float = DEFAULT_LEVEL,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = DEFAULT_SEED,
) -> Interval:
    """Top-1 accuracy (fraction) with its interval over the images. ``correct``: one bool each."""
    hits = _as_bool(correct, "correct")
    if hits.size == 0:
        return _nan_interval("percentile bootstrap", FRACTION)
    reps = None if _few(hits) else bootstrap_means(hits, n_boot, seed)[:, 0]
    return _proportion(hits, reps, level, n_boot)


def agreement_interval(
    a_top1: Sequence[int] | np.ndarray,
    b_top1: Sequence[int] | np.ndarray,
    *,
    level: float = DEFAULT_LEVEL,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = DEFAULT_SEED,
) -> Interval:
    """Share of images (fraction) where the two models' top-1 classes are the same."""
    a, b = np.asarray(a_top1), np.asarray(b_top1)
    _same_length(a, b)
    same = _as_bool(a == b, "agreement")
    if same.size == 0:
        return _nan_interval("percentile bootstrap", FRACTION)
    reps = None if _few(same) else bootstrap_means(same, n_boot, seed)[:, 0]
    return _proportion(same, reps, level, n_boot)


def _table(fp32: np.ndarray, int8: np.ndarray) -> tuple[int, int, int, int]:
    a = int(np.sum(fp32 & int8))
    b = int(np.sum(fp32 & ~int8))
    c = int(np.sum(~fp32 & int8))
    return a, b, c, len(fp32) - a - b - c


def _drop(
    fp32: np.ndarray, int8: np.ndarray, replicates: np.ndarray | None, level: float, n_boot: int
) -> Interval:
    a, b, c, d = _table(fp32, int8)
    if replicates is None or b + c < SMALL_COUNT:
        return newcombe_drop_interval(a, b, c, d, level)
    return _percentile(
        100.0 * replicates, 100.0 * (b - c) / len(fp32), level, POINTS, len(fp32), n_boot
    )


def paired_drop_interval(
    fp32_correct: Sequence[bool] | np.ndarray,
    int8_correct: Sequence[bool] | np.ndarray,
    *,
    level: float = DEFAULT_LEVEL,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = DEFAULT_SEED,
) -> Interval:
    """Accuracy drop in points (FP32 minus INT8) with a paired interval over the images.

    Also serves any two models scored on the same images (e.g. two sweep recipes).
    """
    fp32, int8 = _as_bool(fp32_correct, "fp32_correct"), _as_bool(int8_correct, "int8_correct")
    _same_length(fp32, int8)
    if fp32.size == 0:
        return _nan_interval("percentile bootstrap", POINTS)
    _, b, c, _ = _table(fp32, int8)
    diff = fp32.astype(np.float64) - int8.astype(np.float64)
    reps = None if b + c < SMALL_COUNT else bootstrap_means(diff, n_boot, seed)[:, 0]
    return _drop(fp32, int8, reps, level, n_boot)


# ---------------------------------------------------------------------------------------------
# McNemar


@dataclass(frozen=True)
class McNemar:
    """Exact McNemar test. b: FP32 right, INT8 wrong; c: INT8 right, FP32 wrong."""

    b: int
    c: int
    p_value: float
    verdict: str

    @property
    def significant(self) -> bool:
        return self.p_value < MCNEMAR_ALPHA

    def to_dict(self) -> dict:
        return asdict(self) | {"significant": self.significant}


def _binomial_two_sided(b: int, c: int) -> float:
    """P(a fair coin shows a split at least as uneven as b:c in b+c tosses), exactly."""
    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    term, tail = 1, 1  # C(n, 0); exact integers, so no rounding until the one division
    for i in range(k):
        term = term * (n - i) // (i + 1)
        tail += term
    return min(1.0, 2 * tail / 2**n) if 2 * k != n else 1.0


def _images(count: int) -> str:
    return f"{count} image" if count == 1 else f"{count} images"


def mcnemar_from_counts(b: int, c: int) -> McNemar:
    """McNemar's exact test from the discordant counts (see ``mcnemar_exact``)."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    p = _binomial_two_sided(b, c)
    counts = f"{_images(b)} only FP32 got right, {c} only INT8 got right"
    if b + c == 0:
        verdict = "FP32 and INT8 are right and wrong on exactly the same images (p=1)"
    elif p >= MCNEMAR_ALPHA:
        verdict = f"INT8 errors are not distinguishable from FP32's: {counts} (p={p:.2g})"
    elif b > c:
        verdict = f"INT8 makes more errors than FP32, beyond chance: {counts} (p={p:.2g})"
    else:
        verdict = f"INT8 makes fewer errors than FP32, beyond chance: {counts} (p={p:.2g})"
    return McNemar(b, c, p, verdict)


def mcnemar_exact(
    fp32_correct: Sequence[bool] | np.ndarray, int8_correct: Sequence[bool] | np.ndarray
) -> McNemar:
    """Are INT8's errors different from FP32's? Two-sided exact binomial test on b vs c."""
    fp32, int8 = _as_bool(fp32_correct, "fp32_correct"), _as_bool(int8_correct, "int8_correct")
    _same_length(fp32, int8)
    _, b, c, _ = _table(fp32, int8)
    return mcnemar_from_counts(b, c)


# ---------------------------------------------------------------------------------------------
# Everything for one FP32-vs-INT8 evaluation


@dataclass(frozen=True)
class PairSummary:
    """FP32 and INT8 over the same images: accuracies, drop, agreement, McNemar."""

    n: int
    fp32_accuracy: Interval
    int8_accuracy: Interval
    drop: Interval
    agreement: Interval
    mcnemar: McNemar

    def to_dict(self) -> dict:
        return {
            "n": self.n,
            "fp32_accuracy": self.fp32_accuracy.to_dict(),
            "int8_accuracy": self.int8_accuracy.to_dict(),
            "drop": self.drop.to_dict(),
            "agreement": self.agreement.to_dict(),
            "mcnemar": self.mcnemar.to_dict(),
        }


def pair_summary(
    labels: Sequence[int] | np.ndarray,
    fp32_top1: Sequence[int] | np.ndarray,
    int8_top1: Sequence[int] | np.ndarray,
    *,
    level: float = DEFAULT_LEVEL,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = DEFAULT_SEED,
) -> PairSummary:
    """Every interval of one run from one set of resamples, so the figures are consistent."""
    y, f, q = np.asarray(labels), np.asarray(fp32_top1), np.asarray(int8_top1)
    n = _same_length(y, f, q)
    fp32, int8, same = f == y, q == y, f == q
    if n == 0:
        nan_f, nan_p = _nan_interval("bootstrap", FRACTION), _nan_interval("bootstrap", POINTS)
        return PairSummary(0, nan_f, nan_f, nan_p, nan_f, mcnemar_from_counts(0, 0))
    columns = np.stack([fp32, int8, same, fp32.astype(float) - int8], axis=1)
    reps = bootstrap_means(columns, n_boot, seed)
    return PairSummary(
        n=n,
        fp32_accuracy=_proportion(fp32, reps[:, 0], level, n_boot),
        int8_accuracy=_proportion(int8, reps[:, 1], level, n_boot),
        drop=_drop(fp32, int8, reps[:, 3], level, n_boot),
        agreement=_proportion(same, reps[:, 2], level, n_boot),
        mcnemar=mcnemar_exact(fp32, int8),
    )


# ---------------------------------------------------------------------------------------------
# Calibration-seed spread and gates


@dataclass(frozen=True)
class SeedSpread:
    """One figure (usually the drop in points) re-measured with k calibration draws."""

    values: tuple[float, ...]
    unit: str = POINTS
    mean: float = field(init=False)
    min: float = field(init=False)
    max: float = field(init=False)
    std: float = field(init=False)

    def __post_init__(self) -> None:
        vals = np.asarray(self.values, dtype=np.float64)
        if vals.ndim != 1 or vals.size == 0 or not np.all(np.isfinite(vals)):
            raise ValueError(f"seed spread needs one or more finite values, got {self.values!r}")
        object.__setattr__(self, "values", tuple(float(v) for v in vals))
        object.__setattr__(self, "mean", float(vals.mean()))
        object.__setattr__(self, "min", float(vals.min()))
        object.__setattr__(self, "max", float(vals.max()))
        object.__setattr__(self, "std", float(vals.std(ddof=1)) if vals.size > 1 else math.nan)

    @property
    def k(self) -> int:
        return len(self.values)

    @property
    def interval(self) -> Interval:
        """min..max around the mean; ``level`` = chance one more draw lands inside = (k-1)/(k+1)."""
        return Interval(
            self.mean,
            self.min,
            self.max,
            level=(self.k - 1) / (self.k + 1),
            method=f"range over {self.k} calibration seeds",
            unit=self.unit,
            n=self.k,
        )

    def to_dict(self) -> dict:
        return {
            "values": list(self.values),
            "k": self.k,
            "mean": self.mean,
            "min": self.min,
            "max": self.max,
            "std": self.std,
            "unit": self.unit,
            "interval": self.interval.to_dict(),
        }


def seed_spread(values: Sequence[float], unit: str = POINTS) -> SeedSpread:
    """The spread of a figure over calibration seeds (k >= 3 recommended; see module doc)."""
    return SeedSpread(tuple(values), unit)


@dataclass(frozen=True)
class GateVerdict:
    """The outcome of a "must not exceed" gate, with the evidence in one sentence."""

    outcome: str
    threshold: float
    estimate: float
    reason: str

    @property
    def failed(self) -> bool:
        return self.outcome.startswith("fail")

    @property
    def beyond_uncertainty(self) -> bool:
        """True when neither image sampling nor calibration luck could change the outcome."""
        return self.outcome in ("pass", "fail beyond uncertainty")

    def to_dict(self) -> dict:
        return asdict(self) | {"failed": self.failed}


def gate_verdict(
    interval: Interval, threshold: float, seeds: SeedSpread | None = None
) -> GateVerdict:
    """Judge "figure <= threshold" (e.g. ``--fail-if-drop``) against both uncertainties.

    ``interval``: the figure on screen with its interval over images; ``seeds``: the same
    figure over calibration seeds, when measured. See ``GATE_OUTCOMES`` for the four outcomes.
    """
    if not math.isfinite(interval.estimate):
        raise ValueError("cannot judge a gate on a figure that was not measured")
    unit = f" {interval.unit}" if interval.unit else ""
    lows, highs = [interval.low], [interval.high]
    evidence = f"{interval.estimate:.2f}{unit} (interval {interval.low:.2f} to {interval.high:.2f}"
    if seeds is not None:
        lows.append(seeds.min)
        highs.append(seeds.max)
        evidence += f"; {seeds.k} calibration seeds {seeds.min:.2f} to {seeds.max:.2f}"
    evidence += f") against {threshold:g}{unit}"
    above = interval.estimate > threshold
    if above:
        certain = all(math.isfinite(v) and v > threshold for v in lows)
        outcome = "fail beyond uncertainty" if certain else "fail within uncertainty"
    else:
        certain = all(math.isfinite(v) and v <= threshold for v in highs)
        outcome = "pass" if certain else "pass within uncertainty"
    return GateVerdict(
        outcome, float(threshold), float(interval.estimate), f"{outcome}: {evidence}"
    )


# ---------------------------------------------------------------------------------------------
# Per-class drops


@dataclass(frozen=True)
class ClassDrop:
    """One class's FP32 and INT8 accuracy and its drop (points) with Newcombe's interval."""

    index: int
    name: str
    n: int
    fp32_accuracy: float
    int8_accuracy: float
    b: int
    c: int
    drop: Interval

    @property
    def flagged(self) -> bool:
        """The drop's interval excludes zero: INT8 really is worse (or better) on this class."""
        return self.drop.excludes(0.0)

    @property
    def direction(self) -> str:
        if not self.flagged:
            return "no clear change"
        return "worse" if self.drop.low > 0 else "better"

    def to_dict(self) -> dict:
        return asdict(self) | {"flagged": self.flagged, "direction": self.direction}


def per_class_drops(
    labels: Sequence[int] | np.ndarray,
    fp32_top1: Sequence[int] | np.ndarray,
    int8_top1: Sequence[int] | np.ndarray,
    class_names: Sequence[str],
    *,
    level: float = DEFAULT_LEVEL,
) -> list[ClassDrop]:
    """Per true class: accuracies, discordant counts and the drop with Newcombe's interval.

    Newcombe's score interval rather than a bootstrap within each class: with 30 images a
    class's bootstrap takes a handful of values and flags a class on 3 or 4 flipped images
    that McNemar's exact test calls chance; the score interval keeps ~95% coverage at such n.
    """
    y, f, q = np.asarray(labels), np.asarray(fp32_top1), np.asarray(int8_top1)
    _same_length(y, f, q)
    out = []
    for index, name in enumerate(class_names):
        mask = y == index
        fp32, int8 = f[mask] == index, q[mask] == index
        a, b, c, d = _table(fp32, int8)
        n = a + b + c + d
        out.append(
            ClassDrop(
                index=index,
                name=str(name),
                n=n,
                fp32_accuracy=(a + b) / n if n else math.nan,
                int8_accuracy=(a + c) / n if n else math.nan,
                b=b,
                c=c,
                drop=newcombe_drop_interval(a, b, c, d, level),
            )
        )
    return out


# ---------------------------------------------------------------------------------------------
# Ranking


@dataclass(frozen=True)
class RankedCandidate:
    """One candidate in a ranking, with which others it cannot be told apart from.

    ``tier`` groups candidates whose intervals overlap the tier's first (best) member: every
    candidate in tier 1 is indistinguishable from the best one. ``distinct_from_next`` is
    None for the last candidate.
    """

    name: str
    rank: int
    tier: int
    interval: Interval
    overlaps_with: tuple[str, ...]
    distinct_from_next: bool | None

    def to_dict(self) -> dict:
        return asdict(self)


def rank_candidates(
    candidates: Mapping[str, Interval] | Sequence[tuple[str, Interval]],
    *,
    higher_is_better: bool = True,
) -> list[RankedCandidate]:
    """Sort candidates by estimate (best first; ties keep input order) and mark overlaps.

    For accuracies pass ``higher_is_better=True``; for drops, ``False``.
    """
    items = list(candidates.items() if isinstance(candidates, Mapping) else candidates)
    names = [name for name, _ in items]
    if len(set(names)) != len(names):
        raise ValueError(f"candidate names must be unique, got {names}")
    sign = -1.0 if higher_is_better else 1.0
    order = sorted(
        range(len(items)),
        key=lambda i: (math.isnan(items[i][1].estimate), sign * items[i][1].estimate, i),
    )
    ranked: list[RankedCandidate] = []
    tier, leader = 0, None
    for pos, i in enumerate(order):
        name, interval = items[i]
        if leader is None or not interval.overlaps(leader):
            tier, leader = tier + 1, interval
        overlaps = tuple(other for other, iv in items if other != name and iv.overlaps(interval))
        nxt = items[order[pos + 1]][1] if pos + 1 < len(order) else None
        distinct = None if nxt is None else not interval.overlaps(nxt)
        ranked.append(RankedCandidate(name, pos + 1, tier, interval, overlaps, distinct))
    return ranked


def overlapping_pairs(ranked: Sequence[RankedCandidate]) -> list[tuple[str, str]]:
    """Every pair (better, worse) of candidates whose intervals overlap, in rank order."""
    return [
        (first.name, second.name)
        for pos, first in enumerate(ranked)
        for second in ranked[pos + 1 :]
        if first.interval.overlaps(second.interval)
    ]
