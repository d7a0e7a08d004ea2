"""QuantRecipe: one frozen value that names a whole quantization choice.

Every field's allowed values are declared once, in ``FIELDS`` (scikit-learn's
``_parameter_constraints`` idea): the dataclass validates itself with them when it is made, the
CLI builds its flags from them, the dashboard its widgets' bounds, and one parametrized test tries
an invalid value for every field. Rules that combine fields (a method that only runs on one
backend, a backend that refuses affine weights) come from the method registry
(``aslquant.methods``) and are checked here too, so a recipe that exists can be run.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aslquant import methods, qconfig
from aslquant.errors import InputError, UnsupportedCombination
from aslquant.model import LAYER_NAMES

BACKENDS: dict[str, str] = {
    "x86": "Intel/AMD servers and laptops: picks fbgemm or onednn kernels per op (default).",
    "fbgemm": "The older x86 server backend; 7-bit activations by default to avoid overflow.",
    "qnnpack": "ARM phones (Android/iOS): ARM-optimised kernels, slow when emulated on x86.",
    "onednn": "Intel oneDNN kernels; fast on CPUs with VNNI/AMX int8 instructions.",
}

#: Activation observers offered, with what each does (declared with their torch classes).
ACT_OBSERVERS: dict[str, str] = {
    name: choice.help for name, choice in qconfig.ACT_OBSERVERS.items()
}
WEIGHT_OBSERVERS: dict[str, str] = {
    "minmax": "One scale for a whole layer's weights (per-tensor).",
    "per-channel": "One scale per output channel: small filters keep their precision.",
}

QSCHEMES: dict[str, str] = {
    "affine": "Range mapped with a zero point: uses all 256 levels for skewed (ReLU) data.",
    "symmetric": "Range centred on zero: simpler integer math, wastes half the levels on ReLU.",
}

#: Backends whose default qconfig quantizes activations to 7 bits (reduce_range=True).
REDUCE_RANGE_BY_DEFAULT = frozenset({"x86", "fbgemm"})
#: Backends that only accept symmetric (zero point 0) INT8 weights.
SYMMETRIC_WEIGHTS_ONLY = frozenset({"onednn"})


# --- declared constraints --------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """One of named options, each with a one-line explanation."""

    options: Mapping[str, str]

    def check(self, what: str, value: Any) -> Any:
        if not isinstance(value, str) or value not in self.options:
            raise InputError(f"{what} {value!r} is not one of {', '.join(self.options)}")
        return value

    def describe(self) -> str:
        return "one of " + ", ".join(self.options)


@dataclass(frozen=True)
class Interval:
    """A number in [low, high]; ``integer`` numbers must be whole."""

    low: float
    high: float
    integer: bool = True

    def check(self, what: str, value: Any) -> Any:
        kind = "whole number" if self.integer else "number"
        ok_type = isinstance(value, int) if self.integer else isinstance(value, int | float)
        if isinstance(value, bool) or not ok_type:
            raise InputError(f"{what} must be a {kind} in {self._range()}, got {value!r}")
        if not math.isfinite(value) or not self.low <= value <= self.high:
            raise InputError(f"{what} must be in {self._range()}, got {value!r}")
        return value

    def _range(self) -> str:
        fmt = (lambda v: f"{int(v)}") if self.integer else (lambda v: f"{v:g}")
        return f"{fmt(self.low)}..{fmt(self.high)}"

    def describe(self) -> str:
        return ("whole number in " if self.integer else "number in ") + self._range()


@dataclass(frozen=True)
class Flag:
    """True or False."""

    def check(self, what: str, value: Any) -> Any:
        if not isinstance(value, bool):
            raise InputError(f"{what} must be true or false, got {value!r}")
        return value

    def describe(self) -> str:
        return "true or false"


@dataclass(frozen=True)
class OptionalFlag(Flag):
    """True, False or None (None: the backend's default)."""

    def check(self, what: str, value: Any) -> Any:
        return None if value is None else super().check(what, value)

    def describe(self) -> str:
        return "true, false or none (backend default)"


@dataclass(frozen=True)
class LayerSet:
    """A set of layer names, stored in forward order (so equal sets hash the same)."""

    layers: tuple[str, ...] = LAYER_NAMES

    def check(self, what: str, value: Any) -> Any:
        if isinstance(value, str) or not isinstance(value, list | tuple | set | frozenset):
            raise InputError(f"{what} must be a list of layer names, got {value!r}")
        for name in value:
            if name not in self.layers:
                raise InputError(f"{what} layer {name!r} is not one of {', '.join(self.layers)}")
        return tuple(n for n in self.layers if n in value)

    def describe(self) -> str:
        return "layers among " + ", ".join(self.layers)


@dataclass(frozen=True)
class FieldSpec:
    """How one recipe field is validated, labelled for people and spelled on the CLI."""

    label: str
    constraint: Choice | Interval | Flag | LayerSet
    help: str


FIELDS: dict[str, FieldSpec] = {
    "method": FieldSpec("method", Choice(methods.help_texts()), "how the model is quantized"),
    "backend": FieldSpec("backend", Choice(BACKENDS), "the kernels that run INT8"),
    "act_observer": FieldSpec(
        "activation observer", Choice(ACT_OBSERVERS), "how activation ranges are calibrated"
    ),
    "weight_observer": FieldSpec(
        "weight observer", Choice(WEIGHT_OBSERVERS), "per-tensor or per-channel weight scales"
    ),
    "qscheme": FieldSpec(
        "qscheme", Choice(QSCHEMES), "weight scheme (activations are always affine)"
    ),
    "reduce_range": FieldSpec(
        "reduce_range", OptionalFlag(), "7-bit activations (default: on for x86/fbgemm)"
    ),
    "calib_images": FieldSpec(
        "calibration images", Interval(1, 4096), "images the observers see"
    ),
    "calib_batch_size": FieldSpec(
        "calibration batch size", Interval(1, 256), "images per calibration batch"
    ),
    "keep_fp32": FieldSpec("keep_fp32", LayerSet(), "layers left in float (true FP32 islands)"),
    "fuse": FieldSpec("fuse", Flag(), "fuse conv+ReLU and linear+ReLU before quantizing"),
    "equalize": FieldSpec(
        "equalize", Flag(), "cross-layer equalization: even out channel ranges (function kept)"
    ),
    "bias_correction": FieldSpec(
        "bias_correction", Flag(), "subtract the mean output shift weight rounding causes"
    ),
    "qat_epochs": FieldSpec("QAT epochs", Interval(1, 50), "fine-tuning epochs for qat"),
    "qat_lr": FieldSpec("QAT learning rate", Interval(1e-7, 1.0, integer=False), "QAT SGD step"),
    "qat_freeze_observers_epoch": FieldSpec(
        "QAT observer freeze epoch", Interval(0, 50), "epoch after which ranges stop moving"
    ),
    "qat_freeze_bn_epoch": FieldSpec(
        "QAT batch-norm freeze epoch", Interval(0, 50), "epoch after which BN stats freeze"
    ),
}


@dataclass(frozen=True)
class QuantRecipe:
    """Everything that decides how a model is quantized (not what it is measured on).

    ``reduce_range=None`` means the backend's default: 7-bit activations on x86/fbgemm, 8-bit
    elsewhere. ``resolved()`` replaces it with the effective boolean so reports never hide it.
    """

    method: str = methods.DEFAULT_METHOD
    backend: str = "x86"
    act_observer: str = "histogram"
    weight_observer: str = "per-channel"
    qscheme: str = "symmetric"
    reduce_range: bool | None = None
    calib_images: int = 64
    calib_batch_size: int = 16
    keep_fp32: tuple[str, ...] = field(default_factory=tuple)
    fuse: bool = True
    equalize: bool = False
    bias_correction: bool = False
    qat_epochs: int = 3
    qat_lr: float = 1e-4
    qat_freeze_observers_epoch: int = 2
    qat_freeze_bn_epoch: int = 1

    def __post_init__(self) -> None:
        for name, spec in FIELDS.items():
            checked = spec.constraint.check(spec.label, getattr(self, name))
            object.__setattr__(self, name, checked)
        self.method_spec.check(self)
        check_combination(self)

    @property
    def method_spec(self) -> methods.Method:
        """The registry entry of this recipe's method."""
        return methods.METHODS[self.method]

    @property
    def effective_reduce_range(self) -> bool:
        if self.reduce_range is not None:
            return self.reduce_range
        return self.backend in REDUCE_RANGE_BY_DEFAULT

    @property
    def calibration_images(self) -> int:
        """Images this recipe calibrates (or fine-tunes) on; 0 for methods that do neither."""
        spec = self.method_spec
        return self.calib_images if spec.calibrates or spec.trains else 0

    def resolved(self) -> QuantRecipe:
        """The same recipe with ``reduce_range`` made explicit."""
        return dataclasses.replace(self, reduce_range=self.effective_reduce_range)

    def with_changes(self, **changes: object) -> QuantRecipe:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["keep_fp32"] = list(self.keep_fp32)
        d["reduce_range"] = self.effective_reduce_range
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> QuantRecipe:
        if not isinstance(d, Mapping):
            raise InputError(f"recipe: expected a mapping of fields, got {type(d).__name__}")
        unknown = sorted(set(d) - set(FIELDS))
        if unknown:
            raise InputError(f"recipe has unknown fields {unknown}")
        d = dict(d)
        if isinstance(d.get("keep_fp32"), list):
            d["keep_fp32"] = tuple(d["keep_fp32"])
        return cls(**d)

    def describe(self) -> str:
        """One line a person can read: what this recipe does."""
        if not self.method_spec.uses_observers:
            text = f"{self.method} on {self.backend}"
            if self.method_spec.weight_settings:
                text += f", {self.weight_observer} {self.qscheme} weights"
        else:
            rr = "7-bit" if self.effective_reduce_range else "8-bit"
            text = (
                f"{self.method} on {self.backend}, {self.act_observer} activations ({rr}), "
                f"{self.weight_observer} {self.qscheme} weights"
            )
        if self.keep_fp32:
            text += f", FP32 kept: {', '.join(self.keep_fp32)}"
        if not self.fuse:
            text += ", unfused"
        if self.equalize:
            text += ", CLE"
        if self.bias_correction:
            text += ", bias-corrected"
        return text


def check_combination(recipe: QuantRecipe) -> None:
    """Rules that involve the backend rather than one method (called by Method.check)."""
    if (
        recipe.backend in SYMMETRIC_WEIGHTS_ONLY
        and recipe.qscheme == "affine"
        and recipe.method_spec.uses_observers
    ):
        raise UnsupportedCombination(
            f"backend {recipe.backend} only supports symmetric weights (zero point 0); "
            "use --qscheme symmetric or another backend"
        )
