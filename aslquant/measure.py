"""Size, latency and accuracy of a float model and its quantized twin, measured honestly.

Latency: warm-up, fixed thread count, at least 30 timed calls through
``torch.utils.benchmark.Timer``, median and p95. Accuracy: both models see the very same
preprocessed batches in one streaming pass, so their predictions can be compared image by image.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils import benchmark

from aslquant.engine_lock import engine_session


def serialized_size(module: nn.Module) -> int:
    """Bytes of ``torch.save(module.state_dict())``: what ships as a checkpoint."""
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def torchscript_size(module: nn.Module, example: torch.Tensor) -> int | None:
    """Bytes of the TorchScript file for ``module``, or None where it does not script/trace."""
    try:
        try:
            scripted = torch.jit.script(module)
        except Exception:
            with torch.inference_mode():
                scripted = torch.jit.trace(module, example)
        buffer = io.BytesIO()
        torch.jit.save(scripted, buffer)
        return buffer.getbuffer().nbytes
    except Exception:
        return None


def latency_ms(
    run: Callable[[torch.Tensor], torch.Tensor],
    example: torch.Tensor,
    *,
    runs: int = 30,
    warmup: int = 3,
    threads: int = 1,
) -> dict[str, float]:
    """Median and p95 of ``runs`` single calls of ``run(example)``, in milliseconds.

    The caller holds the engine session (backend and threads) for the whole measurement.
    """
    timer = benchmark.Timer(stmt="run(x)", globals={"run": run, "x": example}, num_threads=threads)
    with torch.inference_mode():
        timer.timeit(warmup)
        times = np.array([timer.timeit(1).median for _ in range(runs)]) * 1e3
    return {"p50": float(np.median(times)), "p95": float(np.percentile(times, 95)), "runs": runs}


def latency_profile(
    module: nn.Module,
    backend: str | None,
    input_size: int,
    threads: int,
    *,
    runs: int = 30,
    batch_sizes: tuple[int, ...] = (1, 32),
) -> dict[str, float]:
    """``{"b1_p50", "b1_p95", "b32_p50", "b32_p95"}`` for one model, under its engine."""
    out: dict[str, float] = {}
    generator = torch.Generator().manual_seed(0)
    with engine_session(backend, threads):
        for batch in batch_sizes:
            x = torch.rand(batch, 3, input_size, input_size, generator=generator)
            stats = latency_ms(module, x, runs=runs, threads=threads)
            out[f"b{batch}_p50"] = stats["p50"]
            out[f"b{batch}_p95"] = stats["p95"]
    return out


@dataclass
class Predictions:
    """Per-image outputs of one model over the evaluation set."""

    top5: np.ndarray  # (N, k) class indices, best first
    probs5: np.ndarray  # (N, k) softmax probabilities of those classes

    @property
    def top1(self) -> np.ndarray:
        return self.top5[:, 0]


@dataclass
class PairEvaluation:
    """Both models over the same images, in the same order."""

    labels: np.ndarray
    fp32: Predictions
    quant: Predictions
    paths: list[str]
    displays: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(len(self.labels))


def _topk(logits: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    probs = torch.softmax(logits.float(), dim=1)
    values, indices = probs.topk(min(k, probs.shape[1]), dim=1)
    return indices.numpy(), values.numpy()


def evaluate_pair(
    fp32: nn.Module,
    quant: nn.Module,
    backend: str | None,
    batches: Iterable,
    *,
    total: int | None = None,
    progress: Callable[[str, float], None] | None = None,
    threads: int | None = None,
) -> PairEvaluation:
    """Run both models over ``batches`` (objects with ``x``, ``y``, ``items``) once."""
    labels, paths, displays = [], [], []
    tops = {"fp32": ([], []), "quant": ([], [])}
    seen = 0
    for batch in batches:
        with torch.inference_mode():
            with engine_session(None, threads):
                logits_f = fp32(batch.x)
            with engine_session(backend, threads):
                logits_q = quant(batch.x)
        for key, logits in (("fp32", logits_f), ("quant", logits_q)):
            idx, val = _topk(logits, 5)
            tops[key][0].append(idx)
            tops[key][1].append(val)
        labels.append(batch.y.numpy())
        paths += [item.path for item in batch.items]
        displays += [item.display for item in batch.items]
        seen += len(batch.items)
        if progress and total:
            progress("evaluating", min(1.0, seen / total))
    if not labels:
        empty = Predictions(np.zeros((0, 5), int), np.zeros((0, 5)))
        return PairEvaluation(np.zeros(0, int), empty, empty, [], [])

    def stack(key: str) -> Predictions:
        return Predictions(np.concatenate(tops[key][0]), np.concatenate(tops[key][1]))

    return PairEvaluation(np.concatenate(labels), stack("fp32"), stack("quant"), paths, displays)


def accuracy(labels: np.ndarray, preds: Predictions) -> dict[str, float]:
    if len(labels) == 0:
        return {"accuracy": float("nan"), "top5": float("nan")}
    top1 = float((preds.top1 == labels).mean())
    top5 = float((preds.top5 == labels[:, None]).any(axis=1).mean())
    return {"accuracy": top1, "top5": top5}


def confusion(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows: true class; columns: predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def per_class_accuracy(matrix: np.ndarray) -> np.ndarray:
    totals = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(matrix) / np.maximum(totals, 1), np.nan)
