"""Bias correction: hand-computed shifts, exact W_q, and the demo model's mean error removed."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.ao.quantization as tq
from torch import nn

from aslquant import data
from aslquant.bias_correction import correct_biases, fake_quantize_weight
from aslquant.errors import InputError
from aslquant.labels import load_labels
from aslquant.model import FUSE_GROUPS, LAYER_NAMES, load_checkpoint
from aslquant.qconfig import make_qconfig
from aslquant.quantize import quantize
from aslquant.recipe import QuantRecipe
from aslquant.run import DEMO_CHECKPOINT, DEMO_DATA, DEMO_LABELS

PER_TENSOR = tq.MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
PER_CHANNEL = tq.PerChannelMinMaxObserver.with_args(
    dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0
)


def test_linear_shift_by_hand():
    # W = [1.0, -0.3], per-tensor symmetric int8: scale = 1.0 / 127.5.
    #   1.0  -> 127.5  -> 127 (the top code)  W_q - W = -0.5 / 127.5
    #  -0.3  -> -38.25 -> -38                 W_q - W = +0.25 / 127.5
    # Inputs [1, 2] and [3, 4]: E[x] = [2, 3], so the expected output shift is
    #   (2 * -0.5 + 3 * 0.25) / 127.5 = -0.25 / 127.5, and the bias grows by 0.25 / 127.5.
    # (Compared to 1e-4 relative: 0.3 and the scale are float32 numbers.)
    model = nn.Sequential(nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -0.3]]))
        model[0].bias.fill_(0.5)
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    corrected, report = correct_biases(model, x, PER_TENSOR, layers=("0",))
    assert report.layers[0].shift[0] == pytest.approx(-0.25 / 127.5, rel=1e-4)
    assert float(corrected[0].bias) - 0.5 == pytest.approx(0.25 / 127.5, rel=1e-4)
    assert float(model[0].bias) == 0.5  # the input model is untouched
    w_q = fake_quantize_weight(model[0].weight, PER_TENSOR)
    assert torch.allclose(w_q, torch.tensor([[127 / 127.5, -38 / 127.5]]))
    # With W_q and the new bias the mean output equals the float mean output.
    float_mean = model(x).mean()
    quant_mean = (x @ w_q.T + corrected[0].bias).mean()
    assert float(quant_mean) == pytest.approx(float(float_mean), abs=1e-6)
    assert report.images == 2


def test_per_channel_conv_shift_by_hand():
    # Conv2d(1 -> 2, kernel 1x2) on 1x3 images, per-channel symmetric int8.
    # channel 0: [1.0, -0.3], scale 1/127.5:  W_q - W = [-0.5, +0.25] / 127.5
    # channel 1: [0.2, 0.05], scale 0.2/127.5: 0.2 -> 127 (top), 0.05 -> 31.875 -> 32:
    #            W_q - W = [-0.5 * 0.2, 0.125 * 0.2] / 127.5 = [-0.1, 0.025] / 127.5
    # Images [1, 2, 4] and [3, 4, 2]: E[x] = [2, 3, 3]; the two output positions see
    # (2, 3) and (3, 3), on average (2.5, 3). Shift = 2.5 * d0 + 3 * d1:
    #   channel 0: (2.5 * -0.5 + 3 * 0.25) / 127.5 = -0.5 / 127.5
    #   channel 1: (2.5 * -0.1 + 3 * 0.025) / 127.5 = -0.175 / 127.5
    conv = nn.Conv2d(1, 2, kernel_size=(1, 2))
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[1.0, -0.3]]], [[[0.2, 0.05]]]]))
        conv.bias.zero_()
    model = nn.Sequential(conv)
    x = torch.tensor([[[[1.0, 2.0, 4.0]]], [[[3.0, 4.0, 2.0]]]])
    corrected, report = correct_biases(model, x, PER_CHANNEL, layers=("0",))
    assert report.layers[0].shift == pytest.approx((-0.5 / 127.5, -0.175 / 127.5), rel=1e-4)
    assert corrected[0].bias.tolist() == pytest.approx([0.5 / 127.5, 0.175 / 127.5], rel=1e-4)


def test_layer_without_bias_gets_one():
    model = nn.Sequential(nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -0.3]]))
    corrected, _ = correct_biases(model, torch.tensor([[1.0, 2.0], [3.0, 4.0]]), PER_TENSOR, ("0",))
    assert float(corrected[0].bias) == pytest.approx(0.25 / 127.5, rel=1e-4)
    assert model[0].bias is None


@pytest.fixture(scope="module")
def demo():
    names = load_labels(DEMO_LABELS)
    model = load_checkpoint(DEMO_CHECKPOINT, num_labels=len(names))
    image_set = data.load_image_set(DEMO_DATA, names)
    calib_items, eval_items = data.stratified_split(image_set.items, 8, len(names), seed=0)
    pp = data.Preprocess()
    return model, data.load_tensors(calib_items, pp).x, data.load_tensors(eval_items, pp).x


@pytest.mark.parametrize(
    "weight_observer, qscheme",
    [("minmax", "symmetric"), ("minmax", "affine"), ("per-channel", "affine")],
)
@pytest.mark.slow
def test_quantized_weights_are_exactly_what_convert_stores(demo, weight_observer, qscheme):
    model, calib, _ = demo
    recipe = QuantRecipe(weight_observer=weight_observer, qscheme=qscheme, backend="fbgemm")
    quantized = quantize(model, recipe, calib[:2])
    factory = make_qconfig(recipe).weight
    for name in LAYER_NAMES:
        stored = getattr(quantized.module, name).weight().dequantize()
        assert torch.equal(fake_quantize_weight(getattr(model, name).weight, factory), stored)


def _layer_inputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}
    handles = [
        getattr(model, name).register_forward_pre_hook(
            lambda _m, inputs, name=name: seen.__setitem__(name, inputs[0].detach())
        )
        for name in LAYER_NAMES
    ]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return seen


def _channel_mean_error(layer, x, weight_q, bias) -> torch.Tensor:
    """Mean over images and positions of (W_q x + bias) - (W x + b), per output channel."""
    with torch.no_grad():
        reference = layer(x).double()
        if isinstance(layer, nn.Conv2d):
            quantized = layer._conv_forward(x, weight_q, bias).double()
            return (quantized - reference).mean(dim=(0, 2, 3))
        return (nn.functional.linear(x, weight_q, bias).double() - reference).mean(dim=0)


@pytest.mark.slow
def test_demo_mean_output_error_per_channel_vanishes(demo):
    model, calib, _ = demo
    corrected, report = correct_biases(model, calib, PER_TENSOR)
    assert [row.layer for row in report.layers] == list(LAYER_NAMES)
    inputs = _layer_inputs(model, calib)
    for name in LAYER_NAMES:
        layer = getattr(model, name)
        w_q = fake_quantize_weight(layer.weight, PER_TENSOR)
        before = _channel_mean_error(layer, inputs[name], w_q, layer.bias).abs().max()
        after = _channel_mean_error(layer, inputs[name], w_q, getattr(corrected, name).bias)
        assert float(before) > 1e-3, name  # per-tensor rounding does shift every layer
        assert float(after.abs().max()) < 1e-3 * float(before), name
        # Only the bias moved.
        assert torch.equal(getattr(corrected, name).weight, layer.weight)


def _weight_only(model: nn.Module, factory) -> nn.Module:
    work = copy.deepcopy(model)
    with torch.no_grad():
        for name in LAYER_NAMES:
            layer = getattr(work, name)
            layer.weight.copy_(fake_quantize_weight(layer.weight, factory))
    return work


@pytest.mark.slow
def test_bias_correction_brings_4bit_weights_closer_to_fp32(demo):
    model, calib, evaluation = demo
    four_bit = tq.MinMaxObserver.with_args(
        dtype=torch.qint8, qscheme=torch.per_tensor_symmetric, quant_min=-8, quant_max=7
    )
    corrected, _ = correct_biases(model, calib, four_bit)
    with torch.no_grad():
        reference = model(evaluation)
        plain = _weight_only(model, four_bit)(evaluation)
        fixed = _weight_only(corrected, four_bit)(evaluation)
    error_plain = float((plain - reference).pow(2).mean())
    error_fixed = float((fixed - reference).pow(2).mean())
    assert error_fixed < 0.7 * error_plain
    top1 = reference.argmax(1)
    assert (fixed.argmax(1) == top1).sum() >= (plain.argmax(1) == top1).sum()


def test_bad_input_is_refused(demo):
    model, calib, _ = demo
    with pytest.raises(InputError, match="no such layer"):
        correct_biases(model, calib[:1], PER_TENSOR, layers=("conv9",))
    with pytest.raises(InputError, match="layers"):
        correct_biases(model, calib[:1], PER_TENSOR, layers=())
    with pytest.raises(InputError, match="calibration"):
        correct_biases(model, calib[:0], PER_TENSOR)
    with pytest.raises(InputError, match="calibration"):
        correct_biases(model, calib[:1].to(torch.uint8), PER_TENSOR)
    fused = tq.fuse_modules(copy.deepcopy(model), FUSE_GROUPS)
    with pytest.raises(InputError, match="before fusing"):
        correct_biases(fused, calib[:1], PER_TENSOR)
    with pytest.raises(InputError, match="not a torch observer"):
        correct_biases(model, calib[:1], lambda: nn.Identity())
    float_qparams = tq.PerChannelMinMaxObserver.with_args(
        dtype=torch.quint8, qscheme=torch.per_channel_affine_float_qparams
    )
    with pytest.raises(InputError, match="qscheme"):
        correct_biases(model, calib[:1], float_qparams)
