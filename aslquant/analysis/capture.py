"""Finding conv1..fc2 in any quantized model, and forward hooks that capture their tensors.

``inspect_quantized`` answers, for each layer, what the quantized model really does there: the
weights it computes with (dequantized INT8, FP16 or float), their grid, and the grids of the
layer's input and output. Eager models (``MixedPrecisionCNN``, dynamic, FP16) and FX
GraphModules expose conv1..fc2 as submodules, so one forward pass with hooks reads them; a
pt2e model has no such modules, and its converted graph is read instead (``analysis.pt2e``).
Which way applies is the method's declared ``has_layer_modules``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aslquant.analysis.fakequant import QParams
from aslquant.engine_lock import engine_session
from aslquant.model import LAYER_NAMES, CustomCNN
from aslquant.qmodules import RELU_AFTER, Fp16Weight
from aslquant.quantize import QuantizedModel


def layer_module(module: nn.Module, name: str) -> nn.Module | None:
    """``module``'s submodule ``name``, or None (compiled graphs have none that run)."""
    if "_orig_mod" in module._modules:  # torch.compile's OptimizedModule
        # Attribute access reaches the original module's leftovers, but the compiled code
        # never calls them, so hooks on them would never fire.
        return None
    try:
        return module.get_submodule(name)
    except AttributeError:
        return None


def post_relu(name: str, t: torch.Tensor) -> torch.Tensor:
    """The tensor after the layer's ReLU (fc2 has none).

    relu(relu(x)) == relu(x): applying it to both sides compares fused and unfused layouts at
    the same point, after the ReLU, the only tensor a fused quantized conv+ReLU produces.
    """
    return F.relu(t) if RELU_AFTER[name] else t


class Capture:
    """Forward hooks that keep the latest input and output of named submodules.

    Use as a context manager so the hooks are always removed (the model is left as found).
    """

    def __init__(self, model: nn.Module, names: Iterable[str]) -> None:
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self.active = True
        self.handles = []
        for name in names:
            layer = layer_module(model, name)
            if layer is not None:
                self.handles.append(layer.register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def hook(module, inputs, output):
            if self.active:
                self.inputs[name] = inputs[0]
                self.outputs[name] = output

        return hook

    def clear(self) -> None:
        self.inputs.clear()
        self.outputs.clear()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


@dataclass(frozen=True, eq=False)
class LayerQuant:
    """What a quantized model does at one layer.

    ``weight``: the weights it computes with, as float (dequantized INT8 or FP16 widened), or
    None when the layer runs the original float weights. ``input_qparams`` / ``output_qparams``:
    the grid of the tensor the layer receives / produces (after its ReLU), None where float.
    """

    name: str
    weight: torch.Tensor | None
    weight_dtype: str
    weight_qparams: QParams | None
    input_qparams: QParams | None
    output_qparams: QParams | None

    @property
    def quantized(self) -> bool:
        return self.weight is not None


@dataclass(frozen=True)
class QuantizedLayers:
    """``inspect_quantized``'s answer: one ``LayerQuant`` per layer it found, in forward order."""

    layers: Mapping[str, LayerQuant] = field(default_factory=dict)
    #: How the layers were found: "modules" (hooks) or "graph" (a pt2e converted graph).
    source: str = "modules"

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", MappingProxyType(dict(self.layers)))

    def get(self, name: str) -> LayerQuant | None:
        return self.layers.get(name)

    @property
    def found(self) -> bool:
        return bool(self.layers)


def _module_weight(layer: nn.Module) -> tuple[torch.Tensor | None, str, QParams | None]:
    """(float weights the layer computes with, their dtype, their grid) of a layer module."""
    if isinstance(layer, Fp16Weight):
        return layer.weight.float(), "float16", None
    w = getattr(layer, "weight", None)
    if callable(w) and not isinstance(w, torch.Tensor):
        w = w()  # torch.ao quantized modules expose packed weights through weight()
    if isinstance(w, torch.Tensor) and w.is_quantized:
        return w.dequantize(), str(w.dtype).replace("torch.", ""), QParams.of(w)
    return None, "float32", None  # a float layer (e.g. convolutions under dynamic)


def _inspect_modules(qm: QuantizedModel, input_size: int) -> QuantizedLayers:
    module = qm.inspectable
    names = [n for n in LAYER_NAMES if layer_module(module, n) is not None]
    # Grids are fixed after conversion: any input shows them; zeros cost nothing to make.
    x = torch.zeros(1, 3, input_size, input_size)
    with Capture(module, names) as cap, engine_session(qm.backend), torch.inference_mode():
        module(x)
    layers = {}
    for name in names:
        if name not in cap.outputs:
            continue  # a module the forward never called: not a layer of this model
        weight, dtype, w_qparams = _module_weight(layer_module(module, name))
        layers[name] = LayerQuant(
            name,
            weight,
            dtype,
            w_qparams,
            QParams.of(cap.inputs[name]),
            QParams.of(cap.outputs[name]),
        )
    return QuantizedLayers(layers, "modules")


def inspect_quantized(qm: QuantizedModel, input_size: int) -> QuantizedLayers:
    """Each layer's weights and grids as the quantized model really uses them."""
    if qm.recipe.method_spec.has_layer_modules:
        return _inspect_modules(qm, input_size)
    from aslquant.analysis import pt2e

    if qm.reference is None:
        return QuantizedLayers({}, "graph")
    return pt2e.inspect_graph(pt2e.map_layers(qm.reference))


# --- the FP32 model's tensors at each quantization point -----------------------------------

#: The model input's point name; a layer's output point is ``output_point(layer)``.
INPUT = "input"
#: The average pool's output, a point of its own: a quantized average pool rounds its result
#: again (onto the last conv's output grid), and when that conv runs float the first linear
#: layer's input is quantized here, after the pool, with a grid of its own.
POOLED = "avgpool.output"


def _pool_neighbours() -> tuple[str, str]:
    model = CustomCNN()
    convs = [n for n in LAYER_NAMES if isinstance(getattr(model, n), nn.Conv2d)]
    linears = [n for n in LAYER_NAMES if isinstance(getattr(model, n), nn.Linear)]
    return convs[-1], linears[0]


#: The layers the average pool sits between (the last convolution, the first linear layer).
POOL_AFTER, POOL_BEFORE = _pool_neighbours()
#: Values kept per point for histograms and the playground (a uniform random sample).
SAMPLE_VALUES = 20_000


def output_point(layer: str) -> str:
    return f"{layer}.output"


@dataclass(frozen=True, eq=False)
class ObservedRange:
    """One point's FP32 tensor over some images: per-channel min and max (channels along dim
    1) and a uniform random sample of its values."""

    channel_min: np.ndarray
    channel_max: np.ndarray
    sample: np.ndarray
    n_images: int

    @property
    def low(self) -> float:
        return float(self.channel_min.min())

    @property
    def high(self) -> float:
        return float(self.channel_max.max())


def observe(fp32_model: nn.Module, images: torch.Tensor) -> dict[str, ObservedRange]:
    """The input, every layer output (after its ReLU) and the average pool's output of the
    FP32 model over ``images``, in one pass of 16-image chunks: per-channel ranges and a
    seeded sample of values."""
    lows: dict[str, torch.Tensor] = {}
    highs: dict[str, torch.Tensor] = {}
    samples: dict[str, list[np.ndarray]] = {}
    gen = torch.Generator().manual_seed(0)

    def update(point: str, t: torch.Tensor) -> None:
        dims = [d for d in range(t.dim()) if d != 1]
        lo, hi = t.amin(dim=dims), t.amax(dim=dims)
        lows[point] = torch.minimum(lows[point], lo) if point in lows else lo
        highs[point] = torch.maximum(highs[point], hi) if point in highs else hi
        flat = t.flatten()
        idx = torch.randint(0, flat.numel(), (min(flat.numel(), 4000),), generator=gen)
        samples.setdefault(point, []).append(flat[idx].numpy().copy())

    pool = POOLED.partition(".")[0]
    with Capture(fp32_model, (*LAYER_NAMES, pool)) as cap, torch.inference_mode():
        for x in torch.split(images, 16):
            fp32_model(x)
            update(INPUT, x.float())
            for layer in LAYER_NAMES:
                update(output_point(layer), post_relu(layer, cap.outputs[layer].float()))
            update(POOLED, cap.outputs[pool].float())
    return {
        p: ObservedRange(
            lows[p].double().numpy(),
            highs[p].double().numpy(),
            np.concatenate(samples[p])[:SAMPLE_VALUES],
            int(len(images)),
        )
        for p in lows
    }
