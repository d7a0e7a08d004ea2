"""FP32 baselines measured in the background, shared by every session of the dashboard.

The FP32 side of a run (its predictions, latency, size, and ONNX Runtime FP32 timing) depends
only on the model, the evaluation images and the measurement settings, so it is measured once
per ``LoadedInputs.fp32_key`` and reused by every recipe. The dashboard asks for it as soon as
a model and images are chosen (``prefetch``), and one worker thread measures it in three steps:
predictions, then FP32 latency, then ONNX Runtime FP32 latency.

Users' runs take precedence: while any run computes (``foreground``), the worker waits between
batches and between timed calls, so it never shares the cores with a run or disturbs its
timing. A run that needs the FP32 predictions while the worker is producing them waits for
them without counting as computing (the worker goes on at full speed); if nobody started them,
the run computes them itself. When a session switches model or images, background work for
keys no session wants any more is cancelled.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from aslquant.engine_lock import engine_session
from aslquant.run import (
    Fp32Baseline,
    LoadedInputs,
    RunConfig,
    evaluate_fp32,
    time_fp32,
)

log = logging.getLogger("aslquant.baselines")

#: Baselines kept (one per model x image set x settings); the least recently used is dropped.
MAX_BASELINES = 4
#: Sessions whose wanted baseline is remembered (older ones stop protecting theirs).
MAX_OWNERS = 64


class Cancelled(Exception):
    """Background work stopped because no session wants its result any more."""


class _Entry:
    """One FP32 baseline in its three stages, each a future any thread may wait on."""

    def __init__(self, config: RunConfig, inputs: LoadedInputs) -> None:
        self.config = config
        self.inputs = inputs
        self.predictions: Future[Fp32Baseline] = Future()
        self.timed: Future[Fp32Baseline] = Future()
        self.onnx: Future[dict] = Future()
        self.cancel = threading.Event()
        self.stage = "waiting for the worker"
        self.fraction = 0.0
        self.claimed = False  # someone (worker or run) is producing the predictions
        self.rest_queued = False  # timing + ONNX Runtime queued on the worker
        self.waiters = 0  # runs waiting for the predictions: never cancelled under them

    def progress(self, stage: str, fraction: float) -> None:
        self.stage, self.fraction = stage, fraction


class BaselineStore:
    """Thread-safe, bounded map of fp32_key -> baseline stages; one background worker."""

    def __init__(self, max_entries: int = MAX_BASELINES, onnx: bool = True) -> None:
        self._lock = threading.RLock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._max = max_entries
        self._onnx = onnx
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aslquant-fp32")
        self._pending = 0
        self._foreground = 0
        self._idle = threading.Condition(self._lock)
        self._local = threading.local()
        self._wanted: OrderedDict[Hashable, str] = OrderedDict()

    # --- precedence -----------------------------------------------------------------------

    @contextlib.contextmanager
    def foreground(self) -> Iterator[None]:
        """Mark a user's run as computing: background work waits until it ends."""
        with self._lock:
            self._foreground += 1
        self._local.depth = getattr(self._local, "depth", 0) + 1
        try:
            yield
        finally:
            self._local.depth -= 1
            with self._lock:
                self._foreground -= 1
                self._idle.notify_all()

    @contextlib.contextmanager
    def _not_computing(self) -> Iterator[None]:
        """Inside a foreground run, while it only waits: let the background worker go on."""
        depth = getattr(self._local, "depth", 0)
        with self._lock:
            self._foreground -= depth
            self._idle.notify_all()
        try:
            yield
        finally:
            with self._lock:
                self._foreground += depth

    def _yield_to_runs(self, entry: _Entry) -> None:
        """Between two pieces of background work: wait while any run computes; stop if stale."""

        def stale() -> bool:
            return entry.cancel.is_set() and entry.waiters == 0

        with self._lock:
            self._idle.wait_for(lambda: self._foreground == 0 or stale())
            if stale():
                raise Cancelled()

    def _turn(self, entry: _Entry, backend: str | None = None) -> Callable:
        """A guard for one background timed call: yield to runs, then hold the engine."""
        threads = entry.config.threads

        @contextlib.contextmanager
        def guard() -> Iterator[None]:
            self._yield_to_runs(entry)
            with engine_session(backend, threads):
                yield

        return guard

    # --- entries ----------------------------------------------------------------------------

    def busy(self) -> bool:
        """Whether the worker still has work queued or running."""
        with self._lock:
            return self._pending > 0

    def clear(self) -> None:
        """Forget every baseline (work in progress is cancelled)."""
        with self._lock:
            for entry in self._entries.values():
                entry.cancel.set()
            self._entries.clear()
            self._idle.notify_all()

    def _entry(self, config: RunConfig, inputs: LoadedInputs) -> _Entry:
        with self._lock:
            entry = self._entries.get(inputs.fp32_key)
            if entry is None or (entry.cancel.is_set() and not entry.predictions.done()):
                entry = _Entry(config, inputs)
                self._entries[inputs.fp32_key] = entry
                while len(self._entries) > self._max:
                    _, dropped = self._entries.popitem(last=False)
                    dropped.cancel.set()
            self._entries.move_to_end(inputs.fp32_key)
            return entry

    def holds(self, key: str) -> bool:
        """Whether ``key``'s baseline is kept and either finished or still being worked on (not
        dropped to make room, nor cancelled before its ONNX Runtime figures were measured)."""
        with self._lock:
            entry = self._entries.get(key)
            return entry is not None and (entry.onnx.done() or not entry.cancel.is_set())

    def entry(self, key: str) -> _Entry | None:
        with self._lock:
            return self._entries.get(key)

    def prefetch(self, config: RunConfig, inputs: LoadedInputs, owner: Hashable = None) -> None:
        """Measure the FP32 side of these inputs in the background (once); cancel background
        work for keys that no session wants any more (``owner`` identifies the session)."""
        with self._lock:
            self._wanted[owner] = inputs.fp32_key
            self._wanted.move_to_end(owner)
            while len(self._wanted) > MAX_OWNERS:
                self._wanted.popitem(last=False)
            wanted = set(self._wanted.values())
            for key, other in self._entries.items():
                if key not in wanted and not other.onnx.done():
                    other.cancel.set()
            self._idle.notify_all()
            entry = self._entry(config, inputs)
            entry.cancel.clear()
            if not entry.claimed:
                entry.claimed = True
                self._pending += 1
                self._worker.submit(self._background, entry)
                return
        if entry.predictions.done() and not entry.onnx.done():
            self._queue_timing(entry)

    def fp32_for_run(self, config: RunConfig, inputs: LoadedInputs, progress=None) -> Fp32Baseline:
        """The FP32 predictions a run needs now: ready, or being made (wait), or made here."""
        entry = self._entry(config, inputs)
        with self._lock:
            entry.waiters += 1
        try:
            while True:
                with self._lock:
                    produce = not entry.claimed and not entry.predictions.done()
                    entry.claimed = True
                if produce:
                    try:
                        baseline = evaluate_fp32(config, inputs, progress)
                    except BaseException as err:
                        entry.predictions.set_exception(err)
                        raise
                    entry.predictions.set_result(baseline)
                    self._queue_timing(entry)
                    return baseline
                with self._not_computing():
                    try:
                        return entry.predictions.result(timeout=0.1)
                    except TimeoutError:
                        if progress:
                            progress("evaluating FP32", entry.fraction)
        finally:
            with self._lock:
                entry.waiters -= 1

    def timed(self, key: str) -> Fp32Baseline | None:
        """The timed FP32 baseline for ``key`` if it has been measured, else None."""
        entry = self.entry(key)
        if entry is None or not entry.timed.done() or entry.timed.exception() is not None:
            return None
        return entry.timed.result()

    def onnx_fp32(self, key: str) -> dict | None:
        """ONNX Runtime FP32 figures: a dict ({"error": ...} if it failed), or None (pending)."""
        entry = self.entry(key)
        if entry is None or not entry.onnx.done():
            return None
        if entry.onnx.exception() is not None:
            return {"error": str(entry.onnx.exception())}
        return entry.onnx.result()

    def adopt(self, baseline: Fp32Baseline, config: RunConfig, inputs: LoadedInputs) -> None:
        """Keep a timed baseline a run measured itself; measure its ONNX side later (again, if
        that work was cancelled or the baseline dropped since)."""
        entry = self._entry(config, inputs)
        with self._lock:
            entry.claimed = True
            entry.cancel.clear()  # the run's session wants it
            if not entry.predictions.done():
                entry.predictions.set_result(baseline)
            if not entry.timed.done() and baseline.timed:
                entry.timed.set_result(baseline)
            rest = not entry.timed.done() or (self._onnx and not entry.onnx.done())
        if rest:
            self._queue_timing(entry)

    def _queue_timing(self, entry: _Entry) -> None:
        with self._lock:
            if entry.rest_queued:
                return
            entry.rest_queued = True
            self._pending += 1
        self._worker.submit(self._timing_and_onnx, entry)

    # --- the worker ---------------------------------------------------------------------------

    def _background(self, entry: _Entry) -> None:
        try:
            try:
                baseline = evaluate_fp32(
                    entry.config,
                    entry.inputs,
                    entry.progress,
                    before_batch=lambda: self._yield_to_runs(entry),
                )
            except Cancelled:
                with self._lock:
                    entry.claimed = False  # a run (or a later prefetch) makes it instead
                self._forget_if_stale(entry)
                return
            except BaseException as err:  # reported to whoever waits
                log.warning("FP32 baseline failed: %s", err)
                entry.predictions.set_exception(err)
                entry.timed.set_exception(err)
                return
            entry.predictions.set_result(baseline)
            with self._lock:
                if entry.rest_queued:
                    return
                entry.rest_queued = True
            self._timing_and_onnx(entry, counted=False)
        finally:
            with self._lock:
                self._pending -= 1

    def _timing_and_onnx(self, entry: _Entry, counted: bool = True) -> None:
        try:
            if not entry.timed.done():
                try:
                    baseline = time_fp32(
                        entry.predictions.result(),
                        entry.inputs.model,
                        guard=self._turn(entry),
                    )
                except Cancelled:
                    return
                except BaseException as err:
                    log.warning("FP32 timing failed: %s", err)
                    entry.timed.set_exception(err)
                    return
                with self._lock:
                    if not entry.timed.done():
                        entry.timed.set_result(baseline)
            if self._onnx and not entry.onnx.done():
                self._measure_onnx(entry)
        finally:
            with self._lock:
                entry.rest_queued = False
                if counted:
                    self._pending -= 1

    def _measure_onnx(self, entry: _Entry) -> None:
        from aslquant.export import ort_fp32_baseline

        baseline = entry.timed.result()
        try:
            figures = ort_fp32_baseline(
                entry.inputs.model,
                baseline.input_size,
                baseline.threads,
                baseline.latency_runs,
                guard=self._turn(entry),
            )
        except Cancelled:
            return
        except Exception as err:  # ORT is a second opinion; its failure must not break a run
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            log.warning("ONNX Runtime FP32 baseline failed: %s", first)
            figures = {"error": first}
        with self._lock:
            if not entry.onnx.done():
                entry.onnx.set_result(figures)

    def _forget_if_stale(self, entry: _Entry) -> None:
        with self._lock:
            key = entry.inputs.fp32_key
            if self._entries.get(key) is entry and not entry.predictions.done():
                del self._entries[key]


#: The one store of the process (Streamlit serves every browser from this process).
STORE = BaselineStore()
