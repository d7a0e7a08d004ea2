"""Percentile, entropy and MSE observers: hand-computed ranges, torch's qparams, the demo model."""

from __future__ import annotations

import copy
import io
import math
import pickle

import numpy as np
import pytest
import torch
import torch.ao.quantization as tq
from torch import nn

from aslquant import data
from aslquant.engine_lock import engine_session
from aslquant.errors import InputError
from aslquant.labels import load_labels
from aslquant.model import FUSE_GROUPS, load_checkpoint
from aslquant.observers import (
    CLIPPING_OBSERVERS,
    EntropyObserver,
    MSEObserver,
    PercentileObserver,
    kl_divergence_for_window,
)
from aslquant.run import DEMO_CHECKPOINT, DEMO_DATA, DEMO_LABELS

OBSERVERS = [PercentileObserver, EntropyObserver, MSEObserver]


def _observe(observer_cls, *batches: torch.Tensor, **kwargs):
    observer = observer_cls(**kwargs)
    for batch in batches:
        observer(batch)
    return observer


# --- percentile -------------------------------------------------------------------------------


@pytest.mark.parametrize("reduce_range, steps", [(False, 255), (True, 127)])
def test_percentile_on_one_value_per_bin_is_exact(reduce_range, steps):
    # 0..999 and one outlier at 2000, 2000 bins of width 1 over [0, 2000]: value v sits alone
    # in bin v (the outlier in the last bin). 99.9th percentile: 0.999 * 1001 = 999.999 values
    # lie below it; 999 lie below bin 999, so it is 0.999 of the way through bin 999: 999.999.
    # The low end: 0.001 * 1001 = 1.001 values, i.e. 0.001 into bin 1: 1.001.
    x = torch.cat([torch.arange(1000.0), torch.tensor([2000.0])])
    obs = _observe(PercentileObserver, x, percentile=99.9, bins=2000, reduce_range=reduce_range)
    lo, hi = obs.clip_range()
    assert lo == pytest.approx(1.001, abs=1e-9)
    assert hi == pytest.approx(999.999, abs=1e-9)
    scale, zero_point = obs.calculate_qparams()
    # torch widens the range to include 0: [0, 999.999], 255 (or 127) steps, zero point 0.
    assert float(scale) == pytest.approx(999.999 / steps, rel=1e-6)
    assert int(zero_point) == 0
    minmax = _observe(tq.MinMaxObserver, x, reduce_range=reduce_range)
    assert float(minmax.calculate_qparams()[0]) == pytest.approx(2000.0 / steps, rel=1e-6)


def test_percentile_with_a_far_outlier_reads_the_histogram_bins():
    # 0..999 and 1e6 with the default 2048 bins: width w = 1e6 / 2048 = 488.28125.
    # bin 0 holds 0..488 (489 values), bin 1 489..976 (488), bin 2 977..999 (23), the last
    # bin 1e6. 0.999 * 1001 = 999.999 values: 977 lie below bin 2, so the percentile is
    # (999.999 - 977) / 23 of the way through bin 2 (values read as spread evenly in a bin).
    x = torch.cat([torch.arange(1000.0), torch.tensor([1e6])])
    obs = _observe(PercentileObserver, x, percentile=99.9)
    w = 1e6 / 2048
    expected_hi = 2 * w + (999.999 - 977) / 23 * w  # = 1464.82...
    assert obs.clip_range()[1] == pytest.approx(expected_hi, rel=1e-9)
    assert float(obs.calculate_qparams()[0]) == pytest.approx(expected_hi / 255, rel=1e-6)
    # min/max would spend its 256 levels on [0, 1e6]: a step of 3921.6, wider than the data.
    assert float(_observe(tq.MinMaxObserver, x).calculate_qparams()[0]) > 3900


def test_percentile_accumulates_batches_without_keeping_values():
    x = torch.cat([torch.arange(1000.0), torch.tensor([2000.0])])
    once = _observe(PercentileObserver, torch.cat([x, x]), percentile=99.9, bins=2000)
    twice = _observe(PercentileObserver, x, x, percentile=99.9, bins=2000)
    assert twice.clip_range() == pytest.approx(once.clip_range(), abs=1e-9)
    assert twice.histogram.numel() == 2000  # the histogram, not 2002 stored values


# --- MSE --------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduce_range, steps", [(False, 255), (True, 127)])
def test_mse_range_with_one_far_outlier_matches_the_closed_form(reduce_range, steps):
    # N = 1e6 values evenly in [0, 1] and one at 10. For a range [0, b] with 1 <= b < 10 the
    # expected error is N * (b / steps)^2 / 12 (rounding) + (c - b)^2 + const (clipping the
    # outlier, c = its bin's centre 10 - w/2). Setting the derivative to 0:
    #     b* = c / (1 + N / (12 * steps^2))  = 4.382 (8-bit) or 1.621 (7-bit).
    # The optimum clips the outlier but keeps all of the bulk; candidates are bin edges,
    # so the answer lies within one bin width w = 10 / 2048 of b*.
    n = 1_000_000
    x = torch.cat([torch.linspace(0, 1, n), torch.tensor([10.0])])
    obs = _observe(MSEObserver, x, reduce_range=reduce_range)
    w = 10 / 2048
    b_star = (10 - w / 2) / (1 + n / (12 * steps**2))
    lo, hi = obs.clip_range()
    assert lo == 0.0
    assert abs(hi - b_star) <= w
    assert 1.0 < hi < 10.0
    assert float(obs.calculate_qparams()[0]) == pytest.approx(hi / steps, rel=1e-6)


def test_mse_range_without_outliers_clips_only_a_hair():
    # N values evenly in [0, 1], range [0, b]: error/N = b^2 / (12 * 255^2) + (1 - b)^3 / 3.
    # Derivative 0 at (1 - b)^2 = b / (6 * 255^2): b* = 0.99840 (a hair of clipping pays for
    # slightly finer steps).
    x = torch.linspace(0, 1, 1_000_000)
    lo, hi = _observe(MSEObserver, x).clip_range()
    b = 1.0
    for _ in range(50):  # fixed point of b = 1 - sqrt(b / (6 * 255^2))
        b = 1 - math.sqrt(b / (6 * 255**2))
    assert b == pytest.approx(0.99840, abs=1e-5)
    assert lo == 0.0
    assert abs(hi - b) <= 1 / 2048


# --- entropy ----------------------------------------------------------------------------------


def test_kl_divergence_for_window_by_hand():
    counts = np.array([2.0, 2.0, 0.0, 4.0])
    # Keep bins 0..1 with 2 levels: P = [2, 2 + 0 + 4] = [.25, .75], Q = [2, 2] = [.5, .5].
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert kl_divergence_for_window(counts, 0, 2, 2) == pytest.approx(expected, abs=1e-12)
    # Keep all 4 bins: groups {0, 1} and {2, 3} hold 4 and 4; Q spreads each over the bins
    # where P is non-zero: [2, 2, 0, 4] = P, so KL = 0.
    assert kl_divergence_for_window(counts, 0, 4, 2) == 0.0
    # Keep bins 0..2: the clipped 4 lands in bin 2, but Q's group {2} holds nothing: inf.
    assert kl_divergence_for_window(counts, 0, 3, 2) == math.inf


def test_entropy_keeps_a_uniform_range():
    lo, hi = _observe(EntropyObserver, torch.linspace(0, 1, 1_000_000)).clip_range()
    assert lo == 0.0
    assert hi >= 0.99


def test_entropy_is_not_fooled_by_the_zeros_relu_makes():
    # Half-normal values (the positive side of a pre-activation), with as many exact zeros
    # as a ReLU makes. Zero is exact in any range, so the zeros should not move the answer.
    # Left in, the tall zero bin makes KL prefer [0, 1.8] (measured) instead of ~[0, 4.7].
    q = torch.linspace(0, 1 - 1e-6, 500_000, dtype=torch.float64)
    half_normal = (torch.erfinv(q) * math.sqrt(2)).float()
    relu_like = torch.cat([torch.zeros(500_000), half_normal])
    without_zeros = _observe(EntropyObserver, half_normal).clip_range()
    with_zeros = _observe(EntropyObserver, relu_like).clip_range()
    assert with_zeros == pytest.approx(without_zeros, rel=1e-6)
    assert with_zeros[1] > 4.0


def test_entropy_clips_a_long_tail():
    # Exponential quantiles: 99% lie below 4.6, the largest is 13.8.
    q = torch.linspace(0, 1 - 1e-6, 1_000_000, dtype=torch.float64)
    x = (-torch.log1p(-q)).float()
    hi8 = _observe(EntropyObserver, x).clip_range()[1]
    hi7 = _observe(EntropyObserver, x, reduce_range=True).clip_range()[1]
    assert 4.6 < hi8 < 0.9 * float(x.max())
    assert 4.6 < hi7 < hi8  # fewer levels: clipping pays off sooner


def test_entropy_on_values_either_side_of_zero_shrinks_both_ends():
    x = torch.randn(200_000, generator=torch.Generator().manual_seed(0))
    lo, hi = _observe(EntropyObserver, x).clip_range()
    assert float(x.min()) <= lo < -3.0
    assert 3.0 < hi <= float(x.max())
    assert hi - lo < float(x.max() - x.min())


# --- what every observer shares -----------------------------------------------------------------


@pytest.mark.parametrize("observer_cls", OBSERVERS)
@pytest.mark.parametrize("reduce_range", [False, True])
def test_qparams_are_torch_qparams_for_the_chosen_range(observer_cls, reduce_range):
    # A long exponential tail shifted below zero: every observer clips some of the tail.
    q = torch.linspace(0, 1 - 1e-6, 200_000, dtype=torch.float64)
    x = (-torch.log1p(-q)).float() - 0.5
    obs = _observe(observer_cls, x, reduce_range=reduce_range)
    lo, hi = obs.clip_range()
    assert hi < 0.9 * float(x.max())
    reference = _observe(tq.MinMaxObserver, torch.tensor([lo, hi]), reduce_range=reduce_range)
    scale, zero_point = obs.calculate_qparams()
    ref_scale, ref_zero_point = reference.calculate_qparams()
    assert torch.equal(scale, ref_scale)
    assert torch.equal(zero_point, ref_zero_point)
    assert obs.quant_max == (127 if reduce_range else 255)


@pytest.mark.parametrize("observer_cls", OBSERVERS)
def test_symmetric_qscheme_and_constant_input_follow_torch(observer_cls):
    x = torch.cat([torch.linspace(-1, 3, 10_000), torch.tensor([30.0])])
    sym = dict(qscheme=torch.per_tensor_symmetric)
    obs = _observe(observer_cls, x, **sym)
    reference = _observe(tq.MinMaxObserver, torch.tensor(obs.clip_range()), **sym)
    assert torch.equal(obs.calculate_qparams()[0], reference.calculate_qparams()[0])
    assert int(obs.calculate_qparams()[1]) == 128  # torch's symmetric quint8 zero point
    # A dead channel (all zeros) gives exactly what min/max gives.
    dead = _observe(observer_cls, torch.zeros(100))
    expected = _observe(tq.MinMaxObserver, torch.zeros(100)).calculate_qparams()
    assert all(torch.equal(a, b) for a, b in zip(dead.calculate_qparams(), expected, strict=True))


def test_registry_names_each_observer_once():
    assert {name: cls for name, (cls, _) in CLIPPING_OBSERVERS.items()} == {
        "percentile": PercentileObserver,
        "entropy": EntropyObserver,
        "mse": MSEObserver,
    }


@pytest.mark.parametrize("observer_cls", OBSERVERS)
def test_observer_survives_deepcopy_pickle_and_state_dict(observer_cls):
    x = torch.cat([torch.linspace(-1, 3, 10_000), torch.tensor([30.0])])
    obs = _observe(observer_cls, x, reduce_range=True)
    expected = obs.calculate_qparams()
    for clone in (copy.deepcopy(obs), pickle.loads(pickle.dumps(obs))):
        assert all(
            torch.equal(a, b) for a, b in zip(clone.calculate_qparams(), expected, strict=True)
        )
    buffer = io.BytesIO()
    torch.save(obs.state_dict(), buffer)
    fresh = observer_cls(reduce_range=True)
    fresh.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    assert all(torch.equal(a, b) for a, b in zip(fresh.calculate_qparams(), expected, strict=True))
    assert type(obs).__name__ in repr(obs) and "bins=2048" in repr(obs)


@pytest.mark.parametrize("observer_cls", OBSERVERS)
def test_unobserved_observer_warns_and_returns_torch_default(observer_cls):
    with pytest.warns(UserWarning, match="must run observer"):
        scale, zero_point = observer_cls().calculate_qparams()
    assert float(scale) == 1.0 and int(zero_point) == 0


@pytest.mark.parametrize(
    "make",
    [
        lambda: PercentileObserver(percentile=40),
        lambda: PercentileObserver(percentile=100.5),
        lambda: PercentileObserver(percentile="99"),
        lambda: PercentileObserver(percentile=True),
        lambda: MSEObserver(bins=0),
        lambda: MSEObserver(bins=2.5),
        lambda: EntropyObserver(bins=200),  # fewer bins than 256 quantization levels
    ],
)
def test_bad_parameters_are_refused(make):
    with pytest.raises(InputError):
        make()


def test_per_channel_qscheme_is_refused_by_torch():
    with pytest.raises(NotImplementedError):
        EntropyObserver(qscheme=torch.per_channel_affine)


def test_percentile_100_is_min_max():
    x = torch.cat([torch.linspace(-2, 5, 10_000), torch.tensor([17.0])])
    assert _observe(PercentileObserver, x, percentile=100).clip_range() == pytest.approx(
        (-2.0, 17.0), abs=1e-5
    )


# --- on the demo model: eager and FX ------------------------------------------------------------


@pytest.fixture(scope="module")
def demo():
    names = load_labels(DEMO_LABELS)
    model = load_checkpoint(DEMO_CHECKPOINT, num_labels=len(names))
    image_set = data.load_image_set(DEMO_DATA, names)
    calib_items, eval_items = data.stratified_split(image_set.items, 16, len(names), seed=0)
    pp = data.Preprocess()
    calib = data.load_tensors(calib_items, pp).x
    evaluation = data.load_tensors(eval_items, pp).x
    with torch.inference_mode():
        fp32_top1 = model(evaluation).argmax(1)
    return model, calib, evaluation, fp32_top1


def _qconfig(observer_cls) -> tq.QConfig:
    act = observer_cls.with_args(
        dtype=torch.quint8, qscheme=torch.per_tensor_affine, reduce_range=True
    )
    weight = tq.PerChannelMinMaxObserver.with_args(
        dtype=torch.qint8, qscheme=torch.per_channel_symmetric
    )
    return tq.QConfig(activation=act, weight=weight)


def _eager(model, qconfig, calib):
    work = tq.fuse_modules(copy.deepcopy(model).eval(), FUSE_GROUPS)
    work.qconfig = qconfig
    prepared = tq.prepare(work)
    with torch.inference_mode():
        prepared(calib)
    return tq.convert(prepared)


def _fx(model, qconfig, calib):
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    work = copy.deepcopy(model).eval()
    work.quant, work.dequant = nn.Identity(), nn.Identity()
    mapping = tq.QConfigMapping().set_global(qconfig)
    prepared = prepare_fx(work, mapping, (calib[:1],))
    with torch.inference_mode():
        prepared(calib)
    return convert_fx(prepared)


@pytest.mark.slow
@pytest.mark.parametrize("observer_cls", OBSERVERS)
@pytest.mark.parametrize("flow", [_eager, _fx], ids=["eager", "fx"])
def test_demo_model_quantized_with_each_observer_agrees_with_fp32(demo, observer_cls, flow):
    model, calib, evaluation, fp32_top1 = demo
    with engine_session("x86"):
        quantized = flow(model, _qconfig(observer_cls), calib)
        with torch.inference_mode():
            agreement = float((quantized(evaluation).argmax(1) == fp32_top1).float().mean())
    assert agreement >= 0.85, agreement
    # The observer really set conv1's output scale: narrower than min/max's range would give.
    with torch.inference_mode():
        conv1_max = float(torch.relu(model.conv1(calib)).max())
    assert float(quantized.conv1.scale) < 0.95 * conv1_max / 127
