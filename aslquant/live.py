"""Live webcam prediction: the newest frame only, on one inference worker per browser session.

streamlit-webrtc hands every decoded camera frame to ``LiveProcessor.on_frame`` on its event
loop thread (the Predict page streams SENDONLY into a sink track, so nothing is encoded and sent
back). ``on_frame`` only stamps the arrival time and puts the frame into a one-slot mailbox: a
frame still waiting there is replaced and counted as dropped, so the worker always takes the
newest frame and the video threads never wait for the models. The worker crops and resizes the
centre square (``aslquant.predict.square_input``), runs FP32 then the quantized model with
``LIVE_THREADS`` intra-op thread(s) inside the engine lock, and records the frame's end-to-end
latency: from its arrival to both predictions being ready. The page polls ``snapshot()``.

Everything the two threads share sits behind one lock; the processor holds no Streamlit object,
so the page keeps one per browser session in ``st.session_state`` and the callback never
touches the session.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from aslquant.errors import InputError
from aslquant.predict import ModelPair, PairPrediction, run_pair, square_input

#: No STUN/TURN servers: there is no internet, and host candidates on localhost suffice.
RTC_CONFIGURATION: dict = {"iceServers": []}
#: Intra-op threads for live frames. One: on a 2-core machine the browser and the WebRTC
#: decoder need the other core, and a 2-thread OpenMP team that cannot own both cores spins
#: and waits for the busy one (``bench/live.py --threads 2`` shows what that costs).
LIVE_THREADS = 1
#: Environment variable overriding ``LIVE_THREADS`` for a server (used by the benchmark).
THREADS_ENV = "ASLQUANT_LIVE_THREADS"
#: Rates and latency percentiles are over the frames processed in the last this many seconds.
WINDOW_SECONDS = 30.0
#: The worker thread ends after this long without frames, and starts again with the next one.
IDLE_SECONDS = 2.0
#: Bound on the per-frame records kept (30 s at 60 frames/s fits).
MAX_RECORDS = 2048


def live_threads() -> int:
    """``LIVE_THREADS``, or the positive integer in ``$ASLQUANT_LIVE_THREADS``."""
    raw = os.environ.get(THREADS_ENV, "").strip()
    if not raw:
        return LIVE_THREADS
    if not raw.isdigit() or not 1 <= int(raw) <= 64:
        raise InputError(f"{THREADS_ENV} must be a whole number from 1 to 64, got {raw!r}")
    return int(raw)


def media_constraints(input_size: int) -> dict:
    """getUserMedia constraints for the stream sent to the server (and the local preview).

    The model looks at the centre square only, resized to ``input_size``; a capture whose short
    side is about that size costs the browser's encoder and the server's decoder a quarter of
    what 640x480 does, and loses nothing the model would see.
    """
    height = max(240, input_size)
    return {
        "video": {
            "width": {"ideal": round(height * 4 / 3)},
            "height": {"ideal": height},
            "frameRate": {"ideal": 30},
        },
        "audio": False,
    }


class LatestFrameSlot:
    """A one-slot mailbox: ``put`` replaces what is waiting, ``take`` waits for the newest."""

    def __init__(self) -> None:
        self._ready = threading.Condition(threading.Lock())
        self._item: Any = None
        self._full = False
        self._closed = False

    def put(self, item: Any) -> bool:
        """Leave ``item`` for the taker; True when it replaced an item nobody took (a drop)."""
        with self._ready:
            replaced = self._full
            self._item, self._full = item, True
            self._ready.notify()
            return replaced

    def take(self, timeout: float | None = None) -> Any:
        """The waiting item (the slot is then empty), or None after ``timeout`` or ``close``."""
        with self._ready:
            self._ready.wait_for(lambda: self._full or self._closed, timeout)
            if not self._full:
                return None
            item, self._item, self._full = self._item, None, False
            return item

    def clear(self) -> bool:
        """Forget the waiting item; True if there was one."""
        with self._ready:
            had, self._item, self._full = self._full, None, False
            return had

    @property
    def pending(self) -> bool:
        with self._ready:
            return self._full

    def close(self) -> None:
        """Wake a waiting ``take`` for good (it returns None)."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()


@dataclass(frozen=True)
class _Arrival:
    frame: Any  # av.VideoFrame from streamlit-webrtc, or an HxWx3 uint8 RGB array
    arrived: float  # time.perf_counter() when on_frame got it
    sequence: int  # 1, 2, ... since the models were set
    generation: int  # which set_models call it belongs to


@dataclass(frozen=True)
class FrameRecord:
    """Timings of one processed frame, in milliseconds except the two clock readings."""

    sequence: int
    arrived: float
    done: float
    queued_ms: float  # arrival -> the worker took it
    preprocess_ms: float  # colour conversion, centre crop, resize, scaling
    engine_wait_ms: float  # waiting for the process-wide engine lock
    fp32_ms: float
    int8_ms: float

    @property
    def e2e_ms(self) -> float:
        return (self.done - self.arrived) * 1e3


@dataclass(frozen=True)
class LiveStats:
    """What the page shows about the stream.

    Counts are since the models were set (or the stream started); rates and percentiles are
    over the frames processed in the last ``window_seconds`` before the latest one.
    """

    label: str
    threads: int
    received: int
    processed: int
    dropped: int
    failed: int
    fps: float
    window_frames: int
    window_seconds: float
    e2e_ms: tuple[float, float]  # (p50, p95)
    fp32_ms: tuple[float, float]
    int8_ms: tuple[float, float]
    preprocess_ms: tuple[float, float]
    wait_ms: tuple[float, float]  # queued + engine lock, the part of e2e spent not computing
    engine_wait_ms: tuple[float, float]  # the engine lock alone: other work holding it
    fp32: list[tuple[str, float]]
    int8: list[tuple[str, float]]
    sequence: int  # the frame the top-3 lists belong to
    frame_size: tuple[int, int] | None  # (width, height) of the frames arriving
    error: str | None = None


def _p50_p95(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    arr = np.asarray(values)
    return float(np.median(arr)), float(np.percentile(arr, 95))


def frame_to_rgb(frame: Any) -> np.ndarray:
    """An HxWx3 uint8 RGB array from an ``av.VideoFrame`` (or an array, returned as is)."""
    if isinstance(frame, np.ndarray):
        return frame
    return frame.to_ndarray(format="rgb24")


def _frame_size(frame: Any) -> tuple[int, int]:
    if isinstance(frame, np.ndarray):
        return int(frame.shape[1]), int(frame.shape[0])
    return int(frame.width), int(frame.height)


class LiveProcessor:
    """Predicts on the newest frame of a stream with both models; safe to call from any thread.

    ``on_frame`` is the streamlit-webrtc sink callback; ``set_models`` and ``snapshot`` are
    called by the page script; a worker thread of its own does the inference.
    """

    def __init__(
        self,
        threads: int | None = None,
        window_seconds: float = WINDOW_SECONDS,
        idle_seconds: float = IDLE_SECONDS,
    ) -> None:
        self.threads = threads if threads is not None else live_threads()
        self.window_seconds = window_seconds
        self._idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # notified after each frame's outcome
        self._slot = LatestFrameSlot()
        self._worker: threading.Thread | None = None
        self._closed = False
        self._pair: ModelPair | None = None
        self._generation = 0
        self._reset()

    def _reset(self) -> None:
        self._received = self._processed = self._dropped = self._failed = 0
        self._records: deque[FrameRecord] = deque(maxlen=MAX_RECORDS)
        self._latest: PairPrediction | None = None
        self._latest_sequence = 0
        self._frame_size: tuple[int, int] | None = None
        self._error: str | None = None

    # --- the page's side ---------------------------------------------------------------------

    def set_models(self, pair: ModelPair) -> None:
        """Use ``pair`` from the next frame on; counts and statistics restart when it changes.

        A frame waiting for the worker is forgotten and a frame in flight is not recorded, so
        no prediction of the previous models is shown under the new ones.
        """
        with self._lock:
            if self._pair is not pair:
                self._pair = pair
                self._generation += 1
                self._slot.clear()
                self._reset()
                self._changed.notify_all()

    @property
    def pair(self) -> ModelPair | None:
        with self._lock:
            return self._pair

    def snapshot(self) -> LiveStats | None:
        """The latest predictions and statistics, or None before any frame was received."""
        with self._lock:
            pair = self._pair
            if pair is None or (self._received == 0 and self._error is None):
                return None
            records = list(self._records)
            latest, sequence = self._latest, self._latest_sequence
            counts = (self._received, self._processed, self._dropped, self._failed)
            size, error = self._frame_size, self._error
        if records:
            end = records[-1].done
            records = [r for r in records if r.done >= end - self.window_seconds]
        span = records[-1].done - records[0].done if len(records) > 1 else 0.0
        return LiveStats(
            label=pair.label,
            threads=self.threads,
            received=counts[0],
            processed=counts[1],
            dropped=counts[2],
            failed=counts[3],
            fps=(len(records) - 1) / span if span > 0 else 0.0,
            window_frames=len(records),
            window_seconds=self.window_seconds,
            e2e_ms=_p50_p95([r.e2e_ms for r in records]),
            fp32_ms=_p50_p95([r.fp32_ms for r in records]),
            int8_ms=_p50_p95([r.int8_ms for r in records]),
            preprocess_ms=_p50_p95([r.preprocess_ms for r in records]),
            wait_ms=_p50_p95([r.queued_ms + r.engine_wait_ms for r in records]),
            engine_wait_ms=_p50_p95([r.engine_wait_ms for r in records]),
            fp32=list(latest.fp32) if latest else [],
            int8=list(latest.int8) if latest else [],
            sequence=sequence,
            frame_size=size,
            error=error,
        )

    def drain(self, timeout: float) -> bool:
        """Wait until every received frame was processed, dropped or failed (for tests/benches)."""
        with self._changed:
            return self._changed.wait_for(
                lambda: self._received == self._processed + self._dropped + self._failed,
                timeout,
            )

    def close(self) -> None:
        """Stop the worker for good; later frames are ignored."""
        with self._lock:
            self._closed = True
            worker = self._worker
        self._slot.close()
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout=10)

    # --- the stream's side -------------------------------------------------------------------

    def on_frame(self, frame: Any) -> None:
        """streamlit-webrtc sink callback: hand the frame to the worker and return at once."""
        arrived = time.perf_counter()
        with self._lock:
            if self._closed or self._pair is None:
                return
            self._received += 1
            item = _Arrival(frame, arrived, self._received, self._generation)
            if self._slot.put(item):
                self._dropped += 1
                self._changed.notify_all()
            if self._worker is None:
                self._worker = threading.Thread(
                    target=self._work, name="aslquant-live", daemon=True
                )
                self._worker.start()

    def stream_ended(self) -> None:
        """The browser stopped: a frame still waiting is dropped; the worker idles out."""
        with self._lock:
            if self._slot.clear():
                self._dropped += 1
                self._changed.notify_all()

    def _work(self) -> None:
        while True:
            item = self._slot.take(timeout=self._idle_seconds)
            if item is None:
                # on_frame puts and starts workers under the lock, so checking the slot here
                # under it cannot strand a frame.
                with self._lock:
                    if self._closed or not self._slot.pending:
                        self._worker = None
                        return
                continue
            self._process(item)

    def _process(self, item: _Arrival) -> None:
        taken = time.perf_counter()
        with self._lock:
            pair = self._pair if item.generation == self._generation else None
        if pair is None:
            return  # the models changed after it arrived; set_models restarted the counts
        try:
            rgb = frame_to_rgb(item.frame)
            x = square_input(rgb, pair.preprocess)
            prepared = time.perf_counter()
            prediction = run_pair(pair, x, threads=self.threads)
        except Exception as err:  # a bad frame must not end the stream; the page says why
            with self._lock:
                if item.generation == self._generation:
                    self._failed += 1
                    self._error = f"{type(err).__name__}: {err}"
                    self._changed.notify_all()
            return
        done = time.perf_counter()
        record = FrameRecord(
            sequence=item.sequence,
            arrived=item.arrived,
            done=done,
            queued_ms=(taken - item.arrived) * 1e3,
            preprocess_ms=(prepared - taken) * 1e3,
            engine_wait_ms=prediction.engine_wait_ms,
            fp32_ms=prediction.fp32_ms,
            int8_ms=prediction.int8_ms,
        )
        with self._lock:
            if item.generation != self._generation:
                return  # models switched while this frame ran: not theirs to show
            self._processed += 1
            self._records.append(record)
            self._latest, self._latest_sequence = prediction, item.sequence
            self._frame_size = _frame_size(item.frame)
            self._error = None
            self._changed.notify_all()
