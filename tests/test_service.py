"""Shared jobs, the background FP32 store and the dashboard's run service, with real runs.

What the dashboard promises several browser sessions: the same inputs are computed once, a
second session joins or reads the first one's job, users' runs take precedence over background
measurement, and a model switch cancels background work nobody wants any more.
"""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest

from aslquant import run as run_mod
from aslquant.baselines import BaselineStore
from aslquant.data import Preprocess
from aslquant.jobs import JobBoard
from aslquant.run import RunConfig, execute, load_inputs


def _small(**changes) -> RunConfig:
    # 96 px keeps FP32 evaluation and timing of 96 images to a second or two.
    config = RunConfig(eval_images=96, threads=1, preprocess=Preprocess(input_size=96))
    return dataclasses.replace(config.with_recipe(calib_images=32), **changes)


def test_a_job_runs_once_per_key_and_publishes_milestones():
    board = JobBoard(workers=2)
    calls = []
    release = threading.Event()

    def work(job):
        calls.append(job.key)
        job.publish("half", 21)
        job.report("working", 0.5)
        release.wait(10)
        return 42

    first = board.run("k", work)
    second = board.run("k", work)  # asked again while running: the same job
    assert second is first
    deadline = time.monotonic() + 10
    while first.milestone("half") is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert first.milestone("half") == 21 and first.stage == "working"
    release.set()
    assert first.result(10) == 42 and board.run("k", work) is first  # finished: read, not redone
    assert calls == ["k"]


def test_a_failed_job_is_retried_when_asked_again():
    board = JobBoard(workers=1)
    attempts = []

    def flaky(job):
        attempts.append(1)
        if len(attempts) == 1:
            raise ValueError("first try fails")
        return "ok"

    failed = board.run("k", flaky)
    with pytest.raises(ValueError):
        failed.result(10)
    assert board.run("k", flaky).result(10) == "ok" and len(attempts) == 2


def _counting_evaluate(monkeypatch) -> list:
    """Count FP32 evaluations (each is a full pass over the evaluation images)."""
    calls = []
    real = run_mod.evaluate_fp32

    def counting(*args, **kwargs):
        calls.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr("aslquant.baselines.evaluate_fp32", counting)
    return calls


@pytest.mark.slow
def test_background_baseline_is_measured_once_and_handed_to_runs(monkeypatch):
    calls = _counting_evaluate(monkeypatch)
    store = BaselineStore(onnx=False)
    config = _small()
    inputs = load_inputs(config)
    store.prefetch(config, inputs, owner="a")
    store.prefetch(config, inputs, owner="b")  # a second session: nothing new starts
    baseline = store.fp32_for_run(config, inputs)  # waits for the background pass
    deadline = time.monotonic() + 120
    while store.busy() and time.monotonic() < deadline:
        time.sleep(0.05)
    timed = store.timed(inputs.fp32_key)
    assert timed is not None and timed.timed and timed.evaluation is baseline.evaluation
    assert len(calls) == 1 and calls[0].startswith("aslquant-fp32")
    result = execute(config, inputs=inputs, baseline=timed)
    assert result.timings_s["fp32_reused"] == 1.0 and result.fp32 is timed.metrics


@pytest.mark.slow
def test_a_run_takes_precedence_over_background_work():
    store = BaselineStore(onnx=False)
    config = _small()
    inputs = load_inputs(config)
    with store.foreground():  # a user's run computes: the worker must not start its pass
        store.prefetch(config, inputs, owner="a")
        time.sleep(1.0)
        entry = store.entry(inputs.fp32_key)
        assert entry.fraction == 0.0 and not entry.predictions.done()
        # The run itself needs the FP32 predictions: it waits without counting as computing.
        baseline = store.fp32_for_run(config, inputs)
    assert baseline.evaluation.n == 96


@pytest.mark.slow
def test_switching_model_cancels_background_work_nobody_wants():
    store = BaselineStore(onnx=False)
    first, other = _small(), _small(eval_images=64)
    first_inputs, other_inputs = load_inputs(first), load_inputs(other)
    with store.foreground():  # hold the worker still while the session switches
        store.prefetch(first, first_inputs, owner="session")
        store.prefetch(other, other_inputs, owner="session")
        stale = store.entry(first_inputs.fp32_key)
        assert stale is None or stale.cancel.is_set()
    deadline = time.monotonic() + 120
    while store.busy() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.timed(other_inputs.fp32_key) is not None
    assert store.timed(first_inputs.fp32_key) is None  # never measured: nobody wanted it


def test_a_dropped_baseline_is_measured_when_asked_again():
    """The store keeps few baselines: another session's images can take a baseline's place
    before it is measured. ``holds`` says so, and asking again measures it (the dashboard asks
    again on its next page run; before, the ONNX Runtime card of that run stayed pending)."""
    store = BaselineStore(max_entries=1, onnx=False)
    first, other = _small(), _small(eval_images=64)
    first_inputs, other_inputs = load_inputs(first), load_inputs(other)
    with store.foreground():  # hold the worker still while both sessions ask
        store.prefetch(first, first_inputs, owner="a")
        assert store.holds(first_inputs.fp32_key)
        store.prefetch(other, other_inputs, owner="b")
        assert not store.holds(first_inputs.fp32_key)
        store.prefetch(first, first_inputs, owner="a")
        assert store.holds(first_inputs.fp32_key)
    deadline = time.monotonic() + 120
    while store.busy() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.timed(first_inputs.fp32_key) is not None


@pytest.mark.slow
def test_two_sessions_asking_for_the_same_run_share_one_job(monkeypatch):
    from aslquant import service

    monkeypatch.setattr(service, "STORE", BaselineStore(onnx=False))
    monkeypatch.setattr(service, "RUNS", JobBoard(workers=2))
    config = _small()
    seen = []

    def session() -> None:
        seen.append(service.run_job(config, load_inputs(config)))

    threads = [threading.Thread(target=session) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(seen) == 2 and seen[0] is seen[1]
    job = seen[0]
    result = job.result(600)
    # Figures appear in order: the quantized model's own, then the evaluated run, then timed.
    preview, evaluated = job.milestone("quantized"), job.milestone("evaluated")
    assert preview.accuracy == result.int8.accuracy and preview.n_eval == result.n_eval
    assert evaluated.fp32.latency_ms is None and result.timed
    # The same numbers as the CLI's execute() on the same inputs.
    alone = execute(config)
    assert (result.evaluation.quant.top1 == alone.evaluation.quant.top1).all()
    assert result.agreement == alone.agreement and result.int8.size_bytes == alone.int8.size_bytes
