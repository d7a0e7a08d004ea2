"""The robustness split: FP32 and INT8 on corrupted copies of the evaluation images.

A webcam frame is noisier, blurrier, darker and more compressed than a dataset photo, and the
INT8 gap can widen on such images (coarser activation steps lose more of a faint signal). For
every corruption in ``aslquant.corruptions`` at every severity, both models see the same
corrupted images, and each condition reports FP32 accuracy, INT8 accuracy, the INT8 gap
(FP32 minus INT8, points) with its paired 95% interval over the images, and how much the gap
moved against the clean images.

How the images are made
-----------------------
Each evaluation image is decoded once (``data.open_image``: RGB, EXIF orientation applied, as
the pixel cache decodes it), corrupted at its source resolution with
``corruptions.corrupt_array(rgb, name, severity, seed=seed, index=i)`` (``i`` its position in
the subset, so every image gets its own noise and the split is reproducible from ``seed``),
then preprocessed exactly as the run preprocesses (``Preprocess.pixels`` then ``normalize``)
and fed to both models in the same batches of 32. Nothing is written to disk. The clean row
goes through the same path without the corruption step, so it equals the run's own
predictions on the subset and a change in the gap is the corruption's alone.

Subset
------
By default the first ``DEFAULT_IMAGES`` (290) evaluation images, in evaluation order. The
evaluation set is dealt round-robin over classes (``data.stratified_split``), so a prefix is
class-balanced (10 images per class for the 29 ASL classes). ``RobustnessSplit.images`` and
``of_images`` say how many of how many were used.

Cost
----
1 + corruptions x severities passes (25 by default) of both models over the subset, plus the
corruptions themselves: about 25 x (the run's FP32 + INT8 evaluation time of 290 images).
Each row records its seconds and the part spent corrupting; ``bench/studies.py`` prints both.
Decoded source images are kept for the whole split up to ``DECODED_BUDGET_BYTES`` (beyond it,
an image is decoded again per condition).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from aslquant import corruptions as corr
from aslquant import data as data_mod
from aslquant import stats
from aslquant.data import Batch, LabeledImage, Preprocess
from aslquant.errors import InputError
from aslquant.measure import evaluate_models, fp32_runner
from aslquant.quantize import Progress
from aslquant.run import RunResult

#: Evaluation images the split uses by default (a class-balanced prefix: 10 per ASL class).
DEFAULT_IMAGES = 290
#: Most bytes of decoded source images kept across conditions (uint8 RGB at source size).
DECODED_BUDGET_BYTES = 512 * 1024 * 1024
#: The name and severity of the uncorrupted reference row.
CLEAN = "clean"
_BATCH = 32


@dataclass(frozen=True)
class RobustnessRow:
    """FP32 and INT8 on one condition (a corruption at a severity, or the clean images).

    ``gap`` is FP32 minus INT8 accuracy in points with its paired interval; ``gap_change`` is
    this gap minus the clean gap (points, same images), with a paired bootstrap interval when
    at least ``stats.SMALL_COUNT`` images changed their contribution (else None: too few for a
    bootstrap to be trusted). ``psnr_db``: mean PSNR of the corrupted images against the
    originals at source resolution (None for clean; identical images count as 100 dB).
    """

    corruption: str
    title: str
    severity: int
    n: int
    fp32_accuracy: stats.Interval
    int8_accuracy: stats.Interval
    gap: stats.Interval
    agreement: stats.Interval
    flips: int
    mcnemar: stats.McNemar
    gap_change: float | None
    gap_change_interval: stats.Interval | None
    psnr_db: float | None
    #: Wall-clock seconds of the whole condition, and of the corruption step alone.
    seconds: float = 0.0
    corruption_seconds: float = 0.0

    @property
    def label(self) -> str:
        return self.title if self.corruption == CLEAN else f"{self.title}, severity {self.severity}"

    def to_dict(self) -> dict:
        return {
            "corruption": self.corruption,
            "title": self.title,
            "severity": self.severity,
            "label": self.label,
            "n": self.n,
            "fp32_accuracy": self.fp32_accuracy.to_dict(),
            "int8_accuracy": self.int8_accuracy.to_dict(),
            "gap": self.gap.to_dict(),
            "agreement": self.agreement.to_dict(),
            "flips": self.flips,
            "mcnemar": self.mcnemar.to_dict(),
            "gap_change": self.gap_change,
            "gap_change_interval": (
                None if self.gap_change_interval is None else self.gap_change_interval.to_dict()
            ),
            "psnr_db": self.psnr_db,
            "seconds": self.seconds,
            "corruption_seconds": self.corruption_seconds,
        }


@dataclass(frozen=True)
class RobustnessSplit:
    """Every condition's row, the clean one first, and what the split was run on."""

    recipe: str
    rows: tuple[RobustnessRow, ...]
    images: int
    of_images: int
    seed: int
    seconds: float
    notes: tuple[str, ...]

    @property
    def clean(self) -> RobustnessRow:
        return self.rows[0]

    @property
    def corrupted(self) -> tuple[RobustnessRow, ...]:
        return tuple(r for r in self.rows if r.corruption != CLEAN)

    @property
    def subset(self) -> str:
        return _subset_text(self.images, self.of_images)

    def plot_rows(self) -> list[dict]:
        """Plot data: one row per condition with both accuracies and the gap (points)."""
        return [
            {
                "corruption": r.corruption,
                "title": r.title,
                "severity": r.severity,
                "fp32_accuracy": r.fp32_accuracy.estimate,
                "int8_accuracy": r.int8_accuracy.estimate,
                "gap": r.gap.estimate,
                "gap_low": r.gap.low,
                "gap_high": r.gap.high,
                "gap_change": r.gap_change,
            }
            for r in self.rows
        ]

    def to_dict(self) -> dict:
        return {
            "recipe": self.recipe,
            "images": self.images,
            "of_images": self.of_images,
            "subset": self.subset,
            "seed": self.seed,
            "rows": [r.to_dict() for r in self.rows],
            "seconds": self.seconds,
            "notes": list(self.notes),
        }


# ---------------------------------------------------------------------------------------------
# Images


class _Sources:
    """The subset's decoded source images, kept up to a byte budget (then decoded per use)."""

    def __init__(self, items: Sequence[LabeledImage], budget: int) -> None:
        self.items, self.budget = items, budget
        self.kept: dict[int, np.ndarray] = {}
        self.bytes = 0

    def rgb(self, index: int) -> np.ndarray:
        cached = self.kept.get(index)
        if cached is not None:
            return cached
        image = data_mod.open_image(self.items[index].path, self.items[index].display)
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
        if self.bytes + rgb.nbytes <= self.budget:
            rgb.flags.writeable = False
            self.kept[index] = rgb
            self.bytes += rgb.nbytes
        return rgb


def _batches(
    sources: _Sources,
    pp: Preprocess,
    name: str | None,
    severity: int,
    seed: int,
    psnr: list[float],
    spent: list[float],
) -> Iterator[Batch]:
    """Batches of the subset under one condition (``name=None``: clean), in subset order.

    Appends each image's PSNR to ``psnr`` and adds the seconds spent corrupting to ``spent[0]``.
    """
    items = sources.items
    for start in range(0, len(items), _BATCH):
        pixels = []
        for i in range(start, min(start + _BATCH, len(items))):
            rgb = sources.rgb(i)
            if name is not None:
                t0 = time.perf_counter()
                damaged = corr.corrupt_array(rgb, name, severity, seed=seed, index=i)
                spent[0] += time.perf_counter() - t0
                psnr.append(min(100.0, corr.psnr(rgb, damaged)))
                rgb = damaged
            pixels.append(pp.pixels(Image.fromarray(rgb, "RGB")))
        chunk = list(items[start : start + len(pixels)])
        labels = torch.tensor([it.label for it in chunk], dtype=torch.long)
        yield Batch(pp.normalize(np.stack(pixels)), labels, chunk)


def _subset_text(images: int, of_images: int) -> str:
    if images == of_images:
        return f"all {of_images} evaluation images"
    return f"the first {images} of {of_images} evaluation images (class-balanced)"


def _subset(result: RunResult, images: int | None) -> list[LabeledImage]:
    ev = result.evaluation
    n = ev.n if images is None else min(images, ev.n)
    return [LabeledImage(ev.paths[i], ev.displays[i], int(ev.labels[i])) for i in range(n)]


# ---------------------------------------------------------------------------------------------
# Rows


def _gap_change(
    fp32: np.ndarray, int8: np.ndarray, clean_fp32: np.ndarray, clean_int8: np.ndarray
) -> tuple[float, stats.Interval | None]:
    per_image = (fp32.astype(float) - int8) - (clean_fp32.astype(float) - clean_int8)
    estimate = float(100.0 * per_image.mean())
    if int(np.count_nonzero(per_image)) < stats.SMALL_COUNT:
        return estimate, None
    reps = 100.0 * stats.bootstrap_means(per_image)[:, 0]
    lo, hi = np.percentile(reps, [2.5, 97.5])
    method = f"paired percentile bootstrap ({stats.DEFAULT_N_BOOT})"
    return estimate, stats.Interval(
        estimate, float(lo), float(hi), 0.95, method, stats.POINTS, len(per_image)
    )


def _row(
    name: str,
    title: str,
    severity: int,
    labels: np.ndarray,
    fp32_top1: np.ndarray,
    int8_top1: np.ndarray,
    clean: tuple[np.ndarray, np.ndarray] | None,
    psnr: list[float],
) -> RobustnessRow:
    summary = stats.pair_summary(labels, fp32_top1, int8_top1)
    change, change_interval = None, None
    if clean is not None:
        change, change_interval = _gap_change(
            fp32_top1 == labels, int8_top1 == labels, clean[0], clean[1]
        )
    return RobustnessRow(
        corruption=name,
        title=title,
        severity=severity,
        n=summary.n,
        fp32_accuracy=summary.fp32_accuracy,
        int8_accuracy=summary.int8_accuracy,
        gap=summary.drop,
        agreement=summary.agreement,
        flips=int((fp32_top1 != int8_top1).sum()),
        mcnemar=summary.mcnemar,
        gap_change=change,
        gap_change_interval=change_interval,
        psnr_db=float(np.mean(psnr)) if psnr else None,
    )


def _check_conditions(
    corruption_names: Sequence[str], severities: Sequence[int]
) -> tuple[tuple[str, ...], tuple[int, ...]]:
    names = tuple(corr.corruption(n).name for n in corruption_names)
    sevs = tuple(sorted({corr.check_severity(s) for s in severities}))
    if len(set(names)) != len(names):
        raise InputError(f"robustness split: corruption names repeat: {list(corruption_names)}")
    return names, sevs


def robustness_split(
    result: RunResult,
    *,
    corruptions: Sequence[str] = tuple(corr.CORRUPTIONS),
    severities: Sequence[int] = corr.SEVERITIES,
    images: int | None = DEFAULT_IMAGES,
    seed: int | None = None,
    progress: Progress | None = None,
) -> RobustnessSplit:
    """FP32 vs INT8 of ``result`` on corrupted copies of its evaluation images.

    ``images``: how many evaluation images (a class-balanced prefix; None for all).
    ``seed``: the corruptions' seed (default: the run's ``config.seed``). Cost: see module doc.
    """
    started = time.perf_counter()
    names, sevs = _check_conditions(corruptions, severities)
    if images is not None and (isinstance(images, bool) or not isinstance(images, int)):
        raise InputError(f"robustness split: images must be a whole number, got {images!r}")
    if images is not None and images < 1:
        raise InputError(f"robustness split: images must be at least 1, got {images}")
    seed = result.config.seed if seed is None else seed
    config, pp = result.config, result.config.preprocess
    items = _subset(result, images)
    if not items:
        raise InputError("robustness split: the run has no evaluated images")
    sources = _Sources(items, DECODED_BUDGET_BYTES)
    models = {
        "fp32": (fp32_runner(result.fp32_model), None),
        "int8": (result.quantized.module, result.quantized.backend),
    }
    conditions: list[tuple[str | None, str, int]] = [(None, "Clean images", 0)]
    conditions += [(n, corr.CORRUPTIONS[n].title, s) for n in names for s in sevs]
    rows: list[RobustnessRow] = []
    clean: tuple[np.ndarray, np.ndarray] | None = None
    for position, (name, title, severity) in enumerate(conditions):
        t0 = time.perf_counter()
        psnr: list[float] = []
        spent = [0.0]
        batches = _batches(sources, pp, name, severity, seed, psnr, spent)
        ev = evaluate_models(models, batches, threads=config.threads)
        labels = ev["fp32"].labels
        f, q = ev["fp32"].predictions.top1, ev["int8"].predictions.top1
        row = _row(name or CLEAN, title, severity, labels, f, q, clean, psnr)
        row = dataclasses.replace(
            row, seconds=time.perf_counter() - t0, corruption_seconds=spent[0]
        )
        if name is None:
            clean = (f == labels, q == labels)
        rows.append(row)
        if progress:
            progress(f"robustness: {row.label}", (position + 1) / len(conditions))
    notes = [f"measured on {_subset_text(len(items), result.n_eval)}, corruption seed {seed}"]
    return RobustnessSplit(
        recipe=config.recipe.describe(),
        rows=tuple(rows),
        images=len(items),
        of_images=result.n_eval,
        seed=int(seed),
        seconds=time.perf_counter() - started,
        notes=tuple(notes),
    )


# ---------------------------------------------------------------------------------------------
# The gate

_SEVERITY_OF_OUTCOME = {outcome: rank for rank, outcome in enumerate(stats.GATE_OUTCOMES)}


def robust_gap_gate(
    rows: RobustnessSplit | Sequence[RobustnessRow], max_gap_points: float
) -> stats.GateVerdict:
    """``--max-robust-gap``: every corrupted condition's INT8 gap must be <= the threshold.

    Each condition is judged with ``stats.gate_verdict`` (its gap and paired interval); the
    verdict is the worst condition's (fail beyond uncertainty > fail within > pass within >
    pass, then the larger gap), and its reason names that condition and counts how many
    conditions are above the threshold. The clean row is not judged (``--fail-if-drop`` is).
    """
    if not (isinstance(max_gap_points, int | float) and math.isfinite(max_gap_points)):
        raise InputError(f"--max-robust-gap must be a number of points, got {max_gap_points!r}")
    all_rows = rows.rows if isinstance(rows, RobustnessSplit) else tuple(rows)
    judged = [r for r in all_rows if r.corruption != CLEAN]
    if not judged:
        raise ValueError("robust_gap_gate needs at least one corrupted condition")
    verdicts = [(stats.gate_verdict(r.gap, max_gap_points), r) for r in judged]
    verdict, worst = max(
        verdicts,
        key=lambda vr: (_SEVERITY_OF_OUTCOME[vr[0].outcome], vr[1].gap.estimate, vr[1].gap.high),
    )
    above = sum(v.failed for v, _ in verdicts)
    reason = (
        f"{verdict.outcome}: worst condition {worst.label}, INT8 gap {worst.gap.estimate:.2f} "
        f"points (95% interval {worst.gap.low:.2f} to {worst.gap.high:.2f}, {worst.n} images) "
        f"against {max_gap_points:g}; {above} of {len(judged)} corrupted conditions above it"
    )
    return dataclasses.replace(verdict, reason=reason)
