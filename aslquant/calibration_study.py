"""Calibration luck and calibration size: the same recipe re-run with other calibration images.

A post-training recipe sets its activation ranges from a random draw of calibration images, so
the drop on screen is one sample of what the recipe can give. Two studies measure how much the
draw matters, on one fixed evaluation set:

- ``seed_spread_of``: the recipe re-run with k calibration draws of its own size; the drop,
  INT8 accuracy and agreement per draw and their ``stats.seed_spread``. The run's own
  calibration images are the first draw, so the figure on screen is one of the k.
- ``calibration_size_study``: INT8 accuracy, drop and agreement as a function of the
  calibration-set size (default 8, 32, 128, 512) x seeds, with the spread per size, the data of
  a plot, and a one-line reading of how many images are enough.

How the evaluation set stays fixed
----------------------------------
``load_inputs`` draws calibration and evaluation images from one seeded, class-stratified deal
(``data.stratified_split``): changing ``RunConfig.seed`` or the calibration size changes the
evaluation images too, so re-running with another seed would mix calibration luck with
evaluation luck. The studies therefore never re-seed the split. They hold one evaluation set
and draw calibration images only from the images outside it (the *calibration pool*):

- With ``--calib-data`` the evaluation set is the run's own (it is sampled from ``--data``
  independently of calibration) and the pool is every image of ``--calib-data``.
- Otherwise, when the images the run does not evaluate are at least ``POOL_FACTOR`` times the
  largest calibration size (or at least what carving would give), the evaluation set is the
  run's own and the pool is those images; the run's FP32 baseline is then reused as it is.
- Otherwise (e.g. the default "evaluate every image the calibration set leaves"), the pool
  would be the run's own calibration images and every draw would be the same. The study then
  *carves* a pool: the first ``POOL_FACTOR`` x largest-size images of the run's own seeded
  deal (at most half of the images). The deal is the same one the run used, so the run's own
  calibration images are inside the pool; the evaluation set is the run's own minus the pool
  images, in the run's order. The FP32 model is then evaluated once on it.

A study's ``split`` (``SplitInfo``) says which case applied (``same_as_run``), how many images
were evaluated and how many the pool held.

Each draw is a class-stratified ``data.sample`` of the pool with its own seed. For one seed the
draws of different sizes are nested (the 32-image draw contains the 8-image draw), so a curve
per seed shows the effect of adding images, not of changing them. The pool is finite, so two
draws can share images; ``mean_overlap`` reports the measured share, and a spread from heavily
overlapping draws understates calibration luck.

What each draw costs
--------------------
One ``quantize`` (calibration passes over the draw's images, conversion) and one INT8 pass over
the evaluation set; decoded pixels come from the shared pixel cache and the FP32 side is
evaluated at most once per study (``fp32_evaluations`` counts it). The per-draw figures are
those of ``run.execute`` (same calibration tensors, same ``quantize``, same batches and
threads); size, TorchScript size and latency, which do not depend on the calibration draw, are
not recomputed. Methods that fine-tune (QAT) go through ``run.execute`` itself, training once
per draw.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from aslquant import data as data_mod
from aslquant import run as run_mod
from aslquant import stats
from aslquant.data import LabeledImage
from aslquant.errors import InputError
from aslquant.measure import PairEvaluation, accuracy, evaluate_models, pair
from aslquant.quantize import Progress, quantize
from aslquant.recipe import FIELDS
from aslquant.run import Fp32Baseline, LoadedInputs, RunConfig
from aslquant.runtime import release_memory

#: Smallest number of calibration draws (``stats.seed_spread``: a range over 3 draws is the
#: least that says anything; its chance of holding one more draw is (k-1)/(k+1) = 0.5).
MIN_SEEDS = 3
#: Most draws a study runs (each is a quantization and an INT8 evaluation).
MAX_SEEDS = 20
#: A pool holds this many times the largest calibration set when it can, so two random draws
#: share about 1/POOL_FACTOR of their images.
POOL_FACTOR = 4
#: When the pool has to be carved out of the evaluation images, the evaluation keeps at least
#: this share of them.
MIN_EVAL_SHARE = 0.5
#: Calibration-set sizes the size study tries by default.
DEFAULT_SIZES: tuple[int, ...] = (8, 32, 128, 512)
#: The size study calls a size "enough" when every seed's drop at that size and above stays
#: within this many points of the largest size's drops (or one evaluation image, if larger).
DEFAULT_TOLERANCE_POINTS = 0.5


def images_digest(items: Sequence[LabeledImage]) -> str:
    """A short fingerprint of an ordered list of images (their display names and labels)."""
    blob = json.dumps([[it.display, it.label] for it in items])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _check_seeds(seeds: int) -> int:
    if isinstance(seeds, bool) or not isinstance(seeds, int):
        raise InputError(f"calibration seeds must be a whole number, got {seeds!r}")
    if not MIN_SEEDS <= seeds <= MAX_SEEDS:
        raise InputError(
            f"calibration seeds must be {MIN_SEEDS}..{MAX_SEEDS} (a spread needs at least "
            f"{MIN_SEEDS} draws), got {seeds}"
        )
    return seeds


def _needs_calibration(config: RunConfig) -> None:
    recipe = config.recipe
    if recipe.calibration_images == 0:
        raise InputError(
            f"method {recipe.method} uses no calibration images: its drop does not depend on "
            "a calibration draw, so there is no calibration study to run"
        )


# ---------------------------------------------------------------------------------------------
# The fixed evaluation set and the calibration pool


@dataclass(frozen=True)
class StudySplit:
    """A study's fixed evaluation set (inside ``inputs``) and the pool its draws come from.

    ``run_calibration``: the run's own calibration images, in the run's order (inside the pool
    whenever the pool was made for at least the recipe's calibration size).
    """

    inputs: LoadedInputs
    pool: tuple[LabeledImage, ...]
    run_calibration: tuple[LabeledImage, ...]
    same_as_run: bool
    run_eval_images: int
    description: str

    @property
    def n_eval(self) -> int:
        return len(self.inputs.eval_items)

    def info(self) -> SplitInfo:
        """The plain facts a result keeps (not the live model and image lists)."""
        return SplitInfo(
            n_eval=self.n_eval,
            run_eval_images=self.run_eval_images,
            pool_images=len(self.pool),
            same_as_run=self.same_as_run,
            evaluation_digest=images_digest(self.inputs.eval_items),
            description=self.description,
        )


@dataclass(frozen=True)
class SplitInfo:
    """What a study was evaluated on: images, pool, and whether it is the run's own set."""

    n_eval: int
    run_eval_images: int
    pool_images: int
    same_as_run: bool
    evaluation_digest: str
    description: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def study_split(config: RunConfig, largest: int, inputs: LoadedInputs | None = None) -> StudySplit:
    """The evaluation set and calibration pool for draws of up to ``largest`` images.

    See the module docstring for the three cases. Raises InputError when there are too few
    images for any pool at all.
    """
    inputs = inputs or run_mod.load_inputs(config)
    run_eval = len(inputs.eval_items)
    if config.calib_data:
        calib_set = data_mod.load_image_set(config.calib_data, list(inputs.class_names))
        pool = tuple(calib_set.items)
        return StudySplit(
            inputs,
            pool,
            inputs.calib_items,
            True,
            run_eval,
            f"the run's {run_eval} evaluation images; calibration drawn from the "
            f"{len(pool)} images of {config.calib_data}",
        )
    items = list(inputs.image_set.items)
    evaluated = set(inputs.eval_items)
    rest = tuple(it for it in items if it not in evaluated)
    carve = min(POOL_FACTOR * largest, int(len(items) * (1.0 - MIN_EVAL_SHARE)))
    if len(rest) >= carve:
        return StudySplit(
            inputs,
            rest,
            inputs.calib_items,
            True,
            run_eval,
            f"the run's {run_eval} evaluation images; calibration drawn from the {len(rest)} "
            "images it does not evaluate",
        )
    # The first ``carve`` images of the run's own deal: its calibration images come first in
    # that deal, so they are inside the pool.
    pool = data_mod.stratified_split(items, carve, 0, config.seed)[0]
    held_out = set(pool)
    evaluation = [it for it in inputs.eval_items if it not in held_out]
    if not evaluation:
        raise InputError(f"{config.data}: too few images to hold out a calibration pool")
    # Derived from the run's FP32 key (model, labels, preprocessing, threads) and the study's
    # evaluation images, so a baseline is reused only on exactly these images.
    parts = [inputs.fp32_key, [it.display for it in evaluation]]
    fp32_key = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]
    study_inputs = dataclasses.replace(inputs, eval_items=tuple(evaluation), fp32_key=fp32_key)
    return StudySplit(
        study_inputs,
        tuple(pool),
        inputs.calib_items,
        False,
        run_eval,
        f"{len(evaluation)} of the run's {run_eval} evaluation images: the first {len(pool)} "
        f"images of the run's seeded deal (seed {config.seed}, its own calibration images "
        "included) are held out as the calibration pool",
    )


def draw(pool: Sequence[LabeledImage], size: int, seed: int) -> tuple[LabeledImage, ...]:
    """A class-stratified, seeded draw of ``size`` pool images (nested across sizes per seed)."""
    return tuple(data_mod.sample(list(pool), size, seed))


def mean_overlap(draws: Sequence[Sequence[LabeledImage]]) -> float | None:
    """Mean share of images two draws have in common (None for fewer than two draws)."""
    shares = [
        len(set(a) & set(b)) / max(1, min(len(a), len(b)))
        for a, b in itertools.combinations(draws, 2)
    ]
    return float(np.mean(shares)) if shares else None


# ---------------------------------------------------------------------------------------------
# One calibration draw


@dataclass(frozen=True)
class CalibrationDraw:
    """The recipe calibrated on one draw and scored on the study's evaluation set.

    ``seed`` is None for the run's own calibration images. ``drop`` is the drop in points with
    its paired 95% interval over the evaluation images (``stats.paired_drop_interval``).
    """

    seed: int | None
    calib_images: int
    int8_accuracy: float
    drop_points: float
    agreement: float
    flips: int
    drop: stats.Interval
    calibration_digest: str
    evaluation_digest: str
    seconds: float

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["drop"] = self.drop.to_dict()
        return d


def _scored(
    seed: int | None,
    calib: Sequence[LabeledImage],
    n_used: int,
    evaluation: PairEvaluation,
    seconds: float,
) -> CalibrationDraw:
    y, f, q = evaluation.labels, evaluation.fp32.top1, evaluation.quant.top1
    fp32_ok, int8_ok = f == y, q == y
    return CalibrationDraw(
        seed=seed,
        calib_images=n_used,
        int8_accuracy=float(int8_ok.mean()),
        drop_points=float(100.0 * (fp32_ok.mean() - int8_ok.mean())),
        agreement=float((f == q).mean()),
        flips=int((f != q).sum()),
        drop=stats.paired_drop_interval(fp32_ok, int8_ok),
        calibration_digest=images_digest(calib),
        evaluation_digest=images_digest(
            [LabeledImage("", d, int(lab)) for d, lab in zip(evaluation.displays, y, strict=True)]
        ),
        seconds=seconds,
    )


def _draw_key(inputs: LoadedInputs, calib: Sequence[LabeledImage]) -> str:
    parts = [inputs.key, inputs.fp32_key, images_digest(calib)]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def run_draw(
    config: RunConfig,
    split: StudySplit,
    calib: Sequence[LabeledImage],
    baseline: Fp32Baseline,
    seed: int | None = None,
    progress: Progress | None = None,
) -> CalibrationDraw:
    """Quantize ``config.recipe`` calibrated on ``calib`` and score it against ``baseline``.

    ``baseline`` must be the FP32 side of ``split.inputs`` (same evaluation images).
    """
    inputs = split.inputs
    if baseline.key != inputs.fp32_key:
        raise ValueError("the FP32 baseline was measured on other evaluation images")
    started = time.perf_counter()
    pp, recipe = config.preprocess, config.recipe
    calib = tuple(calib)
    if recipe.method_spec.trains:
        # Fine-tuning needs execute's training batches and per-epoch evaluation.
        train = calib if inputs.train_items == inputs.calib_items else inputs.train_items
        draw_inputs = dataclasses.replace(
            inputs, calib_items=calib, train_items=train, key=_draw_key(inputs, calib)
        )
        result = run_mod.execute(
            config, progress, inputs=draw_inputs, baseline=baseline, timed=False
        )
        return _scored(
            seed, calib, result.n_calib, result.evaluation, time.perf_counter() - started
        )
    calibration = data_mod.load_tensors(list(calib), pp).x
    if len(calibration) == 0:
        raise InputError(f"{config.calib_data or config.data}: no readable calibration images")
    quantized = quantize(
        inputs.model, recipe, calibration, input_size=pp.input_size, progress=progress
    )
    int8 = evaluate_models(
        {"int8": (quantized.module, quantized.backend)},
        data_mod.iter_batches(list(inputs.eval_items), pp, batch_size=32),
        total=len(inputs.eval_items),
        progress=progress,
        threads=config.threads,
    )["int8"]
    evaluation = pair(baseline.evaluation, int8)
    del quantized
    release_memory()
    n_used = min(len(calibration), recipe.calib_images)
    return _scored(seed, calib, n_used, evaluation, time.perf_counter() - started)


def study_baseline(
    config: RunConfig,
    split: StudySplit,
    baseline: Fp32Baseline | None,
    progress: Progress | None = None,
) -> tuple[Fp32Baseline, int]:
    """``baseline`` when it covers the study's evaluation set, else one FP32 evaluation.

    Returns the baseline and how many FP32 evaluations that took (0 or 1).
    """
    if baseline is not None and baseline.key == split.inputs.fp32_key:
        return baseline, 0
    return run_mod.evaluate_fp32(config, split.inputs, progress), 1


def _fp32_accuracy(baseline: Fp32Baseline) -> float:
    ev = baseline.evaluation
    return float(accuracy(ev.labels, ev.predictions)["accuracy"])


class _Steps:
    """Maps each step's own 0..1 progress into the study's overall progress."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress, self.total, self.done = progress, max(1, total), 0

    def step(self, label: str) -> Progress | None:
        if self.progress is None:
            return None
        start, progress, total = self.done, self.progress, self.total
        self.done += 1

        def report(stage: str, fraction: float) -> None:
            progress(f"{label}: {stage}", min(1.0, (start + min(1.0, fraction)) / total))

        return report


# ---------------------------------------------------------------------------------------------
# Calibration-seed spread


@dataclass(frozen=True)
class SeedStudy:
    """The recipe re-run with ``k`` calibration draws of ``calib_images`` on one evaluation set.

    ``draws[0]`` uses the run's own calibration images (seed None). ``drop`` / ``int8_accuracy``
    / ``agreement`` are ``stats.SeedSpread`` values (points, fraction, fraction); pass ``drop``
    to ``stats.gate_verdict(..., seeds=study.drop)`` for a gate that sees calibration luck.
    """

    recipe: str
    calib_images: int
    draws: tuple[CalibrationDraw, ...]
    fp32_accuracy: float
    split: SplitInfo
    mean_overlap: float | None
    drop: stats.SeedSpread
    int8_accuracy: stats.SeedSpread
    agreement: stats.SeedSpread
    fp32_evaluations: int
    seconds: float
    notes: tuple[str, ...]

    @property
    def k(self) -> int:
        return len(self.draws)

    @property
    def summary(self) -> str:
        """One line: how far calibration luck moved the drop."""
        d = self.drop
        return (
            f"Over {self.k} calibration draws of {self.calib_images} images the drop ranged "
            f"{d.min:.2f} to {d.max:.2f} points (mean {d.mean:.2f}) on {self.split.n_eval} "
            "evaluation images"
        )

    def to_dict(self) -> dict:
        return {
            "recipe": self.recipe,
            "calib_images": self.calib_images,
            "k": self.k,
            "fp32_accuracy": self.fp32_accuracy,
            "draws": [d.to_dict() for d in self.draws],
            "split": self.split.to_dict(),
            "mean_overlap": self.mean_overlap,
            "drop": self.drop.to_dict(),
            "int8_accuracy": self.int8_accuracy.to_dict(),
            "agreement": self.agreement.to_dict(),
            "fp32_evaluations": self.fp32_evaluations,
            "seconds": self.seconds,
            "summary": self.summary,
            "notes": list(self.notes),
        }


def _overlap_note(overlap: float | None, what: str) -> list[str]:
    if overlap is not None and overlap >= 0.5:
        return [
            f"{what} share {overlap:.0%} of their images on average (the calibration pool is "
            "small): the spread understates how much another draw could move the drop"
        ]
    return []


def seed_spread_of(
    config: RunConfig,
    k: int = MIN_SEEDS,
    progress: Progress | None = None,
    baseline: Fp32Baseline | None = None,
    *,
    inputs: LoadedInputs | None = None,
) -> SeedStudy:
    """The recipe of ``config`` re-run with ``k`` (>= 3) calibration draws; see module doc.

    The first draw is the run's own calibration set; draw i >= 1 is ``draw(pool, n, seed + i)``.
    ``baseline``: the run's FP32 side (``result.baseline``), reused when the study evaluates on
    the run's own images. Cost: k x (quantize + one INT8 pass over the evaluation set), plus
    one FP32 pass when the evaluation set had to be carved or no baseline was given.
    """
    started = time.perf_counter()
    k = _check_seeds(k)
    _needs_calibration(config)
    n_calib = config.recipe.calibration_images
    split = study_split(config, n_calib, inputs)
    if len(split.pool) <= n_calib:
        raise InputError(
            f"{config.calib_data or config.data}: the calibration pool has {len(split.pool)} "
            f"images, not more than the {n_calib} each draw needs, so every draw would be the "
            "same; give more calibration images (--calib-data) or fewer --calib-images"
        )
    steps = _Steps(progress, k + 1)
    base, fp32_evaluations = study_baseline(config, split, baseline, steps.step("FP32"))
    calib_sets: list[tuple[tuple[LabeledImage, ...], int | None]] = [(split.run_calibration, None)]
    for i in range(1, k):
        seed = (config.seed + i) % (2**31)
        calib_sets.append((draw(split.pool, n_calib, seed), seed))
    draws = tuple(
        run_draw(config, split, calib, base, seed, steps.step(f"draw {i + 1}/{k}"))
        for i, (calib, seed) in enumerate(calib_sets)
    )
    overlap = mean_overlap([calib for calib, _ in calib_sets])
    notes = _overlap_note(overlap, f"the {k} draws")
    if not split.same_as_run:
        notes.append(
            f"evaluated on {split.n_eval} images, not the run's {split.run_eval_images}: "
            "the rest are the calibration pool (see split.description)"
        )
    return SeedStudy(
        recipe=config.recipe.describe(),
        calib_images=n_calib,
        draws=draws,
        fp32_accuracy=_fp32_accuracy(base),
        split=split.info(),
        mean_overlap=overlap,
        drop=stats.seed_spread([d.drop_points for d in draws]),
        int8_accuracy=stats.seed_spread([d.int8_accuracy for d in draws], stats.FRACTION),
        agreement=stats.seed_spread([d.agreement for d in draws], stats.FRACTION),
        fp32_evaluations=fp32_evaluations,
        seconds=time.perf_counter() - started,
        notes=tuple(notes),
    )


# ---------------------------------------------------------------------------------------------
# Calibration-size study


@dataclass(frozen=True)
class SizePoint:
    """One calibration-set size over the study's seeds."""

    size: int
    draws: tuple[CalibrationDraw, ...]
    mean_overlap: float | None
    drop: stats.SeedSpread
    int8_accuracy: stats.SeedSpread
    agreement: stats.SeedSpread

    def to_dict(self) -> dict:
        return {
            "size": self.size,
            "draws": [d.to_dict() for d in self.draws],
            "mean_overlap": self.mean_overlap,
            "drop": self.drop.to_dict(),
            "int8_accuracy": self.int8_accuracy.to_dict(),
            "agreement": self.agreement.to_dict(),
        }


#: The figures a size study plots, with their units.
PLOT_METRICS: dict[str, str] = {
    "int8_accuracy": stats.FRACTION,
    "drop": stats.POINTS,
    "agreement": stats.FRACTION,
}


@dataclass(frozen=True)
class CalibrationStudy:
    """Accuracy, drop and agreement by calibration-set size, each over the same seeds.

    ``enough_from``: the smallest size from which every seed's drop, at that size and every
    larger one, lies within ``tolerance_points`` of the largest size's drops (None when fewer
    than two sizes fit). ``reading`` says it in one line; ``plot_rows`` is the plot's data.
    """

    recipe: str
    seeds: tuple[int, ...]
    points: tuple[SizePoint, ...]
    skipped_sizes: tuple[int, ...]
    fp32_accuracy: float
    split: SplitInfo
    tolerance_points: float
    enough_from: int | None
    reading: str
    fp32_evaluations: int
    seconds: float
    notes: tuple[str, ...]

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(p.size for p in self.points)

    def plot_rows(self) -> list[dict]:
        """One row per (size, figure): mean, min, max and the per-seed values (plot data)."""
        rows = []
        for point in self.points:
            for metric, unit in PLOT_METRICS.items():
                spread: stats.SeedSpread = getattr(point, metric)
                rows.append(
                    {
                        "size": point.size,
                        "metric": metric,
                        "unit": unit,
                        "mean": spread.mean,
                        "min": spread.min,
                        "max": spread.max,
                        "values": list(spread.values),
                        "seeds": list(self.seeds),
                    }
                )
        return rows

    def to_dict(self) -> dict:
        return {
            "recipe": self.recipe,
            "seeds": list(self.seeds),
            "sizes": list(self.sizes),
            "skipped_sizes": list(self.skipped_sizes),
            "fp32_accuracy": self.fp32_accuracy,
            "points": [p.to_dict() for p in self.points],
            "plot": self.plot_rows(),
            "split": self.split.to_dict(),
            "tolerance_points": self.tolerance_points,
            "enough_from": self.enough_from,
            "reading": self.reading,
            "fp32_evaluations": self.fp32_evaluations,
            "seconds": self.seconds,
            "notes": list(self.notes),
        }


def _check_sizes(sizes: Sequence[int]) -> tuple[int, ...]:
    limit = FIELDS["calib_images"].constraint
    checked = sorted({limit.check("calibration study size", s) for s in sizes})
    if not checked:
        raise InputError("calibration study: give at least one calibration-set size")
    return tuple(checked)


def enough_from(points: Sequence[SizePoint], tolerance: float) -> int | None:
    """The smallest size from which all seeds' drops stay within ``tolerance`` points of the
    largest size's range (see ``CalibrationStudy``); None with fewer than two sizes."""
    if len(points) < 2:
        return None
    ref = points[-1].drop
    low, high = ref.min - tolerance, ref.max + tolerance
    found = points[-1].size
    for point in reversed(points):
        if point.drop.min >= low and point.drop.max <= high:
            found = point.size
        else:
            break
    return found


def _reading(points: Sequence[SizePoint], enough: int | None, tolerance: float) -> str:
    ref = points[-1]

    def span(p: SizePoint) -> str:
        return f"{p.drop.min:.2f} to {p.drop.max:.2f} points"

    if enough is None:
        return (
            f"Only one calibration size fits ({ref.size} images, drop {span(ref)}): "
            "nothing to compare"
        )
    smaller = [p for p in points if p.size < enough]
    if enough == points[0].size:
        return (
            f"Even {enough} calibration images give a drop within {tolerance:.2f} points of "
            f"{ref.size} images' ({span(ref)}): calibration size hardly matters for this model"
        )
    if enough == ref.size:
        before = smaller[-1]
        return (
            f"Below {ref.size} calibration images some seed's drop lies more than "
            f"{tolerance:.2f} points from the drop with {ref.size} ({span(ref)}); with "
            f"{before.size} it was {span(before)}: calibrate on {ref.size} images or judge the "
            "drop with its seed spread"
        )
    worst = smaller[-1]
    return (
        f"From {enough} calibration images on, every seed's drop stays within "
        f"{tolerance:.2f} points of the drop with {ref.size} ({span(ref)}); with {worst.size} "
        f"it was {span(worst)}"
    )


def calibration_size_study(
    config: RunConfig,
    sizes: Sequence[int] = DEFAULT_SIZES,
    seeds: int = MIN_SEEDS,
    progress: Progress | None = None,
    baseline: Fp32Baseline | None = None,
    *,
    inputs: LoadedInputs | None = None,
    tolerance_points: float = DEFAULT_TOLERANCE_POINTS,
) -> CalibrationStudy:
    """INT8 accuracy, drop and agreement by calibration size x ``seeds`` (>= 3) draws.

    Sizes larger than the calibration pool are skipped (listed in ``skipped_sizes``). Seed j
    draws ``draw(pool, size, config.seed + j)`` at every size, so one seed's draws are nested.
    Cost: len(sizes) x seeds x (quantize on ``size`` images + one INT8 pass over the
    evaluation set), plus at most one FP32 pass. ``tolerance_points`` is raised to one
    evaluation image (100 / n_eval points) when that is larger: a smaller change is not
    measurable.
    """
    started = time.perf_counter()
    seeds = _check_seeds(seeds)
    _needs_calibration(config)
    if not (isinstance(tolerance_points, int | float) and math.isfinite(tolerance_points)):
        raise InputError(f"calibration study tolerance must be a number, got {tolerance_points!r}")
    wanted = _check_sizes(sizes)
    split = study_split(config, max(wanted), inputs)
    fitting = tuple(s for s in wanted if s <= len(split.pool))
    skipped = tuple(s for s in wanted if s > len(split.pool))
    if not fitting:
        raise InputError(
            f"{config.calib_data or config.data}: the calibration pool has {len(split.pool)} "
            f"images, fewer than the smallest size asked for ({wanted[0]})"
        )
    seed_values = tuple((config.seed + j) % (2**31) for j in range(seeds))
    steps = _Steps(progress, len(fitting) * seeds + 1)
    base, fp32_evaluations = study_baseline(config, split, baseline, steps.step("FP32"))
    points = []
    for size in fitting:
        sized = config.with_recipe(calib_images=size)
        calib_sets = [draw(split.pool, size, seed) for seed in seed_values]
        draws = tuple(
            run_draw(sized, split, calib, base, seed, steps.step(f"{size} images, seed {seed}"))
            for calib, seed in zip(calib_sets, seed_values, strict=True)
        )
        points.append(
            SizePoint(
                size=size,
                draws=draws,
                mean_overlap=mean_overlap(calib_sets),
                drop=stats.seed_spread([d.drop_points for d in draws]),
                int8_accuracy=stats.seed_spread([d.int8_accuracy for d in draws], stats.FRACTION),
                agreement=stats.seed_spread([d.agreement for d in draws], stats.FRACTION),
            )
        )
    tolerance = max(float(tolerance_points), 100.0 / max(1, split.n_eval))
    enough = enough_from(points, tolerance)
    notes = []
    if skipped:
        notes.append(
            f"sizes {', '.join(map(str, skipped))} skipped: the calibration pool has "
            f"{len(split.pool)} images"
        )
    notes += _overlap_note(points[-1].mean_overlap, f"the {points[-1].size}-image draws")
    if not split.same_as_run:
        notes.append(
            f"evaluated on {split.n_eval} images, not the run's {split.run_eval_images}: "
            "the rest are the calibration pool (see split.description)"
        )
    return CalibrationStudy(
        recipe=config.recipe.describe(),
        seeds=seed_values,
        points=tuple(points),
        skipped_sizes=skipped,
        fp32_accuracy=_fp32_accuracy(base),
        split=split.info(),
        tolerance_points=tolerance,
        enough_from=enough,
        reading=_reading(points, enough, tolerance),
        fp32_evaluations=fp32_evaluations,
        seconds=time.perf_counter() - started,
        notes=tuple(notes),
    )
