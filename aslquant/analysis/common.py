"""Small pieces every analysis shares: SQNR, the evaluation images of a run, scoring, progress.

Also the one pass that runs several model variants over the same evaluation images (decoded
once) and scores each against the run's own FP32 predictions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from aslquant import data as data_mod
from aslquant.engine_lock import engine_session
from aslquant.errors import InputError
from aslquant.quantize import Progress
from aslquant.run import RunResult

#: Default number of evaluation images for the per-layer pass (class-stratified prefix of the
#: evaluation set). SQNR is a ratio of sums and settles long before the whole set is seen.
LAYER_IMAGES = 256
#: Default evaluation images for sensitivity, mixed precision, bit sweeps and point
#: diagnostics (each variant is a full model); reference FP32/INT8 accuracies are taken on
#: exactly the same images.
VARIANT_IMAGES = 290


def sqnr_db(signal_power: float, noise_power: float) -> float:
    """10·log10(signal / noise); +inf when there is no noise, nan when there is no signal."""
    if noise_power <= 0.0:
        return math.inf
    if signal_power <= 0.0:
        return math.nan
    return 10.0 * math.log10(signal_power / noise_power)


def power(t: torch.Tensor) -> float:
    """Sum of squares in the tensor's precision: torch sums float32 pairwise, so the error
    stays near float32's epsilon even over tens of millions of terms, without widening each
    term to float64 first."""
    return float(t.square().sum())


def finite_or_none(value: float | None) -> float | None:
    """A float for report.json, or None where it is missing, NaN or infinite."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def stage(progress: Progress | None, name: str, fraction: float) -> None:
    if progress:
        progress(name, min(1.0, max(0.0, fraction)))


def as_float(t: torch.Tensor) -> torch.Tensor:
    return t.dequantize() if t.is_quantized else t.float()


def eval_items(result: RunResult, max_images: int | None) -> list[data_mod.LabeledImage]:
    """The evaluation images of a run, in evaluation order (a class-balanced prefix)."""
    ev = result.evaluation
    items = [
        data_mod.LabeledImage(path, display, int(label))
        for path, display, label in zip(ev.paths, ev.displays, ev.labels, strict=True)
    ]
    if max_images is not None:
        if max_images < 1:
            raise InputError(f"max_images must be at least 1, got {max_images}")
        items = items[:max_images]
    return items


def batches(
    result: RunResult, items: list[data_mod.LabeledImage], batch_size: int = 32
) -> Iterator[data_mod.Batch]:
    return data_mod.iter_batches(items, result.config.preprocess, batch_size=batch_size)


def calibration_images(result: RunResult, max_images: int = 64) -> torch.Tensor:
    """Images activation ranges are observed on: the calibration set the observers saw."""
    calibration = result.calibration  # decoded on each access: read it once
    if len(calibration):
        return calibration[:max_images]
    items = eval_items(result, max_images)
    return data_mod.load_tensors(items, result.config.preprocess).x


@dataclass(frozen=True)
class Score:
    """Top-1 accuracy of a variant, its agreement with FP32 and its drop in points."""

    accuracy: float
    agreement: float
    drop_points: float

    def to_dict(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "agreement": self.agreement,
            "drop_points": self.drop_points,
        }


def score(labels: np.ndarray, pred: np.ndarray, fp32: np.ndarray) -> Score:
    """Accuracy, agreement with the FP32 predictions and drop (points) against FP32."""
    if not len(labels):
        return Score(math.nan, math.nan, math.nan)
    acc = float((pred == labels).mean())
    fp32_acc = float((fp32 == labels).mean())
    return Score(acc, float((pred == fp32).mean()), 100.0 * (fp32_acc - acc))


#: A model variant to evaluate: a callable from images to logits, and the quantized engine it
#: runs on (None for float).
Variant = tuple[Callable[[torch.Tensor], torch.Tensor] | nn.Module, "str | None"]


@dataclass(frozen=True)
class VariantEvaluation:
    """Every variant's top-1 over the same images, beside the run's own FP32 and INT8."""

    labels: np.ndarray
    predictions: Mapping[str, np.ndarray]
    fp32: np.ndarray
    int8: np.ndarray
    n: int
    logit_sqnr_db: Mapping[str, float | None]

    def score(self, key: str) -> Score:
        return score(self.labels, self.predictions[key], self.fp32)

    @property
    def fp32_accuracy(self) -> float:
        return float((self.fp32 == self.labels).mean()) if self.n else math.nan

    @property
    def int8_accuracy(self) -> float:
        return float((self.int8 == self.labels).mean()) if self.n else math.nan


def evaluate_variants(
    result: RunResult,
    variants: Mapping[str, Variant],
    max_images: int | None,
    progress: Progress | None,
    stage_name: str,
    keep_logits: bool = False,
) -> VariantEvaluation:
    """Top-1 of every variant over the first ``max_images`` evaluation images, streamed once.

    The run's FP32 and INT8 predictions on the same images are the references; with
    ``keep_logits`` the FP32 model is run too, for the SQNR of each variant's logits.
    """
    items = eval_items(result, max_images)
    preds: dict[str, list[np.ndarray]] = {k: [] for k in variants}
    noise: dict[str, list[float]] = {k: [0.0, 0.0] for k in variants}
    labels: list[np.ndarray] = []
    seen = 0
    for batch in batches(result, items):
        with torch.inference_mode():
            ref = None
            if keep_logits:
                with engine_session(None, result.threads):
                    ref = result.fp32_model(batch.x).float()
            for key, (module, backend) in variants.items():
                with engine_session(backend, result.threads):
                    logits = as_float(module(batch.x))
                preds[key].append(logits.argmax(1).numpy())
                if ref is not None:
                    noise[key][0] += power(ref)
                    noise[key][1] += power(logits - ref)
        labels.append(batch.y.numpy())
        seen += len(batch.items)
        stage(progress, stage_name, seen / max(1, len(items)))
    ev = result.evaluation
    return VariantEvaluation(
        labels=np.concatenate(labels) if labels else np.zeros(0, int),
        predictions={k: np.concatenate(v) if v else np.zeros(0, int) for k, v in preds.items()},
        fp32=np.asarray(ev.fp32.top1[:seen]),
        int8=np.asarray(ev.quant.top1[:seen]),
        n=seen,
        logit_sqnr_db={
            k: (finite_or_none(sqnr_db(*v)) if keep_logits else None) for k, v in noise.items()
        },
    )
