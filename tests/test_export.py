"""Exports reload and reproduce their model's predictions; ONNX Runtime measured in-process."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from aslquant import export
from aslquant.data import Preprocess
from aslquant.engine_lock import engine_session
from aslquant.run import execute
from tests.test_analysis import demo_config

pytestmark = pytest.mark.slow  # quantize, export every file and time ONNX Runtime: ~5 s


@pytest.fixture(scope="module")
def run():
    """An untimed run (nothing here reads its torch latency) at 96 px: what is checked is
    how faithfully each file reproduces its model, which holds at any input size (ONNX INT8
    vs FP32: SQNR 36 dB at 96 px, 34 dB at 224), at a fifth of the cost."""
    config = demo_config(eval_images=58, calib_images=32)
    return execute(dataclasses.replace(config, preprocess=Preprocess(input_size=96)), timed=False)


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    return export.export_models(run, tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def files(exported):
    return exported.files


@pytest.fixture(scope="module")
def batch(run):
    return run.calibration[:6]


def test_all_five_files_written(files, exported, run):
    assert set(files) == {"packed", "torchscript", "lite", "onnx_fp32", "onnx_int8"}
    # The size every page reports is the size of a file the user can download.
    assert files["packed"].stat().st_size == run.int8.size_bytes
    for path in files.values():
        assert path.is_file() and path.stat().st_size > 10_000
    assert files["lite"].suffix == ".ptl" and files["torchscript"].suffix == ".pt"
    assert any("ExecuTorch" in note for note in exported.notes)
    assert not any("ExecuTorch" in note for note in run.notes)  # the run itself is unchanged
    # INT8 files are much smaller than the FP32 ONNX file.
    assert files["onnx_int8"].stat().st_size * 3 < files["onnx_fp32"].stat().st_size


def _assert_same(logits: torch.Tensor, expected: torch.Tensor, atol: float) -> None:
    assert torch.equal(logits.argmax(1), expected.argmax(1))
    assert torch.allclose(logits, expected, atol=atol), float((logits - expected).abs().max())


def test_torchscript_reloads_and_reproduces(files, run, batch):
    expected = run.quantized(batch)
    with engine_session(run.quantized.backend), torch.inference_mode():
        loaded = torch.jit.load(str(files["torchscript"]))
        _assert_same(loaded(batch), expected, atol=1e-5)


def test_lite_interpreter_reloads_and_reproduces(files, run, batch):
    from torch.jit.mobile import _load_for_lite_interpreter

    expected = run.quantized(batch)
    with engine_session(run.quantized.backend), torch.inference_mode():
        loaded = _load_for_lite_interpreter(str(files["lite"]))
        _assert_same(loaded(batch), expected, atol=1e-5)


def test_onnx_fp32_reproduces_torch_with_dynamic_batch(files, run, batch):
    session = export.ort_session(files["onnx_fp32"], threads=1)
    with torch.inference_mode():
        expected = run.fp32_model(batch)
    for n in (1, len(batch)):
        got = torch.from_numpy(export.ort_run(session, batch[:n].numpy()))
        _assert_same(got, expected[:n], atol=1e-3)


def test_onnx_int8_is_quantized_and_close_to_fp32(files, run, batch):
    import onnx

    model = onnx.load(str(files["onnx_int8"]))
    ops = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    session = export.ort_session(files["onnx_int8"], threads=1)
    got = export.ort_run(session, batch.numpy())
    again = export.ort_run(export.ort_session(files["onnx_int8"], threads=2), batch.numpy())
    assert np.array_equal(got.argmax(1), again.argmax(1))  # reloads to the same predictions
    with torch.inference_mode():
        ref = run.fp32_model(batch).numpy()
    sqnr = 10 * np.log10((ref**2).sum() / ((got - ref) ** 2).sum())
    assert sqnr > 15, sqnr
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 5 / 6


def test_onnx_compare_measures_both_models(run, tmp_path):
    out = export.onnx_compare(run, out_dir=tmp_path)
    assert out["n_eval"] == run.n_eval and out["threads"] == run.threads
    for key in ("fp32", "int8"):
        row = out[key]
        assert 0 <= row["accuracy"] <= row["top5"] <= 1
        assert set(row["latency_ms"]) == {"b1_p50", "b1_p95", "b32_p50", "b32_p95"}
        assert 0 < row["latency_ms"]["b1_p50"] <= row["latency_ms"]["b1_p95"]
        assert row["latency_ms"]["b32_p50"] > row["latency_ms"]["b1_p50"]
        assert row["size_bytes"] == (tmp_path / export.FILE_NAMES[f"onnx_{key}"]).stat().st_size
    # The FP32 ONNX model is the torch model: same top-1 on (almost) every image.
    assert out["fp32"]["agreement_with_torch"] >= 0.99
    assert out["fp32"]["accuracy"] == pytest.approx(run.fp32.accuracy, abs=0.02)
    assert out["int8"]["agreement_with_torch"] >= 0.85
