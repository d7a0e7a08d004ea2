"""Where quantization hurts: per-layer error, histograms, fake quantization, sensitivity, the
bit sweep and a quantization simulator with per-point diagnostics.

One module per job:

- ``capture``: forward hooks; conv1..fc2 found in any quantized model (``inspect_quantized``);
  the FP32 tensors at every quantization point over the calibration images (``observe``);
- ``pt2e``: the same for a pt2e run, through its converted graph's nodes;
- ``layer_error``: per-layer weight/activation SQNR, MSE, ranges, grids (``layer_errors``);
- ``histograms``: weight/activation histograms with the INT8 grid (``layer_histogram``);
- ``fakequant``: grids (``QParams``), torch fake quantization, the playground's maths;
- ``simulate``: ``QuantSim`` (FakeQuantize at every point), ``diagnose_points``,
  ``check_simulator``;
- ``sensitivity``: one layer in FP32 at a time, greedy mixed precision;
- ``bit_sweep``: every point at N bits on the simulator;
- ``run_analysis``: ``RunAnalysis``, the per-run analysis state passed explicitly.

Experiments that run whole recipes many times (sweeps, QAT vs PTQ) are in
``aslquant.experiments``. Every result is a frozen dataclass with ``to_dict()``; analyses read
a ``RunResult`` and never change it.

SCHEMA: report.json sections written from these results
=======================================================
Units: accuracy/agreement are fractions in [0, 1]; ``*_points`` are percentage points;
``*_db`` are decibels (None where infinite or undefined); scales, ranges and MSE are in the
tensor's float units; latency in milliseconds; sizes in bytes. Every row of a section has
every key (None where it does not apply).

``layers`` (list of ``LayerError``, one per conv1..fc2, in forward order)
    name, quantized (bool), weight_min, weight_max, weight_sqnr_db, weight_mse, weight_dtype
    ("qint8", "int8" for pt2e graphs, "float16", "float32"), weight_scale_max,
    weight_granularity ("per-channel", "per-tensor", None), activation_sqnr_db (cumulative),
    activation_sqnr_isolated_db, act_min, act_max (FP32 output range after the ReLU),
    act_scale, act_zero_point, act_clip_min, act_clip_max (output grid), input_scale,
    n_images, note.
``sensitivity`` (list of ``SensitivityRow``, best first)
    layer, keep_fp32 (list), accuracy, agreement, drop_points, gain_points, fp32_accuracy,
    int8_accuracy, n_images, rank.
``mixed_precision`` (``MixedPrecision``)
    target_drop_points, keep_fp32, reached, fp32_accuracy, n_images, ranking (layers tried),
    steps: list of {keep_fp32, accuracy, agreement, drop_points, size_bytes}.
``bit_sweep`` (list of ``BitSweepRow``)
    bits, accuracy, agreement, drop_points, weight_sqnr_db, activation_sqnr_db (logits vs
    FP32), simulated (true), label, fp32_accuracy, int8_accuracy, n_images, range_source.
``sweep`` (``experiments.SweepRow``; first row the FP32 reference)
    method, backend, act_observer, weight_observer, label, accuracy, top5, agreement, b1_p50,
    b1_p95, b32_p50, b32_p95, size_bytes, n_eval, recipe (dict or None), error (str or None),
    reference (bool).
``qat_vs_ptq`` (``experiments.QatVsPtq``)
    epochs, fp32_accuracy, n_eval, n_train, ptq: {accuracy, agreement, recipe, drop_points},
    qat: the same plus history: list of {epoch, train_loss, accuracy}.
``points`` (``PointDiagnostics``, for the doctor)
    range_source, off_agreement, split: {all_points, weights_only, activations_only:
    {accuracy, agreement, drop_points}, fp32_accuracy, n_images}, points: list of
    ``PointDiagnosis``: point ("input", "<layer>.weight", "<layer>.output",
    "avgpool.output"), layer, kind ("input", "weight", "activation"), native, bits, per_channel, scale_max, zero_point,
    clip_min, clip_max, sqnr_db, rmse_steps (RMS error / step; pure rounding is 1/sqrt(12)),
    rmse_vs_rounding, clipped_fraction, channels: {range_max, range_median, spread,
    constant_channels}, alone and without: {accuracy, agreement, drop_points}, gain_points,
    restored_points (answers back to FP32's when this point is float), n_images, n_values.
"""

from __future__ import annotations

from typing import Any

from aslquant.analysis.bit_sweep import DEFAULT_BITS, BitSweepRow, bit_sweep
from aslquant.analysis.capture import LayerQuant, QuantizedLayers, inspect_quantized
from aslquant.analysis.common import LAYER_IMAGES, VARIANT_IMAGES, Score, sqnr_db
from aslquant.analysis.fakequant import BITS, FakeQuantResult, QParams, fake_quantize
from aslquant.analysis.histograms import Histogram, layer_histogram
from aslquant.analysis.layer_error import LayerError, layer_errors
from aslquant.analysis.run_analysis import RunAnalysis
from aslquant.analysis.sensitivity import (
    MixedPrecision,
    MixedPrecisionStep,
    SensitivityRow,
    greedy_mixed_precision,
    sensitivity,
)
from aslquant.analysis.simulate import (
    POINTS,
    ErrorSplit,
    PointDiagnosis,
    PointDiagnostics,
    QuantPoint,
    QuantSim,
    SimPlan,
    SimulatorCheck,
    check_simulator,
    diagnose_points,
)

__all__ = [
    "BITS",
    "DEFAULT_BITS",
    "LAYER_IMAGES",
    "POINTS",
    "VARIANT_IMAGES",
    "BitSweepRow",
    "ErrorSplit",
    "FakeQuantResult",
    "Histogram",
    "LayerError",
    "LayerQuant",
    "MixedPrecision",
    "MixedPrecisionStep",
    "PointDiagnosis",
    "PointDiagnostics",
    "QParams",
    "QuantPoint",
    "QuantSim",
    "QuantizedLayers",
    "RunAnalysis",
    "Score",
    "SensitivityRow",
    "SimPlan",
    "SimulatorCheck",
    "bit_sweep",
    "check_simulator",
    "diagnose_points",
    "fake_quantize",
    "greedy_mixed_precision",
    "inspect_quantized",
    "layer_errors",
    "layer_histogram",
    "report_value",
    "sensitivity",
    "sqnr_db",
]


def report_value(value: Any) -> Any:
    """A typed analysis result as report.json holds it: ``to_dict()`` of a result, a list of
    them for a sequence of rows; anything else unchanged."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, list | tuple):
        return [report_value(v) for v in value]
    return value
