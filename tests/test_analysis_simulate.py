"""The simulator's building blocks without a run: points, grids and torch's fake quantization,
and (slow) a whole pt2e run whose Layers rows come from its converted graph."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.ao.quantization as tq

from aslquant import analysis, methods
from aslquant.analysis import fakequant, simulate
from aslquant.data import Preprocess
from aslquant.model import LAYER_NAMES
from aslquant.run import execute
from tests.test_analysis import demo_config


def test_points_are_the_input_then_each_layers_weight_and_output():
    assert analysis.POINTS[0] == "input" and len(analysis.POINTS) == 2 + 2 * len(LAYER_NAMES)
    assert analysis.POINTS[1:3] == ("conv1.weight", "conv1.output")
    # The average pool's own point sits between conv4's output and fc1's weights.
    assert analysis.POINTS[8:11] == ("conv4.output", "avgpool.output", "fc1.weight")
    assert simulate.point_layer_kind("input") == (None, "input")
    assert simulate.point_layer_kind("fc1.weight") == ("fc1", "weight")
    assert simulate.point_layer_kind("fc1.output") == ("fc1", "activation")


@pytest.mark.parametrize(
    "keep, absent",
    [
        ((), ()),
        (("conv1",), ("input", "conv1.weight")),  # conv2's stub quantizes conv1's output
        (("conv2",), ("conv2.weight",)),
        (("fc2",), ("fc2.weight", "fc2.output")),
        # Across the average pool, fc1 quantizes its input after the pool, not conv4's output.
        (("conv3", "conv4"), ("conv3.weight", "conv3.output", "conv4.weight", "conv4.output")),
        (("conv4", "fc1"), ("conv4.weight", "conv4.output", "avgpool.output", "fc1.weight")),
        (("fc1",), ("fc1.weight",)),  # conv4 quantized: its pool output is still rounded
        (LAYER_NAMES, analysis.POINTS),
    ],
)
def test_static_points_follow_true_fp32_islands(keep, absent):
    points = simulate.static_points(keep)
    assert points == tuple(p for p in analysis.POINTS if p not in absent)


def test_qparams_reproduce_torch_quantized_tensors():
    w = torch.randn(8, 4, 3, 3)
    observer = tq.PerChannelMinMaxObserver(
        ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric
    )
    observer(w)
    scale, zp = observer.calculate_qparams()
    q = torch.quantize_per_channel(w, scale.double(), zp, 0, torch.qint8)
    grid = analysis.QParams.of(q)
    assert grid.per_channel and (grid.quant_min, grid.quant_max) == (-128, 127)
    assert torch.equal(grid.fake_quantize(w), q.dequantize())
    # The same grid from torch's observer through weight_qparams, and as a FakeQuantize.
    assert fakequant.weight_qparams(w, 8, per_channel=True, symmetric=True) == grid
    with torch.no_grad():
        assert torch.equal(grid.module()(w), q.dequantize())
    x = torch.rand(2, 3, 5, 5) * 4
    q = torch.quantize_per_tensor(x, 0.02, 3, torch.quint8)
    grid = analysis.QParams.of(q)
    assert not grid.per_channel and grid.clip_range() == pytest.approx((-0.06, 5.04))
    assert torch.equal(grid.fake_quantize(x), q.dequantize())
    assert analysis.QParams.of(x) is None


def test_one_fake_quantize_takes_any_grid():
    """A point's FakeQuantize is reloaded per configuration: per-tensor, per-channel, 16 bits."""
    w = torch.randn(6, 10)
    per_tensor = fakequant.weight_qparams(w, 4, per_channel=False, symmetric=False)
    per_channel = fakequant.weight_qparams(w, 3, per_channel=True, symmetric=True)
    wide = fakequant.activation_qparams(-1.0, 3.0, 16)
    fq = per_tensor.module()
    with torch.no_grad():
        for grid in (per_channel, per_tensor, wide, per_channel):
            grid.load_into(fq)
            assert torch.equal(fq(w), grid.fake_quantize(w))
    assert wide.quant_max == 2**16 - 1 and wide.scale[0] == pytest.approx(4.0 / 65535, rel=1e-6)
    # Pure rounding on a fine grid: RMS error ~ 1/sqrt(12) of a step.
    x = torch.rand(100_000) * 3
    grid = fakequant.activation_qparams(0.0, 3.0, 6)
    rms_steps = float((grid.fake_quantize(x) - x).pow(2).mean().sqrt()) / grid.scale[0]
    assert rms_steps == pytest.approx(fakequant.ROUNDING_RMSE_STEPS, rel=0.02)
    assert fakequant.ROUNDING_RMSE_STEPS == pytest.approx(1 / math.sqrt(12))


@pytest.mark.slow
def test_a_whole_pt2e_run_has_layer_rows_and_a_simulator():
    """The Layers page of a pt2e run: rows from QuantizedModel.reference (the compiled model
    has no layer modules), and a simulator that follows the compiled INT8 model. At a 96-pixel
    input: what is checked is plumbing and the simulator's fidelity, not demo accuracy (measured
    at 96: agreement 1.0 on the 58 images, weight SQNR 40-46 dB)."""
    method = next(m.name for m in methods.METHODS.values() if not m.has_layer_modules)
    config = demo_config(eval_images=58, method=method, calib_images=32)
    run = execute(dataclasses.replace(config, preprocess=Preprocess(input_size=96)), timed=False)
    assert run.quantized.reference is not None
    rows = analysis.layer_errors(run, max_images=16)
    assert all(r.quantized and r.activation_sqnr_db is not None for r in rows)
    assert all(r.weight_sqnr_db > 30 for r in rows)
    check = analysis.check_simulator(run, max_images=None)
    assert check.agreement_off_with_fp32 == 1.0
    assert check.agreement_with_quantized >= 0.95
