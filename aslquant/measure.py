"""Size, latency and accuracy of a float model and its quantized twin, measured honestly.

Latency: warm-up, fixed thread count, at least 30 calls each timed on its own with
``perf_counter``, median and p95, judged for reliability (``machine.judge_latency``). Accuracy: both models see the very same
preprocessed batches in one streaming pass, so their predictions can be compared image by image.
"""

from __future__ import annotations

import contextlib
import copy
import io
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from aslquant.engine_lock import engine_session
from aslquant.serialize import packed_size


def serialized_size(module: nn.Module) -> int:
    """Bytes of the model's state_dict in aslquant's packed format (``aslquant.serialize``).

    The same lossless container for FP32 and INT8, so their ratio compares the models;
    ``torch.save(state_dict)`` spends ~12 kB of the INT8 file on per-record zip overhead and
    float64/int64 quantization parameters.
    """
    return packed_size(module)


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


def time_calls(
    run: Callable[[torch.Tensor], object],
    example: torch.Tensor,
    runs: int,
    warmup: int = 3,
    *,
    guard: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> np.ndarray:
    """Seconds taken by each of ``runs`` calls of ``run(example)``, after ``warmup`` calls.

    A plain ``perf_counter`` around each call: ``torch.utils.benchmark.Timer.timeit(1)``
    silently adds two warm-up calls per sample, which tripled the cost of every timing (30
    FP32 batch-32 samples took 43 s instead of 13 s). ``guard``: entered around each call,
    outside the timed span — ONNX Runtime timings pass the engine lock (or a guard that also
    waits for foreground work), so they never overlap another session's measurement.
    """
    guard = guard or contextlib.nullcontext
    with torch.inference_mode():
        for _ in range(warmup):
            with guard():
                run(example)
        times = np.empty(runs)
        for i in range(runs):
            with guard():
                start = time.perf_counter()
                run(example)
                times[i] = time.perf_counter() - start
    return times


def latency_stats(seconds: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Median and p95 in milliseconds of per-call times given in seconds."""
    ms = np.asarray(seconds, dtype=float) * 1e3
    return {"p50": float(np.median(ms)), "p95": float(np.percentile(ms, 95)), "runs": len(ms)}


def latency_ms(
    run: Callable[[torch.Tensor], object],
    example: torch.Tensor,
    *,
    runs: int = 30,
    warmup: int = 3,
    threads: int = 1,
) -> dict[str, float]:
    """Median and p95 of ``runs`` single calls of ``run(example)``, in milliseconds.

    The caller holds the engine session (backend and ``threads``) for the whole measurement.
    """
    return latency_stats(time_calls(run, example, runs, warmup))


@dataclass(frozen=True)
class LatencyProfile:
    """One model's latency figures and, per batch size, whether to believe them.

    ``figures``: ``{"b1_p50", "b1_p95", "b32_p50", "b32_p95"}`` in ms; ``reliability``:
    ``{"b1": machine.Reliability, "b32": ...}`` judged from the spread of the calls and the
    machine's load while they ran (samples taken earlier, e.g. evaluation batches, are
    judged by their spread, and by the load of any calls topped up here).
    """

    figures: dict[str, float]
    reliability: dict[str, Any]

    @property
    def reliable(self) -> bool:
        return all(r.reliable for r in self.reliability.values())


def measure_latency(
    module: nn.Module,
    backend: str | None,
    input_size: int,
    threads: int,
    *,
    runs: int = 30,
    batch_sizes: tuple[int, ...] = (1, 32),
    measured: dict[int, Sequence[float]] | None = None,
    guard: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> LatencyProfile:
    """Median and p95 per batch size for one model under its engine, each judged.

    ``measured`` maps a batch size to call times (seconds) already taken under the same
    engine and threads after warm-up — the full batches of the evaluation pass. They count
    as timed runs; only the shortfall to ``runs`` is timed here, on random input.
    ``guard``: entered around each call instead of holding the engine session for the whole
    measurement (background timing that yields to users' runs between calls); it must set
    the engine and threads itself.
    """
    from aslquant.machine import judge_latency, watch_load

    figures: dict[str, float] = {}
    reliability: dict[str, Any] = {}
    generator = torch.Generator().manual_seed(0)
    outer = contextlib.nullcontext() if guard else engine_session(backend, threads)
    with outer:
        for batch in batch_sizes:
            times = list((measured or {}).get(batch, ()))
            load = None
            if len(times) < runs:
                x = torch.rand(batch, 3, input_size, input_size, generator=generator)
                warmup = 1 if times else 3
                with watch_load() as watch:
                    times += list(time_calls(module, x, runs - len(times), warmup, guard=guard))
                load = watch.result
            stats = latency_stats(times)
            figures[f"b{batch}_p50"] = stats["p50"]
            figures[f"b{batch}_p95"] = stats["p95"]
            reliability[f"b{batch}"] = judge_latency(times, load, threads=threads)
    return LatencyProfile(figures, reliability)


def latency_profile(
    module: nn.Module,
    backend: str | None,
    input_size: int,
    threads: int,
    *,
    runs: int = 30,
    batch_sizes: tuple[int, ...] = (1, 32),
    measured: dict[int, Sequence[float]] | None = None,
    guard: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> dict[str, float]:
    """``{"b1_p50", "b1_p95", "b32_p50", "b32_p95"}`` for one model (see measure_latency)."""
    return measure_latency(
        module,
        backend,
        input_size,
        threads,
        runs=runs,
        batch_sizes=batch_sizes,
        measured=measured,
        guard=guard,
    ).figures


def _read_only(values: np.ndarray) -> np.ndarray:
    view = np.asarray(values).view()
    view.flags.writeable = False
    return view


class ChannelsLastFp32(nn.Module):
    """The FP32 model in channels-last memory layout: the same float32 weights and math.

    oneDNN's convolutions run NHWC tensors without reordering them on every call; on the
    2-core machine this made the FP32 CustomCNN about 1.5x faster at batch 32 (logits equal to
    the NCHW model's within 2e-6). It is the FP32 baseline every run is compared with: the
    fastest way torch eager runs the user's FP32 model, so no speed-up is flattered by a slow
    layout (ONNX Runtime FP32 is the second baseline).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last))


def fp32_runner(model: nn.Module) -> nn.Module:
    """How aslquant runs an FP32 model for predictions and timing (see ChannelsLastFp32)."""
    return model if isinstance(model, ChannelsLastFp32) else ChannelsLastFp32(model)


@dataclass(frozen=True)
class Predictions:
    """Per-image outputs of one model over the evaluation set."""

    top5: np.ndarray  # (N, k) class indices, best first
    probs5: np.ndarray  # (N, k) softmax probabilities of those classes

    def __post_init__(self) -> None:
        object.__setattr__(self, "top5", _read_only(self.top5))
        object.__setattr__(self, "probs5", _read_only(self.probs5))

    @property
    def top1(self) -> np.ndarray:
        return self.top5[:, 0]


@dataclass(frozen=True)
class PairEvaluation:
    """Both models over the same images, in the same order."""

    labels: np.ndarray
    fp32: Predictions
    quant: Predictions
    paths: tuple[str, ...]
    displays: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", _read_only(self.labels))

    @property
    def n(self) -> int:
        return int(len(self.labels))


def _topk(logits: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    probs = torch.softmax(logits.float(), dim=1)
    values, indices = probs.topk(min(k, probs.shape[1]), dim=1)
    return indices.numpy(), values.numpy()


@dataclass(frozen=True)
class ModelEvaluation:
    """One model over the evaluation images: predictions, plus the time of each full batch."""

    labels: np.ndarray
    predictions: Predictions
    paths: tuple[str, ...]
    displays: tuple[str, ...]
    batch_seconds: tuple[float, ...]  # full-size batches after the first (warm-up) one

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", _read_only(self.labels))

    @property
    def n(self) -> int:
        return int(len(self.labels))


#: A model to evaluate: (module, quantized engine or None for float).
Evaluated = tuple[nn.Module, "str | None"]


def evaluate_models(
    models: dict[str, Evaluated],
    batches: Iterable,
    *,
    total: int | None = None,
    progress: Callable[[str, float], None] | None = None,
    threads: int | None = None,
    timed_batch: int = 32,
    before_batch: Callable[[], None] | None = None,
) -> dict[str, ModelEvaluation]:
    """Run every model over ``batches`` (objects with ``x``, ``y``, ``items``), decoding once.

    Each call on a full batch of ``timed_batch`` images is timed under the model's engine
    and ``threads``; the first one is the warm-up and is not kept. These timings are the
    batch-32 latency samples of the run, so evaluating and timing cost one pass.
    ``before_batch`` is called before each batch, outside the engine lock (background work
    waits there while a user's run computes, or raises to stop).
    """
    labels: list[np.ndarray] = []
    paths: list[str] = []
    displays: list[str] = []
    tops = {name: ([], []) for name in models}
    timed = {name: [] for name in models}
    seen = 0
    for batch in batches:
        if before_batch is not None:
            before_batch()
        for name, (module, backend) in models.items():
            with torch.inference_mode(), engine_session(backend, threads):
                start = time.perf_counter()
                logits = module(batch.x)
                elapsed = time.perf_counter() - start
            if len(batch.items) == timed_batch:
                timed[name].append(elapsed)
            idx, val = _topk(logits, 5)
            tops[name][0].append(idx)
            tops[name][1].append(val)
        labels.append(batch.y.numpy())
        paths += [item.path for item in batch.items]
        displays += [item.display for item in batch.items]
        seen += len(batch.items)
        if progress and total:
            progress("evaluating", min(1.0, seen / total))
    out = {}
    for name in models:
        if labels:
            preds = Predictions(np.concatenate(tops[name][0]), np.concatenate(tops[name][1]))
            y = np.concatenate(labels)
        else:
            preds, y = Predictions(np.zeros((0, 5), int), np.zeros((0, 5))), np.zeros(0, int)
        out[name] = ModelEvaluation(y, preds, tuple(paths), tuple(displays), tuple(timed[name][1:]))
    return out


def pair(fp32: ModelEvaluation, quant: ModelEvaluation) -> PairEvaluation:
    """Both models' evaluations side by side; they must cover the same images in order."""
    if fp32.paths != quant.paths:
        raise ValueError("the FP32 and quantized evaluations cover different images")
    return PairEvaluation(
        fp32.labels, fp32.predictions, quant.predictions, fp32.paths, fp32.displays
    )


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
    """Run both models over ``batches`` once (see evaluate_models)."""
    ev = evaluate_models(
        {"fp32": (fp32, None), "quant": (quant, backend)},
        batches,
        total=total,
        progress=progress,
        threads=threads,
    )
    return pair(ev["fp32"], ev["quant"])


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
