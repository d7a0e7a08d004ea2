"""The method registry: what each quantization method needs, supports and how it is built.

``METHODS`` is the one place method names are written down. Everything else asks a ``Method``:
whether it calibrates, whether its observers can be chosen, which backends and FP32 layers it
supports, whether its result has per-layer modules, whether it exports to TorchScript. The
recipe validates combinations with ``Method.check`` (so the dashboard form refuses a bad
combination while it is edited), and ``aslquant.quantize.quantize`` dispatches to ``build``.

Calibrating methods are built in three public steps, as in torch.ao: ``prepare`` (observers
inserted), ``calibrate`` (the observers see images), ``convert`` (INT8 model). Tests and the
doctor use the steps on their own (e.g. to plant an observer that never saw data).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.ao.quantization as tq
import torch.nn.functional as F
from torch import nn

from aslquant.errors import UnsupportedCombination
from aslquant.model import LAYER_NAMES, CustomCNN
from aslquant.qconfig import TORCH_ACT_OBSERVERS, backend_config, make_qconfig
from aslquant.qmodules import Fp16Weight, MixedPrecisionCNN, use_fast_pooling

if TYPE_CHECKING:
    from aslquant.recipe import QuantRecipe

#: progress(stage, fraction done): pages turn it into a progress bar, the CLI into a bar.
Progress = Callable[[str, float], None]
#: A labelled batch for QAT: (images, class indices).
TrainBatch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class BuildContext:
    """What a method's builder gets: the float model, the recipe and the data it may use."""

    model: CustomCNN
    recipe: QuantRecipe
    calibration: list[torch.Tensor]  # batches, already cut to the recipe's size
    input_size: int
    train_batches: list[TrainBatch] | None = None
    progress: Progress | None = None
    on_epoch: Callable[[nn.Module], dict] | None = None


@dataclass
class Built:
    """A builder's output: the module to run, and what the run should tell the user."""

    module: nn.Module
    notes: list[str] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    #: The uncompiled graph of a compiled model (pt2e): per-layer analysis runs on it.
    reference: nn.Module | None = None


@dataclass(frozen=True)
class Method:
    """One quantization method and everything the rest of aslquant needs to know about it."""

    name: str
    help: str
    build: Callable[[BuildContext], Built]
    #: Needs calibration images run through observers.
    calibrates: bool = False
    #: Fine-tunes on labelled images (QAT).
    trains: bool = False
    #: The activation observer, reduce_range and calibration settings of the recipe are used.
    uses_observers: bool = False
    #: The weight observer and qscheme of the recipe are used (None: same as uses_observers).
    uses_weight_observer: bool | None = None
    #: Runs on a torch quantized engine (so the backend matters); None for float-only methods.
    quantized_engine: bool = True
    #: Backends it runs on (None: every quantized engine).
    backends: frozenset[str] | None = None
    #: Observer fields it fixes itself, {field: required value} (pt2e's quantizer).
    fixed: dict[str, str] = field(default_factory=dict)
    #: Layers that may be kept in FP32.
    keep_fp32_layers: tuple[str, ...] = LAYER_NAMES
    #: The quantized model exposes conv1..fc2 as modules (hooks work on them).
    has_layer_modules: bool = True
    #: Layers it quantizes at all (dynamic leaves the convolutions float).
    quantized_layers: tuple[str, ...] = LAYER_NAMES
    #: Can be scripted/traced to TorchScript and the lite interpreter.
    scriptable: bool = True
    #: Cheap to re-quantize with other settings (sensitivity, doctor): no fine-tuning.
    requantizable: bool = True
    #: Calibrates with the recipe's activation observer (any of qconfig.ACT_OBSERVERS).
    chooses_act_observer: bool = False
    #: Cross-layer equalization applies (the method quantizes weights to INT8).
    supports_equalize: bool = False
    #: Bias correction applies (INT8 weights and calibration images to measure the shift).
    supports_bias_correction: bool = False
    prepare: Callable[[CustomCNN, QuantRecipe, int], nn.Module] | None = None
    convert: Callable[[nn.Module, QuantRecipe], nn.Module] | None = None

    @property
    def weight_settings(self) -> bool:
        """Whether the recipe's weight observer and qscheme matter for this method."""
        return self.uses_observers if self.uses_weight_observer is None else self.uses_weight_observer

    def check(self, recipe: QuantRecipe) -> None:
        """Refuse a recipe this method cannot run, saying why (one line)."""
        if self.backends is not None and recipe.backend not in self.backends:
            raise UnsupportedCombination(
                f"method {self.name} runs on backend {', '.join(sorted(self.backends))} only; "
                f"got backend {recipe.backend}"
            )
        wrong = {k: v for k, v in self.fixed.items() if getattr(recipe, k) != v}
        if wrong:
            need = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in self.fixed.items())
            raise UnsupportedCombination(
                f"method {self.name} chooses its own observers ({need}); got "
                + ", ".join(f"{k} {getattr(recipe, k)}" for k in wrong)
            )
        if not self.chooses_act_observer and recipe.act_observer not in TORCH_ACT_OBSERVERS:
            raise UnsupportedCombination(
                f"method {self.name} cannot calibrate with the {recipe.act_observer} observer "
                f"(only {', '.join(names(lambda m: m.chooses_act_observer))} can)"
            )
        for flag, supported in (
            ("equalize", self.supports_equalize),
            ("bias_correction", self.supports_bias_correction),
        ):
            if getattr(recipe, flag) and not supported:
                raise UnsupportedCombination(
                    f"method {self.name} does not support --{flag.replace('_', '-')} on"
                )
        bad = [n for n in recipe.keep_fp32 if n not in self.keep_fp32_layers]
        if bad:
            raise UnsupportedCombination(
                f"method {self.name} cannot keep {', '.join(bad)} in FP32 "
                f"(it only quantizes {', '.join(self.quantized_layers) or 'nothing'})"
            )


# --- shared steps ------------------------------------------------------------------------------


def calibrate(
    prepared: nn.Module, batches: Sequence[torch.Tensor], progress: Progress | None = None
) -> None:
    """Run calibration batches through a prepared model so its observers see real ranges."""
    total = max(1, len(batches))
    with torch.inference_mode():
        for i, x in enumerate(batches):
            prepared(x)
            if progress:
                progress("calibrating", (i + 1) / total)


def _float_stubs(model: CustomCNN) -> CustomCNN:
    """A copy whose quant/dequant stubs are identities: FX and export find the boundaries."""
    work = copy.deepcopy(model).eval()
    work.quant = nn.Identity()
    work.dequant = nn.Identity()
    return work


# --- eager (static, QAT) ----------------------------------------------------------------------


def _eager_prepare(model: CustomCNN, recipe: QuantRecipe, qat: bool) -> nn.Module:
    work = MixedPrecisionCNN(model, recipe.keep_fp32)
    work.train(qat)
    if recipe.fuse:
        fuse = tq.fuse_modules_qat if qat else tq.fuse_modules
        work = fuse(work, work.fuse_groups())
    work.set_qconfig(make_qconfig(recipe, fake_quant=qat))
    if qat:
        return tq.prepare_qat(work, inplace=False)
    return tq.prepare(work, inplace=False)


def prepare_static(model: CustomCNN, recipe: QuantRecipe, input_size: int) -> nn.Module:
    return _eager_prepare(model, recipe, qat=False)


def convert_eager(prepared: nn.Module, recipe: QuantRecipe) -> nn.Module:
    return tq.convert(prepared.eval(), inplace=False)


def _build_static(ctx: BuildContext) -> Built:
    prepared = prepare_static(ctx.model, ctx.recipe, ctx.input_size)
    calibrate(prepared, ctx.calibration, ctx.progress)
    return Built(convert_eager(prepared, ctx.recipe))


def prepare_qat(model: CustomCNN, recipe: QuantRecipe, input_size: int) -> nn.Module:
    return _eager_prepare(model, recipe, qat=True)


def _build_qat(ctx: BuildContext) -> Built:
    recipe = ctx.recipe
    train: Iterable[TrainBatch] | None = ctx.train_batches
    if train is None:
        raise UnsupportedCombination("method qat needs labelled training images (--train-data)")
    train = list(train)
    if not train:
        raise UnsupportedCombination("method qat needs at least one training image")
    torch.manual_seed(0)
    prepared = prepare_qat(ctx.model, recipe, ctx.input_size)
    # QAT fine-tunes only the layers it quantizes: a layer kept in FP32 stays the FP32 model's
    # layer, so keeping every layer in FP32 still reproduces the FP32 model.
    for name in recipe.keep_fp32:
        getattr(prepared, name).requires_grad_(False)
    trainable = [p for p in prepared.parameters() if p.requires_grad]
    if not trainable:
        note = "QAT: every layer is kept in FP32, so there was nothing to fine-tune"
        return Built(convert_eager(prepared, recipe), notes=[note])
    optimizer = torch.optim.SGD(trainable, lr=recipe.qat_lr, momentum=0.9)
    history: list[dict] = []
    steps = recipe.qat_epochs * len(train)
    done = 0
    for epoch in range(recipe.qat_epochs):
        # The schedule of PyTorch's QAT tutorial: after some epochs stop updating the
        # observers' ranges, and freeze batch-norm statistics (no BN in CustomCNN: a no-op).
        if epoch >= recipe.qat_freeze_observers_epoch:
            prepared.apply(tq.disable_observer)
        if epoch >= recipe.qat_freeze_bn_epoch:
            prepared.apply(torch.ao.nn.intrinsic.qat.freeze_bn_stats)
        prepared.train()
        total_loss = 0.0
        for x, y in train:
            optimizer.zero_grad()
            loss = F.cross_entropy(prepared(x), y)
            loss.backward()
            optimizer.step()
            total_loss += float(loss.detach()) * len(y)
            done += 1
            if ctx.progress:
                ctx.progress("fine-tuning (QAT)", done / steps)
        record = {"epoch": epoch + 1, "train_loss": total_loss / sum(len(y) for _, y in train)}
        if ctx.on_epoch is not None:
            converted = use_fast_pooling(convert_eager(copy.deepcopy(prepared), recipe))
            record.update(ctx.on_epoch(converted))
        history.append(record)
    return Built(convert_eager(prepared, recipe), history=history)


# --- FX graph mode ----------------------------------------------------------------------------


def _fx_mapping(recipe: QuantRecipe) -> tq.QConfigMapping:
    """Quantize the layers not kept in FP32, and the pools/flatten only between quantized ones.

    With a global qconfig FX would quantize the model input and every pool even when the layers
    around them are float; so the global qconfig is None and each quantized layer is named.
    """
    qconfig = make_qconfig(recipe)
    quantized = [n for n in LAYER_NAMES if n not in recipe.keep_fp32]
    mapping = tq.QConfigMapping().set_global(None)
    for name in quantized:
        mapping = mapping.set_module_name(name, qconfig)
    # The one nn.MaxPool2d module is called once after each conv: its i-th call runs quantized
    # when the conv before it is quantized (max of INT8 codes keeps their scale).
    for index, conv in enumerate(("conv1", "conv2", "conv3", "conv4")):
        pool_qconfig = qconfig if conv in quantized else None
        mapping = mapping.set_module_name_object_type_order("", nn.MaxPool2d, index, pool_qconfig)
    if "conv4" in quantized:
        mapping = mapping.set_module_name("avgpool", qconfig).set_object_type(torch.flatten, qconfig)
    return mapping


def prepare_fx(model: CustomCNN, recipe: QuantRecipe, input_size: int) -> nn.Module:
    from torch.ao.quantization.quantize_fx import prepare_fx as torch_prepare_fx

    example = (torch.zeros(1, 3, input_size, input_size),)
    return torch_prepare_fx(
        _float_stubs(model),
        _fx_mapping(recipe),
        example,
        backend_config=backend_config(recipe.backend),
    )


def convert_fx(prepared: nn.Module, recipe: QuantRecipe) -> nn.Module:
    from torch.ao.quantization.quantize_fx import convert_fx as torch_convert_fx

    return torch_convert_fx(prepared, backend_config=backend_config(recipe.backend))


def _build_fx(ctx: BuildContext) -> Built:
    prepared = prepare_fx(ctx.model, ctx.recipe, ctx.input_size)
    calibrate(prepared, ctx.calibration, ctx.progress)
    return Built(convert_fx(prepared, ctx.recipe))


# --- PT2 export (torchao) ---------------------------------------------------------------------


def prepare_pt2e(model: CustomCNN, recipe: QuantRecipe, input_size: int) -> nn.Module:
    # torchao logs missing CUDA kernels at import; irrelevant on this CPU-only tool.
    logging.getLogger("torchao").setLevel(logging.ERROR)
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e as torch_prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    quantizer = xiq.X86InductorQuantizer().set_global(
        xiq.get_default_x86_inductor_quantization_config(reduce_range=recipe.effective_reduce_range)
    )
    for name in recipe.keep_fp32:
        quantizer.set_module_name_qconfig(name, None)
    # Batch 2 in the example: torch.export specialises a size-1 dimension to a constant.
    example = (torch.zeros(2, 3, input_size, input_size),)
    dynamic = {"x": {0: torch.export.Dim("batch", min=1, max=1024)}}
    exported = torch.export.export(_float_stubs(model), example, dynamic_shapes=dynamic).module()
    return torch_prepare_pt2e(exported, quantizer)


def convert_pt2e(prepared: nn.Module, recipe: QuantRecipe) -> nn.Module:
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e as torch_convert_pt2e

    converted = torch_convert_pt2e(prepared)
    _drop_unused_tensors(converted)
    return converted


def _drop_unused_tensors(graph_module: torch.fx.GraphModule) -> None:
    """Delete the float weights convert_pt2e leaves behind beside their INT8 copies.

    They are never read by the graph, but would count in the saved size of the model.
    """
    used = {node.target for node in graph_module.graph.nodes if node.op == "get_attr"}
    named = list(graph_module.named_parameters()) + list(graph_module.named_buffers())
    for name, _ in named:
        if name in used:
            continue
        owner_name, _, attr = name.rpartition(".")
        owner = graph_module.get_submodule(owner_name) if owner_name else graph_module
        delattr(owner, attr)


def _build_pt2e(ctx: BuildContext) -> Built:
    prepared = prepare_pt2e(ctx.model, ctx.recipe, ctx.input_size)
    calibrate(prepared, ctx.calibration, ctx.progress)
    converted = convert_pt2e(prepared, ctx.recipe)
    # Inductor freezing (folding INT8 weights into prepacked convolutions) is switched on by
    # aslquant.runtime.configure(); dynamic=True: one compiled kernel set serves batch 1, 32
    # and the evaluation batches instead of a recompile for every new batch size.
    return Built(torch.compile(converted, dynamic=True), reference=converted)


# --- dynamic, FP16 ------------------------------------------------------------------------------


def _build_dynamic(ctx: BuildContext) -> Built:
    recipe = ctx.recipe
    if recipe.weight_observer == "per-channel":
        qconfig = tq.per_channel_dynamic_qconfig
    else:
        qconfig = tq.default_dynamic_qconfig
    layers = METHODS[recipe.method].quantized_layers
    spec = {name: qconfig for name in layers if name not in recipe.keep_fp32}
    module = tq.quantize_dynamic(copy.deepcopy(ctx.model), spec, dtype=torch.qint8, inplace=False)
    return Built(module, notes=["only fc1 and fc2 are quantized; convolutions stay FP32"])


def _build_fp16(ctx: BuildContext) -> Built:
    work = copy.deepcopy(ctx.model)
    for name in LAYER_NAMES:
        if name not in ctx.recipe.keep_fp32:
            setattr(work, name, Fp16Weight(getattr(work, name)))
    return Built(work.eval(), notes=["FP16 weights, FP32 compute"])


# --- the registry -----------------------------------------------------------------------------

_DYNAMIC_LAYERS = ("fc1", "fc2")

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "static",
            "Eager post-training static: fuse conv+ReLU, calibrate observers, convert to INT8.",
            _build_static,
            calibrates=True,
            uses_observers=True,
            chooses_act_observer=True,
            supports_equalize=True,
            supports_bias_correction=True,
            prepare=prepare_static,
            convert=convert_eager,
        ),
        Method(
            "dynamic",
            "Dynamic: INT8 weights for the Linear layers, activations quantized on the fly.",
            _build_dynamic,
            uses_weight_observer=True,
            supports_equalize=True,
            keep_fp32_layers=_DYNAMIC_LAYERS,
            quantized_layers=_DYNAMIC_LAYERS,
        ),
        Method(
            "fx",
            "FX graph mode post-training static: the same math, found by tracing the model.",
            _build_fx,
            calibrates=True,
            uses_observers=True,
            chooses_act_observer=True,
            supports_equalize=True,
            supports_bias_correction=True,
            prepare=prepare_fx,
            convert=convert_fx,
        ),
        Method(
            "qat",
            "Quantization-aware training: fine-tune with fake quantization, then convert.",
            _build_qat,
            trains=True,
            uses_observers=True,
            requantizable=False,
            supports_equalize=True,
            prepare=prepare_qat,
            convert=convert_eager,
        ),
        Method(
            "fp16",
            "Half-precision weights (FP16): half the size, float math, nearly no accuracy change.",
            _build_fp16,
            quantized_engine=False,
        ),
        Method(
            "pt2e",
            "PT2 export (torchao): export the graph, X86InductorQuantizer, torch.compile.",
            _build_pt2e,
            calibrates=True,
            uses_observers=True,
            backends=frozenset({"x86"}),
            supports_equalize=True,
            supports_bias_correction=True,
            fixed={"act_observer": "histogram", "weight_observer": "per-channel",
                   "qscheme": "symmetric"},  # fmt: skip
            has_layer_modules=False,
            scriptable=False,
            prepare=prepare_pt2e,
            convert=convert_pt2e,
        ),
    )
}

#: The method a new recipe uses.
DEFAULT_METHOD = next(iter(METHODS))


def help_texts() -> dict[str, str]:
    """{method name: one-line explanation}, in registry order (for choices and help)."""
    return {name: m.help for name, m in METHODS.items()}


def names(where: Callable[[Method], bool] = lambda m: True) -> list[str]:
    """Method names in registry order, optionally only those ``where`` accepts."""
    return [name for name, m in METHODS.items() if where(m)]
