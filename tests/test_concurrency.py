"""Three sessions quantizing different backends at once each get their own correct result.

Streamlit serves every browser from one process, with one thread per session, and the
quantized engine is process-wide: this is exactly that situation, with real threads.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from aslquant.data import Preprocess
from aslquant.run import RunConfig, execute

BACKENDS = ("x86", "qnnpack", "onednn")
# Different observers too, so that every session's correct answer is distinct from the others'.
OBSERVER = {"x86": "histogram", "qnnpack": "minmax", "onednn": "moving-average"}


def _config(backend: str) -> RunConfig:
    # 96 px: each run times 30 FP32 batches of 32; at 224 px that alone took ~25 s a run.
    return RunConfig(eval_images=87, threads=1, preprocess=Preprocess(input_size=96)).with_recipe(
        backend=backend, act_observer=OBSERVER[backend], calib_images=32
    )


def _signature(result) -> tuple:
    ev = result.evaluation
    return (
        result.config.recipe.backend,
        ev.quant.top5.tobytes(),
        np.round(ev.quant.probs5, 5).tobytes(),
    )


@pytest.mark.slow
def test_three_concurrent_sessions_get_their_own_results():
    # The reference answers need no timing (the signature holds predictions only); the
    # concurrent sessions below do time, as the app's do, so their timing overlaps the others'
    # quantization and evaluation.
    serial = {b: _signature(execute(_config(b), timed=False)) for b in BACKENDS}
    # The backends really differ, so a mixed-up engine would be visible.
    assert len({sig[2] for sig in serial.values()}) == len(BACKENDS)

    engine_before = torch.backends.quantized.engine
    results: dict[str, tuple] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(BACKENDS))

    def session(backend: str) -> None:
        try:
            start.wait()
            results[backend] = _signature(execute(_config(backend)))
        except BaseException as err:  # surfaced by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=session, args=(b,)) for b in BACKENDS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    for backend in BACKENDS:
        assert results[backend] == serial[backend], backend
    assert torch.backends.quantized.engine == engine_before
