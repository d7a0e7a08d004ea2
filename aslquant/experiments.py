"""Experiments that quantize many recipes or call ``run.execute`` several times.

``config_sweep``: accuracy, latency and size for a grid of recipes (the data of a Pareto plot).
``qat_vs_ptq``: QAT's per-epoch accuracy next to post-training static from the same model.
Each returns typed rows with ``to_dict()`` (report.json's ``sweep`` and ``qat_vs_ptq``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import product
from typing import Any

from aslquant import data as data_mod
from aslquant import methods
from aslquant.errors import InputError, UnsupportedCombination
from aslquant.quantize import Progress
from aslquant.recipe import QuantRecipe
from aslquant.run import RunConfig

#: The default config grid: every activation x weight observer for the default method on x86.
DEFAULT_GRID: dict[str, list[str]] = {
    "method": [methods.DEFAULT_METHOD],
    "backend": ["x86"],
    "act_observer": ["minmax", "moving-average", "histogram"],
    "weight_observer": ["minmax", "per-channel"],
}
#: Recipe fields a grid may vary besides DEFAULT_GRID's.
EXTRA_GRID_FIELDS = ("qscheme", "reduce_range", "fuse", "equalize", "bias_correction")
#: The method of the sweep's reference row (the float model itself).
REFERENCE = "fp32"
#: The recipe settings every sweep row names.
ROW_SETTINGS = ("method", "backend", "act_observer", "weight_observer")


def _stage(progress: Progress | None, stage: str, fraction: float) -> None:
    if progress:
        progress(stage, min(1.0, max(0.0, fraction)))


@dataclass(frozen=True)
class SweepRow:
    """One row of report.json's ``sweep``: latency in ms (p50/p95 at batch 1 and 32), size in
    bytes, accuracy as fractions. Failed recipes keep their settings and ``error``; the first
    row is the FP32 reference (``reference`` true, ``method`` "fp32")."""

    method: str
    backend: str
    act_observer: str
    weight_observer: str
    label: str
    accuracy: float | None = None
    top5: float | None = None
    agreement: float | None = None
    b1_p50: float | None = None
    b1_p95: float | None = None
    b32_p50: float | None = None
    b32_p95: float | None = None
    size_bytes: int | None = None
    n_eval: int | None = None
    recipe: QuantRecipe | None = None
    error: str | None = None
    reference: bool = False

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["recipe"] = self.recipe.resolved().to_dict() if self.recipe is not None else None
        return d


def _grid_recipes(
    config: RunConfig, grid: Mapping[str, Sequence[Any]]
) -> list[tuple[dict, QuantRecipe | None, str | None]]:
    unknown = sorted(set(grid) - set(DEFAULT_GRID) - set(EXTRA_GRID_FIELDS))
    if unknown:
        raise InputError(f"sweep grid has unknown keys {unknown}")
    full = {**DEFAULT_GRID, **{k: list(v) for k, v in grid.items()}}
    keys = list(full)
    recipes = []
    for combo in product(*(full[k] for k in keys)):
        changes = dict(zip(keys, combo, strict=True))
        try:
            recipes.append((changes, config.recipe.with_changes(**changes), None))
        except InputError as err:  # an impossible combination is a row with its reason
            recipes.append((changes, None, str(err)))
    return recipes


def config_sweep(
    config: RunConfig,
    grid: Mapping[str, Sequence[Any]] | None = None,
    progress: Progress | None = None,
    latency_runs: int | None = None,
) -> tuple[SweepRow, ...]:
    """Accuracy, latency and size for every recipe in a grid: the data of a Pareto plot.

    Inputs are loaded, the FP32 model evaluated and timed once; each recipe is quantized on the
    same calibration images, evaluated on the same evaluation images and timed in this process.
    The first row is the FP32 reference.
    """
    from aslquant.measure import (
        accuracy,
        evaluate_models,
        fp32_runner,
        latency_profile,
        serialized_size,
    )
    from aslquant.quantize import quantize
    from aslquant.run import load_inputs

    recipes = _grid_recipes(config, grid or {})
    needs = max(
        (r.calib_images for _, r, _ in recipes if r is not None), default=config.recipe.calib_images
    )
    base = dataclasses.replace(config, recipe=config.recipe.with_changes(calib_images=needs))
    inputs = load_inputs(base)
    pp = config.preprocess
    calibration = data_mod.load_tensors(list(inputs.calib_items), pp).x
    runs = latency_runs or config.latency_runs
    total = len(recipes) + 1

    def evaluate(module, backend):
        batches = data_mod.iter_batches(list(inputs.eval_items), pp, batch_size=32)
        ev = evaluate_models({"m": (module, backend)}, batches, threads=config.threads)["m"]
        # The evaluation's full batches are the batch-32 timed runs (see latency_profile).
        lat = latency_profile(
            module, backend, pp.input_size, config.threads, runs=runs,
            measured={32: ev.batch_seconds},
        )  # fmt: skip
        return ev, lat

    def measured(settings: dict, label: str, ev, lat: dict, size: int, **extra) -> SweepRow:
        acc = accuracy(ev.labels, ev.predictions)
        return SweepRow(
            **settings,
            label=label,
            accuracy=acc["accuracy"],
            top5=acc["top5"],
            **{key: lat[key] for key in ("b1_p50", "b1_p95", "b32_p50", "b32_p95")},
            size_bytes=size,
            n_eval=ev.n,
            **extra,
        )

    # The FP32 reference once, up front: every recipe's agreement is against it.
    _stage(progress, "sweep: FP32 reference", 0.0)
    fp32_eval, fp32_lat = evaluate(fp32_runner(inputs.model), None)
    rows = []
    for i, (changes, recipe, error) in enumerate(recipes):
        _stage(progress, f"sweep {i + 1}/{len(recipes)}", i / total)
        settings = {key: changes.get(key, getattr(config.recipe, key)) for key in ROW_SETTINGS}
        if recipe is None:
            label = " / ".join(map(str, changes.values()))
            rows.append(SweepRow(**settings, label=label, error=error))
            continue
        try:
            qm = quantize(
                inputs.model, recipe, calibration[: recipe.calib_images], input_size=pp.input_size
            )
        except UnsupportedCombination as err:
            rows.append(SweepRow(**settings, label=recipe.describe(), error=str(err)))
            continue
        ev, lat = evaluate(qm.module, qm.backend)
        agreement = float((ev.predictions.top1 == fp32_eval.predictions.top1).mean())
        size = serialized_size(qm.module)
        rows.append(
            measured(settings, recipe.describe(), ev, lat, size, agreement=agreement, recipe=recipe)
        )
    reference_settings = {key: "-" for key in ROW_SETTINGS} | {"method": REFERENCE}
    size = serialized_size(inputs.model)
    reference = measured(
        reference_settings, "FP32 (reference)", fp32_eval, fp32_lat, size, agreement=1.0,
        reference=True,
    )  # fmt: skip
    _stage(progress, "sweep done", 1.0)
    return (reference, *rows)


@dataclass(frozen=True)
class PtqArm:
    """The post-training side of ``qat_vs_ptq`` (accuracy as fractions, drop in points)."""

    accuracy: float
    agreement: float
    recipe: str
    drop_points: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class QatArm(PtqArm):
    """The QAT side: also the converted model's accuracy after every epoch."""

    history: tuple[dict, ...] = ()

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["history"] = [dict(h) for h in self.history]
        return d


@dataclass(frozen=True)
class QatVsPtq:
    """report.json's ``qat_vs_ptq``: keys ``ptq`` and ``qat`` are the two arms."""

    epochs: int
    fp32_accuracy: float
    ptq: PtqArm
    qat: QatArm
    n_eval: int
    #: Images QAT fine-tuned on when they are the calibration images (None: --train-data).
    n_train: int | None

    def to_dict(self) -> dict:
        # The two arms' report.json keys are their field names, ptq and qat.
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {k: v.to_dict() if hasattr(v, "to_dict") else v for k, v in values.items()}


def qat_vs_ptq(config: RunConfig, epochs: int, progress: Progress | None = None) -> QatVsPtq:
    """QAT's converted-model accuracy after every epoch next to post-training static.

    Both start from the same FP32 model with the same observers and calibration images; QAT
    fine-tunes on the run's training images (the calibration images unless --train-data).
    """
    from aslquant.run import execute

    if epochs < 1:
        raise InputError(f"QAT epochs must be at least 1, got {epochs}")
    trained = methods.names(lambda m: m.trains)[0]
    qat_cfg = config.with_recipe(method=trained, qat_epochs=int(epochs))
    ptq_cfg = config.with_recipe(method=methods.DEFAULT_METHOD)

    def part(name: str, lo: float, hi: float) -> Progress | None:
        if progress is None:
            return None
        return lambda stage, f: progress(f"{name}: {stage}", lo + (hi - lo) * f)

    ptq = execute(ptq_cfg, progress=part("PTQ", 0.0, 0.3))
    qat = execute(qat_cfg, progress=part("QAT", 0.3, 1.0))
    return QatVsPtq(
        epochs=int(epochs),
        fp32_accuracy=ptq.fp32.accuracy,
        ptq=PtqArm(
            ptq.int8.accuracy, ptq.agreement, ptq_cfg.recipe.describe(), ptq.accuracy_drop_points
        ),
        qat=QatArm(
            qat.int8.accuracy,
            qat.agreement,
            qat_cfg.recipe.describe(),
            qat.accuracy_drop_points,
            tuple(dict(h) for h in qat.qat_history),
        ),
        n_eval=ptq.n_eval,
        n_train=qat.n_calib if not config.train_data else None,
    )
