"""Recipe in, quantized model out: ``quantize(model, recipe, calibration)``.

One verb covers every method torch offers for this network: eager static, dynamic, FX graph
mode, QAT, FP16 weight storage and PT2 export (torchao). The float model is never modified.
Combinations torch cannot run raise ``UnsupportedCombination`` with a message naming them.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.ao.quantization as tq
import torch.nn.functional as F
from torch import nn

from aslquant.engine_lock import engine_session
from aslquant.errors import UnsupportedCombination
from aslquant.model import FUSE_GROUPS, LAYER_NAMES, CustomCNN
from aslquant.recipe import QuantRecipe

#: progress(stage, fraction done) — pages turn it into st.progress, the CLI into a bar.
Progress = Callable[[str, float], None]

#: A labelled batch for QAT: (images, class indices).
TrainBatch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class QuantizedModel:
    """A quantized model plus what is needed to run it correctly.

    Run ``module`` inside ``engine_session(backend)``: packed INT8 weights belong to the
    engine they were prepared for.
    """

    module: nn.Module
    recipe: QuantRecipe
    backend: str | None
    notes: list[str] = field(default_factory=list)
    qat_history: list[dict] = field(default_factory=list)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with engine_session(self.backend), torch.inference_mode():
            return self.module(x)


class FloatIsland(nn.Module):
    """Runs one layer in float between quantized neighbours (mixed precision in eager mode)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.dequant = tq.DeQuantStub()
        self.inner = inner
        self.quant = tq.QuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant(self.inner(self.dequant(x)))


class Fp16Weight(nn.Module):
    """A conv or linear layer whose weights are stored in FP16 and computed in FP32.

    This is what TFLite's float16 post-training quantization does: half the bytes on disk,
    float math at run time (CPUs here have no fast FP16 convolution; ``model.half()`` ran
    about 20x slower than FP32 when measured on this machine).
    """

    def __init__(self, layer: nn.Conv2d | nn.Linear) -> None:
        super().__init__()
        self.register_buffer("weight", layer.weight.detach().half())
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().half())
        self.conv = isinstance(layer, nn.Conv2d)
        if self.conv:
            self.stride, self.padding = layer.stride, layer.padding
            self.dilation, self.groups = layer.dilation, layer.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float()
        b = None if self.bias is None else self.bias.float()
        if self.conv:
            return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)
        return F.linear(x, w, b)


class QuantizedMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d(2, 2)`` with a fast path for quantized tensors of few channels.

    PyTorch's quantized NHWC max-pool kernel vectorises 32 channels at a time and does any
    remainder one value at a time: on conv1's 16-channel 220x220 output it took ~0.75 ms of
    a ~2 ms INT8 forward pass at batch 1 (torch.profiler, x86 and onednn engines). A 2x2
    max of a per-tensor quantized tensor is the 2x2 max of its integer codes (same scale
    and zero point), so here it is two element-wise ``torch.maximum`` over strided uint8
    views of the NHWC storage, written straight into the quantized output: ~0.07 ms.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._fast_path_applies(x):
            return super().forward(x)
        x = x.contiguous(memory_format=torch.channels_last)
        n, c, h, w = x.shape
        h2, w2 = h // 2, w // 2  # floor mode, as MaxPool2d(2, 2)
        out = torch._empty_affine_quantized(
            (n, c, h2, w2),
            scale=x.q_scale(),
            zero_point=x.q_zero_point(),
            dtype=x.dtype,
            memory_format=torch.channels_last,
        )
        codes = _nhwc_codes(x)
        rows = torch.maximum(codes[:, 0 : 2 * h2 : 2], codes[:, 1 : 2 * h2 : 2])
        torch.maximum(rows[:, :, 0 : 2 * w2 : 2], rows[:, :, 1 : 2 * w2 : 2], out=_nhwc_codes(out))
        return out

    def _fast_path_applies(self, x: torch.Tensor) -> bool:
        return (
            x.is_quantized
            and x.dim() == 4
            and x.shape[1] % 32 != 0
            and min(x.shape[2], x.shape[3]) >= 2  # smaller: let torch raise its own error
            and x.dtype in (torch.quint8, torch.qint8)
            and x.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric)
            and self.kernel_size in (2, (2, 2))
            and self.stride in (2, (2, 2))
            and self.padding in (0, (0, 0))
            and self.dilation in (1, (1, 1))
            and not self.ceil_mode
        )


def _nhwc_codes(q: torch.Tensor) -> torch.Tensor:
    """The integer codes of a channels-last quantized tensor as an (N, H, W, C) view, no copy."""
    n, c, h, w = q.shape
    codes = torch.empty(0, dtype=torch.uint8 if q.dtype == torch.quint8 else torch.int8)
    return codes.set_(
        q.untyped_storage(), q.storage_offset(), (n, h, w, c), (h * w * c, w * c, c, 1)
    )


def use_fast_pooling(module: nn.Module, fast: bool = True) -> nn.Module:
    """Swap the 2x2 max-pools of ``module`` (in place) for QuantizedMaxPool2d, or back.

    Exported files get the stock ``nn.MaxPool2d`` back (``fast=False``, on a copy): the fast
    path is an in-process kernel choice, while a TorchScript file should run anywhere.
    """
    wanted, unwanted = (
        (QuantizedMaxPool2d, nn.MaxPool2d) if fast else (nn.MaxPool2d, QuantizedMaxPool2d)
    )
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is unwanted:
                setattr(
                    parent,
                    name,
                    wanted(
                        child.kernel_size,
                        child.stride,
                        child.padding,
                        child.dilation,
                        ceil_mode=child.ceil_mode,
                    ),
                )
    return module


def portable_copy(module: nn.Module) -> nn.Module:
    """A deep copy with only stock modules, for TorchScript files and their sizes."""
    return use_fast_pooling(copy.deepcopy(module), fast=False)


# --- qconfigs -------------------------------------------------------------------------------

_ACT_OBSERVERS = {
    "minmax": tq.MinMaxObserver,
    "moving-average": tq.MovingAverageMinMaxObserver,
    "histogram": tq.HistogramObserver,
}


def _weight_observer(recipe: QuantRecipe, fake_quant: bool = False):
    per_channel = recipe.weight_observer == "per-channel"
    symmetric = recipe.qscheme == "symmetric"
    if per_channel:
        qscheme = torch.per_channel_symmetric if symmetric else torch.per_channel_affine
        observer = tq.PerChannelMinMaxObserver
        extra = {"ch_axis": 0}
    else:
        qscheme = torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine
        observer = tq.MinMaxObserver
        extra = {}
    if fake_quant:
        obs = (
            tq.MovingAveragePerChannelMinMaxObserver
            if per_channel
            else tq.MovingAverageMinMaxObserver
        )
        return tq.FakeQuantize.with_args(
            observer=obs, quant_min=-128, quant_max=127, dtype=torch.qint8, qscheme=qscheme, **extra
        )
    return observer.with_args(dtype=torch.qint8, qscheme=qscheme, **extra)


def _activation_observer(recipe: QuantRecipe, fake_quant: bool = False):
    # Activations stay affine whatever the weight qscheme: after ReLU they are all >= 0, and a
    # symmetric quint8 range would spend half its levels on negatives that never occur.
    reduce = recipe.effective_reduce_range
    if fake_quant:
        return tq.FakeQuantize.with_args(
            observer=tq.MovingAverageMinMaxObserver,
            quant_min=0,
            quant_max=127 if reduce else 255,
            dtype=torch.quint8,
            qscheme=torch.per_tensor_affine,
            reduce_range=False,
        )
    return _ACT_OBSERVERS[recipe.act_observer].with_args(
        dtype=torch.quint8, qscheme=torch.per_tensor_affine, reduce_range=reduce
    )


def make_qconfig(recipe: QuantRecipe, fake_quant: bool = False) -> tq.QConfig:
    """The torch QConfig a recipe stands for."""
    return tq.QConfig(
        activation=_activation_observer(recipe, fake_quant),
        weight=_weight_observer(recipe, fake_quant),
    )


def _check_backend_supports(recipe: QuantRecipe) -> None:
    if (
        recipe.backend == "onednn"
        and recipe.qscheme == "affine"
        and recipe.method in ("static", "fx", "qat")
    ):
        raise UnsupportedCombination(
            "backend onednn only supports symmetric weights (zero point 0); "
            "use --qscheme symmetric or another backend"
        )
    if recipe.backend not in torch.backends.quantized.supported_engines:
        raise UnsupportedCombination(
            f"backend {recipe.backend} is not available in this torch build "
            f"(available: {', '.join(torch.backends.quantized.supported_engines)})"
        )


# --- calibration ----------------------------------------------------------------------------


def _calibrate(
    model: nn.Module, batches: Sequence[torch.Tensor], progress: Progress | None
) -> None:
    total = max(1, len(batches))
    with torch.inference_mode():
        for i, x in enumerate(batches):
            model(x)
            if progress:
                progress("calibrating", (i + 1) / total)


def _split(x: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    return list(torch.split(x, batch_size)) if len(x) else []


# --- methods --------------------------------------------------------------------------------


def _eager_prepare(model: CustomCNN, recipe: QuantRecipe, qat: bool) -> nn.Module:
    work = copy.deepcopy(model)
    work.train(qat)
    if recipe.fuse:
        fuse = tq.fuse_modules_qat if qat else tq.fuse_modules
        work = fuse(work, FUSE_GROUPS)
    work.qconfig = make_qconfig(recipe, fake_quant=qat)
    for name in recipe.keep_fp32:
        island = FloatIsland(getattr(work, name))
        island.inner.qconfig = None
        setattr(work, name, island)
    if qat:
        return tq.prepare_qat(work, inplace=False)
    return tq.prepare(work, inplace=False)


def _static(model, recipe, calib, progress) -> nn.Module:
    prepared = _eager_prepare(model, recipe, qat=False)
    _calibrate(prepared, calib, progress)
    return tq.convert(prepared.eval(), inplace=False)


def _dynamic(model, recipe) -> nn.Module:
    if recipe.weight_observer == "per-channel":
        qconfig = tq.per_channel_dynamic_qconfig
    else:
        qconfig = tq.default_dynamic_qconfig
    spec = {name: qconfig for name in ("fc1", "fc2") if name not in recipe.keep_fp32}
    return tq.quantize_dynamic(copy.deepcopy(model), spec, dtype=torch.qint8, inplace=False)


def _fp16(model, recipe) -> nn.Module:
    work = copy.deepcopy(model)
    for name in LAYER_NAMES:
        if name not in recipe.keep_fp32:
            setattr(work, name, Fp16Weight(getattr(work, name)))
    return work.eval()


def _float_stubs(model: CustomCNN) -> CustomCNN:
    """A copy whose quant/dequant stubs are identities: FX and export find the boundaries."""
    work = copy.deepcopy(model).eval()
    work.quant = nn.Identity()
    work.dequant = nn.Identity()
    return work


def _backend_config(backend: str):
    from torch.ao.quantization import backend_config as bc

    return {
        "x86": bc.get_native_backend_config,
        "fbgemm": bc.get_fbgemm_backend_config,
        "qnnpack": bc.get_qnnpack_backend_config,
        "onednn": bc.get_onednn_backend_config,
    }[backend]()


def _fx(model, recipe, calib, progress, input_size) -> nn.Module:
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    mapping = tq.QConfigMapping().set_global(make_qconfig(recipe))
    for name in recipe.keep_fp32:
        mapping = mapping.set_module_name(name, None)
    example = (torch.zeros(1, 3, input_size, input_size),)
    bconf = _backend_config(recipe.backend)
    prepared = prepare_fx(_float_stubs(model), mapping, example, backend_config=bconf)
    _calibrate(prepared, calib, progress)
    return convert_fx(prepared, backend_config=bconf)


def _pt2e(model, recipe, calib, progress, input_size) -> nn.Module:
    if (
        recipe.act_observer != "histogram"
        or recipe.weight_observer != "per-channel"
        or (recipe.qscheme != "symmetric")
    ):
        raise UnsupportedCombination(
            "method pt2e uses X86InductorQuantizer's own observers (histogram activations, "
            "per-channel symmetric weights); choose --act-observer histogram "
            "--weight-observer per-channel --qscheme symmetric"
        )
    # torchao logs missing CUDA kernels at import; they are irrelevant on this CPU-only tool.
    logging.getLogger("torchao").setLevel(logging.ERROR)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    quantizer = xiq.X86InductorQuantizer().set_global(
        xiq.get_default_x86_inductor_quantization_config(reduce_range=recipe.effective_reduce_range)
    )
    # Batch 2 in the example: torch.export specialises a size-1 dimension to a constant.
    example = (torch.zeros(2, 3, input_size, input_size),)
    dynamic = {"x": {0: torch.export.Dim("batch", min=1, max=1024)}}
    exported = torch.export.export(_float_stubs(model), example, dynamic_shapes=dynamic).module()
    prepared = prepare_pt2e(exported, quantizer)
    _calibrate(prepared, calib, progress)
    converted = convert_pt2e(prepared)
    _drop_unused_tensors(converted)
    # Freezing lets Inductor fold the INT8 weights into prepacked oneDNN convolutions;
    # without it the graph dequantizes every weight on every call (measured: 6.4 ms vs 2.8 ms
    # at batch 1). It must be the global setting: passed as torch.compile(options=...) the
    # prepack op is left in the graph and lowering fails (onednn.qconv_prepack unsupported).
    # Only this module compiles with Inductor in aslquant.
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    # dynamic=True: one compiled kernel set serves batch 1, 32 and the evaluation batches
    # instead of a recompile (seconds each) for every new batch size.
    return torch.compile(converted, dynamic=True)


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


def _qat(
    model, recipe, calib, train: Iterable[TrainBatch] | None, progress, on_epoch
) -> tuple[nn.Module, list[dict]]:
    if train is None:
        raise UnsupportedCombination("method qat needs labelled training images (--train-data)")
    train = list(train)
    if not train:
        raise UnsupportedCombination("method qat needs at least one training image")
    torch.manual_seed(0)
    prepared = _eager_prepare(model, recipe, qat=True)
    optimizer = torch.optim.SGD(prepared.parameters(), lr=recipe.qat_lr, momentum=0.9)
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
            total_loss += float(loss) * len(y)
            done += 1
            if progress:
                progress("fine-tuning (QAT)", done / steps)
        converted = use_fast_pooling(tq.convert(copy.deepcopy(prepared).eval(), inplace=False))
        record = {"epoch": epoch + 1, "train_loss": total_loss / sum(len(y) for _, y in train)}
        if on_epoch is not None:
            record.update(on_epoch(converted))
        history.append(record)
    return tq.convert(prepared.eval(), inplace=False), history


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
    notes: list[str] = []
    history: list[dict] = []
    model = model.eval()
    if recipe.method == "fp16":
        return QuantizedModel(_fp16(model, recipe), recipe, None, ["FP16 weights, FP32 compute"])
    _check_backend_supports(recipe)
    needs_calib = recipe.method in ("static", "fx", "pt2e")
    calib: list[torch.Tensor] = []
    if needs_calib:
        if calibration is None or len(calibration) == 0:
            raise UnsupportedCombination(
                f"method {recipe.method} needs calibration images; got none"
            )
        calib = _split(calibration[: recipe.calib_images], recipe.calib_batch_size)
    try:
        with engine_session(recipe.backend):
            if recipe.method == "static":
                module = _static(model, recipe, calib, progress)
            elif recipe.method == "dynamic":
                module = _dynamic(model, recipe)
                notes.append("only fc1 and fc2 are quantized; convolutions stay FP32")
            elif recipe.method == "fx":
                module = _fx(model, recipe, calib, progress, input_size)
            elif recipe.method == "qat":
                module, history = _qat(model, recipe, calib, train_batches, progress, on_qat_epoch)
            else:
                module = _pt2e(model, recipe, calib, progress, input_size)
            if recipe.method != "pt2e":  # exported graphs refuse .eval(); they are eval already
                # Every eager/FX model gets the fast max-pool (it falls back on float input).
                use_fast_pooling(module).eval()
            # Run once under the lock: packs weights (and compiles pt2e) before anyone times it.
            with torch.inference_mode():
                module(torch.zeros(1, 3, input_size, input_size))
    except UnsupportedCombination:
        raise
    except (RuntimeError, AssertionError, NotImplementedError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UnsupportedCombination(
            f"torch cannot run {recipe.describe()}: {first[:200]}"
        ) from None
    return QuantizedModel(module, recipe, recipe.backend, notes, history)
