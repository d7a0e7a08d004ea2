"""Where quantization hurts: per-layer error, ranges, histograms, sensitivity and bit sweeps.

Pure functions over a ``RunResult`` (no Streamlit). Per-layer numbers come from forward hooks
on the float model and the quantized model over the same images in one streaming pass (the
PyTorch numeric-suite idea, without rewriting either model). Anything that needs another model
(a layer kept in FP32, a simulated bit width) is built once per variant and all variants are
evaluated together over one pass of the evaluation images.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aslquant import data as data_mod
from aslquant import methods
from aslquant.engine_lock import engine_session
from aslquant.errors import InputError, UnsupportedCombination
from aslquant.model import LAYER_NAMES, CustomCNN
from aslquant.qmodules import Fp16Weight
from aslquant.quantize import quantize

Progress = Callable[[str, float], None]

#: The ReLU module that follows each layer in CustomCNN (fc2 has none): errors are compared
#: after it, because a fused quantized conv+ReLU only ever produces the post-ReLU tensor.
RELU_AFTER: dict[str, str | None] = {
    "conv1": "relu1",
    "conv2": "relu2",
    "conv3": "relu3",
    "conv4": "relu4",
    "fc1": "relu5",
    "fc2": None,
}

#: Default number of evaluation images for the per-layer pass (class-stratified prefix of the
#: evaluation set). SQNR is a ratio of sums and settles long before the whole set is seen.
LAYER_IMAGES = 256
#: Default evaluation images for sensitivity, mixed precision and bit sweeps (each variant is
#: a full model); reference FP32/INT8 accuracies are taken on exactly the same images.
VARIANT_IMAGES = 290



# --- small helpers ---------------------------------------------------------------------------


def sqnr_db(signal_power: float, noise_power: float) -> float:
    """10·log10(signal / noise); +inf when there is no noise, nan when there is no signal."""
    if noise_power <= 0.0:
        return math.inf
    if signal_power <= 0.0:
        return math.nan
    return 10.0 * math.log10(signal_power / noise_power)


def _power(t: torch.Tensor) -> float:
    """Sum of squares, accumulated in float64 (millions of float32 terms per batch)."""
    return float(t.pow(2).sum(dtype=torch.float64))


def _finite_or_none(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def _stage(progress: Progress | None, stage: str, fraction: float) -> None:
    if progress:
        progress(stage, min(1.0, max(0.0, fraction)))


def _layer_module(module: nn.Module, name: str) -> nn.Module | None:
    """The quantized model's module for a layer, or None (pt2e compiled graphs have none)."""
    if "_orig_mod" in module._modules:  # torch.compile's OptimizedModule
        # A torch.compile'd PT2E graph: attribute access reaches the original module's
        # leftovers, but the compiled code never calls them, so hooks would never fire.
        return None
    try:
        return module.get_submodule(name)
    except AttributeError:
        return None


def _eval_items(result, max_images: int | None) -> list[data_mod.LabeledImage]:
    """The evaluation images of a run, in evaluation order (a class-balanced prefix)."""
    ev = result.evaluation
    items = [
        data_mod.LabeledImage(path, display, int(label))
        for path, display, label in zip(ev.paths, ev.displays, ev.labels, strict=True)
    ]
    if max_images is not None:
        if max_images < 1:
            raise InputError(f"max_images must be at least 1, got {max_images}")
        items = items[:max_images]
    return items


def _batches(result, items, batch_size: int = 32) -> Iterator[data_mod.Batch]:
    return data_mod.iter_batches(items, result.config.preprocess, batch_size=batch_size)


def _is_quantized_tensor(t: object) -> bool:
    return isinstance(t, torch.Tensor) and t.is_quantized


def _as_float(t: torch.Tensor) -> torch.Tensor:
    return t.dequantize() if t.is_quantized else t.float()


def _post_relu(name: str, t: torch.Tensor) -> torch.Tensor:
    # relu(relu(x)) == relu(x): applying it to both sides compares the fused and unfused
    # layouts at the same point (after the layer's ReLU).
    return F.relu(t) if RELU_AFTER[name] else t


def _qparams(t: torch.Tensor) -> dict | None:
    if not _is_quantized_tensor(t) or t.qscheme() not in (
        torch.per_tensor_affine,
        torch.per_tensor_symmetric,
    ):
        return None
    info = torch.iinfo(t.dtype)
    return {
        "scale": float(t.q_scale()),
        "zero_point": int(t.q_zero_point()),
        "dtype": t.dtype,
        "qmin": int(info.min),
        "qmax": int(info.max),
    }


def _weights(qlayer: nn.Module | None) -> torch.Tensor | None:
    """The weights a quantized layer really uses (quantized or fp16 tensor), or None."""
    if qlayer is None:
        return None
    if isinstance(qlayer, Fp16Weight):
        return qlayer.weight
    w = getattr(qlayer, "weight", None)
    if callable(w) and not isinstance(w, torch.Tensor):
        w = w()  # torch.ao quantized modules expose packed weights through weight()
    if isinstance(w, torch.Tensor) and (w.is_quantized or w.dtype == torch.float16):
        return w
    return None  # a float layer (e.g. convolutions under dynamic quantization)


# --- per-layer error -------------------------------------------------------------------------


class _Capture:
    """Forward hooks that keep the latest input and output of named layers."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self.active = True
        self.handles = []
        for name in names:
            layer = _layer_module(model, name)
            if layer is not None:
                self.handles.append(layer.register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def hook(module, inputs, output):
            if self.active:
                self.inputs[name] = inputs[0]
                self.outputs[name] = output

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _pass_layers(result, max_images: int | None, progress: Progress | None) -> dict:
    """One streaming pass: signal/noise sums per layer, cumulative and isolated, plus ranges."""
    qmodel = result.quantized.module
    keep = set(result.quantized.recipe.keep_fp32)
    names = [n for n in LAYER_NAMES if _layer_module(qmodel, n) is not None]
    items = _eval_items(result, max_images)
    stats = {
        n: {
            "signal": 0.0,
            "noise_cum": 0.0,
            "noise_iso": 0.0,
            "iso": False,
            "min": math.inf,
            "max": -math.inf,
            "in_q": None,
            "out_q": None,
        }
        for n in names
    }
    fp_cap = _Capture(result.fp32_model, names)
    q_cap = _Capture(qmodel, names)
    seen = 0
    try:
        for batch in _batches(result, items):
            with engine_session(result.quantized.backend, result.threads), torch.inference_mode():
                fp_cap.inputs.clear()
                q_cap.inputs.clear()
                result.fp32_model(batch.x)
                qmodel(batch.x)
                q_cap.active = False
                for name in names:
                    if name not in fp_cap.outputs or name not in q_cap.outputs:
                        continue
                    s = stats[name]
                    ref = _post_relu(name, fp_cap.outputs[name].float())
                    cum = _post_relu(name, _as_float(q_cap.outputs[name]))
                    s["signal"] += _power(ref)
                    s["noise_cum"] += _power(cum - ref)
                    s["min"] = min(s["min"], float(ref.min()))
                    s["max"] = max(s["max"], float(ref.max()))
                    s["out_q"] = s["out_q"] or _qparams(q_cap.outputs[name])
                    s["in_q"] = s["in_q"] or _qparams(q_cap.inputs[name])
                    qlayer = _layer_module(qmodel, name)
                    if name in keep:
                        continue  # a float layer causes no error of its own
                    x_in = fp_cap.inputs[name].float()
                    q_in = q_cap.inputs[name]
                    if _is_quantized_tensor(q_in):
                        p = _qparams(q_in)
                        x_in = torch.quantize_per_tensor(
                            x_in, p["scale"], p["zero_point"], p["dtype"]
                        )
                    iso = _post_relu(name, _as_float(qlayer(x_in)))
                    s["noise_iso"] += _power(iso - ref)
                    s["iso"] = True
                q_cap.active = True
            fp_cap.outputs.clear()  # free this batch's activations before the next one
            q_cap.outputs.clear()
            seen += len(batch.items)
            _stage(progress, "per-layer error", seen / max(1, len(items)))
    finally:
        fp_cap.remove()
        q_cap.remove()
    return {"stats": stats, "n_images": seen}


def _weight_stats(fp_layer: nn.Module, qlayer: nn.Module | None) -> dict:
    w = fp_layer.weight.detach().float()
    out = {
        "weight_min": float(w.min()),
        "weight_max": float(w.max()),
        "weight_sqnr_db": None,
        "weight_mse": None,
        "weight_dtype": "float32",
        "weight_scale_max": None,
    }
    wq = _weights(qlayer)
    if wq is None:
        return out
    deq = wq.dequantize() if wq.is_quantized else wq.float()
    noise = float((deq - w).double().pow(2).sum())
    out["weight_sqnr_db"] = _finite_or_none(sqnr_db(float(w.double().pow(2).sum()), noise))
    out["weight_mse"] = noise / w.numel()
    out["weight_dtype"] = str(wq.dtype).replace("torch.", "")
    if wq.is_quantized:
        if wq.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            out["weight_scale_max"] = float(wq.q_per_channel_scales().max())
            out["weight_granularity"] = "per-channel"
        else:
            out["weight_scale_max"] = float(wq.q_scale())
            out["weight_granularity"] = "per-tensor"
    return out


def layer_errors(
    result, max_images: int | None = LAYER_IMAGES, progress: Progress | None = None
) -> list[dict]:
    """One row per layer in LAYER_NAMES: weight and activation SQNR, MSE, ranges, qparams.

    ``activation_sqnr_db`` is cumulative (the quantized model fed the image: earlier layers'
    error carried in); ``activation_sqnr_isolated_db`` feeds each quantized layer the FP32
    model's input to it (quantized with the layer's input qparams), so it shows the error the
    layer itself adds. Both compare the layer output after its ReLU, over the first
    ``max_images`` evaluation images (None: all).
    """
    qmodel = result.quantized.module
    named = any(_layer_module(qmodel, n) is not None for n in LAYER_NAMES)
    passed = _pass_layers(result, max_images, progress) if named else {"stats": {}, "n_images": 0}
    rows = []
    keep = set(result.quantized.recipe.keep_fp32)
    for name in LAYER_NAMES:
        qlayer = _layer_module(qmodel, name)
        row: dict = {"name": name}
        # A compiled PT2E graph has no layer modules but quantizes every layer.
        row["quantized"] = name not in keep and (qlayer is None or _weights(qlayer) is not None)
        row.update(_weight_stats(getattr(result.fp32_model, name), qlayer))
        s = passed["stats"].get(name)
        if s is None or s["signal"] == 0.0:
            row.update(
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
                note="no per-layer outputs to compare: the quantized model has no named layer "
                "modules (compiled PT2E graph)",
            )
            rows.append(row)
            continue
        out_q = s["out_q"]
        row["activation_sqnr_db"] = _finite_or_none(sqnr_db(s["signal"], s["noise_cum"]))
        row["activation_sqnr_isolated_db"] = (
            _finite_or_none(sqnr_db(s["signal"], s["noise_iso"])) if s["iso"] else None
        )
        row["act_min"] = _finite_or_none(s["min"])
        row["act_max"] = _finite_or_none(s["max"])
        row["act_scale"] = out_q["scale"] if out_q else None
        row["act_zero_point"] = out_q["zero_point"] if out_q else None
        # What the INT8 kernel can represent: values outside are clamped to these.
        row["act_clip_min"] = (
            (out_q["qmin"] - out_q["zero_point"]) * out_q["scale"] if out_q else None
        )
        row["act_clip_max"] = (
            (out_q["qmax"] - out_q["zero_point"]) * out_q["scale"] if out_q else None
        )
        row["input_scale"] = s["in_q"]["scale"] if s["in_q"] else None
        row["n_images"] = passed["n_images"]
        if name in keep:
            row["note"] = "kept in FP32"
        rows.append(row)
    result.__dict__.setdefault("_analysis_cache", {})["layer_rows"] = rows
    return rows


# --- histograms and fake quantization --------------------------------------------------------


def fake_quantize(
    values: np.ndarray,
    bits: int,
    clip_min: float,
    clip_max: float,
    zero_point: int | None = None,
) -> dict:
    """Quantize ``values`` to ``bits`` unsigned levels over [clip_min, clip_max] and back.

    Affine like torch: the range is widened to include 0 and ``scale = (max - min) / (2^bits
    - 1)``; ``zero_point`` defaults to the level that represents 0. Errors are split into
    rounding (values inside the range) and clipping (values outside), both as sums over all
    values divided by their count, so ``rounding_mse + clipping_mse`` is the total MSE.
    """
    if not 1 <= int(bits) <= 16:
        raise InputError(f"bits must be between 1 and 16, got {bits}")
    values = np.asarray(values, dtype=np.float64)
    lo, hi = min(float(clip_min), 0.0), max(float(clip_max), 0.0)
    qmax = 2 ** int(bits) - 1
    scale = (hi - lo) / qmax if hi > lo else 1.0
    if zero_point is None:
        zero_point = int(np.clip(round(-lo / scale), 0, qmax))
    q = np.clip(np.round(values / scale) + zero_point, 0, qmax)
    deq = (q - zero_point) * scale
    low, high = (0 - zero_point) * scale, (qmax - zero_point) * scale
    clipped = (values < low - scale / 2) | (values > high + scale / 2)
    err = (deq - values) ** 2
    n = max(1, values.size)
    total = float(err.sum())
    return {
        "dequantized": deq,
        "scale": float(scale),
        "zero_point": int(zero_point),
        "bits": int(bits),
        "rounding_mse": float(err[~clipped].sum() / n),
        "clipping_mse": float(err[clipped].sum() / n),
        "mse": total / n,
        "sqnr_db": _finite_or_none(sqnr_db(float((values**2).sum()), total)),
        "clipped_fraction": float(clipped.mean()) if values.size else 0.0,
        "range": [float(low), float(high)],
    }


def _activation_tensor(result, max_images: int = 64) -> torch.Tensor:
    """Images the activation histograms are drawn from: the calibration set observers saw."""
    calibration = result.calibration  # decoded on access in RunResult: read it once
    if len(calibration):
        return calibration[:max_images]
    items = _eval_items(result, max_images)
    return data_mod.load_tensors(items, result.config.preprocess).x


def _activation_histograms(result, bins: int) -> dict:
    """Histogram of every layer's FP32 post-ReLU output over the calibration images (cached)."""
    cache = result.__dict__.setdefault("_analysis_cache", {})
    key = ("act_hist", bins)
    if key in cache:
        return cache[key]
    rows = cache.get("layer_rows") or layer_errors(result, max_images=32)
    cache["layer_rows"] = rows
    qparams = {row["name"]: row for row in rows}
    x_all = _activation_tensor(result)
    names = list(LAYER_NAMES)
    cap = _Capture(result.fp32_model, names)
    lo = dict.fromkeys(names, math.inf)
    hi = dict.fromkeys(names, -math.inf)
    gen = torch.Generator().manual_seed(0)
    samples: dict[str, list[np.ndarray]] = {n: [] for n in names}
    chunks = list(torch.split(x_all, 16))
    try:
        with torch.inference_mode():
            for x in chunks:  # pass 1: observed range and a random sample of values
                result.fp32_model(x)
                for n in names:
                    t = _post_relu(n, cap.outputs[n]).flatten()
                    lo[n], hi[n] = min(lo[n], float(t.min())), max(hi[n], float(t.max()))
                    idx = torch.randint(0, t.numel(), (min(t.numel(), 4000),), generator=gen)
                    samples[n].append(t[idx].numpy().copy())
            edges = {}
            counts = {}
            for n in names:
                row = qparams[n]
                a = min(lo[n], row["act_clip_min"] if row["act_clip_min"] is not None else lo[n])
                b = max(hi[n], row["act_clip_max"] if row["act_clip_max"] is not None else hi[n])
                b = b if b > a else a + 1.0
                edges[n] = (a, b)
                counts[n] = torch.zeros(bins, dtype=torch.float64)
            for x in chunks:  # pass 2: exact counts over the final edges
                result.fp32_model(x)
                for n in names:
                    t = _post_relu(n, cap.outputs[n]).flatten()
                    a, b = edges[n]
                    counts[n] += torch.histc(t, bins=bins, min=a, max=b)
    finally:
        cap.remove()
    out = {
        n: {
            "counts": counts[n].long().tolist(),
            "edges": np.linspace(edges[n][0], edges[n][1], bins + 1).tolist(),
            "values_sample": np.concatenate(samples[n])[:20000],
            "observed_min": lo[n],
            "observed_max": hi[n],
            "n_images": int(len(x_all)),
        }
        for n in names
    }
    cache[key] = out
    return out


def _grid(scale: float, zero_point: int, qmin: int, qmax: int, lo: float, hi: float) -> list:
    levels = (np.arange(qmin, qmax + 1) - zero_point) * scale
    return levels[(levels >= lo - 1e-12) & (levels <= hi + 1e-12)].tolist()


def layer_histogram(result, layer: str, kind: str = "weights", bins: int = 120) -> dict:
    """Histogram of one layer's FP32 weights or activations with the INT8 grid and clip range.

    Weights: all FP32 weights; for per-channel weights the grid and clip range drawn are those
    of the channel with the widest range (``per_channel=True``, all scales in ``scales``).
    Activations: the FP32 layer output after its ReLU over the calibration images; grid and
    clip range from the quantized layer's output scale and zero point.
    """
    if layer not in LAYER_NAMES:
        raise InputError(f"layer {layer!r} is not one of {', '.join(LAYER_NAMES)}")
    if kind not in ("weights", "activations"):
        raise InputError(f"histogram kind must be weights or activations, got {kind!r}")
    if not 2 <= bins <= 2000:
        raise InputError(f"bins must be between 2 and 2000, got {bins}")
    base = {"layer": layer, "kind": kind, "bits": 8, "per_channel": False}
    if kind == "weights":
        w = getattr(result.fp32_model, layer).weight.detach().float()
        wq = _weights(_layer_module(result.quantized.module, layer))
        scale = zp = None
        clip_min = clip_max = None
        grid: list = []
        extra: dict = {}
        if wq is not None and wq.is_quantized:
            info = torch.iinfo(wq.dtype)
            if wq.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
                scales = wq.q_per_channel_scales().double()
                zps = wq.q_per_channel_zero_points()
                c = int(torch.argmax(scales))
                scale, zp = float(scales[c]), int(zps[c])
                extra = {"per_channel": True, "scales": scales.tolist(), "widest_channel": c}
            else:
                scale, zp = float(wq.q_scale()), int(wq.q_zero_point())
            clip_min = (info.min - zp) * scale
            clip_max = (info.max - zp) * scale
        elif wq is not None:
            extra = {"bits": 16, "note": "FP16 weights: the grid is not uniform"}
        values = w.flatten().numpy()
        a = min(float(values.min()), clip_min if clip_min is not None else float(values.min()))
        b = max(float(values.max()), clip_max if clip_max is not None else float(values.max()))
        counts, edges = np.histogram(values, bins=bins, range=(a, b))
        if scale is not None:
            info = torch.iinfo(wq.dtype)
            grid = _grid(scale, zp, info.min, info.max, a, b)
        rng = np.random.default_rng(0)
        sample = values if values.size <= 20000 else rng.choice(values, 20000, replace=False)
        out = {
            **base,
            "counts": counts.tolist(),
            "edges": edges.tolist(),
            "grid": grid,
            "clip_min": clip_min,
            "clip_max": clip_max,
            "scale": scale,
            "zero_point": zp,
            "values_sample": sample,
            "observed_min": float(values.min()),
            "observed_max": float(values.max()),
        }
        out.update(extra)
        if wq is None and _layer_module(result.quantized.module, layer) is None:
            out["note"] = "the compiled PT2E graph does not expose per-layer quantized weights"
        elif wq is None:
            out["note"] = "this layer's weights are not quantized in this run"
        return out
    hist = _activation_histograms(result, bins)[layer]
    row = {r["name"]: r for r in result.__dict__["_analysis_cache"]["layer_rows"]}[layer]
    scale, zp = row["act_scale"], row["act_zero_point"]
    grid = []
    if scale is not None:
        grid = _grid(scale, zp, 0, 255, hist["edges"][0], hist["edges"][-1])
    out = {
        **base,
        "counts": hist["counts"],
        "edges": hist["edges"],
        "grid": grid,
        "clip_min": row["act_clip_min"],
        "clip_max": row["act_clip_max"],
        "scale": scale,
        "zero_point": zp,
        "values_sample": hist["values_sample"],
        "observed_min": hist["observed_min"],
        "observed_max": hist["observed_max"],
        "n_images": hist["n_images"],
    }
    if scale is None:
        out["note"] = "this layer's output is not quantized in this run"
    return out


# --- evaluating several variants in one pass -------------------------------------------------


def _evaluate_variants(
    result,
    variants: dict[str, tuple[nn.Module, str | None]],
    max_images: int | None,
    progress: Progress | None,
    stage: str,
    keep_logits: bool = False,
) -> dict:
    """Top-1 of every variant over the same evaluation images, streamed once."""
    items = _eval_items(result, max_images)
    preds: dict[str, list[np.ndarray]] = {k: [] for k in variants}
    sq: dict[str, list[float]] = {k: [0.0, 0.0] for k in variants}
    labels: list[np.ndarray] = []
    seen = 0
    for batch in _batches(result, items):
        with torch.inference_mode():
            ref = None
            if keep_logits:
                with engine_session(None, result.threads):
                    ref = result.fp32_model(batch.x).float()
            for key, (module, backend) in variants.items():
                with engine_session(backend, result.threads):
                    logits = _as_float(module(batch.x))
                preds[key].append(logits.argmax(1).numpy())
                if ref is not None:
                    sq[key][0] += float(ref.double().pow(2).sum())
                    sq[key][1] += float((logits - ref).double().pow(2).sum())
        labels.append(batch.y.numpy())
        seen += len(batch.items)
        _stage(progress, stage, seen / max(1, len(items)))
    n = seen
    ev = result.evaluation
    return {
        "labels": np.concatenate(labels) if labels else np.zeros(0, int),
        "preds": {k: np.concatenate(v) if v else np.zeros(0, int) for k, v in preds.items()},
        "fp32": ev.fp32.top1[:n],
        "int8": ev.quant.top1[:n],
        "n": n,
        "logit_sqnr": {k: _finite_or_none(sqnr_db(*v)) for k, v in sq.items()},
    }


def _scores(
    labels: np.ndarray, pred: np.ndarray, fp32: np.ndarray, fp32_accuracy: float | None = None
) -> dict:
    """Top-1 accuracy and agreement with FP32; with ``fp32_accuracy``, the drop in points."""
    out = {
        "accuracy": float((pred == labels).mean()) if len(labels) else math.nan,
        "agreement": float((pred == fp32).mean()) if len(labels) else math.nan,
    }
    if fp32_accuracy is not None:
        out["drop_points"] = 100.0 * (fp32_accuracy - out["accuracy"])
    return out


def _requantize(result, keep: tuple[str, ...], calibration: torch.Tensor):
    recipe = result.quantized.recipe.with_changes(keep_fp32=keep)
    return quantize(
        result.fp32_model,
        recipe,
        calibration,
        input_size=result.config.preprocess.input_size,
    )


def _check_requantizable(result, what: str) -> None:
    spec = result.quantized.recipe.method_spec
    if not spec.requantizable:
        raise UnsupportedCombination(
            f"{what} re-quantizes once per layer, which method {spec.name} does not support "
            "here (it would mean fine-tuning again for every layer); run it on "
            + " or ".join(methods.names(lambda m: m.requantizable and m.calibrates))
        )


def _candidate_layers(result) -> list[str]:
    recipe = result.quantized.recipe
    return [n for n in recipe.method_spec.keep_fp32_layers if n not in recipe.keep_fp32]


def sensitivity(
    result, progress: Progress | None = None, max_images: int | None = VARIANT_IMAGES
) -> list[dict]:
    """Accuracy when each layer alone stays FP32, ranked by the accuracy it wins back.

    Each variant is the run's recipe with one more layer in ``keep_fp32``, calibrated on the
    run's calibration tensor; all are evaluated in one pass over the first ``max_images``
    evaluation images, where the run's own FP32 and quantized predictions are the reference.
    """
    _check_requantizable(result, "sensitivity")
    base_keep = tuple(result.quantized.recipe.keep_fp32)
    layers = _candidate_layers(result)
    variants = {}
    calibration = result.calibration
    for i, name in enumerate(layers):
        _stage(progress, "sensitivity: re-quantizing", i / max(1, len(layers)))
        qm = _requantize(result, base_keep + (name,), calibration)
        variants[name] = (qm.module, qm.backend)
    _stage(progress, "sensitivity: re-quantizing", 1.0)
    ev = _evaluate_variants(result, variants, max_images, progress, "sensitivity: evaluating")
    ref_fp32 = _scores(ev["labels"], ev["fp32"], ev["fp32"])["accuracy"]
    ref_int8 = _scores(ev["labels"], ev["int8"], ev["fp32"])["accuracy"]
    rows = []
    for name in layers:
        s = _scores(ev["labels"], ev["preds"][name], ev["fp32"], ref_fp32)
        rows.append(
            {
                "layer": name,
                "keep_fp32": list(base_keep + (name,)),
                **s,
                "gain_points": 100.0 * (s["accuracy"] - ref_int8),
                "fp32_accuracy": ref_fp32,
                "int8_accuracy": ref_int8,
                "n_images": ev["n"],
            }
        )
    rows.sort(key=lambda r: (-r["gain_points"], -r["agreement"], LAYER_NAMES.index(r["layer"])))
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return rows


def greedy_mixed_precision(
    result,
    target_drop_points: float,
    progress: Progress | None = None,
    max_images: int | None = VARIANT_IMAGES,
    ranking: list[dict] | None = None,
) -> dict:
    """Keep the fewest layers in FP32 (most sensitive first) until the drop <= target.

    Layers are added in the order of ``sensitivity`` (computed unless ``ranking`` is given);
    each step re-quantizes with the growing ``keep_fp32`` and is measured on the same images.
    """
    if not math.isfinite(target_drop_points) or target_drop_points < 0:
        raise InputError(f"target drop must be a number of points >= 0, got {target_drop_points}")
    keep = tuple(result.quantized.recipe.keep_fp32)
    # The run's own predictions on the same image prefix are the starting point.
    n = len(_eval_items(result, max_images))
    ev = result.evaluation
    labels, fp32, int8 = ev.labels[:n], ev.fp32.top1[:n], ev.quant.top1[:n]
    fp32_acc = float((fp32 == labels).mean())
    int8_acc = float((int8 == labels).mean())
    steps = [
        {
            "keep_fp32": list(keep),
            "accuracy": int8_acc,
            "agreement": float((int8 == fp32).mean()),
            "drop_points": 100.0 * (fp32_acc - int8_acc),
            "size_bytes": result.int8.size_bytes,
        }
    ]
    order: list[str] = []
    if steps[-1]["drop_points"] > target_drop_points:  # otherwise nothing to search
        _check_requantizable(result, "mixed precision search")
        ranking = ranking or sensitivity(result, progress=progress, max_images=max_images)
        order = [row["layer"] for row in ranking]
    calibration = result.calibration if order else None
    for i, name in enumerate(order):
        if steps[-1]["drop_points"] <= target_drop_points:
            break
        keep = keep + (name,)
        qm = _requantize(result, keep, calibration)
        ev = _evaluate_variants(
            result, {"v": (qm.module, qm.backend)}, max_images, None, "mixed precision"
        )
        steps.append(
            {
                "keep_fp32": [layer for layer in LAYER_NAMES if layer in keep],
                **_scores(ev["labels"], ev["preds"]["v"], ev["fp32"], fp32_acc),
                "size_bytes": _state_bytes(qm.module),
            }
        )
        _stage(progress, "mixed precision search", (i + 1) / max(1, len(order)))
    reached = steps[-1]["drop_points"] <= target_drop_points
    return {
        "target_drop_points": float(target_drop_points),
        "keep_fp32": steps[-1]["keep_fp32"],
        "steps": steps,
        "reached": reached,
        "fp32_accuracy": fp32_acc,
        "n_images": n,
        "ranking": order,
    }


def _state_bytes(module: nn.Module) -> int:
    from aslquant.measure import serialized_size

    return serialized_size(module)


# --- bit-width sweep (simulated) -------------------------------------------------------------


def _weight_fake_quant(w: torch.Tensor, bits: int, per_channel: bool, symmetric: bool):
    """Fake-quantize weights to signed ``bits`` like torch's weight observers would."""
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    dims = tuple(range(1, w.dim()))
    if per_channel:
        lo = w.amin(dim=dims).clamp(max=0)
        hi = w.amax(dim=dims).clamp(min=0)
    else:
        lo, hi = w.min().clamp(max=0).reshape(1), w.max().clamp(min=0).reshape(1)
    if symmetric:
        scale = torch.maximum(-lo, hi) / ((qmax - qmin) / 2)
        zp = torch.zeros_like(scale, dtype=torch.int32)
    else:
        scale = (hi - lo) / (qmax - qmin)
        zp = (qmin - torch.round(lo / scale.clamp(min=1e-12))).clamp(qmin, qmax).to(torch.int32)
    scale = scale.clamp(min=1e-12).float()
    if per_channel:
        return torch.fake_quantize_per_channel_affine(w, scale, zp, 0, qmin, qmax)
    return torch.fake_quantize_per_tensor_affine(w, float(scale), int(zp), qmin, qmax)


def _activation_ranges(result) -> tuple[dict, str]:
    """Calibrated (lo, hi) of the input and of each layer output, and where they came from.

    From the quantized model's own scales and zero points when it has them (the observer's
    range: 0..127 with reduce_range, else 0..255); otherwise min/max of the FP32 activations
    over the calibration images.
    """
    qmodel = result.quantized.module
    reduce = result.quantized.recipe.effective_reduce_range
    names = [n for n in LAYER_NAMES if _layer_module(qmodel, n) is not None]
    x = _activation_tensor(result, 8)
    ranges: dict[str, tuple[float, float]] = {}
    spec = result.quantized.recipe.method_spec
    if spec.uses_observers and spec.has_layer_modules and names:
        cap = _Capture(qmodel, names)
        try:
            with engine_session(result.quantized.backend), torch.inference_mode():
                qmodel(x)
        finally:
            cap.remove()
        first = _qparams(cap.inputs.get("conv1"))
        if first is not None and all(_qparams(cap.outputs.get(n)) for n in LAYER_NAMES):
            top = 127 if reduce else 255
            for key, t in [("input", cap.inputs["conv1"])] + [
                (n, cap.outputs[n]) for n in LAYER_NAMES
            ]:
                p = _qparams(t)
                ranges[key] = (
                    (0 - p["zero_point"]) * p["scale"],
                    (top - p["zero_point"]) * p["scale"],
                )
            return ranges, "quantized model's calibrated scales and zero points"
    cap = _Capture(result.fp32_model, list(LAYER_NAMES))
    x = _activation_tensor(result, 64)
    lo = dict.fromkeys(["input", *LAYER_NAMES], math.inf)
    hi = dict.fromkeys(["input", *LAYER_NAMES], -math.inf)
    try:
        with torch.inference_mode():
            for chunk in torch.split(x, 16):
                result.fp32_model(chunk)
                lo["input"] = min(lo["input"], float(chunk.min()))
                hi["input"] = max(hi["input"], float(chunk.max()))
                for n in LAYER_NAMES:
                    t = _post_relu(n, cap.outputs[n])
                    lo[n], hi[n] = min(lo[n], float(t.min())), max(hi[n], float(t.max()))
    finally:
        cap.remove()
    ranges = {k: (min(lo[k], 0.0), max(hi[k], 0.0)) for k in lo}
    return ranges, "min/max of FP32 activations over the calibration images"


def _fq_act(t: torch.Tensor, rng: tuple[float, float], bits: int) -> torch.Tensor:
    lo, hi = min(rng[0], 0.0), max(rng[1], 0.0)
    qmax = 2**bits - 1
    scale = max((hi - lo) / qmax, 1e-12)
    zp = int(min(max(round(-lo / scale), 0), qmax))
    return torch.fake_quantize_per_tensor_affine(t, scale, zp, 0, qmax)


class _Simulated(nn.Module):
    """CustomCNN in float with weights and activations fake-quantized to ``bits``."""

    def __init__(self, fp32: CustomCNN, bits: int, ranges: dict, recipe) -> None:
        super().__init__()
        self.net = copy.deepcopy(fp32).eval()
        self.bits = bits
        self.ranges = ranges
        per_channel = recipe.weight_observer == "per-channel"
        symmetric = recipe.qscheme == "symmetric"
        with torch.no_grad():
            for name in LAYER_NAMES:
                if name in recipe.keep_fp32:
                    continue
                layer = getattr(self.net, name)
                layer.weight.copy_(_weight_fake_quant(layer.weight, bits, per_channel, symmetric))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, b, r = self.net, self.bits, self.ranges

        def q(t: torch.Tensor, key: str) -> torch.Tensor:
            return _fq_act(t, r[key], b)

        x = q(x, "input")
        x = n.pool(q(F.relu(n.conv1(x)), "conv1"))
        x = n.pool(q(F.relu(n.conv2(x)), "conv2"))
        x = n.pool(q(F.relu(n.conv3(x)), "conv3"))
        x = n.pool(q(F.relu(n.conv4(x)), "conv4"))
        # The quantized average pool re-rounds onto its input's grid.
        x = torch.flatten(q(n.avgpool(x), "conv4"), 1)
        x = q(F.relu(n.fc1(x)), "fc1")
        return q(n.fc2(x), "fc2")


def bit_sweep(
    result,
    bits: tuple[int, ...] = (8, 6, 5, 4, 3, 2),
    progress: Progress | None = None,
    max_images: int | None = VARIANT_IMAGES,
) -> list[dict]:
    """Simulated (fake-quant) accuracy and SQNR with weights and activations at N bits.

    Weights follow the run's recipe granularity and scheme (per-channel symmetric by default)
    at N bits; activations are per tensor over the run's calibrated ranges re-divided into
    2^N levels. Float math throughout: these rows are ``simulated``, not INT8 kernels.
    """
    bits = tuple(int(b) for b in bits)
    bad = [b for b in bits if not 2 <= b <= 16]
    if bad or not bits:
        raise InputError(f"bit widths must be between 2 and 16, got {list(bits)}")
    recipe = result.quantized.recipe
    ranges, source = _activation_ranges(result)
    variants = {}
    weight_sqnr = {}
    for b in bits:
        sim = _Simulated(result.fp32_model, b, ranges, recipe)
        variants[b] = (sim, None)
        sig = noise = 0.0
        for name in LAYER_NAMES:
            if name in recipe.keep_fp32:
                continue
            w = getattr(result.fp32_model, name).weight.detach().double()
            wq = getattr(sim.net, name).weight.detach().double()
            sig += float(w.pow(2).sum())
            noise += float((wq - w).pow(2).sum())
        weight_sqnr[b] = _finite_or_none(sqnr_db(sig, noise))
    ev = _evaluate_variants(
        result, variants, max_images, progress, "bit sweep (simulated)", keep_logits=True
    )
    int8 = _scores(ev["labels"], ev["int8"], ev["fp32"])
    fp32_acc = _scores(ev["labels"], ev["fp32"], ev["fp32"])["accuracy"]
    rows = []
    for b in bits:
        rows.append(
            {
                "bits": b,
                **_scores(ev["labels"], ev["preds"][b], ev["fp32"], fp32_acc),
                "weight_sqnr_db": weight_sqnr[b],
                "activation_sqnr_db": ev["logit_sqnr"][b],
                "simulated": True,
                "label": f"{b}-bit (simulated)",
                "fp32_accuracy": fp32_acc,
                "int8_accuracy": int8["accuracy"],
                "n_images": ev["n"],
                "range_source": source,
            }
        )
    return rows


# --- config sweep and QAT vs PTQ -------------------------------------------------------------

#: The default config grid: every activation x weight observer for static on x86.
DEFAULT_GRID: dict[str, list[str]] = {
    "method": [methods.DEFAULT_METHOD],
    "backend": ["x86"],
    "act_observer": ["minmax", "moving-average", "histogram"],
    "weight_observer": ["minmax", "per-channel"],
}


def _grid_configs(config, grid: dict) -> list:
    from itertools import product

    unknown = sorted(set(grid) - set(DEFAULT_GRID) - {"qscheme", "reduce_range"})
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
    config,
    grid: dict | None = None,
    progress: Progress | None = None,
    latency_runs: int | None = None,
) -> list[dict]:
    """Accuracy, latency and size for every recipe in a grid: the data of a Pareto plot.

    Inputs are loaded, the FP32 model evaluated and timed once; each recipe is quantized on the
    same calibration images, evaluated on the same evaluation images and timed in this process.
    The first row is the FP32 reference (``method`` "fp32").
    """
    from aslquant.measure import (
        accuracy,
        evaluate_models,
        fp32_runner,
        latency_profile,
        serialized_size,
    )
    from aslquant.run import load_inputs

    grid = grid or {}
    recipes = _grid_configs(config, grid)
    needs = max(
        (r.calib_images for _, r, _ in recipes if r is not None), default=config.recipe.calib_images
    )
    base = dataclasses.replace(config, recipe=config.recipe.with_changes(calib_images=needs))
    inputs = load_inputs(base)
    pp = config.preprocess
    calibration = data_mod.load_tensors(list(inputs.calib_items), pp).x
    runs = latency_runs or config.latency_runs
    rows = []
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

    # The FP32 reference once, up front: every recipe's agreement is against it.
    _stage(progress, "sweep: FP32 reference", 0.0)
    fp32_eval, fp32_lat = evaluate(fp32_runner(inputs.model), None)
    for i, (changes, recipe, error) in enumerate(recipes):
        _stage(progress, f"sweep {i + 1}/{len(recipes)}", i / total)
        row = {
            "method": changes.get("method", config.recipe.method),
            "backend": changes.get("backend", config.recipe.backend),
            "act_observer": changes.get("act_observer", config.recipe.act_observer),
            "weight_observer": changes.get("weight_observer", config.recipe.weight_observer),
        }
        if recipe is not None:
            row["label"] = recipe.describe()
        failed = {"accuracy": None, "b1_p50": None, "b32_p50": None, "size_bytes": None}
        if error is not None:
            label = " / ".join(map(str, changes.values()))
            rows.append({**row, **failed, "label": label, "error": error})
            continue
        try:
            qm = quantize(
                inputs.model, recipe, calibration[: recipe.calib_images], input_size=pp.input_size
            )
        except UnsupportedCombination as err:
            rows.append({**row, **failed, "error": str(err)})
            continue
        ev, lat = evaluate(qm.module, qm.backend)
        acc = accuracy(ev.labels, ev.predictions)
        rows.append(
            {
                **row,
                "accuracy": acc["accuracy"],
                "top5": acc["top5"],
                "agreement": float((ev.predictions.top1 == fp32_eval.predictions.top1).mean()),
                "b1_p50": lat["b1_p50"],
                "b1_p95": lat["b1_p95"],
                "b32_p50": lat["b32_p50"],
                "b32_p95": lat["b32_p95"],
                "size_bytes": serialized_size(qm.module),
                "n_eval": ev.n,
                "recipe": recipe.resolved().to_dict(),
            }
        )
    lat = fp32_lat
    acc = accuracy(fp32_eval.labels, fp32_eval.predictions)
    reference = {
        "method": "fp32",
        "backend": "-",
        "act_observer": "-",
        "weight_observer": "-",
        "label": "FP32 (reference)",
        "accuracy": acc["accuracy"],
        "top5": acc["top5"],
        "agreement": 1.0,
        "b1_p50": lat["b1_p50"],
        "b1_p95": lat["b1_p95"],
        "b32_p50": lat["b32_p50"],
        "b32_p95": lat["b32_p95"],
        "size_bytes": serialized_size(inputs.model),
        "n_eval": fp32_eval.n,
        "reference": True,
    }
    _stage(progress, "sweep done", 1.0)
    return [reference, *rows]


def qat_vs_ptq(config, epochs: int, progress: Progress | None = None) -> dict:
    """QAT's converted-model accuracy after every epoch next to post-training static.

    Both start from the same FP32 model with the same observers and calibration images; QAT
    fine-tunes on the run's training images (the calibration images unless --train-data).
    """
    from aslquant.run import execute

    if epochs < 1:
        raise InputError(f"QAT epochs must be at least 1, got {epochs}")
    qat_method = methods.names(lambda m: m.trains)[0]
    qat_cfg = dataclasses.replace(
        config, recipe=config.recipe.with_changes(method=qat_method, qat_epochs=int(epochs))
    )
    ptq_cfg = dataclasses.replace(
        config, recipe=config.recipe.with_changes(method=methods.DEFAULT_METHOD)
    )

    def part(name: str, lo: float, hi: float) -> Progress | None:
        if progress is None:
            return None
        return lambda stage, f: progress(f"{name}: {stage}", lo + (hi - lo) * f)

    ptq = execute(ptq_cfg, progress=part("PTQ", 0.0, 0.3))
    qat = execute(qat_cfg, progress=part("QAT", 0.3, 1.0))
    return {
        "epochs": int(epochs),
        "fp32_accuracy": ptq.fp32.accuracy,
        "ptq": {
            "accuracy": ptq.int8.accuracy,
            "agreement": ptq.agreement,
            "recipe": ptq_cfg.recipe.describe(),
            "drop_points": ptq.accuracy_drop_points,
        },
        "qat": {
            "accuracy": qat.int8.accuracy,
            "agreement": qat.agreement,
            "recipe": qat_cfg.recipe.describe(),
            "drop_points": qat.accuracy_drop_points,
            "history": list(qat.qat_history),
        },
        "n_eval": ptq.n_eval,
        "n_train": qat.n_calib if not config.train_data else None,
    }
