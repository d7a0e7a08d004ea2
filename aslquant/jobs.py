"""Engine work run once on a worker thread, watched by any number of sessions.

The dashboard serves every browser from one process. When two sessions ask for the same
computation (the same run key, the same analysis of the same run), it runs once: the second
session joins the job already running, or reads the finished value. A job never touches
Streamlit: it reports progress and publishes intermediate values (milestones) into the job,
and each session's own script thread polls them and draws its own progress bar and cards. So a
cached result is a plain value that any session can show (no element replay across sessions).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Job(Generic[T]):
    """One computation: its future, how far it got, and the values it published on the way."""

    def __init__(self, key: Hashable) -> None:
        self.key = key
        self.future: Future[T] = Future()
        self._lock = threading.Lock()
        self.stage = "queued"
        self.fraction = 0.0
        self.started = time.perf_counter()
        self._milestones: dict[str, Any] = {}

    def report(self, stage: str, fraction: float) -> None:
        """The engine's progress callback (any thread)."""
        with self._lock:
            self.stage, self.fraction = stage, min(1.0, max(0.0, float(fraction)))

    def publish(self, name: str, value: Any) -> None:
        """Make an intermediate value visible to whoever watches the job."""
        with self._lock:
            self._milestones[name] = value

    def milestone(self, name: str) -> Any:
        with self._lock:
            return self._milestones.get(name)

    @property
    def done(self) -> bool:
        return self.future.done()

    @property
    def failed(self) -> bool:
        return self.future.done() and self.future.exception() is not None

    def result(self, timeout: float | None = None) -> T:
        return self.future.result(timeout)


class JobBoard:
    """Single-flight jobs by key, on a small pool of worker threads; finished ones are kept
    (the ``keep`` most recent) so later sessions read them instead of computing again."""

    def __init__(self, workers: int = 2, keep: int = 32, name: str = "aslquant-job") -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._jobs: OrderedDict[Hashable, Job] = OrderedDict()
        self._keep = keep
        self._lock = threading.Lock()

    def run(self, key: Hashable, work: Callable[[Job], T]) -> Job[T]:
        """The job for ``key``: running or finished already, else ``work(job)`` is started.

        A failed job is not kept: asking again retries (a fixed file, a freed backend).
        """
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and not job.failed:
                self._jobs.move_to_end(key)
                return job
            job = Job(key)
            self._jobs[key] = job
            self._trim()
        self._pool.submit(self._run, job, work)
        return job

    def get(self, key: Hashable) -> Job | None:
        with self._lock:
            return self._jobs.get(key)

    def forget(self, key: Hashable) -> None:
        with self._lock:
            self._jobs.pop(key, None)

    def _trim(self) -> None:
        finished = [k for k, j in self._jobs.items() if j.done]
        while len(self._jobs) > self._keep and finished:
            self._jobs.pop(finished.pop(0))

    @staticmethod
    def _run(job: Job, work: Callable[[Job], Any]) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            job.future.set_result(work(job))
        except BaseException as err:  # handed to whoever waits on the job
            job.future.set_exception(err)
