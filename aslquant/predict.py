"""One image in, both models' top-k and latency out (no Streamlit; the live view and benches use it).

Also the two things the Predict page says about a prediction besides its class: how confident
the model is (and when that confidence means it is guessing), and what the model was trained on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from aslquant.data import Preprocess
from aslquant.demos import trained_on
from aslquant.engine_lock import engine_session
from aslquant.errors import InputError
from aslquant.measure import latency_ms
from aslquant.quantize import QuantizedModel

#: A top-1 probability below this is shown as a guess.
GUESS_BELOW = 0.5
#: A top-1 lead over the runner-up smaller than this (in probability) is shown as a guess.
GUESS_MARGIN = 0.15


@dataclass(frozen=True)
class ModelPair:
    """What a prediction needs: both models, how to preprocess, and the class names."""

    fp32: nn.Module
    quantized: QuantizedModel
    preprocess: Preprocess
    class_names: tuple[str, ...]
    threads: int = 1
    label: str = ""
    checkpoint: str = ""

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
            checkpoint=str(result.config.checkpoint),
        )


@dataclass(frozen=True)
class PairPrediction:
    """Top-k (class, probability) of each model and the latency of each in milliseconds."""

    fp32: list[tuple[str, float]]
    int8: list[tuple[str, float]]
    fp32_ms: float
    int8_ms: float
    timing: str  # how the latency was measured, shown next to it
    engine_wait_ms: float = 0.0  # time spent waiting for the process-wide engine lock

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


def guess_reason(rows: list[tuple[str, float]]) -> str | None:
    """Why a top-k list is a guess (low top-1 or a close runner-up), or None if it is not."""
    if not rows:
        return None
    p1 = rows[0][1]
    if p1 < GUESS_BELOW:
        return f"top-1 is only {100 * p1:.0f}% (below {100 * GUESS_BELOW:.0f}%)"
    if len(rows) > 1 and p1 - rows[1][1] < GUESS_MARGIN:
        return (
            f"{rows[0][0]} leads {rows[1][0]} by {100 * (p1 - rows[1][1]):.0f} points "
            f"(less than {100 * GUESS_MARGIN:.0f})"
        )
    return None


def provenance(checkpoint: str) -> str:
    """One line saying what the model in ``checkpoint`` was trained on, for the Predict page."""
    shipped = trained_on(checkpoint) if checkpoint else None
    if shipped is not None:
        return f"The loaded model is a shipped demo, trained on {shipped}."
    return (
        "The loaded model is your own checkpoint: aslquant does not know what images it was "
        "trained on, so judge its predictions against images like its training data."
    )


def center_square(rgb: np.ndarray) -> np.ndarray:
    """The largest centred square of an HxWx3 frame (where the hand is expected); a view."""
    h, w = rgb.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return rgb[top : top + side, left : left + side]


def square_input(rgb: np.ndarray, preprocess: Preprocess) -> torch.Tensor:
    """A webcam frame's centre square -> the (1, 3, s, s) network input, with one resize.

    Exactly ``preprocess.apply`` of the cropped square: for a square image both of its modes
    (``Resize((s, s))`` and ``Resize(s)`` + ``CenterCrop(s)``) are one bilinear resize to s x s,
    which is done here directly; ``apply`` then skips its own resize and only scales. Pillow's
    ``resize(box=...)`` would skip the crop copy too, but it filters with pixels outside the
    box, so it does not give the tensor the models see for the cropped square.
    """
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3:
        raise InputError(f"frame: expected an HxWx3 uint8 array, got {getattr(rgb, 'shape', rgb)}")
    square = Image.fromarray(np.ascontiguousarray(center_square(rgb)[:, :, :3]), "RGB")
    s = preprocess.input_size
    if square.size != (s, s):
        square = square.resize((s, s), Image.BILINEAR)
    return preprocess.apply(square).unsqueeze(0)


def to_tensor(image: Image.Image | np.ndarray, preprocess: Preprocess) -> torch.Tensor:
    """A PIL image or an RGB uint8 array -> the (1, 3, s, s) network input."""
    if isinstance(image, np.ndarray):
        return preprocess.apply_array(image).unsqueeze(0)
    return preprocess.apply(image).unsqueeze(0)


def run_pair(pair: ModelPair, x: torch.Tensor, *, k: int = 3, threads: int) -> PairPrediction:
    """Both models once on the prepared input ``x``, each call timed, under one engine session.

    The session selects the quantized model's engine (its packed weights belong to it) and
    sets ``threads`` intra-op threads for both calls, and holds the process-wide engine lock
    only for these two calls.
    """
    asked = time.perf_counter()
    with engine_session(pair.quantized.backend, threads), torch.inference_mode():
        wait_ms = (time.perf_counter() - asked) * 1e3
        times, outs = [], []
        for model in (pair.fp32, pair.quantized.module):
            start = time.perf_counter()
            outs.append(model(x))
            times.append((time.perf_counter() - start) * 1e3)
    return PairPrediction(
        fp32=top_k(outs[0][0], pair.class_names, k),
        int8=top_k(outs[1][0], pair.class_names, k),
        fp32_ms=times[0],
        int8_ms=times[1],
        timing=f"one call, batch 1, {threads} thread(s)",
        engine_wait_ms=wait_ms,
    )


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
    prediction = run_pair(pair, x, k=k, threads=pair.threads)
    if not timing_runs:
        return prediction
    with engine_session(pair.quantized.backend, pair.threads):
        fp32_ms, int8_ms = (
            latency_ms(model, x, runs=timing_runs, threads=pair.threads)["p50"]
            for model in (pair.fp32, pair.quantized.module)
        )
    return PairPrediction(
        fp32=prediction.fp32,
        int8=prediction.int8,
        fp32_ms=fp32_ms,
        int8_ms=int8_ms,
        timing=f"median of {timing_runs} calls, batch 1, {pair.threads} thread(s)",
    )
