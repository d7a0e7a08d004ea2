"""Cross-layer equalization and its inverse (a planted outlier channel) on hand-made and demo models."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.ao.quantization as tq
from torch import nn

from aslquant import data
from aslquant.bias_correction import fake_quantize_weight
from aslquant.equalize import CLE_PAIRS, channel_ranges, equalize, rescale_channel
from aslquant.errors import InputError
from aslquant.labels import load_labels
from aslquant.model import FUSE_GROUPS, LAYER_NAMES, load_checkpoint
from aslquant.quantize import quantize
from aslquant.recipe import QuantRecipe
from aslquant.run import DEMO_CHECKPOINT, DEMO_DATA, DEMO_LABELS

PER_TENSOR = tq.MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)


def _two_layers() -> nn.Sequential:
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[4.0, 0.0], [0.0, 1.0]]))
        model[0].bias.copy_(torch.tensor([1.0, -2.0]))
        model[2].weight.copy_(torch.tensor([[1.0, 9.0]]))
        model[2].bias.fill_(0.5)
    return model


def test_two_layer_scales_by_hand():
    # r1 = [4, 1] (rows of W1), r2 = [1, 9] (columns of W2).
    # s_i = sqrt(r1_i / r2_i) = [2, 1/3]: row i of W1 and b1[i] divided by s_i, column i of W2
    # multiplied by s_i. W1' = [[2, 0], [0, 3]], b1' = [0.5, -6], W2' = [[2, 3]]: both
    # layers' channel ranges become sqrt(r1 * r2) = [2, 3].
    model = _two_layers()
    equalized, report = equalize(model, pairs=(("0", "2"),))
    assert equalized[0].weight.flatten().tolist() == pytest.approx([2.0, 0.0, 0.0, 3.0])
    assert equalized[0].bias.tolist() == pytest.approx([0.5, -6.0])
    assert equalized[2].weight.flatten().tolist() == pytest.approx([2.0, 3.0])
    assert float(equalized[2].bias) == 0.5
    (pair,) = report.pairs
    assert (pair.first_spread_before, pair.second_spread_before) == pytest.approx((4.0, 9.0))
    assert (pair.first_spread_after, pair.second_spread_after) == pytest.approx((1.5, 1.5))
    assert (pair.scale_min, pair.scale_max) == pytest.approx((1 / 3, 2.0))
    assert report.converged and report.rounds == 2  # the second pass moves nothing
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(equalized(x), model(x), atol=1e-6)
    assert model[0].weight.tolist() == [[4.0, 0.0], [0.0, 1.0]]  # input untouched


@pytest.fixture(scope="module")
def demo():
    names = load_labels(DEMO_LABELS)
    model = load_checkpoint(DEMO_CHECKPOINT, num_labels=len(names))
    image_set = data.load_image_set(DEMO_DATA, names)
    calib_items, eval_items = data.stratified_split(image_set.items, 16, len(names), seed=0)
    pp = data.Preprocess()
    calib = data.load_tensors(calib_items, pp).x
    evaluation = data.load_tensors(eval_items, pp).x
    equalized, report = equalize(model)
    return model, calib, evaluation, equalized, report


def _max_logit_change(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


@pytest.mark.slow
def test_cle_leaves_demo_logits_unchanged(demo):
    model, _, evaluation, equalized, report = demo
    noise = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    assert _max_logit_change(model, equalized, evaluation) <= 1e-4
    assert _max_logit_change(model, equalized, noise * 3) <= 1e-4
    assert report.converged
    assert [(p.first, p.second) for p in report.pairs] == list(CLE_PAIRS)
    for pair in report.pairs:
        # Converged: both sides of each pair share one set of ranges, sqrt(r1 * r2).
        assert pair.first_spread_after == pytest.approx(pair.second_spread_after, rel=1e-3)
        before = max(pair.first_spread_before, pair.second_spread_before)
        assert pair.first_spread_after < before
    # The input model is untouched and the weights really moved.
    fresh = load_checkpoint(DEMO_CHECKPOINT)
    for key, value in model.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[key])
    assert not torch.equal(equalized.conv1.weight, model.conv1.weight)


@pytest.mark.slow
def test_rescale_channel_is_function_preserving_and_plants_an_outlier(demo):
    model, _, evaluation, _, _ = demo
    planted = rescale_channel(model, "conv2", 5, 50.0)
    assert _max_logit_change(model, planted, evaluation) <= 1e-4
    assert torch.equal(planted.conv2.weight[5], model.conv2.weight[5] * 50.0)
    assert torch.equal(planted.conv2.bias[5], model.conv2.bias[5] * 50.0)
    assert torch.equal(planted.conv3.weight[:, 5], model.conv3.weight[:, 5] / 50.0)
    assert torch.equal(planted.conv2.weight[4], model.conv2.weight[4])
    # conv4 -> fc1 goes through max-pool, average-pool and flatten.
    through_pools = rescale_channel(model, "conv4", 100, 30.0)
    assert _max_logit_change(model, through_pools, evaluation) <= 1e-4


def _weight_sqnr_db(weight: torch.Tensor) -> float:
    noise = (fake_quantize_weight(weight, PER_TENSOR) - weight).pow(2).sum()
    return float(10 * torch.log10(weight.pow(2).sum() / noise))


@pytest.mark.slow
def test_planted_outlier_ruins_per_tensor_weights_and_cle_repairs_them(demo):
    model, _, evaluation, _, _ = demo
    planted = rescale_channel(model, "conv2", 5, 50.0)
    repaired, _ = equalize(planted)
    original_db = _weight_sqnr_db(model.conv2.weight.detach())
    planted_db = _weight_sqnr_db(planted.conv2.weight.detach())
    repaired_db = _weight_sqnr_db(repaired.conv2.weight.detach())
    assert planted_db < original_db - 8.0  # measured: 37.4 dB -> 26.0 dB
    assert repaired_db > original_db - 1.5  # measured: 36.6 dB
    # The other channels are what suffers: their weights fall onto a handful of levels.
    rest = [c for c in range(planted.conv2.out_channels) if c != 5]
    step = float(channel_ranges(planted.conv2.weight, 0).max()) / 127.5
    rest_levels = planted.conv2.weight[rest].abs().amax() / step
    assert float(rest_levels) < 4
    assert _max_logit_change(model, repaired, evaluation) <= 1e-4


@pytest.mark.slow
def test_planted_outlier_costs_int8_agreement_and_cle_recovers_it(demo):
    model, calib, evaluation, _, _ = demo
    recipe = QuantRecipe(weight_observer="minmax", qscheme="symmetric")
    planted = rescale_channel(model, "conv2", 5, 50.0)
    with torch.no_grad():
        top1 = model(evaluation).argmax(1)

    def agreement(float_model: nn.Module) -> float:
        return float(
            (quantize(float_model, recipe, calib)(evaluation).argmax(1) == top1).float().mean()
        )

    baseline, broken = agreement(model), agreement(planted)
    repaired = agreement(equalize(planted)[0])
    assert broken < baseline - 0.1  # measured on these 29 images: 100% -> 75.9%
    assert repaired >= baseline - 0.05  # measured: 96.6% (1 image of 29)


def test_bad_input_is_refused(demo):
    model = demo[0]
    with pytest.raises(InputError, match="fc2"):
        rescale_channel(model, "fc2", 0, 2.0)
    for factor in (0.0, -2.0, math.nan, math.inf, "2", True):
        with pytest.raises(InputError, match="factor"):
            rescale_channel(model, "conv1", 0, factor)
    for channel in (-1, 16, 1.5):
        with pytest.raises(InputError, match="channel"):
            rescale_channel(model, "conv1", channel, 2.0)
    fused = tq.fuse_modules(copy.deepcopy(model), FUSE_GROUPS)
    with pytest.raises(InputError, match="before fusing"):
        equalize(fused)
    with pytest.raises(InputError, match="not a rescalable pair"):
        equalize(model, pairs=(("conv1", "conv3"),))
    with pytest.raises(InputError, match="no such layer"):
        equalize(model, pairs=(("conv1", "conv9"),))
    with pytest.raises(InputError, match="max_rounds"):
        equalize(model, max_rounds=0)
    assert set(LAYER_NAMES) == {name for pair in CLE_PAIRS for name in pair}
