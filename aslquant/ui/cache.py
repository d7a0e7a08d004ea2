"""Cached engine calls for the dashboard, process-wide and keyed by content hashes.

Cheap loaders (model, labels, image listing, thumbnails) use Streamlit's caches; they draw
nothing. Heavy work (runs, analyses, exports) are jobs of ``aslquant.service``: computed once
whichever session asks, returning plain values; each page follows a job with its own progress
bar (``widgets.follow``), so a result computed for one session is simply shown in another.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from aslquant import service
from aslquant.baselines import STORE
from aslquant.data import ImageSet, load_image_set, open_image
from aslquant.data import sha256_file as data_sha256_file
from aslquant.errors import InputError
from aslquant.jobs import Job
from aslquant.labels import load_labels
from aslquant.model import CustomCNN, layer_table, load_checkpoint
from aslquant.run import RunConfig, RunResult, load_inputs
from aslquant.ui.session import Source, default_recipe, session_id, source


def sha256_file(path: str | Path) -> str:
    if not Path(path).is_file():
        raise InputError(f"{path}: file not found")
    return data_sha256_file(path)


@st.cache_resource(max_entries=8, show_spinner=False)
def _model_and_labels(
    checkpoint_sha: str, labels_sha: str, _checkpoint: str, _labels: str
) -> tuple[CustomCNN, list[str]]:
    names = load_labels(_labels)
    return load_checkpoint(_checkpoint, num_labels=len(names)), names


def model_and_labels(src: Source) -> tuple[CustomCNN, list[str]]:
    """The FP32 model and class names of ``src`` (cached by content hash; do not mutate)."""
    return _model_and_labels(
        sha256_file(src.checkpoint), sha256_file(src.labels), src.checkpoint, src.labels
    )


@st.cache_data(max_entries=16, show_spinner=False)
def _layer_table(checkpoint_sha: str, labels_sha: str, input_size: int, _src: Source) -> list:
    model, _ = model_and_labels(_src)
    return layer_table(model, input_size)


def model_card(src: Source) -> list[dict]:
    """Per-layer type, shapes, parameters, MACs and FP32 bytes at the source's input size."""
    return _layer_table(
        sha256_file(src.checkpoint), sha256_file(src.labels), src.preprocess.input_size, src
    )


@st.cache_resource(max_entries=8, ttl=300, show_spinner=False)
def _image_set(data: str, class_names: tuple[str, ...]) -> ImageSet:
    return load_image_set(data, list(class_names))


def image_set(src: Source) -> ImageSet:
    """The labelled images of ``src`` (re-scanned at most every 5 minutes)."""
    _, names = model_and_labels(src)
    return _image_set(src.data, tuple(names))


@st.cache_data(max_entries=4096, show_spinner=False)
def thumbnail(path: str, size: int = 112):
    """A small RGB thumbnail of an image on disk, decoded by the engine's safe loader."""
    img = open_image(path)
    img.thumbnail((size, size))
    return img


# --- runs ----------------------------------------------------------------------------------------


def prefetch_baseline(src: Source | None = None) -> None:
    """Start measuring the FP32 side of the session's model, images and last recipe.

    Cheap (hashes and a file listing); once per source and recipe in a session, and again if
    the store has since dropped that baseline or cancelled its work (other sessions' models and
    image sets take its place): else its ONNX Runtime figures would stay pending. Background
    work for models and images no session uses any more is cancelled.
    """
    src = src or source()
    config = src.config(default_recipe())
    asked = st.session_state.get("aslquant_prefetched")
    if asked is not None and asked[0] == config and STORE.holds(asked[1]):
        return
    try:
        inputs = load_inputs(config)
        STORE.prefetch(config, inputs, owner=session_id())
    except InputError:
        return  # the pages report bad inputs themselves
    st.session_state["aslquant_prefetched"] = (config, inputs.fp32_key)


def start_run(config: RunConfig) -> tuple[str, Job[RunResult]]:
    """(run key, job) for ``config``: a running or finished job is joined, not repeated."""
    inputs = load_inputs(config)
    return inputs.key, service.run_job(config, inputs)


def onnx_fp32(result: RunResult) -> dict | None:
    """ONNX Runtime FP32 figures of the run's model: a dict, {"error": ...}, or None (pending).

    If the store has dropped the run's baseline or cancelled its ONNX work since the run (other
    sessions' models and images took its place), it is handed back to be measured: else an
    older run's card would stay pending.
    """
    if result.baseline is None:
        return None
    if not STORE.holds(result.baseline.key):
        try:
            STORE.adopt(result.baseline, result.config, load_inputs(result.config))
        except InputError:
            return None  # its files changed or went away: nothing to measure it on
    return STORE.onnx_fp32(result.baseline.key)


# --- analyses and exports of a run ----------------------------------------------------------------


@st.cache_resource(max_entries=16, show_spinner=False)
def _run_analysis(key: str, _result: RunResult):
    from aslquant import analysis

    return analysis.RunAnalysis(_result)


def run_analysis(result: RunResult):
    """One explicit analysis state per run (histograms reuse the per-layer pass), shared by
    sessions; it computes values only and never changes the run."""
    return _run_analysis(result.key, result)


def _rows(values) -> list[dict]:
    return [row.to_dict() for row in values]


def layer_errors(result: RunResult) -> Job:
    state = run_analysis(result)
    return service.analysis_job(
        "layers", result, None, lambda progress: _rows(state.layers(progress=progress))
    )


def layer_histogram(result: RunResult, layer: str, kind: str) -> Job:
    state = run_analysis(result)
    return service.analysis_job(
        "histogram",
        result,
        [layer, kind],
        lambda progress: state.histogram(layer, kind).to_dict(),
    )


def sensitivity(result: RunResult) -> Job:
    from aslquant import analysis

    return service.analysis_job(
        "sensitivity",
        result,
        None,
        lambda progress: _rows(analysis.sensitivity(result, progress=progress)),
    )


def greedy(result: RunResult, target: float) -> Job:
    from aslquant import analysis

    return service.analysis_job(
        "greedy",
        result,
        target,
        lambda progress: analysis.greedy_mixed_precision(
            result, target, progress=progress
        ).to_dict(),
    )


def bit_sweep(result: RunResult) -> Job:
    from aslquant import analysis

    state = run_analysis(result)
    return service.analysis_job(
        "bit_sweep",
        result,
        None,
        lambda progress: _rows(analysis.bit_sweep(state, progress=progress)),
    )


def config_sweep(result: RunResult, grid: dict) -> Job:
    from aslquant import experiments

    return service.analysis_job(
        "sweep",
        result,
        grid,
        lambda progress: _rows(experiments.config_sweep(result.config, grid, progress=progress)),
    )


def onnx_compare(result: RunResult) -> Job:
    from aslquant import export

    return service.analysis_job(
        "onnx", result, None, lambda progress: export.onnx_compare(result, progress=progress)
    )


def _export_root() -> Path:
    from aslquant.runtime import cache_root

    return cache_root() / "exports"


def export_files(result: RunResult) -> Job:
    """Exported model files of a run: {kind: (file name, bytes)} and notes, once per run key."""
    from aslquant import export

    def compute(progress) -> dict:
        out = _export_root() / result.key
        out.mkdir(parents=True, exist_ok=True)
        exported = export.export_models(result, out)
        files = {name: (p.name, p.read_bytes()) for name, p in exported.files.items()}
        return {"files": files, "notes": list(exported.notes)}

    return service.analysis_job("export", result, None, compute)


def report_texts(result: RunResult, layers: list, onnx: dict | None) -> dict:
    """report.json / report.md / report.html of a run as text (from the same writers the CLI
    uses, with the per-layer analysis and ONNX numbers when given)."""
    from aslquant.report import report_dict, run_report_texts

    sections = {"layers": layers}
    if onnx is not None:
        sections["onnx"] = onnx
    return run_report_texts(report_dict(result, sections))


def doctor(result: RunResult, target_drop: float | None, seeds: int) -> Job:
    """The doctor's examination of a run's recipe (shared across sessions by its job)."""
    from aslquant import doctor as doctor_mod

    return service.analysis_job(
        "doctor",
        result,
        [target_drop, seeds],
        lambda progress: doctor_mod.examine(
            result.config, target_drop, seeds=seeds, progress=progress, fp32=result.baseline
        ),
    )


def time_breakdown(result: RunResult) -> Job:
    """Per-layer time of both models and why INT8 is faster or slower on this CPU."""
    from aslquant.profiling import explain_speed
    from aslquant.profiling import time_breakdown as breakdown_of

    def compute(progress) -> dict:
        breakdown = breakdown_of(result, progress=progress)
        return {"breakdown": breakdown.to_dict(), "explanation": list(explain_speed(breakdown))}

    return service.analysis_job("breakdown", result, None, compute)


def threads_batch(result: RunResult) -> Job:
    from aslquant.profiling import threads_batch_table

    return service.analysis_job(
        "threads_batch",
        result,
        None,
        lambda progress: threads_batch_table(result, progress=progress).to_dict(),
    )


def runtime_parity(result: RunResult) -> Job:
    from aslquant.parity import runtime_parity as parity_of

    def compute(progress) -> dict:
        folder = _export_root() / result.key / "parity"
        folder.mkdir(parents=True, exist_ok=True)
        return parity_of(result, folder, progress=progress).to_dict()

    return service.analysis_job("parity", result, None, compute)


def ship_check(result: RunResult, seeds: int) -> Job:
    """Everything the Ship check judges: calibration luck, robustness, runtime parity, margins."""
    from aslquant.calibration_study import seed_spread_of
    from aslquant.margins import flip_margins
    from aslquant.parity import runtime_parity as parity_of
    from aslquant.robustness import robustness_split

    def compute(progress) -> dict:
        def part(name: str, lo: float, hi: float):
            return lambda stage, f: progress(f"{name}: {stage}", lo + (hi - lo) * f)

        spread = seed_spread_of(
            result.config, seeds, progress=part("calibration seeds", 0.0, 0.3),
            baseline=result.baseline,
        )  # fmt: skip
        robust = robustness_split(result, progress=part("robustness", 0.3, 0.8))
        folder = _export_root() / result.key / "parity"
        folder.mkdir(parents=True, exist_ok=True)
        parity = parity_of(result, folder, progress=part("runtime parity", 0.8, 1.0))
        return {
            "seed_spread": spread,
            "robustness": robust,
            "parity": parity,
            "margins": flip_margins(result.evaluation),
        }

    return service.analysis_job("ship", result, seeds, compute)


def calibration_study(result: RunResult) -> Job:
    from aslquant.calibration_study import calibration_size_study

    return service.analysis_job(
        "calibration_study",
        result,
        None,
        lambda progress: calibration_size_study(
            result.config, progress=progress, baseline=result.baseline
        ),
    )
