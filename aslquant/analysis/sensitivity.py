"""Which layers to keep in FP32: one layer at a time, then a greedy search to a target drop.

Each variant is the run's recipe with more layers in ``keep_fp32`` (true FP32 islands),
re-quantized on the run's calibration images; variants are evaluated together over one pass of
the evaluation images, where the run's own FP32 and quantized predictions are the reference.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from aslquant import methods
from aslquant.analysis.common import (
    VARIANT_IMAGES,
    Progress,
    eval_items,
    evaluate_variants,
    score,
    stage,
)
from aslquant.errors import InputError, UnsupportedCombination
from aslquant.measure import serialized_size
from aslquant.model import LAYER_NAMES
from aslquant.quantize import QuantizedModel, quantize
from aslquant.run import RunResult


@dataclass(frozen=True)
class SensitivityRow:
    """One row of report.json's ``sensitivity`` (accuracy as fractions, gains in points)."""

    layer: str
    #: The FP32 layers of this variant (the run's own plus ``layer``).
    keep_fp32: tuple[str, ...]
    accuracy: float
    agreement: float
    drop_points: float
    #: Accuracy won back against the run's quantized model on the same images.
    gain_points: float
    fp32_accuracy: float
    int8_accuracy: float
    n_images: int
    rank: int

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["keep_fp32"] = list(self.keep_fp32)
        return d


@dataclass(frozen=True)
class MixedPrecisionStep:
    """One step of the greedy search: its FP32 layers, scores and model size (bytes)."""

    keep_fp32: tuple[str, ...]
    accuracy: float
    agreement: float
    drop_points: float
    size_bytes: int

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["keep_fp32"] = list(self.keep_fp32)
        return d


@dataclass(frozen=True)
class MixedPrecision:
    """report.json's ``mixed_precision``: the steps taken and whether the target was met."""

    target_drop_points: float
    keep_fp32: tuple[str, ...]
    steps: tuple[MixedPrecisionStep, ...]
    reached: bool
    fp32_accuracy: float
    n_images: int
    #: Layers in the order they were tried (most sensitive first); empty if none was needed.
    ranking: tuple[str, ...]

    def to_dict(self) -> dict:
        return {
            "target_drop_points": self.target_drop_points,
            "keep_fp32": list(self.keep_fp32),
            "steps": [s.to_dict() for s in self.steps],
            "reached": self.reached,
            "fp32_accuracy": self.fp32_accuracy,
            "n_images": self.n_images,
            "ranking": list(self.ranking),
        }


def _requantize(result: RunResult, keep: tuple[str, ...], calibration: torch.Tensor):
    recipe = result.quantized.recipe.with_changes(keep_fp32=keep)
    return quantize(
        result.fp32_model, recipe, calibration, input_size=result.config.preprocess.input_size
    )


def _check_requantizable(result: RunResult, what: str) -> None:
    spec = result.quantized.recipe.method_spec
    if not spec.requantizable:
        raise UnsupportedCombination(
            f"{what} re-quantizes once per layer, which method {spec.name} does not support "
            "here (it would mean fine-tuning again for every layer); run it on "
            + " or ".join(methods.names(lambda m: m.requantizable and m.calibrates))
        )


def _candidate_layers(result: RunResult) -> list[str]:
    recipe = result.quantized.recipe
    return [n for n in recipe.method_spec.keep_fp32_layers if n not in recipe.keep_fp32]


def _variant(qm: QuantizedModel):
    return (qm.module, qm.backend)


def sensitivity(
    result: RunResult, progress: Progress | None = None, max_images: int | None = VARIANT_IMAGES
) -> tuple[SensitivityRow, ...]:
    """Accuracy when each layer alone stays FP32, ranked by the accuracy it wins back.

    Each variant is the run's recipe with one more layer in ``keep_fp32``, calibrated on the
    run's calibration tensor; all are evaluated in one pass over the first ``max_images``
    evaluation images, where the run's own FP32 and quantized predictions are the reference.
    """
    _check_requantizable(result, "sensitivity")
    base_keep = tuple(result.quantized.recipe.keep_fp32)
    layers = _candidate_layers(result)
    variants = {}
    calibration = result.calibration
    for i, name in enumerate(layers):
        stage(progress, "sensitivity: re-quantizing", i / max(1, len(layers)))
        variants[name] = _variant(_requantize(result, base_keep + (name,), calibration))
    stage(progress, "sensitivity: re-quantizing", 1.0)
    ev = evaluate_variants(result, variants, max_images, progress, "sensitivity: evaluating")
    ref_int8 = ev.int8_accuracy
    scored = []
    for name in layers:
        s = ev.score(name)
        keep = tuple(n for n in LAYER_NAMES if n in base_keep + (name,))
        scored.append((name, keep, s, 100.0 * (s.accuracy - ref_int8)))
    scored.sort(key=lambda r: (-r[3], -r[2].agreement, LAYER_NAMES.index(r[0])))
    return tuple(
        SensitivityRow(
            layer=name,
            keep_fp32=keep,
            accuracy=s.accuracy,
            agreement=s.agreement,
            drop_points=s.drop_points,
            gain_points=gain,
            fp32_accuracy=ev.fp32_accuracy,
            int8_accuracy=ref_int8,
            n_images=ev.n,
            rank=rank,
        )
        for rank, (name, keep, s, gain) in enumerate(scored, start=1)
    )


def greedy_mixed_precision(
    result: RunResult,
    target_drop_points: float,
    progress: Progress | None = None,
    max_images: int | None = VARIANT_IMAGES,
    ranking: Sequence[SensitivityRow | str] | None = None,
) -> MixedPrecision:
    """Keep the fewest layers in FP32 (most sensitive first) until the drop <= target.

    Layers are added in the order of ``ranking`` (sensitivity rows or layer names; computed
    with ``sensitivity`` unless given); each step re-quantizes with the growing ``keep_fp32``
    and is measured on the same images.
    """
    if not math.isfinite(target_drop_points) or target_drop_points < 0:
        raise InputError(f"target drop must be a number of points >= 0, got {target_drop_points}")
    keep = tuple(result.quantized.recipe.keep_fp32)
    # The run's own predictions on the same image prefix are the starting point.
    n = len(eval_items(result, max_images))
    ev = result.evaluation
    labels, fp32, int8 = (np.asarray(a[:n]) for a in (ev.labels, ev.fp32.top1, ev.quant.top1))
    fp32_acc = float((fp32 == labels).mean())
    start = score(labels, int8, fp32)
    steps = [
        MixedPrecisionStep(
            keep, start.accuracy, start.agreement, start.drop_points, result.int8.size_bytes
        )
    ]
    order: list[str] = []
    if steps[-1].drop_points > target_drop_points:  # otherwise nothing to search
        _check_requantizable(result, "mixed precision search")
        if ranking is None:
            ranking = sensitivity(result, progress=progress, max_images=max_images)
        order = [r if isinstance(r, str) else r.layer for r in ranking]
    calibration = result.calibration if order else None
    for i, name in enumerate(order):
        if steps[-1].drop_points <= target_drop_points:
            break
        keep = keep + (name,)
        qm = _requantize(result, keep, calibration)
        variant = evaluate_variants(
            result, {"v": _variant(qm)}, max_images, None, "mixed precision"
        )
        s = variant.score("v")
        steps.append(
            MixedPrecisionStep(
                tuple(layer for layer in LAYER_NAMES if layer in keep),
                s.accuracy,
                s.agreement,
                s.drop_points,
                serialized_size(qm.module),
            )
        )
        stage(progress, "mixed precision search", (i + 1) / max(1, len(order)))
    return MixedPrecision(
        target_drop_points=float(target_drop_points),
        keep_fp32=steps[-1].keep_fp32,
        steps=tuple(steps),
        reached=steps[-1].drop_points <= target_drop_points,
        fp32_accuracy=fp32_acc,
        n_images=n,
        ranking=tuple(order),
    )
