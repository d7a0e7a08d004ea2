"""The quantization-ready CustomCNN and loading of user checkpoints.

The architecture is exactly the seed ASL recognizer's (conv1..conv4 with ReLU and 2x2
max-pool, adaptive average pool, fc1 + ReLU, fc2). The seed class used functional ReLU and
had no quant stubs; those modules carry no parameters, so the seed's ``state_dict`` keys
(``conv1.weight`` ... ``fc2.bias``) load into this class unchanged.
"""

from __future__ import annotations

import io
import math
import pickletools
import struct
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from aslquant.errors import HEAD_BYTES, InputError, read_input_file
from aslquant.labels import MAX_CLASSES
from aslquant.zipdir import read_directory

#: The layers that hold weights, in forward order. Every per-layer table uses these names.
LAYER_NAMES: tuple[str, ...] = ("conv1", "conv2", "conv3", "conv4", "fc1", "fc2")


def float_layer(model: nn.Module, name: str, technique: str, when: str) -> nn.Conv2d | nn.Linear:
    """``model``'s float conv or linear layer ``name``, for a technique that rewrites weights
    (``technique`` and ``when`` it must run name the refusal otherwise)."""
    try:
        layer = model.get_submodule(name)
    except AttributeError:
        raise InputError(f"layer {name!r}: the model has no such layer") from None
    if type(layer) not in (nn.Conv2d, nn.Linear):
        raise InputError(
            f"layer {name!r}: is {type(layer).__name__}; {technique} needs a float "
            f"nn.Conv2d or nn.Linear ({when} before fusing or quantizing)"
        )
    return layer


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


#: Largest checkpoint file read. A 10,000-class CustomCNN in float32 is about 11 MB; the cap
#: leaves room for float64 weights or an optimizer state saved alongside, and keeps the bytes
#: plus the tensors torch.load makes from them (about twice the file) well under 300 MB.
MAX_CHECKPOINT_BYTES = 64 * 1024 * 1024
#: Most records (files) in a torch.save zip: one per tensor storage plus six of bookkeeping.
MAX_CHECKPOINT_RECORDS = 4096
#: Largest central directory of a checkpoint zip (a record's entry is ~100 bytes).
MAX_CHECKPOINT_DIRECTORY_BYTES = 1024 * 1024
#: Largest pickle in a checkpoint (``data.pkl``, or a legacy file's pickles). It holds only
#: names and tensor headers (~150 bytes a tensor; the demo's is 1,342 bytes). torch reads it
#: with a pure-Python unpickler: 1 MiB is under a second and a few tens of MB at worst.
MAX_CHECKPOINT_PICKLE_BYTES = 1024 * 1024
#: Most bytes the tensors of a state_dict may span once loaded (numel x element size, summed):
#: a view that repeats one stored element (stride 0) cannot make a small file a huge tensor.
MAX_STATE_DICT_TENSOR_BYTES = MAX_CHECKPOINT_BYTES
#: Most classes a checkpoint may have (fc2 outputs); the same limit as a labels file.
MAX_CHECKPOINT_CLASSES = MAX_CLASSES
#: Tensor dtypes a state_dict may hold: plain float and integer types. float8, complex,
#: quantized, bool and the rest are refused by name.
ACCEPTED_DTYPES: frozenset[torch.dtype] = frozenset(
    {
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
        torch.int8,
        torch.uint8,
        torch.int16,
        torch.int32,
        torch.int64,
    }
)
#: A torch.save zip is "PK\x03\x04"; a legacy (torch < 1.6) checkpoint is a bare pickle.
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"
#: torch.save stores every record uncompressed (method 0); anything else could inflate.
_ZIP_STORED = 0
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # zip local file header (30 bytes)


def _check_checkpoint_head(head: bytes, label: str) -> None:
    if not (head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_MAGIC)):
        raise InputError(
            f"{label}: not a PyTorch checkpoint (neither a torch.save zip nor a pickle)"
        )


def check_torch_archive(data: bytes, label: str) -> None:
    """Refuse a torch.save zip that could make ``torch.load`` use more than the file's size.

    Checked from the central directory before torch reads anything: at most
    ``MAX_CHECKPOINT_RECORDS`` records, the end record exactly at the end of the file with no
    prefix or comment, every record stored (DEFLATE and other methods refused: torch's reader
    would inflate them to their declared size), declared sizes equal to stored sizes and
    summing to at most ``MAX_CHECKPOINT_BYTES``, every record's data inside the file, and the
    pickle at most ``MAX_CHECKPOINT_PICKLE_BYTES``.
    """
    fh = io.BytesIO(data)
    end, records = read_directory(
        fh,
        label,
        max_entries=MAX_CHECKPOINT_RECORDS,
        max_directory_bytes=MAX_CHECKPOINT_DIRECTORY_BYTES,
    )
    exact_end = end.comment_length == 0 and end.records_end == len(data)
    if end.prefix != 0 or not exact_end or end.entries != len(records):
        raise InputError(
            f"{label}: not a torch.save archive (data before or after the zip, or a directory "
            f"that disagrees with its end record)"
        )
    declared = 0
    for record in records:
        name = record.name
        if record.method != _ZIP_STORED:
            raise InputError(
                f"{label}: record {name!r} is compressed (zip method {record.method}, "
                f"{record.compressed_size} bytes declaring {record.size}); torch.save stores "
                "records uncompressed, and compressed ones are refused"
            )
        if record.compressed_size != record.size:
            raise InputError(
                f"{label}: record {name!r} declares {record.size} bytes but stores "
                f"{record.compressed_size}"
            )
        if record.flags & 0x1:
            raise InputError(f"{label}: record {name!r} is encrypted")
        declared += record.size
        if declared > MAX_CHECKPOINT_BYTES:
            raise InputError(
                f"{label}: records declare more than {MAX_CHECKPOINT_BYTES} bytes in total"
            )
        if (name == "data.pkl" or name.endswith("/data.pkl")) and (
            record.size > MAX_CHECKPOINT_PICKLE_BYTES
        ):
            raise InputError(
                f"{label}: its pickle {name!r} is {record.size} bytes; the limit is "
                f"{MAX_CHECKPOINT_PICKLE_BYTES} bytes (a state_dict's is a few kB)"
            )
        header = data[record.local_offset : record.local_offset + _LOCAL_HEADER.size]
        if len(header) != _LOCAL_HEADER.size or header[:4] != _ZIP_MAGIC:
            raise InputError(f"{label}: record {name!r} has no local header where listed")
        fields = _LOCAL_HEADER.unpack(header)
        data_start = record.local_offset + _LOCAL_HEADER.size + fields[9] + fields[10]
        if fields[3] != _ZIP_STORED or data_start + record.size > end.directory_start:
            raise InputError(f"{label}: record {name!r} lies outside the archive's data")


def _check_legacy_pickles(data: bytes, label: str) -> None:
    """Bound a legacy checkpoint's pickles (magic, version, sys info, object, storage keys)."""
    fh = io.BytesIO(data)
    try:
        for _ in range(5):
            for _op, _arg, pos in pickletools.genops(fh):
                if pos is not None and pos > MAX_CHECKPOINT_PICKLE_BYTES:
                    raise InputError(
                        f"{label}: its pickle is larger than {MAX_CHECKPOINT_PICKLE_BYTES} bytes "
                        "(a state_dict's is a few kB)"
                    )
            if fh.tell() >= len(data):
                break
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001  any malformed opcode means the same to a user
        detail = str(err).strip().splitlines()[0][:120] if str(err).strip() else ""
        raise InputError(
            f"{label}: not a PyTorch checkpoint (malformed pickle{': ' + detail if detail else ''})"
        ) from None


def _describe_unaccepted(tensor: torch.Tensor) -> str | None:
    """Why ``tensor`` is not a plain dense CPU float/int tensor, or None if it is."""
    if type(tensor) not in (torch.Tensor, nn.Parameter):
        return f"a {type(tensor).__name__} (a tensor subclass)"
    if tensor.is_nested:
        return "a nested tensor"
    if tensor.layout != torch.strided:
        return f"a {str(tensor.layout).removeprefix('torch.')} tensor (not dense)"
    if tensor.device.type != "cpu":
        return f"a {tensor.device.type} tensor"  # e.g. meta: shapes without data
    if tensor.dtype not in ACCEPTED_DTYPES:
        return f"a {str(tensor.dtype).removeprefix('torch.')} tensor"
    return None


def check_tensors(state: dict, label: str = "checkpoint") -> None:
    """Accept only str keys and plain dense CPU float/int tensors, within the size bound.

    Refuses with one line naming the key and its dtype or layout: float8, complex, quantized,
    bool, sparse (COO/CSR/CSC/BSR/BSC), nested, meta and tensor subclasses. The element bytes
    of all tensors together must stay under ``MAX_STATE_DICT_TENSOR_BYTES``.
    """
    total = 0
    for key, value in state.items():
        if not isinstance(key, str):
            raise InputError(f"{label}: a state_dict key is a {type(key).__name__}, not a name")
        if not isinstance(value, torch.Tensor):
            continue  # reported by the caller with the other non-tensor entries
        why = _describe_unaccepted(value)
        if why is not None:
            raise InputError(
                f"{label}: {key} is {why}; only plain dense float or integer tensors are accepted"
            )
        total += value.numel() * value.element_size()
        if total > MAX_STATE_DICT_TENSOR_BYTES:
            raise InputError(
                f"{label}: its tensors span more than {MAX_STATE_DICT_TENSOR_BYTES} bytes "
                f"once loaded (at {key}, shape {list(value.shape)})"
            )


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
    check_tensors(obj, source)
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise InputError(
            f"{source}: expected a state_dict of tensors; entries {bad[:4]} are not tensors"
        )
    # DataParallel / DistributedDataParallel checkpoints prefix every key with "module.".
    if all(k.startswith("module.") for k in obj):
        obj = OrderedDict((k[len("module.") :], v) for k, v in obj.items())
    return dict(obj)


def read_state_dict(source: str | Path | bytes, name: str | None = None) -> dict[str, torch.Tensor]:
    """Read a checkpoint with ``weights_only=True`` (no code from the file ever runs).

    Bounded before any work: the file is at most ``MAX_CHECKPOINT_BYTES`` (checked with
    ``fstat`` before reading) and starts like a torch.save zip or a pickle; a zip passes
    ``check_torch_archive`` and a legacy pickle ``MAX_CHECKPOINT_PICKLE_BYTES`` before
    ``torch.load``; what it returns passes ``check_tensors``.
    """
    label = name or (str(source) if not isinstance(source, bytes) else "checkpoint")

    def check_head(head: bytes) -> None:
        _check_checkpoint_head(head, label)

    if isinstance(source, bytes):
        data = source
        if not data:
            raise InputError(f"{label}: checkpoint file is empty")
        if len(data) > MAX_CHECKPOINT_BYTES:
            raise InputError(
                f"{label}: checkpoint file is {len(data)} bytes; "
                f"the limit is {MAX_CHECKPOINT_BYTES} bytes"
            )
        check_head(data[:HEAD_BYTES])
    else:
        data = read_input_file(
            source, "checkpoint", label, max_bytes=MAX_CHECKPOINT_BYTES, check_head=check_head
        )
    if data.startswith(_ZIP_MAGIC):
        check_torch_archive(data, label)
    else:
        _check_legacy_pickles(data, label)
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        return _unwrap(obj, label)
    except InputError:
        raise
    except RecursionError:
        raise InputError(
            f"{label}: not a usable checkpoint (containers nested too deeply)"
        ) from None
    except Exception as err:  # torch raises many types here; all mean "not a safe state_dict"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "Weights only load failed" in str(err) or "Unsupported global" in str(err):
            hint = "it contains Python objects, not only tensors (a whole pickled model?); save model.state_dict() instead"
            raise InputError(f"{label}: refusing to load: {hint}") from None
        raise InputError(f"{label}: not a PyTorch checkpoint ({first[:160]})") from None


def validate_state_dict(state: dict[str, torch.Tensor], label: str = "checkpoint") -> int:
    """Check keys and shapes against the seed architecture; return the class count (from fc2)."""
    check_tensors(state, label)
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
    if num_classes > MAX_CHECKPOINT_CLASSES:
        raise InputError(
            f"{label}: fc2 has {num_classes} outputs; at most {MAX_CHECKPOINT_CLASSES} classes "
            "are supported"
        )
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
