"""Exports of a run's models, and the ONNX ones measured through ONNX Runtime.

* ``quantized.pt``: TorchScript of the quantized model (``torch.jit.load`` reloads it).
* ``quantized.ptl``: the same for PyTorch Mobile's lite interpreter. Deprecated by PyTorch in
  favour of ExecuTorch; kept because existing Android/iOS apps still load it.
* ``fp32.onnx``: the float model through ``torch.onnx.export`` (the torch.export-based
  exporter, dynamic batch dimension, one self-contained file).
* ``int8.onnx``: that file quantized by ``onnxruntime.quantization.quantize_static`` (QDQ,
  per-channel weights) calibrated on the run's own calibration images.
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from aslquant.engine_lock import engine_session
from aslquant.errors import InputError
from aslquant.qmodules import portable_copy
from aslquant.serialize import save_packed

Progress = Callable[[str, float], None]

LITE_DEPRECATION = (
    "the .ptl lite-interpreter format is deprecated by PyTorch in favour of ExecuTorch; "
    "use it only for apps that still ship the PyTorch Mobile runtime"
)

FILE_NAMES = {
    "packed": "quantized.packed.pt",
    "torchscript": "quantized.pt",
    "lite": "quantized.ptl",
    "onnx_fp32": "fp32.onnx",
    "onnx_int8": "int8.onnx",
}

INPUT_NAME, OUTPUT_NAME = "input", "logits"


def _stage(progress: Progress | None, stage: str, fraction: float) -> None:
    if progress:
        progress(stage, min(1.0, max(0.0, fraction)))


def _out_dir(out_dir: str | Path) -> Path:
    path = Path(out_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(
            f"{out_dir}: cannot create export folder ({err.strerror or err})"
        ) from None
    return path


def _example(result, batch: int = 1) -> torch.Tensor:
    """Real images when the run has calibration images (tracing sees realistic values)."""
    s = result.config.preprocess.input_size
    calibration = result.calibration  # decoded on access in RunResult: read it once
    if len(calibration) >= batch:
        return calibration[:batch].clone()
    return torch.zeros(batch, 3, s, s)


def script_quantized(result) -> torch.jit.ScriptModule:
    """TorchScript of the run's quantized model (scripted; traced where scripting fails)."""
    from aslquant import methods

    qm = result.quantized
    if not qm.recipe.method_spec.scriptable:
        raise InputError(
            f"TorchScript export is not available for method {qm.recipe.method} (a "
            "torch.compile'd graph); choose "
            + ", ".join(methods.names(lambda m: m.scriptable))
        )
    module = portable_copy(qm.module)
    with engine_session(qm.backend), torch.inference_mode():
        try:
            return torch.jit.script(module)
        except Exception:  # FX GraphModules and some wrappers only trace
            return torch.jit.trace(module, _example(result))


def export_torchscript(result, path: Path) -> Path:
    scripted = script_quantized(result)
    torch.jit.save(scripted, str(path))
    return path


def export_lite(result, path: Path) -> tuple[Path, list[str]]:
    """Lite-interpreter file. ``optimize_for_mobile`` needs XNNPACK; without it, unoptimized."""
    notes = [LITE_DEPRECATION]
    scripted = script_quantized(result)
    try:
        from torch.utils.mobile_optimizer import optimize_for_mobile

        with engine_session(result.quantized.backend):
            scripted = optimize_for_mobile(scripted)
    except RuntimeError as err:
        if "XNNPACK" not in str(err):
            raise
        notes.append("optimize_for_mobile skipped: this torch build has no XNNPACK")
    with warnings.catch_warnings():
        # The deprecation is reported once, in our own words, in the notes.
        warnings.filterwarnings("ignore", message=r".*Lite Interpreter is deprecated.*")
        scripted._save_for_lite_interpreter(str(path))
    return path, notes


@contextlib.contextmanager
def _quiet_onnx_exporter():
    """The exporter logs that torchvision ops are skipped: irrelevant for this model."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
            yield
    finally:
        logger.setLevel(level)


def export_onnx_fp32(result, path: Path) -> Path:
    """The FP32 model as ONNX with a dynamic batch dimension, weights inside the file."""
    # batch 2: torch.export specialises a size-1 dimension
    return _export_fp32(result.fp32_model.eval(), _example(result, 2), path)


def _export_fp32(model: torch.nn.Module, example: torch.Tensor, path: Path) -> Path:
    with _quiet_onnx_exporter(), torch.no_grad():
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamo=True,
            dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}},
            external_data=False,
            verbose=False,
            optimize=True,
        )
    return path


class _CalibrationReader:
    """onnxruntime CalibrationDataReader over the run's calibration tensor."""

    def __init__(self, calibration: torch.Tensor, batch_size: int = 16) -> None:
        self._batches = [b.numpy() for b in torch.split(calibration, batch_size)]
        self._i = 0

    def get_next(self) -> dict | None:
        if self._i >= len(self._batches):
            return None
        batch = self._batches[self._i]
        self._i += 1
        return {INPUT_NAME: batch}

    def rewind(self) -> None:
        self._i = 0


def export_onnx_int8(result, fp32_path: Path, path: Path) -> Path:
    """ONNX Runtime static INT8 (QDQ, per-channel weights) calibrated on the run's images."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calibration = result.calibration
    if len(calibration) == 0:
        raise InputError(
            "ONNX INT8 needs calibration images; this run has none (method "
            f"{result.quantized.recipe.method}); use a static, fx or qat recipe"
        )
    reader = _CalibrationReader(calibration[: result.quantized.recipe.calib_images])
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(path),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    return path


@dataclass(frozen=True)
class Exported:
    """The files an export wrote ({kind: path}) and what the user should know about them."""

    files: dict[str, Path]
    notes: tuple[str, ...]


def export_models(result, out_dir: str | Path) -> Exported:
    """Write the packed state_dict, .pt, .ptl, FP32 .onnx and INT8 .onnx; return their paths.

    INT8 ONNX needs calibration images, so runs without them (dynamic, fp16) skip it. The notes
    (the .ptl deprecation, skipped steps) are returned, never added to the run: a run shown in
    one browser session must not change because another session exported it.
    """
    out = _out_dir(out_dir)
    files: dict[str, Path] = {}
    # The file whose size the reports show (aslquant.serialize): reload it with
    # load_packed + unpack_state_dict into a model quantized with the same recipe.
    files["packed"] = save_packed(result.quantized.module, out / FILE_NAMES["packed"])
    files["torchscript"] = export_torchscript(result, out / FILE_NAMES["torchscript"])
    files["lite"], notes = export_lite(result, out / FILE_NAMES["lite"])
    files["onnx_fp32"] = export_onnx_fp32(result, out / FILE_NAMES["onnx_fp32"])
    if result.n_calib > 0:
        files["onnx_int8"] = export_onnx_int8(
            result, files["onnx_fp32"], out / FILE_NAMES["onnx_int8"]
        )
    else:
        notes.append(
            f"int8.onnx not written: method {result.quantized.recipe.method} has no "
            "calibration images for onnxruntime's quantize_static"
        )
    return Exported(files, tuple(dict.fromkeys(notes)))


# --- ONNX Runtime ----------------------------------------------------------------------------


def ort_session(path: str | Path, threads: int):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads (like torch's runs)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_run(session, x: np.ndarray) -> np.ndarray:
    return session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def _ort_latency(
    session, input_size: int, threads: int, runs: int, guard=engine_session
) -> dict[str, float]:
    from aslquant.measure import latency_stats, time_calls

    out: dict[str, float] = {}
    generator = torch.Generator().manual_seed(0)
    for batch in (1, 32):
        x = torch.rand(batch, 3, input_size, input_size, generator=generator).numpy()
        # torch's thread setting does not affect ORT (its own pool is sized by the session).
        times = time_calls(lambda a, s=session: ort_run(s, a), x, runs, guard=guard)
        stats = latency_stats(times)
        out[f"b{batch}_p50"] = stats["p50"]
        out[f"b{batch}_p95"] = stats["p95"]
    return out


def ort_fp32_baseline(
    model: torch.nn.Module, input_size: int, threads: int, runs: int, guard=engine_session
) -> dict:
    """ONNX Runtime on the FP32 model: the fastest FP32 a user has, so the second baseline
    every speed-up is shown against. Exported (dynamo) to a temporary file, then timed like
    torch: ``runs`` calls after warm-up at batch 1 and 32, ``threads`` intra-op threads.
    ``guard`` is entered around the export and each timed call (default: the engine lock).
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / FILE_NAMES["onnx_fp32"]
        example = torch.zeros(2, 3, input_size, input_size)
        with guard():  # torch.export must not interleave with another session's work
            _export_fp32(model.eval(), example, path)
        session = ort_session(path, threads)
        latency = _ort_latency(session, input_size, threads, runs, guard)
        import onnxruntime as ort

        return {
            "latency_ms": latency,
            "size_bytes": int(path.stat().st_size),
            "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider",
            "threads": threads,
        }


def onnx_compare(
    result, out_dir: str | Path | None = None, progress: Progress | None = None
) -> dict:
    """Export FP32 and INT8 ONNX models and measure both through ONNX Runtime, in this process.

    Accuracy and top-5 on the run's evaluation images (the same ones torch was measured on),
    agreement of top-1 with the matching torch model (FP32 with torch FP32, INT8 with the
    run's quantized model), file size, and latency at batch 1 and 32 (p50/p95 over the run's
    ``latency_runs`` calls after warm-up) with intra-op threads = the run's threads.
    """
    from aslquant import data as data_mod

    tmp = None
    if out_dir is None:
        tmp = tempfile.TemporaryDirectory()
        out = Path(tmp.name)
    else:
        out = _out_dir(out_dir)
    try:
        _stage(progress, "ONNX export", 0.0)
        fp32_path = export_onnx_fp32(result, out / FILE_NAMES["onnx_fp32"])
        _stage(progress, "ONNX export", 0.5)
        paths = {"fp32": fp32_path}
        skipped_int8 = None
        if result.n_calib > 0:
            paths["int8"] = export_onnx_int8(result, fp32_path, out / FILE_NAMES["onnx_int8"])
        else:  # dynamic / fp16 runs load no calibration images; never calibrate on eval ones
            skipped_int8 = (
                f"ONNX INT8 skipped: method {result.quantized.recipe.method} has no calibration "
                "images; run a static, fx or qat recipe for it"
            )
        _stage(progress, "ONNX export", 1.0)
        threads = result.threads
        sessions = {key: ort_session(path, threads) for key, path in paths.items()}
        ev = result.evaluation
        items = [
            data_mod.LabeledImage(p, d, int(label))
            for p, d, label in zip(ev.paths, ev.displays, ev.labels, strict=True)
        ]
        tops: dict[str, list[np.ndarray]] = {key: [] for key in sessions}
        seen = 0
        for batch in data_mod.iter_batches(items, result.config.preprocess, batch_size=32):
            x = batch.x.numpy()
            for key, session in sessions.items():
                logits = ort_run(session, x)
                tops[key].append(np.argsort(-logits, axis=1)[:, :5])
            seen += len(batch.items)
            _stage(progress, "ONNX Runtime evaluation", seen / max(1, len(items)))
        labels = ev.labels[:seen]
        out_rows: dict = {}
        for key, path in paths.items():
            top5 = np.concatenate(tops[key]) if tops[key] else np.zeros((0, 5), int)
            torch_top1 = (ev.fp32 if key == "fp32" else ev.quant).top1[:seen]
            _stage(progress, f"timing ONNX {key}", 0.0)
            lat = _ort_latency(
                sessions[key],
                result.config.preprocess.input_size,
                threads,
                result.config.latency_runs,
            )
            _stage(progress, f"timing ONNX {key}", 1.0)
            n = max(1, len(labels))
            out_rows[key] = {
                "accuracy": float((top5[:, 0] == labels).sum() / n) if len(labels) else math.nan,
                "top5": float((top5 == labels[:, None]).any(axis=1).sum() / n)
                if len(labels)
                else math.nan,
                "size_bytes": int(path.stat().st_size),
                "latency_ms": lat,
                "agreement_with_torch": float((top5[:, 0] == torch_top1).mean())
                if len(labels)
                else math.nan,
                "file": path.name if tmp is not None else str(path),
            }
        import onnxruntime as ort

        out_rows["runtime"] = f"onnxruntime {ort.__version__} CPUExecutionProvider"
        out_rows["threads"] = threads
        out_rows["n_eval"] = int(seen)
        out_rows["int8_method"] = "quantize_static QDQ, per-channel QInt8 weights, QUInt8 MinMax"
        if skipped_int8:
            out_rows["int8"] = None
            out_rows["note"] = skipped_int8
        return out_rows
    finally:
        if tmp is not None:
            tmp.cleanup()
