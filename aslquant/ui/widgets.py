"""Streamlit widgets the pages share: error guard, progress that follows a job, run picker,
summary cards (with pending latency), and the quantize flow that shows the first number first.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import streamlit as st

from aslquant.errors import InputError
from aslquant.jobs import Job
from aslquant.run import RunConfig
from aslquant.ui import cache, session
from aslquant.ui.session import RunEntry

log = logging.getLogger("aslquant.ui")


@contextlib.contextmanager
def guard(what: str = "this page") -> Iterator[None]:
    """Show engine errors with st.error; never let a traceback reach the page."""
    try:
        yield
    except InputError as err:
        st.error(str(err))
    except Exception as err:  # anything else is a bug: one line for the user, details in the log
        if type(err).__name__ in ("StopException", "RerunException"):
            raise  # Streamlit's own control flow (page switch, rerun)
        log.exception("unexpected error in %s", what)
        st.error(
            f"Unexpected error in {what}: {type(err).__name__}: "
            f"{' '.join(str(err).split())[:300]} (details in the server log)"
        )


_STAGE_TEXT = {
    "queued": "Waiting for a worker",
    "loading": "Loading images",
    "calibrating": "Calibrating observers",
    "fine-tuning (QAT)": "Fine-tuning with fake quantization",
    "evaluating": "Evaluating the quantized model (each batch of 32 is also a timed sample)",
    "evaluating FP32": "Evaluating the FP32 model (measured once per model and images)",
    "timing": "Timing batch 1; sizes",
    "done": "Done",
}

#: Where each stage of a quantization run sits on one overall bar (start, end).
RUN_STAGES = {
    "queued": (0.0, 0.0),
    "loading": (0.0, 0.05),
    "calibrating": (0.05, 0.2),
    "fine-tuning (QAT)": (0.05, 0.4),
    "evaluating": (0.2, 0.45),
    "evaluating FP32": (0.45, 0.9),
    "timing": (0.9, 1.0),
    "done": (1.0, 1.0),
}


class ProgressBar:
    """Progress drawn as one ``st.progress`` bar. With ``stages`` ({stage: (start, end)}) the
    stages of a long job fill one overall bar; without, each stage fills the bar on its own."""

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
            self.last = overall
        else:
            overall = fraction
        self.bar.progress(overall, text=f"{text} ({fraction:.0%} of this step)")

    def empty(self) -> None:
        self.bar.empty()


def follow(
    job: Job,
    bar: ProgressBar,
    until: str | None = None,
    on_milestone: Callable[[str, Any], None] | None = None,
    milestones: tuple[str, ...] = (),
) -> Any:
    """Draw ``job``'s progress from this session's script thread until it finishes (or until
    the milestone ``until`` is published); call ``on_milestone`` once per new milestone.

    The job itself never touches Streamlit, so another session following the same job, or
    reading its finished value, draws its own elements: nothing is replayed across sessions.
    """
    seen: set[str] = set()
    while True:
        for name in milestones:
            value = job.milestone(name)
            if value is not None and name not in seen:
                seen.add(name)
                if on_milestone is not None:
                    on_milestone(name, value)
        if until is not None and job.milestone(until) is not None:
            return job.milestone(until)
        if job.done:
            return job.result()  # raises the job's error, if any
        bar(job.stage, job.fraction)
        time.sleep(0.1)


def wait_for(job: Job, title: str) -> Any:
    """The job's value, with a progress bar while it runs (none when it is already done)."""
    if job.done:
        return job.result()
    bar = ProgressBar(st, title)
    try:
        return follow(job, bar)
    finally:
        bar.empty()


def on_request(
    session_key: str,
    explanation: str,
    button: str,
    button_key: str,
    title: str,
    start: Callable[[], Job],
):
    """A slow analysis computed when the user presses ``button`` (shared across sessions by
    its job); remembered in this session once pressed. Returns the value or None."""
    if session_key not in st.session_state:
        st.caption(explanation)
        if not st.button(button, key=button_key):
            return None
        st.session_state[session_key] = True
    return wait_for(start(), title)


def _preview(where, preview) -> None:
    with where.container():
        c = st.columns(3)
        c[0].metric(
            "Quantized top-1",
            f"{100 * preview.accuracy:.2f}%",
            delta="FP32 side: being measured",
            delta_color="off",
            delta_arrow="off",
            border=True,
        )
        c[1].metric("Quantized size", f"{preview.size_bytes / 1e6:.2f} MB", border=True)
        c[2].metric("Evaluation images", preview.n_eval, border=True)


def quantize_with_progress(config: RunConfig, where=st) -> RunEntry:
    """Start (or join) the run of ``config``; show its first figures as soon as they exist,
    and return the history entry once the evaluation is complete (timing goes on)."""
    started = time.perf_counter()
    key, job = cache.start_run(config)
    bar = ProgressBar(where, "Quantizing", RUN_STAGES)
    preview = where.empty()
    try:
        follow(
            job,
            bar,
            until="evaluated",
            milestones=("quantized",),
            on_milestone=lambda name, value: _preview(preview, value),
        )
    finally:
        bar.empty()
    return session.add_run(key, job, time.perf_counter() - started)


def require_run() -> RunEntry | None:
    """The current run; without one, say so and offer the default quantization in place."""
    entry = session.current_run()
    if entry is not None:
        return entry
    st.info("No quantization run yet in this session. Run the default recipe on the current model?")
    if st.button("Quantize with the default recipe", type="primary", key="require_run"):
        quantize_with_progress(session.source().config(session.default_recipe()))
        st.rerun()
    st.page_link(
        "pages/quantize.py", label="Or choose a recipe on the Quantize page", icon=":material/tune:"
    )
    return None


def run_picker(where=st, label: str = "Run", key: str = "run_picker") -> RunEntry | None:
    """A selectbox over the run history, kept in step with every other run picker."""
    history = session.runs()
    if not history:
        return None
    keys = [e.key for e in reversed(history)]
    by_key = {e.key: e for e in history}
    # Each picker shows the current run; choosing in one updates the shared current run
    # (on_change runs before the rerun, so the other pickers see the new choice).
    st.session_state[key] = session.current_run().key

    def changed() -> None:
        session.set_current(st.session_state[key])

    chosen = where.selectbox(
        label, keys, format_func=lambda k: by_key[k].label, key=key, on_change=changed
    )
    return by_key[chosen]


def show_summary(entry: RunEntry) -> None:
    """Summary cards: accuracy with its interval, size ratio, speed-ups against both FP32
    baselines (torch and ONNX Runtime, so nobody is shown only the flattering one), agreement.
    Latency cards read "pending" until the run's timing is in, and say when a latency was
    measured on a machine too busy to believe it."""
    from aslquant.present import format as fmt
    from aslquant.present import tables
    from aslquant.report import run_summary

    r = entry.result
    summary = run_summary(r)
    f, q = summary["fp32"], summary["int8"]
    u = r.uncertainty
    ort = cache.onnx_fp32(r)
    ort_ok = bool(ort) and "latency_ms" in ort
    pending = fmt.PENDING if not r.timed else fmt.NA
    headline = (
        f"**{fmt.smaller(r.size_ratio)}, {fmt.speedup(r.speedup(1), none=pending)} than torch FP32"
    )
    if ort_ok:
        ort_b1 = r.speedup(1, against=ort["latency_ms"])
        headline += f" and {fmt.speedup(ort_b1, none=pending)} than ONNX Runtime FP32"
    headline += f" at batch 1, {fmt.percent(r.agreement, 1)} same answers**"
    st.markdown(headline + f" ({r.n_eval} test images, {r.threads} threads)")
    drop = r.accuracy_drop_points
    changed = fmt.points(drop) != fmt.points(0)
    c = st.columns(5)
    c[0].metric(
        "Quantized top-1",
        fmt.percent(q["accuracy"]),
        delta=f"{fmt.points(-drop, signed=True)} pts" if changed else "no change",
        delta_color="normal" if changed else "off",
        delta_arrow="auto" if changed else "off",
        delta_description=f"FP32 {fmt.percent(f['accuracy'])}",
        border=True,
        help=f"Quantized top-1 {fmt.interval(u.int8_accuracy)}; drop "
        f"{fmt.interval(u.drop, kind='points')} (bootstrap over the {r.n_eval} images). "
        f"{u.mcnemar.verdict}",
    )
    _, agreement, size, *speed = tables.summary_cards(summary)
    _card(c[1], "Size: x smaller", fmt.ratio(r.size_ratio), size.note)
    _speed_cards(c[2:4], "torch FP32", speed)
    _card(
        c[4],
        "Same top-1",
        agreement.value,
        f"{len(r.flipped())} of {r.n_eval} flipped",
        help=f"Agreement {fmt.interval(u.agreement)}.",
    )
    st.caption(
        f"Drop {fmt.interval(u.drop, kind='points')}; quantized top-1 "
        f"{fmt.interval(u.int8_accuracy)}; {u.mcnemar.verdict}"
    )
    c = st.columns(5)
    if ort_ok:
        c[0].caption("Speed-ups against the fastest FP32 a user has here:")
        ort_cards = tables.speedup_cards(
            "ONNX RT FP32",
            ort["latency_ms"],
            q["latency_ms"],
            r.speedup(1, against=ort["latency_ms"]),
            r.speedup(32, against=ort["latency_ms"]),
        )
        _speed_cards(c[2:4], "ONNX Runtime FP32", ort_cards)
        c[4].caption(
            f"ONNX Runtime FP32 is the fastest FP32 a user has here ({ort['runtime']}, "
            f"{ort['threads']} threads, same timing rules)."
        )
    elif ort:
        c[2].caption(f"ONNX Runtime FP32 baseline unavailable: {ort['error']}")
    else:
        _speed_cards(
            c[2:4], "ONNX Runtime FP32", tables.speedup_cards("ONNX RT FP32", None, None, None, None)
        )
    _reliability_warning(r)


def _reliability_warning(r) -> None:
    """Say when a latency on this page was measured on a machine too busy to believe it."""
    reasons = []
    for name, metrics in (("FP32", r.fp32), ("quantized", r.int8)):
        for batch, verdict in (metrics.latency_reliability or {}).items():
            if not verdict.reliable:
                reasons.append(f"{name} {batch}: {'; '.join(verdict.reasons)}")
    if reasons:
        st.warning(
            "Latency measured while the machine was busy; do not trust these speed-ups. "
            + " · ".join(reasons)
            + ". Close other programs and re-run; ratios within one run are the safest figure."
        )


def summary_settled(entry: RunEntry) -> bool:
    """Whether every card of the summary has its final figure (nothing pending)."""
    r = entry.result
    return entry.job.done and (not r.timed or cache.onnx_fp32(r) is not None)


def _speed_cards(columns, baseline: str, cards) -> None:
    for col, card, batch in zip(columns, cards, (1, 32), strict=True):
        _card(
            col,
            card.title,  # a metric card shows ~20 characters of label
            card.value,
            card.note,
            help=f"Speed-up at batch {batch}: {baseline} median latency divided by the "
            "quantized model's; above 1 is faster.",
        )


def _card(col, label: str, value: str, note: str, help: str | None = None) -> None:
    """A bordered metric card whose grey note is information, not a good/bad delta."""
    col.metric(
        label, value, delta=note, delta_color="off", delta_arrow="off", border=True, help=help
    )


def plot(fig, key: str | None = None) -> None:
    """A Plotly figure across the page width, in the viewer's light or dark theme."""
    st.plotly_chart(fig, width="stretch", theme="streamlit", key=key)
