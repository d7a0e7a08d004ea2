"""Experiments that quantize many recipes or run QAT: the config sweep and QAT vs PTQ.

Both check the rows' structure, not demo accuracy, so they run at a 96-pixel input (about 5x
cheaper than the demo's 224 per image, latency timing included).
"""

from __future__ import annotations

import dataclasses

import pytest

from aslquant import experiments
from aslquant.data import Preprocess
from aslquant.errors import InputError
from aslquant.present import figures
from tests.test_analysis import demo_config

SMALL = Preprocess(input_size=96)


def small_config(eval_images: int, **recipe):
    """demo_config at a 96-pixel input."""
    return dataclasses.replace(demo_config(eval_images, **recipe), preprocess=SMALL)


def test_sweep_grid_rejects_unknown_fields_before_any_work():
    with pytest.raises(InputError, match="unknown keys"):
        experiments.config_sweep(demo_config(eval_images=29), {"colour": ["red"]})


@pytest.mark.slow
def test_config_sweep_gives_pareto_rows():
    config = small_config(eval_images=58)
    grid = {"act_observer": ["minmax", "histogram"], "weight_observer": ["per-channel"]}
    rows = experiments.config_sweep(config, grid)
    assert all(isinstance(r, experiments.SweepRow) for r in rows)
    assert rows[0].reference and rows[0].method == experiments.REFERENCE
    assert [r.act_observer for r in rows[1:]] == ["minmax", "histogram"]
    for row in rows:
        assert 0 <= row.accuracy <= 1 and row.n_eval == 58
        assert 0 < row.b1_p50 <= row.b1_p95 and 0 < row.b32_p50 <= row.b32_p95
        assert row.size_bytes > 0 and row.label and row.error is None
    assert rows[0].size_bytes > 3 * rows[1].size_bytes
    dicts = [r.to_dict() for r in rows]
    assert len({tuple(d) for d in dicts}) == 1  # every row has every key
    assert dicts[1]["recipe"]["act_observer"] == "minmax" and dicts[0]["recipe"] is None
    fig = figures.pareto_figure(dicts)
    assert fig.layout.xaxis.title.text.endswith("(ms)")


@pytest.mark.slow
def test_qat_vs_ptq_reports_every_epoch():
    config = small_config(eval_images=58, calib_images=32)
    out = experiments.qat_vs_ptq(config, epochs=2)
    assert [h["epoch"] for h in out.qat.history] == [1, 2]
    for h in out.qat.history:
        assert 0 <= h["accuracy"] <= 1 and h["train_loss"] > 0
    assert 0 <= out.ptq.accuracy <= 1 and out.n_eval == 58
    assert out.qat.accuracy == pytest.approx(out.qat.history[-1]["accuracy"])
    report = out.to_dict()
    assert set(report) >= {"ptq", "qat", "epochs", "fp32_accuracy", "n_eval", "n_train"}
    assert report["qat"]["history"][0]["epoch"] == 1
