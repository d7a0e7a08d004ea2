"""Activation calibration observers that clip outliers: percentile, entropy (KL) and MSE.

What they fix
-------------
An 8-bit activation has 256 levels (128 with ``reduce_range``) spread evenly over one range
[lo, hi]. ``MinMaxObserver`` takes the smallest and largest value ever seen, so a single
outlier (one bright calibration image, one hot channel) stretches the range and every other
value is rounded to a few coarse levels. These observers look at the whole distribution of
values and pick a narrower range: the few values beyond it are *clipped* (saturate at lo or
hi), and in exchange every value inside gets finer steps.

- ``PercentileObserver``: the range holds all but the most extreme ``100 - percentile``
  percent of values at each end (default 99.99: one value in 10,000 may be clipped per end).
  Simple and predictable; it ignores how far the clipped values are.
- ``EntropyObserver``: TensorRT's calibration (Migacz, "8-bit Inference with TensorRT",
  GTC 2017). For each candidate range it compares the clipped distribution P with the same
  distribution squeezed into as many bins as there are quantization levels (Q) and keeps the
  range whose KL divergence KL(P || Q) is smallest: "lose the least information".
- ``MSEObserver``: the range that minimises the expected squared error between a value and
  its quantized version, counting both rounding (step^2 / 12 for each value inside the range)
  and clipping ((value - edge)^2 for each value outside).

When they do not help
---------------------
When the values have no outliers (e.g. a uniform distribution), the best range is the full
range and these observers return (nearly) what min/max returns. When the error comes from
somewhere else (weights with one outlier channel, a layer that should stay in float, too
few calibration images) clipping activations cannot fix it. Clipping is also wrong for
values that matter precisely because they are rare and large: the MSE observer, which
weighs how far each clipped value is, keeps far outliers when there are few other values.
The entropy observer compares the *shape* of the distributions, not the step size: a lone
outlier far beyond a flat bulk is kept (the bulk then fills few histogram bins, and a flat
bulk looks the same at any resolution), so it shines on long smooth tails, not on one spike.

How they work in torch
----------------------
All three reuse ``torch.ao.quantization.HistogramObserver`` for collecting data: a
histogram of ``bins`` equal bins over [min seen, max seen], merged across batches without
storing the values. Only the choice of [lo, hi] from that histogram is theirs; the final
step (scale and zero point from [lo, hi], widened to include 0) is torch's own
``_calculate_qparams``, so the qparams are exactly what torch's observers give for that
range. Inside a bin, values are assumed spread evenly (the histogram is read as a piecewise
uniform density). Use them like any torch observer::

    act = EntropyObserver.with_args(
        dtype=torch.quint8, qscheme=torch.per_tensor_affine, reduce_range=True
    )
    qconfig = torch.ao.quantization.QConfig(activation=act, weight=...)

They work with eager ``prepare``/``convert`` and FX ``prepare_fx``/``convert_fx``, and can be
deep-copied, pickled and saved in a state_dict like ``HistogramObserver``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch.ao.quantization.observer import HistogramObserver

from aslquant.errors import InputError

__all__ = [
    "CLIPPING_OBSERVERS",
    "EntropyObserver",
    "MSEObserver",
    "PercentileObserver",
    "entropy_range",
    "kl_divergence_for_window",
    "mse_range",
    "percentile_range",
]

#: Histogram bins used by default, as in TensorRT's and ONNX Runtime's entropy calibration.
DEFAULT_BINS = 2048


# --- pure functions over a histogram ------------------------------------------------------
#
# A histogram here is ``counts`` (float64, one entry per equal-width bin) over [lo, hi]. They
# are module functions, not methods, so each rule can be checked by hand on a tiny histogram.


def _edges(counts: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.linspace(lo, hi, len(counts) + 1)


def _cumulative(counts: np.ndarray) -> np.ndarray:
    return np.concatenate(([0.0], np.cumsum(counts)))


def _cdf(counts: np.ndarray, lo: float, hi: float, x: np.ndarray | float) -> np.ndarray:
    """How many values lie below ``x`` (linear inside a bin; 0 below lo, all above hi)."""
    return np.interp(x, _edges(counts, lo, hi), _cumulative(counts))


def _quantile(counts: np.ndarray, lo: float, hi: float, fraction: float) -> float:
    """The value below which ``fraction`` of all values lie (inverse of ``_cdf``)."""
    cum = _cumulative(counts)
    target = fraction * cum[-1]
    # The first edge whose cumulative count reaches the target closes the bin it lies in.
    i = int(np.searchsorted(cum, target, side="left"))
    if i == 0:
        return float(lo)
    width = (hi - lo) / len(counts)
    inside = (target - cum[i - 1]) / counts[i - 1]  # counts[i-1] > 0 since cum rises there
    return float(lo + (i - 1 + inside) * width)


def _rebin(counts: np.ndarray, lo: float, hi: float, new_lo: float, new_hi: float) -> np.ndarray:
    """The same piecewise-uniform density counted in ``len(counts)`` bins over a wider range."""
    new_edges = np.linspace(new_lo, new_hi, len(counts) + 1)
    return np.diff(_cdf(counts, lo, hi, new_edges))


def percentile_range(
    counts: np.ndarray, lo: float, hi: float, percentile: float
) -> tuple[float, float]:
    """[low, high] holding all but ``100 - percentile`` percent of the values at each end."""
    tail = (100.0 - percentile) / 100.0
    low = _quantile(counts, lo, hi, tail)
    high = _quantile(counts, lo, hi, 1.0 - tail)
    return low, max(high, low)


def kl_divergence_for_window(counts: np.ndarray, start: int, end: int, levels: int) -> float:
    """KL(P || Q) for keeping bins [start, end) of ``counts`` and quantizing to ``levels``.

    P is the kept bins, with the clipped values added to the first and last kept bin (where
    clipping sends them). Q is the kept bins *without* the clipped values, merged into
    ``levels`` groups of consecutive bins (as equal as possible) and spread back evenly over
    the bins of each group where P is non-zero: what the quantized tensor can still tell
    apart. Both are normalised to sum 1. Returns ``inf`` when Q is zero where P is not
    (clipped values piled onto a bin the kept data never reaches).
    """
    kept = counts[start:end]
    width = end - start
    p = kept.copy()
    p[0] += counts[:start].sum()
    p[-1] += counts[end:].sum()
    group = (np.arange(width) * levels) // width
    mass = np.bincount(group, weights=kept, minlength=levels)
    nonzero = p > 0
    per_group = np.bincount(group, weights=nonzero.astype(np.float64), minlength=levels)
    q = np.where(nonzero, mass[group] / np.maximum(per_group[group], 1.0), 0.0)
    if p.sum() <= 0 or q.sum() <= 0:
        return math.inf
    p = p / p.sum()
    q = q / q.sum()
    if np.any(nonzero & (q <= 0)):
        return math.inf
    return float(np.sum(p[nonzero] * np.log(p[nonzero] / q[nonzero])))


def _flatten_zero_spike(counts: np.ndarray, zero_bin: int) -> np.ndarray:
    """The histogram with the bin holding 0 set to its neighbours' mean count.

    After a ReLU about half of all values are exactly 0, and zero is exactly representable
    whatever the range (torch's zero point guarantees it), so those values lose nothing to
    quantization. Left in, that one tall bin dominates P and the KL search then prefers
    ranges a few times too narrow (seen on the demo: conv2 clipped to 0.83 of a 13.3 range).
    NVIDIA's pytorch-quantization entropy calibrator makes the same correction.
    """
    neighbours = [counts[j] for j in (zero_bin - 1, zero_bin + 1) if 0 <= j < len(counts)]
    if not neighbours:
        return counts
    flattened = counts.copy()
    flattened[zero_bin] = float(np.mean(neighbours))
    return flattened


def entropy_range(counts: np.ndarray, lo: float, hi: float, levels: int) -> tuple[float, float]:
    """The candidate range with the smallest KL divergence (TensorRT's entropy calibration).

    A candidate is a threshold T, a whole number of histogram bins away from zero; its range
    is [min(lo, 0), max(hi, 0)] cut to [-T, T]. T goes down from the largest |value| while
    the range still spans at least ``levels`` bins. For values >= 0 (after ReLU) that is
    TensorRT's rule exactly: the range is [0, T] and only the top is clipped. For values on
    both sides of zero the same threshold applies to both (as TensorRT and ONNX Runtime do
    with |x|), so the short side is only clipped once T is shorter than it. Among equal
    divergences the widest range wins. The bin holding 0 is first set to its neighbours'
    mean (see ``_flatten_zero_spike``).
    """
    bins = len(counts)
    full_lo, full_hi = min(lo, 0.0), max(hi, 0.0)
    if (full_lo, full_hi) != (lo, hi):
        counts = _rebin(counts, lo, hi, full_lo, full_hi)
    width = (full_hi - full_lo) / bins
    zero_at = -full_lo / width  # position of 0 in bins (0 for ReLU outputs)
    counts = _flatten_zero_spike(counts, min(int(zero_at), bins - 1))
    best = (math.inf, 0, bins)
    seen = set()
    for threshold in range(math.ceil(max(zero_at, bins - zero_at)), 0, -1):
        start = max(0, round(zero_at - threshold))
        end = min(bins, round(zero_at + threshold))
        if end - start < levels:
            break
        if (start, end) in seen:
            continue
        seen.add((start, end))
        kl = kl_divergence_for_window(counts, start, end, levels)
        if kl < best[0]:
            best = (kl, start, end)
    _, start, end = best
    return full_lo + start * width, full_lo + end * width


def _clip_errors(
    counts: np.ndarray, lo: float, hi: float, limits: np.ndarray, above: bool
) -> np.ndarray:
    """Sum of (value - limit)^2 over the values beyond each limit (piecewise uniform density).

    A whole bin j beyond the limit t contributes n_j * ((c_j - t)^2 + w^2 / 12) (its centre's
    distance plus the spread inside the bin); these are summed with prefix sums. The bin
    holding t contributes only its part beyond t: n_j / w * d^3 / 3, d the length of that part.
    """
    bins = len(counts)
    edges = _edges(counts, lo, hi)
    width = (hi - lo) / bins
    centres = (edges[:-1] + edges[1:]) / 2
    k = np.searchsorted(edges, limits, side="right") - 1  # bin holding each limit, -1 .. bins
    inside_bin = (k >= 0) & (k < bins)
    kb = np.clip(k, 0, bins - 1)
    moments = [counts, counts * centres, counts * centres**2]
    if above:
        # suffix sums from the first bin entirely above the limit
        sums = [np.concatenate((np.cumsum(m[::-1])[::-1], [0.0])) for m in moments]
        first = np.clip(k + 1, 0, bins)
        part = np.where(inside_bin, edges[np.minimum(kb + 1, bins)] - limits, 0.0)
    else:
        # prefix sums up to the last bin entirely below the limit
        sums = [_cumulative(m) for m in moments]
        first = np.clip(k, 0, bins)
        part = np.where(inside_bin, limits - edges[kb], 0.0)
    s0, s1, s2 = (s[first] for s in sums)
    whole = s2 - 2 * limits * s1 + limits**2 * s0 + s0 * width**2 / 12.0
    return whole + counts[kb] / width * part**3 / 3.0


def mse_range(counts: np.ndarray, lo: float, hi: float, steps: int) -> tuple[float, float]:
    """The range [a, b] (a <= 0 <= b) with the smallest expected squared quantization error.

    Expected error = (values inside) * step^2 / 12 + sum over clipped values of
    (value - nearest edge)^2, with step = (b - a) / ``steps`` (``steps`` = quant_max -
    quant_min). The step^2 / 12 is the mean squared rounding error of values spread evenly
    over a step. Candidates for a and b are the histogram's bin edges (and 0) on their side
    of zero; every pair is tried.
    """
    edges = _edges(counts, lo, hi)
    lows = np.unique(np.concatenate((edges[edges < 0], [0.0])))
    highs = np.unique(np.concatenate(([0.0], edges[edges > 0])))
    below = _cdf(counts, lo, hi, lows)  # values under each candidate a
    under = _cdf(counts, lo, hi, highs)  # values under each candidate b
    inside = under[None, :] - below[:, None]
    step = (highs[None, :] - lows[:, None]) / steps
    error = (
        inside * step**2 / 12.0
        + _clip_errors(counts, lo, hi, lows, above=False)[:, None]
        + _clip_errors(counts, lo, hi, highs, above=True)[None, :]
    )
    error[step <= 0] = math.inf  # the empty range [0, 0]
    i, j = np.unravel_index(int(np.argmin(error)), error.shape)
    return float(lows[i]), float(highs[j])


# --- the observers ----------------------------------------------------------------------------


def _check_bins(bins: object, smallest: int, what: str) -> int:
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < smallest:
        raise InputError(f"{what}: bins must be a whole number >= {smallest}, got {bins!r}")
    return bins


class _ClippingHistogramObserver(HistogramObserver):
    """torch's histogram collection; subclasses choose the range in ``_choose_range``."""

    def __init__(
        self,
        bins: int = DEFAULT_BINS,
        dtype: torch.dtype = torch.quint8,
        qscheme: torch.qscheme = torch.per_tensor_affine,
        reduce_range: bool = False,
        quant_min: int | None = None,
        quant_max: int | None = None,
        factory_kwargs: dict | None = None,
        eps: float = torch.finfo(torch.float32).eps,
        is_dynamic: bool = False,
        **kwargs,
    ) -> None:
        _check_bins(bins, 2, type(self).__name__)
        super().__init__(
            bins=bins,
            dtype=dtype,
            qscheme=qscheme,
            reduce_range=reduce_range,
            quant_min=quant_min,
            quant_max=quant_max,
            factory_kwargs=factory_kwargs,
            eps=eps,
            is_dynamic=is_dynamic,
            **kwargs,
        )

    @property
    def levels(self) -> int:
        """Quantization levels available: 256 for quint8, 128 with reduce_range."""
        return int(self.quant_max) - int(self.quant_min) + 1

    def _choose_range(self, counts: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
        raise NotImplementedError

    def _observed(self) -> bool:
        return not (float(self.min_val) == math.inf and float(self.max_val) == -math.inf)

    def clip_range(self) -> tuple[float, float]:
        """The [lo, hi] this observer chose (before torch widens it to include 0)."""
        lo, hi = float(self.min_val), float(self.max_val)
        counts = self.histogram.detach().to(torch.float64).cpu().numpy()
        if hi <= lo or counts.sum() <= 0:
            return lo, hi
        return self._choose_range(counts, lo, hi)

    def calculate_qparams(self):  # type: ignore[override]
        if not self._observed():
            # The same behaviour (and message) as torch's own observers.
            warnings.warn(
                "must run observer before calling calculate_qparams. "
                "Returning default scale and zero point ",
                stacklevel=2,
            )
            device = self.min_val.device.type
            return torch.tensor([1.0], device=device), torch.tensor([0], device=device)
        if self.bins != len(self.histogram):
            raise AssertionError("histogram length differs from the observer's bins")
        lo, hi = self.clip_range()
        device = self.min_val.device
        return self._calculate_qparams(
            torch.tensor(lo, dtype=torch.float32, device=device),
            torch.tensor(hi, dtype=torch.float32, device=device),
        )

    def extra_repr(self) -> str:
        return f"bins={self.bins}, {super().extra_repr()}"


class PercentileObserver(_ClippingHistogramObserver):
    """Range = the (100 - p)th and p-th percentiles of all values seen (default p = 99.99).

    The same fraction is clipped at both ends. For ReLU outputs the low end is 0 anyway
    (torch's final step always includes 0 in the range), so only the top is clipped.
    Percentiles are read from the histogram, interpolating linearly inside a bin.
    """

    def __init__(self, percentile: float = 99.99, bins: int = DEFAULT_BINS, **kwargs) -> None:
        if isinstance(percentile, bool) or not isinstance(percentile, int | float):
            raise InputError(f"PercentileObserver: percentile must be a number, got {percentile!r}")
        if not 50.0 < float(percentile) <= 100.0:
            raise InputError(
                f"PercentileObserver: percentile must be in (50, 100], got {percentile!r}"
            )
        super().__init__(bins=bins, **kwargs)
        self.percentile = float(percentile)

    def _choose_range(self, counts: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
        return percentile_range(counts, lo, hi, self.percentile)

    def extra_repr(self) -> str:
        return f"percentile={self.percentile}, {super().extra_repr()}"


class EntropyObserver(_ClippingHistogramObserver):
    """Range with the least KL divergence between the clipped and quantized distributions.

    TensorRT's entropy calibration over a ``bins``-bin histogram (default 2048), with as many
    quantized bins as the observer has levels (256, or 128 with reduce_range).
    """

    def __init__(self, bins: int = DEFAULT_BINS, **kwargs) -> None:
        super().__init__(bins=bins, **kwargs)
        if bins < self.levels:
            raise InputError(
                f"EntropyObserver: bins ({bins}) must be at least the number of "
                f"quantization levels ({self.levels})"
            )

    def _choose_range(self, counts: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
        return entropy_range(counts, lo, hi, self.levels)


class MSEObserver(_ClippingHistogramObserver):
    """Range with the least expected squared error (rounding inside plus clipping outside)."""

    def _choose_range(self, counts: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
        return mse_range(counts, lo, hi, self.levels - 1)


#: Recipe name -> (observer class, one line for the option's help). The classes take the
#: usual ``dtype``/``qscheme``/``reduce_range`` through ``.with_args``.
CLIPPING_OBSERVERS: dict[str, tuple[type[_ClippingHistogramObserver], str]] = {
    "percentile": (
        PercentileObserver,
        "Range = 0.01st..99.99th percentile of the values: one outlier in 10,000 is clipped.",
    ),
    "entropy": (
        EntropyObserver,
        "TensorRT's KL calibration: the range whose 8-bit version loses the least information.",
    ),
    "mse": (
        MSEObserver,
        "The range with the least expected squared error, rounding and clipping together.",
    ),
}
