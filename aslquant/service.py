"""The engine as the dashboard serves it to many browser sessions at once (no Streamlit here).

Runs and analyses are jobs on process-wide job boards (``aslquant.jobs``), keyed by content
hashes: the same inputs are computed once whichever session asks, and a session that asks while
the job runs joins it. A run job publishes its figures as they become known, so a page shows
them in that order: ``"quantized"`` (the quantized model's own accuracy and size), then
``"evaluated"`` (the whole RunResult, latencies pending), then the timed result.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Hashable
from typing import Any

from aslquant.baselines import STORE
from aslquant.jobs import Job, JobBoard
from aslquant.run import LoadedInputs, RunConfig, RunResult, execute, time_run

#: Quantization runs (two at a time: two users, or a run and a re-run).
RUNS = JobBoard(workers=2, keep=24, name="aslquant-run")
#: Analyses of finished runs (sensitivity, sweeps, exports...): one at a time.
ANALYSES = JobBoard(workers=1, keep=64, name="aslquant-analysis")


def run_job(config: RunConfig, inputs: LoadedInputs) -> Job[RunResult]:
    """The job computing ``config`` (shared by every session asking for the same inputs)."""

    def work(job: Job) -> RunResult:
        with STORE.foreground():
            result = execute(
                config,
                progress=job.report,
                inputs=inputs,
                fp32=lambda i: STORE.fp32_for_run(config, i, job.report),
                on_quantized=lambda preview: job.publish("quantized", preview),
                on_evaluated=lambda evaluated: job.publish("evaluated", evaluated),
                timed=False,
            )
            timed = STORE.timed(inputs.fp32_key)
            if timed is not None:  # measured in the background meanwhile: reuse it
                result = dataclasses.replace(result, baseline=timed, fp32=timed.metrics)
            result = time_run(result, job.report)
        STORE.adopt(result.baseline, config, inputs)
        return result

    return RUNS.run(("run", inputs.key), work)


def analysis_job(
    kind: str, run: RunResult, params: Any, compute: Callable[[Callable], Any]
) -> Job:
    """The job computing ``compute(progress)`` for ``kind`` of a run with ``params``.

    ``params`` must be JSON-able: it is part of the key, with the run's content key.
    """
    key: Hashable = (kind, run.key, json.dumps(params, sort_keys=True, default=str))
    return ANALYSES.run(key, lambda job: compute(job.report))
