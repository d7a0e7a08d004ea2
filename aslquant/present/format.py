"""Every number the dashboard and the reports show, formatted in one place.

Each formatter takes a plain number (or None) and returns text. A missing value (None, NaN)
prints as ``n/a``, or as the ``none`` text a caller passes: ``PENDING`` for a latency whose
timing has not finished yet. Units go in column headers, so table cells are bare numbers;
``unit=True`` adds the unit for prose and cards.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

#: What a missing value prints as.
NA = "n/a"
#: What a latency (or anything derived from one) prints as while its timing is still running.
PENDING = "pending"

#: Batch sizes whose latency every run measures, with the key prefix latency dicts use.
BATCHES = (1, 32)


def missing(value: Any) -> bool:
    """None, NaN, or something that is not a finite number."""
    if value is None:
        return True
    try:
        return not math.isfinite(float(value))
    except (TypeError, ValueError):
        return True


def number(value: Any, digits: int = 2, *, signed: bool = False, none: str = NA) -> str:
    """A fixed-point number (``-0.00`` prints as ``0.00``); ``signed`` adds a ``+`` sign."""
    if missing(value):
        return none
    rounded = round(float(value), digits) + 0.0  # + 0.0 turns -0.0 into 0.0
    return f"{rounded:+.{digits}f}" if signed else f"{rounded:.{digits}f}"


def general(value: Any, digits: int = 3, *, none: str = NA) -> str:
    """Significant digits, switching to exponent form for tiny or huge values (``1.2e-05``)."""
    if missing(value):
        return none
    return f"{float(value):.{digits}g}"


def count(value: Any, *, none: str = NA) -> str:
    """A whole number with thousands separators (``1,234,567``)."""
    if missing(value):
        return none
    return f"{int(value):,}"


def percent(
    fraction: Any, digits: int = 2, *, signed: bool = False, unit: bool = True, none: str = NA
) -> str:
    """A fraction 0..1 as a percentage: ``0.9312`` -> ``93.12%`` (``93.12`` without the unit,
    for a table column whose header says %)."""
    if missing(fraction):
        return none
    return number(100 * float(fraction), digits, signed=signed) + ("%" if unit else "")


def points(
    value: Any, digits: int = 2, *, signed: bool = False, unit: bool = False, none: str = NA
) -> str:
    """Percentage points (a difference of two percentages): ``0.25`` or ``0.25 points``."""
    text = number(value, digits, signed=signed, none=none)
    return f"{text} points" if unit and not missing(value) else text


def ms(value: Any, digits: int = 2, *, unit: bool = False, none: str = NA) -> str:
    """Milliseconds: ``12.34`` or ``12.34 ms``."""
    text = number(value, digits, none=none)
    return f"{text} ms" if unit and not missing(value) else text


def db(value: Any, digits: int = 1, *, unit: bool = False, none: str = NA) -> str:
    """Decibels (SQNR): ``31.4`` or ``31.4 dB``."""
    text = number(value, digits, none=none)
    return f"{text} dB" if unit and not missing(value) else text


def size(nbytes: Any, *, none: str = NA) -> str:
    """A byte count in the unit that reads best: ``512 B``, ``87.3 kB``, ``1.21 MB``, ``2.05 GB``.

    Decimal units (1 MB = 10^6 bytes), like the sizes file managers show. MB from 100 kB up,
    so model sizes on one page share a unit.
    """
    if missing(nbytes):
        return none
    n = float(nbytes)
    if abs(n) >= 1e9:
        return f"{n / 1e9:.2f} GB"
    if abs(n) >= 1e5:
        return f"{n / 1e6:.2f} MB"
    if abs(n) >= 1e3:
        return f"{n / 1e3:.1f} kB"
    return f"{int(n)} B"


def ratio(value: Any, digits: int = 2, *, none: str = NA) -> str:
    """A plain ratio: ``3.91x``."""
    if missing(value) or float(value) <= 0:
        return none
    return number(value, digits) + "x"


def times(value: Any, more: str, less: str, digits: int = 2, *, none: str = NA) -> str:
    """A ratio read as a comparison: ``3.91x faster``; below 1 inverted, ``1.25x slower``."""
    if missing(value) or float(value) <= 0:
        return none
    v = float(value)
    return f"{number(v, digits)}x {more}" if v >= 1 else f"{number(1 / v, digits)}x {less}"


def speedup(value: Any, digits: int = 2, *, none: str = NA) -> str:
    """``old / new`` latency: ``3.91x faster`` or ``1.25x slower``."""
    return times(value, "faster", "slower", digits, none=none)


def smaller(value: Any, digits: int = 2, *, none: str = NA) -> str:
    """``old / new`` size: ``3.91x smaller`` or ``1.25x larger``."""
    return times(value, "smaller", "larger", digits, none=none)


def latency(
    latency_ms: Mapping[str, Any] | None, batch: int, stat: str = "p50", *, unit: bool = False
) -> str:
    """One figure of a latency dict (``{"b1_p50": ..., "b32_p95": ...}``); ``pending`` while
    the dict itself is None (timing not finished), ``n/a`` if that figure is absent."""
    if latency_ms is None:
        return PENDING
    return ms(latency_ms.get(f"b{batch}_{stat}"), unit=unit)


def latency_spread(latency_ms: Mapping[str, Any] | None, batch: int) -> str:
    """Median and 95th percentile at one batch size: ``12.34 / 15.67`` (ms), or ``pending``."""
    if latency_ms is None:
        return PENDING
    return f"{latency(latency_ms, batch, 'p50')} / {latency(latency_ms, batch, 'p95')}"


def shape(dims: Sequence[int]) -> str:
    """A tensor shape: ``32 x 112 x 112``."""
    return " x ".join(str(int(d)) for d in dims)


def value_range(low: Any, high: Any, digits: int = 3) -> str:
    """A closed range of floats: ``-0.512 .. 3.27``; ``n/a`` if either end is missing."""
    if missing(low) or missing(high):
        return NA
    return f"{general(low, digits)} .. {general(high, digits)}"


def qparams(scale: Any, zero_point: Any) -> str:
    """An affine quantizer's scale and zero point: ``0.0123 / zp 0``."""
    if missing(scale):
        return NA
    return f"{general(scale, 3)} / zp {count(zero_point)}"


# --- intervals ---------------------------------------------------------------------------------

#: How an interval's numbers are scaled and labelled, by the quantity they measure.
_INTERVAL_UNITS: dict[str, tuple[float, str]] = {
    "percent": (100.0, "%"),
    "points": (1.0, " points"),
    "ms": (1.0, " ms"),
    "db": (1.0, " dB"),
    "plain": (1.0, ""),
}


def interval(
    value: Any,
    bounds: Any = None,
    *,
    kind: str = "percent",
    digits: int = 1,
    level: float = 0.95,
) -> str:
    """An estimate with its confidence interval: ``93.1% (95% CI 92.0–94.2)``.

    ``value`` is either anything with ``estimate``, ``low`` and ``high`` attributes (an
    ``Interval`` from the stats module; its ``level`` is used if it has one), or the estimate
    itself with ``bounds`` a ``(low, high)`` pair or an object with ``low``/``high``.
    ``kind``: ``percent`` (fractions shown as %), ``points``, ``ms``, ``db`` or ``plain``.
    Without bounds, only the estimate is shown.
    """
    if kind not in _INTERVAL_UNITS:
        raise ValueError(f"interval kind must be one of {sorted(_INTERVAL_UNITS)}, got {kind!r}")
    scale, suffix = _INTERVAL_UNITS[kind]
    if isinstance(value, Mapping) and "estimate" in value:  # an Interval from report.json
        estimate, low, high = value["estimate"], value.get("low"), value.get("high")
        level = value.get("level") or level
    elif hasattr(value, "estimate"):
        estimate, low, high = value.estimate, value.low, value.high
        level = getattr(value, "level", level)
    else:
        estimate = value
        low, high = _pair(bounds)
    if missing(estimate):
        return NA
    text = number(scale * float(estimate), digits) + suffix
    if missing(low) or missing(high):
        return text
    lo, hi = number(scale * float(low), digits), number(scale * float(high), digits)
    return f"{text} ({number(100 * float(level), 0)}% CI {lo}–{hi})"


def _pair(bounds: Any) -> tuple[Any, Any]:
    if bounds is None:
        return None, None
    if hasattr(bounds, "low") and hasattr(bounds, "high"):
        return bounds.low, bounds.high
    low, high = bounds
    return low, high
