"""Calibration-seed spread, calibration-size study, robustness split and flip margins.

Real demo runs at 96 px (the demo network runs at any size >= its minimum; accuracy is lower
than at 224 px, which does not matter for these invariants), min-max observers and small
calibration sets, so a quantization takes a second or two.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from aslquant import calibration_study as cs
from aslquant import corruptions as corr
from aslquant import margins as mg
from aslquant import robustness as rb
from aslquant import run as run_mod
from aslquant import stats
from aslquant.data import Preprocess
from aslquant.errors import InputError
from aslquant.measure import PairEvaluation, Predictions
from aslquant.run import DEMO_DATA, RunConfig, execute, load_inputs


def _small(**changes) -> RunConfig:
    config = RunConfig(eval_images=116, threads=1, preprocess=Preprocess(input_size=96))
    config = config.with_recipe(calib_images=16, act_observer="minmax")
    return dataclasses.replace(config, **changes)


def _json(d: dict) -> str:
    """Serialized as report.json would be: fails on NaN or infinity."""
    return json.dumps(d, allow_nan=False)


@pytest.fixture(scope="module")
def small_run():
    return execute(_small(), timed=False)


@pytest.fixture
def count_fp32(monkeypatch):
    """Counts real FP32 evaluations (the function still runs)."""
    calls = []
    real = run_mod.evaluate_fp32

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(run_mod, "evaluate_fp32", counted)
    return calls


def _copy_demo_subset(root: Path, per_class: int) -> Path:
    """A small real dataset: the first ``per_class`` demo images of every class."""
    for folder in sorted(Path(DEMO_DATA).iterdir()):
        if folder.is_dir():
            (root / folder.name).mkdir(parents=True)
            for image in sorted(folder.iterdir())[:per_class]:
                shutil.copy(image, root / folder.name / image.name)
    return root


# ---------------------------------------------------------------------------------------------
# The fixed evaluation set and the calibration pool (no quantization)


def test_split_keeps_the_runs_evaluation_set_when_enough_images_are_left():
    config = _small()
    inputs = load_inputs(config)
    split = cs.study_split(config, config.recipe.calib_images, inputs)
    assert split.same_as_run
    assert split.inputs.eval_items == inputs.eval_items
    assert split.inputs.fp32_key == inputs.fp32_key  # the run's baseline applies as it is
    assert not set(split.pool) & set(inputs.eval_items)
    assert set(inputs.calib_items) <= set(split.pool)
    assert len(split.pool) == len(inputs.image_set.items) - len(inputs.eval_items)


def test_split_carves_a_pool_when_every_other_image_is_evaluated():
    # Default eval_images=None: the run evaluates everything its calibration set leaves, so the
    # images outside the evaluation set are exactly its own calibration images.
    config = _small(eval_images=None)
    inputs = load_inputs(config)
    n_calib = config.recipe.calib_images
    split = cs.study_split(config, n_calib, inputs)
    assert not split.same_as_run
    assert len(split.pool) == cs.POOL_FACTOR * n_calib
    assert set(inputs.calib_items) <= set(split.pool)  # the run's own draw is one of the pool's
    assert split.inputs.eval_items == tuple(it for it in inputs.eval_items if it not in split.pool)
    assert not set(split.pool) & set(split.inputs.eval_items)
    assert split.n_eval == len(inputs.image_set.items) - len(split.pool)
    assert split.inputs.fp32_key != inputs.fp32_key  # the run's baseline must not be reused
    # At most half of the images go to the pool, whatever the size asked for.
    big = cs.study_split(config, 4096, inputs)
    assert len(big.pool) == len(inputs.image_set.items) // 2
    # With --eval-images the carved evaluation set is still the run's own, minus the pool.
    config = _small(eval_images=1000).with_recipe(calib_images=64)
    inputs = load_inputs(config)
    split = cs.study_split(config, 64, inputs)
    assert not split.same_as_run and len(split.pool) == 256
    assert set(inputs.calib_items) <= set(split.pool)
    assert split.inputs.eval_items == tuple(it for it in inputs.eval_items if it not in split.pool)
    assert split.info().to_dict()["n_eval"] == split.n_eval < 1000


def test_split_with_calib_data_draws_from_that_folder(tmp_path):
    calib_root = _copy_demo_subset(tmp_path / "calib", per_class=2)
    config = _small(calib_data=str(calib_root), eval_images=58)
    inputs = load_inputs(config)
    split = cs.study_split(config, 16, inputs)
    assert split.same_as_run and split.inputs.eval_items == inputs.eval_items
    assert len(split.pool) == 58 and all(str(calib_root) in it.path for it in split.pool)


def test_draws_are_seeded_class_balanced_nested_and_differ_between_seeds():
    config = _small()
    split = cs.study_split(config, 128)
    a8, a32 = cs.draw(split.pool, 8, 1), cs.draw(split.pool, 32, 1)
    assert a32[:8] == a8  # one seed's sizes are nested
    assert cs.draw(split.pool, 32, 1) == a32  # deterministic
    b32 = cs.draw(split.pool, 32, 2)
    assert set(b32) != set(a32) and set(a32) | set(b32) <= set(split.pool)
    counts = Counter(it.label for it in cs.draw(split.pool, 58, 3))
    assert len(counts) == 29 and set(counts.values()) == {2}
    assert cs.mean_overlap([a32, a32]) == 1.0
    assert cs.mean_overlap([a8]) is None


def test_studies_refuse_bad_requests(tmp_path):
    with pytest.raises(InputError, match="at least 3"):
        cs.seed_spread_of(_small(), k=2)
    with pytest.raises(InputError, match="no calibration images"):
        cs.seed_spread_of(_small().with_recipe(method="dynamic"))
    with pytest.raises(InputError, match="calibration study size"):
        cs.calibration_size_study(_small(), sizes=[0, 8])
    # A calibration folder holding exactly one draw: every draw would be the same.
    calib_root = _copy_demo_subset(tmp_path / "calib", per_class=1)
    config = _small(calib_data=str(calib_root)).with_recipe(calib_images=29)
    with pytest.raises(InputError, match="every draw would be the same"):
        cs.seed_spread_of(config)


def _point(size: int, drops: list[float]) -> cs.SizePoint:
    return cs.SizePoint(
        size=size,
        draws=(),
        mean_overlap=0.0,
        drop=stats.seed_spread(drops),
        int8_accuracy=stats.seed_spread([0.9] * len(drops), stats.FRACTION),
        agreement=stats.seed_spread([0.95] * len(drops), stats.FRACTION),
    )


def test_enough_from_is_the_smallest_size_whose_drops_stay_near_the_largest():
    points = [
        _point(8, [1.0, 5.0, 3.0]),
        _point(32, [0.4, 0.7, 0.5]),
        _point(128, [0.3, 0.6, 0.5]),
        _point(512, [0.4, 0.5, 0.45]),
    ]
    # Band: 0.4 - 0.5 .. 0.5 + 0.5; 32 and 128 are inside, 8 is not.
    assert cs.enough_from(points, 0.5) == 32
    reading = cs._reading(points, 32, 0.5)
    assert reading.startswith("From 32 calibration images on") and "with 8 it was 1.00" in reading
    # A size outside the band breaks the run of settled sizes even if a smaller one is inside.
    points[1] = _point(32, [2.0, 0.7, 0.5])
    assert cs.enough_from(points, 0.5) == 128
    assert cs.enough_from([_point(8, [9.0, 9.0, 9.0]), points[-1]], 0.5) == 512
    reading = cs._reading([_point(8, [9.0] * 3), points[-1]], 512, 0.5)
    assert reading.startswith("Below 512 calibration images some seed's drop lies more than 0.50")
    assert cs.enough_from([_point(8, [0.4, 0.5, 0.6]), points[-1]], 0.5) == 8
    assert cs.enough_from(points[-1:], 0.5) is None


# ---------------------------------------------------------------------------------------------
# Real re-runs


@pytest.mark.slow
def test_seed_spread_keeps_the_evaluation_set_and_reuses_the_fp32_baseline(small_run, count_fp32):
    config = small_run.config
    study = cs.seed_spread_of(config, k=3, baseline=small_run.baseline)
    assert count_fp32 == [] and study.fp32_evaluations == 0  # FP32 never evaluated again
    assert study.split.same_as_run and study.k == 3
    run_digest = cs.images_digest(load_inputs(config).eval_items)
    assert {d.evaluation_digest for d in study.draws} == {run_digest}
    assert len({d.calibration_digest for d in study.draws}) == 3
    # The first draw is the run's own calibration set: the same model, the same figures.
    first = study.draws[0]
    assert first.seed is None
    assert first.calibration_digest == cs.images_digest(small_run.calib_items)
    assert first.int8_accuracy == small_run.int8.accuracy
    assert first.drop_points == pytest.approx(small_run.accuracy_drop_points, abs=1e-9)
    assert first.flips == len(small_run.flipped())
    assert study.drop.values == tuple(d.drop_points for d in study.draws)
    for d in study.draws:
        assert d.drop.low <= d.drop_points <= d.drop.high
    assert study.mean_overlap < 0.2  # 16-image draws from a pool of 1044
    _json(study.to_dict())


@pytest.mark.slow
def test_carved_study_evaluates_fp32_once_on_its_own_fixed_images(tmp_path, count_fp32):
    data = _copy_demo_subset(tmp_path / "data", per_class=3)  # 87 real demo images
    config = _small(data=str(data), eval_images=None).with_recipe(calib_images=8)
    run = execute(config, timed=False)
    count_fp32.clear()
    study = cs.seed_spread_of(config, k=3, baseline=run.baseline)
    # The run evaluated everything but its calibration images, so the study carved a pool and
    # evaluates on fewer images: the run's baseline cannot serve, one FP32 pass does.
    assert not study.split.same_as_run
    assert count_fp32 == [1] and study.fp32_evaluations == 1
    assert len({d.evaluation_digest for d in study.draws}) == 1
    assert study.split.n_eval == 87 - 32
    assert study.draws[0].calibration_digest == cs.images_digest(run.calib_items)
    _json(study.to_dict())


@pytest.mark.slow
def test_calibration_size_study_reports_every_size_over_the_same_seeds(small_run, count_fp32):
    config = small_run.config
    study = cs.calibration_size_study(config, sizes=(4, 16, 2048), seeds=3)
    assert count_fp32 == [1] and study.fp32_evaluations == 1  # no baseline given: one pass
    assert study.sizes == (4, 16) and study.skipped_sizes == (2048,)  # 2048 > the pool of 1044
    assert any("2048" in note for note in study.notes)
    digests = {d.evaluation_digest for p in study.points for d in p.draws}
    assert len(digests) == 1
    for point in study.points:
        assert [d.calib_images for d in point.draws] == [point.size] * 3
        assert point.drop.k == 3
    rows = study.plot_rows()
    assert len(rows) == 2 * len(cs.PLOT_METRICS)
    drop16 = next(r for r in rows if r["size"] == 16 and r["metric"] == "drop")
    assert drop16["min"] <= drop16["mean"] <= drop16["max"]
    assert study.enough_from in (4, 16) and study.reading
    assert study.tolerance_points == pytest.approx(100 / 116)  # one image is above 0.5 points
    _json(study.to_dict())


# ---------------------------------------------------------------------------------------------
# Robustness split


@pytest.mark.slow
def test_clean_row_reproduces_the_runs_accuracies_exactly(small_run):
    split = rb.robustness_split(small_run, corruptions=["jpeg"], severities=[1], images=None)
    clean = split.clean
    assert split.images == split.of_images == small_run.n_eval
    assert clean.fp32_accuracy.estimate == small_run.fp32.accuracy
    assert clean.int8_accuracy.estimate == small_run.int8.accuracy
    assert clean.flips == len(small_run.flipped())
    assert clean.gap_change is None and clean.psnr_db is None
    jpeg = split.rows[1]
    assert (jpeg.corruption, jpeg.severity) == ("jpeg", 1) and jpeg.psnr_db < 100
    assert jpeg.gap_change == pytest.approx(jpeg.gap.estimate - clean.gap.estimate)
    _json(split.to_dict())


@pytest.mark.slow
def test_subset_is_a_class_balanced_prefix_and_rows_are_consistent(small_run):
    before = sorted(p.name for p in Path(DEMO_DATA).rglob("*"))
    split = rb.robustness_split(
        small_run, corruptions=["gaussian_noise", "lowres_nearest"], severities=[1, 3], images=58
    )
    assert sorted(p.name for p in Path(DEMO_DATA).rglob("*")) == before  # nothing written
    assert split.images == 58 and "first 58 of 116" in split.subset
    ev = small_run.evaluation
    assert Counter(ev.labels[:58].tolist()) == Counter({c: 2 for c in range(29)})
    assert split.clean.fp32_accuracy.estimate == float((ev.fp32.top1[:58] == ev.labels[:58]).mean())
    assert [(r.corruption, r.severity) for r in split.corrupted] == [
        ("gaussian_noise", 1),
        ("gaussian_noise", 3),
        ("lowres_nearest", 1),
        ("lowres_nearest", 3),
    ]
    for row in split.rows:
        assert row.n == 58
        assert row.gap.low <= row.gap.estimate <= row.gap.high
        gap = 100 * (row.fp32_accuracy.estimate - row.int8_accuracy.estimate)
        assert row.gap.estimate == pytest.approx(gap)
        for acc in (row.fp32_accuracy, row.int8_accuracy):
            assert acc.low <= acc.estimate <= acc.high
    noise = {r.severity: r.psnr_db for r in split.corrupted if r.corruption == "gaussian_noise"}
    assert noise[3] < noise[1]  # stronger noise, more damage


@pytest.mark.slow
def test_corrupted_split_is_deterministic_and_seeded(small_run):
    def rows(seed):
        split = rb.robustness_split(
            small_run, corruptions=["impulse_noise"], severities=[3], images=29, seed=seed
        )
        timing = ("seconds", "corruption_seconds")
        return [{k: v for k, v in r.to_dict().items() if k not in timing} for r in split.rows]

    first = rows(7)
    assert rows(7) == first
    assert rows(8)[1]["psnr_db"] != first[1]["psnr_db"]  # other noise, other images


def test_robustness_split_refuses_bad_options(small_run):
    with pytest.raises(InputError, match="unknown corruption"):
        rb.robustness_split(small_run, corruptions=["fog"])
    with pytest.raises(InputError, match="severity"):
        rb.robustness_split(small_run, severities=[0])
    with pytest.raises(InputError, match="at least 1"):
        rb.robustness_split(small_run, images=0)


def _row(name: str, estimate: float, low: float, high: float) -> rb.RobustnessRow:
    accuracy = stats.Interval(0.9, 0.85, 0.95, unit=stats.FRACTION, n=100)
    return rb.RobustnessRow(
        corruption=name,
        title=corr.CORRUPTIONS[name].title,
        severity=2,
        n=100,
        fp32_accuracy=accuracy,
        int8_accuracy=accuracy,
        gap=stats.Interval(estimate, low, high, unit=stats.POINTS, n=100),
        agreement=accuracy,
        flips=3,
        mcnemar=stats.mcnemar_from_counts(3, 0),
        gap_change=None,
        gap_change_interval=None,
        psnr_db=30.0,
    )


def test_robust_gate_judges_the_worst_condition_with_its_interval():
    wide = _row("jpeg", 0.6, 0.1, 1.1)
    narrow = _row("webcam", 0.55, 0.52, 0.58)
    rows = [wide, narrow]
    # The narrow condition is above 0.5 beyond doubt, although its gap is the smaller one.
    verdict = rb.robust_gap_gate(rows, 0.5)
    assert verdict.outcome == "fail beyond uncertainty" and verdict.failed
    assert "Webcam in a dim room" in verdict.reason and "0.52 to 0.58" in verdict.reason
    assert "2 of 2 corrupted conditions above it" in verdict.reason
    verdict = rb.robust_gap_gate(rows, 0.56)
    assert verdict.outcome == "fail within uncertainty" and "JPEG" in verdict.reason
    verdict = rb.robust_gap_gate(rows, 0.7)
    assert verdict.outcome == "pass within uncertainty" and not verdict.failed
    assert rb.robust_gap_gate(rows, 2.0).outcome == "pass"
    with pytest.raises(InputError):
        rb.robust_gap_gate(rows, float("nan"))


def test_robust_gate_on_a_real_split_fails_below_the_worst_gap_and_passes_above(small_run):
    split = rb.robustness_split(
        small_run, corruptions=["brightness_contrast"], severities=[3], images=58
    )
    worst = split.corrupted[0].gap  # one condition: it is the worst
    assert rb.robust_gap_gate(split, worst.estimate - 0.01).failed
    passing = rb.robust_gap_gate(split, worst.high + 0.01)
    assert passing.outcome == "pass" and "Dark, low contrast, severity 3" in passing.reason


# ---------------------------------------------------------------------------------------------
# Margins


def _pair(probs_top2: list[tuple[float, float]], fp32, int8, labels) -> PairEvaluation:
    n = len(labels)
    top5 = np.zeros((n, 5), dtype=int)
    probs = np.zeros((n, 5))
    probs[:, :2] = probs_top2
    fp = top5.copy()
    fp[:, 0] = fp32
    q = top5.copy()
    q[:, 0] = int8
    paths = tuple(f"img{i}" for i in range(n))
    return PairEvaluation(
        np.asarray(labels), Predictions(fp, probs), Predictions(q, probs), paths, paths
    )


def test_margins_count_each_flip_once_by_hand():
    # margins: 0.05, 0.1, 0.15, 0.5, 0.9, 0.9 ; flips at images 0, 2, 4
    probs = [(0.5, 0.45), (0.5, 0.4), (0.55, 0.4), (0.7, 0.2), (0.95, 0.05), (0.95, 0.05)]
    labels = [1, 1, 1, 1, 1, 1]
    fp32 = [1, 1, 2, 1, 1, 1]
    int8 = [3, 1, 1, 1, 4, 1]
    m = mg.flip_margins(_pair(probs, fp32, int8, labels), threshold=0.2, bins=3)
    assert (m.n, m.flips, m.unsure_images, m.unsure_flips, m.sure_flips) == (6, 3, 3, 2, 1)
    assert [(b.images, b.flips, b.flips_breaking) for b in m.bins] == [
        (2, 1, 1),
        (2, 1, 0),
        (2, 1, 1),
    ]
    assert m.bins[0].low == pytest.approx(0.05) and m.bins[2].high == pytest.approx(0.9)
    assert m.unsure_flip_rate.estimate == pytest.approx(2 / 3)
    assert m.median_margin_flipped == pytest.approx(0.15)
    assert m.headline.startswith("2 of 3 flips (67%) happened where FP32 was unsure")
    _json(m.to_dict(per_image=True))
    wide = mg.flip_margins(_pair(probs, fp32, int8, labels), bins=5, equal_width=True)
    edges = [edge for b in wide.bins for edge in (b.low, b.high)]
    assert edges == pytest.approx([0.0, 0.2, 0.2, 0.4, 0.4, 0.6, 0.6, 0.8, 0.8, 1.0])
    assert [(b.images, b.flips) for b in wide.bins] == [(3, 2), (0, 0), (1, 0), (0, 0), (2, 1)]
    assert wide.bins[1].flip_rate is None
    _json(wide.to_dict())


def test_margins_with_tied_confident_images_keep_every_bin_filled():
    probs = [(1.0, 0.0)] * 7 + [(0.4, 0.35)]
    m = mg.flip_margins(_pair(probs, [0] * 8, [0] * 7 + [5], [0] * 8), bins=10)
    assert len(m.bins) == 8 and all(b.images == 1 for b in m.bins)  # fewer images than bins
    assert sum(b.flips for b in m.bins) == 1 and m.bins[0].flips == 1
    none = mg.flip_margins(_pair(probs, [0] * 8, [0] * 8, [0] * 8))
    assert none.flips == 0 and none.headline.startswith("INT8 changed no top-1")
    # Margin exactly 1 belongs to the last equal-width range; no unsure image: rate None.
    sure = mg.flip_margins(_pair(probs[:7], [0] * 7, [0] * 6 + [2], [0] * 7), equal_width=True)
    assert sure.bins[-1].images == 7 and sure.bins[-1].flips == 1
    assert sure.unsure_flip_rate is None and sure.sure_flip_rate.estimate == pytest.approx(1 / 7)
    _json(sure.to_dict())


def test_margins_of_a_real_run_match_its_flipped_images(small_run):
    m = mg.flip_margins(small_run.evaluation)
    flipped = small_run.flipped()
    assert m.flips == len(flipped) == sum(b.flips for b in m.bins)
    assert sum(b.images for b in m.bins) == m.n == small_run.n_eval
    assert m.unsure_flips + m.sure_flips == m.flips
    by_path = dict(zip(small_run.evaluation.displays, m.margins, strict=True))
    for row in flipped:
        (_, p1), (_, p2) = row["fp32_top3"][:2]
        assert by_path[row["path"]] == pytest.approx(p1 - p2)
    edges = [(b.low, b.high) for b in m.bins]
    assert all(lo <= hi for lo, hi in edges)
    assert all(a[1] <= b[0] for a, b in zip(edges, edges[1:], strict=False))  # sorted bins
    _json(m.to_dict())
