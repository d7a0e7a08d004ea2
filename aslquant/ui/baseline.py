"""FP32 baselines measured in the background, shared by every session of the dashboard.

The FP32 side of a run (its evaluation, latency, size, and ONNX Runtime FP32 timing) depends
only on the model, the evaluation images and the measurement settings. It is the slowest part
of a first run (30 timed batch-32 calls of the FP32 model alone take ~13 s here), so the
dashboard starts it as soon as a model and images are chosen, on one worker thread, and every
quantization on the same inputs reuses it. Entries are keyed by ``LoadedInputs.fp32_key``
(content hashes) and bounded.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from aslquant.engine_lock import engine_session
from aslquant.run import Fp32Baseline, LoadedInputs, RunConfig, measure_fp32

log = logging.getLogger("aslquant.ui")

#: Baselines kept (one per model x image set x settings); the least recently used is dropped.
MAX_BASELINES = 4


class _Job:
    """One baseline being measured: its future and how far it has got."""

    def __init__(self) -> None:
        self.future: Future[Fp32Baseline] = Future()
        self.stage = "waiting for the worker"
        self.fraction = 0.0

    def progress(self, stage: str, fraction: float) -> None:
        self.stage, self.fraction = stage, fraction


class BaselineStore:
    """Thread-safe, bounded map of fp32_key -> job; one worker measures at a time."""

    def __init__(self, max_entries: int = MAX_BASELINES) -> None:
        self._lock = threading.RLock()  # ensure() submits while holding it
        self._jobs: OrderedDict[str, _Job] = OrderedDict()
        self._max = max_entries
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aslquant-fp32")
        self._pending = 0  # tasks submitted to the worker and not finished
        self._onnx_queued: set[int] = set()  # ids of baselines whose ONNX side is queued
        self._foreground = 0  # quantization runs in progress in any session
        self._idle = threading.Condition(self._lock)

    @contextlib.contextmanager
    def foreground(self) -> Iterator[None]:
        """Mark a user's quantization run: background timing pauses until it ends."""
        with self._lock:
            self._foreground += 1
        try:
            yield
        finally:
            with self._lock:
                self._foreground -= 1
                self._idle.notify_all()

    @contextlib.contextmanager
    def _background_turn(self) -> Iterator[None]:
        """Wait until no run is in progress, then hold the engine lock (one timed call)."""
        with self._lock:
            self._idle.wait_for(lambda: self._foreground == 0)
        with engine_session():
            yield

    def busy(self) -> bool:
        """Whether the worker is still measuring something (an FP32 or ONNX baseline)."""
        with self._lock:
            return self._pending > 0

    def clear(self) -> None:
        """Forget every baseline (work in progress finishes, unreferenced)."""
        with self._lock:
            self._jobs.clear()

    def _submit(self, task, *args) -> None:
        def tracked() -> None:
            try:
                task(*args)
            finally:
                with self._lock:
                    self._pending -= 1

        with self._lock:
            self._pending += 1
        self._worker.submit(tracked)

    def ensure(self, config: RunConfig, inputs: LoadedInputs, onnx: bool = True) -> _Job:
        """The job for these inputs, started in the background if nobody asked before."""
        with self._lock:
            job = self._jobs.get(inputs.fp32_key)
            if job is None:
                job = _Job()
                self._remember(inputs.fp32_key, job)
                self._submit(self._measure, job, config, inputs, onnx)
            else:
                self._jobs.move_to_end(inputs.fp32_key)
            return job

    def job(self, key: str) -> _Job | None:
        with self._lock:
            return self._jobs.get(key)

    def ready(self, key: str) -> Fp32Baseline | None:
        """The finished baseline for ``key``, or None (not asked for, running, or failed)."""
        with self._lock:
            job = self._jobs.get(key)
        if job is None or not job.future.done() or job.future.exception() is not None:
            return None
        return job.future.result()

    def adopt(self, baseline: Fp32Baseline, model, onnx: bool = True) -> None:
        """Keep a baseline a run measured itself; measure its ONNX Runtime side later."""
        with self._lock:
            if self.ready(baseline.key) is not baseline:
                # New, or replacing a failed/other measurement of the same inputs.
                job = _Job()
                job.future.set_result(baseline)
                self._remember(baseline.key, job)
            if not onnx or baseline.onnx_fp32 is not None or id(baseline) in self._onnx_queued:
                return
            self._onnx_queued.add(id(baseline))
        self._submit(self._measure_onnx, baseline, model)

    def _remember(self, key: str, job: _Job) -> None:
        self._jobs[key] = job
        while len(self._jobs) > self._max:
            self._jobs.popitem(last=False)

    def _measure(self, job: _Job, config: RunConfig, inputs: LoadedInputs, onnx: bool) -> None:
        try:
            baseline = measure_fp32(config, inputs, progress=job.progress)
        except BaseException as err:  # reported to whoever waits on the future
            log.warning("FP32 baseline failed: %s", err)
            job.future.set_exception(err)
            return
        if onnx:
            with self._lock:  # before anyone can see it: a run adopting it must not re-queue
                self._onnx_queued.add(id(baseline))
        job.future.set_result(baseline)
        if onnx:
            self._measure_onnx(baseline, inputs.model)

    def _measure_onnx(self, baseline: Fp32Baseline, model) -> None:
        try:
            self._measure_onnx_now(baseline, model)
        finally:
            with self._lock:
                self._onnx_queued.discard(id(baseline))

    def _measure_onnx_now(self, baseline: Fp32Baseline, model) -> None:
        from aslquant.export import ort_fp32_baseline

        try:
            baseline.onnx_fp32 = ort_fp32_baseline(
                model,
                baseline.input_size,
                baseline.threads,
                baseline.latency_runs,
                guard=self._background_turn,
            )
        except Exception as err:  # ORT is a second opinion; its failure must not break a run
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            log.warning("ONNX Runtime FP32 baseline failed: %s", first)
            baseline.onnx_fp32 = {"error": first}


#: The one store of the process (Streamlit serves every browser from this process).
STORE = BaselineStore()
