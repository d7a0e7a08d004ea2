"""The dashboard's one door to ``st.session_state`` and to the engine's cached calls.

Per-browser state (the chosen model/data, the run history, uploads) lives in
``st.session_state`` only. Heavy work is cached process-wide with ``st.cache_resource`` /
``st.cache_data`` keyed by content hashes (the run key hashes checkpoint bytes, labels bytes,
image fingerprints and the whole config), so switching pages or reopening a run never
recomputes and nothing one session did can leak into another except identical results.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st

from aslquant.data import ImageSet, Preprocess, load_image_set, open_image
from aslquant.data import sha256_file as data_sha256_file
from aslquant.errors import InputError
from aslquant.labels import load_labels
from aslquant.model import CustomCNN, layer_table, load_checkpoint
from aslquant.recipe import QuantRecipe
from aslquant.run import (
    DEMO_CHECKPOINT,
    DEMO_DATA,
    DEMO_LABELS,
    RunConfig,
    RunResult,
    execute,
    load_inputs,
)
from aslquant.ui.baseline import STORE

if TYPE_CHECKING:
    from aslquant.analysis import (
        BitSweepRow,
        Histogram,
        LayerError,
        MixedPrecision,
        RunAnalysis,
        SensitivityRow,
    )
    from aslquant.experiments import SweepRow

log = logging.getLogger("aslquant.ui")

#: Runs kept per browser session; the oldest is dropped beyond this (the UI says so).
MAX_RUNS = 10

Progress = Callable[[str, float], None]

_SOURCE = "aslquant_source"
_RUNS = "aslquant_runs"
_CURRENT = "aslquant_current_run"
_SESSION_DIR = "aslquant_session_dir"
_COUNTER = "aslquant_run_counter"
_EVICTED = "aslquant_evicted"


# --- what the user is working on ---------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Checkpoint, labels and images (paths on this server) plus preprocessing."""

    checkpoint: str
    labels: str
    data: str
    preprocess: Preprocess = dataclasses.field(default_factory=Preprocess)
    name: str = "demo"  # shown in the sidebar: "demo" or the uploaded file names

    @property
    def is_demo(self) -> bool:
        return (self.checkpoint, self.labels, self.data) == demo_source().paths

    @property
    def paths(self) -> tuple[str, str, str]:
        return self.checkpoint, self.labels, self.data

    def config(self, recipe: QuantRecipe, eval_images: int | None = None) -> RunConfig:
        """The frozen RunConfig for this source and a recipe (engine defaults otherwise)."""
        return RunConfig(
            checkpoint=self.checkpoint,
            labels=self.labels,
            data=self.data,
            preprocess=self.preprocess,
            recipe=recipe,
            eval_images=eval_images,
        )


def demo_source() -> Source:
    """The demo in sample_data/ (the ASLQUANT_CHECKPOINT/LABELS/DATA variables may override it)."""
    return Source(
        checkpoint=os.environ.get("ASLQUANT_CHECKPOINT", str(DEMO_CHECKPOINT)),
        labels=os.environ.get("ASLQUANT_LABELS", str(DEMO_LABELS)),
        data=os.environ.get("ASLQUANT_DATA", str(DEMO_DATA)),
        name="demo",
    )


def source() -> Source:
    """This session's source; the demo until the user picks something else (zero clicks)."""
    if _SOURCE not in st.session_state:
        st.session_state[_SOURCE] = demo_source()
    return st.session_state[_SOURCE]


def set_source(new: Source) -> None:
    st.session_state[_SOURCE] = new


def session_dir() -> Path:
    """A private temp folder for this browser session's uploads and exports."""
    path = st.session_state.get(_SESSION_DIR)
    if path is None or not Path(path).is_dir():
        path = tempfile.mkdtemp(prefix="aslquant-session-")
        st.session_state[_SESSION_DIR] = path
    return Path(path)


def _safe_name(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name).strip("._") or "upload"
    return stem[:80]


def save_upload(data: bytes, name: str) -> Path:
    """Write uploaded bytes into the session folder under a content-addressed name."""
    digest = hashlib.sha256(data).hexdigest()[:16]
    target = session_dir() / "uploads" / digest / _safe_name(name)
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return target


def sha256_file(path: str | Path) -> str:
    if not Path(path).is_file():
        raise InputError(f"{path}: file not found")
    return data_sha256_file(path)


# --- cached loaders ----------------------------------------------------------------------------


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


# --- runs --------------------------------------------------------------------------------------


@dataclass
class RunEntry:
    """One quantization run in this session's history."""

    number: int
    result: RunResult
    seconds: float
    created: float

    @property
    def key(self) -> str:
        return self.result.key

    @property
    def label(self) -> str:
        return f"#{self.number} {self.result.config.recipe.describe()}"


@st.cache_resource(max_entries=12, show_spinner=False)
def _execute(
    key: str, _config: RunConfig, _inputs, _progress: Progress | None, _baseline
) -> RunResult:
    # The key hashes checkpoint/labels bytes, the data fingerprint and the whole config, so
    # sessions share a result only when every input is identical.
    return execute(_config, progress=_progress, inputs=_inputs, baseline=_baseline)


def quantize_run(config: RunConfig, progress: Progress | None = None) -> RunEntry:
    """Run (or fetch from cache) one configuration and add it to this session's history.

    The FP32 side comes from the shared baseline store when it is measured (or being
    measured) for the same model and images; otherwise this run measures it and the store
    keeps it for the next recipe.
    """
    started = time.perf_counter()
    inputs = load_inputs(config)
    baseline = _wait_for_baseline(inputs.fp32_key, progress)
    with STORE.foreground():  # background ONNX Runtime timing waits: no shared cores
        result = _execute(inputs.key, config, inputs, progress, baseline)
    if result.baseline is not None:
        STORE.adopt(result.baseline, inputs.model)
    return add_run(result, time.perf_counter() - started)


def _wait_for_baseline(key: str, progress: Progress | None):
    job = STORE.job(key)
    if job is None:
        return None
    while not job.future.done():
        if progress:
            progress("measuring the FP32 baseline", job.fraction)
        time.sleep(0.2)
    return STORE.ready(key)


def prefetch_baseline(src: Source | None = None) -> None:
    """Start measuring the FP32 baseline of the session's model, images and last recipe.

    Cheap (hashes and a file listing); done once per source and recipe in a session.
    """
    src = src or source()
    config = src.config(default_recipe())
    marker = ("aslquant_prefetched", config)
    if st.session_state.get("aslquant_prefetched") == marker:
        return
    try:
        STORE.ensure(config, load_inputs(config))
    except InputError:
        return  # the pages report bad inputs themselves
    st.session_state["aslquant_prefetched"] = marker


def runs() -> list[RunEntry]:
    """This session's runs, oldest first (at most MAX_RUNS)."""
    return st.session_state.setdefault(_RUNS, [])


def add_run(result: RunResult, seconds: float) -> RunEntry:
    history = runs()
    for entry in history:
        if entry.key == result.key:  # re-running the same inputs selects the existing entry
            st.session_state[_CURRENT] = entry.key
            return entry
    number = st.session_state.get(_COUNTER, 0) + 1
    st.session_state[_COUNTER] = number
    entry = RunEntry(number, result, seconds, time.time())
    history.append(entry)
    while len(history) > MAX_RUNS:
        dropped = history.pop(0)
        st.session_state.setdefault(_EVICTED, []).append(dropped.label)
    st.session_state[_CURRENT] = entry.key
    return entry


def evicted() -> list[str]:
    """Labels of runs dropped from the history because it holds at most MAX_RUNS."""
    return list(st.session_state.get(_EVICTED, []))


def current_run() -> RunEntry | None:
    """The run the pages show: the one picked in the sidebar, else the latest."""
    history = runs()
    if not history:
        return None
    key = st.session_state.get(_CURRENT)
    for entry in history:
        if entry.key == key:
            return entry
    return history[-1]


def set_current(key: str) -> None:
    st.session_state[_CURRENT] = key


def run_picker(where=st, label: str = "Run", key: str = "run_picker") -> RunEntry | None:
    """A selectbox over the run history, kept in step with every other run picker."""
    history = runs()
    if not history:
        return None
    keys = [e.key for e in reversed(history)]
    by_key = {e.key: e for e in history}
    # Each picker shows the current run; choosing in one updates the shared current run
    # (on_change runs before the rerun, so the other pickers see the new choice).
    st.session_state[key] = current_run().key

    def changed() -> None:
        set_current(st.session_state[key])

    chosen = where.selectbox(
        label, keys, format_func=lambda k: by_key[k].label, key=key, on_change=changed
    )
    return by_key[chosen]


# --- analysis and export, cached per run key ---------------------------------------------------


@st.cache_resource(max_entries=16, show_spinner=False)
def run_analysis(key: str, _result: RunResult) -> RunAnalysis:
    """The run's analysis state, one per run key (shared: it only adds what it computes)."""
    from aslquant import analysis

    return analysis.RunAnalysis(_result)


@st.cache_data(max_entries=64, show_spinner=False)
def layer_errors(key: str, _result: RunResult) -> tuple[LayerError, ...]:
    return run_analysis(key, _result).layers()


@st.cache_data(max_entries=256, show_spinner=False)
def layer_histogram(key: str, layer: str, kind: str, _result: RunResult) -> Histogram:
    return run_analysis(key, _result).histogram(layer, kind)


@st.cache_data(max_entries=32, show_spinner=False)
def sensitivity(
    key: str, _result: RunResult, _progress: Progress | None = None
) -> tuple[SensitivityRow, ...]:
    from aslquant import analysis

    return analysis.sensitivity(_result, progress=_progress)


@st.cache_data(max_entries=32, show_spinner=False)
def greedy(
    key: str, target: float, _result: RunResult, _progress: Progress | None = None
) -> MixedPrecision:
    from aslquant import analysis

    return analysis.greedy_mixed_precision(_result, target, progress=_progress)


@st.cache_data(max_entries=32, show_spinner=False)
def bit_sweep(
    key: str, _result: RunResult, _progress: Progress | None = None
) -> tuple[BitSweepRow, ...]:
    from aslquant import analysis

    return analysis.bit_sweep(run_analysis(key, _result), progress=_progress)


@st.cache_data(max_entries=16, show_spinner=False)
def config_sweep(
    key: str, grid_json: str, _config: RunConfig, _progress: Progress | None = None
) -> tuple[SweepRow, ...]:
    from aslquant import experiments

    return experiments.config_sweep(_config, json.loads(grid_json), progress=_progress)


@st.cache_data(max_entries=16, show_spinner=False)
def onnx_compare(key: str, _result: RunResult, _progress: Progress | None = None) -> dict:
    from aslquant import export

    return export.onnx_compare(_result, progress=_progress)


def _export_root() -> Path:
    root = os.environ.get("ASLQUANT_CACHE_DIR")
    base = Path(root) if root else Path(tempfile.gettempdir()) / "aslquant-ui"
    return base / "exports"


@st.cache_resource(max_entries=16, show_spinner=False)
def export_files(key: str, _result: RunResult) -> dict[str, tuple[str, bytes]]:
    """Exported model files of a run: {kind: (file name, bytes)}, written once per run key."""
    from aslquant import export

    out = _export_root() / key
    out.mkdir(parents=True, exist_ok=True)
    paths = export.export_models(_result, out)
    return {name: (Path(p).name, Path(p).read_bytes()) for name, p in paths.items()}


def report_for(entry: RunEntry, onnx: dict | None = None) -> dict:
    """report.json content of a run, with the per-layer analysis (and ONNX numbers if given)."""
    from aslquant import analysis
    from aslquant.report import report_dict

    # Sections are new values beside the run: the cached RunResult is shared and untouched.
    sections = {"layers": analysis.report_value(layer_errors(entry.key, entry.result))}
    if onnx is not None:
        sections["onnx"] = onnx
    return report_dict(entry.result, sections)


@st.cache_data(max_entries=32, show_spinner=False)
def report_texts(key: str, with_onnx: bool, _entry: RunEntry, _onnx: dict | None) -> dict:
    """report.json / report.md / report.html of a run as text (built once per run key)."""
    from aslquant.report import report_markdown
    from aslquant.report_html import report_html

    report = report_for(_entry, _onnx if with_onnx else None)
    return {
        "json": json.dumps(report, indent=2),
        "md": report_markdown(report),
        "html": report_html(report),
    }


# --- errors and progress -----------------------------------------------------------------------


@contextlib.contextmanager
def guard(what: str = "this page") -> Iterator[None]:
    """Show engine errors with st.error; never let a traceback reach the page."""
    try:
        yield
    except InputError as err:
        st.error(str(err))
    except Exception as err:  # anything else is a bug: one line for the user, details in the log
        log.exception("unexpected error in %s", what)
        st.error(
            f"Unexpected error in {what}: {type(err).__name__}: "
            f"{' '.join(str(err).split())[:300]} (details in the server log)"
        )


_STAGE_TEXT = {
    "loading": "Loading images",
    "calibrating": "Calibrating observers",
    "fine-tuning (QAT)": "Fine-tuning with fake quantization",
    "measuring the FP32 baseline": "Waiting for the FP32 baseline (measured once per model)",
    "evaluating": "Evaluating (each batch of 32 is also a timed latency sample)",
    "timing": "Timing batch 1; sizes",
    "done": "Done",
}

#: Where each stage of a quantization run sits on one overall bar (start, end).
RUN_STAGES = {
    "measuring the FP32 baseline": (0.0, 0.3),
    "loading": (0.3, 0.35),
    "calibrating": (0.35, 0.5),
    "fine-tuning (QAT)": (0.35, 0.6),
    "evaluating": (0.6, 0.9),
    "timing": (0.9, 1.0),
    "done": (1.0, 1.0),
}


class ProgressBar:
    """An engine progress callback drawn as one ``st.progress`` bar.

    With ``stages`` ({stage: (start, end)}) the stages of a long job fill one overall bar;
    without, each stage fills the bar on its own.
    """

    def __init__(self, where=st, text: str = "Starting", stages: dict | None = None) -> None:
        self.bar = where.progress(0.0, text=text)
        self.stages = stages or {}
        self.last = 0.0

    def __call__(self, stage: str, fraction: float) -> None:
        text = _STAGE_TEXT.get(stage, stage[:1].upper() + stage[1:])
        fraction = min(1.0, max(0.0, float(fraction)))
        if stage in self.stages:
            start, end = self.stages[stage]
            overall = max(self.last, start + (end - start) * fraction)
        else:
            overall = fraction
        self.last = overall if stage in self.stages else self.last
        self.bar.progress(overall, text=f"{text} ({fraction:.0%} of this step)")

    def empty(self) -> None:
        self.bar.empty()


# --- small shared widgets ----------------------------------------------------------------------


def default_recipe() -> QuantRecipe:
    """The recipe the Quantize page shows: the last one used in this session, else defaults."""
    return st.session_state.get("aslquant_recipe") or QuantRecipe()


def remember_recipe(recipe: QuantRecipe) -> None:
    st.session_state["aslquant_recipe"] = recipe


def on_request(
    session_key: str,
    explanation: str,
    button: str,
    button_key: str,
    title: str,
    compute: Callable[[Progress], object],
):
    """A slow analysis computed when the user presses ``button`` and kept in the session.

    Until then the page shows ``explanation`` and the button; returns the value or None.
    """
    if session_key not in st.session_state:
        st.caption(explanation)
        if st.button(button, key=button_key):
            bar = ProgressBar(st, title)
            st.session_state[session_key] = compute(bar)
            bar.empty()
    return st.session_state.get(session_key)


def quantize_with_progress(config: RunConfig, where=st) -> RunEntry:
    """quantize_run with an st.progress bar fed by the engine's progress callback."""
    bar = ProgressBar(where, "Quantizing", RUN_STAGES)
    try:
        entry = quantize_run(config, bar)
    finally:
        bar.empty()
    return entry


def require_run() -> RunEntry | None:
    """The current run; without one, say so and offer the default quantization in place."""
    entry = current_run()
    if entry is not None:
        return entry
    st.info("No quantization run yet in this session. Run the default recipe on the current model?")
    if st.button("Quantize with the default recipe", type="primary", key="require_run"):
        entry = quantize_with_progress(source().config(default_recipe()))
        st.rerun()
    st.page_link(
        "pages/quantize.py", label="Or choose a recipe on the Quantize page", icon=":material/tune:"
    )
    return None


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 1e6:.2f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


def _times(ratio: float) -> str:
    return f"{ratio:.1f}x faster" if ratio >= 1 else f"{1 / ratio:.1f}x slower"


def onnx_fp32(result: RunResult) -> dict | None:
    """ONNX Runtime FP32 figures of the run's model: a dict, {"error": ...}, or None (pending)."""
    return result.baseline.onnx_fp32 if result.baseline is not None else None


def show_summary(entry: RunEntry) -> None:
    """Summary cards: accuracy with delta, size ratio, speed-ups against both FP32 baselines
    (torch eager and ONNX Runtime, so nobody is shown only the flattering one), agreement."""
    r = entry.result
    f, q = r.fp32, r.int8
    size_ratio = f.size_bytes / max(1, q.size_bytes)
    b1 = f.latency_ms["b1_p50"] / q.latency_ms["b1_p50"]
    ort = onnx_fp32(r)
    ort_ok = bool(ort) and "latency_ms" in ort
    headline = f"**{size_ratio:.1f}x smaller, {_times(b1)} than torch FP32"
    if ort_ok:
        headline += f" and {_times(ort['latency_ms']['b1_p50'] / q.latency_ms['b1_p50'])} than ONNX Runtime FP32"
    headline += f" at batch 1, {100 * r.agreement:.1f}% same answers**"
    st.markdown(headline + f" ({r.n_eval} test images, {r.threads} threads)")
    drop = round(r.accuracy_drop_points, 2) + 0.0  # no "-0.00"
    c = st.columns(5)
    c[0].metric(
        "Quantized top-1",
        f"{100 * q.accuracy:.2f}%",
        delta=f"{-drop:+.2f} pts" if drop else "no change",
        delta_color="normal" if drop else "off",
        delta_arrow="auto" if drop else "off",
        delta_description=f"FP32 {100 * f.accuracy:.2f}%",
        border=True,
    )
    _card(
        c[1],
        "Size: x smaller",
        f"{size_ratio:.2f}x",
        f"{fmt_bytes(f.size_bytes)} → {fmt_bytes(q.size_bytes)}",
    )
    _speed_cards(c[2:4], "torch FP32", "torch", f.latency_ms, q.latency_ms)
    _card(
        c[4], "Same top-1", f"{100 * r.agreement:.2f}%", f"{len(r.flipped())} of {r.n_eval} flipped"
    )
    c = st.columns(5)
    if ort_ok:
        c[0].caption("Speed-ups against the fastest FP32 a user has here:")
        _speed_cards(c[2:4], "ONNX Runtime FP32", "ONNX RT", ort["latency_ms"], q.latency_ms)
        c[4].caption(
            f"ONNX Runtime FP32 is the fastest FP32 a user has here ({ort['runtime']}, "
            f"{ort['threads']} threads, same timing rules)."
        )
    elif ort:
        c[2].caption(f"ONNX Runtime FP32 baseline unavailable: {ort['error']}")
    else:
        c[2].caption(
            "ONNX Runtime FP32 baseline: being measured in the background; reload to see it."
        )


def _speed_cards(columns, baseline: str, short: str, base: dict, quant: dict) -> None:
    for col, name, key in ((columns[0], "batch 1", "b1"), (columns[1], "batch 32", "b32")):
        _card(
            col,
            f"vs {short} FP32, {key}",  # a metric card shows ~20 characters of label
            f"{base[f'{key}_p50'] / quant[f'{key}_p50']:.2f}x",
            f"{base[f'{key}_p50']:.1f} → {quant[f'{key}_p50']:.1f} ms p50",
            help=f"Speed-up at {name}: {baseline} median latency divided by the quantized "
            "model's; above 1 is faster.",
        )


def _card(col, label: str, value: str, note: str, help: str | None = None) -> None:
    """A bordered metric card whose grey note is information, not a good/bad delta."""
    col.metric(
        label, value, delta=note, delta_color="off", delta_arrow="off", border=True, help=help
    )


def plot(fig, key: str | None = None) -> None:
    """A Plotly figure across the page width, in the viewer's light or dark theme."""
    st.plotly_chart(fig, width="stretch", theme="streamlit", key=key)
