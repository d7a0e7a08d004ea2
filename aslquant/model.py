"""The quantization-ready CustomCNN and loading of user checkpoints.

The architecture is exactly the seed ASL recognizer's (conv1..conv4 with ReLU and 2x2
max-pool, adaptive average pool, fc1 + ReLU, fc2). The seed class used functional ReLU and
had no quant stubs; those modules carry no parameters, so the seed's ``state_dict`` keys
(``conv1.weight`` ... ``fc2.bias``) load into this class unchanged.
"""

from __future__ import annotations

import io
import math
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from aslquant.errors import InputError, read_input_file

#: The layers that hold weights, in forward order. Every per-layer table uses these names.
LAYER_NAMES: tuple[str, ...] = ("conv1", "conv2", "conv3", "conv4", "fc1", "fc2")

#: Parameter shapes the seed architecture implies, with ``None`` for the class count.
_EXPECTED_SHAPES: dict[str, tuple[int | None, ...]] = {
    "conv1.weight": (16, 3, 5, 5),
    "conv1.bias": (16,),
    "conv2.weight": (32, 16, 5, 5),
    "conv2.bias": (32,),
    "conv3.weight": (64, 32, 3, 3),
    "conv3.bias": (64,),
    "conv4.weight": (128, 64, 5, 5),
    "conv4.bias": (128,),
    "fc1.weight": (256, 128),
    "fc1.bias": (256,),
    "fc2.weight": (None, 256),
    "fc2.bias": (None,),
}

#: Smallest square input the network accepts: four (conv, 2x2 pool) stages without padding.
MIN_INPUT_SIZE = 68


class CustomCNN(nn.Module):
    """The seed CustomCNN with QuantStub/DeQuantStub and ReLU modules so eager fusion works."""

    def __init__(self, num_classes: int = 29) -> None:
        super().__init__()
        self.quant = torch.ao.quantization.QuantStub()
        self.conv1 = nn.Conv2d(3, 16, 5)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 32, 5)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(32, 64, 3)
        self.relu3 = nn.ReLU()
        self.conv4 = nn.Conv2d(64, 128, 5)
        self.relu4 = nn.ReLU()
        self.pool = nn.MaxPool2d(2, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(128, 256)
        self.relu5 = nn.ReLU()
        self.fc2 = nn.Linear(256, num_classes)
        self.dequant = torch.ao.quantization.DeQuantStub()

    @property
    def num_classes(self) -> int:
        return self.fc2.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quant(x)
        x = self.pool(self.relu1(self.conv1(x)))
        x = self.pool(self.relu2(self.conv2(x)))
        x = self.pool(self.relu3(self.conv3(x)))
        x = self.pool(self.relu4(self.conv4(x)))
        # flatten instead of reshape(bs, -1): same result, and it traces cleanly in FX/export.
        x = torch.flatten(self.avgpool(x), 1)
        x = self.relu5(self.fc1(x))
        x = self.fc2(x)
        return self.dequant(x)


#: Module groups fused for eager static/QAT quantization.
FUSE_GROUPS: list[list[str]] = [
    ["conv1", "relu1"],
    ["conv2", "relu2"],
    ["conv3", "relu3"],
    ["conv4", "relu4"],
    ["fc1", "relu5"],
]


def _unwrap(obj: object, source: str) -> dict[str, torch.Tensor]:
    """Find the state_dict inside what torch.load returned, or say why there is none."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if (
                isinstance(inner, dict)
                and inner
                and all(isinstance(v, torch.Tensor) for v in inner.values())
            ):
                obj = inner
                break
    if not isinstance(obj, dict) or not obj:
        kind = type(obj).__name__
        raise InputError(
            f"{source}: expected a state_dict (a dict of tensor names to tensors), got {kind}"
        )
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise InputError(
            f"{source}: expected a state_dict of tensors; entries {bad[:4]} are not tensors"
        )
    # DataParallel / DistributedDataParallel checkpoints prefix every key with "module.".
    if all(str(k).startswith("module.") for k in obj):
        obj = OrderedDict((str(k)[len("module.") :], v) for k, v in obj.items())
    return dict(obj)


def read_state_dict(source: str | Path | bytes, name: str | None = None) -> dict[str, torch.Tensor]:
    """Read a checkpoint with ``weights_only=True`` (no code from the file ever runs)."""
    label = name or (str(source) if not isinstance(source, bytes) else "checkpoint")
    data = source if isinstance(source, bytes) else read_input_file(source, "checkpoint", label)
    if not data:
        raise InputError(f"{label}: checkpoint file is empty")
    # torch.save writes a zip archive; very old torch versions wrote a bare pickle.
    if not (data.startswith(b"PK\x03\x04") or data.startswith(b"\x80")):
        raise InputError(
            f"{label}: not a PyTorch checkpoint (neither a torch.save zip nor a pickle)"
        )
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types here; all mean "not a safe state_dict"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "Weights only load failed" in str(err) or "Unsupported global" in str(err):
            hint = "it contains Python objects, not only tensors (a whole pickled model?); save model.state_dict() instead"
            raise InputError(f"{label}: refusing to load: {hint}") from None
        raise InputError(f"{label}: not a PyTorch checkpoint ({first[:160]})") from None
    return _unwrap(obj, label)


def validate_state_dict(state: dict[str, torch.Tensor], label: str = "checkpoint") -> int:
    """Check keys and shapes against the seed architecture; return the class count (from fc2)."""
    missing = [k for k in _EXPECTED_SHAPES if k not in state]
    unexpected = [k for k in state if k not in _EXPECTED_SHAPES]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {missing}")
        if unexpected:
            shown = unexpected[:8] + (["..."] if len(unexpected) > 8 else [])
            parts.append(f"unexpected {shown}")
        raise InputError(f"{label}: not a CustomCNN state_dict: " + "; ".join(parts))
    num_classes = int(state["fc2.weight"].shape[0])
    wrong = []
    for key, shape in _EXPECTED_SHAPES.items():
        want = tuple(num_classes if s is None else s for s in shape)
        got = tuple(state[key].shape)
        if got != want:
            wrong.append(f"{key} is {list(got)}, expected {list(want)}")
    if wrong:
        hint = ""
        if tuple(state["conv1.weight"].shape[1:2]) != (3,):
            hint = f" (conv1 takes {state['conv1.weight'].shape[1]} channel(s); this tool needs an RGB model)"
        raise InputError(f"{label}: wrong shapes: " + "; ".join(wrong) + hint)
    if num_classes < 2:
        raise InputError(f"{label}: fc2 has {num_classes} output; need at least 2 classes")
    for key, tensor in state.items():
        if not tensor.is_floating_point():
            raise InputError(f"{label}: {key} has dtype {tensor.dtype}; expected float weights")
        if not bool(torch.isfinite(tensor).all()):
            raise InputError(f"{label}: {key} contains NaN or Inf values")
    return num_classes


def load_checkpoint(
    source: str | Path | bytes,
    num_labels: int | None = None,
    name: str | None = None,
) -> CustomCNN:
    """Load a CustomCNN checkpoint into a float, eval-mode model, checked against the labels."""
    label = name or (str(source) if not isinstance(source, bytes) else "checkpoint")
    state = read_state_dict(source, label)
    num_classes = validate_state_dict(state, label)
    if num_labels is not None and num_labels != num_classes:
        raise InputError(
            f"{label}: fc2 has {num_classes} outputs but the labels file has {num_labels} classes"
        )
    model = CustomCNN(num_classes)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval()


def layer_table(model: CustomCNN, input_size: int = 224) -> list[dict]:
    """Per-layer model card: type, input/output shapes, parameters, MACs and FP32 bytes."""
    rows: list[dict] = []
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    hooks = []
    for name in LAYER_NAMES:
        module = getattr(model, name)

        def hook(mod, inp, out, name=name):
            shapes[name] = (tuple(inp[0].shape), tuple(out.shape))

        hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, input_size, input_size))
    finally:
        for h in hooks:
            h.remove()
    for name in LAYER_NAMES:
        module = getattr(model, name)
        in_shape, out_shape = shapes[name]
        params = sum(p.numel() for p in module.parameters())
        if isinstance(module, nn.Conv2d):
            k = math.prod(module.kernel_size) * module.in_channels // module.groups
            macs = k * math.prod(out_shape[1:])
        else:
            macs = module.in_features * module.out_features
        rows.append(
            {
                "name": name,
                "type": type(module).__name__,
                "input_shape": list(in_shape[1:]),
                "output_shape": list(out_shape[1:]),
                "params": params,
                "macs": int(macs),
                "fp32_bytes": params * 4,
            }
        )
    return rows
