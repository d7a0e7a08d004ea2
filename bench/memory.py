"""Long-session memory: 200 live-prediction frames and 10 quantization runs in one process.

    .venv/bin/python bench/memory.py [--frames 200] [--runs 10] [--eval-images 116]

Does what one long dashboard session does, through the same code: `execute()` for each run
kept in a history bounded like the app's (`aslquant.ui.session.MAX_RUNS`), and the webcam page's
`LiveProcessor` for every frame. Prints resident memory (RSS) after a warm-up and after the
work, and exits 1 if the growth reaches the 50 MB budget.
"""

from __future__ import annotations

import argparse
import gc

import numpy as np
import psutil

from aslquant import runtime
from aslquant.data import open_image
from aslquant.live import LiveProcessor
from aslquant.predict import ModelPair
from aslquant.run import DEMO_DATA, RunConfig, execute

BUDGET_MB = 50.0
MAX_RUNS = 10  # the dashboard's run history bound (aslquant.ui.session.MAX_RUNS)

# Ten different recipes, so no run is a cache hit of another.
RECIPES = [
    {"backend": "x86"},
    {"backend": "onednn"},
    {"backend": "fbgemm"},
    {"backend": "qnnpack"},
    {"act_observer": "minmax"},
    {"act_observer": "moving-average"},
    {"weight_observer": "minmax"},
    {"reduce_range": False},
    {"method": "dynamic"},
    {"keep_fp32": ("conv1",)},
]


def rss_mb() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / 1e6


def webcam_frames(n: int) -> list[np.ndarray]:
    """640x480 frames made from demo photos (a hand in the middle, like a webcam)."""
    photos = sorted(DEMO_DATA.glob("*/*.jpg"))[
        :: max(1, len(list(DEMO_DATA.glob("*/*.jpg"))) // 20)
    ]
    frames = []
    for i in range(n):
        img = open_image(photos[i % len(photos)]).resize((480, 480))
        frame = np.zeros((480, 640, 3), np.uint8)
        frame[:, 80:560] = np.asarray(img)
        frames.append(frame)
    return frames


def send_frame(live: LiveProcessor, frame: np.ndarray) -> None:
    """One frame through the live worker, waiting for it (so every frame is processed)."""
    live.on_frame(frame)
    if not live.drain(timeout=120):
        raise RuntimeError("the live worker did not finish a frame in 120 s")


def measure(frames: int, runs: int, eval_images: int) -> dict[str, float]:
    history: list = []
    live = LiveProcessor()

    def run(i: int):
        config = RunConfig(eval_images=eval_images).with_recipe(**RECIPES[i % len(RECIPES)])
        # As in the dashboard, a further recipe on the same model reuses the FP32 baseline.
        result = execute(config, baseline=history[-1].baseline if history else None)
        history.append(result)
        del history[:-MAX_RUNS]
        live.set_models(ModelPair.from_result(result, label=f"run {i}"))
        return result

    frame_data = webcam_frames(20)
    # Warm-up: one run (allocator pools, kernels, caches) and a few frames through the models.
    run(0)
    for k in range(20):
        send_frame(live, frame_data[k % len(frame_data)])
    before = rss_mb()
    for i in range(1, runs + 1):
        run(i)
        for k in range(frames // runs):
            send_frame(live, frame_data[k % len(frame_data)])
    stats = live.snapshot()
    live.close()
    after = rss_mb()
    return {
        "rss_before_mb": before,
        "rss_after_mb": after,
        "growth_mb": after - before,
        "frames": frames,
        "runs": runs,
        "last_fps": stats.fps if stats else 0.0,
        "history": len(history),
    }


def main() -> int:
    runtime.configure()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--eval-images", type=int, default=116)
    args = parser.parse_args()
    m = measure(args.frames, args.runs, args.eval_images)
    print(
        f"RSS after warm-up {m['rss_before_mb']:.1f} MB, after {m['frames']} frames + "
        f"{m['runs']} runs {m['rss_after_mb']:.1f} MB: growth {m['growth_mb']:.1f} MB "
        f"(budget {BUDGET_MB:.0f} MB; history holds {m['history']} runs)"
    )
    return 0 if m["growth_mb"] < BUDGET_MB else 1


if __name__ == "__main__":
    raise SystemExit(main())
