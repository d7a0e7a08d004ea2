"""Runtime parity: shipped files against the validated models, on real exports of the demo."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from aslquant import data as data_mod
from aslquant import export, parity
from aslquant.data import Preprocess
from aslquant.errors import InputError
from aslquant.labels import load_labels
from aslquant.measure import fp32_runner
from aslquant.model import load_checkpoint
from aslquant.recipe import QuantRecipe
from aslquant.run import DEMO_CHECKPOINT, DEMO_DATA, DEMO_LABELS, RunConfig, execute

#: 96 px keeps every runtime fast; the demo network accepts it (MIN_INPUT_SIZE is 68).
SMALL = Preprocess(input_size=96)
#: A deployment that forgot to scale pixels to 0..1 (ToTensor) and one that feeds BGR.
UNSCALED = dataclasses.replace(SMALL, scale=255)
BGR = dataclasses.replace(SMALL, bgr=True)


def small_config(**recipe) -> RunConfig:
    return RunConfig(eval_images=58, threads=1, preprocess=SMALL, recipe=QuantRecipe(**recipe))


# --- fast: compare_runtimes on the FP32 demo model ----------------------------------------------


@pytest.fixture(scope="module")
def demo_items():
    names = load_labels(str(DEMO_LABELS))
    items = data_mod.load_image_set(str(DEMO_DATA), names).items
    return names, data_mod.sample(items, 29, seed=0)


@pytest.fixture(scope="module")
def fp32_model(demo_items):
    names, _ = demo_items
    return load_checkpoint(str(DEMO_CHECKPOINT), num_labels=len(names))


def _runner(module):
    def run(x):
        with torch.inference_mode():
            return module(x).numpy()

    return run


def _fp32_runtimes(model, planted: Preprocess | None = None):
    run = _runner(fp32_runner(model))
    return [
        parity.Runtime("a", "model", run),
        parity.Runtime("b", "the same model again", run, reference="a"),
        parity.Runtime("c", "the same model, other preprocessing", run, "a", preprocess=planted),
    ]


def test_a_model_compared_with_itself_agrees_everywhere(demo_items, fp32_model):
    names, items = demo_items
    step = parity.OutputStep(0.5, "a step of 0.5 for the test")
    result = parity.compare_runtimes(_fp32_runtimes(fp32_model), items, SMALL, names, step=step)
    assert result.n_images == len(items) == 29
    assert result.produced == ["a", "b", "c"]
    for check in result.shipped:
        assert check.agreement.estimate == 1.0 and check.images == ()
        assert check.max_abs_logit == 0.0 and check.max_steps == 0.0
        assert check.disagreement_pct.estimate == 0.0
    assert (result.matrix().values == 100.0).all()
    again = parity.compare_runtimes(_fp32_runtimes(fp32_model), items, SMALL, names, step=step)
    assert {**again.to_dict(), "seconds": 0} == {**result.to_dict(), "seconds": 0}  # deterministic


def test_planted_preprocessing_difference_is_found_with_its_images(demo_items, fp32_model):
    names, items = demo_items
    step = parity.OutputStep(None, "float logits")
    result = parity.compare_runtimes(
        _fp32_runtimes(fp32_model, planted=BGR), items, SMALL, names, step=step
    )
    clean, planted = result.check("b"), result.check("c")
    assert clean.images == () and clean.agreement.estimate == 1.0
    assert planted.disagreeing > 0 and planted.agreement.estimate < 1.0
    # Each listed image really is one where the two runtimes' top-1 differ.
    top = result.top1
    listed = [image.index for image in planted.images]
    assert listed == list(np.nonzero(top["a"] != top["c"])[0])
    for image in planted.images:
        assert image.runtime_top1 != image.reference_top1
        assert image.path == items[image.index].path and image.max_abs_logit_diff > 0
    assert planted.max_steps is None and planted.max_abs_logit > 0
    assert result.status("c").preprocess == BGR.to_dict()
    assert result.status("b").preprocess is None
    assert parity.runtime_gate(result, 0).failed


def test_parity_items_are_a_class_stratified_subset(demo_items):
    _, items = demo_items
    chosen, subset = parity.parity_items(items, 10, seed=0)
    assert len(chosen) == 10 and len({i.label for i in chosen}) == 10
    assert chosen == parity.parity_items(items, 10, seed=0)[0]
    assert "10 of 29" in subset and "class-stratified" in subset
    assert parity.parity_items(items, None) == (items, "all 29 evaluation images")
    with pytest.raises(InputError, match="parity images"):
        parity.parity_items(items, 0)


# --- slow: the real exports of a static run ------------------------------------------------------


@pytest.fixture(scope="module")
def run():
    return execute(small_config(calib_images=32), timed=False)


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    return export.export_models(run, tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def clean(run, tmp_path_factory):
    work = tmp_path_factory.mktemp("parity-work")
    result = parity.runtime_parity(run, work)
    assert list(work.iterdir()) == []  # the temporary exports are removed
    return result


@pytest.mark.slow
def test_exports_of_a_static_run_match_the_validated_models(run, clean):
    assert clean.produced == list(parity.RUNTIMES) and clean.not_produced == []
    assert clean.n_images == run.n_eval == 58 and clean.threads == 1
    # The TorchScript and lite files are the quantized model itself: same integers, same logits.
    for name in (parity.TORCHSCRIPT, parity.LITE):
        check = clean.check(name)
        assert check.reference == parity.TORCH_QUANTIZED
        assert check.agreement.estimate == 1.0 and check.max_abs_logit == 0.0
    fp32 = clean.check(parity.ONNX_FP32)
    assert fp32.reference == parity.TORCH_FP32 and fp32.max_abs_logit < 1e-3
    # ONNX Runtime's INT8 is calibrated on its own (MinMax, per-channel QDQ): close, not equal.
    int8 = clean.check(parity.ONNX_INT8)
    assert int8.agreement.estimate >= 0.85 and int8.max_abs_logit > 0
    assert clean.step.scale == pytest.approx(run.quantized.module.fc2.scale)
    assert "fc2" in clean.step.source
    assert int8.max_steps == pytest.approx(int8.max_abs_logit / clean.step.scale)
    assert int8.p99_steps <= int8.max_steps
    # The torch models agree with the run's own predictions on the same images.
    assert np.array_equal(clean.top1[parity.TORCH_QUANTIZED], run.evaluation.quant.top1)
    assert np.array_equal(clean.top1[parity.TORCH_FP32], run.evaluation.fp32.top1)
    assert {s.size_bytes > 10_000 for s in clean.runtimes if s.name in parity.REFERENCES} == {True}
    json.dumps(clean.to_dict())
    verdict = parity.runtime_gate(clean, 50)
    assert not verdict.failed and "ONNX Runtime int8.onnx" in verdict.reason


@pytest.mark.slow
def test_planted_preprocessing_in_shipped_files_is_found(run, exported):
    """The issue's "Done when": an export path given other preprocessing is caught."""
    result = parity.runtime_parity(
        run,
        files=exported.files,
        preprocess={parity.LITE: UNSCALED, parity.ONNX_FP32: BGR},
    )
    lite, onnx_fp32 = result.check(parity.LITE), result.check(parity.ONNX_FP32)
    torchscript = result.check(parity.TORCHSCRIPT)
    assert torchscript.images == ()  # the same file family, fed correctly, still agrees
    # 0..255 input saturates the quantized model's input scale: almost every answer changes.
    assert lite.disagreement_pct.estimate > 50 and lite.disagreeing == len(lite.images)
    assert onnx_fp32.disagreeing > 0
    for check in (lite, onnx_fp32):
        for image in check.images:
            assert image.runtime_top1 != image.reference_top1 and image.display
    assert result.status(parity.LITE).preprocess == UNSCALED.to_dict()
    assert result.status(parity.LITE).file == str(exported.files["lite"])  # the given file
    verdict = parity.runtime_gate(result, 5)
    assert verdict.failed and verdict.outcome == "fail beyond uncertainty"
    assert "quantized.ptl" in verdict.reason


@pytest.mark.slow
def test_runs_without_calibration_list_int8_onnx_as_not_produced():
    run = execute(small_config(method="dynamic"), timed=False)
    result = parity.runtime_parity(run, images=29)
    missing = {s.name: s.reason for s in result.not_produced}
    assert list(missing) == [parity.ONNX_INT8]
    assert "calibration" in missing[parity.ONNX_INT8] and "dynamic" in missing[parity.ONNX_INT8]
    assert result.step.scale is None and "dynamically quantized" in result.step.source
    assert all(c.max_steps is None for c in result.shipped)
    assert parity.ONNX_INT8 not in result.matrix().index
    assert "int8.onnx" in parity.runtime_gate(result, 50).reason  # named as not checked


def test_gate_refuses_a_threshold_outside_0_to_100():
    empty = parity.Parity((), 0, "", {}, {}, (), parity.OutputStep(None, ""), 1, 0.0)
    for bad in (-1, 101, "5"):
        with pytest.raises(InputError, match="--max-runtime-disagreement"):
            parity.runtime_gate(empty, bad)
    with pytest.raises(InputError, match="no shipped file"):
        parity.runtime_gate(empty, 5)
