"""Per-layer error: weight and activation SQNR, MSE, ranges and grids, one row per layer.

Per-layer numbers come from the float model and the quantized model over the same images in
one streaming pass (the PyTorch numeric-suite idea, without rewriting either model): forward
hooks where the quantized model has layer modules, the converted graph's nodes for pt2e.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from aslquant.analysis import pt2e
from aslquant.analysis.capture import (
    Capture,
    LayerQuant,
    QuantizedLayers,
    inspect_quantized,
    layer_module,
    post_relu,
)
from aslquant.analysis.common import (
    LAYER_IMAGES,
    Progress,
    as_float,
    batches,
    eval_items,
    finite_or_none,
    power,
    sqnr_db,
    stage,
)
from aslquant.engine_lock import engine_session
from aslquant.model import LAYER_NAMES
from aslquant.run import RunResult


@dataclass(frozen=True)
class LayerError:
    """One row of report.json's ``layers`` (units in the field names: dB, or float units)."""

    name: str
    #: The layer computes with quantized (or FP16) weights in this run.
    quantized: bool
    weight_min: float
    weight_max: float
    #: FP32 weights against the weights the quantized layer uses (None: float layer).
    weight_sqnr_db: float | None
    weight_mse: float | None
    weight_dtype: str
    #: Largest weight scale (per-channel: the widest channel's).
    weight_scale_max: float | None
    weight_granularity: str | None
    #: Layer output after its ReLU, quantized model fed the image (earlier error included).
    activation_sqnr_db: float | None
    #: The same, the quantized layer fed the FP32 model's input to it: its own error only.
    activation_sqnr_isolated_db: float | None
    #: FP32 output range (after the ReLU) over the images compared.
    act_min: float | None
    act_max: float | None
    #: Grid of the quantized layer's output; clip range: what INT8 can represent.
    act_scale: float | None
    act_zero_point: int | None
    act_clip_min: float | None
    act_clip_max: float | None
    #: Scale of the quantized input the layer receives.
    input_scale: float | None
    n_images: int
    note: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class _Sums:
    signal: float = 0.0
    noise_cum: float = 0.0
    noise_iso: float = 0.0
    isolated: bool = False
    low: float = math.inf
    high: float = -math.inf


def _quantized_outputs(result: RunResult, names: list[str], inspected: QuantizedLayers):
    """A function x -> (quantized outputs by layer, isolated(name, fp32 input) -> tensor).

    Modules: hooks on the quantized model, and the quantized layer module called on the FP32
    input quantized with the layer's input grid. pt2e: the converted graph's nodes.
    """
    qm = result.quantized
    if inspected.source == "graph":
        graph = pt2e.map_layers(qm.reference)

        def run_graph(x: torch.Tensor):
            outputs = pt2e.tap(graph, x)
            return outputs, lambda name, x_in: pt2e.isolated_output(graph, name, x_in)

        return run_graph, lambda: None
    module = qm.module
    cap = Capture(module, names)

    def isolated(name: str, x_in: torch.Tensor) -> torch.Tensor | None:
        q_in = cap.inputs.get(name)
        if q_in is not None and q_in.is_quantized:
            x_in = torch.quantize_per_tensor(x_in, q_in.q_scale(), q_in.q_zero_point(), q_in.dtype)
        cap.active = False  # the layer's own call must not overwrite the captured tensors
        try:
            return layer_module(module, name)(x_in)
        finally:
            cap.active = True

    def run_modules(x: torch.Tensor):
        cap.clear()
        module(x)
        return dict(cap.outputs), isolated

    return run_modules, cap.remove


def _activation_sums(
    result: RunResult,
    inspected: QuantizedLayers,
    max_images: int | None,
    progress: Progress | None,
) -> tuple[dict[str, _Sums], int]:
    """One streaming pass: signal/noise sums per layer, cumulative and isolated, plus ranges."""
    keep = set(result.quantized.recipe.keep_fp32)
    names = list(inspected.layers)
    items = eval_items(result, max_images)
    sums = {n: _Sums() for n in names}
    run_quantized, cleanup = _quantized_outputs(result, names, inspected)
    seen = 0
    try:
        with Capture(result.float_reference, names) as fp_cap:
            for batch in batches(result, items):
                with torch.inference_mode():
                    with engine_session(None, result.threads):
                        fp_cap.clear()
                        result.float_reference(batch.x)
                    with engine_session(result.quantized.backend, result.threads):
                        outputs, isolated = run_quantized(batch.x)
                        for name in names:
                            if name not in fp_cap.outputs or name not in outputs:
                                continue
                            s = sums[name]
                            ref = post_relu(name, fp_cap.outputs[name].float())
                            cum = post_relu(name, as_float(outputs[name]))
                            s.signal += power(ref)
                            s.noise_cum += power(cum - ref)
                            s.low = min(s.low, float(ref.min()))
                            s.high = max(s.high, float(ref.max()))
                            if name in keep:
                                continue  # a float layer causes no error of its own
                            iso = isolated(name, fp_cap.inputs[name].float())
                            if iso is not None:
                                s.noise_iso += power(post_relu(name, as_float(iso)) - ref)
                                s.isolated = True
                        del outputs  # free this batch's activations before the next one
                seen += len(batch.items)
                stage(progress, "per-layer error", seen / max(1, len(items)))
    finally:
        cleanup()
    return sums, seen


def _weight_fields(fp_weight: torch.Tensor, layer: LayerQuant | None) -> dict:
    w = fp_weight.detach().float()
    out = {
        "weight_min": float(w.min()),
        "weight_max": float(w.max()),
        "weight_sqnr_db": None,
        "weight_mse": None,
        "weight_dtype": "float32",
        "weight_scale_max": None,
        "weight_granularity": None,
    }
    if layer is None or layer.weight is None:
        return out
    noise = float((layer.weight.double() - w.double()).pow(2).sum())
    out["weight_sqnr_db"] = finite_or_none(sqnr_db(float(w.double().pow(2).sum()), noise))
    out["weight_mse"] = noise / w.numel()
    out["weight_dtype"] = layer.weight_dtype
    if layer.weight_qparams is not None:
        out["weight_scale_max"] = layer.weight_qparams.scale_max
        out["weight_granularity"] = (
            "per-channel" if layer.weight_qparams.per_channel else "per-tensor"
        )
    return out


_NO_OUTPUTS = (
    "no per-layer outputs to compare: the quantized model exposes neither layer modules nor "
    "a converted graph"
)


def layer_errors_from(
    result: RunResult,
    inspected: QuantizedLayers,
    max_images: int | None = LAYER_IMAGES,
    progress: Progress | None = None,
) -> tuple[LayerError, ...]:
    """``layer_errors`` with the quantized model's layers already inspected."""
    sums, n_images = (
        _activation_sums(result, inspected, max_images, progress) if inspected.found else ({}, 0)
    )
    keep = set(result.quantized.recipe.keep_fp32)
    rows = []
    for name in LAYER_NAMES:
        layer = inspected.get(name)
        fields = _weight_fields(getattr(result.float_reference, name).weight, layer)
        quantized = name not in keep and layer is not None and layer.quantized
        s = sums.get(name)
        if s is None or s.signal == 0.0:
            rows.append(
                LayerError(
                    name=name,
                    quantized=quantized,
                    **fields,
                    activation_sqnr_db=None,
                    activation_sqnr_isolated_db=None,
                    act_min=None,
                    act_max=None,
                    act_scale=None,
                    act_zero_point=None,
                    act_clip_min=None,
                    act_clip_max=None,
                    input_scale=None,
                    n_images=0,
                    note=_NO_OUTPUTS if not inspected.found else "no output captured",
                )
            )
            continue
        out_q = layer.output_qparams if layer is not None else None
        in_q = layer.input_qparams if layer is not None else None
        clip = out_q.clip_range() if out_q is not None else (None, None)
        rows.append(
            LayerError(
                name=name,
                quantized=quantized,
                **fields,
                activation_sqnr_db=finite_or_none(sqnr_db(s.signal, s.noise_cum)),
                activation_sqnr_isolated_db=(
                    finite_or_none(sqnr_db(s.signal, s.noise_iso)) if s.isolated else None
                ),
                act_min=finite_or_none(s.low),
                act_max=finite_or_none(s.high),
                act_scale=out_q.scale[0] if out_q is not None else None,
                act_zero_point=out_q.zero_point[0] if out_q is not None else None,
                act_clip_min=clip[0],
                act_clip_max=clip[1],
                input_scale=in_q.scale[0] if in_q is not None else None,
                n_images=n_images,
                note="kept in FP32" if name in keep else None,
            )
        )
    return tuple(rows)


def layer_errors(
    result: RunResult, max_images: int | None = LAYER_IMAGES, progress: Progress | None = None
) -> tuple[LayerError, ...]:
    """One row per layer in LAYER_NAMES: weight and activation SQNR, MSE, ranges, qparams.

    ``activation_sqnr_db`` is cumulative (the quantized model fed the image: earlier layers'
    error carried in); ``activation_sqnr_isolated_db`` feeds each quantized layer the FP32
    model's input to it (quantized with the layer's input grid), so it shows the error the
    layer itself adds. Both compare the layer output after its ReLU, over the first
    ``max_images`` evaluation images (None: all). Works for every method: layer modules are
    hooked; a pt2e run's converted graph is read node by node.
    """
    inspected = inspect_quantized(result.quantized, result.config.preprocess.input_size)
    return layer_errors_from(result, inspected, max_images, progress)
