"""The torch QConfig a recipe stands for: which observer watches activations and weights.

Activation observers are named here once (``ACT_OBSERVERS``: name -> factory and a one-line
explanation); the recipe offers exactly these names. Activations are always quint8 per-tensor
affine, with ``reduce_range`` (7 bits) from the recipe; weights are qint8, per-tensor or
per-channel, symmetric or affine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.ao.quantization as tq

if TYPE_CHECKING:
    from aslquant.recipe import QuantRecipe


@dataclass(frozen=True)
class ObserverChoice:
    """An activation observer the user can pick: what it does, and its torch class."""

    help: str
    observer: Any


def _clipping() -> dict[str, ObserverChoice]:
    from aslquant.observers import CLIPPING_OBSERVERS

    return {name: ObserverChoice(help, cls) for name, (cls, help) in CLIPPING_OBSERVERS.items()}


ACT_OBSERVERS: dict[str, ObserverChoice] = {
    "minmax": ObserverChoice(
        "Range = smallest and largest activation seen; one outlier widens every step.",
        tq.MinMaxObserver,
    ),
    "moving-average": ObserverChoice(
        "Min/max averaged over calibration batches; less swayed by one batch.",
        tq.MovingAverageMinMaxObserver,
    ),
    "histogram": ObserverChoice(
        "Builds a histogram and picks the range that minimises quantization error.",
        tq.HistogramObserver,
    ),
    # Calibration techniques that clip outliers (ONNX Runtime / TensorRT / NNCF style).
    **_clipping(),
}

#: Observers torch ships; the clipping ones above are aslquant's (aslquant.observers).
TORCH_ACT_OBSERVERS = ("minmax", "moving-average", "histogram")


def weight_observer(recipe: QuantRecipe, fake_quant: bool = False):
    """The weight observer (or FakeQuantize for QAT) factory of a recipe."""
    per_channel = recipe.weight_observer == "per-channel"
    symmetric = recipe.qscheme == "symmetric"
    if per_channel:
        qscheme = torch.per_channel_symmetric if symmetric else torch.per_channel_affine
        observer = tq.PerChannelMinMaxObserver
        extra = {"ch_axis": 0}
    else:
        qscheme = torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine
        observer = tq.MinMaxObserver
        extra = {}
    if fake_quant:
        obs = (
            tq.MovingAveragePerChannelMinMaxObserver
            if per_channel
            else tq.MovingAverageMinMaxObserver
        )
        return tq.FakeQuantize.with_args(
            observer=obs, quant_min=-128, quant_max=127, dtype=torch.qint8, qscheme=qscheme, **extra
        )
    return observer.with_args(dtype=torch.qint8, qscheme=qscheme, **extra)


def activation_observer(recipe: QuantRecipe, fake_quant: bool = False):
    """The activation observer (or FakeQuantize for QAT) factory of a recipe."""
    # Activations stay affine whatever the weight qscheme: after ReLU they are all >= 0, and a
    # symmetric quint8 range would spend half its levels on negatives that never occur.
    reduce = recipe.effective_reduce_range
    if fake_quant:
        return tq.FakeQuantize.with_args(
            observer=tq.MovingAverageMinMaxObserver,
            quant_min=0,
            quant_max=127 if reduce else 255,
            dtype=torch.quint8,
            qscheme=torch.per_tensor_affine,
            reduce_range=False,
        )
    return ACT_OBSERVERS[recipe.act_observer].observer.with_args(
        dtype=torch.quint8, qscheme=torch.per_tensor_affine, reduce_range=reduce
    )


def make_qconfig(recipe: QuantRecipe, fake_quant: bool = False) -> tq.QConfig:
    """The torch QConfig a recipe stands for."""
    return tq.QConfig(
        activation=activation_observer(recipe, fake_quant),
        weight=weight_observer(recipe, fake_quant),
    )


def backend_config(backend: str):
    """FX's BackendConfig for a quantized engine."""
    from torch.ao.quantization import backend_config as bc

    return {
        "x86": bc.get_native_backend_config,
        "fbgemm": bc.get_fbgemm_backend_config,
        "qnnpack": bc.get_qnnpack_backend_config,
        "onednn": bc.get_onednn_backend_config,
    }[backend]()
