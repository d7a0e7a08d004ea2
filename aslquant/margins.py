"""Where INT8 flips happen: the FP32 model's top-1/top-2 margin against flipped predictions.

Quantization moves every logit by a few quantization steps. Where the FP32 model was sure (its
top class far ahead of the runner-up), such a nudge cannot change the answer; where it was
unsure, it can. So most flips should sit at small margins, and a flip at a large margin points
at a real quantization error (a clipped activation, a damaged layer) rather than at a close
call. This module measures it on a run's evaluation images.

- **Margin**: FP32 softmax probability of its top-1 class minus that of its top-2 class
  (``Predictions.probs5[:, 0] - probs5[:, 1]``), in 0..1.
- **Flip**: INT8's top-1 class differs from FP32's (as ``RunResult.flipped``).
- **Unsure**: margin below ``UNSURE_MARGIN`` (0.2): the runner-up is within 20 percentage
  points of the winner. The threshold is a parameter; the bins show the whole curve.
- **Bins**: by default the images sorted by margin and cut into ``bins`` groups of (nearly)
  equal size (deciles), so every bin has images even when many margins tie near 1; with
  ``equal_width=True``, ``bins`` equal-width margin ranges over 0..1 instead (flips usually
  crowd into the first decile, and fixed ranges show how the flip rate falls with the margin).
  Either way each image and each flip is counted in exactly one bin.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from aslquant import stats
from aslquant.errors import InputError
from aslquant.measure import PairEvaluation

#: FP32 is "unsure" below this top-1 minus top-2 probability.
UNSURE_MARGIN = 0.2
DEFAULT_BINS = 10


def _read_only(values: np.ndarray) -> np.ndarray:
    view = np.asarray(values).view()
    view.flags.writeable = False
    return view


@dataclass(frozen=True)
class MarginBin:
    """Images whose FP32 margin lies in ``low..high``.

    Equal-count bins: ``low``/``high`` are the smallest and largest margin inside. Equal-width
    bins: they are the range's edges (each range includes its low edge; the last also 1.0).
    ``flips_breaking``: flips where FP32 was right and INT8 is wrong (the flips that cost
    accuracy); ``flip_rate`` is flips / images (None for an empty range).
    """

    low: float
    high: float
    images: int
    flips: int
    flips_breaking: int
    flip_rate: float | None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class FlipMargins:
    """Flips against the FP32 margin: headline counts, bins for a plot, per-image arrays.

    ``unsure_flip_rate`` / ``sure_flip_rate``: share of flipped images below / at or above the
    threshold, with Wilson's 95% interval (None when no image is on that side).
    ``margins`` / ``flipped`` hold one value per evaluation image (read-only, in evaluation
    order) for a scatter plot; ``to_dict`` leaves them out (``per_image=True`` adds them).
    """

    threshold: float
    n: int
    flips: int
    unsure_images: int
    unsure_flips: int
    sure_flips: int
    unsure_flip_rate: stats.Interval | None
    sure_flip_rate: stats.Interval | None
    median_margin_flipped: float | None
    median_margin_kept: float | None
    bins: tuple[MarginBin, ...]
    margins: np.ndarray = field(repr=False, compare=False)
    flipped: np.ndarray = field(repr=False, compare=False)

    @property
    def headline(self) -> str:
        if self.n == 0:
            return "No evaluated images: no flips to place"
        if self.flips == 0:
            return f"INT8 changed no top-1 prediction on the {self.n} images"
        share = self.unsure_images / self.n
        return (
            f"{self.unsure_flips} of {self.flips} flips ({self.unsure_flips / self.flips:.0%}) "
            f"happened where FP32 was unsure (top-1 minus top-2 probability below "
            f"{self.threshold:g}), where {self.unsure_images} of {self.n} images ({share:.0%}) "
            f"lie; {self.sure_flips} happened where FP32 was sure"
        )

    def to_dict(self, per_image: bool = False) -> dict:
        d = {
            "threshold": self.threshold,
            "n": self.n,
            "flips": self.flips,
            "unsure_images": self.unsure_images,
            "unsure_flips": self.unsure_flips,
            "sure_flips": self.sure_flips,
            "unsure_flip_rate": _interval_dict(self.unsure_flip_rate),
            "sure_flip_rate": _interval_dict(self.sure_flip_rate),
            "median_margin_flipped": self.median_margin_flipped,
            "median_margin_kept": self.median_margin_kept,
            "bins": [b.to_dict() for b in self.bins],
            "headline": self.headline,
        }
        if per_image:
            d["margins"] = [float(m) for m in self.margins]
            d["flipped"] = [bool(f) for f in self.flipped]
        return d


def fp32_margins(evaluation: PairEvaluation) -> np.ndarray:
    """FP32 top-1 minus top-2 softmax probability per image (0..1)."""
    probs = np.asarray(evaluation.fp32.probs5, dtype=np.float64)
    if probs.ndim != 2 or (len(probs) and probs.shape[1] < 2):
        raise ValueError(f"need at least the top-2 probabilities per image, got {probs.shape}")
    if len(probs) == 0:
        return np.zeros(0)
    return np.clip(probs[:, 0] - probs[:, 1], 0.0, 1.0)


def _rate(flips: np.ndarray) -> stats.Interval | None:
    """Share of flipped images with Wilson's interval; None when there are no images."""
    return stats.wilson_interval(int(flips.sum()), len(flips)) if len(flips) else None


def _interval_dict(interval: stats.Interval | None) -> dict | None:
    return None if interval is None else interval.to_dict()


def _median(values: np.ndarray) -> float | None:
    return float(np.median(values)) if values.size else None


def _groups(
    margins: np.ndarray, bins: int, equal_width: bool
) -> list[tuple[float, float, np.ndarray]]:
    """(low, high, image indices) per bin; every image in exactly one bin."""
    if equal_width:
        edges = np.linspace(0.0, 1.0, bins + 1)
        # Bin i holds edges[i] <= margin < edges[i+1]; margin 1.0 joins the last bin.
        which = np.minimum(np.searchsorted(edges, margins, side="right") - 1, bins - 1)
        return [(edges[i], edges[i + 1], np.nonzero(which == i)[0]) for i in range(bins)]
    order = np.argsort(margins, kind="stable")
    if not len(order):
        return []
    chunks = np.array_split(order, min(bins, len(order)))
    return [(margins[g].min(), margins[g].max(), g) for g in chunks]


def flip_margins(
    evaluation: PairEvaluation,
    threshold: float = UNSURE_MARGIN,
    bins: int = DEFAULT_BINS,
    *,
    equal_width: bool = False,
) -> FlipMargins:
    """Where the flips of a run (``result.evaluation``) happen, by FP32 margin."""
    if not (isinstance(threshold, int | float) and 0.0 < threshold <= 1.0):
        raise InputError(f"margin threshold must be in (0, 1], got {threshold!r}")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise InputError(f"margin bins must be a whole number >= 1, got {bins!r}")
    margins = fp32_margins(evaluation)
    f, q, y = evaluation.fp32.top1, evaluation.quant.top1, evaluation.labels
    flipped = f != q
    breaking = flipped & (f == y) & (q != y)
    unsure = margins < threshold
    return FlipMargins(
        threshold=float(threshold),
        n=int(len(margins)),
        flips=int(flipped.sum()),
        unsure_images=int(unsure.sum()),
        unsure_flips=int((flipped & unsure).sum()),
        sure_flips=int((flipped & ~unsure).sum()),
        unsure_flip_rate=_rate(flipped[unsure]),
        sure_flip_rate=_rate(flipped[~unsure]),
        median_margin_flipped=_median(margins[flipped]),
        median_margin_kept=_median(margins[~flipped]),
        bins=tuple(
            MarginBin(
                low=float(low),
                high=float(high),
                images=int(len(g)),
                flips=int(flipped[g].sum()),
                flips_breaking=int(breaking[g].sum()),
                flip_rate=float(flipped[g].mean()) if len(g) else None,
            )
            for low, high, g in _groups(margins, bins, equal_width)
        ),
        margins=_read_only(margins),
        flipped=_read_only(flipped),
    )
