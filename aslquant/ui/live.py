"""Live webcam prediction: a thread-safe frame processor for streamlit-webrtc.

streamlit-webrtc calls the frame callback on its own worker thread, never the script thread.
So the callback touches only one ``LiveProcessor`` (made once per browser session): it runs
both models on the frame's centre square, and keeps the latest top-3 of each model, their
per-frame latencies and the frame rate behind a lock. The page polls ``snapshot()``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from aslquant.ui.predict import ModelPair, center_square, predict_pair

#: No STUN/TURN servers: there is no internet, and host candidates on localhost suffice.
RTC_CONFIGURATION: dict = {"iceServers": []}
MEDIA_CONSTRAINTS: dict = {"video": True, "audio": False}


@dataclass(frozen=True)
class LiveStats:
    """What the page shows about the stream; latencies over the last ``window`` frames."""

    frames: int
    fps: float
    fp32: list[tuple[str, float]]
    int8: list[tuple[str, float]]
    fp32_ms_p50: float
    fp32_ms_p95: float
    int8_ms_p50: float
    int8_ms_p95: float
    window: int
    label: str
    error: str | None = None


class LiveProcessor:
    """Runs both models on every frame it is given; safe to call from any thread."""

    def __init__(self, window: int = 30) -> None:
        self._lock = threading.Lock()
        self._pair: ModelPair | None = None
        self._window = window
        self._reset()

    def _reset(self) -> None:
        self._frames = 0
        self._stamps: deque[float] = deque(maxlen=self._window + 1)
        self._fp32_ms: deque[float] = deque(maxlen=self._window)
        self._int8_ms: deque[float] = deque(maxlen=self._window)
        self._latest = None
        self._error: str | None = None

    def set_models(self, pair: ModelPair) -> None:
        """Use ``pair`` from the next frame on (statistics restart when the models change)."""
        with self._lock:
            if self._pair is not pair:
                self._pair = pair
                self._reset()

    @property
    def pair(self) -> ModelPair | None:
        with self._lock:
            return self._pair

    def process_array(self, rgb: np.ndarray) -> np.ndarray:
        """Predict on one HxWx3 uint8 RGB frame; return the frame with the crop outlined."""
        pair = self.pair
        if pair is None:
            return rgb
        try:
            prediction = predict_pair(pair, np.ascontiguousarray(center_square(rgb)))
        except Exception as err:  # a bad frame must not kill the stream; show why instead
            with self._lock:
                self._error = f"{type(err).__name__}: {err}"
            return rgb
        now = time.perf_counter()
        with self._lock:
            if self._pair is not pair:  # models switched while this frame ran
                return rgb
            self._frames += 1
            self._stamps.append(now)
            self._fp32_ms.append(prediction.fp32_ms)
            self._int8_ms.append(prediction.int8_ms)
            self._latest = prediction
            self._error = None
        return outline_square(rgb)

    def callback(self, frame):
        """streamlit-webrtc ``video_frame_callback``: av.VideoFrame in, av.VideoFrame out."""
        import av

        rgb = frame.to_ndarray(format="rgb24")
        out = self.process_array(rgb)
        new = av.VideoFrame.from_ndarray(out, format="rgb24")
        new.pts, new.time_base = frame.pts, frame.time_base
        return new

    def snapshot(self) -> LiveStats | None:
        """The latest predictions and rolling statistics, or None before the first frame."""
        with self._lock:
            latest, pair = self._latest, self._pair
            if latest is None or pair is None:
                if self._error and pair is not None:
                    return LiveStats(0, 0.0, [], [], *([float("nan")] * 4), self._window,
                                     pair.label, self._error)  # fmt: skip
                return None
            stamps = list(self._stamps)
            fps = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
            f32, i8 = np.array(self._fp32_ms), np.array(self._int8_ms)
            return LiveStats(
                frames=self._frames,
                fps=float(fps),
                fp32=list(latest.fp32),
                int8=list(latest.int8),
                fp32_ms_p50=float(np.median(f32)),
                fp32_ms_p95=float(np.percentile(f32, 95)),
                int8_ms_p50=float(np.median(i8)),
                int8_ms_p95=float(np.percentile(i8, 95)),
                window=len(f32),
                label=pair.label,
                error=self._error,
            )


def outline_square(rgb: np.ndarray, width: int = 3) -> np.ndarray:
    """A copy of the frame with the centre square (the model's view) outlined in green."""
    out = np.array(rgb, copy=True)
    h, w = out.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    green = np.array([40, 220, 90], dtype=out.dtype)
    out[top : top + width, left : left + side] = green
    out[top + side - width : top + side, left : left + side] = green
    out[top : top + side, left : left + width] = green
    out[top : top + side, left + side - width : left + side] = green
    return out
