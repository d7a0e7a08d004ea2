"""Weight and activation histograms of one layer, with the INT8 grid and the clip range.

Weights: all FP32 weights of the layer against the grid the quantized layer uses (for
per-channel weights, the grid of the channel with the widest range). Activations: the FP32
layer output after its ReLU over the calibration images, against the quantized layer's output
grid. Activation histograms of all layers are built together (two passes: range, then counts)
and kept in the run's ``RunAnalysis``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from aslquant.analysis.capture import (
    SAMPLE_VALUES,
    Capture,
    ObservedRange,
    QuantizedLayers,
    output_point,
    post_relu,
)
from aslquant.analysis.fakequant import QParams
from aslquant.errors import InputError
from aslquant.model import LAYER_NAMES
from aslquant.recipe import Interval

if TYPE_CHECKING:
    from aslquant.analysis.run_analysis import RunAnalysis
    from aslquant.run import RunResult

#: Histogram kinds a layer has.
KINDS = ("weights", "activations")
#: Bins a histogram may have.
BINS = Interval(2, 2000)


@dataclass(frozen=True, eq=False)
class Histogram:
    """A layer's values with the grid that represents them (float units throughout)."""

    layer: str
    kind: str
    bits: int
    per_channel: bool
    counts: tuple[int, ...]
    edges: tuple[float, ...]
    #: Representable values inside the histogram's span (of the widest channel if per-channel).
    grid: tuple[float, ...]
    clip_min: float | None
    clip_max: float | None
    scale: float | None
    zero_point: int | None
    values_sample: np.ndarray
    observed_min: float
    observed_max: float
    n_images: int | None = None
    #: Per-channel weights: every channel's scale, and the channel whose grid is drawn.
    scales: tuple[float, ...] | None = None
    widest_channel: int | None = None
    note: str | None = None

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for key in ("counts", "edges", "grid", "scales"):
            if d[key] is not None:
                d[key] = list(d[key])
        return d


@dataclass(frozen=True, eq=False)
class ActivationValues:
    """One layer's FP32 activations over the calibration images, binned."""

    counts: tuple[int, ...]
    edges: tuple[float, ...]
    values_sample: np.ndarray
    observed_min: float
    observed_max: float
    n_images: int


def _grid(qparams: QParams, channel: int, lo: float, hi: float) -> tuple[float, ...]:
    levels = qparams.levels(channel)
    return tuple(levels[(levels >= lo - 1e-12) & (levels <= hi + 1e-12)].tolist())


def activation_values(
    fp32_model: torch.nn.Module,
    images: torch.Tensor,
    inspected: QuantizedLayers,
    observed: Mapping[str, ObservedRange],
    bins: int,
) -> dict[str, ActivationValues]:
    """Histogram of every layer's FP32 post-ReLU output over ``images`` (the images
    ``observed`` was measured on, which gives the range and the sample).

    Edges span the observed values and the quantized layer's clip range, so the picture shows
    both what occurs and what the grid can represent.
    """
    names = list(LAYER_NAMES)
    edges: dict[str, tuple[float, float]] = {}
    counts: dict[str, torch.Tensor] = {}
    for n in names:
        seen = observed[output_point(n)]
        layer = inspected.get(n)
        q = layer.output_qparams if layer is not None else None
        clip = q.clip_range() if q is not None else (seen.low, seen.high)
        a, b = min(seen.low, clip[0]), max(seen.high, clip[1])
        edges[n] = (a, b if b > a else a + 1.0)
        counts[n] = torch.zeros(bins, dtype=torch.float64)
    with Capture(fp32_model, names) as cap, torch.inference_mode():
        for x in torch.split(images, 16):
            fp32_model(x)
            for n in names:
                a, b = edges[n]
                t = post_relu(n, cap.outputs[n]).flatten()
                counts[n] += torch.histc(t, bins=bins, min=a, max=b)
    return {
        n: ActivationValues(
            counts=tuple(int(c) for c in counts[n].round().long().tolist()),
            edges=tuple(np.linspace(edges[n][0], edges[n][1], bins + 1).tolist()),
            values_sample=observed[output_point(n)].sample,
            observed_min=observed[output_point(n)].low,
            observed_max=observed[output_point(n)].high,
            n_images=int(len(images)),
        )
        for n in names
    }


def weight_histogram(
    fp32_weight: torch.Tensor, inspected: QuantizedLayers, layer: str, bins: int
) -> Histogram:
    """Histogram of one layer's FP32 weights with the grid its quantized weights use."""
    w = fp32_weight.detach().float()
    quant = inspected.get(layer)
    qparams = quant.weight_qparams if quant is not None else None
    values = w.flatten().numpy()
    channel = 0
    scales = None
    clip_min = clip_max = None
    if qparams is not None:
        if qparams.per_channel:
            channel = int(np.argmax(qparams.scale))
            scales = qparams.scale
        clip_min, clip_max = qparams.clip_range(channel)
    a = min(float(values.min()), clip_min if clip_min is not None else float(values.min()))
    b = max(float(values.max()), clip_max if clip_max is not None else float(values.max()))
    counts, edges = np.histogram(values, bins=bins, range=(a, b))
    rng = np.random.default_rng(0)
    sample = values if values.size <= SAMPLE_VALUES else rng.choice(values, SAMPLE_VALUES, False)
    note = None
    bits = 8
    if quant is not None and quant.weight is not None and qparams is None:
        bits, note = 16, "FP16 weights: the grid is not uniform"
    elif qparams is None:
        note = "this layer's weights are not quantized in this run"
    return Histogram(
        layer=layer,
        kind="weights",
        bits=qparams.bits if qparams is not None else bits,
        per_channel=bool(qparams is not None and qparams.per_channel),
        counts=tuple(int(c) for c in counts),
        edges=tuple(float(e) for e in edges),
        grid=_grid(qparams, channel, a, b) if qparams is not None else (),
        clip_min=clip_min,
        clip_max=clip_max,
        scale=qparams.scale[channel] if qparams is not None else None,
        zero_point=qparams.zero_point[channel] if qparams is not None else None,
        values_sample=sample,
        observed_min=float(values.min()),
        observed_max=float(values.max()),
        scales=scales,
        widest_channel=channel if scales is not None else None,
        note=note,
    )


def activation_histogram(
    values: ActivationValues, inspected: QuantizedLayers, layer: str
) -> Histogram:
    """One layer's activation histogram with its output grid (from ``activation_values``)."""
    quant = inspected.get(layer)
    q = quant.output_qparams if quant is not None else None
    clip = q.clip_range() if q is not None else (None, None)
    return Histogram(
        layer=layer,
        kind="activations",
        bits=q.bits if q is not None else 8,
        per_channel=False,
        counts=values.counts,
        edges=values.edges,
        grid=_grid(q, 0, values.edges[0], values.edges[-1]) if q is not None else (),
        clip_min=clip[0],
        clip_max=clip[1],
        scale=q.scale[0] if q is not None else None,
        zero_point=q.zero_point[0] if q is not None else None,
        values_sample=values.values_sample,
        observed_min=values.observed_min,
        observed_max=values.observed_max,
        n_images=values.n_images,
        note=None if q is not None else "this layer's output is not quantized in this run",
    )


def layer_histogram(
    run: RunResult | RunAnalysis, layer: str, kind: str = "weights", bins: int = 120
) -> Histogram:
    """Histogram of one layer's FP32 weights or activations with the INT8 grid and clip range.

    Weights: all FP32 weights; for per-channel weights the grid and clip range drawn are those
    of the channel with the widest range (``per_channel``, every scale in ``scales``).
    Activations: the FP32 layer output after its ReLU over the calibration images; grid and
    clip range from the quantized layer's output scale and zero point. Pass the run's
    ``RunAnalysis`` to keep the activation values for the next histogram.
    """
    from aslquant.analysis.run_analysis import as_analysis

    if layer not in LAYER_NAMES:
        raise InputError(f"layer {layer!r} is not one of {', '.join(LAYER_NAMES)}")
    if kind not in KINDS:
        raise InputError(f"histogram kind must be weights or activations, got {kind!r}")
    BINS.check("bins", bins)
    analysis = as_analysis(run)
    inspected = analysis.inspected()
    if kind == "weights":
        weight = getattr(analysis.result.float_reference, layer).weight
        return weight_histogram(weight, inspected, layer, bins)
    return activation_histogram(analysis.activation_values(bins)[layer], inspected, layer)
