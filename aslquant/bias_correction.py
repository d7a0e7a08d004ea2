"""Empirical bias correction: remove the average shift that weight rounding adds to each layer.

What it fixes
-------------
Quantizing a layer's weights W to W_q changes its output by (W_q - W) x. Rounding errors look
random weight by weight, but for one output channel they add up to a fixed error vector
e = (W_q - W)[i], and since inputs after a ReLU are all >= 0 and similar from image to
image, e . x does not average out: the channel's output is shifted by about e . E[x] on
every image. That bias shift is passed on to the next layer and adds up through the
network. Nagel et al. 2019 ("Data-Free Quantization Through Weight Equalization and Bias
Correction", section 4.2) remove it: the expected shift E[(W_q - W) x] is estimated and
subtracted from the layer's bias, so the quantized layer is right *on average*.

How
---
For each conv/linear layer: the mean input E[x] it receives in the float model on the
calibration images (one pass, hooks, a running sum: no activations are stored); W_q exactly
as convert will compute it from the recipe's weight observer (the observer is instantiated
and fed the weight, and its qparams go to ``torch.quantize_per_tensor`` /
``torch.quantize_per_channel``, as in convert); then

    shift[i] = mean over positions of (conv or linear)(E[x], W_q - W)[i]
    new bias[i] = bias[i] - shift[i]

Convolution and linear layers are linear in x, so the shift computed from E[x] is exactly
the mean of the shifts over all images and positions. The correction is applied to a copy of
the float model *before* the usual prepare/calibrate/convert, so it works with every method;
quantization then keeps the new bias (torch keeps biases in float).

When it does not help
---------------------
It removes only the *mean* error of each channel, not the error image by image; when the
weights are well quantized (8-bit per-channel) that mean is already tiny and the correction
changes little. It is most useful for per-tensor or low-bit weights. It does nothing for
activation quantization error. It uses the float model's inputs, so errors in earlier
quantized layers are not accounted for (AIMET's variant feeds the quantized model instead).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.ao.quantization.observer import ObserverBase

from aslquant.errors import InputError
from aslquant.model import LAYER_NAMES, float_layer

__all__ = [
    "BiasCorrectionReport",
    "LayerBiasCorrection",
    "WeightObserverFactory",
    "correct_biases",
    "expected_output_shift",
    "fake_quantize_weight",
]

#: Makes a fresh weight observer, e.g. ``torch.ao.quantization.MinMaxObserver.with_args(
#: dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)`` or a QConfig's ``.weight``.
WeightObserverFactory = Callable[[], ObserverBase]

_PER_TENSOR = (torch.per_tensor_affine, torch.per_tensor_symmetric)
_PER_CHANNEL = (torch.per_channel_affine, torch.per_channel_symmetric)


def fake_quantize_weight(
    weight: torch.Tensor, observer_factory: WeightObserverFactory
) -> torch.Tensor:
    """``weight`` rounded to the grid the observer picks for it, back in float (W_q).

    The same observer, qparams and rounding that ``convert`` uses for a layer's weight.
    """
    observer = observer_factory()
    if not isinstance(observer, ObserverBase):
        raise InputError(
            f"weight observer factory made a {type(observer).__name__}, not a torch observer"
        )
    qscheme = getattr(observer, "qscheme", None)
    if qscheme not in _PER_TENSOR + _PER_CHANNEL:
        raise InputError(
            f"weight observer qscheme {qscheme} is not per-tensor or per-channel affine/symmetric"
        )
    w = weight.detach().float()
    observer(w)
    scale, zero_point = observer.calculate_qparams()
    qmin, qmax = int(observer.quant_min), int(observer.quant_max)
    # torch.quantize_per_* then a clamp to [quant_min, quant_max], as convert's
    # torch.ao.nn.quantized.modules.utils._quantize_weight does. (fake_quantize_* rounds
    # through 1/scale and differs from it by one step on a few weights.)
    if qscheme in _PER_TENSOR:
        q = torch.quantize_per_tensor(w, float(scale), int(zero_point), torch.qint8)
        codes = q.int_repr().clamp(qmin, qmax).to(torch.float32)
        return (codes - int(zero_point)) * float(scale)
    axis = int(observer.ch_axis)
    q = torch.quantize_per_channel(
        w, scale.to(torch.double), zero_point.to(torch.int64), axis, torch.qint8
    )
    shape = [1] * w.dim()
    shape[axis] = -1
    codes = q.int_repr().clamp(qmin, qmax).to(torch.float32)
    return (codes - zero_point.view(shape).float()) * scale.view(shape).float()


def expected_output_shift(
    layer: nn.Conv2d | nn.Linear, mean_input: torch.Tensor, weight_q: torch.Tensor
) -> torch.Tensor:
    """E[(W_q - W) x] per output channel, given E[x] (one input without the batch dim)."""
    delta = (weight_q - layer.weight.detach()).to(torch.float64)
    x = mean_input.to(torch.float64).unsqueeze(0)
    if isinstance(layer, nn.Conv2d):
        # Conv2d._conv_forward applies the layer's own stride, padding (mode) and dilation.
        out = nn.Conv2d._conv_forward(layer, x, delta, None)
        return out.mean(dim=(0, 2, 3))
    return nn.functional.linear(x, delta)[0]


@dataclass(frozen=True)
class LayerBiasCorrection:
    """The shift removed from one layer's bias (``shift[i]`` was subtracted from bias[i]).

    ``mean_abs_bias`` is the mean |bias| before correction, to judge the shift's size by.
    """

    layer: str
    shift: tuple[float, ...]
    mean_abs_shift: float
    max_abs_shift: float
    mean_abs_bias: float

    def to_row(self) -> dict:
        return {
            "layer": self.layer,
            "mean_abs_shift": self.mean_abs_shift,
            "max_abs_shift": self.max_abs_shift,
            "mean_abs_bias": self.mean_abs_bias,
        }


@dataclass(frozen=True)
class BiasCorrectionReport:
    layers: tuple[LayerBiasCorrection, ...]
    images: int

    def to_rows(self) -> list[dict]:
        return [layer.to_row() for layer in self.layers]


def _batches(calibration: torch.Tensor | Iterable[torch.Tensor], batch_size: int):
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch size must be a whole number >= 1, got {batch_size!r}")
    if isinstance(calibration, torch.Tensor):
        calibration = torch.split(calibration, batch_size) if calibration.dim() else [calibration]
    for batch in calibration:
        if not isinstance(batch, torch.Tensor) or not batch.is_floating_point():
            raise InputError("calibration: expected float image tensors (N, C, H, W)")
        if batch.dim() < 2 or len(batch) == 0:
            raise InputError(
                f"calibration: expected a batch of images, got a tensor of shape "
                f"{list(batch.shape)}"
            )
        yield batch


def _layers(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Conv2d | nn.Linear]:
    return {name: float_layer(model, name, "bias correction", "correct") for name in names}


def correct_biases(
    model: nn.Module,
    calibration: torch.Tensor | Iterable[torch.Tensor],
    weight_observer_factory: WeightObserverFactory,
    layers: Sequence[str] = LAYER_NAMES,
    batch_size: int = 32,
) -> tuple[nn.Module, BiasCorrectionReport]:
    """A new float model whose ``layers`` have bias-corrected biases, and what was removed.

    ``calibration`` is the calibration images (one tensor, or batches of them).
    ``weight_observer_factory`` makes the observer the recipe uses for weights (a QConfig's
    ``.weight``). Layers without a bias get one. ``model`` is left untouched.
    """
    if isinstance(layers, str) or not layers:
        raise InputError(f"layers must be a non-empty list of layer names, got {layers!r}")
    work = copy.deepcopy(model).eval()
    targets = _layers(work, list(dict.fromkeys(layers)))
    sums: dict[str, torch.Tensor] = {}
    counts = dict.fromkeys(targets, 0)

    def remember(name: str):
        def hook(_module, inputs) -> None:
            x = inputs[0].detach().to(torch.float64)
            sums[name] = sums[name] + x.sum(0) if name in sums else x.sum(0)
            counts[name] += x.shape[0]

        return hook

    handles = [targets[name].register_forward_pre_hook(remember(name)) for name in targets]
    images = 0
    try:
        with torch.no_grad():
            for batch in _batches(calibration, batch_size):
                work(batch)
                images += len(batch)
    finally:
        for handle in handles:
            handle.remove()
    if images == 0:
        raise InputError("calibration: no images to estimate the bias shift from")
    rows = []
    with torch.no_grad():
        for name, layer in targets.items():
            if counts[name] == 0:
                raise InputError(f"layer {name!r}: never ran on the calibration images")
            weight_q = fake_quantize_weight(layer.weight, weight_observer_factory)
            shift = expected_output_shift(layer, sums[name] / counts[name], weight_q)
            if layer.bias is None:
                w = layer.weight
                layer.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device))
            bias_size = float(layer.bias.abs().mean())
            layer.bias.sub_(shift.to(layer.bias.dtype))
            rows.append(
                LayerBiasCorrection(
                    layer=name,
                    shift=tuple(float(v) for v in shift),
                    mean_abs_shift=float(shift.abs().mean()),
                    max_abs_shift=float(shift.abs().max()),
                    mean_abs_bias=bias_size,
                )
            )
    return work, BiasCorrectionReport(layers=tuple(rows), images=images)
