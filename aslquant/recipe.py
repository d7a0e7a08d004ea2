"""QuantRecipe: one frozen value that names a whole quantization choice.

A recipe is validated when it is made (scikit-learn style: say what was given and what is
allowed), prints its configuration, and round-trips through a plain dict for report.json.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from aslquant.errors import InputError, UnsupportedCombination
from aslquant.model import LAYER_NAMES

METHODS: dict[str, str] = {
    "static": "Eager post-training static: fuse conv+ReLU, calibrate observers, convert to INT8.",
    "dynamic": "Dynamic: INT8 weights for the Linear layers, activations quantized on the fly.",
    "fx": "FX graph mode post-training static: the same math, found by tracing the model.",
    "qat": "Quantization-aware training: fine-tune with fake quantization, then convert.",
    "fp16": "Half-precision weights (FP16): half the size, float math, nearly no accuracy change.",
    "pt2e": "PT2 export (torchao): export the graph, X86InductorQuantizer, torch.compile.",
}

BACKENDS: dict[str, str] = {
    "x86": "Intel/AMD servers and laptops: picks fbgemm or onednn kernels per op (default).",
    "fbgemm": "The older x86 server backend; 7-bit activations by default to avoid overflow.",
    "qnnpack": "ARM phones (Android/iOS): ARM-optimised kernels, slow when emulated on x86.",
    "onednn": "Intel oneDNN kernels; fast on CPUs with VNNI/AMX int8 instructions.",
}

ACT_OBSERVERS: dict[str, str] = {
    "minmax": "Range = smallest and largest activation seen; one outlier widens every step.",
    "moving-average": "Min/max averaged over calibration batches; less swayed by one batch.",
    "histogram": "Builds a histogram and picks the range that minimises quantization error.",
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


def _check_choice(what: str, value: str, allowed: dict[str, str] | tuple[str, ...]) -> None:
    if value not in allowed:
        raise InputError(f"{what} {value!r} is not one of {', '.join(allowed)}")


@dataclass(frozen=True)
class QuantRecipe:
    """Everything that decides how a model is quantized (not what it is measured on).

    ``reduce_range=None`` means the backend's default: 7-bit activations on x86/fbgemm, 8-bit
    elsewhere. ``resolved()`` replaces it with the effective boolean so reports never hide it.
    """

    method: str = "static"
    backend: str = "x86"
    act_observer: str = "histogram"
    weight_observer: str = "per-channel"
    qscheme: str = "symmetric"
    reduce_range: bool | None = None
    calib_images: int = 64
    calib_batch_size: int = 16
    keep_fp32: tuple[str, ...] = field(default_factory=tuple)
    fuse: bool = True
    qat_epochs: int = 3
    qat_lr: float = 1e-4
    qat_freeze_observers_epoch: int = 2
    qat_freeze_bn_epoch: int = 1

    def __post_init__(self) -> None:
        _check_choice("method", self.method, METHODS)
        _check_choice("backend", self.backend, BACKENDS)
        _check_choice("activation observer", self.act_observer, ACT_OBSERVERS)
        _check_choice("weight observer", self.weight_observer, WEIGHT_OBSERVERS)
        _check_choice("qscheme", self.qscheme, QSCHEMES)
        if self.calib_images < 1 and self.method in ("static", "fx", "qat", "pt2e"):
            raise InputError(
                f"calibration images must be at least 1 for {self.method}, got {self.calib_images}"
            )
        if self.calib_batch_size < 1:
            raise InputError(
                f"calibration batch size must be at least 1, got {self.calib_batch_size}"
            )
        keep = tuple(self.keep_fp32)
        for name in keep:
            if name not in LAYER_NAMES:
                raise InputError(f"keep_fp32 layer {name!r} is not one of {', '.join(LAYER_NAMES)}")
        # Canonical order so two recipes naming the same layers are equal and hash the same.
        object.__setattr__(self, "keep_fp32", tuple(n for n in LAYER_NAMES if n in keep))
        if self.qat_epochs < 1:
            raise InputError(f"QAT epochs must be at least 1, got {self.qat_epochs}")
        if self.method == "pt2e" and self.backend != "x86":
            raise UnsupportedCombination(
                f"method pt2e uses torchao's X86InductorQuantizer, which targets the x86 backend only; "
                f"got backend {self.backend}"
            )
        if self.method == "pt2e" and self.keep_fp32:
            raise UnsupportedCombination(
                "method pt2e does not support keep_fp32 layers in this tool"
            )
        if self.method in ("dynamic", "fp16") and self.keep_fp32:
            bad = [n for n in self.keep_fp32 if n.startswith("conv")]
            if bad and self.method == "dynamic":
                raise UnsupportedCombination(
                    f"method dynamic only quantizes fc1 and fc2; {', '.join(bad)} are float already"
                )

    @property
    def effective_reduce_range(self) -> bool:
        if self.reduce_range is not None:
            return self.reduce_range
        return self.backend in REDUCE_RANGE_BY_DEFAULT

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
    def from_dict(cls, d: dict) -> QuantRecipe:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"recipe has unknown fields {unknown}")
        d = dict(d)
        if "keep_fp32" in d:
            d["keep_fp32"] = tuple(d["keep_fp32"])
        return cls(**d)

    def describe(self) -> str:
        """One line a person can read: what this recipe does."""
        if self.method in ("dynamic", "fp16"):
            text = f"{self.method} on {self.backend}"
        else:
            rr = "7-bit" if self.effective_reduce_range else "8-bit"
            text = (
                f"{self.method} on {self.backend}, {self.act_observer} activations ({rr}), "
                f"{self.weight_observer} {self.qscheme} weights"
            )
        if self.keep_fp32:
            text += f", FP32 kept: {', '.join(self.keep_fp32)}"
        return text

    def cli_args(self) -> list[str]:
        """The `python -m aslquant report` flags that reproduce this recipe."""
        args = [
            "--method", self.method,
            "--backend", self.backend,
            "--act-observer", self.act_observer,
            "--weight-observer", self.weight_observer,
            "--qscheme", self.qscheme,
            "--reduce-range", "on" if self.effective_reduce_range else "off",
            "--calib-images", str(self.calib_images),
        ]  # fmt: skip
        if self.keep_fp32:
            args += ["--keep-fp32", *self.keep_fp32]
        if self.method == "qat":
            args += ["--qat-epochs", str(self.qat_epochs)]
        return args
