"""The dashboard's one door to ``st.session_state``: typed accessors behind named keys.

Per-browser state lives here only: the chosen model and images (``Source``), the run history,
the last recipe, and the session's private upload folder. Nothing here computes; heavy work goes
through ``aslquant.ui.cache`` (process-wide, keyed by content hashes).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from aslquant.data import Preprocess
from aslquant.demos import DEFAULT_DEMO, demos
from aslquant.jobs import Job
from aslquant.recipe import QuantRecipe
from aslquant.run import RunConfig, RunResult

#: Runs kept per browser session; the oldest is dropped beyond this (the UI says so).
MAX_RUNS = 10
#: Upload folders of sessions idle for longer than this are deleted (sessions have no end hook).
UPLOAD_MAX_AGE_S = 6 * 3600
_SESSION_PREFIX = "aslquant-session-"

_SOURCE = "aslquant_source"
_RUNS = "aslquant_runs"
_CURRENT = "aslquant_current_run"
_SESSION_DIR = "aslquant_session_dir"
_COUNTER = "aslquant_run_counter"
_EVICTED = "aslquant_evicted"
_RECIPE = "aslquant_recipe"


@dataclass(frozen=True)
class Source:
    """Checkpoint, labels and images (paths on this server) plus preprocessing."""

    checkpoint: str
    labels: str
    data: str
    preprocess: Preprocess = dataclasses.field(default_factory=Preprocess)
    name: str = "demo"  # shown in the sidebar: a demo's name or the uploaded file names

    @property
    def demo(self) -> str | None:
        """The name of the shipped demo this source is, or None."""
        for name, demo in demos().items():
            if (self.checkpoint, self.labels, self.data) == (
                str(demo.checkpoint),
                str(demo.labels),
                str(demo.data),
            ):
                return name
        return None

    @property
    def is_demo(self) -> bool:
        return self.demo is not None

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


def demo_source(name: str = DEFAULT_DEMO) -> Source:
    """A shipped demo (the ASLQUANT_CHECKPOINT/LABELS/DATA variables may override the default)."""
    demo = demos()[name]
    if name == DEFAULT_DEMO:
        return Source(
            checkpoint=os.environ.get("ASLQUANT_CHECKPOINT", str(demo.checkpoint)),
            labels=os.environ.get("ASLQUANT_LABELS", str(demo.labels)),
            data=os.environ.get("ASLQUANT_DATA", str(demo.data)),
            preprocess=demo.preprocess,
            name=f"{name} demo",
        )
    return Source(
        str(demo.checkpoint), str(demo.labels), str(demo.data), demo.preprocess, f"{name} demo"
    )


def source() -> Source:
    """This session's source; the default demo until the user picks something else."""
    if _SOURCE not in st.session_state:
        st.session_state[_SOURCE] = demo_source()
    return st.session_state[_SOURCE]


def set_source(new: Source) -> None:
    st.session_state[_SOURCE] = new


def session_id() -> str:
    """A stable identifier of this browser session (for background-work bookkeeping)."""
    return str(st.session_state.setdefault("aslquant_session_id", os.urandom(8).hex()))


# --- uploads ---------------------------------------------------------------------------------


def prune_session_dirs(max_age_s: float = UPLOAD_MAX_AGE_S, keep: Path | None = None) -> int:
    """Delete other sessions' upload folders idle for more than ``max_age_s``; return how many."""
    removed = 0
    base = Path(tempfile.gettempdir())
    now = time.time()
    for path in base.glob(_SESSION_PREFIX + "*"):
        if keep is not None and path == keep:
            continue
        try:
            if path.is_dir() and now - path.stat().st_mtime > max_age_s:
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
        except OSError:
            continue
    return removed


def session_dir() -> Path:
    """A private temp folder for this browser session's uploads and exports."""
    path = st.session_state.get(_SESSION_DIR)
    if path is None or not Path(path).is_dir():
        path = tempfile.mkdtemp(prefix=_SESSION_PREFIX)
        st.session_state[_SESSION_DIR] = path
        prune_session_dirs(keep=Path(path))
    os.utime(path)  # in use: not idle
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


# --- runs ------------------------------------------------------------------------------------


@dataclass
class RunEntry:
    """One quantization run in this session's history; its result is the job's latest value."""

    number: int
    key: str
    job: Job
    seconds: float
    created: float

    @property
    def result(self) -> RunResult:
        """The timed result once timing finished, else the evaluated one (latencies None)."""
        if self.job.done and not self.job.failed:
            return self.job.result()
        return self.job.milestone("evaluated")

    @property
    def timing_failed(self) -> BaseException | None:
        return self.job.future.exception() if self.job.failed else None

    @property
    def label(self) -> str:
        return f"#{self.number} {self.result.config.recipe.describe()}"


def runs() -> list[RunEntry]:
    """This session's runs, oldest first (at most MAX_RUNS)."""
    return st.session_state.setdefault(_RUNS, [])


def add_run(key: str, job: Job, seconds: float) -> RunEntry:
    """Add a run whose evaluation is done (re-running the same inputs selects its entry)."""
    history = runs()
    for entry in history:
        if entry.key == key:
            entry.job = job  # a retried job replaces a failed one
            st.session_state[_CURRENT] = key
            return entry
    number = st.session_state.get(_COUNTER, 0) + 1
    st.session_state[_COUNTER] = number
    entry = RunEntry(number, key, job, seconds, time.time())
    history.append(entry)
    while len(history) > MAX_RUNS:
        dropped = history.pop(0)
        st.session_state.setdefault(_EVICTED, []).append(dropped.label)
    st.session_state[_CURRENT] = key
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


def default_recipe() -> QuantRecipe:
    """The recipe the Quantize page shows: the last one used in this session, else defaults."""
    return st.session_state.get(_RECIPE) or QuantRecipe()


def remember_recipe(recipe: QuantRecipe) -> None:
    st.session_state[_RECIPE] = recipe


def forget_widget(*keys: str) -> None:
    """Drop widget values so the widgets start again from the remembered settings."""
    for key in keys:
        st.session_state.pop(key, None)
