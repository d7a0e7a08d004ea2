"""The quantization doctor: from "accuracy dropped" to a remedy that is proven to work.

1. **Split.** The run's evaluation images are split, class by class, into a *selection* half
   (everything the doctor decides on) and a *held-out* half (only the final before/after is
   measured there): a config is never picked on the images it is reported on. Calibration
   images come from the pool the evaluation never uses, drawn with k seeds, so every figure the
   doctor ranks carries its calibration-seed spread.
2. **Checks before any run**: the CPU's instruction sets against reduce_range and the backend,
   whether conv+ReLU fusion happened, eval mode, and observers that never saw data.
3. **Diagnosis** per quantization point, the input included: the drop with only that point
   quantized and with only that point left in FP32 (real INT8 models, true FP32 islands), plus
   what the simulator and the per-layer analysis say (weight vs activation error, SQNR, error in
   quantization steps, range spread, clipping).
4. **Remedies** are recipe changes (observers, reduce_range, per-channel weights, CLE, bias
   correction, FP32 islands, fusion); each is tried on the selection split over the k seeds and
   findings are ranked by what their best remedy measurably wins back.
5. **Prescribe** ("meet my budget"): remedies are combined greedily in the order the diagnosis
   gives until the drop on the selection split meets the target (optionally within a size
   bound); the result is measured on the held-out half, with the seed spread, and returned as a
   replayable command.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from aslquant import data as data_mod
from aslquant.analysis import PointDiagnosis, PointDiagnostics, diagnose_points
from aslquant.analysis.simulate import KIND_INPUT, KIND_WEIGHT
from aslquant.calibration_study import draw, study_split
from aslquant.errors import InputError
from aslquant.measure import evaluate_models, serialized_size
from aslquant.methods import Progress
from aslquant.model import LAYER_NAMES
from aslquant.quantize import QuantizedModel, quantize
from aslquant.recipe import QuantRecipe
from aslquant.run import (
    Fp32Baseline,
    LoadedInputs,
    RunConfig,
    RunResult,
    evaluate_fp32,
    execute,
)
from aslquant.stats import Interval, SeedSpread, paired_drop_interval, rank_candidates

#: Calibration draws per figure the doctor ranks (the issue asks for at least 3).
DEFAULT_SEEDS = 3
#: Quantization points in forward order: the model input, then each layer (weights + output).
POINTS: tuple[str, ...] = ("input", *LAYER_NAMES)
#: A finding whose measured recovery is below this is reported but not offered as a fix.
MIN_RECOVERY_POINTS = 0.05
#: Selection images the simulator diagnoses each point on (every point is 2 float passes).
DIAGNOSIS_IMAGES = 96
#: A point is a finding when quantizing it alone, or keeping it float, moves top-1 this much.
POINT_POINTS = 0.3
#: Above this channel spread (largest / median channel range) equalization is worth trying.
CHANNEL_SPREAD = 8.0
#: Above this share of values clipped, the range is too narrow; below it with a large error
#: in steps, the range is too wide (an outlier set it).
CLIPPED = 1e-3
STEPS_EXCESS = 1.5


@dataclass(frozen=True)
class Remedy:
    """A recipe change that should fix a finding, in words a student can read."""

    name: str
    changes: Mapping[str, Any]
    why: str

    def apply(self, recipe: QuantRecipe) -> QuantRecipe:
        changes = dict(self.changes)
        if "keep_fp32" in changes:  # FP32 islands add to the ones the recipe already keeps
            changes["keep_fp32"] = tuple(set(recipe.keep_fp32) | set(changes["keep_fp32"]))
        return recipe.with_changes(**changes)

    def to_dict(self) -> dict:
        changes = {k: list(v) if isinstance(v, tuple) else v for k, v in self.changes.items()}
        return {"name": self.name, "changes": changes, "why": self.why}


@dataclass(frozen=True)
class Finding:
    """Something wrong (or risky), with its evidence and the remedies that address it."""

    key: str
    title: str
    detail: str
    evidence: Mapping[str, Any]
    remedies: tuple[Remedy, ...]
    #: The diagnostic score (e.g. points lost with only this point quantized); ranks ties.
    score: float = 0.0

    def to_dict(self) -> dict:
        return {
            "key": self.key,
            "title": self.title,
            "detail": self.detail,
            "evidence": dict(self.evidence),
            "remedies": [r.to_dict() for r in self.remedies],
            "score": self.score,
        }


@dataclass(frozen=True)
class Trial:
    """One recipe measured with k calibration seeds on one split of the evaluation images."""

    recipe: QuantRecipe
    split: str
    n_images: int
    fp32_accuracy: float
    accuracies: tuple[float, ...]
    drops: tuple[float, ...]  # points, FP32 minus quantized, one per seed
    agreements: tuple[float, ...]
    size_bytes: int
    #: Paired bootstrap interval of the first seed's drop over the images.
    drop_interval: Interval

    @property
    def spread(self) -> SeedSpread:
        return SeedSpread(self.drops)

    @property
    def drop(self) -> float:
        return float(np.mean(self.drops))

    def to_dict(self) -> dict:
        return {
            "recipe": self.recipe.to_dict(),
            "describe": self.recipe.describe(),
            "split": self.split,
            "n_images": self.n_images,
            "fp32_accuracy": self.fp32_accuracy,
            "accuracies": list(self.accuracies),
            "drops": list(self.drops),
            "agreements": list(self.agreements),
            "drop_mean": self.drop,
            "seed_spread": self.spread.to_dict(),
            "drop_interval": self.drop_interval.to_dict(),
            "size_bytes": self.size_bytes,
        }


@dataclass(frozen=True)
class RemedyOutcome:
    """What one remedy measurably did on the selection split."""

    finding: str
    remedy: Remedy
    trial: Trial
    recovery_points: float  # mean drop before minus mean drop with the remedy

    def to_dict(self) -> dict:
        return {
            "finding": self.finding,
            "remedy": self.remedy.to_dict(),
            "trial": self.trial.to_dict(),
            "recovery_points": self.recovery_points,
        }


@dataclass(frozen=True)
class Prescription:
    """The recipe "meet my budget" ends at, proven on held-out images."""

    target_drop: float
    reached: bool
    recipe: QuantRecipe
    command: str
    steps: tuple[dict, ...]
    before: Trial  # held-out, the starting recipe
    after: Trial  # held-out, the prescribed recipe
    claim_holds: bool  # the seed spread is no wider than the gap it claims to close
    note: str

    def to_dict(self) -> dict:
        return {
            "target_drop": self.target_drop,
            "reached": self.reached,
            "recipe": self.recipe.to_dict(),
            "describe": self.recipe.describe(),
            "command": self.command,
            "steps": list(self.steps),
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "claim_holds": self.claim_holds,
            "note": self.note,
        }


def _stage(progress: Progress | None, stage: str, fraction: float) -> None:
    if progress:
        progress(stage, min(1.0, max(0.0, fraction)))


# --- setup checks ------------------------------------------------------------------------------


def _observed(t: Any) -> bool:
    """An observer's recorded range is real (not the untouched default of +/-inf)."""
    lo, hi = getattr(t, "min_val", None), getattr(t, "max_val", None)
    if lo is None or hi is None or lo.numel() == 0:
        return False
    return bool(torch.isfinite(lo).all() and torch.isfinite(hi).all())


def unobserved_layers(quantized: QuantizedModel) -> list[str]:
    """Quantization points whose qparams are the defaults an observer that never saw data gives.

    torch's observers with no data return scale 1.0 and zero point 0 (and warn); a real range
    of exactly one unit per step is implausible for this network's inputs and activations, so
    the pair marks a point whose observer was never run (calibration images did not reach it).
    Covers quantized modules and the model's Quantize stubs (eager), and the scale/zero-point
    attributes FX stores for each quantize op.
    """
    module = quantized.inspectable
    found = []
    for name, sub in module.named_modules():
        scale, zp = getattr(sub, "scale", None), getattr(sub, "zero_point", None)
        if isinstance(scale, float | torch.Tensor) and isinstance(zp, int | torch.Tensor):
            if torch.as_tensor(scale).numel() == 1 and float(scale) == 1.0 and int(zp) == 0:
                found.append(name or "model")
    for name, value in module.named_buffers():
        if name.endswith("_scale_0") and value.numel() == 1 and float(value) == 1.0:
            zp = dict(module.named_buffers()).get(name.replace("_scale_0", "_zero_point_0"))
            if zp is not None and int(zp) == 0:
                found.append(name.removesuffix("_scale_0"))
    return [_point_name(n) for n in found]


def _point_name(module_path: str) -> str:
    """A module path as the user knows it: ``to_int8.conv1`` is conv1's input (the image)."""
    if module_path.startswith("to_int8."):
        layer = module_path.split(".", 1)[1]
        return "the input" if layer == LAYER_NAMES[0] else f"{layer}'s input"
    return module_path


def unfused_layers(quantized: QuantizedModel) -> list[str]:
    """Quantized layers followed by a ReLU that was not fused into them."""
    recipe = quantized.recipe
    if recipe.fuse or not recipe.method_spec.uses_observers:
        return []
    return [
        n for n in recipe.method_spec.quantized_layers if n != "fc2" and n not in recipe.keep_fp32
    ]


def setup_checks(run_quantized: QuantizedModel, fp32: nn.Module) -> list[Finding]:
    """Checks that need no measurement: CPU features, fusion, eval mode, unobserved layers."""
    from aslquant.machine import cpu_features, reduce_range_advice

    recipe = run_quantized.recipe
    findings: list[Finding] = []
    features = cpu_features()
    if recipe.method_spec.uses_observers and recipe.effective_reduce_range:
        safe = (
            bool(features.avx512_vnni)
            if recipe.backend in ("x86", "fbgemm")
            else bool(features.vnni)
        )
        if safe:
            findings.append(
                Finding(
                    "cpu:reduce_range",
                    "7-bit activations on a CPU that does not need them",
                    reduce_range_advice(features),
                    {"cpu": features.present(), "backend": recipe.backend},
                    (
                        Remedy(
                            "8-bit activations (reduce_range off)",
                            {"reduce_range": False},
                            "halves every activation rounding step; safe on VNNI CPUs",
                        ),
                    ),
                )
            )
    unfused = unfused_layers(run_quantized)
    if unfused:
        findings.append(
            Finding(
                "setup:fusion",
                "conv+ReLU not fused",
                "Each conv's output is quantized before its ReLU, so the observer spends its range "
                "on negative values the ReLU then throws away, and the ReLU runs as a separate "
                "quantized op.",
                {"unfused": unfused},
                (
                    Remedy(
                        "fuse conv+ReLU",
                        {"fuse": True},
                        "one quantized op per layer, post-ReLU range",
                    ),
                ),
            )
        )
    if any(m.training for m in fp32.modules()):
        findings.append(
            Finding(
                "setup:eval",
                "the FP32 model is in training mode",
                "Quantize a model in eval mode: dropout and batch-norm behave differently while "
                "training.",
                {},
                (),
            )
        )
    unobserved = unobserved_layers(run_quantized)
    if unobserved:
        findings.append(
            Finding(
                "setup:unobserved",
                f"observers never saw data: {', '.join(unobserved)}",
                "These layers were converted with default qparams (scale 1.0, zero point 0): "
                "calibration images never reached their observers. Re-calibrating (the recipe "
                "run again on real images) gives them real ranges.",
                {"layers": unobserved},
                (Remedy("re-calibrate", {}, "observers see the calibration images"),),
                score=math.inf,
            )
        )
    return findings


# --- the doctor --------------------------------------------------------------------------------


class Doctor:
    """One diagnosis session over a run's config: splits, FP32 reference, measured trials.

    ``quantized``: the quantized model under diagnosis (default: the config's recipe quantized
    with the first calibration seed). Every trial is cached by recipe, so re-asking is free.
    """

    def __init__(
        self,
        config: RunConfig,
        *,
        seeds: int = DEFAULT_SEEDS,
        quantized: QuantizedModel | None = None,
        progress: Progress | None = None,
        inputs: LoadedInputs | None = None,
        fp32: Fp32Baseline | None = None,
    ) -> None:
        if seeds < 3:
            raise InputError(f"the doctor needs at least 3 calibration seeds, got {seeds}")
        self.config = config
        self.seeds = tuple(range(seeds))
        self.progress = progress
        self.started = time.perf_counter()
        # The evaluation set stays fixed and calibration draws come from a pool outside it
        # (carved from the run's own deal when the images it does not evaluate are too few
        # for k different draws): the calibration study's split, one rule for both.
        split = study_split(config, config.recipe.calib_images, inputs)
        self.inputs = split.inputs
        self.pool = list(split.pool)
        self.split_description = split.description
        items = list(self.inputs.eval_items)
        if len(items) < 20:
            raise InputError(
                f"{config.data}: the doctor needs at least 20 evaluation images to split into "
                f"selection and held-out halves, got {len(items)}"
            )
        # Class-stratified halves: evaluation items are dealt round-robin over classes, so the
        # first half holds every class in proportion (and the simulator's "first N images" are
        # selection images).
        half = len(items) // 2
        self.selection = np.arange(0, half)
        self.held_out = np.arange(half, len(items))
        need = config.recipe.calib_images
        if len(self.pool) < need:
            raise InputError(
                f"{config.calib_data or config.data}: {need} calibration images asked for, only "
                f"{len(self.pool)} images are outside the evaluation set"
            )
        _stage(progress, "doctor: FP32 reference", 0.0)
        if fp32 is None or fp32.key != self.inputs.fp32_key:
            fp32 = evaluate_fp32(config, self.inputs, progress)
        self.fp32: Fp32Baseline = fp32
        self._labels = np.asarray(self.fp32.evaluation.labels)
        self._fp32_top1 = np.asarray(self.fp32.evaluation.predictions.top1)
        self._calibration: dict[tuple[int, int], torch.Tensor] = {}
        self._trials: dict[tuple[QuantRecipe, str], Trial] = {}
        self._predictions: dict[tuple[Any, int], np.ndarray] = {}
        self._models: dict[tuple[Any, int], QuantizedModel] = {}
        self._sizes: dict[QuantRecipe, int] = {}
        #: The model under diagnosis when it was given (not made from the recipe here).
        self.given = quantized
        self._run: RunResult | None = None
        self._diagnostics: PointDiagnostics | None = None
        self.quantized = quantized or self._quantize(config.recipe.resolved(), self.seeds[0])

    # --- measuring ---------------------------------------------------------------------------

    def calibration(self, n: int, seed: int) -> torch.Tensor:
        """``n`` calibration images drawn with ``seed`` from outside the evaluation set."""
        key = (n, seed)
        if key not in self._calibration:
            items = list(draw(self.pool, n, seed))
            self._calibration[key] = data_mod.load_tensors(items, self.config.preprocess).x
        return self._calibration[key]

    def _quantize(self, recipe: QuantRecipe, seed: int) -> QuantizedModel:
        key = (recipe, seed)
        if key not in self._models:
            calib = (
                self.calibration(recipe.calib_images, seed) if recipe.calibration_images else None
            )
            qm = quantize(
                self.inputs.model, recipe, calib, input_size=self.config.preprocess.input_size
            )
            if seed == self.seeds[0]:
                self._sizes[recipe] = serialized_size(qm.module)
            # Only the model being evaluated is kept: a trial evaluates one seed at a time.
            self._models = {key: qm}
        return self._models[key]

    def _top1(self, recipe: Any, seed: int, indices: np.ndarray) -> np.ndarray:
        """Top-1 of the recipe (calibrated with ``seed``) on the evaluation images ``indices``;
        ``recipe=None`` is the given model under diagnosis."""
        key = (recipe, seed)
        cached = self._predictions.get(key)
        if cached is None:
            cached = np.full(len(self._labels), -1, dtype=np.int64)
            self._predictions[key] = cached
        missing = indices[cached[indices] < 0]
        if len(missing):
            qm = self.given if recipe is None else self._quantize(recipe, seed)
            items = [self.inputs.eval_items[i] for i in missing]
            batches = data_mod.iter_batches(items, self.config.preprocess, batch_size=32)
            ev = evaluate_models(
                {"q": (qm.module, qm.backend)}, batches, threads=self.config.threads
            )["q"]
            if ev.n != len(missing):
                raise InputError(f"{self.config.data}: some evaluation images became unreadable")
            cached[missing] = ev.predictions.top1
        return cached[indices]

    def base(self, split: str = "selection") -> Trial:
        """The model under diagnosis: the given one, else the config's recipe over the seeds."""
        return self.trial(None if self.given is not None else self.config.recipe, split)

    def trial(self, recipe: QuantRecipe | None, split: str = "selection") -> Trial:
        """The recipe measured over every seed on ``split`` ("selection" or "held-out");
        ``None``: the given model under diagnosis (one model, so no seed spread)."""
        recipe = recipe.resolved() if recipe is not None else None
        key = (recipe, split)
        if key in self._trials:
            return self._trials[key]
        indices = self.selection if split == "selection" else self.held_out
        labels, fp32 = self._labels[indices], self._fp32_top1[indices]
        fp32_acc = float((fp32 == labels).mean())
        accs, drops, agrees = [], [], []
        first = None
        for seed in self.seeds if recipe is not None else self.seeds[:1]:
            top1 = self._top1(recipe, seed, indices)
            acc = float((top1 == labels).mean())
            accs.append(acc)
            drops.append(100.0 * (fp32_acc - acc))
            agrees.append(float((top1 == fp32).mean()))
            if first is None:
                first = top1
        if recipe is None:
            size = serialized_size(self.given.module)
        else:
            if recipe not in self._sizes:
                self._quantize(recipe, self.seeds[0])
            size = self._sizes[recipe]
        trial = Trial(
            recipe if recipe is not None else self.given.recipe,
            split,
            len(indices),
            fp32_acc,
            tuple(accs),
            tuple(drops),
            tuple(agrees),
            size,
            paired_drop_interval(fp32 == labels, first == labels),
        )
        self._trials[key] = trial
        return trial

    # --- diagnosis ---------------------------------------------------------------------------

    def run(self) -> RunResult:
        """The model under diagnosis as a run over the evaluation images (selection first)."""
        if self._run is None:
            run = execute(self.config, inputs=self.inputs, baseline=self.fp32, timed=False)
            if self.given is not None:  # diagnose the model given, not a fresh one
                run = dataclasses.replace(run, quantized=self.given)
            self._run = run
        return self._run

    def diagnose(self, max_images: int = DIAGNOSIS_IMAGES) -> PointDiagnostics | None:
        """Per quantization point (the input included), from the simulator on the first
        ``max_images`` selection images: the drop with only that point quantized and with only
        that point float, SQNR, error in quantization steps, channel spread, clipping; and the
        weight-only / activation-only split. None for methods without static points."""
        if self._diagnostics is None:
            spec = self.config.recipe.method_spec
            if not (spec.uses_observers and spec.has_layer_modules):
                return None
            _stage(self.progress, "doctor: simulating each point", 0.0)
            n = min(max_images, len(self.selection))
            self._diagnostics = diagnose_points(self.run(), max_images=n, progress=self.progress)
        return self._diagnostics

    def findings(self) -> list[Finding]:
        """Every finding with its candidate remedies: setup checks, one per quantization point
        that costs accuracy (remedies chosen by what the evidence says), and techniques."""
        recipe = self.config.recipe.resolved()
        spec = recipe.method_spec
        found = setup_checks(self.quantized, self.inputs.model)
        diagnostics = self.diagnose()
        if diagnostics is not None:
            for row in diagnostics.points:
                finding = _point_finding(row, recipe)
                if finding is not None:
                    found.append(finding)
        if spec.supports_bias_correction and not recipe.bias_correction:
            found.append(
                Finding(
                    "technique:bias",
                    "weight rounding may shift layer outputs",
                    "Bias correction measures the mean output shift the rounded weights cause on "
                    "calibration images and subtracts it from each bias.",
                    {},
                    (
                        Remedy(
                            "bias correction", {"bias_correction": True}, "removes the mean shift"
                        ),
                    ),
                )
            )
        return found

    def try_remedies(self, findings: Sequence[Finding]) -> list[RemedyOutcome]:
        """Every remedy of every finding measured over every seed on the selection split."""
        base = self.base()
        outcomes = []
        remedies = [(f, r) for f in findings for r in f.remedies]
        for i, (finding, remedy) in enumerate(remedies):
            _stage(self.progress, "doctor: trying remedies", i / max(1, len(remedies)))
            try:
                recipe = remedy.apply(self.config.recipe)
            except InputError:
                continue  # the remedy does not combine with this recipe
            trial = self.trial(recipe)
            outcomes.append(RemedyOutcome(finding.key, remedy, trial, base.drop - trial.drop))
        return outcomes

    def rank(self, findings: Sequence[Finding], outcomes: Sequence[RemedyOutcome]) -> list[dict]:
        """Findings ordered by what their best remedy measurably wins back, each with its
        remedies best first and, per remedy, the others within its calibration-seed spread.

        Findings whose best remedies are within each other's seed spread are not ranked
        apart by that noise: among them a setup check comes first (it is a cause; the
        quantization points it affects are its symptoms), then the finding with the stronger
        evidence of its own (the simulated gain of keeping the point float).
        """
        by_finding: dict[str, list[RemedyOutcome]] = {}
        for o in outcomes:
            by_finding.setdefault(o.finding, []).append(o)
        rows = []
        for f in findings:
            tried = sorted(by_finding.get(f.key, []), key=lambda o: -o.recovery_points)
            overlaps = {
                r.name: r.overlaps_with
                for r in rank_candidates(
                    [(o.remedy.name, o.trial.spread.interval) for o in tried],
                    higher_is_better=False,
                )
            }
            best = tried[0] if tried else None
            rows.append(
                {
                    "finding": f.to_dict(),
                    "impact_points": best.recovery_points if best else 0.0,
                    "best_recovery_points": best.recovery_points if best else 0.0,
                    "remedies": [
                        {**o.to_dict(), "within_spread_of": list(overlaps[o.remedy.name])}
                        for o in tried
                    ],
                    "_best": best,
                }
            )
        rows.sort(key=lambda r: -r["impact_points"])
        # Tiers: a row joins the leader's tier while its best remedy's seed spread overlaps.
        tier, leader = 0, None
        for row in rows:
            best = row["_best"]
            interval = best.trial.spread.interval if best else None
            if leader is None or interval is None or not interval.overlaps(leader):
                tier, leader = tier + 1, interval
            row["tier"] = tier
        # Defects of the setup first, then quantization points, then advice (the CPU's
        # instruction sets, techniques worth trying) that is not a cause of its own.
        kind_order = {"setup": 0, "point": 1, "cpu": 2, "technique": 2}
        rows.sort(
            key=lambda r: (
                r["tier"],
                kind_order.get(r["finding"]["key"].split(":")[0], 3),
                -r["finding"]["score"],
                -r["impact_points"],
            )
        )
        for rank, row in enumerate(rows, start=1):
            row["rank"] = rank
            del row["_best"]
        return rows

    # --- prescription --------------------------------------------------------------------------

    def meet_budget(
        self,
        target_drop: float,
        ranked: Sequence[Mapping[str, Any]],
        max_size_bytes: int | None = None,
        max_steps: int = 6,
    ) -> Prescription:
        """Combine remedies in the diagnosis's order until the mean drop over the seeds on the
        selection split is at most ``target_drop`` (and the model within ``max_size_bytes``);
        then measure the starting and the final recipe on the held-out half."""
        if not math.isfinite(target_drop) or target_drop < 0:
            raise InputError(f"target drop must be a number of points >= 0, got {target_drop}")
        current = self.config.recipe.resolved()
        steps = [self._step("start", None, self.base())]
        candidates: list[Remedy] = []
        for row in ranked:
            for outcome in row["remedies"]:
                if outcome["recovery_points"] > MIN_RECOVERY_POINTS:
                    candidates.append(_remedy_from(outcome["remedy"]))
        seen: set[str] = set()
        ordered = [r for r in candidates if not (r.name in seen or seen.add(r.name))]
        for i, remedy in enumerate(ordered):
            if (
                self._meets(steps[-1]["trial"], target_drop, max_size_bytes)
                or len(steps) > max_steps
            ):
                break
            _stage(self.progress, "doctor: meeting the budget", i / max(1, len(ordered)))
            try:
                candidate = remedy.apply(current).resolved()
            except InputError:
                continue
            if candidate == current and (self.given is None or len(steps) > 1):
                continue
            trial = self.trial(candidate)
            if trial.drop < steps[-1]["trial"].drop:  # keep only what helps on selection images
                current = candidate
                steps.append(self._step(remedy.name, remedy, trial))
        reached = self._meets(steps[-1]["trial"], target_drop, max_size_bytes)
        _stage(self.progress, "doctor: held-out images", 0.0)
        before = self.base("held-out")
        after = self.trial(current, "held-out")
        gap = before.drop - after.drop
        # The claim is "this recipe closes the gap on images it never saw": it holds when the
        # held-out drop went down by more than the calibration-seed spread. A recipe that did
        # not help held-out (gap <= 0) claims nothing it can keep; an unchanged recipe claims
        # nothing at all.
        changed = current != self.config.recipe.resolved()
        claim_holds = not changed or (gap > 0 and (after.spread.max - after.spread.min) <= gap)
        note = (
            f"held-out drop {before.drop:.2f} -> {after.drop:.2f} points (mean of "
            f"{len(self.seeds)} calibration seeds; spread {after.spread.min:.2f}..{after.spread.max:.2f})"
        )
        config = dataclasses.replace(self.config, recipe=current)
        _stage(self.progress, "doctor: done", 1.0)
        return Prescription(
            float(target_drop),
            reached and after.drop <= target_drop,
            current,
            config.cli_command(),
            tuple(
                {
                    "step": s["step"],
                    "remedy": None if s["remedy"] is None else s["remedy"].to_dict(),
                    "trial": s["trial"].to_dict(),
                }
                for s in steps
            ),
            before,
            after,
            claim_holds,
            note,
        )

    @staticmethod
    def _step(name: str, remedy: Remedy | None, trial: Trial) -> dict:
        return {"step": name, "remedy": remedy, "trial": trial}

    @staticmethod
    def _meets(trial: Trial, target: float, max_size: int | None) -> bool:
        return trial.drop <= target and (max_size is None or trial.size_bytes <= max_size)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started


def _point_finding(row: PointDiagnosis, recipe: QuantRecipe) -> Finding | None:
    """A finding for one diagnosed point, with the remedies its evidence points to."""
    spec = recipe.method_spec
    hurt, gain = row.alone.drop_points, row.gain_points
    changed, restored = row.changed_alone_points, row.restored_points
    # Answers that change are evidence too: on a few images a point can flip answers both ways
    # at no net accuracy cost, and such flips add up with the other points' (the remedies are
    # then proven on real INT8 models over the seeds, so a candidate too many costs only time).
    if max(hurt, gain, changed, restored) < POINT_POINTS:
        return None
    changes = f"{changed:.1f}% of answers changed alone; {gain:+.2f} points when float"
    remedies: list[Remedy] = []
    steps = f"{row.rmse_vs_rounding:.1f}x pure rounding" if row.rmse_vs_rounding else "n/a"
    spread = row.channels.spread
    spread_text = f"{spread:.1f}" if spread is not None else "n/a"
    evidence = row.to_dict()
    if row.kind == KIND_INPUT:
        title = (
            f"the input's quantization costs {hurt:.2f} points on its own "
            f"({changes}; {row.bits}-bit grid, error {steps})"
        )
        detail = (
            "The image itself is rounded before conv1. Its range after normalization sets the "
            "step for every pixel; with 7-bit activations each step is twice as coarse."
        )
        remedies.append(
            Remedy(
                "keep conv1 in FP32 (the input stays float)",
                {"keep_fp32": ("conv1",)},
                "the first quantized layer then quantizes conv1's output instead of the image",
            )
        )
    elif row.kind == KIND_WEIGHT:
        title = (
            f"{row.layer} weights cost {hurt:.2f} points on their own ({changes}; SQNR "
            f"{row.sqnr_db or 0:.1f} dB, error {steps}, channel spread {spread_text})"
        )
        detail = (
            f"{'One scale per output channel' if row.per_channel else 'One scale for the whole layer'}"
            f"; the widest channel sets the step for the narrow ones when the spread is large."
        )
        if not row.per_channel and spec.weight_settings:
            remedies.append(
                Remedy(
                    "per-channel weights",
                    {"weight_observer": "per-channel"},
                    "one scale per filter: a large filter no longer coarsens the others",
                )
            )
        if spec.supports_equalize and not recipe.equalize and (spread or 0) > CHANNEL_SPREAD:
            remedies.append(
                Remedy(
                    "cross-layer equalization",
                    {"equalize": True},
                    "evens out channel ranges between layers without changing the function",
                )
            )
    else:
        where = "the average pool's output" if row.layer == "avgpool" else f"{row.layer}'s output"
        title = (
            f"{where} costs {hurt:.2f} points on its own ({changes}; "
            f"{100 * row.clipped_fraction:.2f}% clipped, error {steps})"
        )
        detail = "Activations share one scale per tensor, set by the calibration observer."
        too_wide = row.clipped_fraction < CLIPPED and (row.rmse_vs_rounding or 0) > STEPS_EXCESS
        if spec.chooses_act_observer and (
            too_wide or recipe.act_observer in ("minmax", "moving-average")
        ):
            for observer in ("histogram", "mse", "percentile", "entropy"):
                if recipe.act_observer != observer:
                    remedies.append(
                        Remedy(
                            f"{observer} activation ranges",
                            {"act_observer": observer},
                            "a range chosen from the distribution, not from its most extreme value",
                        )
                    )
        if spec.supports_equalize and not recipe.equalize and (spread or 0) > CHANNEL_SPREAD:
            remedies.append(
                Remedy(
                    "cross-layer equalization",
                    {"equalize": True},
                    "evens out the channels that share one activation scale",
                )
            )
    if spec.uses_observers and recipe.effective_reduce_range and row.kind != KIND_WEIGHT:
        remedies.append(
            Remedy(
                "8-bit activations (reduce_range off)",
                {"reduce_range": False},
                "halves every activation step (the input's included); safe on VNNI CPUs",
            )
        )
    layer = row.layer if row.layer != "avgpool" else "fc1"
    if layer is not None and layer in spec.keep_fp32_layers and layer not in recipe.keep_fp32:
        remedies.append(
            Remedy(
                f"keep {layer} in FP32",
                {"keep_fp32": (layer,)},
                "a true FP32 island: the layer gets the float tensor of the FP32 model",
            )
        )
    return Finding(
        f"point:{row.point}",
        title,
        detail + f" Simulated on {row.n_images} selection images; keeping this point float "
        f"wins back {gain:.2f} points of top-1 and {restored:.1f}% of the FP32 answers.",
        evidence,
        tuple({r.name: r for r in remedies}.values()),
        # Ranked by top-1 won back; answers restored stay evidence, not the order.
        score=gain,
    )


def _point_rows(diagnostics: PointDiagnostics | None) -> list[dict]:
    """The evidence plot's rows: per point, the drop alone and the gain when float."""
    if diagnostics is None:
        return []
    return [
        {
            **row.to_dict(),
            "drop_only_this_quantized": row.alone.drop_points,
            "recovered_if_float": row.gain_points,
        }
        for row in diagnostics.points
    ]


def _remedy_from(d: Mapping[str, Any]) -> Remedy:
    changes = {k: tuple(v) if isinstance(v, list) else v for k, v in d["changes"].items()}
    return Remedy(d["name"], changes, d["why"])


@dataclass(frozen=True)
class DoctorReport:
    """Everything the doctor found and proved (report.json ``doctor``)."""

    config: RunConfig
    checks: tuple[dict, ...]
    points: tuple[dict, ...]
    ranked: tuple[dict, ...]
    prescription: Prescription | None
    seeds: int
    n_selection: int
    n_held_out: int
    seconds: float
    split: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "checks": list(self.checks),
            "points": list(self.points),
            "ranked": list(self.ranked),
            "prescription": None if self.prescription is None else self.prescription.to_dict(),
            "seeds": self.seeds,
            "n_selection": self.n_selection,
            "n_held_out": self.n_held_out,
            "seconds": self.seconds,
            "split": self.split,
            **dict(self.extra),
        }


def examine(
    config: RunConfig,
    target_drop: float | None = None,
    *,
    seeds: int = DEFAULT_SEEDS,
    max_size_bytes: int | None = None,
    quantized: QuantizedModel | None = None,
    progress: Progress | None = None,
    fp32: Fp32Baseline | None = None,
) -> DoctorReport:
    """The whole doctor: checks, diagnosis, remedies tried and ranked, and (with a target) the
    prescription measured on held-out images. ``fp32``: a run's FP32 baseline for the same
    model and images (reused instead of evaluating FP32 again)."""
    doc = Doctor(config, seeds=seeds, quantized=quantized, progress=progress, fp32=fp32)
    findings = doc.findings()
    checks = tuple(f.to_dict() for f in findings if f.key.startswith("setup:"))
    outcomes = doc.try_remedies(findings)
    ranked = doc.rank(findings, outcomes)
    prescription = (
        doc.meet_budget(target_drop, ranked, max_size_bytes) if target_drop is not None else None
    )
    return DoctorReport(
        config,
        checks,
        tuple(_point_rows(doc.diagnose())),
        tuple(ranked),
        prescription,
        len(doc.seeds),
        len(doc.selection),
        len(doc.held_out),
        doc.seconds,
        doc.split_description,
    )
