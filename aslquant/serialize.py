"""A compact, lossless file format for (quantized) state_dicts: the sizes the product reports.

Why it exists: "FP32 size / INT8 size" used to be measured as ``torch.save(state_dict)`` bytes,
1,116,031 B for the demo FP32 model against 299,505 B for static INT8 on x86, a ratio of 3.73.
The weights alone allow about 3.95 (277,424 INT8 weight bytes plus 525 FP32 biases and
per-channel scales); the rest is the container, not the model. ``torch.save`` writes every
tensor as its own zip record (64-byte aligned, with a local header and a central-directory
entry), stores per-channel weight scales as float64 and zero points as int64, and gives every
scalar ``scale`` / ``zero_point`` its own record.

The packed format is a flat dict that ``torch.load(..., weights_only=True)`` reads:

* ``"blob.uint8"``: every int8/uint8 payload (quantized weight codes via ``int_repr()``, int8
  viewed as uint8) concatenated into ONE tensor;
* ``"blob.float32"``: every float32 payload (float weights, biases, scalar scales, per-channel
  scales) in ONE tensor; any other dtype gets one ``"blob.<dtype>"`` tensor of its own;
* ``"index"``: one entry per state_dict key with its kind, dtype, shape, blob and offset, and
  for quantized tensors the qscheme, axis, scale(s) and zero point(s). Per-channel scales are
  stored as float32 when that is exact (observers compute them in float32), else as float64;
  per-channel zero points that are all zero are not stored at all;
* ``"metadata"``: the state_dict's ``_metadata`` (module versions). It is not optional:
  quantized Linear layers load a different set of keys depending on their version.

It is lossless: ``unpack_state_dict(pack_state_dict(sd))`` gives bit-identical tensors (same
integer codes, scales, zero points, axis, dtype and qscheme), Parameters come back as
Parameters, and ``load_state_dict`` reproduces the model's outputs exactly. The FP32 model is
measured with the same format (``packed_size``), so the ratio compares models, not containers.

Files are read with ``weights_only=True`` and dtypes/qschemes are looked up by name in fixed
tables: nothing from a file is ever executed. Anything malformed raises ``InputError``.
"""

from __future__ import annotations

import io
import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aslquant.errors import InputError, read_input_file
from aslquant.model import MAX_CHECKPOINT_BYTES, check_torch_archive

FORMAT = "aslquant.packed-state-dict"
VERSION = 1
_BLOB_PREFIX = "blob."

#: dtype names (as written in the index) -> dtypes. A fixed table: names are never evaluated.
_DTYPES: dict[str, torch.dtype] = {
    name: value for name in dir(torch) if isinstance(value := getattr(torch, name), torch.dtype)
}
_DTYPE_NAMES: dict[torch.dtype, str] = {}
for _name, _dtype in sorted(_DTYPES.items()):
    _DTYPE_NAMES.setdefault(_dtype, str(_dtype).removeprefix("torch."))

_QSCHEMES: dict[str, torch.qscheme] = {
    "per_tensor_affine": torch.per_tensor_affine,
    "per_channel_affine": torch.per_channel_affine,
    "per_channel_affine_float_qparams": torch.per_channel_affine_float_qparams,
}
_PER_TENSOR = ("per_tensor_affine",)

#: Quantized dtype -> dtype of its integer codes (``int_repr()``).
_CODES: dict[torch.dtype, torch.dtype] = {
    torch.qint8: torch.int8,
    torch.quint8: torch.uint8,
    torch.qint32: torch.int32,
}

#: Dtypes stored in another dtype's blob, and how: int8 codes are viewed as uint8 bytes;
#: float64 scales are narrowed to float32 only when the round trip is exact.
_VIEWED = {torch.int8: torch.uint8}
_WIDENED = {(torch.float32, torch.float64)}


class _Malformed(Exception):
    """A packed dict that does not follow the format; turned into InputError with a label."""


def _name(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES[dtype]


# --- packing --------------------------------------------------------------------------------


class _Packer:
    """Collects 1-D payloads per blob dtype and hands out offsets."""

    def __init__(self) -> None:
        self.parts: dict[torch.dtype, list[torch.Tensor]] = {}
        self.sizes: dict[torch.dtype, int] = {}

    def put(self, flat: torch.Tensor, dtype: torch.dtype | None = None) -> dict[str, Any]:
        """Store ``flat`` (already in its blob dtype); the spec says it stands for ``dtype``."""
        blob = flat.dtype
        offset = self.sizes.get(blob, 0)
        self.parts.setdefault(blob, []).append(flat)
        self.sizes[blob] = offset + flat.numel()
        return {"dtype": _name(dtype or blob), "blob": _name(blob), "offset": offset}

    def tensor(self, t: torch.Tensor) -> dict[str, Any]:
        flat = t.detach().cpu().contiguous().reshape(-1)
        stored = _VIEWED.get(flat.dtype)
        spec = {"kind": "tensor", "shape": list(t.shape)}
        spec.update(self.put(flat.view(stored) if stored else flat, t.dtype))
        return spec

    def scales(self, s: torch.Tensor) -> dict[str, Any]:
        """Per-channel scales: float32 when exactly representable, else as they are."""
        s = s.detach().cpu().contiguous()
        if s.dtype == torch.float64:
            narrow = s.float()
            if torch.equal(narrow.double(), s):
                spec = {"kind": "tensor", "shape": list(s.shape)}
                spec.update(self.put(narrow.reshape(-1), torch.float64))
                return spec
        return self.tensor(s)

    def blobs(self) -> dict[str, torch.Tensor]:
        return {
            _BLOB_PREFIX + _name(dtype): torch.cat(parts) if len(parts) > 1 else parts[0].clone()
            for dtype, parts in self.parts.items()
        }


def _encode_quantized(packer: _Packer, key: str, q: torch.Tensor) -> dict[str, Any]:
    if q.dtype not in _CODES:
        raise ValueError(f"{key}: quantized dtype {q.dtype} is not supported by the packed format")
    qscheme = str(q.qscheme()).removeprefix("torch.")
    if qscheme not in _QSCHEMES:
        raise ValueError(f"{key}: qscheme {qscheme} is not supported by the packed format")
    spec = packer.tensor(q.int_repr())
    spec.update(kind="qtensor", dtype=_name(q.dtype), qscheme=qscheme)
    if qscheme in _PER_TENSOR:
        # q_scale() is the quantizer's own double and q_zero_point() its int: exact in pickle.
        spec.update(scale=float(q.q_scale()), zero_point=int(q.q_zero_point()))
        return spec
    zero_points = q.q_per_channel_zero_points()
    spec.update(axis=int(q.q_per_channel_axis()), scales=packer.scales(q.q_per_channel_scales()))
    if not zero_points.is_floating_point() and not bool(zero_points.any()):
        spec["zero_points"] = {
            "kind": "zeros",
            "dtype": _name(zero_points.dtype),
            "shape": list(zero_points.shape),
        }
    else:
        spec["zero_points"] = packer.tensor(zero_points)
    return spec


def _encode(packer: _Packer, key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, torch.Tensor):
        if value.layout != torch.strided or value.is_nested:
            raise ValueError(f"{key}: only dense tensors can be packed (got {value.layout})")
        if value.is_quantized:
            spec = _encode_quantized(packer, key, value)
        else:
            if value.dtype not in _DTYPE_NAMES:
                raise ValueError(f"{key}: dtype {value.dtype} cannot be packed")
            spec = packer.tensor(value)
        if isinstance(value, nn.Parameter):
            spec["parameter"] = bool(value.requires_grad)
        return spec
    if value is None:
        return {"kind": "none"}
    if isinstance(value, torch.dtype):
        return {"kind": "dtype", "value": _name(value)}
    if isinstance(value, tuple | list):
        items = [_encode(packer, f"{key}[{i}]", item) for i, item in enumerate(value)]
        return {"kind": type(value).__name__, "items": items}
    if isinstance(value, bool | int | float | str):
        return {"kind": "value", "value": value}
    raise ValueError(f"{key}: a {type(value).__name__} cannot be packed")


def pack_state_dict(state: dict) -> dict:
    """The packed form of ``state``: plain tensors and values that weights_only loading accepts.

    Raises ``ValueError`` for an entry the format cannot hold losslessly (say, a sparse tensor
    or a 4-bit quantized one) rather than store it approximately.
    """
    packer = _Packer()
    index = []
    for key, value in state.items():
        entry = {"name": str(key)}
        entry.update(_encode(packer, str(key), value))
        index.append(entry)
    packed: dict[str, Any] = {"format": FORMAT, "version": VERSION, "index": index}
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:
        packed["metadata"] = {str(k): dict(v) for k, v in metadata.items()}
    packed.update(packer.blobs())
    return packed


# --- unpacking ------------------------------------------------------------------------------


def _need(condition: bool, message: str) -> None:
    if not condition:
        raise _Malformed(message)


def _get(spec: Any, field: str, kind: type | tuple[type, ...], where: str) -> Any:
    _need(isinstance(spec, dict), f"{where} is not a dict")
    _need(field in spec, f"{where} has no {field!r}")
    value = spec[field]
    _need(
        isinstance(value, kind) and not (isinstance(value, bool) and bool not in _as_tuple(kind)),
        f"{where}: {field!r} has the wrong type ({type(value).__name__})",
    )
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _dtype(name: Any, where: str) -> torch.dtype:
    _need(isinstance(name, str) and name in _DTYPES, f"{where}: unknown dtype {name!r}")
    return _DTYPES[name]


def _shape(spec: dict, where: str) -> list[int]:
    shape = _get(spec, "shape", list, where)
    _need(
        all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape),
        f"{where}: shape {shape!r} is not a list of sizes",
    )
    return shape


def _decode_tensor(spec: dict, blobs: dict[str, torch.Tensor], where: str) -> torch.Tensor:
    dtype = _dtype(_get(spec, "dtype", str, where), where)
    blob_name = _get(spec, "blob", str, where)
    blob_dtype = _dtype(blob_name, where)
    shape = _shape(spec, where)
    offset = _get(spec, "offset", int, where)
    blob = blobs.get(blob_name)
    _need(blob is not None, f"{where}: blob {blob_name!r} is missing")
    numel = math.prod(shape)
    _need(
        0 <= offset and offset + numel <= blob.numel(),
        f"{where}: offset {offset} + {numel} values is outside blob {blob_name!r} "
        f"({blob.numel()} values)",
    )
    flat = blob[offset : offset + numel]
    if dtype == blob_dtype:
        out = flat.clone()
    elif _VIEWED.get(dtype) == blob_dtype:
        out = flat.view(dtype).clone()
    elif (blob_dtype, dtype) in _WIDENED:
        out = flat.to(dtype)
    else:
        raise _Malformed(f"{where}: a {dtype} tensor cannot be stored in blob {blob_name!r}")
    return out.reshape(shape)


def _decode_quantized(spec: dict, blobs: dict[str, torch.Tensor], where: str) -> torch.Tensor:
    qdtype = _dtype(_get(spec, "dtype", str, where), where)
    _need(qdtype in _CODES, f"{where}: {qdtype} is not a supported quantized dtype")
    qscheme_name = _get(spec, "qscheme", str, where)
    _need(qscheme_name in _QSCHEMES, f"{where}: unknown qscheme {qscheme_name!r}")
    codes = _decode_tensor({**spec, "dtype": _name(_CODES[qdtype])}, blobs, where)
    if qscheme_name in _PER_TENSOR:
        scale = _get(spec, "scale", (float, int), where)
        zero_point = _get(spec, "zero_point", int, where)
        q = torch._make_per_tensor_quantized_tensor(codes, float(scale), zero_point)
    else:
        axis = _get(spec, "axis", int, where)
        _need(0 <= axis < max(1, codes.dim()), f"{where}: axis {axis} out of range")
        scales = _decode_tensor(_get(spec, "scales", dict, where), blobs, f"{where} scales")
        zp_spec = _get(spec, "zero_points", dict, where)
        if zp_spec.get("kind") == "zeros":
            zp_dtype = _dtype(_get(zp_spec, "dtype", str, where), f"{where} zero points")
            zero_points = torch.zeros(_shape(zp_spec, f"{where} zero points"), dtype=zp_dtype)
        else:
            zero_points = _decode_tensor(zp_spec, blobs, f"{where} zero points")
        q = torch._make_per_channel_quantized_tensor(codes, scales, zero_points, axis)
    _need(q.dtype == qdtype, f"{where}: codes do not make a {qdtype} tensor")
    _need(
        str(q.qscheme()).removeprefix("torch.") == qscheme_name,
        f"{where}: quantization parameters do not make a {qscheme_name} tensor",
    )
    return q


def _decode(spec: Any, blobs: dict[str, torch.Tensor], where: str) -> Any:
    kind = _get(spec, "kind", str, where)
    if kind in ("tensor", "qtensor"):
        if kind == "tensor":
            value = _decode_tensor(spec, blobs, where)
        else:
            value = _decode_quantized(spec, blobs, where)
        if "parameter" in spec:
            requires_grad = _get(spec, "parameter", bool, where)
            value = nn.Parameter(value, requires_grad=requires_grad and value.is_floating_point())
        return value
    if kind == "none":
        return None
    if kind == "dtype":
        return _dtype(_get(spec, "value", str, where), where)
    if kind in ("tuple", "list"):
        items = _get(spec, "items", list, where)
        decoded = [_decode(item, blobs, f"{where}[{i}]") for i, item in enumerate(items)]
        return tuple(decoded) if kind == "tuple" else decoded
    if kind == "value":
        value = _get(spec, "value", (bool, int, float, str), where)
        return value
    raise _Malformed(f"{where}: unknown entry kind {kind!r}")


def _unpack(packed: Any, label: str) -> OrderedDict:
    try:
        _need(isinstance(packed, dict), f"expected a dict, got {type(packed).__name__}")
        _need(packed.get("format") == FORMAT, "not an aslquant packed state_dict (no format tag)")
        _need(
            packed.get("version") == VERSION,
            f"format version {packed.get('version')!r} is not supported (expected {VERSION})",
        )
        index = _get(packed, "index", list, "the packed dict")
        blobs = {}
        for key, value in packed.items():
            if isinstance(key, str) and key.startswith(_BLOB_PREFIX):
                _need(
                    isinstance(value, torch.Tensor)
                    and not value.is_nested
                    and value.layout == torch.strided
                    and value.device.type == "cpu"
                    and value.dim() == 1
                    and not value.is_quantized
                    and value.dtype == _DTYPES.get(key[len(_BLOB_PREFIX) :]),
                    f"{key} is not a dense 1-D CPU tensor of that dtype",
                )
                blobs[key[len(_BLOB_PREFIX) :]] = value
        state: OrderedDict = OrderedDict()
        for i, entry in enumerate(index):
            name = _get(entry, "name", str, f"index entry {i}")
            _need(name not in state, f"entry {name!r} appears twice")
            state[name] = _decode(entry, blobs, f"entry {name!r}")
        metadata = packed.get("metadata")
        if metadata is not None:
            _need(
                isinstance(metadata, dict) and all(isinstance(v, dict) for v in metadata.values()),
                "metadata is not a dict of dicts",
            )
            state._metadata = OrderedDict((k, dict(v)) for k, v in metadata.items())  # type: ignore[attr-defined]
        return state
    except _Malformed as err:
        raise InputError(f"{label}: malformed packed state_dict: {err}") from None
    except (RuntimeError, ValueError, TypeError, IndexError, KeyError, OverflowError) as err:
        # torch rejecting qparams (zero point out of range, shape mismatch, ...).
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise InputError(f"{label}: malformed packed state_dict: {first[:160]}") from None


def unpack_state_dict(packed: dict) -> OrderedDict:
    """The exact inverse of ``pack_state_dict``; ``InputError`` if ``packed`` is malformed."""
    return _unpack(packed, "packed state_dict")


# --- bytes and files ------------------------------------------------------------------------


def _state_of(state_or_module: dict | nn.Module) -> dict:
    if isinstance(state_or_module, nn.Module):
        return state_or_module.state_dict()
    return state_or_module


def packed_bytes(state_or_module: dict | nn.Module) -> bytes:
    """``torch.save`` of the packed state_dict, as bytes."""
    buffer = io.BytesIO()
    torch.save(pack_state_dict(_state_of(state_or_module)), buffer)
    return buffer.getvalue()


def packed_size(state_or_module: dict | nn.Module) -> int:
    """Bytes of the packed file: the size this tool reports for a model."""
    return len(packed_bytes(state_or_module))


def save_packed(state_or_module: dict | nn.Module, path: str | Path) -> Path:
    """Write the packed file for a module (or a state_dict) to ``path``."""
    path = Path(path)
    path.write_bytes(packed_bytes(state_or_module))
    return path


def load_packed(path: str | Path) -> dict:
    """Read and check a packed file (``weights_only=True``); returns the packed dict.

    Pass the result to ``unpack_state_dict``. Anything that is not a well-formed packed file
    raises ``InputError`` with one line naming the file and what is wrong.
    """
    label = str(path)

    def check_head(head: bytes) -> None:
        if not head.startswith(b"PK\x03\x04"):
            raise InputError(f"{label}: not a packed state_dict (not a torch.save zip archive)")

    # The checkpoint loader's bounds: size cap before reading, zip directory before torch.load.
    data = read_input_file(
        path, "packed state_dict", label, max_bytes=MAX_CHECKPOINT_BYTES, check_head=check_head
    )
    check_torch_archive(data, label)
    try:
        packed = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except RecursionError:
        raise InputError(f"{label}: unreadable (containers nested too deeply)") from None
    except Exception as err:  # torch raises many types here; all mean "not a safe packed file"
        text = str(err)
        if "Weights only load failed" in text or "Unsupported global" in text:
            raise InputError(
                f"{label}: refusing to load: it contains Python objects, not only tensors "
                "and plain values"
            ) from None
        first = (text.strip().splitlines() or [type(err).__name__])[0]
        raise InputError(f"{label}: unreadable or truncated ({first[:160]})") from None
    _unpack(packed, label)  # every entry decodes, or InputError names what does not
    return packed
