"""The live webcam engine (aslquant.live) and one-image prediction (aslquant.predict).

Real torch throughout: the demo checkpoint quantized on demo images (x86 and qnnpack engines),
real worker threads, real ``av.VideoFrame`` objects like the ones streamlit-webrtc delivers.
Stale frames are made by holding the process-wide engine lock from the test, exactly as another
session's quantization run would.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aslquant import data
from aslquant.demos import default_demo
from aslquant.engine_lock import engine_session
from aslquant.labels import load_labels
from aslquant.live import LatestFrameSlot, LiveProcessor, media_constraints
from aslquant.model import load_checkpoint
from aslquant.predict import (
    GUESS_BELOW,
    GUESS_MARGIN,
    ModelPair,
    center_square,
    guess_reason,
    predict_pair,
    provenance,
    square_input,
    top_k,
)
from aslquant.quantize import quantize
from aslquant.recipe import QuantRecipe
from aslquant.run import DEMO_CHECKPOINT, DEMO_DATA, DEMO_LABELS

ROOT = Path(__file__).resolve().parent.parent
DRAIN_S = 120  # generous: the machine running the tests may be busy


def _demo_image(cls: str = "B") -> Path:
    return sorted((Path(DEMO_DATA) / cls).glob("*.jpg"))[0]


def _webcam_frame(cls: str = "C", size: tuple[int, int] = (640, 480)) -> np.ndarray:
    """A landscape frame with a demo hand in the centre square and grey noise around it."""
    w, h = size
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    side = min(w, h)
    hand = Image.open(_demo_image(cls)).convert("RGB").resize((side, side))
    top, left = (h - side) // 2, (w - side) // 2
    frame[top : top + side, left : left + side] = np.asarray(hand)
    return frame


@pytest.fixture(scope="module")
def pairs() -> dict[str, ModelPair]:
    """The demo model quantized (static, 32 calibration images) for x86 and for qnnpack."""
    names = load_labels(DEMO_LABELS)
    model = load_checkpoint(DEMO_CHECKPOINT, num_labels=len(names))
    image_set = data.load_image_set(DEMO_DATA, names)
    calib_items, _ = data.stratified_split(image_set.items, 32, len(names), seed=0)
    pp = data.Preprocess()
    calib = data.load_tensors(calib_items, pp).x
    out = {}
    for backend in ("x86", "qnnpack"):
        q = quantize(model, QuantRecipe(backend=backend, calib_images=32), calib)
        out[backend] = ModelPair(
            fp32=model,
            quantized=q,
            preprocess=pp,
            class_names=tuple(names),
            threads=1,
            label=backend,
            checkpoint=str(DEMO_CHECKPOINT),
        )
    return out


def _expected(pair: ModelPair, rgb: np.ndarray):
    """Both models' top-3 on the frame's centre square, computed directly."""
    x = pair.preprocess.apply(Image.fromarray(np.ascontiguousarray(center_square(rgb)))).unsqueeze(
        0
    )
    with torch.inference_mode():
        fp32 = top_k(pair.fp32(x)[0], pair.class_names)
    int8 = top_k(pair.quantized(x)[0], pair.class_names)  # under its own engine session
    return fp32, int8


def _same(rows: list[tuple[str, float]], expected: list[tuple[str, float]]) -> bool:
    """Same classes in order, same probabilities up to float rounding (thread counts differ)."""
    return [n for n, _ in rows] == [n for n, _ in expected] and [p for _, p in rows] == (
        pytest.approx([p for _, p in expected], rel=1e-4, abs=1e-6)
    )


# --- the one-slot mailbox ---------------------------------------------------------------------


def test_slot_keeps_only_the_newest_and_reports_replacements() -> None:
    slot = LatestFrameSlot()
    assert slot.put(1) is False  # nothing was waiting
    assert slot.put(2) is True and slot.put(3) is True  # 1 and 2 were never taken
    assert slot.take(timeout=0) == 3
    assert slot.take(timeout=0.05) is None  # empty after a take
    assert slot.put(4) is False
    assert slot.clear() is True and slot.clear() is False
    slot.close()
    started = time.perf_counter()
    assert slot.take(timeout=5) is None
    assert time.perf_counter() - started < 1  # close wakes a waiting take at once


@pytest.mark.slow
def test_stale_frames_are_dropped_and_only_the_newest_is_processed(pairs) -> None:
    pair = pairs["x86"]
    proc = LiveProcessor(threads=1)
    proc.set_models(pair)
    frames = [_webcam_frame(cls) for cls in "ABCDEFGHIJ"]
    try:
        # Another session holds the engine: the worker takes frame 1 and waits inside it,
        # while frames 2..10 arrive faster than it can go.
        with engine_session():
            for frame in frames:
                proc.on_frame(frame)
            time.sleep(0.2)
            busy = proc.snapshot()
            assert (busy.received, busy.processed, busy.dropped) == (10, 0, 8)
        assert proc.drain(DRAIN_S)
        stats = proc.snapshot()
        assert (stats.received, stats.processed, stats.dropped, stats.failed) == (10, 2, 8, 0)
        # The second frame processed is the newest one (frame 10, class J), not a stale one.
        assert stats.sequence == 10
        fp32, int8 = _expected(pair, frames[-1])
        assert _same(stats.fp32, fp32) and _same(stats.int8, int8)
    finally:
        proc.close()


def test_end_to_end_latency_counts_from_the_frame_arrival(pairs) -> None:
    proc = LiveProcessor(threads=1)
    proc.set_models(pairs["x86"])
    hold_s = 0.4
    try:
        with engine_session():  # the frame arrives while another session holds the engine
            proc.on_frame(_webcam_frame())
            time.sleep(hold_s)
        assert proc.drain(DRAIN_S)
        stats = proc.snapshot()
        assert stats.processed == 1
        e2e, model_ms = stats.e2e_ms[0], stats.fp32_ms[0] + stats.int8_ms[0]
        # The wait for the engine counts: the frame was ready hold_s before the models ran.
        assert e2e >= hold_s * 1e3
        assert stats.wait_ms[0] >= hold_s * 1e3 * 0.9
        assert stats.engine_wait_ms[0] >= hold_s * 1e3 * 0.5  # most of it was the lock
        assert model_ms < e2e - hold_s * 1e3 + 1  # model time alone would not explain it
    finally:
        proc.close()


# --- crop and resize --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "preprocess",
    [
        data.Preprocess(),
        data.Preprocess(crop=True),
        data.Preprocess(input_size=96, scale=255, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4)),
        data.Preprocess(input_size=200, bgr=True),
    ],
    ids=["resize", "resize+crop", "small-normalized", "bgr"],
)
@pytest.mark.parametrize("shape", [(480, 640), (640, 480), (241, 333), (224, 224), (720, 1280)])
def test_square_input_is_preprocess_on_the_cropped_square(preprocess, shape) -> None:
    """Exactly equal: the fast path does the one resize Preprocess.apply does on a square."""
    rng = np.random.default_rng(sum(shape))
    rgb = rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    h, w = shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = np.ascontiguousarray(rgb[top : top + side, left : left + side])
    expected = preprocess.apply(Image.fromarray(square, "RGB")).unsqueeze(0)
    got = square_input(rgb, preprocess)
    assert got.shape == (1, 3, preprocess.input_size, preprocess.input_size)
    assert torch.equal(got, expected)


def test_square_input_ignores_what_is_outside_the_square() -> None:
    rgb = np.zeros((480, 640, 3), np.uint8)
    rgb[:, 80:560] = 200
    rgb[:, :80] = 255  # bright bars left and right of the square must not bleed in
    rgb[:, 560:] = 255
    x = square_input(rgb, data.Preprocess())
    assert torch.all(x == torch.tensor(200 / 255, dtype=torch.float32))


# --- the processor with real models -------------------------------------------------------------


def test_av_frames_from_webrtc_are_predicted_like_the_models_do(pairs) -> None:
    av = pytest.importorskip("av")
    pair = pairs["x86"]
    proc = LiveProcessor(threads=1)
    proc.set_models(pair)
    rgb = _webcam_frame("L")
    # What aiortc's decoder hands over: a yuv420p frame.
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
    try:
        proc.on_frame(frame)
        assert proc.drain(DRAIN_S)
        stats = proc.snapshot()
        assert stats.processed == 1 and stats.frame_size == (640, 480) and stats.threads == 1
        fp32, int8 = _expected(pair, frame.to_ndarray(format="rgb24"))
        assert _same(stats.fp32, fp32)
        assert _same(stats.int8, int8)
        assert len(stats.fp32) == len(stats.int8) == 3
        assert stats.e2e_ms[0] >= stats.fp32_ms[0] + stats.int8_ms[0] > 0
    finally:
        proc.close()


@pytest.mark.slow
def test_models_switching_mid_stream_never_mix(pairs) -> None:
    """A feeder thread streams while the page thread switches engines; nothing stale leaks."""
    x86, qnnpack = pairs["x86"], pairs["qnnpack"]
    frame = _webcam_frame("Y")
    proc = LiveProcessor(threads=1, idle_seconds=0.5)
    proc.set_models(x86)
    stop = threading.Event()
    errors: list[BaseException] = []

    def feed() -> None:
        try:
            while not stop.is_set():
                proc.on_frame(frame)
                time.sleep(0.002)
        except BaseException as err:  # surfaced below
            errors.append(err)

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        seen = set()
        for i in range(12):
            time.sleep(0.15)
            stats = proc.snapshot()
            if stats is not None and stats.processed:
                seen.add(stats.label)
            proc.set_models(qnnpack if i % 2 == 0 else x86)
        time.sleep(0.5)
    finally:
        stop.set()
        feeder.join()
    try:
        assert not errors
        assert proc.drain(DRAIN_S)
        stats = proc.snapshot()
        assert stats.label == "x86" and stats.error is None and stats.failed == 0
        assert stats.received == stats.processed + stats.dropped and stats.processed > 0
        assert stats.dropped > 0  # frames came every ~2 ms, faster than both models run
        # The shown predictions are the current pair's, with the INT8 model on its own engine.
        fp32, int8 = _expected(x86, frame)
        assert _same(stats.fp32, fp32) and _same(stats.int8, int8)
        # Both engines actually ran during the switching.
        assert seen == {"x86", "qnnpack"}
        # After a switch the counts restart: no frame of the old models is counted.
        proc.set_models(qnnpack)
        assert proc.snapshot() is None
        proc.on_frame(frame)
        assert proc.drain(DRAIN_S)
        after = proc.snapshot()
        assert (after.received, after.processed, after.label) == (1, 1, "qnnpack")
        assert _same(after.int8, _expected(qnnpack, frame)[1])
    finally:
        proc.close()


def test_worker_ends_when_frames_stop_and_restarts_with_the_next(pairs) -> None:
    proc = LiveProcessor(threads=1, idle_seconds=0.2)
    proc.set_models(pairs["x86"])

    def workers() -> int:
        return sum(t.name == "aslquant-live" and t.is_alive() for t in threading.enumerate())

    before = workers()
    try:
        proc.on_frame(_webcam_frame())
        assert proc.drain(DRAIN_S)
        deadline = time.monotonic() + 10
        while workers() > before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert workers() == before  # no thread left behind per browser session
        proc.on_frame(_webcam_frame("D"))
        assert proc.drain(DRAIN_S)
        assert proc.snapshot().processed == 2
        proc.stream_ended()
        assert proc.snapshot().dropped == 0  # nothing was waiting when the stream ended
    finally:
        proc.close()


def test_a_bad_frame_is_reported_and_the_stream_goes_on(pairs) -> None:
    proc = LiveProcessor(threads=1)
    proc.set_models(pairs["x86"])
    try:
        proc.on_frame(np.zeros((4, 4), np.uint8))  # not HxWx3
        assert proc.drain(DRAIN_S)
        stats = proc.snapshot()
        assert stats.failed == 1 and "HxWx3" in stats.error and stats.processed == 0
        proc.on_frame(_webcam_frame())
        assert proc.drain(DRAIN_S)
        stats = proc.snapshot()
        assert stats.processed == 1 and stats.error is None
    finally:
        proc.close()


def test_frames_before_models_are_ignored() -> None:
    proc = LiveProcessor(threads=1)
    proc.on_frame(_webcam_frame())
    assert proc.snapshot() is None
    proc.close()


def test_media_constraints_fit_the_model_input() -> None:
    small = media_constraints(224)["video"]
    assert small["height"]["ideal"] == 240 and small["width"]["ideal"] == 320
    assert media_constraints(400)["video"]["height"]["ideal"] == 400
    assert media_constraints(224)["audio"] is False


def test_live_threads_env_is_validated(monkeypatch) -> None:
    from aslquant.errors import InputError
    from aslquant.live import THREADS_ENV, live_threads

    monkeypatch.setenv(THREADS_ENV, "2")
    assert live_threads() == 2 and LiveProcessor().threads == 2
    monkeypatch.setenv(THREADS_ENV, "zero")
    with pytest.raises(InputError, match=THREADS_ENV):
        live_threads()
    monkeypatch.delenv(THREADS_ENV)
    assert live_threads() == 1


# --- one image, confidence and provenance ---------------------------------------------------------


@pytest.mark.slow
def test_predict_pair_matches_the_models(pairs) -> None:
    pair = pairs["x86"]
    image = Image.open(_demo_image()).convert("RGB")
    pred = predict_pair(pair, image, timing_runs=30)
    x = pair.preprocess.apply(image).unsqueeze(0)
    with torch.inference_mode():
        fp32 = torch.softmax(pair.fp32(x), 1)[0]
    q = torch.softmax(pair.quantized(x), 1)[0]
    assert pred.fp32[0] == (pair.class_names[int(fp32.argmax())], pytest.approx(float(fp32.max())))
    assert pred.int8[0][0] == pair.class_names[int(q.argmax())]
    assert len(pred.fp32) == len(pred.int8) == 3
    assert pred.fp32_ms > 0 and pred.int8_ms > 0 and "median of 30" in pred.timing


def test_guessing_is_a_low_top1_or_a_close_runner_up() -> None:
    assert guess_reason([("A", 0.9), ("B", 0.05), ("C", 0.01)]) is None
    low = guess_reason([("A", GUESS_BELOW - 0.01), ("B", 0.1), ("C", 0.1)])
    assert low is not None and "below 50%" in low
    close = guess_reason([("A", 0.55), ("B", 0.55 - GUESS_MARGIN + 0.01), ("C", 0.0)])
    assert close is not None and "A leads B" in close
    assert guess_reason([("A", 0.6), ("B", 0.6 - GUESS_MARGIN - 0.01), ("C", 0.0)]) is None


def test_provenance_names_the_demo_training_data_or_says_unknown(tmp_path) -> None:
    demo = default_demo()
    line = provenance(str(demo.checkpoint))
    assert demo.trained_on in line and "rendered hands" in line
    own = tmp_path / "model.pth"
    own.write_bytes(DEMO_CHECKPOINT.read_bytes())  # same bytes, but not the shipped file
    assert "your own checkpoint" in provenance(str(own))
    assert "your own checkpoint" in provenance("")
