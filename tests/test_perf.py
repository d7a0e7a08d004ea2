"""The speed work is correct: fast pooling, FP32 baseline reuse, timing from evaluation batches.

No test here asserts a duration; bench/latency.py prints the figures.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from aslquant.data import Preprocess
from aslquant.engine_lock import engine_session
from aslquant.measure import latency_profile
from aslquant.model import load_checkpoint
from aslquant.qmodules import QuantizedMaxPool2d, portable_copy
from aslquant.quantize import quantize
from aslquant.recipe import QuantRecipe
from aslquant.run import DEMO_CHECKPOINT, RunConfig, execute, load_inputs, measure_fp32


@pytest.mark.parametrize("dtype", [torch.quint8, torch.qint8])
@pytest.mark.parametrize(
    "shape",
    [(1, 16, 220, 220), (3, 16, 51, 51), (2, 3, 9, 8), (2, 48, 7, 10), (1, 16, 2, 3)],
)
def test_fast_max_pool_equals_torch_on_quantized_tensors(shape, dtype):
    generator = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=generator)
    q = torch.quantize_per_tensor(x, 0.05, 7 if dtype == torch.quint8 else 0, dtype)
    for layout in (torch.contiguous_format, torch.channels_last):
        qx = q.contiguous(memory_format=layout)
        expected = F.max_pool2d(qx, 2, 2)
        got = QuantizedMaxPool2d(2, 2)(qx)
        assert got.shape == expected.shape
        assert got.dtype == expected.dtype
        assert (got.q_scale(), got.q_zero_point()) == (expected.q_scale(), expected.q_zero_point())
        assert torch.equal(got.int_repr(), expected.int_repr())
        assert got.is_contiguous(memory_format=torch.channels_last)


def test_fast_max_pool_falls_back_where_it_does_not_apply():
    x = torch.randn(2, 16, 10, 10)
    assert torch.equal(QuantizedMaxPool2d(2, 2)(x), F.max_pool2d(x, 2, 2))  # float input
    q = torch.quantize_per_tensor(x, 0.1, 0, torch.quint8)
    odd = QuantizedMaxPool2d(3, 2)  # not a 2x2 window
    assert torch.equal(odd(q).int_repr(), F.max_pool2d(q, 3, 2).int_repr())
    tiny = torch.quantize_per_tensor(torch.randn(1, 16, 1, 2), 0.1, 0, torch.quint8)
    with pytest.raises(RuntimeError, match="too small"):
        QuantizedMaxPool2d(2, 2)(tiny)


@pytest.fixture(scope="module")
def demo_model():
    return load_checkpoint(DEMO_CHECKPOINT)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["static", "fx"])
def test_quantized_models_use_fast_pooling_and_exports_do_not(demo_model, method):
    calib = torch.rand(8, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    qm = quantize(demo_model, QuantRecipe(method=method, backend="x86"), calib)
    pools = [m for m in qm.module.modules() if isinstance(m, nn.MaxPool2d)]
    assert pools and all(type(m) is QuantizedMaxPool2d for m in pools)
    portable = portable_copy(qm.module)
    assert all(type(m) is nn.MaxPool2d for m in portable.modules() if isinstance(m, nn.MaxPool2d))
    x = torch.rand(4, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with engine_session("x86"), torch.inference_mode():
        assert torch.equal(qm.module(x), portable(x))
        traced = torch.jit.trace(portable, x[:1])
        assert torch.equal(traced(x), portable(x))


def test_latency_profile_counts_evaluation_batches_as_timed_runs():
    calls: list[int] = []

    class Counting(nn.Module):
        def forward(self, x):
            calls.append(len(x))
            return x.sum()

    measured = {32: [0.010] * 30}
    lat = latency_profile(Counting(), None, 8, 1, runs=30, measured=measured)
    assert 32 not in calls  # batch 32 came from the given samples only
    assert calls.count(1) == 33  # 3 warm-up + 30 timed
    assert lat["b32_p50"] == pytest.approx(10.0)
    calls.clear()
    latency_profile(Counting(), None, 8, 1, runs=30, measured={32: [0.010] * 20})
    assert calls.count(32) == 1 + 10  # one warm-up, then only the 10 missing runs


def _small(config: RunConfig) -> RunConfig:
    # 96 px keeps the 30 timed batch-32 FP32 calls of each cold run to a few seconds.
    return dataclasses.replace(
        config, eval_images=96, threads=1, preprocess=Preprocess(input_size=96)
    )


@pytest.mark.slow
def test_a_further_recipe_reuses_the_fp32_baseline():
    cold = execute(_small(RunConfig().with_recipe(calib_images=32)))
    assert cold.baseline is not None and cold.timings_s["fp32_reused"] == 0.0
    # 96 images = 3 full batches: 2 timed after the warm-up one, 28 topped up on random input.
    config = _small(RunConfig().with_recipe(calib_images=32, act_observer="minmax"))
    warm = execute(config, baseline=cold.baseline)
    assert warm.timings_s["fp32_reused"] == 1.0
    assert warm.fp32 is cold.fp32
    assert warm.evaluation.paths == cold.evaluation.paths
    # The quantized side is this recipe's own: equal to a run that measured FP32 itself.
    alone = execute(config)
    assert alone.timings_s["fp32_reused"] == 0.0
    assert (warm.evaluation.quant.top1 == alone.evaluation.quant.top1).all()
    assert warm.int8.accuracy == alone.int8.accuracy
    assert warm.agreement == alone.agreement


@pytest.mark.slow
def test_a_baseline_for_other_images_is_not_reused():
    base_config = _small(RunConfig().with_recipe(calib_images=32))
    baseline = measure_fp32(base_config, load_inputs(base_config))
    assert baseline.evaluation.n == 96
    other = dataclasses.replace(base_config, eval_images=64)
    result = execute(other, baseline=baseline)
    assert result.timings_s["fp32_reused"] == 0.0
    assert result.n_eval == 64
    same = execute(base_config, baseline=baseline)
    assert same.timings_s["fp32_reused"] == 1.0
    assert same.fp32.accuracy == baseline.metrics.accuracy
