"""Per-layer error, histograms, fake quantization, sensitivity, bit sweep, figures, HTML, and the
rule that analyses never change a run.

Everything runs real torch on the demo (sample_data/). The quick tests share one module-scoped
run on 2 images per class; the slow ones run on 10 images per class. No test here checks
latency, so no run is timed (report renderers get stand-in figures: with_renderer_latency).
The simulator and pt2e rows are in test_analysis_simulate.py, the sweep and QAT experiments in
test_analysis_experiments.py.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import math

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from aslquant import analysis, methods
from aslquant import data as data_mod
from aslquant.analysis import common as analysis_common
from aslquant.analysis import fakequant, simulate
from aslquant.measure import fp32_runner
from aslquant.model import LAYER_NAMES, layer_table
from aslquant.present import figures
from aslquant.quantize import QuantizedModel, quantize
from aslquant.recipe import QuantRecipe
from aslquant.report import report_dict, report_html, report_markdown
from aslquant.run import RunConfig, RunResult, execute

#: 10 images per class: enough for stable SQNR and accuracy within a few points.
EVAL_IMAGES = 290
#: 2 images per class: the quick tests' run.
SMALL_IMAGES = 58

#: A deliberately poor recipe: no conv+ReLU fusion (outputs quantized before the ReLU, so half
#: the levels go to negatives), one affine scale per layer for the weights, raw min/max
#: activation ranges, 7-bit activations. It loses accuracy where the default recipe does not.
POOR = {
    "fuse": False,
    "weight_observer": "minmax",
    "qscheme": "affine",
    "act_observer": "minmax",
    "reduce_range": True,
}


def variant(run: RunResult, calib_images: int | None = None, **changes) -> RunResult:
    """The run with its quantized model replaced by another recipe's (same images, no timing),
    calibrated on the run's calibration images (the first ``calib_images`` of them)."""
    recipe = run.quantized.recipe.with_changes(**changes)
    qm = quantize(
        run.fp32_model,
        recipe,
        run.calibration[:calib_images],
        input_size=run.config.preprocess.input_size,
    )
    return dataclasses.replace(run, quantized=qm)


def demo_config(eval_images: int | None = EVAL_IMAGES, **recipe) -> RunConfig:
    """The demo run with ``recipe`` changes (30 latency runs: the minimum allowed)."""
    return RunConfig(recipe=QuantRecipe(**recipe), eval_images=eval_images, latency_runs=30)


def with_renderer_latency(run: RunResult) -> RunResult:
    """An untimed run given latency figures, only so report renderers have every field (the
    figures are renderer input here, never checked or reported)."""
    lat = {"b1_p50": 2.0, "b1_p95": 2.5, "b32_p50": 40.0, "b32_p95": 45.0}
    fast = {k: v / 2 for k, v in lat.items()}
    return dataclasses.replace(
        run, fp32=run.fp32.with_latency(lat), int8=run.int8.with_latency(fast)
    )


@pytest.fixture(scope="module")
def run():
    """The quick tests' run: default recipe calibrated on 16 images, 58 evaluation images,
    not timed."""
    return execute(demo_config(SMALL_IMAGES, calib_images=16), timed=False)


@pytest.fixture(scope="module")
def pristine(run):
    """A deep snapshot of the run before any analysis of this module touched it."""
    return _snapshot(run)


@pytest.fixture(scope="module")
def state(run, pristine):
    return analysis.RunAnalysis(run)


#: Evaluation images of the quick per-layer rows.
LAYER_ROWS_IMAGES = 29


@pytest.fixture(scope="module")
def layers(state):
    return state.layers(max_images=LAYER_ROWS_IMAGES)


@pytest.fixture(scope="module")
def full_run():
    """A run on 290 evaluation images, not timed (slow tests only)."""
    return execute(demo_config(), timed=False)


# --- per-layer error -------------------------------------------------------------------------


@pytest.mark.slow
def test_layer_errors_cover_all_layers_with_finite_sqnr(run, layers):
    assert [r.name for r in layers] == list(LAYER_NAMES)
    for row in layers:
        assert isinstance(row, analysis.LayerError)
        assert row.quantized is True
        for key in ("weight_sqnr_db", "activation_sqnr_db", "activation_sqnr_isolated_db"):
            value = getattr(row, key)
            assert math.isfinite(value) and 5 < value < 80, (row.name, key, value)
        assert row.weight_mse > 0
        assert row.act_scale > 0 and isinstance(row.act_zero_point, int)
        assert row.act_min <= row.act_max and row.act_clip_min < row.act_clip_max
        if row.name != "fc2":  # after a ReLU nothing is below 0, the bottom of the grid
            assert row.act_clip_min <= 0 <= row.act_min
        assert row.weight_min < 0 < row.weight_max
        assert row.n_images == LAYER_ROWS_IMAGES
        assert row.weight_granularity == "per-channel" and row.note is None
    # conv1 sees the same quantized image either way, so isolated == cumulative.
    assert layers[0].activation_sqnr_isolated_db == pytest.approx(
        layers[0].activation_sqnr_db, abs=1e-6
    )
    # Every row has the same keys in report.json (None where a value does not apply).
    assert len({tuple(r.to_dict()) for r in layers}) == 1


def test_weight_sqnr_matches_an_independent_computation(run, layers):
    for name in ("conv2", "fc1"):
        w = getattr(run.fp32_model, name).weight.detach().double()
        deq = getattr(run.quantized.module, name).weight().dequantize().double()
        expected = 10 * math.log10(float(w.pow(2).sum()) / float((deq - w).pow(2).sum()))
        row = next(r for r in layers if r.name == name)
        assert row.weight_sqnr_db == pytest.approx(expected, abs=1e-6)
        assert row.weight_mse == pytest.approx(float((deq - w).pow(2).mean()), rel=1e-6)


@pytest.mark.slow
def test_poor_weights_have_lower_weight_sqnr(run, layers):
    # Only weights are compared: the cheapest activation observer and few images will do.
    poor = variant(run, calib_images=16, weight_observer="minmax", act_observer="minmax")
    poor_rows = analysis.layer_errors(poor, max_images=1)
    for good, bad in zip(layers, poor_rows, strict=True):
        # Per-tensor scales are at least as coarse as the widest channel's: less SQNR.
        assert bad.weight_sqnr_db < good.weight_sqnr_db, good.name
        assert bad.weight_granularity == "per-tensor"


@pytest.fixture(scope="module")
def kept_conv2(run):
    return variant(run, calib_images=16, keep_fp32=("conv2",))


@pytest.mark.slow
def test_kept_fp32_layer_has_no_own_error(kept_conv2):
    rows = {r.name: r for r in analysis.layer_errors(kept_conv2, max_images=8)}
    assert rows["conv2"].quantized is False
    assert rows["conv2"].weight_sqnr_db is None
    assert rows["conv2"].activation_sqnr_isolated_db is None
    assert rows["conv2"].note == "kept in FP32"
    # Error from conv1 is still carried through the float layer.
    assert math.isfinite(rows["conv2"].activation_sqnr_db)
    assert rows["conv3"].quantized is True and rows["conv3"].weight_sqnr_db > 5


@pytest.mark.parametrize(
    "method",
    methods.names(
        lambda m: m.has_layer_modules and not m.trains and m.name != methods.DEFAULT_METHOD
    ),
)
@pytest.mark.slow
def test_every_method_with_layer_modules_has_layer_rows(run, method):
    """No method leaves the Layers page empty (FX graphs, dynamic, FP16 here; the run's own
    method above; pt2e in test_pt2e_run_has_per_layer_rows)."""
    spec = methods.METHODS[method]
    other = variant(run, calib_images=8, method=method)
    rows = analysis.layer_errors(other, max_images=4)
    assert [r.name for r in rows] == list(LAYER_NAMES)
    for row in rows:
        assert row.quantized == (row.name in spec.quantized_layers)
        assert (row.weight_sqnr_db is not None) == row.quantized
        assert row.n_images == 4
        # A float layer fed float input computes exactly what FP32 does: no finite SQNR.
        assert (row.activation_sqnr_db is not None) == row.quantized
    # The simulator finds in the model every grid it has: all points where activations are
    # calibrated, INT8 weights only for dynamic, none for FP16 weights (not an integer grid).
    native = tuple(analysis.RunAnalysis(other).sim_plan().native())
    if spec.uses_observers:
        assert native == analysis.POINTS
    elif spec.weight_settings:
        assert native == tuple(f"{layer}.weight" for layer in spec.quantized_layers)
    else:
        assert native == ()


# --- histograms and fake quantization --------------------------------------------------------


def test_weight_histogram_has_grid_and_clip_range(state):
    h = analysis.layer_histogram(state, "conv2", "weights", bins=80)
    w = state.result.fp32_model.conv2.weight
    assert sum(h.counts) == w.numel() and len(h.edges) == 81
    assert h.per_channel and len(h.scales) == w.shape[0]
    assert h.scale == pytest.approx(max(h.scales))
    steps = np.diff(h.grid)
    assert np.allclose(steps, h.scale)
    assert h.clip_min <= min(h.grid) and max(h.grid) <= h.clip_max + 1e-9
    assert h.edges[0] <= float(w.min()) and h.edges[-1] >= float(w.max())
    assert h.to_dict()["scales"] == list(h.scales)


@pytest.mark.slow
def test_activation_histogram_counts_every_value(state, layers):
    h = state.histogram("conv3", "activations", bins=50)
    row = next(r for r in layers if r.name == "conv3")
    assert h.scale == row.act_scale and h.clip_max == row.act_clip_max
    shape = next(
        r
        for r in layer_table(state.result.fp32_model, state.result.config.preprocess.input_size)
        if r["name"] == "conv3"
    )["output_shape"]
    assert sum(h.counts) == h.n_images * math.prod(shape)
    assert h.observed_min >= 0  # after ReLU
    assert len(h.grid) > 10 and np.allclose(np.diff(h.grid), h.scale)
    assert isinstance(h.values_sample, np.ndarray) and len(h.values_sample) > 1000


def test_histogram_rejects_bad_arguments(state):
    with pytest.raises(ValueError, match="not one of"):
        analysis.layer_histogram(state, "conv9")
    with pytest.raises(ValueError, match="weights or activations"):
        analysis.layer_histogram(state, "conv1", "gradients")
    with pytest.raises(ValueError, match="bins"):
        analysis.layer_histogram(state, "conv1", "weights", bins=1)


def test_fake_quantize_rounding_and_clipping():
    values = np.array([0.0, 0.24, 0.26, 1.0, 3.0])
    fq = analysis.fake_quantize(values, bits=2, clip_min=0.0, clip_max=1.5)
    assert fq.scale == pytest.approx(0.5) and fq.zero_point == 0
    assert np.allclose(fq.dequantized, [0.0, 0.0, 0.5, 1.0, 1.5])
    assert fq.clipped_fraction == pytest.approx(0.2)  # only 3.0 is outside
    assert fq.clipping_mse == pytest.approx(1.5**2 / 5)
    assert fq.rounding_mse == pytest.approx((0.24**2 + 0.24**2) / 5)
    rng = np.random.default_rng(0)
    x = rng.normal(size=5000)
    sqnr = [analysis.fake_quantize(x, b, -4, 4).sqnr_db for b in (2, 4, 8)]
    assert sqnr[0] < sqnr[1] < sqnr[2]
    # A symmetric range keeps 0 exact on the grid.
    assert analysis.fake_quantize(np.array([0.0]), 8, -1, 1).dequantized[0] == 0.0
    # A chosen zero point moves the grid: with zp 1 the grid is -0.5, 0, 0.5, 1.
    shifted = analysis.fake_quantize(values, bits=2, clip_min=0.0, clip_max=1.5, zero_point=1)
    assert shifted.range == pytest.approx((-0.5, 1.0))
    assert set(shifted.to_dict()) >= {"dequantized", "sqnr_db", "clipped_fraction", "range"}


def test_bit_widths_are_declared_once():
    assert analysis.BITS is fakequant.BITS
    assert (analysis.BITS.low, analysis.BITS.high) == (2, 16)
    for bad in (1, 17, 2.5):
        with pytest.raises(ValueError, match="bits"):
            analysis.fake_quantize(np.array([0.5]), bad, 0.0, 1.0)
    # 16 bits works (codes wider than quint8), and is finer than 8.
    x = np.linspace(-1, 1, 1001)
    assert analysis.fake_quantize(x, 16, -1, 1).mse < analysis.fake_quantize(x, 8, -1, 1).mse


def test_fake_quantize_is_torch_fake_quantize():
    """The grid is torch's: MinMaxObserver's scale/zero point, fake_quantize_per_tensor_affine."""
    x = np.random.default_rng(1).uniform(-0.3, 2.0, size=2000)
    fq = analysis.fake_quantize(x, 5, -0.25, 1.75)
    observer = torch.ao.quantization.MinMaxObserver(quant_min=0, quant_max=31)
    observer(torch.tensor([-0.25, 1.75]))
    scale, zp = observer.calculate_qparams()
    expected = torch.fake_quantize_per_tensor_affine(
        torch.as_tensor(x, dtype=torch.float32), float(scale), int(zp), 0, 31
    )
    assert fq.scale == pytest.approx(float(scale)) and fq.zero_point == int(zp)
    assert np.array_equal(fq.dequantized, expected.double().numpy())


# --- explicit state, and no analysis changes a run -------------------------------------------


def test_run_analysis_keeps_state_beside_the_run(run, state, layers):
    assert state.result is run
    assert state.layers(max_images=LAYER_ROWS_IMAGES) is layers  # computed once
    assert state.activation_values(50) is state.activation_values(50)
    assert state.sim_plan() is state.sim_plan()
    assert state.simulator() is not state.simulator()  # each has its own switches
    assert "_analysis_cache" not in vars(run)
    # Another analysis of the same run starts empty: nothing is shared through the result.
    other = analysis.RunAnalysis(run)
    assert other.inspected() is not state.inspected()


def _plain(value):
    """A deep, plain copy: dataclasses and mappings as dicts, arrays and tensors copied."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if hasattr(value, "items"):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, torch.Tensor):
        return (value.int_repr(), value.dequantize()) if value.is_quantized else value.clone()
    return copy.deepcopy(value)


def _module_state(module: torch.nn.Module) -> dict:
    return {
        "state": _plain(module.state_dict()),
        "hooks": [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules()],
        "training": [m.training for m in module.modules()],
    }


def _snapshot(result: RunResult) -> dict:
    """Every field of a run, deep-copied; its models as their tensors, hooks and modes."""
    models = {"fp32_model", "quantized"}
    return {
        "fields": {
            f.name: _plain(getattr(result, f.name))
            for f in dataclasses.fields(result)
            if f.name not in models
        },
        "fp32_model": _module_state(result.fp32_model),
        "quantized": _module_state(result.quantized.module),
        "quantized_recipe": _plain(result.quantized.recipe),
        "attributes": sorted(vars(result)),
    }


def _assert_same(a, b, path="run"):
    assert type(a) is type(b), path
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), path
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), path
    else:
        assert a == b, path


# --- the quantization simulator --------------------------------------------------------------


def eval_images(run: RunResult, n: int) -> torch.Tensor:
    """The first ``n`` evaluation images of a run, preprocessed (what the analyses see)."""
    items = analysis_common.eval_items(run, n)
    return data_mod.load_tensors(items, run.config.preprocess).x


def logit_sqnr(x: torch.Tensor, reference: torch.Tensor) -> float:
    return analysis.sqnr_db(float(reference.pow(2).sum()), float((x - reference).pow(2).sum()))


def test_simulator_with_every_point_off_is_the_fp32_model(run, state):
    sim = state.simulator().configure({})
    assert sim.enabled() == ()
    x = eval_images(run, 8)
    with torch.inference_mode():
        assert torch.equal(sim(x), fp32_runner(run.fp32_model)(x))


@pytest.mark.slow
def test_simulator_native_points_mirror_the_int8_model(run, state):
    plan = state.sim_plan()
    assert tuple(plan.native()) == analysis.POINTS == plan.scope  # the input included
    assert all(p.source == "the quantized model" for p in plan.points.values())
    # x86 default: 7-bit activations (reduce_range), stored as quint8 codes up to 255.
    assert plan.points["input"].bits == 7 and plan.points["input"].qparams.quant_max == 255
    sim = state.simulator()
    assert sim.enabled() == analysis.POINTS
    # Weights: the simulator's FakeQuantize gives exactly the INT8 model's weights.
    inspected = state.inspected()
    with torch.inference_mode():
        for layer in LAYER_NAMES:
            w = getattr(run.fp32_model, layer).weight.detach()
            fake = sim.fake_quant[f"{layer}.weight"](w)
            assert torch.equal(fake, inspected.get(layer).weight), layer
        # Logits: far closer to the INT8 model's than the FP32 model's are.
        x = eval_images(run, 16)
        simulated = sim(x)
        int8 = run.quantized(x)
        fp32 = run.fp32_model(x)
    assert logit_sqnr(simulated, int8) > 30.0
    assert logit_sqnr(simulated, int8) > logit_sqnr(fp32, int8) + 10.0


@pytest.mark.slow
def test_simulator_agrees_with_int8_predictions(state):
    check = analysis.check_simulator(state, max_images=29)
    assert check.n_images == 29 and check.points_on == analysis.POINTS
    assert check.agreement_off_with_fp32 == 1.0 and check.max_abs_logit_difference_off == 0.0
    assert check.agreement_with_quantized >= 0.95  # at most 1 of 29 images differs


@pytest.mark.slow
def test_simulator_agrees_with_int8_on_290_images(full_run):
    check = analysis.check_simulator(full_run, max_images=None)
    print(f"\nsimulator vs INT8 on {check.n_images} images: {check}")  # the README's figure
    assert check.n_images == EVAL_IMAGES
    assert check.agreement_off_with_fp32 == 1.0 and check.max_abs_logit_difference_off == 0.0
    assert check.agreement_with_quantized >= 0.98
    assert abs(check.simulated_accuracy - check.quantized_accuracy) <= 0.01


def test_simulator_follows_fp32_islands(kept_conv2):
    state = analysis.RunAnalysis(kept_conv2)
    plan = state.sim_plan()
    native = tuple(plan.native())
    assert native == simulate.static_points(("conv2",)) == plan.scope
    # conv2 runs float, but its output is quantized where conv3 takes it in (conv3's stub).
    assert "conv2.weight" not in native and "conv2.output" in native
    assert plan.points["conv2.output"].qparams == state.inspected().get("conv3").input_qparams
    assert plan.points["conv2.weight"].source == simulate.SOURCE_WEIGHTS


@pytest.mark.slow
def test_simulator_follows_a_float_conv4_across_the_average_pool(run):
    """conv4 float, fc1 quantized: the model quantizes fc1's input after the average pool with
    a grid observed there; quantizing conv4's wider output with it would clip it badly."""
    kept = variant(run, calib_images=16, keep_fp32=("conv4",))
    state = analysis.RunAnalysis(kept)
    plan = state.sim_plan()
    assert tuple(plan.native()) == simulate.static_points(("conv4",))
    assert "conv4.output" not in plan.native()
    assert plan.points["avgpool.output"].qparams == state.inspected().get("fc1").input_qparams
    x = eval_images(run, 16)
    with torch.inference_mode():
        simulated, int8, fp32 = state.simulator()(x), kept.quantized(x), run.fp32_model(x)
    assert logit_sqnr(simulated, int8) > 30.0
    assert logit_sqnr(simulated, int8) > logit_sqnr(fp32, int8) + 10.0


def test_simulator_switches_and_bit_widths(state):
    plan = state.sim_plan()
    sim = state.simulator()
    sim.configure({"conv3.output": plan.points["conv3.output"].qparams})
    assert sim.enabled() == ("conv3.output",)
    with pytest.raises(ValueError, match="unknown"):
        sim.configure({"conv9.output": plan.points["conv3.output"].qparams})
    # Weights re-observed at 4 bits: about 127.5 / 7.5 = 17x coarser steps than at 8.
    g8, g4 = plan.grid_at_bits("conv2.weight", 8), plan.grid_at_bits("conv2.weight", 4)
    assert g4.quant_min == -8 and g4.quant_max == 7
    assert g4.scale_max / g8.scale_max == pytest.approx(127.5 / 7.5, rel=1e-3)
    # Activations keep the calibrated (7-bit) range, re-divided into 255 steps at 8 bits.
    native = plan.points["conv1.output"].qparams
    eight = plan.grid_at_bits("conv1.output", 8)
    assert eight.quant_max == 255
    assert eight.scale[0] * 255 == pytest.approx(native.scale[0] * 127, rel=1e-5)
    with pytest.raises(ValueError, match="bits"):
        plan.at_bits(1)


@pytest.mark.slow
def test_point_diagnostics_explain_each_point(run, state):
    points = ("input", "conv2.weight", "fc1.output")
    diag = analysis.diagnose_points(state, max_images=8, points=points)
    assert [p.point for p in diag.points] == list(points)
    assert diag.off_agreement == 1.0
    assert diag.split.n_images == 8 and all(p.n_images == 8 for p in diag.points)
    rows = {p.point: p for p in diag.points}
    # The input's error, computed here independently on the same 8 images.
    x = eval_images(run, 8)
    grid = state.sim_plan().points["input"].qparams
    err = (grid.fake_quantize(x) - x).double()
    scale = grid.scale[0]
    row = rows["input"]
    assert row.kind == "input" and row.native and row.bits == 7
    assert row.rmse_steps == pytest.approx(float(err.pow(2).mean().sqrt()) / scale, rel=1e-6)
    assert row.sqnr_db == pytest.approx(logit_sqnr(x + err.float(), x), abs=1e-3)
    assert row.n_values == x.numel()
    low, high = grid.clip_range()
    clipped = ((x < low - scale / 2) | (x > high + scale / 2)).double().mean()
    assert row.clipped_fraction == pytest.approx(float(clipped))
    # Symmetric per-channel weights never clip: their error is pure rounding, ~1/sqrt(12) step.
    w = rows["conv2.weight"]
    assert w.kind == "weight" and w.per_channel and w.clipped_fraction == 0.0
    assert 0.9 < w.rmse_vs_rounding < 1.1
    weights = run.fp32_model.conv2.weight.detach()
    ranges = (weights.amax(dim=(1, 2, 3)) - weights.amin(dim=(1, 2, 3))).double().numpy()
    assert w.channels.range_max == pytest.approx(ranges.max())
    assert w.channels.spread == pytest.approx(ranges.max() / np.median(ranges), rel=1e-6)
    # Scores: drop is against FP32 on the same images; gain is what leaving the point float wins.
    for p in diag.points:
        for s in (p.alone, p.without):
            assert 0 <= s.accuracy <= 1 and 0 <= s.agreement <= 1
            fp32 = diag.split.fp32_accuracy
            assert s.drop_points == pytest.approx(100 * (fp32 - s.accuracy))
        assert p.gain_points == pytest.approx(
            100 * (p.without.accuracy - diag.split.all_points.accuracy)
        )
    assert set(diag.to_dict()["points"][0]) >= {"rmse_steps", "channels", "alone", "without"}


# --- pt2e: per-layer rows from the converted graph -------------------------------------------


@pytest.fixture(scope="module")
def pt2e_run(run):
    """The run with a pt2e model built by the method's own steps (not compiled: the converted
    graph is both the model and its reference, as QuantizedModel.reference is in a pt2e run)."""
    spec = next(m for m in methods.METHODS.values() if not m.has_layer_modules)
    recipe = QuantRecipe(method=spec.name).resolved()
    size = run.config.preprocess.input_size
    prepared = spec.prepare(run.fp32_model, recipe, size)
    methods.calibrate(prepared, [eval_images(run, 16)])
    converted = spec.convert(prepared, recipe)
    qm = QuantizedModel(converted, recipe, recipe.backend, reference=converted)
    return dataclasses.replace(run, quantized=qm)


@pytest.mark.slow
def test_pt2e_run_has_per_layer_rows(run, layers, pt2e_run):
    rows = analysis.layer_errors(pt2e_run, max_images=16)
    assert [r.name for r in rows] == list(LAYER_NAMES)
    for row in rows:
        assert row.quantized and row.note is None and row.n_images == 16
        assert row.weight_granularity == "per-channel" and row.weight_dtype == "int8"
        for value in (row.weight_sqnr_db, row.activation_sqnr_db, row.activation_sqnr_isolated_db):
            assert value is not None and 5 < value < 80, row
        assert row.input_scale > 0
        # pt2e leaves the logits float: fc2's output has no grid.
        assert (row.act_scale is None) == (row.name == "fc2")
    assert rows[0].activation_sqnr_isolated_db == pytest.approx(rows[0].activation_sqnr_db)
    # The graph's weights are the same per-channel symmetric INT8 grid the eager model uses
    # (conv4 may differ: torchao's observer has a minimum scale of 2^-12).
    eager = {r.name: r for r in layers}
    for name in ("conv1", "conv2", "conv3", "fc1", "fc2"):
        assert rows[LAYER_NAMES.index(name)].weight_sqnr_db == pytest.approx(
            eager[name].weight_sqnr_db, abs=1e-6
        )
    # Cumulative SQNR at fc2 is the SQNR of the graph's own logits, computed independently.
    graph = pt2e_run.quantized.reference
    x = eval_images(run, 16)
    with torch.inference_mode():
        expected = logit_sqnr(graph(x), run.fp32_model(x))
    assert rows[-1].activation_sqnr_db == pytest.approx(expected, abs=1e-3)
    # conv1's input scale is the quantize node applied to the graph's input.
    placeholder = next(n for n in graph.graph.nodes if n.op == "placeholder")
    quant = next(u for u in placeholder.users if "quantize_per_tensor" in str(u.target))
    assert rows[0].input_scale == pytest.approx(float(quant.args[1]))


@pytest.mark.slow
def test_simulator_follows_the_pt2e_graph(run, pt2e_run):
    state = analysis.RunAnalysis(pt2e_run)
    plan = state.sim_plan()
    assert set(plan.native()) == set(analysis.POINTS) - {"fc2.output"}
    assert plan.points["input"].qparams.quant_max == 127  # pt2e clamps 7-bit codes itself
    x = eval_images(run, 16)
    with torch.inference_mode():
        simulated = state.simulator()(x)
        graph = pt2e_run.quantized.reference(x)
        fp32 = run.fp32_model(x)
    # Not bit-exact: float convolutions in another order put a few values on the other side
    # of a rounding boundary (one step), and such flips propagate. Still far closer to the
    # graph than FP32 is (measured: 35.8 dB on these images vs 19.9 dB for FP32).
    assert logit_sqnr(simulated, graph) > 30.0
    assert logit_sqnr(simulated, graph) > logit_sqnr(fp32, graph) + 10.0
    assert float((simulated.argmax(1) == graph.argmax(1)).float().mean()) >= 0.9


# --- sensitivity, mixed precision, bit sweep -------------------------------------------------


@pytest.fixture(scope="module")
def poor_run(full_run):
    """The poor recipe on full_run's 290 images, not timed. The FP32 side depends only on the
    model and the images, so full_run's evaluated baseline is reused (execute checks its key)."""
    run = execute(demo_config(**POOR), baseline=full_run.baseline, timed=False)
    assert run.baseline is full_run.baseline
    return run


@pytest.fixture(scope="module")
def poor_sensitivity(poor_run):
    """The poor run's sensitivity rows (default images), computed once for both tests below."""
    return analysis.sensitivity(poor_run)


@pytest.mark.slow
def test_keeping_most_sensitive_layer_reduces_the_drop(poor_run, poor_sensitivity):
    assert poor_run.accuracy_drop_points >= 1.0, "the poor recipe should lose accuracy"
    rows = poor_sensitivity
    assert all(isinstance(r, analysis.SensitivityRow) for r in rows)
    assert sorted(r.layer for r in rows) == sorted(LAYER_NAMES)
    assert [r.rank for r in rows] == list(range(1, 7))
    gains = [r.gain_points for r in rows]
    assert gains == sorted(gains, reverse=True)
    top = rows[0]
    assert top.gain_points > 0
    assert top.drop_points < poor_run.accuracy_drop_points
    # Re-running the whole pipeline with that layer in FP32 never makes the drop worse. It is
    # not asserted to be image-for-image equal: on the demo the gain is one or two borderline
    # images, and execute() and the sensitivity pass were seen to differ on one of them
    # (0.8966 vs 0.9000 for conv3; cause not found yet, recorded on the issue).
    # (Same images, so the FP32 side is the poor run's own; not timed: latency is not checked.)
    rerun = execute(
        demo_config(**POOR, keep_fp32=(top.layer,)), baseline=poor_run.baseline, timed=False
    )
    assert rerun.quantized.recipe.keep_fp32 == (top.layer,)
    assert rerun.accuracy_drop_points <= poor_run.accuracy_drop_points


@pytest.mark.slow
def test_greedy_mixed_precision_reaches_target(poor_run, poor_sensitivity, monkeypatch):
    base = poor_run.accuracy_drop_points
    target = base / 2
    # Without a ranking the search ranks the layers with sensitivity(); that call (same run,
    # same default images) is answered with the rows computed once by the fixture.
    module = importlib.import_module("aslquant.analysis.sensitivity")
    calls = []

    def ranked_once(result, progress=None, max_images=analysis.VARIANT_IMAGES):
        assert result is poor_run and max_images == analysis.VARIANT_IMAGES
        calls.append(result)
        return poor_sensitivity

    monkeypatch.setattr(module, "sensitivity", ranked_once)
    out = analysis.greedy_mixed_precision(poor_run, target)
    assert len(calls) == 1 and out.ranking == tuple(r.layer for r in poor_sensitivity)
    monkeypatch.undo()
    assert out.reached and out.steps[-1].drop_points <= target
    assert out.steps[0].keep_fp32 == () and out.steps[0].drop_points == pytest.approx(base)
    assert 1 <= len(out.keep_fp32) < len(LAYER_NAMES)
    assert len(out.steps) == len(out.keep_fp32) + 1
    lax = analysis.greedy_mixed_precision(poor_run, 100.0, ranking=["fc2"])
    assert lax.keep_fp32 == () and lax.reached and len(lax.steps) == 1
    assert lax.to_dict()["steps"][0]["keep_fp32"] == []
    with pytest.raises(ValueError, match="target drop"):
        analysis.greedy_mixed_precision(poor_run, -1.0)


@pytest.mark.slow
def test_bit_sweep_falls_with_bits_and_matches_int8_at_8(full_run):
    rows = analysis.bit_sweep(full_run)
    assert [r.bits for r in rows] == [8, 6, 5, 4, 3, 2]
    assert all(r.simulated is True and "simulated" in r.label for r in rows)
    acc = [r.accuracy for r in rows]
    assert acc[0] >= acc[3] >= acc[5] and acc[0] - acc[5] > 0.3
    assert all(a >= b - 0.02 for a, b in zip(acc, acc[1:], strict=False))  # falls as bits fall
    wsqnr = [r.weight_sqnr_db for r in rows]
    assert wsqnr == sorted(wsqnr, reverse=True)
    assert rows[0].activation_sqnr_db > rows[-1].activation_sqnr_db
    # 8-bit simulation within 1 point of the real INT8 model on the same images.
    assert rows[0].n_images == full_run.n_eval
    assert abs(rows[0].accuracy - full_run.int8.accuracy) * 100 <= 1.0


def test_bit_sweep_rejects_widths_outside_the_declared_range(state):
    for bad in ((1,), (17,), ()):
        with pytest.raises(ValueError, match="bit"):
            analysis.bit_sweep(state, bits=bad, max_images=1)


# --- figures and HTML ------------------------------------------------------------------------


def test_figures_have_unit_axis_titles(run, state, layers):
    rows = [r.to_dict() for r in layers]
    sens = [
        {"layer": n, "rank": i + 1, "gain_points": 1.0 - i, "accuracy": 0.9, "agreement": 0.95}
        for i, n in enumerate(LAYER_NAMES)
    ]
    bits = [
        {"bits": b, "accuracy": a, "activation_sqnr_db": 5 * b, "weight_sqnr_db": 6 * b}
        for b, a in ((8, 0.9), (4, 0.5), (2, 0.05))
    ]
    hist = state.histogram("conv1", "weights").to_dict()
    fq = analysis.fake_quantize(hist["values_sample"], 4, -0.2, 0.2).to_dict()
    built = [
        figures.sqnr_bars(rows),
        figures.histogram_figure(hist),
        figures.playground_figure(hist["values_sample"], fq, {"min": -0.1, "max": 0.1}),
        figures.bit_sweep_figure(bits),
        figures.pareto_figure([{"b1_p50": 1.0, "accuracy": 0.9, "size_bytes": 10, "label": "a"}]),
        figures.confusion_figure(run.confusion_fp32, run.class_names, "FP32"),
        figures.confusion_diff_figure(run.confusion_fp32, run.confusion_int8, run.class_names),
        figures.sensitivity_figure(sens),
    ]
    units = ("(dB)", "(ms)", "(%)", "(MB)", "units", "class", "layer", "bits", "count", "points")
    for fig in built:
        assert isinstance(fig, go.Figure)
        titles = [fig.layout.xaxis.title.text, fig.layout.yaxis.title.text]
        assert all(titles) and all(any(u in t for u in units) for t in titles), titles
        # No hard-coded backgrounds: the template decides (light and dark themes).
        assert fig.layout.paper_bgcolor is None and fig.layout.plot_bgcolor is None
    assert len(built[0].data) == 3  # weights, cumulative, isolated
    lat = with_renderer_latency(run)
    runs = [
        {"label": "FP32", "size_bytes": 1e6, "accuracy": 0.9, "latency_ms": lat.fp32.latency_ms},
        {"label": "INT8", "size_bytes": 3e5, "accuracy": 0.88, "latency_ms": lat.int8.latency_ms},
    ]
    assert len(figures.runs_bars(runs).data) == 6


def test_report_html_is_self_contained(run, layers):
    report = report_dict(with_renderer_latency(run), {"layers": analysis.report_value(layers)})
    report["bit_sweep"] = [
        {
            "bits": 8,
            "accuracy": 0.9,
            "agreement": 1.0,
            "weight_sqnr_db": 40.0,
            "activation_sqnr_db": 30.0,
            "n_images": 10,
        }
    ]
    page = report_html(report)
    assert page.startswith("<!DOCTYPE html>")
    # plotly.js is inlined exactly once and nothing is fetched from the network.
    assert page.count("<script type='text/javascript'>") == 1
    assert "<script src" not in page and "<link " not in page
    assert "Plotly.newPlot" in page
    for div in ("sqnr", "bits", "conf_fp32", "conf_int8", "conf_d"):
        assert f'id="{div}"' in page
    assert run.config.recipe.describe() in page
    md = report_markdown(report)
    assert "Bit-width sweep" in md and "isolated" in md


@pytest.mark.slow
def test_analyses_never_change_the_run(run, pristine):
    """Last in the module: every analysis above ran on this run (layers, histograms, the
    simulator, diagnostics, pt2e and kept-layer variants); a few more run here too."""
    state = analysis.RunAnalysis(run)
    state.layers(max_images=4)
    state.histogram("conv1", "weights")
    analysis.diagnose_points(state, max_images=4, points=("input", "fc2.weight"))
    analysis.check_simulator(state, max_images=4)
    analysis.bit_sweep(state, bits=(4,), max_images=4)
    analysis.greedy_mixed_precision(run, 100.0)  # target met: no search needed
    _assert_same(pristine, _snapshot(run))
