"""Cross-layer equalization (CLE): even out per-channel weight ranges without changing the model.

What it fixes
-------------
With per-tensor weight quantization one scale serves a whole layer, set by its largest
weight. If one output channel's weights are 50x larger than the others', that channel sets
the step and every other channel is rounded to a handful of levels (or to zero). CLE
(Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and Bias
Correction", section 4.1) moves that size from one layer to the next, where it does no harm.

Why the model does not change
-----------------------------
ReLU is positively homogeneous: relu(x / s) = relu(x) / s for any s > 0. So dividing output
channel i of layer 1 (its weights and its bias) by s_i divides channel i of the activation
by s_i, and multiplying the matching input weights of layer 2 by s_i undoes it exactly.
Max-pool, average-pool and flatten act on each channel separately and also commute with a
positive per-channel scale, so in CustomCNN the pairs conv1->conv2, conv2->conv3,
conv3->conv4, conv4->fc1 (conv4's 128 channels, pooled to 1x1, are fc1's 128 inputs) and
fc1->fc2 can all be rescaled. Only floating-point rounding differs (about 1e-6).

The scale
---------
For channel i let r1_i = max |W1[i, ...]| (the range of layer 1's output channel i) and
r2_i = max |W2[:, i, ...]| (the range of layer 2's input channel i). The paper's choice

    s_i = sqrt(r1_i * r2_i) / r2_i = sqrt(r1_i / r2_i)

makes both equal to sqrt(r1_i * r2_i): r1_i / s_i = r2_i * s_i. Each layer takes part in two
pairs (as consumer, then as producer), so one pass over the pairs disturbs the previous one;
the passes are repeated until no scale moves by more than ``tolerance``. Channels whose
range is 0 on either side are left alone.

When it does not help
---------------------
With per-channel weight quantization each channel already has its own scale, so CLE has
little to fix (it can still help the activations in between, or hurt them: a channel that
was scaled up in layer 1's output also widens the activation range). It needs ReLU (or
another positively homogeneous function) between the layers: not sigmoid, not GELU, not
a BatchNorm that has not been folded. It does nothing for activation outliers coming from
the data.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from aslquant.errors import InputError
from aslquant.model import float_layer

__all__ = [
    "CLE_PAIRS",
    "EqualizationReport",
    "PairEqualization",
    "channel_ranges",
    "equalize",
    "range_spread",
    "rescale_channel",
]

#: Adjacent (producer, consumer) layers of CustomCNN with only ReLU, max-pool, average-pool
#: and flatten between them: a positive per-channel scale passes through all of those.
CLE_PAIRS: tuple[tuple[str, str], ...] = (
    ("conv1", "conv2"),
    ("conv2", "conv3"),
    ("conv3", "conv4"),
    ("conv4", "fc1"),
    ("fc1", "fc2"),
)


@dataclass(frozen=True)
class PairEqualization:
    """What equalization did to one (first, second) pair.

    ``*_spread`` is the largest channel range divided by the smallest non-zero one
    (``range_spread``): over ``first``'s output channels and over ``second``'s input
    channels. 1 means every channel uses the same range. ``scale_min``/``scale_max`` are the
    smallest and largest total s_i applied (first's channel i was divided by s_i).
    """

    first: str
    second: str
    first_spread_before: float
    first_spread_after: float
    second_spread_before: float
    second_spread_after: float
    scale_min: float
    scale_max: float

    def to_row(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class EqualizationReport:
    """Per-pair spreads before and after, and how many passes the iteration needed."""

    pairs: tuple[PairEqualization, ...]
    rounds: int
    converged: bool

    def to_rows(self) -> list[dict]:
        return [pair.to_row() for pair in self.pairs]


def _layer(model: nn.Module, name: str) -> nn.Conv2d | nn.Linear:
    layer = float_layer(model, name, "equalization", "equalize")
    if isinstance(layer, nn.Conv2d) and layer.groups != 1:
        raise InputError(f"layer {name!r}: grouped convolutions are not supported")
    return layer


def _out_channels(layer: nn.Module) -> int:
    return layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features


def _in_channels(layer: nn.Module) -> int:
    return layer.in_channels if isinstance(layer, nn.Conv2d) else layer.in_features


def _check_pairs(model: nn.Module, pairs: Sequence[tuple[str, str]]) -> None:
    for first, second in pairs:
        out_ch, in_ch = _out_channels(_layer(model, first)), _in_channels(_layer(model, second))
        if out_ch != in_ch:
            raise InputError(
                f"layers {first!r} -> {second!r}: {first} has {out_ch} output channels but "
                f"{second} takes {in_ch} inputs; they are not a rescalable pair"
            )


def channel_ranges(weight: torch.Tensor, axis: int) -> torch.Tensor:
    """max |w| over everything but ``axis``: one range per channel along ``axis``."""
    moved = weight.detach().abs().transpose(0, axis).reshape(weight.shape[axis], -1)
    return moved.amax(dim=1)


def range_spread(ranges: torch.Tensor) -> float:
    """Largest channel range / smallest non-zero one (1.0 = perfectly even; inf if none)."""
    nonzero = ranges[ranges > 0]
    if nonzero.numel() == 0:
        return math.inf
    return float(nonzero.max() / nonzero.min())


def _scale_pair(first: nn.Module, second: nn.Module, s: torch.Tensor) -> None:
    """Divide first's output channel i by s_i, multiply second's input channel i by s_i."""
    shape_out = (-1,) + (1,) * (first.weight.dim() - 1)
    shape_in = (1, -1) + (1,) * (second.weight.dim() - 2)
    with torch.no_grad():
        first.weight.div_(s.view(shape_out).to(first.weight.dtype))
        if first.bias is not None:
            first.bias.div_(s.to(first.bias.dtype))
        second.weight.mul_(s.view(shape_in).to(second.weight.dtype))


def _pair_spreads(model: nn.Module, first: str, second: str) -> tuple[float, float]:
    return (
        range_spread(channel_ranges(_layer(model, first).weight, 0)),
        range_spread(channel_ranges(_layer(model, second).weight, 1)),
    )


def equalize(
    model: nn.Module,
    pairs: Sequence[tuple[str, str]] = CLE_PAIRS,
    max_rounds: int = 50,
    tolerance: float = 1e-4,
) -> tuple[nn.Module, EqualizationReport]:
    """A new, equalized float model (``model`` is left untouched) and what changed.

    The iteration runs on a float64 copy of the weights (so many passes do not accumulate
    float32 rounding) and the result is written back in the model's own dtype once.
    """
    if isinstance(max_rounds, bool) or not isinstance(max_rounds, int) or max_rounds < 1:
        raise InputError(f"max_rounds must be a whole number >= 1, got {max_rounds!r}")
    if not (isinstance(tolerance, int | float) and tolerance > 0):
        raise InputError(f"tolerance must be a number > 0, got {tolerance!r}")
    _check_pairs(model, pairs)
    work = copy.deepcopy(model)
    names = list(dict.fromkeys(name for pair in pairs for name in pair))
    dtypes = {name: _layer(work, name).weight.dtype for name in names}
    for name in names:
        _layer(work, name).double()
    before = {pair: _pair_spreads(work, *pair) for pair in pairs}
    total = {
        pair: torch.ones(_out_channels(_layer(work, pair[0])), dtype=torch.float64)
        for pair in pairs
    }
    rounds, converged = 0, False
    while rounds < max_rounds and not converged:
        rounds += 1
        largest_move = 0.0
        for pair in pairs:
            first, second = _layer(work, pair[0]), _layer(work, pair[1])
            r1 = channel_ranges(first.weight, 0)
            r2 = channel_ranges(second.weight, 1)
            usable = (r1 > 0) & (r2 > 0)
            s = torch.where(usable, torch.sqrt(r1 / torch.where(usable, r2, 1.0)), 1.0)
            _scale_pair(first, second, s)
            total[pair] *= s
            largest_move = max(largest_move, float((s - 1.0).abs().max()))
        converged = largest_move < tolerance
    for name in names:
        _layer(work, name).to(dtypes[name])
    report = EqualizationReport(
        pairs=tuple(
            PairEqualization(
                first=pair[0],
                second=pair[1],
                first_spread_before=before[pair][0],
                first_spread_after=_pair_spreads(work, *pair)[0],
                second_spread_before=before[pair][1],
                second_spread_after=_pair_spreads(work, *pair)[1],
                scale_min=float(total[pair].min()),
                scale_max=float(total[pair].max()),
            )
            for pair in pairs
        ),
        rounds=rounds,
        converged=converged,
    )
    return work, report


def rescale_channel(
    model: nn.Module,
    layer: str,
    channel: int,
    factor: float,
    pairs: Sequence[tuple[str, str]] = CLE_PAIRS,
) -> nn.Module:
    """A new model with ``layer``'s output ``channel`` made ``factor`` times larger.

    The matching input weights of the next layer are divided by ``factor``, so the model
    computes the same function (up to float rounding). This is the opposite of equalization:
    it plants an "outlier channel" that ruins per-tensor weight quantization of ``layer``,
    for tests and demonstrations.
    """
    following = dict(pairs)
    if layer not in following:
        raise InputError(
            f"layer {layer!r}: can only rescale a layer followed by another through ReLU: "
            f"one of {', '.join(following)}"
        )
    if isinstance(factor, bool) or not isinstance(factor, int | float):
        raise InputError(f"factor must be a number, got {factor!r}")
    if not (math.isfinite(factor) and factor > 0):
        raise InputError(
            f"factor must be a finite number > 0 (ReLU only commutes with positive scales), "
            f"got {factor!r}"
        )
    _check_pairs(model, [(layer, following[layer])])
    channels = _out_channels(_layer(model, layer))
    if isinstance(channel, bool) or not isinstance(channel, int) or not 0 <= channel < channels:
        raise InputError(f"channel must be a whole number in 0..{channels - 1}, got {channel!r}")
    work = copy.deepcopy(model)
    first, second = _layer(work, layer), _layer(work, following[layer])
    with torch.no_grad():
        first.weight[channel].mul_(factor)
        if first.bias is not None:
            first.bias[channel].mul_(factor)
        second.weight[:, channel].div_(factor)
    return work
