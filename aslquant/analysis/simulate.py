"""A quantization simulator (AIMET QuantSim style): the float model with a FakeQuantize module at
every quantization point, each with its own grid, bit width and on/off switch.

The quantization points of CustomCNN, in forward order (``POINTS``):

- ``input``: the image entering conv1;
- ``<layer>.weight``: the weights of conv1..fc2;
- ``<layer>.output``: each layer's output after its ReLU (fc2: its logits);
- ``avgpool.output``: the average pool's output, between conv4 and fc1.

``QuantSim`` is a deep copy of the FP32 model whose modules are swapped, never re-written:
``quant`` (the model's QuantStub) becomes the input's FakeQuantize and ``dequant`` fc2's output
FakeQuantize; each conv/linear becomes torch's own ``torch.ao.nn.qat`` module, whose
``weight_fake_quant`` is the weight point; each ReLU becomes ``Sequential(ReLU, FakeQuantize)``.
The average pool becomes ``Sequential(AdaptiveAvgPool2d, FakeQuantize)``. ``CustomCNN.forward``
runs unchanged. Max-pooling needs no point of its own: a max of values on a grid stays on it, so
a layer's output point stands for the quantization of the tensor after its ReLU wherever the
quantized model does it: in the layer itself (fused conv+ReLU), or in the next layer's input
stub when the layer is kept in FP32 (identical, because max-pooling commutes with rounding onto
a fixed grid). Averaging does not commute with rounding, hence the average pool's own point: a
quantized average pool rounds its result again onto conv4's grid, and when conv4 runs float the
model quantizes fc1's input there, after the pool, with a grid observed on pooled values.

Grids come from the run's quantized model where it has them (``SimPlan``, read with
``capture.inspect_quantized``: modules or the pt2e graph) and otherwise from torch's observers
over the FP32 activations of the calibration images. A configuration (``SimConfig``: point name
-> ``QParams``; absent points are off) is loaded with ``QuantSim.configure``; the native one
mirrors the run's model, ``SimPlan.at_bits`` re-divides every calibrated range into N bits.

On top of the simulator: per-point diagnostics for the doctor (``diagnose_points``: drop and
agreement with only one point quantized and with only one point float, the weight-only vs
activation-only split, SQNR, the error in quantization steps, per-channel range spread and the
fraction clipped) and ``check_simulator`` (how closely the native simulation follows the real
quantized model).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.ao.nn.qat as nnqat
import torch.ao.quantization as tq
from torch import nn

from aslquant.analysis.capture import (
    INPUT,
    POOL_AFTER,
    POOL_BEFORE,
    POOLED,
    ObservedRange,
    QuantizedLayers,
    output_point,
)
from aslquant.analysis.common import (
    VARIANT_IMAGES,
    Progress,
    Score,
    evaluate_variants,
    finite_or_none,
    power,
    sqnr_db,
    stage,
)
from aslquant.analysis.fakequant import (
    ROUNDING_RMSE_STEPS,
    QParams,
    activation_qparams,
    check_bits,
    rescale_activation,
    weight_qparams,
)
from aslquant.model import LAYER_NAMES, CustomCNN
from aslquant.qmodules import RELU_AFTER
from aslquant.recipe import QuantRecipe
from aslquant.run import RunResult

if TYPE_CHECKING:
    from aslquant.analysis.run_analysis import RunAnalysis

#: Kinds of quantization point.
KIND_INPUT, KIND_WEIGHT, KIND_ACTIVATION = "input", "weight", "activation"


def weight_point(layer: str) -> str:
    return f"{layer}.weight"


def _points() -> tuple[str, ...]:
    points = [INPUT]
    for layer in LAYER_NAMES:
        points += [weight_point(layer), output_point(layer)]
        if layer == POOL_AFTER:
            points.append(POOLED)
    return tuple(points)


#: Every quantization point of CustomCNN, in forward order.
POINTS: tuple[str, ...] = _points()


def point_layer_kind(name: str) -> tuple[str | None, str]:
    """(layer, kind) of a point name."""
    if name == INPUT:
        return None, KIND_INPUT
    layer, _, what = name.partition(".")
    return layer, KIND_WEIGHT if what == "weight" else KIND_ACTIVATION


def static_points(keep_fp32: Iterable[str]) -> tuple[str, ...]:
    """Points a static INT8 model quantizes when ``keep_fp32`` stay float (true FP32 islands):
    the input when conv1 is quantized; a layer's weights when it is; a layer's output when it
    is quantized or the layer after it is (which quantizes its own input), except across the
    average pool, whose own point is on when conv4 or fc1 is quantized."""
    keep = set(keep_fp32)
    quantized = {n: n not in keep for n in LAYER_NAMES}
    following = dict(zip(LAYER_NAMES, LAYER_NAMES[1:], strict=False))
    points = {INPUT} if quantized[LAYER_NAMES[0]] else set()
    for layer in LAYER_NAMES:
        if quantized[layer]:
            points |= {weight_point(layer), output_point(layer)}
        elif layer != POOL_AFTER and quantized.get(following.get(layer), False):
            points.add(output_point(layer))
    if quantized[POOL_AFTER] or quantized[POOL_BEFORE]:
        points.add(POOLED)
    return tuple(p for p in POINTS if p in points)


#: A simulator configuration: the grid of every point that is on (absent points are off).
SimConfig = Mapping[str, QParams]


# --- the plan: every point's native grid ----------------------------------------------------


@dataclass(frozen=True)
class QuantPoint:
    """One quantization point with the grid the run's model uses there (or would use).

    ``bits``: bits of the calibrated range (7 when reduce_range halves it, though an eager
    quint8 tensor still stores codes up to 255: ``qparams`` keeps the real clamp). ``native``:
    the run's quantized model quantizes this point. ``source``: where the grid came from.
    """

    name: str
    layer: str | None
    kind: str
    qparams: QParams
    bits: int
    native: bool
    source: str

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "layer": self.layer,
            "kind": self.kind,
            "qparams": self.qparams.to_dict(),
            "bits": self.bits,
            "native": self.native,
            "source": self.source,
        }


SOURCE_MODEL = "the quantized model"
SOURCE_OBSERVED = "min/max of FP32 activations over the calibration images"
SOURCE_WEIGHTS = "torch weight observer on the FP32 weights"


@dataclass(frozen=True, eq=False)
class SimPlan:
    """Every point's native grid, what a static model with the run's FP32 islands quantizes
    (``scope``), and what re-dividing the grids into N bits needs."""

    points: Mapping[str, QuantPoint]
    scope: tuple[str, ...]
    recipe: QuantRecipe
    fp32_weights: Mapping[str, torch.Tensor]

    def __post_init__(self) -> None:
        object.__setattr__(self, "points", MappingProxyType(dict(self.points)))
        object.__setattr__(self, "fp32_weights", MappingProxyType(dict(self.fp32_weights)))

    def native(self) -> SimConfig:
        """The run's own quantization: points its model quantizes, with its grids."""
        return MappingProxyType({n: p.qparams for n, p in self.points.items() if p.native})

    def full(self) -> SimConfig:
        """Every point in ``scope`` on, with its native (or observed) grid."""
        return MappingProxyType({n: self.points[n].qparams for n in self.scope})

    @property
    def range_source(self) -> str:
        """Where the activation grids come from (for reports)."""
        acts = [p for n, p in self.points.items() if p.kind != KIND_WEIGHT and n in self.scope]
        if acts and all(p.source == SOURCE_MODEL for p in acts):
            return "quantized model's calibrated scales and zero points"
        if acts and any(p.source == SOURCE_MODEL for p in acts):
            return "quantized model's scales where it has them, else FP32 min/max"
        return SOURCE_OBSERVED

    def grid_at_bits(self, name: str, bits: int) -> QParams:
        """Point ``name``'s grid with ``bits``: weights re-observed by torch's weight observer
        with the recipe's granularity and scheme; activations' calibrated ranges re-divided."""
        point = self.points[name]
        if point.kind == KIND_WEIGHT:
            return weight_qparams(
                self.fp32_weights[point.layer],
                bits,
                per_channel=self.recipe.weight_observer == "per-channel",
                symmetric=self.recipe.qscheme == "symmetric",
            )
        return rescale_activation(point.qparams, point.bits, bits)

    def at_bits(self, bits: int, points: Iterable[str] | None = None) -> SimConfig:
        """``points`` (default: ``scope``) on, each at ``bits``."""
        bits = check_bits(bits)
        names = self.scope if points is None else tuple(points)
        return MappingProxyType({n: self.grid_at_bits(n, bits) for n in names})


def _activation_bits(qparams: QParams, recipe: QuantRecipe) -> int:
    # Eager/FX store quint8 (codes to 255) even when the observer calibrated 7 bits.
    if (
        recipe.method_spec.uses_observers
        and recipe.effective_reduce_range
        and qparams.quant_max - qparams.quant_min == 255
    ):
        return 7
    return qparams.bits


def sim_plan(
    result: RunResult,
    inspected: QuantizedLayers,
    observed: Callable[[], Mapping[str, ObservedRange]],
) -> SimPlan:
    """Every point's grid: the quantized model's where it has one (``native``), else 8 bits
    from torch's observers (FP32 weights; activation ranges from ``observed()``, the FP32
    model over the calibration images, asked for only when a grid is missing)."""
    recipe = result.quantized.recipe
    weights = {n: getattr(result.float_reference, n).weight.detach().float() for n in LAYER_NAMES}
    points: dict[str, QuantPoint] = {}

    def activation(name: str, real: QParams | None) -> None:
        layer, kind = point_layer_kind(name)
        if real is not None:
            points[name] = QuantPoint(
                name, layer, kind, real, _activation_bits(real, recipe), True, SOURCE_MODEL
            )
        else:
            rng = observed()[name]
            grid = activation_qparams(rng.low, rng.high, 8)
            points[name] = QuantPoint(name, layer, kind, grid, 8, False, SOURCE_OBSERVED)

    first = inspected.get(LAYER_NAMES[0])
    activation(INPUT, first.input_qparams if first is not None else None)
    for i, layer in enumerate(LAYER_NAMES):
        quant = inspected.get(layer)
        wq = quant.weight_qparams if quant is not None else None
        if wq is not None:
            points[weight_point(layer)] = QuantPoint(
                weight_point(layer), layer, KIND_WEIGHT, wq, wq.bits, True, SOURCE_MODEL
            )
        else:
            grid = weight_qparams(
                weights[layer],
                8,
                per_channel=recipe.weight_observer == "per-channel",
                symmetric=recipe.qscheme == "symmetric",
            )
            points[weight_point(layer)] = QuantPoint(
                weight_point(layer), layer, KIND_WEIGHT, grid, 8, False, SOURCE_WEIGHTS
            )
        real = quant.output_qparams if quant is not None else None
        if real is None and i + 1 < len(LAYER_NAMES) and layer != POOL_AFTER:
            following = inspected.get(LAYER_NAMES[i + 1])
            real = following.input_qparams if following is not None else None
        activation(output_point(layer), real)
        if layer == POOL_AFTER:
            # The pooled values are quantized as the next layer's input; if it runs float, a
            # quantized pool still rounds onto this layer's output grid.
            following = inspected.get(POOL_BEFORE)
            pooled = following.input_qparams if following is not None else None
            activation(POOLED, pooled or real)
    return SimPlan({p: points[p] for p in POINTS}, static_points(recipe.keep_fp32), recipe, weights)


# --- the simulator ---------------------------------------------------------------------------


class _Given:
    """A QConfig weight factory handing over one existing FakeQuantize (for from_float)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, **_: object) -> nn.Module:
        return self.module


_QAT_MODULES = {nn.Conv2d: nnqat.Conv2d, nn.Linear: nnqat.Linear}


class QuantSim(nn.Module):
    """The FP32 model with a FakeQuantize at every quantization point (see module docstring).

    ``fake_quant[point]`` is the point's FakeQuantize (observer off; grid and switch set by
    ``configure``). Runs in channels-last layout like the FP32 baseline, so with every point
    off it computes exactly what ``measure.fp32_runner`` computes.
    """

    def __init__(self, fp32_model: CustomCNN, plan: SimPlan) -> None:
        super().__init__()
        model = copy.deepcopy(fp32_model).eval()
        self.fake_quant: dict[str, tq.FakeQuantize] = {
            name: point.qparams.module() for name, point in plan.points.items()
        }
        model.quant = self.fake_quant[INPUT]
        for layer in LAYER_NAMES:
            float_layer = getattr(model, layer)
            float_layer.qconfig = tq.QConfig(
                activation=nn.Identity, weight=_Given(self.fake_quant[weight_point(layer)])
            )
            setattr(model, layer, _QAT_MODULES[type(float_layer)].from_float(float_layer))
            output = self.fake_quant[output_point(layer)]
            relu = RELU_AFTER[layer]
            if relu:
                setattr(model, relu, nn.Sequential(getattr(model, relu), output))
            else:
                model.dequant = output
        model.avgpool = nn.Sequential(model.avgpool, self.fake_quant[POOLED])
        self.model = model.to(memory_format=torch.channels_last)
        self.plan = plan
        self.configure(plan.native())

    def configure(self, config: SimConfig) -> QuantSim:
        """Switch on exactly the points in ``config``, each with its grid; the rest off."""
        unknown = set(config) - set(self.fake_quant)
        if unknown:
            raise ValueError(f"unknown quantization points {sorted(unknown)}")
        for name, fq in self.fake_quant.items():
            grid = config.get(name)
            if grid is None:
                fq.disable_fake_quant()
            else:
                grid.load_into(fq)
                fq.enable_fake_quant()
        return self

    def enabled(self) -> tuple[str, ...]:
        """The points currently on, in forward order."""
        return tuple(n for n in POINTS if bool(self.fake_quant[n].fake_quant_enabled[0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last))

    def runner(self, config: SimConfig):
        """A callable running the simulator under ``config`` (for variant evaluation)."""

        def run(x: torch.Tensor) -> torch.Tensor:
            return self.configure(config)(x)

        return run


# --- checking the simulator against the real model -----------------------------------------


@dataclass(frozen=True)
class SimulatorCheck:
    """How closely the simulator follows the run's models on the same evaluation images."""

    #: Native configuration (the run's own points and grids) vs the real quantized model.
    agreement_with_quantized: float
    simulated_accuracy: float
    quantized_accuracy: float
    #: Every point off vs the FP32 model (expected: 1.0, logits bit-identical).
    agreement_off_with_fp32: float
    max_abs_logit_difference_off: float
    points_on: tuple[str, ...]
    n_images: int

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["points_on"] = list(self.points_on)
        return d


def check_simulator(
    run: RunResult | RunAnalysis,
    max_images: int | None = VARIANT_IMAGES,
    progress: Progress | None = None,
    config: SimConfig | None = None,
) -> SimulatorCheck:
    """Top-1 agreement of the simulator (native, or ``config``) with the run's quantized model,
    and of the all-off simulator with FP32, over the first ``max_images`` evaluation images."""
    from aslquant.analysis.run_analysis import as_analysis
    from aslquant.measure import fp32_runner

    analysis = as_analysis(run)
    result, plan = analysis.result, analysis.sim_plan()
    sim = QuantSim(result.float_reference, plan)
    config = plan.native() if config is None else config
    fp32 = fp32_runner(result.fp32_model)
    largest = [0.0]

    def off_vs_fp32(x: torch.Tensor) -> torch.Tensor:
        logits = sim.configure({})(x)
        largest[0] = max(largest[0], float((logits - fp32(x)).abs().max()))
        return logits

    ev = evaluate_variants(
        result,
        {"native": (sim.runner(config), None), "off": (off_vs_fp32, None)},
        max_images,
        progress,
        "checking the simulator",
    )
    native = ev.predictions["native"]
    return SimulatorCheck(
        agreement_with_quantized=float((native == ev.int8).mean()) if ev.n else math.nan,
        simulated_accuracy=ev.score("native").accuracy,
        quantized_accuracy=ev.int8_accuracy,
        agreement_off_with_fp32=float((ev.predictions["off"] == ev.fp32).mean())
        if ev.n
        else math.nan,
        max_abs_logit_difference_off=largest[0],
        points_on=tuple(n for n in POINTS if n in config),
        n_images=ev.n,
    )


# --- per-point diagnostics (the doctor's evidence) ------------------------------------------


@dataclass
class _TensorSums:
    signal: float = 0.0
    noise: float = 0.0
    noise_steps: float = 0.0
    clipped: int = 0
    count: int = 0


def _broadcast(values: tuple, axis: int | None, t: torch.Tensor) -> torch.Tensor:
    v = torch.tensor(values, dtype=torch.float64)
    if axis is None:
        return v[0]
    shape = [1] * t.dim()
    shape[axis] = -1
    return v.reshape(shape)


def _accumulate(sums: _TensorSums, t: torch.Tensor, grid: QParams) -> None:
    """Add one tensor's quantization error on ``grid`` to ``sums``."""
    t = t.detach().float()
    err = (grid.fake_quantize(t) - t).double()
    scale = _broadcast(grid.scale, grid.axis, t)
    zero = _broadcast(grid.zero_point, grid.axis, t)
    # Clipped: further outside the grid than rounding reaches (half a step). The tolerance
    # keeps a symmetric grid's largest weight (exactly half a step out) from counting.
    reach = scale * (0.5 + 1e-4)
    low = (grid.quant_min - zero) * scale - reach
    high = (grid.quant_max - zero) * scale + reach
    td = t.double()
    sums.signal += power(td)
    sums.noise += power(err)
    sums.noise_steps += power(err / scale)
    sums.clipped += int(((td < low) | (td > high)).sum())
    sums.count += t.numel()


@dataclass(frozen=True)
class ChannelSpread:
    """How unequal the per-channel ranges (max - min) of a tensor are."""

    range_max: float
    range_median: float
    #: range_max / range_median (None when the median channel never varies).
    spread: float | None
    #: Channels whose values never varied (e.g. ReLU channels that never fire).
    constant_channels: int

    @classmethod
    def of(cls, channel_min: np.ndarray, channel_max: np.ndarray) -> ChannelSpread:
        ranges = np.asarray(channel_max, float) - np.asarray(channel_min, float)
        median = float(np.median(ranges))
        return cls(
            float(ranges.max()),
            median,
            float(ranges.max() / median) if median > 0 else None,
            int((ranges <= 0).sum()),
        )

    def to_dict(self) -> dict:
        return {
            "range_max": self.range_max,
            "range_median": self.range_median,
            "spread": self.spread,
            "constant_channels": self.constant_channels,
        }


@dataclass(frozen=True)
class PointDiagnosis:
    """What one quantization point costs, and why (one row of the doctor's evidence).

    Scores are top-1 over the same evaluation images against the FP32 model: ``alone`` with
    only this point quantized (its own damage), ``without`` with every other point of the scope
    quantized and this one float (what keeping it float wins back: ``gain_points`` of top-1,
    ``restored_points`` of answers the same as FP32's). Answers that change are the more
    sensitive evidence on a few images: a point can flip answers both ways at no net accuracy
    cost (``changed_alone_points``), and those flips add up with the other points'. Tensor
    statistics compare the point's FP32 tensor with the same tensor on the point's grid:
    ``rmse_steps`` is the RMS error in quantization steps, 1/sqrt(12) ~ 0.289 for pure rounding
    (``rmse_vs_rounding`` ~ 1); clipping or a coarse grid shows as more. ``channels``: how
    unequal the per-channel ranges are (weights: per output channel; activations: per channel
    over the calibration images, what the observers saw).
    """

    point: str
    layer: str | None
    kind: str
    native: bool
    bits: int
    per_channel: bool
    scale_max: float
    zero_point: int | None
    clip_min: float | None
    clip_max: float | None
    sqnr_db: float | None
    rmse_steps: float | None
    rmse_vs_rounding: float | None
    clipped_fraction: float
    channels: ChannelSpread
    alone: Score
    without: Score
    gain_points: float
    restored_points: float
    n_images: int
    n_values: int

    @property
    def changed_alone_points(self) -> float:
        """Percent of answers that differ from FP32's with only this point quantized."""
        return 100.0 * (1.0 - self.alone.agreement)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["channels"] = self.channels.to_dict()
        d["alone"] = self.alone.to_dict()
        d["changed_alone_points"] = self.changed_alone_points
        d["without"] = self.without.to_dict()
        return d


@dataclass(frozen=True)
class ErrorSplit:
    """AIMET QuantAnalyzer's split: all points vs weights only vs activations (input
    included) only, each against FP32 on the same images."""

    all_points: Score
    weights_only: Score
    activations_only: Score
    fp32_accuracy: float
    n_images: int

    def to_dict(self) -> dict:
        return {
            "all_points": self.all_points.to_dict(),
            "weights_only": self.weights_only.to_dict(),
            "activations_only": self.activations_only.to_dict(),
            "fp32_accuracy": self.fp32_accuracy,
            "n_images": self.n_images,
        }


@dataclass(frozen=True)
class PointDiagnostics:
    """``diagnose_points``' answer: a row per point, the global split, and what was checked."""

    points: tuple[PointDiagnosis, ...]
    split: ErrorSplit
    #: Top-1 agreement of the all-off simulator with FP32 (a self-check: 1.0).
    off_agreement: float
    range_source: str

    def to_dict(self) -> dict:
        return {
            "points": [p.to_dict() for p in self.points],
            "split": self.split.to_dict(),
            "off_agreement": self.off_agreement,
            "range_source": self.range_source,
        }


def diagnose_points(
    run: RunResult | RunAnalysis,
    max_images: int | None = VARIANT_IMAGES,
    progress: Progress | None = None,
    points: Iterable[str] | None = None,
) -> PointDiagnostics:
    """Per-point evidence over one pass of the first ``max_images`` evaluation images.

    The scope is every point the run's recipe quantizes statically (``plan.scope``: the input
    included), each with the run's grid where its model has one. Variants evaluated together:
    every point alone, every point left out, all on, weights only, activations only, all off.
    Activation statistics come from the all-off (FP32) pass: hooks on each FakeQuantize see
    exactly the FP32 tensor at that point.
    """
    from aslquant.analysis.run_analysis import as_analysis

    analysis = as_analysis(run)
    result, plan = analysis.result, analysis.sim_plan()
    full = plan.full()
    diagnosed = tuple(plan.scope if points is None else points)
    missing = [p for p in diagnosed if p not in full]
    if missing:
        raise ValueError(f"points {missing} are not quantized by this recipe")
    sim = QuantSim(result.float_reference, plan)
    weights = {n for n in full if point_layer_kind(n)[1] == KIND_WEIGHT}
    variants = {
        "off": (sim.runner({}), None),
        "all": (sim.runner(full), None),
        "weights": (sim.runner({n: g for n, g in full.items() if n in weights}), None),
        "activations": (sim.runner({n: g for n, g in full.items() if n not in weights}), None),
    }
    for name in diagnosed:
        variants[f"alone:{name}"] = (sim.runner({name: full[name]}), None)
        without = {n: g for n, g in full.items() if n != name}
        variants[f"without:{name}"] = (sim.runner(without), None)

    sums = {n: _TensorSums() for n in diagnosed}
    for name in diagnosed:
        if name in weights:
            layer = point_layer_kind(name)[0]
            _accumulate(sums[name], plan.fp32_weights[layer], full[name])
    recording = [False]
    handles = []
    for name in diagnosed:
        if name in weights:
            continue

        def hook(module, inputs, output, name=name):
            if recording[0]:
                _accumulate(sums[name], inputs[0], full[name])

        handles.append(sim.fake_quant[name].register_forward_hook(hook))

    off_runner = variants["off"][0]

    def off_recorded(x: torch.Tensor) -> torch.Tensor:
        recording[0] = True
        try:
            return off_runner(x)
        finally:
            recording[0] = False

    variants["off"] = (off_recorded, None)
    try:
        ev = evaluate_variants(result, variants, max_images, progress, "diagnosing points")
    finally:
        for handle in handles:
            handle.remove()

    all_score = ev.score("all")
    rows = []
    for name in diagnosed:
        layer, kind = point_layer_kind(name)
        grid = full[name]
        s = sums[name]
        rmse_steps = math.sqrt(s.noise_steps / s.count) if s.count else None
        if kind == KIND_WEIGHT:
            w = plan.fp32_weights[layer]
            dims = tuple(range(1, w.dim()))
            spread = ChannelSpread.of(w.amin(dim=dims).numpy(), w.amax(dim=dims).numpy())
        else:
            rng = analysis.observed_ranges()[name]
            spread = ChannelSpread.of(rng.channel_min, rng.channel_max)
        alone, without = ev.score(f"alone:{name}"), ev.score(f"without:{name}")
        clip = grid.clip_range() if not grid.per_channel else (None, None)
        rows.append(
            PointDiagnosis(
                point=name,
                layer=layer,
                kind=kind,
                native=plan.points[name].native,
                bits=plan.points[name].bits,
                per_channel=grid.per_channel,
                scale_max=grid.scale_max,
                zero_point=None if grid.per_channel else grid.zero_point[0],
                clip_min=clip[0],
                clip_max=clip[1],
                sqnr_db=finite_or_none(sqnr_db(s.signal, s.noise)) if s.count else None,
                rmse_steps=rmse_steps,
                rmse_vs_rounding=(
                    rmse_steps / ROUNDING_RMSE_STEPS if rmse_steps is not None else None
                ),
                clipped_fraction=s.clipped / s.count if s.count else 0.0,
                channels=spread,
                alone=alone,
                without=without,
                gain_points=without.accuracy * 100.0 - all_score.accuracy * 100.0,
                restored_points=without.agreement * 100.0 - all_score.agreement * 100.0,
                n_images=ev.n,
                n_values=s.count,
            )
        )
    off = ev.predictions["off"]
    split = ErrorSplit(
        all_score, ev.score("weights"), ev.score("activations"), ev.fp32_accuracy, ev.n
    )
    stage(progress, "diagnosing points", 1.0)
    return PointDiagnostics(
        tuple(rows),
        split,
        float((off == ev.fp32).mean()) if ev.n else math.nan,
        plan.range_source,
    )
