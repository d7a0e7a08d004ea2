"""The packed state_dict format: lossless round trips, the reported size ratio, hostile files."""

from __future__ import annotations

import io
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

from aslquant import data
from aslquant.engine_lock import engine_session
from aslquant.errors import InputError
from aslquant.labels import load_labels
from aslquant.measure import serialized_size
from aslquant.model import CustomCNN, load_checkpoint
from aslquant.quantize import QuantizedModel, quantize
from aslquant.recipe import QuantRecipe
from aslquant.serialize import (
    load_packed,
    pack_state_dict,
    packed_bytes,
    packed_size,
    save_packed,
    unpack_state_dict,
)

DEMO = Path(__file__).resolve().parents[1] / "sample_data"

RECIPES = {
    "static-x86": QuantRecipe(method="static", backend="x86"),
    "static-fbgemm-per-tensor-affine": QuantRecipe(
        method="static", backend="fbgemm", weight_observer="minmax", qscheme="affine"
    ),
    "fx-x86": QuantRecipe(method="fx", backend="x86"),
    "dynamic-x86": QuantRecipe(method="dynamic", backend="x86"),
    "fp16": QuantRecipe(method="fp16"),
}


@pytest.fixture(scope="module")
def demo():
    """The demo model, 16 real calibration images and 29 real evaluation images."""
    names = load_labels(DEMO / "lb.pkl")
    model = load_checkpoint(DEMO / "model.pth", num_labels=len(names))
    image_set = data.load_image_set(DEMO / "images", names)
    calib_items, eval_items = data.stratified_split(image_set.items, 16, len(names), seed=0)
    pp = data.Preprocess()
    return model, data.load_tensors(calib_items, pp).x, data.load_tensors(eval_items, pp).x


@pytest.fixture(scope="module")
def skeleton_model():
    """Same architecture, different weights: a skeleton made from it differs everywhere."""
    torch.manual_seed(1)
    return CustomCNN(29).eval()


@pytest.fixture(scope="module")
def quantized(demo):
    """quantize() results by recipe name, made once per module."""
    cache: dict[str, QuantizedModel] = {}

    def get(name: str) -> QuantizedModel:
        if name not in cache:
            model, calib, _ = demo
            cache[name] = quantize(model, RECIPES[name], calib)
        return cache[name]

    return get


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def _assert_same_tensor(a: torch.Tensor, b: torch.Tensor, where: str) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape, where
    assert a.is_quantized == b.is_quantized, where
    if not a.is_quantized:
        assert torch.equal(_bits(a), _bits(b)), where
        return
    assert a.qscheme() == b.qscheme(), where
    assert torch.equal(a.int_repr(), b.int_repr()), where
    if a.qscheme() == torch.per_tensor_affine:
        assert (a.q_scale(), a.q_zero_point()) == (b.q_scale(), b.q_zero_point()), where
    else:
        assert a.q_per_channel_axis() == b.q_per_channel_axis(), where
        _assert_same_tensor(a.q_per_channel_scales(), b.q_per_channel_scales(), where)
        _assert_same_tensor(a.q_per_channel_zero_points(), b.q_per_channel_zero_points(), where)


def _assert_same_value(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert isinstance(a, nn.Parameter) == isinstance(b, nn.Parameter), where
        _assert_same_tensor(a, b, where)
    elif isinstance(a, tuple | list):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_value(x, y, f"{where}[{i}]")
    else:
        assert type(a) is type(b) and a == b, where


def _assert_same_state(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for key in a:
        _assert_same_value(a[key], b[key], key)
    assert dict(getattr(a, "_metadata", {})) == dict(getattr(b, "_metadata", {}))


def _round_trip_file(module: nn.Module, tmp_path: Path) -> dict:
    path = save_packed(module, tmp_path / "model.packed")
    assert path.stat().st_size == packed_size(module)
    return unpack_state_dict(load_packed(path))


@pytest.mark.slow
def test_fp32_round_trip_is_exact(demo, skeleton_model, tmp_path):
    model, _, images = demo
    state = _round_trip_file(model, tmp_path)
    _assert_same_state(model.state_dict(), state)
    skeleton = CustomCNN(29).eval()
    skeleton.load_state_dict(skeleton_model.state_dict())
    with torch.inference_mode():
        expected = model(images)
        assert not torch.equal(skeleton(images), expected)  # the check below can fail
    skeleton.load_state_dict(state)
    with torch.inference_mode():
        assert torch.equal(skeleton(images), expected)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RECIPES))
def test_quantized_round_trip_reproduces_outputs(name, demo, skeleton_model, quantized, tmp_path):
    _, _, images = demo
    original = quantized(name)
    state = _round_trip_file(original.module, tmp_path)
    _assert_same_state(original.module.state_dict(), state)

    # The skeleton: same recipe, other weights and other calibration data, so every weight
    # and qparam differs before loading.
    other_calib = torch.rand(8, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    skeleton = quantize(skeleton_model, RECIPES[name], other_calib)
    expected = original(images)
    assert not torch.equal(skeleton(images), expected)
    with engine_session(skeleton.backend):  # quantized weights are repacked for this engine
        skeleton.module.load_state_dict(state)
    assert torch.equal(skeleton(images), expected)


def test_packed_int8_is_at_least_3_8x_smaller_than_fp32(demo, quantized):
    model, _, _ = demo
    int8 = quantized("static-x86").module
    fp32_packed, int8_packed = packed_size(model), packed_size(int8)
    ratio = fp32_packed / int8_packed
    print(
        f"\nFP32 packed {fp32_packed:,} B, INT8 packed {int8_packed:,} B, ratio {ratio:.3f}x; "
        f"torch.save(state_dict): FP32 {serialized_size(model):,} B, "
        f"INT8 {serialized_size(int8):,} B, ratio {serialized_size(model) / serialized_size(int8):.3f}x"
    )
    assert ratio >= 3.8
    # One uint8 blob holds every weight code, one float32 blob every float payload.
    packed = pack_state_dict(int8.state_dict())
    blobs = {k: v for k, v in packed.items() if k.startswith("blob.")}
    assert set(blobs) == {"blob.uint8", "blob.float32", "blob.int64"}
    assert blobs["blob.uint8"].numel() == 277_424


def test_unusual_entries_round_trip_bit_exactly():
    """Fallback paths the demo recipes do not reach: each must stay lossless."""
    w = torch.randn(4, 6)
    inexact_scales = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)  # not float32
    exact_scales = inexact_scales.float().double()
    state = OrderedDict(
        {
            "pc_quint8_zp": torch.quantize_per_channel(
                w, exact_scales, torch.tensor([0, 3, 7, 255]), 0, torch.quint8
            ),
            "pc_inexact_axis1": torch.quantize_per_channel(
                w.t(), inexact_scales, torch.zeros(4, dtype=torch.int64), 1, torch.qint8
            ),
            "pc_float_qparams": torch.quantize_per_channel(
                w, exact_scales.float(), torch.tensor([0.0, 1.5, -2.0, 3.0]), 0, torch.quint8
            ),
            "pt_qint32": torch.quantize_per_tensor(w, 0.1, 5, torch.qint32),
            "special_floats": torch.tensor([float("nan"), -0.0, float("inf"), 1e-45]),
            "half": torch.randn(3).half(),
            "double": torch.randn(2, dtype=torch.float64),
            "bool": torch.tensor([True, False]),
            "int_scalar": torch.tensor(7),
            "empty": torch.zeros(0, 5),
            "strided": torch.arange(12.0).reshape(3, 4).t(),
            "param": nn.Parameter(torch.randn(2)),
            "frozen": nn.Parameter(torch.randn(2), requires_grad=False),
            "x._packed_params.dtype": torch.qint8,
            "x._packed_params._packed_params": (
                torch.quantize_per_tensor(w, 0.05, 0, torch.qint8),
                None,
            ),
            "none": None,
            "plain": [1, 2.5, "three", True],
        }
    )
    state._metadata = OrderedDict({"": {"version": 1}, "x": {"version": 3}})
    packed = pack_state_dict(state)
    scales = [e["scales"] for e in packed["index"] if "scales" in e]
    assert [s["blob"] for s in scales] == ["float32", "float64", "float32"]
    restored = unpack_state_dict(torch.load(_as_buffer(packed), weights_only=True))
    _assert_same_state(state, restored)
    assert restored["param"].requires_grad and not restored["frozen"].requires_grad


def _as_buffer(obj) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer


class _OpensAFile:
    """Unpickling this would call open(marker, "w"): proof of code execution if it ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _one_line_error(path: Path) -> str:
    with pytest.raises(InputError) as info:
        load_packed(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_hostile_and_broken_files_raise_input_error(tmp_path):
    good = pack_state_dict(CustomCNN(3).state_dict())

    marker = tmp_path / "executed"
    evil = tmp_path / "evil.packed"
    torch.save({**good, "extra": _OpensAFile(marker)}, evil)
    assert "refusing" in _one_line_error(evil)
    assert not marker.exists()

    truncated = tmp_path / "truncated.packed"
    whole = packed_bytes(CustomCNN(3))
    truncated.write_bytes(whole[: len(whole) // 2])
    _one_line_error(truncated)

    text = tmp_path / "notes.packed"
    text.write_text("this is not a model\n")
    assert "not a packed state_dict" in _one_line_error(text)

    out_of_range = tmp_path / "offset.packed"
    bad = {**good, "index": [dict(e) for e in good["index"]]}
    bad["index"][-1]["offset"] = 10**9
    torch.save(bad, out_of_range)
    assert "outside blob" in _one_line_error(out_of_range)

    plain = tmp_path / "plain.pth"
    torch.save(CustomCNN(3).state_dict(), plain)
    assert "format tag" in _one_line_error(plain)

    _one_line_error(tmp_path / "missing.packed")
    with pytest.raises(InputError):
        unpack_state_dict({"format": "something else"})


def test_unpackable_entries_are_refused_not_approximated():
    with pytest.raises(ValueError, match="sparse"):
        pack_state_dict({"s": torch.eye(3).to_sparse()})
    with pytest.raises(ValueError, match="cannot be packed"):
        pack_state_dict({"f": print})
