"""A quantization run: a frozen ``RunConfig`` in, a frozen ``RunResult`` out.

This is the one function both views call: the CLI writes the result to report.json /
report.md, the dashboard draws it. Everything a run depends on is in its config, and the
config's ``key`` hashes the *contents* of the files it names, so equal inputs are recognised
(and cached by the dashboard) even when they arrive under another file name.

A result is a value: nothing changes it after ``execute`` returns (analyses and exports
return new values). Its two live models and the calibration images it names sit beside the
numbers, for analysis and prediction. A run has two phases: evaluation (both models'
predictions, accuracy, agreement, size) and timing (latency); ``execute`` can hand the
evaluated result to a callback before timing starts, so a page shows accuracy first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shlex
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from aslquant import data as data_mod
from aslquant.data import Preprocess
from aslquant.demos import default_demo
from aslquant.engine_lock import default_threads, engine_session
from aslquant.errors import InputError
from aslquant.labels import load_labels
from aslquant.measure import (
    LatencyProfile,
    ModelEvaluation,
    PairEvaluation,
    accuracy,
    confusion,
    evaluate_models,
    fp32_runner,
    measure_latency,
    pair,
    per_class_accuracy,
    serialized_size,
    torchscript_size,
)
from aslquant.model import CustomCNN, load_checkpoint
from aslquant.qmodules import portable_copy
from aslquant.quantize import Progress, QuantizedModel, quantize
from aslquant.recipe import Interval, QuantRecipe
from aslquant.runtime import release_memory
from aslquant.stats import (
    ClassDrop,
    GateVerdict,
    PairSummary,
    SeedSpread,
    gate_verdict,
    pair_summary,
    per_class_drops,
)

_DEMO = default_demo()
DEMO_CHECKPOINT = _DEMO.checkpoint
DEMO_LABELS = _DEMO.labels
DEMO_DATA = _DEMO.data

#: Most torch threads a run may use: the machine's logical cores (more only oversubscribes).
MAX_THREADS = os.cpu_count() or 1
#: Timed calls per latency figure: at least 30 (a p95 needs them), at most 1000.
LATENCY_RUNS = Interval(30, 1000)
EVAL_IMAGES = Interval(1, 10_000_000)
SEEDS = Interval(0, 2**31 - 1)


def _frozen_array(values: np.ndarray) -> np.ndarray:
    """A read-only view, so a result's arrays cannot be changed by whoever holds it."""
    view = np.asarray(values).view()
    view.flags.writeable = False
    return view


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's numbers."""

    checkpoint: str = str(DEMO_CHECKPOINT)
    labels: str = str(DEMO_LABELS)
    data: str = str(DEMO_DATA)
    calib_data: str | None = None
    train_data: str | None = None
    preprocess: Preprocess = field(default_factory=Preprocess)
    recipe: QuantRecipe = field(default_factory=QuantRecipe)
    eval_images: int | None = None
    seed: int = 0
    threads: int = field(default_factory=default_threads)
    latency_runs: int = 30

    def __post_init__(self) -> None:
        if self.eval_images is not None:
            EVAL_IMAGES.check("evaluation images", self.eval_images)
        SEEDS.check("seed", self.seed)
        Interval(1, MAX_THREADS).check(
            f"threads (this machine has {MAX_THREADS} logical cores)", self.threads
        )
        LATENCY_RUNS.check("latency runs", self.latency_runs)

    def to_dict(self) -> dict:
        return {
            "checkpoint": self.checkpoint,
            "labels": self.labels,
            "data": self.data,
            "calib_data": self.calib_data,
            "train_data": self.train_data,
            "preprocess": self.preprocess.to_dict(),
            "recipe": self.recipe.to_dict(),
            "eval_images": self.eval_images,
            "seed": self.seed,
            "threads": self.threads,
            "latency_runs": self.latency_runs,
        }

    def with_recipe(self, **changes: object) -> RunConfig:
        return dataclasses.replace(self, recipe=self.recipe.with_changes(**changes))

    def cli_command(self, command: str = "report") -> str:
        """The shell command that reproduces this run headless (``python -m aslquant ...``)."""
        from aslquant.cli.options import config_to_args

        args = ["python", "-m", "aslquant", command, *config_to_args(self), "--out", "OUT"]
        return " ".join(shlex.quote(a) for a in args)


def _sha256_file(path: str, what: str) -> str:
    if not Path(path).is_file():
        raise InputError(f"{path}: {what} file not found")
    return data_mod.sha256_file(path)


@dataclass(frozen=True)
class LoadedInputs:
    """The validated inputs of a run: model, labels, and the image samples."""

    model: CustomCNN
    class_names: tuple[str, ...]
    image_set: data_mod.ImageSet
    calib_items: tuple[data_mod.LabeledImage, ...]
    eval_items: tuple[data_mod.LabeledImage, ...]
    train_items: tuple[data_mod.LabeledImage, ...]
    skipped: tuple[tuple[str, str], ...]
    key: str
    fp32_key: str


def load_inputs(config: RunConfig) -> LoadedInputs:
    """Read and validate checkpoint, labels and images; pick calibration and evaluation samples."""
    class_names = load_labels(config.labels)
    model = load_checkpoint(config.checkpoint, num_labels=len(class_names))
    image_set = data_mod.load_image_set(config.data, class_names)
    recipe = config.recipe
    n_calib = recipe.calibration_images
    skipped = list(image_set.skipped)
    fingerprints = [data_mod.dataset_fingerprint(image_set)]
    if config.calib_data:
        calib_set = data_mod.load_image_set(config.calib_data, class_names)
        skipped += calib_set.skipped
        fingerprints.append(data_mod.dataset_fingerprint(calib_set))
        if n_calib > len(calib_set.items):
            raise InputError(
                f"{config.calib_data}: asked for {n_calib} calibration images, "
                f"only {len(calib_set.items)} exist"
            )
        calib_items = data_mod.sample(calib_set.items, n_calib, config.seed)
        eval_items = data_mod.sample(image_set.items, config.eval_images, config.seed)
    else:
        available = len(image_set.items)
        if n_calib >= available:
            raise InputError(
                f"{config.data}: asked for {n_calib} calibration images but only {available} "
                "images exist and some must stay for evaluation; lower --calib-images or pass "
                "--calib-data"
            )
        if config.eval_images is not None and n_calib + config.eval_images > available:
            raise InputError(
                f"{config.data}: {n_calib} calibration + {config.eval_images} evaluation images "
                f"asked for, only {available} exist"
            )
        calib_items, eval_items = data_mod.stratified_split(
            image_set.items, n_calib, config.eval_images, config.seed
        )
    train_items = calib_items
    if recipe.method_spec.trains and config.train_data:
        train_set = data_mod.load_image_set(config.train_data, class_names)
        skipped += train_set.skipped
        fingerprints.append(data_mod.dataset_fingerprint(train_set))
        train_items = train_set.items
    key_parts = {
        "checkpoint": _sha256_file(config.checkpoint, "checkpoint"),
        "labels": _sha256_file(config.labels, "labels"),
        "data": fingerprints,
        "config": {
            k: v
            for k, v in config.to_dict().items()
            if k not in ("checkpoint", "labels", "data", "calib_data", "train_data")
        },
    }
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:16]
    # The FP32 side depends on the model, the evaluation images and how they are measured,
    # not on the recipe: runs that share these reuse one Fp32Baseline.
    fp32_parts = {
        "checkpoint": key_parts["checkpoint"],
        "labels": key_parts["labels"],
        "data": fingerprints[0],
        "eval": [item.display for item in eval_items],
        "preprocess": config.preprocess.to_dict(),
        "threads": config.threads,
        "latency_runs": config.latency_runs,
    }
    fp32_key = hashlib.sha256(json.dumps(fp32_parts, sort_keys=True).encode()).hexdigest()[:16]
    return LoadedInputs(
        model,
        tuple(class_names),
        image_set,
        tuple(calib_items),
        tuple(eval_items),
        tuple(train_items),
        tuple(skipped),
        key,
        fp32_key,
    )


@dataclass(frozen=True)
class ModelMetrics:
    """One model's figures. ``latency_ms`` is None while its timing is still pending."""

    accuracy: float
    top5: float
    size_bytes: int
    torchscript_bytes: int | None
    latency_ms: Mapping[str, float] | None = None
    #: Per batch size ("b1", "b32"): machine.Reliability of the latency figure.
    latency_reliability: Mapping[str, Any] | None = None

    def to_dict(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "top5": self.top5,
            "size_bytes": self.size_bytes,
            "torchscript_bytes": self.torchscript_bytes,
            "latency_ms": None if self.latency_ms is None else dict(self.latency_ms),
            "latency_reliability": None
            if self.latency_reliability is None
            else {k: r.to_dict() for k, r in self.latency_reliability.items()},
        }

    @property
    def latency_reliable(self) -> bool | None:
        """Whether every latency figure passed the reliability checks (None: not timed)."""
        if self.latency_reliability is None:
            return None
        return all(r.reliable for r in self.latency_reliability.values())

    def with_latency(self, latency: LatencyProfile | Mapping[str, float]) -> ModelMetrics:
        """The same metrics with latency: a judged LatencyProfile, or bare figures (ms)."""
        if isinstance(latency, LatencyProfile):
            figures, reliability = latency.figures, MappingProxyType(dict(latency.reliability))
        else:
            figures, reliability = latency, None
        return dataclasses.replace(
            self, latency_ms=MappingProxyType(dict(figures)), latency_reliability=reliability
        )


@dataclass(frozen=True)
class Fp32Baseline:
    """The FP32 model's side of a run, measured once and reused by every further recipe.

    Valid for runs whose ``LoadedInputs.fp32_key`` equals ``key``: same checkpoint, labels,
    evaluation images, preprocessing, threads and number of timed runs. Its metrics carry
    latency once timed (``timed``); until then only the predictions are known.
    """

    key: str
    evaluation: ModelEvaluation
    metrics: ModelMetrics
    seconds: float
    threads: int
    input_size: int
    latency_runs: int

    @property
    def timed(self) -> bool:
        return self.metrics.latency_ms is not None


def _fp32_metrics(ev: ModelEvaluation, model: CustomCNN, input_size: int) -> ModelMetrics:
    acc = accuracy(ev.labels, ev.predictions)
    example = torch.zeros(1, 3, input_size, input_size)
    return ModelMetrics(
        acc["accuracy"], acc["top5"], serialized_size(model), torchscript_size(model, example)
    )


def evaluate_fp32(
    config: RunConfig,
    inputs: LoadedInputs,
    progress: Progress | None = None,
    before_batch: Callable[[], None] | None = None,
) -> Fp32Baseline:
    """The FP32 model's predictions, accuracy and size over the evaluation images (no latency)."""
    started = time.perf_counter()
    batches = data_mod.iter_batches(list(inputs.eval_items), config.preprocess, batch_size=32)
    ev = evaluate_models(
        {"fp32": (fp32_runner(inputs.model), None)},
        batches,
        total=len(inputs.eval_items),
        progress=progress,
        threads=config.threads,
        before_batch=before_batch,
    )["fp32"]
    if ev.n == 0:
        raise InputError(f"{config.data}: none of the evaluation images could be read")
    return Fp32Baseline(
        inputs.fp32_key,
        ev,
        _fp32_metrics(ev, inputs.model, config.preprocess.input_size),
        time.perf_counter() - started,
        config.threads,
        config.preprocess.input_size,
        config.latency_runs,
    )


def time_fp32(
    baseline: Fp32Baseline, model: CustomCNN, guard: Callable | None = None
) -> Fp32Baseline:
    """The same baseline with the FP32 latency measured (batch 1 timed; batch 32 from the
    evaluation's own full batches, topped up to ``latency_runs``). ``guard``: see
    ``measure.latency_profile`` (background timing that yields between calls)."""
    if baseline.timed:
        return baseline
    lat = measure_latency(
        fp32_runner(model),
        None,
        baseline.input_size,
        baseline.threads,
        runs=baseline.latency_runs,
        measured={32: baseline.evaluation.batch_seconds},
        guard=guard,
    )
    return dataclasses.replace(baseline, metrics=baseline.metrics.with_latency(lat))


def measure_fp32(
    config: RunConfig, inputs: LoadedInputs, progress: Progress | None = None
) -> Fp32Baseline:
    """Evaluate and time the FP32 model alone (the dashboard does this as soon as a model
    and images are chosen, so the first quantization does not wait for it)."""
    baseline = time_fp32(evaluate_fp32(config, inputs, progress), inputs.model)
    release_memory()
    return baseline


@dataclass(frozen=True)
class RunResult:
    """Plain, frozen data about one run, plus the two live models for analysis and prediction.

    ``fp32.latency_ms`` / ``int8.latency_ms`` are None in the evaluated-but-not-yet-timed
    result ``execute`` hands to ``on_evaluated``; ``timed`` says whether both are in.
    """

    config: RunConfig
    key: str
    class_names: tuple[str, ...]
    fp32: ModelMetrics
    int8: ModelMetrics
    evaluation: PairEvaluation
    confusion_fp32: np.ndarray
    confusion_int8: np.ndarray
    skipped: tuple[tuple[str, str], ...]
    timings_s: Mapping[str, float]
    notes: tuple[str, ...]
    qat_history: tuple[dict, ...]
    n_calib: int
    fp32_model: CustomCNN = field(compare=False, repr=False)
    quantized: QuantizedModel = field(compare=False, repr=False)
    calib_items: tuple[data_mod.LabeledImage, ...] = field(compare=False, repr=False)
    baseline: Fp32Baseline | None = field(default=None, compare=False, repr=False)
    #: Seconds of each full evaluation batch of the quantized model (its batch-32 samples).
    int8_batch_seconds: tuple[float, ...] = field(default=(), compare=False, repr=False)

    @property
    def timed(self) -> bool:
        return self.fp32.latency_ms is not None and self.int8.latency_ms is not None

    @property
    def float_reference(self) -> torch.nn.Module:
        """The float model that was quantized, for layer-by-layer comparisons: the FP32 model
        after the recipe's rewrites (equalization rescales channels, bias correction shifts
        biases), else the FP32 model itself. Logit-level figures compare with ``fp32_model``."""
        source = self.quantized.float_source
        return source if source is not None else self.fp32_model

    @cached_property
    def uncertainty(self) -> PairSummary:
        """Bootstrap 95% intervals of both accuracies, the drop and the agreement over the
        evaluation images, and the exact McNemar test of the flips (aslquant.stats)."""
        ev = self.evaluation
        return pair_summary(ev.labels, ev.fp32.top1, ev.quant.top1)

    def per_class_drops(self) -> list[ClassDrop]:
        """Per-class drop with its interval; a class is flagged only when it excludes zero."""
        ev = self.evaluation
        return per_class_drops(ev.labels, ev.fp32.top1, ev.quant.top1, list(self.class_names))

    def drop_gate(self, threshold_points: float, seeds: SeedSpread | None = None) -> GateVerdict:
        """``--fail-if-drop``: the drop against a threshold, beyond or within its uncertainty."""
        return gate_verdict(self.uncertainty.drop, threshold_points, seeds)

    @property
    def calibration(self) -> torch.Tensor:
        """The calibration images, preprocessed (decoded again on each access).

        Not stored: at 224 px, 64 images are 38 MB of floats, and a session keeps ten runs.
        """
        pp = self.config.preprocess
        if not self.calib_items:
            return torch.zeros(0, 3, pp.input_size, pp.input_size)
        return data_mod.load_tensors(list(self.calib_items), pp).x

    @property
    def n_eval(self) -> int:
        return self.evaluation.n

    @property
    def threads(self) -> int:
        return self.config.threads

    @property
    def agreement(self) -> float:
        ev = self.evaluation
        return float((ev.fp32.top1 == ev.quant.top1).mean()) if ev.n else float("nan")

    @property
    def accuracy_drop_points(self) -> float:
        return (self.fp32.accuracy - self.int8.accuracy) * 100.0

    @property
    def size_ratio(self) -> float:
        """FP32 bytes over quantized bytes (packed state_dicts): above 1 is smaller."""
        return self.fp32.size_bytes / max(1, self.int8.size_bytes)

    def speedup(self, batch: int = 1, against: Mapping[str, float] | None = None) -> float | None:
        """Median latency of the FP32 baseline over the quantized model's at ``batch``: above 1
        is faster. ``against``: another baseline's latency dict (ONNX Runtime FP32) instead of
        torch FP32. None while either latency is still pending."""
        base = self.fp32.latency_ms if against is None else against
        quant = self.int8.latency_ms
        key = f"b{batch}_p50"
        if base is None or quant is None or not base.get(key) or not quant.get(key):
            return None
        return base[key] / quant[key]

    def flipped(self) -> list[dict]:
        """Evaluation images whose top-1 changed, with both models' top-3 for the gallery."""
        ev, names = self.evaluation, self.class_names
        rows = []
        for i in np.nonzero(ev.fp32.top1 != ev.quant.top1)[0]:
            rows.append(
                {
                    "path": ev.displays[i],
                    "file": ev.paths[i],
                    "true": names[ev.labels[i]],
                    "fp32": names[ev.fp32.top1[i]],
                    "int8": names[ev.quant.top1[i]],
                    "fp32_top3": [
                        [names[c], float(p)]
                        for c, p in zip(ev.fp32.top5[i, :3], ev.fp32.probs5[i, :3], strict=True)
                    ],
                    "int8_top3": [
                        [names[c], float(p)]
                        for c, p in zip(ev.quant.top5[i, :3], ev.quant.probs5[i, :3], strict=True)
                    ],
                }
            )
        return rows

    def per_class(self) -> list[dict]:
        acc_f = per_class_accuracy(self.confusion_fp32)
        acc_q = per_class_accuracy(self.confusion_int8)
        support = self.confusion_fp32.sum(axis=1)
        return [
            {"class": name, "n": int(support[i]), "fp32": float(acc_f[i]), "int8": float(acc_q[i])}
            for i, name in enumerate(self.class_names)
        ]


def _stage(progress: Progress | None, stage: str, fraction: float) -> None:
    if progress:
        progress(stage, fraction)


def _int8_metrics(
    quantized: QuantizedModel, ev: ModelEvaluation, input_size: int
) -> ModelMetrics:
    acc = accuracy(ev.labels, ev.predictions)
    ts_bytes = None
    if quantized.recipe.method_spec.scriptable:
        example = torch.zeros(1, 3, input_size, input_size)
        with engine_session(quantized.backend):
            ts_bytes = torchscript_size(portable_copy(quantized.module), example)
    return ModelMetrics(acc["accuracy"], acc["top5"], serialized_size(quantized.module), ts_bytes)


def time_run(result: RunResult, progress: Progress | None = None) -> RunResult:
    """The same result with both latencies measured (FP32 reused when its baseline is timed)."""
    if result.timed:
        return result
    started = time.perf_counter()
    _stage(progress, "timing", 0.0)
    config, pp = result.config, result.config.preprocess
    if result.baseline is None:
        raise ValueError("time_run needs a result made by execute (it carries its FP32 baseline)")
    baseline = time_fp32(result.baseline, result.fp32_model)
    _stage(progress, "timing", 0.5)
    int8_lat = measure_latency(
        result.quantized.module,
        result.quantized.backend,
        pp.input_size,
        config.threads,
        runs=config.latency_runs,
        measured={32: result.int8_batch_seconds},
    )
    timings = dict(result.timings_s)
    timings["latency"] = time.perf_counter() - started
    timings["total"] = timings.get("total", 0.0) + timings["latency"]
    _stage(progress, "timing", 1.0)
    return dataclasses.replace(
        result,
        fp32=baseline.metrics,
        int8=result.int8.with_latency(int8_lat),
        baseline=baseline,
        timings_s=MappingProxyType(timings),
    )


@dataclass(frozen=True)
class QuantizedPreview:
    """The quantized model's own figures, known before the FP32 side is (first number shown)."""

    config: RunConfig
    key: str
    accuracy: float
    top5: float
    size_bytes: int
    n_eval: int
    correct: np.ndarray  # per evaluation image: quantized top-1 == label


def execute(
    config: RunConfig,
    progress: Progress | None = None,
    inputs: LoadedInputs | None = None,
    baseline: Fp32Baseline | None = None,
    on_evaluated: Callable[[RunResult], None] | None = None,
    timed: bool = True,
    fp32: Callable[[LoadedInputs], Fp32Baseline] | None = None,
    on_quantized: Callable[[QuantizedPreview], None] | None = None,
) -> RunResult:
    """Quantize, evaluate and time one configuration; every figure in the result is measured.

    Order: quantize, evaluate the quantized model (``on_quantized`` gets its own figures), get
    the FP32 side, assemble the result (``on_evaluated`` gets it, latencies still None), time.
    The FP32 side is ``baseline`` when its key matches (same model, images and settings), else
    ``fp32(inputs)`` when given (the dashboard's shared background store), else it is
    evaluated here. ``timed=False`` returns the result without timing.
    """
    timings: dict[str, float] = {}
    started = time.perf_counter()
    _stage(progress, "loading", 0.0)
    inputs = inputs or load_inputs(config)
    pp, recipe = config.preprocess, config.recipe
    skipped = list(inputs.skipped)
    calibration = (
        data_mod.load_tensors(list(inputs.calib_items), pp, skipped=skipped).x
        if inputs.calib_items
        else torch.zeros(0, 3, pp.input_size, pp.input_size)
    )
    if recipe.method_spec.calibrates and len(calibration) == 0:
        raise InputError(f"{config.calib_data or config.data}: no readable calibration images")
    timings["load"] = time.perf_counter() - started

    train_batches = None
    on_qat_epoch = None
    if recipe.method_spec.trains:
        train_batches = [
            (b.x, b.y)
            for b in data_mod.iter_batches(
                list(inputs.train_items), pp, batch_size=16, skipped=skipped
            )
        ]

        def on_qat_epoch(converted: torch.nn.Module) -> dict:
            # Accuracy of the model as it would ship after this epoch, on the evaluation set.
            ev = evaluate_models(
                {"quant": (converted, recipe.backend)},
                data_mod.iter_batches(list(inputs.eval_items), pp, batch_size=32),
                threads=config.threads,
            )["quant"]
            return {"accuracy": accuracy(ev.labels, ev.predictions)["accuracy"]}

    t0 = time.perf_counter()
    quantized = quantize(
        inputs.model,
        recipe,
        calibration,
        input_size=pp.input_size,
        train_batches=train_batches,
        progress=progress,
        on_qat_epoch=on_qat_epoch,
    )
    timings["quantize"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    batches = data_mod.iter_batches(list(inputs.eval_items), pp, batch_size=32, skipped=skipped)
    int8_eval = evaluate_models(
        {"int8": (quantized.module, quantized.backend)},
        batches,
        total=len(inputs.eval_items),
        progress=progress,
        threads=config.threads,
    )["int8"]
    if int8_eval.n == 0:
        raise InputError(f"{config.data}: none of the evaluation images could be read")
    int8_metrics = _int8_metrics(quantized, int8_eval, pp.input_size)
    timings["evaluate"] = time.perf_counter() - t0
    if on_quantized is not None:
        on_quantized(
            QuantizedPreview(
                config,
                inputs.key,
                int8_metrics.accuracy,
                int8_metrics.top5,
                int8_metrics.size_bytes,
                int8_eval.n,
                _frozen_array(int8_eval.predictions.top1 == int8_eval.labels),
            )
        )

    t0 = time.perf_counter()
    if baseline is not None and baseline.key != inputs.fp32_key:
        baseline = None
    timings["fp32_reused"] = float(baseline is not None)
    if baseline is None:
        _stage(progress, "evaluating FP32", 0.0)
        baseline = fp32(inputs) if fp32 is not None else evaluate_fp32(config, inputs, progress)
    timings["fp32"] = time.perf_counter() - t0
    evaluation = pair(baseline.evaluation, int8_eval)
    k = len(inputs.class_names)
    timings["total"] = time.perf_counter() - started
    result = RunResult(
        config=config,
        key=inputs.key,
        class_names=inputs.class_names,
        fp32=baseline.metrics,
        int8=int8_metrics,
        evaluation=evaluation,
        confusion_fp32=_frozen_array(confusion(evaluation.labels, evaluation.fp32.top1, k)),
        confusion_int8=_frozen_array(confusion(evaluation.labels, evaluation.quant.top1, k)),
        skipped=tuple(skipped),
        timings_s=MappingProxyType(timings),
        notes=quantized.notes,
        qat_history=quantized.qat_history,
        n_calib=len(calibration),
        fp32_model=inputs.model,
        quantized=quantized,
        calib_items=inputs.calib_items,
        baseline=baseline,
        int8_batch_seconds=int8_eval.batch_seconds,
    )
    if on_evaluated is not None:
        on_evaluated(result)
    if timed:
        result = time_run(result, progress)
    release_memory()
    _stage(progress, "done", 1.0)
    return result
