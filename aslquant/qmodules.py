"""Modules a quantized CustomCNN is built from: true FP32 islands, FP16 weights, a fast pool.

``MixedPrecisionCNN`` is the eager-mode model behind every static/QAT recipe. Each of conv1..fc2
runs either quantized or in float, and a tensor is converted only where the domain changes: a
quantized layer preceded by float gets a ``QuantStub`` (its input observer), a float layer
preceded by a quantized one gets a ``DeQuantStub``. So a layer kept in FP32 receives exactly the
float tensor it would get in the FP32 model, the input stays float unless conv1 is quantized,
and keeping every layer in FP32 *is* the FP32 model (same modules, same ops).
"""

from __future__ import annotations

import copy

import torch
import torch.ao.quantization as tq
import torch.nn.functional as F
from torch import nn

from aslquant.model import LAYER_NAMES, CustomCNN

#: The ReLU module after each layer (fc2 has none): fused with it for eager quantization.
RELU_AFTER: dict[str, str | None] = {
    "conv1": "relu1",
    "conv2": "relu2",
    "conv3": "relu3",
    "conv4": "relu4",
    "fc1": "relu5",
    "fc2": None,
}


class MixedPrecisionCNN(nn.Module):
    """CustomCNN with each layer quantized or float, converting tensors only at domain changes.

    ``float_layers`` stay float (their qconfig is None); the others get quantized by the usual
    eager ``prepare``/``convert``. ``to_int8[name]`` (QuantStub) sits before a quantized layer whose
    input is float; ``to_float[name]`` (DeQuantStub) before a float layer whose input is quantized,
    and ``to_float["output"]`` after fc2 when fc2 is quantized. Max-pool, average-pool and flatten
    run in whichever domain their input is in (on quantized tensors they keep its scale).
    """

    def __init__(self, fp32: CustomCNN, float_layers: tuple[str, ...] = ()) -> None:
        super().__init__()
        source = copy.deepcopy(fp32)
        for name in LAYER_NAMES:
            setattr(self, name, getattr(source, name))
            relu = RELU_AFTER[name]
            if relu:
                setattr(self, relu, getattr(source, relu))
        self.pool = source.pool
        self.avgpool = source.avgpool
        self.float_layers = tuple(n for n in LAYER_NAMES if n in float_layers)
        self.to_int8 = nn.ModuleDict()
        self.to_float = nn.ModuleDict()
        quantized_before = False  # the model input is float
        for name in LAYER_NAMES:
            quantized = name not in self.float_layers
            if quantized and not quantized_before:
                self.to_int8[name] = tq.QuantStub()
            elif not quantized and quantized_before:
                self.to_float[name] = tq.DeQuantStub()
            quantized_before = quantized
        if quantized_before:
            self.to_float["output"] = tq.DeQuantStub()

    @property
    def num_classes(self) -> int:
        return self.fc2.out_features

    def fuse_groups(self) -> list[list[str]]:
        return [[name, relu] for name, relu in RELU_AFTER.items() if relu]

    def set_qconfig(self, qconfig) -> None:
        """Quantize every layer but the float ones (and the stubs that feed them)."""
        self.qconfig = qconfig
        for name in self.float_layers:
            getattr(self, name).qconfig = None
            relu = RELU_AFTER[name]
            if relu:
                getattr(self, relu).qconfig = None

    def _enter(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if name in self.to_int8:
            return self.to_int8[name](x)
        if name in self.to_float:
            return self.to_float[name](x)
        return x

    def _layer(self, name: str, x: torch.Tensor) -> torch.Tensor:
        x = getattr(self, name)(self._enter(name, x))
        relu = RELU_AFTER[name]
        return getattr(self, relu)(x) if relu else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in ("conv1", "conv2", "conv3", "conv4"):
            x = self.pool(self._layer(name, x))
        x = torch.flatten(self.avgpool(x), 1)
        x = self._layer("fc2", self._layer("fc1", x))
        if "output" in self.to_float:
            x = self.to_float["output"](x)
        return x


class Fp16Weight(nn.Module):
    """A conv or linear layer whose weights are stored in FP16 and computed in FP32.

    This is what TFLite's float16 post-training quantization does: half the bytes on disk,
    float math at run time (CPUs here have no fast FP16 convolution; ``model.half()`` ran
    about 20x slower than FP32 when measured on this machine).
    """

    def __init__(self, layer: nn.Conv2d | nn.Linear) -> None:
        super().__init__()
        self.register_buffer("weight", layer.weight.detach().half())
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().half())
        self.conv = isinstance(layer, nn.Conv2d)
        if self.conv:
            self.stride, self.padding = layer.stride, layer.padding
            self.dilation, self.groups = layer.dilation, layer.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float()
        b = None if self.bias is None else self.bias.float()
        if self.conv:
            return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)
        return F.linear(x, w, b)


class QuantizedMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d(2, 2)`` with a fast path for quantized tensors of few channels.

    PyTorch's quantized NHWC max-pool kernel vectorises 32 channels at a time and does any
    remainder one value at a time: on conv1's 16-channel 220x220 output it took ~0.75 ms of
    a ~2 ms INT8 forward pass at batch 1 (torch.profiler, x86 and onednn engines). A 2x2
    max of a per-tensor quantized tensor is the 2x2 max of its integer codes (same scale
    and zero point), so here it is two element-wise ``torch.maximum`` over strided uint8
    views of the NHWC storage, written straight into the quantized output: ~0.07 ms.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._fast_path_applies(x):
            return super().forward(x)
        x = x.contiguous(memory_format=torch.channels_last)
        n, c, h, w = x.shape
        h2, w2 = h // 2, w // 2  # floor mode, as MaxPool2d(2, 2)
        out = torch._empty_affine_quantized(
            (n, c, h2, w2),
            scale=x.q_scale(),
            zero_point=x.q_zero_point(),
            dtype=x.dtype,
            memory_format=torch.channels_last,
        )
        codes = _nhwc_codes(x)
        rows = torch.maximum(codes[:, 0 : 2 * h2 : 2], codes[:, 1 : 2 * h2 : 2])
        torch.maximum(rows[:, :, 0 : 2 * w2 : 2], rows[:, :, 1 : 2 * w2 : 2], out=_nhwc_codes(out))
        return out

    def _fast_path_applies(self, x: torch.Tensor) -> bool:
        return (
            x.is_quantized
            and x.dim() == 4
            and x.shape[1] % 32 != 0
            and min(x.shape[2], x.shape[3]) >= 2  # smaller: let torch raise its own error
            and x.dtype in (torch.quint8, torch.qint8)
            and x.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric)
            and self.kernel_size in (2, (2, 2))
            and self.stride in (2, (2, 2))
            and self.padding in (0, (0, 0))
            and self.dilation in (1, (1, 1))
            and not self.ceil_mode
        )


def _nhwc_codes(q: torch.Tensor) -> torch.Tensor:
    """The integer codes of a channels-last quantized tensor as an (N, H, W, C) view, no copy."""
    n, c, h, w = q.shape
    codes = torch.empty(0, dtype=torch.uint8 if q.dtype == torch.quint8 else torch.int8)
    return codes.set_(
        q.untyped_storage(), q.storage_offset(), (n, h, w, c), (h * w * c, w * c, c, 1)
    )


def use_fast_pooling(module: nn.Module, fast: bool = True) -> nn.Module:
    """Swap the 2x2 max-pools of ``module`` (in place) for QuantizedMaxPool2d, or back.

    Exported files get the stock ``nn.MaxPool2d`` back (``fast=False``, on a copy): the fast
    path is an in-process kernel choice, while a TorchScript file should run anywhere.
    """
    wanted, unwanted = (
        (QuantizedMaxPool2d, nn.MaxPool2d) if fast else (nn.MaxPool2d, QuantizedMaxPool2d)
    )
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is unwanted:
                setattr(
                    parent,
                    name,
                    wanted(
                        child.kernel_size,
                        child.stride,
                        child.padding,
                        child.dilation,
                        ceil_mode=child.ceil_mode,
                    ),
                )
    return module


def portable_copy(module: nn.Module) -> nn.Module:
    """A deep copy with only stock modules, for TorchScript files and their sizes."""
    return use_fast_pooling(copy.deepcopy(module), fast=False)
