"""Per-layer error, histograms, fake quantization, sensitivity, bit sweep, figures, HTML.

Everything runs real torch on the demo (sample_data/): one module-scoped run on a
class-balanced subset of the evaluation images is shared by the fast tests.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import plotly.graph_objects as go
import pytest

from aslquant import analysis
from aslquant.model import LAYER_NAMES, layer_table
from aslquant.present import figures
from aslquant.quantize import quantize
from aslquant.recipe import QuantRecipe
from aslquant.report import report_dict, report_html, report_markdown
from aslquant.run import RunConfig, execute

#: 10 images per class: enough for stable SQNR and accuracy within a few points.
EVAL_IMAGES = 290

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


def variant(run, **changes):
    """The run with its quantized model replaced by another recipe's (same images, no timing)."""
    recipe = run.quantized.recipe.with_changes(**changes)
    qm = quantize(
        run.fp32_model, recipe, run.calibration, input_size=run.config.preprocess.input_size
    )
    return dataclasses.replace(run, quantized=qm)


def demo_config(eval_images: int | None = EVAL_IMAGES, **recipe) -> RunConfig:
    """The demo run with ``recipe`` changes (30 latency runs: the minimum allowed)."""
    return RunConfig(recipe=QuantRecipe(**recipe), eval_images=eval_images, latency_runs=30)


@pytest.fixture(scope="module")
def run():
    return execute(demo_config())


@pytest.fixture(scope="module")
def layers(run):
    return analysis.layer_errors(run)


# --- per-layer error -------------------------------------------------------------------------


def test_layer_errors_cover_all_layers_with_finite_sqnr(run, layers):
    assert [r["name"] for r in layers] == list(LAYER_NAMES)
    for row in layers:
        assert row["quantized"] is True
        for key in ("weight_sqnr_db", "activation_sqnr_db", "activation_sqnr_isolated_db"):
            assert math.isfinite(row[key]) and 5 < row[key] < 80, (row["name"], key, row[key])
        assert row["weight_mse"] > 0
        assert row["act_scale"] > 0 and isinstance(row["act_zero_point"], int)
        assert row["act_min"] <= row["act_max"] and row["act_clip_min"] < row["act_clip_max"]
        if row["name"] != "fc2":  # after a ReLU nothing is below 0, the bottom of the grid
            assert row["act_clip_min"] <= 0 <= row["act_min"]
        assert row["weight_min"] < 0 < row["weight_max"]
        assert row["n_images"] == analysis.LAYER_IMAGES
    # conv1 sees the same quantized image either way, so isolated == cumulative.
    assert layers[0]["activation_sqnr_isolated_db"] == pytest.approx(
        layers[0]["activation_sqnr_db"], abs=1e-6
    )


def test_weight_sqnr_matches_an_independent_computation(run, layers):
    for name in ("conv2", "fc1"):
        w = getattr(run.fp32_model, name).weight.detach().double()
        deq = getattr(run.quantized.module, name).weight().dequantize().double()
        expected = 10 * math.log10(float(w.pow(2).sum()) / float((deq - w).pow(2).sum()))
        row = next(r for r in layers if r["name"] == name)
        assert row["weight_sqnr_db"] == pytest.approx(expected, abs=1e-6)
        assert row["weight_mse"] == pytest.approx(float((deq - w).pow(2).mean()), rel=1e-6)


def test_poor_weights_have_lower_weight_sqnr(run, layers):
    poor = variant(run, weight_observer="minmax")
    poor_rows = analysis.layer_errors(poor, max_images=29)
    for good, bad in zip(layers, poor_rows, strict=True):
        # Per-tensor scales are at least as coarse as the widest channel's: less SQNR.
        assert bad["weight_sqnr_db"] < good["weight_sqnr_db"], good["name"]


def test_kept_fp32_layer_has_no_own_error(run):
    kept = variant(run, keep_fp32=("conv2",))
    rows = {r["name"]: r for r in analysis.layer_errors(kept, max_images=29)}
    assert rows["conv2"]["quantized"] is False
    assert rows["conv2"]["weight_sqnr_db"] is None
    assert rows["conv2"]["activation_sqnr_isolated_db"] is None
    # Error from conv1 is still carried through the float layer.
    assert math.isfinite(rows["conv2"]["activation_sqnr_db"])
    assert rows["conv3"]["quantized"] is True and rows["conv3"]["weight_sqnr_db"] > 5


# --- histograms and fake quantization --------------------------------------------------------


def test_weight_histogram_has_grid_and_clip_range(run):
    h = analysis.layer_histogram(run, "conv2", "weights", bins=80)
    w = run.fp32_model.conv2.weight
    assert sum(h["counts"]) == w.numel() and len(h["edges"]) == 81
    assert h["per_channel"] and len(h["scales"]) == w.shape[0]
    assert h["scale"] == pytest.approx(max(h["scales"]))
    steps = np.diff(h["grid"])
    assert np.allclose(steps, h["scale"])
    assert h["clip_min"] <= min(h["grid"]) and max(h["grid"]) <= h["clip_max"] + 1e-9
    assert h["edges"][0] <= float(w.min()) and h["edges"][-1] >= float(w.max())


def test_activation_histogram_counts_every_value(run, layers):
    h = analysis.layer_histogram(run, "conv3", "activations", bins=50)
    row = next(r for r in layers if r["name"] == "conv3")
    assert h["scale"] == row["act_scale"] and h["clip_max"] == row["act_clip_max"]
    shape = next(
        r
        for r in layer_table(run.fp32_model, run.config.preprocess.input_size)
        if r["name"] == "conv3"
    )["output_shape"]
    assert sum(h["counts"]) == h["n_images"] * math.prod(shape)
    assert h["observed_min"] >= 0  # after ReLU
    assert len(h["grid"]) > 10 and np.allclose(np.diff(h["grid"]), h["scale"])
    assert isinstance(h["values_sample"], np.ndarray) and len(h["values_sample"]) > 1000


def test_histogram_rejects_bad_arguments(run):
    with pytest.raises(ValueError, match="not one of"):
        analysis.layer_histogram(run, "conv9")
    with pytest.raises(ValueError, match="weights or activations"):
        analysis.layer_histogram(run, "conv1", "gradients")


def test_fake_quantize_rounding_and_clipping():
    values = np.array([0.0, 0.24, 0.26, 1.0, 3.0])
    fq = analysis.fake_quantize(values, bits=2, clip_min=0.0, clip_max=1.5)
    assert fq["scale"] == pytest.approx(0.5) and fq["zero_point"] == 0
    assert np.allclose(fq["dequantized"], [0.0, 0.0, 0.5, 1.0, 1.5])
    assert fq["clipped_fraction"] == pytest.approx(0.2)  # only 3.0 is outside
    assert fq["clipping_mse"] == pytest.approx(1.5**2 / 5)
    assert fq["rounding_mse"] == pytest.approx((0.24**2 + 0.24**2) / 5)
    rng = np.random.default_rng(0)
    x = rng.normal(size=5000)
    sqnr = [analysis.fake_quantize(x, b, -4, 4)["sqnr_db"] for b in (2, 4, 8)]
    assert sqnr[0] < sqnr[1] < sqnr[2]
    # A symmetric range keeps 0 exact on the grid.
    assert analysis.fake_quantize(np.array([0.0]), 8, -1, 1)["dequantized"][0] == 0.0


# --- sensitivity, mixed precision, bit sweep -------------------------------------------------


@pytest.fixture(scope="module")
def poor_run():
    return execute(demo_config(**POOR))


@pytest.mark.slow
def test_keeping_most_sensitive_layer_reduces_the_drop(poor_run):
    assert poor_run.accuracy_drop_points >= 1.0, "the poor recipe should lose accuracy"
    rows = analysis.sensitivity(poor_run)
    assert sorted(r["layer"] for r in rows) == sorted(LAYER_NAMES)
    assert [r["rank"] for r in rows] == list(range(1, 7))
    gains = [r["gain_points"] for r in rows]
    assert gains == sorted(gains, reverse=True)
    top = rows[0]
    assert top["gain_points"] > 0
    assert top["drop_points"] < poor_run.accuracy_drop_points
    # Re-running the whole pipeline with that layer in FP32 never makes the drop worse. It is
    # not asserted to be image-for-image equal: on the demo the gain is one or two borderline
    # images, and execute() and the sensitivity pass were seen to differ on one of them
    # (0.8966 vs 0.9000 for conv3; cause not found yet, recorded on the issue).
    rerun = execute(demo_config(**POOR, keep_fp32=(top["layer"],)))
    assert rerun.accuracy_drop_points <= poor_run.accuracy_drop_points


@pytest.mark.slow
def test_greedy_mixed_precision_reaches_target(poor_run):
    base = poor_run.accuracy_drop_points
    target = base / 2
    out = analysis.greedy_mixed_precision(poor_run, target)
    assert out["reached"] and out["steps"][-1]["drop_points"] <= target
    assert out["steps"][0]["keep_fp32"] == [] and out["steps"][0]["drop_points"] == pytest.approx(
        base
    )
    assert 1 <= len(out["keep_fp32"]) < len(LAYER_NAMES)
    assert len(out["steps"]) == len(out["keep_fp32"]) + 1
    lax = analysis.greedy_mixed_precision(poor_run, 100.0, ranking=[{"layer": "fc2"}])
    assert lax["keep_fp32"] == [] and lax["reached"] and len(lax["steps"]) == 1
    with pytest.raises(ValueError, match="target drop"):
        analysis.greedy_mixed_precision(poor_run, -1.0)


@pytest.mark.slow
def test_bit_sweep_falls_with_bits_and_matches_int8_at_8(run):
    rows = analysis.bit_sweep(run)
    assert [r["bits"] for r in rows] == [8, 6, 5, 4, 3, 2]
    assert all(r["simulated"] is True and "simulated" in r["label"] for r in rows)
    acc = [r["accuracy"] for r in rows]
    assert acc[0] >= acc[3] >= acc[5] and acc[0] - acc[5] > 0.3
    assert all(a >= b - 0.02 for a, b in zip(acc, acc[1:], strict=False))  # falls as bits fall
    wsqnr = [r["weight_sqnr_db"] for r in rows]
    assert wsqnr == sorted(wsqnr, reverse=True)
    assert rows[0]["activation_sqnr_db"] > rows[-1]["activation_sqnr_db"]
    # 8-bit simulation within 1 point of the real INT8 model on the same images.
    assert rows[0]["n_images"] == run.n_eval
    assert abs(rows[0]["accuracy"] - run.int8.accuracy) * 100 <= 1.0


@pytest.mark.slow
def test_config_sweep_gives_pareto_rows():
    config = demo_config(eval_images=58)
    grid = {"act_observer": ["minmax", "histogram"], "weight_observer": ["per-channel"]}
    rows = analysis.config_sweep(config, grid)
    assert rows[0]["reference"] and rows[0]["method"] == "fp32"
    assert [r["act_observer"] for r in rows[1:]] == ["minmax", "histogram"]
    for row in rows:
        assert 0 <= row["accuracy"] <= 1 and row["n_eval"] == 58
        assert 0 < row["b1_p50"] <= row["b1_p95"] and 0 < row["b32_p50"] <= row["b32_p95"]
        assert row["size_bytes"] > 0 and row["label"]
    assert rows[0]["size_bytes"] > 3 * rows[1]["size_bytes"]
    fig = figures.pareto_figure(rows)
    assert fig.layout.xaxis.title.text.endswith("(ms)")


@pytest.mark.slow
def test_qat_vs_ptq_reports_every_epoch():
    config = demo_config(eval_images=58, calib_images=32)
    out = analysis.qat_vs_ptq(config, epochs=2)
    assert [h["epoch"] for h in out["qat"]["history"]] == [1, 2]
    for h in out["qat"]["history"]:
        assert 0 <= h["accuracy"] <= 1 and h["train_loss"] > 0
    assert 0 <= out["ptq"]["accuracy"] <= 1 and out["n_eval"] == 58
    assert out["qat"]["accuracy"] == pytest.approx(out["qat"]["history"][-1]["accuracy"])


# --- figures and HTML ------------------------------------------------------------------------


def test_figures_have_unit_axis_titles(run, layers):
    sens = [
        {"layer": n, "rank": i + 1, "gain_points": 1.0 - i, "accuracy": 0.9, "agreement": 0.95}
        for i, n in enumerate(LAYER_NAMES)
    ]
    bits = [
        {"bits": b, "accuracy": a, "activation_sqnr_db": 5 * b, "weight_sqnr_db": 6 * b}
        for b, a in ((8, 0.9), (4, 0.5), (2, 0.05))
    ]
    hist = analysis.layer_histogram(run, "conv1", "weights")
    fq = analysis.fake_quantize(hist["values_sample"], 4, -0.2, 0.2)
    built = [
        figures.sqnr_bars(layers),
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
    runs = [
        {"label": "FP32", "size_bytes": 1e6, "accuracy": 0.9, "latency_ms": run.fp32.latency_ms},
        {"label": "INT8", "size_bytes": 3e5, "accuracy": 0.88, "latency_ms": run.int8.latency_ms},
    ]
    assert len(figures.runs_bars(runs).data) == 6


def test_report_html_is_self_contained(run, layers):
    report = report_dict(run, {"layers": layers})
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
