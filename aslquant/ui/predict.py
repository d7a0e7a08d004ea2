"""One image in, both models' top-k and latency out (no Streamlit; the bench script uses it too)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from aslquant.data import Preprocess
from aslquant.engine_lock import engine_session
from aslquant.measure import latency_ms
from aslquant.quantize import QuantizedModel


@dataclass(frozen=True)
class ModelPair:
    """What a prediction needs: both models, how to preprocess, and the class names."""

    fp32: nn.Module
    quantized: QuantizedModel
    preprocess: Preprocess
    class_names: tuple[str, ...]
    threads: int = 1
    label: str = ""

    @classmethod
    def from_result(cls, result, label: str = "") -> ModelPair:
        """The pair of a RunResult (``aslquant.run.RunResult``)."""
        return cls(
            fp32=result.fp32_model,
            quantized=result.quantized,
            preprocess=result.config.preprocess,
            class_names=tuple(result.class_names),
            threads=result.config.threads,
            label=label,
        )


@dataclass(frozen=True)
class PairPrediction:
    """Top-k (class, probability) of each model and the latency of each in milliseconds."""

    fp32: list[tuple[str, float]]
    int8: list[tuple[str, float]]
    fp32_ms: float
    int8_ms: float
    timing: str  # how the latency was measured, shown next to it

    @property
    def agree(self) -> bool:
        return self.fp32[0][0] == self.int8[0][0]


def top_k(
    logits: torch.Tensor, class_names: tuple[str, ...], k: int = 3
) -> list[tuple[str, float]]:
    """Softmax top-k of one row of logits as (class name, probability)."""
    probs = torch.softmax(logits.float().reshape(-1), dim=0)
    values, indices = probs.topk(min(k, probs.numel()))
    return [(class_names[int(i)], float(v)) for v, i in zip(values, indices, strict=True)]


def center_square(rgb: np.ndarray) -> np.ndarray:
    """The largest centred square of an HxWx3 frame (where the hand is expected)."""
    h, w = rgb.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return rgb[top : top + side, left : left + side]


def to_tensor(image: Image.Image | np.ndarray, preprocess: Preprocess) -> torch.Tensor:
    """A PIL image or an RGB uint8 array -> the (1, 3, s, s) network input."""
    if isinstance(image, np.ndarray):
        return preprocess.apply_array(image).unsqueeze(0)
    return preprocess.apply(image).unsqueeze(0)


def predict_pair(
    pair: ModelPair,
    image: Image.Image | np.ndarray,
    *,
    k: int = 3,
    timing_runs: int = 0,
) -> PairPrediction:
    """Run both models on one image.

    ``timing_runs=0`` times the one call each model makes (what a live frame costs);
    ``timing_runs>=1`` reports the median of that many timed calls after warm-up instead.
    """
    x = to_tensor(image, pair.preprocess)
    backend = pair.quantized.backend
    with engine_session(backend, pair.threads), torch.inference_mode():
        # One session for both calls so the thread count and engine are the same for each.
        times = []
        outs = []
        for model in (pair.fp32, pair.quantized.module):
            start = time.perf_counter()
            outs.append(model(x))
            times.append((time.perf_counter() - start) * 1e3)
        how = "one call"
        if timing_runs:
            times = [
                latency_ms(model, x, runs=timing_runs, threads=pair.threads)["p50"]
                for model in (pair.fp32, pair.quantized.module)
            ]
            how = f"median of {timing_runs} calls"
    return PairPrediction(
        fp32=top_k(outs[0][0], pair.class_names, k),
        int8=top_k(outs[1][0], pair.class_names, k),
        fp32_ms=times[0],
        int8_ms=times[1],
        timing=f"{how}, batch 1, {pair.threads} thread(s)",
    )
