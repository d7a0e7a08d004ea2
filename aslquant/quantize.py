"""Recipe in, quantized model out: ``quantize(model, recipe, calibration)``.

One verb covers every method in the registry (``aslquant.methods.METHODS``): it checks what the
method needs, cuts the calibration images into batches, builds the model through the method's
``build`` under the recipe's quantized engine, and runs it once so weights are packed (and pt2e
compiled) before anyone times it. The float model is never modified. Combinations torch cannot
run raise ``UnsupportedCombination`` with a message naming them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from aslquant.engine_lock import engine_session
from aslquant.errors import UnsupportedCombination
from aslquant.methods import BuildContext, Progress, TrainBatch
from aslquant.model import CustomCNN
from aslquant.qmodules import use_fast_pooling
from aslquant.recipe import QuantRecipe

__all__ = ["Progress", "QuantizedModel", "TrainBatch", "quantize"]


@dataclass(frozen=True)
class QuantizedModel:
    """A quantized model plus what is needed to run it correctly.

    Run ``module`` inside ``engine_session(backend)``: packed INT8 weights belong to the
    engine they were prepared for. ``reference`` is the uncompiled graph of a compiled (pt2e)
    model, the one per-layer analysis can hook; None otherwise.
    """

    module: nn.Module
    recipe: QuantRecipe
    backend: str | None
    notes: tuple[str, ...] = ()
    qat_history: tuple[dict, ...] = ()
    reference: nn.Module | None = field(default=None, compare=False)
    #: The float model that was quantized: the FP32 model after the recipe's rewrites
    #: (equalization, bias correction), or the FP32 model itself. Per-layer comparisons use it,
    #: since equalization rescales each layer's channels while keeping the logits.
    float_source: nn.Module | None = field(default=None, compare=False)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with engine_session(self.backend), torch.inference_mode():
            return self.module(x)

    @property
    def inspectable(self) -> nn.Module:
        """The module whose submodules are conv1..fc2 (or the pt2e graph before compiling)."""
        return self.reference if self.reference is not None else self.module


def _check_engine(recipe: QuantRecipe) -> None:
    if recipe.backend not in torch.backends.quantized.supported_engines:
        raise UnsupportedCombination(
            f"backend {recipe.backend} is not available in this torch build "
            f"(available: {', '.join(torch.backends.quantized.supported_engines)})"
        )


def quantize(
    model: CustomCNN,
    recipe: QuantRecipe,
    calibration: torch.Tensor | None = None,
    *,
    input_size: int = 224,
    train_batches: Iterable[TrainBatch] | None = None,
    progress: Progress | None = None,
    on_qat_epoch: Callable[[nn.Module], dict] | None = None,
) -> QuantizedModel:
    """Apply ``recipe`` to a copy of ``model``.

    ``calibration`` is a float tensor (N, 3, H, W) already preprocessed; only the first
    ``recipe.calib_images`` are used, in batches of ``recipe.calib_batch_size``.
    """
    recipe = recipe.resolved()
    method = recipe.method_spec
    model = model.eval()
    batches: list[torch.Tensor] = []
    if method.calibrates:
        if calibration is None or len(calibration) == 0:
            raise UnsupportedCombination(f"method {recipe.method} needs calibration images; got none")
        batches = list(torch.split(calibration[: recipe.calib_images], recipe.calib_batch_size))
    source, notes = _techniques(model, recipe, batches)
    backend = recipe.backend if method.quantized_engine else None
    if backend is not None:
        _check_engine(recipe)
    ctx = BuildContext(
        model=model,
        recipe=recipe,
        calibration=batches,
        input_size=input_size,
        train_batches=list(train_batches) if train_batches is not None else None,
        progress=progress,
        on_epoch=on_qat_epoch,
    )
    try:
        with engine_session(backend):
            built = method.build(dataclasses.replace(ctx, model=source))
            if method.has_layer_modules:  # compiled graphs refuse .eval(); they are eval already
                # Every eager/FX model gets the fast max-pool (it falls back on float input).
                use_fast_pooling(built.module).eval()
            # Run once under the lock: packs weights (and compiles pt2e) before anyone times it.
            with torch.inference_mode():
                built.module(torch.zeros(1, 3, input_size, input_size))
    except UnsupportedCombination:
        raise
    except (RuntimeError, AssertionError, NotImplementedError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UnsupportedCombination(f"torch cannot run {recipe.describe()}: {first[:200]}") from None
    return QuantizedModel(
        built.module,
        recipe,
        backend,
        tuple(notes + built.notes),
        tuple(built.history),
        built.reference,
        source,
    )


def _techniques(
    model: CustomCNN, recipe: QuantRecipe, batches: list[torch.Tensor]
) -> tuple[CustomCNN, list[str]]:
    """The float-model rewrites a recipe asks for, before quantizing (each on a copy).

    Cross-layer equalization first, then bias correction (the order of Nagel et al. 2019:
    bias correction measures the weights that will actually be rounded).
    """
    notes: list[str] = []
    if recipe.equalize:
        from aslquant.equalize import equalize

        model, report = equalize(model)
        spread = [
            f"{p.first}->{p.second} {p.first_spread_before:.1f}->{p.first_spread_after:.1f}"
            for p in report.pairs
        ]
        notes.append("cross-layer equalization: channel range spread " + ", ".join(spread))
    if recipe.bias_correction:
        from aslquant.bias_correction import correct_biases
        from aslquant.qconfig import make_qconfig

        layers = [n for n in recipe.method_spec.quantized_layers if n not in recipe.keep_fp32]
        model, report = correct_biases(
            model, batches, make_qconfig(recipe).weight, layers=layers
        )
        notes.append(
            "bias correction: mean |shift| per layer "
            + ", ".join(f"{r.layer} {r.mean_abs_shift:.2g}" for r in report.layers)
        )
    return model, notes
