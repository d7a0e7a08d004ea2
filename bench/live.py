"""The live webcam in a real browser: what a user sees on Predict > Live webcam, over 30 s.

    .venv/bin/python -m bench.live [--seconds 30] [--threads 1] [--warmup 0]
    .venv/bin/python -m bench.live --engine-only [--seconds 30] [--threads 1] [--fps 20]

Starts `streamlit run app.py` on a free port, drives Debian's Chromium (the flags of
tests/browser/conftest.py, with its fake camera) through Playwright: press Quantize with the
default recipe, wait until the background FP32 / ONNX Runtime timing has finished (so it does
not compete with the stream), open Predict > Live webcam, press START, stream, and read the
figures off the page: processed frames per second, dropped frames, end-to-end latency (frame
arrival at the server -> both predictions ready) p50/p95, each model's p50/p95, and whether
both top-3 lists kept changing. Prints them against the goal; asserts nothing.

``--engine-only`` leaves the browser and WebRTC out: demo photos placed in 320x240 frames are
handed to the same ``LiveProcessor`` at ``--fps`` in this process, so the figures show what
the worker alone can do on this machine (its ceiling), not what a user sees.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import tempfile
import time
from pathlib import Path

from aslquant.live import THREADS_ENV
from tests.browser.driver import (
    CHROMIUM,
    CHROMIUM_ARGS,
    go,
    metric,
    streamlit_server,
    wait_script_done,
)

GOAL_FPS = 15.0
GOAL_E2E_P95_MS = 150.0
RUN_TIMEOUT_MS = 15 * 60_000


def pair_of(text: str) -> tuple[float, float]:
    p50, p95 = (float(v) for v in text.split("/"))
    return p50, p95


def quantize_default(page) -> float:
    """Press Quantize on the Quantize page; seconds until the run's summary is on screen."""
    page.get_by_role("heading", name="Quantize", exact=True).wait_for()
    wait_script_done(page)
    started = time.perf_counter()
    page.get_by_role("button", name="Quantize", exact=True).click()
    page.locator('[data-testid="stMetric"]', has_text="Quantized top-1").wait_for(
        timeout=RUN_TIMEOUT_MS
    )
    wait_script_done(page)
    return time.perf_counter() - started


def wait_background_timing(page, timeout_s: float) -> bool:
    """Revisit Quantize until the ONNX Runtime FP32 cards (timed last, in the background) show."""
    ort = page.locator('[data-testid="stMetric"]', has_text="vs ONNX RT FP32, b")
    deadline = time.monotonic() + timeout_s
    while ort.count() < 2:
        if time.monotonic() > deadline:
            return False
        page.wait_for_timeout(3000)
        go(page, "Model")
        go(page, "Quantize")
    return True


def preview_of(page, timeout_s: float = 30) -> dict | None:
    """The local camera preview beside the numbers: its video size and the drawn square."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for frame in page.frames:
            with contextlib.suppress(Exception):  # frames come and go while the page reruns
                if frame.query_selector("#sq") is None:
                    continue
                seen = frame.evaluate(
                    """() => { const v = document.getElementById("v");
                               const sq = document.getElementById("sq");
                               return {width: v.videoWidth, height: v.videoHeight,
                                       ready: v.readyState, square: sq.style.display === "block"
                                       ? sq.offsetWidth : 0}; }"""
                )
                if seen["ready"] >= 2 and seen["width"] > 0 and seen["square"] > 0:
                    return seen
        page.wait_for_timeout(500)
    return None


def stream(page, seconds: float, warmup: float) -> dict:
    """START the live view, stream, sample the top-3 lines; the page's figures at the end."""
    page.get_by_role("tab", name="Live webcam").click()
    frame = page.frame_locator('iframe[title*="webrtc"]').first
    frame.get_by_role("button", name=re.compile("start", re.I)).click()
    page.locator('[data-testid="stMetric"]', has_text="Frames processed").wait_for(timeout=120_000)
    page.get_by_text(re.compile(r"^Quantized:")).first.wait_for(timeout=120_000)
    preview = preview_of(page)
    page.wait_for_timeout(int(warmup * 1000))
    samples: dict[str, list[str]] = {"FP32": [], "Quantized": []}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for name in samples:
            samples[name].append(page.get_by_text(re.compile(rf"^{name}:")).first.inner_text())
        page.wait_for_timeout(500)
    caption = page.get_by_text(re.compile(r"^Rates and percentiles over")).first.inner_text()
    out = {
        "fps": float(metric(page, "Frames per second")),
        "processed": int(metric(page, "Frames processed")),
        "dropped": int(metric(page, "Frames dropped")),
        "received": metric(page, "Frames dropped", "stMetricDelta"),
        "e2e": pair_of(metric(page, "End-to-end ms")),
        "fp32": pair_of(metric(page, "FP32 ms/frame")),
        "int8": pair_of(metric(page, "Quantized ms/frame")),
        "caption": " ".join(caption.split()),
        "changes": {
            name: sum(a != b for a, b in zip(seen, seen[1:], strict=False))
            for name, seen in samples.items()
        },
        "samples": {name: len(seen) for name, seen in samples.items()},
        "preview": preview,
    }
    frame.get_by_role("button", name=re.compile("stop", re.I)).click()
    return out


def engine_only(seconds: float, fps: float, threads: int | None) -> dict:
    """The default recipe's models on frames handed to LiveProcessor at ``fps``, in-process."""
    import numpy as np

    from aslquant.data import load_tensors, open_image
    from aslquant.live import LiveProcessor
    from aslquant.predict import ModelPair
    from aslquant.quantize import quantize
    from aslquant.run import RunConfig, load_inputs

    config = RunConfig()
    inputs = load_inputs(config)
    calib = load_tensors(inputs.calib_items, config.preprocess).x
    quantized = quantize(inputs.model, config.recipe, calib)
    pair = ModelPair(inputs.model, quantized, config.preprocess, tuple(inputs.class_names))
    frames = []
    for item in inputs.eval_items[:: max(1, len(inputs.eval_items) // 20)][:20]:
        frame = np.zeros((240, 320, 3), np.uint8)
        frame[:, 40:280] = np.asarray(open_image(item.path).resize((240, 240)))
        frames.append(frame)
    processor = LiveProcessor(threads=threads)
    processor.set_models(pair)
    changes = {"FP32": 0, "Quantized": 0}
    last: dict[str, list] = {}
    start = time.perf_counter()
    k = 0
    while time.perf_counter() - start < seconds:
        processor.on_frame(frames[k % len(frames)])
        k += 1
        stats = processor.snapshot()
        for name, rows in (("FP32", stats.fp32), ("Quantized", stats.int8)):
            if rows and last.get(name) not in (None, rows):
                changes[name] += 1
            last[name] = rows
        time.sleep(max(0.0, start + k / fps - time.perf_counter()))
    processor.drain(60)
    stats = processor.snapshot()
    processor.close()
    return {
        "fps": stats.fps,
        "processed": stats.processed,
        "dropped": stats.dropped,
        "received": f"of {stats.received} received",
        "e2e": stats.e2e_ms,
        "fp32": stats.fp32_ms,
        "int8": stats.int8_ms,
        "caption": f"engine only, {stats.threads} intra-op thread(s), frames handed over at "
        f"{fps:g}/s, 320x240",
        "changes": changes,
        "samples": {name: k for name in changes},
    }


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def print_table(m: dict, title: str) -> None:
    print(f"| {title} | value | goal |")
    print("|---|---|---|")
    fps_ok = m["fps"] >= GOAL_FPS
    print(f"| processed frames/s | {m['fps']:.1f} | >= {GOAL_FPS:g}: {_verdict(fps_ok)} |")
    print(f"| frames processed / dropped | {m['processed']} / {m['dropped']} ({m['received']}) | |")
    e2e_ok = m["e2e"][1] <= GOAL_E2E_P95_MS
    print(f"| end-to-end ms p50 / p95 | {m['e2e'][0]:.1f} / {m['e2e'][1]:.1f} | "
          f"p95 <= {GOAL_E2E_P95_MS:g}: {_verdict(e2e_ok)} |")  # fmt: skip
    print(f"| FP32 ms/frame p50 / p95 | {m['fp32'][0]:.1f} / {m['fp32'][1]:.1f} | |")
    print(f"| quantized ms/frame p50 / p95 | {m['int8'][0]:.1f} / {m['int8'][1]:.1f} | |")
    updated = all(n > 0 for n in m["changes"].values())
    changes = ", ".join(
        f"{name} changed {n} times in {m['samples'][name]} looks"
        for name, n in m["changes"].items()
    )
    print(f"| both top-3 lists updated | {'yes' if updated else 'NO'} ({changes}) | "
          f"yes: {_verdict(updated)} |")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="streaming time measured")
    parser.add_argument("--warmup", type=float, default=0.0, help="streaming before measuring")
    parser.add_argument("--threads", type=int, default=None, help=f"sets ${THREADS_ENV}")
    parser.add_argument("--settle-timeout", type=float, default=300.0,
                        help="longest wait for the background timing before streaming")  # fmt: skip
    parser.add_argument(
        "--engine-only", action="store_true", help="no browser: frames go to LiveProcessor here"
    )
    parser.add_argument(
        "--fps", type=float, default=20.0, help="--engine-only frame rate (the fake camera's: 20)"
    )
    parser.add_argument(
        "--post-script-gc",
        action="store_true",
        help="Streamlit's gc.collect(2) after every script run back on (.streamlit has it off)",
    )
    args = parser.parse_args()
    load = os.getloadavg()
    if args.engine_only:
        m = engine_only(args.seconds, args.fps, args.threads)
        print(f"machine: {os.cpu_count()} cores, load average {load[0]:.2f} when the bench started")
        print(f"{m['caption']}: not what a user sees, the worker's ceiling")
        print_table(m, "live worker alone (no browser)")
        return 0

    from playwright.sync_api import sync_playwright

    workdir = Path(tempfile.mkdtemp(prefix="aslquant-bench-live-"))
    env = dict(os.environ)
    env["ASLQUANT_CACHE_DIR"] = str(workdir / "cache")
    if args.threads is not None:
        env[THREADS_ENV] = str(args.threads)
    options = ("--runner.postScriptGC", "true") if args.post_script_gc else ()
    with streamlit_server(env, workdir / "server.log", options) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1440, "height": 1000})
            context.grant_permissions(["camera"], origin=url)
            page = context.new_page()
            page.set_default_timeout(60_000)
            page.goto(url)
            quantize_s = quantize_default(page)
            settled = wait_background_timing(page, args.settle_timeout)
            go(page, "Predict")
            m = stream(page, args.seconds, args.warmup)
        finally:
            browser.close()

    print(f"machine: {os.cpu_count()} cores, load average {load[0]:.2f} when the bench started")
    print(f"default recipe quantized in {quantize_s:.1f} s; background timing finished before "
          f"streaming: {'yes' if settled else 'no (still running while streaming)'}")  # fmt: skip
    gc_note = "on (--post-script-gc)" if args.post_script_gc else "off"
    print(f"Streamlit's full GC after every script run: {gc_note}")
    print(f"streamed {args.seconds:.0f} s after {args.warmup:.0f} s of warm-up; "
          f"the page says: {m['caption']}")  # fmt: skip
    p = m["preview"]
    print("local preview: " + (f"{p['width']}x{p['height']} playing, square {p['square']} px"
                               if p else "NOT playing"))  # fmt: skip
    print_table(m, "live webcam (Chromium fake camera)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
