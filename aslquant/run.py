"""A quantization run: a frozen ``RunConfig`` in, a ``RunResult`` out.

This is the one function both views call: the CLI writes the result to report.json /
report.md, the dashboard draws it. Everything a run depends on is in its config, and the
config's ``key`` hashes the *contents* of the files it names, so equal inputs are recognised
(and cached by the dashboard) even when they arrive under another file name.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from aslquant import data as data_mod
from aslquant.data import Preprocess
from aslquant.engine_lock import default_threads, engine_session
from aslquant.errors import InputError
from aslquant.labels import load_labels
from aslquant.measure import (
    ModelEvaluation,
    PairEvaluation,
    accuracy,
    confusion,
    evaluate_models,
    evaluate_pair,
    latency_profile,
    pair,
    per_class_accuracy,
    serialized_size,
    torchscript_size,
)
from aslquant.model import CustomCNN, load_checkpoint
from aslquant.quantize import Progress, QuantizedModel, portable_copy, quantize
from aslquant.recipe import QuantRecipe

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = REPO_ROOT / "sample_data"
DEMO_CHECKPOINT = DEMO_DIR / "model.pth"
DEMO_LABELS = DEMO_DIR / "lb.pkl"
DEMO_DATA = DEMO_DIR / "images"


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
        if self.eval_images is not None and self.eval_images < 1:
            raise InputError(f"--eval-images must be at least 1, got {self.eval_images}")
        if self.threads < 1:
            raise InputError(f"threads must be at least 1, got {self.threads}")
        if self.latency_runs < 30:
            raise InputError(f"latency runs must be at least 30, got {self.latency_runs}")

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

    def cli_command(self) -> str:
        """The shell command that reproduces this run headless."""
        import shlex

        args = ["python", "-m", "aslquant", "report"]
        for flag, value, default in (
            ("--checkpoint", self.checkpoint, str(DEMO_CHECKPOINT)),
            ("--labels", self.labels, str(DEMO_LABELS)),
            ("--data", self.data, str(DEMO_DATA)),
        ):
            if value != default:
                args += [flag, value]
        if self.calib_data:
            args += ["--calib-data", self.calib_data]
        if self.train_data:
            args += ["--train-data", self.train_data]
        args += self.recipe.cli_args()
        if self.eval_images is not None:
            args += ["--eval-images", str(self.eval_images)]
        pp = self.preprocess
        args += ["--input-size", str(pp.input_size), "--scale", str(pp.scale)]
        if pp.crop:
            args.append("--center-crop")
        if pp.mean is not None:
            args += ["--mean", *map(str, pp.mean), "--std", *map(str, pp.std)]
        if pp.bgr:
            args.append("--bgr")
        args += ["--seed", str(self.seed), "--out", "OUT"]
        return " ".join(shlex.quote(a) for a in args)


def _sha256_file(path: str, what: str) -> str:
    if not Path(path).is_file():
        raise InputError(f"{path}: {what} file not found")
    return data_mod.sha256_file(path)


@dataclass
class LoadedInputs:
    """The validated inputs of a run: model, labels, and the image samples."""

    model: CustomCNN
    class_names: list[str]
    image_set: data_mod.ImageSet
    calib_items: list
    eval_items: list
    train_items: list
    skipped: list[tuple[str, str]]
    key: str
    fp32_key: str


def load_inputs(config: RunConfig) -> LoadedInputs:
    """Read and validate checkpoint, labels and images; pick calibration and evaluation samples."""
    class_names = load_labels(config.labels)
    model = load_checkpoint(config.checkpoint, num_labels=len(class_names))
    image_set = data_mod.load_image_set(config.data, class_names)
    recipe = config.recipe
    needs_calib = recipe.method in ("static", "fx", "qat", "pt2e")
    n_calib = recipe.calib_images if needs_calib else 0
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
    if recipe.method == "qat" and config.train_data:
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
        class_names,
        image_set,
        calib_items,
        eval_items,
        train_items,
        skipped,
        key,
        fp32_key,
    )


@dataclass
class ModelMetrics:
    accuracy: float
    top5: float
    size_bytes: int
    torchscript_bytes: int | None
    latency_ms: dict[str, float]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Fp32Baseline:
    """The FP32 model's side of a run, measured once and reused by every further recipe.

    Valid for runs whose ``LoadedInputs.fp32_key`` equals ``key``: same checkpoint, labels,
    evaluation images, preprocessing, threads and number of timed runs.
    """

    key: str
    evaluation: ModelEvaluation
    metrics: ModelMetrics
    seconds: float
    threads: int
    input_size: int
    latency_runs: int
    #: ONNX Runtime FP32 figures (export.ort_fp32_baseline), filled in when measured.
    onnx_fp32: dict | None = None


def measure_fp32(
    config: RunConfig, inputs: LoadedInputs, progress: Progress | None = None
) -> Fp32Baseline:
    """Evaluate and time the FP32 model alone (the dashboard does this as soon as a model
    and images are chosen, so the first quantization does not wait for it)."""
    started = time.perf_counter()
    batches = data_mod.iter_batches(inputs.eval_items, config.preprocess, batch_size=32)
    ev = evaluate_models(
        {"fp32": (inputs.model, None)},
        batches,
        total=len(inputs.eval_items),
        progress=progress,
        threads=config.threads,
    )["fp32"]
    baseline = _baseline(config, inputs, ev, started)
    release_freed_memory()
    return baseline


def _baseline(
    config: RunConfig, inputs: LoadedInputs, ev: ModelEvaluation, started: float
) -> Fp32Baseline:
    pp = config.preprocess
    if ev.n == 0:
        raise InputError(f"{config.data}: none of the evaluation images could be read")
    metrics = _metrics(config, inputs.model, None, ev, pp)
    return Fp32Baseline(
        inputs.fp32_key,
        ev,
        metrics,
        time.perf_counter() - started,
        config.threads,
        pp.input_size,
        config.latency_runs,
    )


def _metrics(
    config: RunConfig,
    module: torch.nn.Module,
    backend: str | None,
    ev: ModelEvaluation,
    pp: Preprocess,
    scriptable: bool = True,
) -> ModelMetrics:
    lat = latency_profile(
        module,
        backend,
        pp.input_size,
        config.threads,
        runs=config.latency_runs,
        measured={32: ev.batch_seconds},
    )
    example = torch.zeros(1, 3, pp.input_size, pp.input_size)
    with engine_session(backend):
        ts_bytes = torchscript_size(portable_copy(module), example) if scriptable else None
    acc = accuracy(ev.labels, ev.predictions)
    return ModelMetrics(acc["accuracy"], acc["top5"], serialized_size(module), ts_bytes, lat)


@dataclass
class RunResult:
    """Plain data about one run, plus the two live models for analysis and prediction."""

    config: RunConfig
    key: str
    class_names: list[str]
    fp32: ModelMetrics
    int8: ModelMetrics
    evaluation: PairEvaluation
    confusion_fp32: np.ndarray
    confusion_int8: np.ndarray
    skipped: list[tuple[str, str]]
    timings_s: dict[str, float]
    notes: list[str]
    qat_history: list[dict]
    n_calib: int
    fp32_model: CustomCNN
    quantized: QuantizedModel
    calib_items: list
    baseline: Fp32Baseline | None = None
    layers: list[dict] = field(default_factory=list)
    onnx: dict | None = None
    extra: dict = field(default_factory=dict)

    @property
    def calibration(self) -> torch.Tensor:
        """The calibration images, preprocessed (decoded again on each access).

        Not stored: at 224 px, 64 images are 38 MB of floats, and a session keeps ten runs.
        """
        pp = self.config.preprocess
        if not self.calib_items:
            return torch.zeros(0, 3, pp.input_size, pp.input_size)
        return data_mod.load_tensors(self.calib_items, pp).x

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


def release_freed_memory() -> None:
    """Hand memory freed by a run back to the operating system (glibc only; else a no-op).

    A run allocates and frees ~20 MB batches from several threads; glibc keeps such memory
    in per-thread arenas, so a long dashboard session's resident size crept up by ~8 MB per
    run although nothing was retained (bench/memory.py: 84 MB after 10 runs, 42 MB with this).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _stage(progress: Progress | None, stage: str, fraction: float) -> None:
    if progress:
        progress(stage, fraction)


def execute(
    config: RunConfig,
    progress: Progress | None = None,
    inputs: LoadedInputs | None = None,
    baseline: Fp32Baseline | None = None,
) -> RunResult:
    """Quantize, evaluate and time one configuration; every figure in the result is measured.

    ``baseline``: the FP32 side measured earlier for the same model, images and settings
    (``result.baseline`` of an earlier run, or ``measure_fp32``); ignored unless its key
    matches, in which case the FP32 model is neither evaluated nor timed again.
    """
    timings: dict[str, float] = {}
    started = time.perf_counter()
    _stage(progress, "loading", 0.0)
    inputs = inputs or load_inputs(config)
    pp, recipe = config.preprocess, config.recipe
    skipped = list(inputs.skipped)
    calibration = (
        data_mod.load_tensors(inputs.calib_items, pp, skipped=skipped).x
        if inputs.calib_items
        else torch.zeros(0, 3, pp.input_size, pp.input_size)
    )
    if recipe.method in ("static", "fx", "qat", "pt2e") and len(calibration) == 0:
        raise InputError(f"{config.calib_data or config.data}: no readable calibration images")
    timings["load"] = time.perf_counter() - started

    train_batches = None
    if recipe.method == "qat":
        train_batches = [
            (b.x, b.y)
            for b in data_mod.iter_batches(inputs.train_items, pp, batch_size=16, skipped=skipped)
        ]
    on_qat_epoch = None
    if recipe.method == "qat":

        def on_qat_epoch(converted: torch.nn.Module) -> dict:
            # Accuracy of the model as it would ship after this epoch, on the evaluation set.
            ev = evaluate_pair(
                inputs.model,
                converted,
                recipe.backend,
                data_mod.iter_batches(inputs.eval_items, pp, batch_size=32),
                threads=config.threads,
            )
            return {"accuracy": accuracy(ev.labels, ev.quant)["accuracy"]}

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
    if baseline is not None and baseline.key != inputs.fp32_key:
        baseline = None
    models = {"int8": (quantized.module, quantized.backend)}
    if baseline is None:
        models["fp32"] = (inputs.model, None)
    batches = data_mod.iter_batches(inputs.eval_items, pp, batch_size=32, skipped=skipped)
    evaluated = evaluate_models(
        models, batches, total=len(inputs.eval_items), progress=progress, threads=config.threads
    )
    if evaluated["int8"].n == 0:
        raise InputError(f"{config.data}: none of the evaluation images could be read")
    timings["evaluate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    _stage(progress, "timing", 0.0)
    timings["fp32_reused"] = float(baseline is not None)
    if baseline is None:
        baseline = _baseline(config, inputs, evaluated["fp32"], t0)
    evaluation = pair(baseline.evaluation, evaluated["int8"])
    metrics = {
        "fp32": baseline.metrics,
        "int8": _metrics(
            config,
            quantized.module,
            quantized.backend,
            evaluated["int8"],
            pp,
            scriptable=recipe.method != "pt2e",
        ),
    }
    _stage(progress, "timing", 1.0)
    timings["latency"] = time.perf_counter() - t0

    k = len(inputs.class_names)
    result = RunResult(
        config=config,
        key=inputs.key,
        class_names=inputs.class_names,
        fp32=metrics["fp32"],
        int8=metrics["int8"],
        evaluation=evaluation,
        confusion_fp32=confusion(evaluation.labels, evaluation.fp32.top1, k),
        confusion_int8=confusion(evaluation.labels, evaluation.quant.top1, k),
        skipped=skipped,
        timings_s=timings,
        notes=list(quantized.notes),
        qat_history=list(quantized.qat_history),
        n_calib=len(calibration),
        fp32_model=inputs.model,
        quantized=quantized,
        calib_items=list(inputs.calib_items),
        baseline=baseline,
    )
    timings["total"] = time.perf_counter() - started
    release_freed_memory()
    _stage(progress, "done", 1.0)
    return result
