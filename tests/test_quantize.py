"""Every method on x86 and static on every backend, on the real demo model and images."""

from __future__ import annotations

import pytest
import torch

from aslquant import data
from aslquant.cli.options import config_to_args
from aslquant.errors import InputError, UnsupportedCombination
from aslquant.labels import load_labels
from aslquant.measure import serialized_size
from aslquant.model import load_checkpoint
from aslquant.quantize import QuantizedModel, quantize
from aslquant.recipe import QuantRecipe
from aslquant.run import DEMO_CHECKPOINT, DEMO_DATA, DEMO_LABELS, RunConfig


@pytest.fixture(scope="module")
def demo():
    names = load_labels(DEMO_LABELS)
    model = load_checkpoint(DEMO_CHECKPOINT, num_labels=len(names))
    image_set = data.load_image_set(DEMO_DATA, names)
    # 64 calibration images and 8 per class for evaluation: enough to see 90% agreement.
    calib_items, eval_items = data.stratified_split(image_set.items, 64, 8 * len(names), seed=0)
    pp = data.Preprocess()
    calib = data.load_tensors(calib_items, pp).x
    evaluation = data.load_tensors(eval_items, pp)
    with torch.inference_mode():
        fp32_top1 = model(evaluation.x).argmax(1)
    train = [(b.x, b.y) for b in data.iter_batches(calib_items, pp, batch_size=16)]
    return model, calib, evaluation, fp32_top1, train


def _agreement(q: QuantizedModel, evaluation, fp32_top1) -> float:
    return float((q(evaluation.x).argmax(1) == fp32_top1).float().mean())


METHODS_X86 = [
    "static",
    "dynamic",
    "fx",
    "fp16",
    pytest.param("qat", marks=pytest.mark.slow),
    pytest.param("pt2e", marks=pytest.mark.slow),
]


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS_X86)
def test_every_method_on_x86_agrees_with_fp32(demo, method):
    model, calib, evaluation, fp32_top1, train = demo
    recipe = QuantRecipe(method=method, backend="x86", qat_epochs=1)
    q = quantize(model, recipe, calib, train_batches=train)
    assert _agreement(q, evaluation, fp32_top1) >= 0.90
    assert q.recipe.reduce_range is True  # resolved, never left as "backend default"


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["x86", "fbgemm", "onednn", "qnnpack"])
def test_static_on_every_backend_agrees_with_fp32(demo, backend):
    model, calib, evaluation, fp32_top1, _ = demo
    q = quantize(model, QuantRecipe(backend=backend), calib)
    assert q.backend == backend
    assert _agreement(q, evaluation, fp32_top1) >= 0.90
    # The float model is untouched.
    assert isinstance(model.conv1, torch.nn.Conv2d)


@pytest.mark.slow
def test_engine_is_restored(demo):
    model, calib, *_ = demo
    before = torch.backends.quantized.engine
    quantize(model, QuantRecipe(backend="qnnpack" if before != "qnnpack" else "x86"), calib)
    assert torch.backends.quantized.engine == before


@pytest.mark.slow
def test_static_x86_is_at_least_3_5x_smaller(demo):
    model, calib, *_ = demo
    q = quantize(model, QuantRecipe(), calib)
    assert serialized_size(model) / serialized_size(q.module) >= 3.5


def test_fp16_halves_the_size(demo):
    model, calib, *_ = demo
    q = quantize(model, QuantRecipe(method="fp16"), calib)
    ratio = serialized_size(model) / serialized_size(q.module)
    assert 1.8 < ratio < 2.1


@pytest.mark.parametrize(
    "changes",
    [
        {"act_observer": "minmax"},
        {"act_observer": "moving-average"},
        {"weight_observer": "minmax"},
        {"qscheme": "affine"},
        {"reduce_range": False},
        {"fuse": False},
    ],
    ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()),
)
@pytest.mark.slow
def test_observer_and_scheme_choices_work(demo, changes):
    model, calib, evaluation, fp32_top1, _ = demo
    q = quantize(model, QuantRecipe(**changes), calib)
    assert _agreement(q, evaluation, fp32_top1) >= 0.85


@pytest.mark.slow
def test_reduce_range_changes_the_activation_grid(demo):
    model, calib, *_ = demo
    seven = quantize(model, QuantRecipe(reduce_range=True), calib)
    eight = quantize(model, QuantRecipe(reduce_range=False), calib)
    # 7-bit activations have (about) twice the step size over the same range.
    ratio = float(seven.module.conv2.scale) / float(eight.module.conv2.scale)
    assert 1.6 < ratio < 2.4


@pytest.mark.slow
def test_keep_fp32_leaves_layers_in_float(demo):
    model, calib, evaluation, fp32_top1, _ = demo
    q = quantize(model, QuantRecipe(keep_fp32=("fc2", "conv1")), calib)
    # Kept layers stay float modules (fused with their ReLU), the others are INT8 modules.
    assert "quantized" not in type(q.module.conv1).__module__
    assert "quantized" not in type(q.module.fc2).__module__
    assert q.module.conv1[0].weight.dtype == torch.float32
    assert "quantized" in type(q.module.conv2).__module__
    # The input stays float: the first quantized layer (conv2) quantizes its own input.
    assert set(q.module.to_int8) == {"conv2"} and set(q.module.to_float) == {"fc2"}
    assert _agreement(q, evaluation, fp32_top1) >= 0.90
    fx = quantize(model, QuantRecipe(method="fx", keep_fp32=("conv2",)), calib)
    # FX fuses conv2+ReLU but leaves the fused module in float.
    assert "quantized" not in type(fx.module.conv2).__module__
    assert "quantized" in type(fx.module.conv3).__module__
    assert q.recipe.keep_fp32 == ("conv1", "fc2")  # canonical order


def test_unsupported_combinations_are_named(demo):
    model, calib, *_ = demo
    with pytest.raises(UnsupportedCombination, match="onednn only supports symmetric weights"):
        quantize(model, QuantRecipe(backend="onednn", qscheme="affine"), calib)
    with pytest.raises(
        UnsupportedCombination,
        match="method pt2e runs on backend x86 only",
    ):
        QuantRecipe(method="pt2e", backend="qnnpack")
    with pytest.raises(UnsupportedCombination, match="chooses its own observers"):
        QuantRecipe(method="pt2e", act_observer="minmax")
    with pytest.raises(UnsupportedCombination, match="needs calibration images"):
        quantize(model, QuantRecipe(), torch.zeros(0, 3, 224, 224))
    with pytest.raises(UnsupportedCombination, match="qat needs labelled training images"):
        quantize(model, QuantRecipe(method="qat"), calib)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "int4"}, "method 'int4' is not one of"),
        ({"backend": "tpu"}, "backend 'tpu' is not one of"),
        ({"keep_fp32": ("conv9",)}, "keep_fp32 layer 'conv9'"),
        ({"calib_images": 0}, "calibration images must be in 1..4096"),
    ],
)
def test_recipe_validation(kwargs, message):
    with pytest.raises(InputError, match=message):
        QuantRecipe(**kwargs)


def test_recipe_round_trips_and_describes_itself():
    recipe = QuantRecipe(backend="qnnpack", keep_fp32=("fc1",))
    again = QuantRecipe.from_dict(recipe.to_dict())
    assert again == recipe.resolved()
    assert again.reduce_range is False  # qnnpack's default is 8-bit activations
    assert "qnnpack" in recipe.describe() and "fc1" in recipe.describe()
    args = config_to_args(RunConfig(recipe=recipe))
    assert args[args.index("--reduce-range") + 1] == "off"


def wide_input_model(model: torch.nn.Module) -> torch.nn.Module:
    """The same function for ImageNet-normalized input: conv1 absorbs the normalization.

    conv1(x) = conv1'((x - mean) / std) with W' = W * std (per input channel) and
    b' = b + sum(W * mean): a model whose input range is ~[-2.1, 2.6] instead of [0, 1], as
    most photo-trained checkpoints see it.
    """
    import copy

    mean = torch.tensor(data.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(data.IMAGENET_STD).view(1, 3, 1, 1)
    wide = copy.deepcopy(model)
    with torch.no_grad():
        w = wide.conv1.weight
        wide.conv1.bias += (w * mean).sum(dim=(1, 2, 3))
        w *= std
    return wide


#: Every method on the robust demo and on it with ImageNet normalization folded into conv1; the
#: post-training methods on the fragile demo too (QAT and pt2e cost minutes per model, and their
#: keep-all path is the same on any checkpoint: no trainable layer, or no quantized node).
KEEP_ALL = [
    (method, kind)
    for kind in ("demo", "imagenet-normalized", "fragile")
    for method in ("static", "fx", "dynamic", "fp16", "qat", "pt2e")
    if not (kind == "fragile" and method in ("qat", "pt2e"))
]


@pytest.mark.slow
@pytest.mark.parametrize("method, model_kind", KEEP_ALL, ids=[f"{k}-{m}" for m, k in KEEP_ALL])
def test_keeping_every_layer_in_fp32_is_the_fp32_model(demo, method, model_kind):
    """Invariant: a recipe that keeps every layer it could quantize in FP32 *is* FP32 (on the
    robust demo, on it with ImageNet normalization folded in, and on the fragile demo, a plain
    CustomCNN trained on ImageNet-normalized inputs)."""
    from aslquant.demos import demos

    model, calib, evaluation, fp32_top1, train = demo
    # Equality, not agreement, is asserted: 29 images show any layer left quantized (a quantized
    # layer changes the logits of every image).
    x = evaluation.x[::8]
    if model_kind != "demo":
        if model_kind == "fragile":
            model = load_checkpoint(demos()["fragile"].checkpoint, num_labels=model.num_classes)
        else:
            model = wide_input_model(model)
        mean = torch.tensor(data.IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(data.IMAGENET_STD).view(1, 3, 1, 1)
        x, calib = (x - mean) / std, (calib - mean) / std
        train = [((b - mean) / std, y) for b, y in train]
    spec = QuantRecipe(method=method).method_spec
    recipe = QuantRecipe(method=method, keep_fp32=spec.keep_fp32_layers, qat_epochs=1)
    q = quantize(model, recipe, calib, train_batches=train)
    with torch.inference_mode():
        expected = model(x)
    got = q(x)
    assert torch.equal(got.argmax(1), expected.argmax(1))  # 100% agreement
    # pt2e runs through Inductor's float kernels: same math, other summation order.
    assert torch.allclose(got, expected, atol=1e-4 if method == "pt2e" else 1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["static", "fx"])
def test_clipping_observers_and_techniques_run_through_quantize(demo, method):
    model, calib, evaluation, fp32_top1, _ = demo
    recipe = QuantRecipe(
        method=method, act_observer="percentile", equalize=True, bias_correction=True
    )
    q = quantize(model, recipe, calib)
    assert _agreement(q, evaluation, fp32_top1) >= 0.9
    assert any("cross-layer equalization" in n for n in q.notes)
    assert any("bias correction" in n for n in q.notes)
    # The float model that was quantized is a rewritten copy; the user's model is untouched.
    assert q.float_source is not model
    assert torch.equal(model.conv1.weight, load_checkpoint(DEMO_CHECKPOINT).conv1.weight)
