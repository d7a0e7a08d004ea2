"""The dashboard's own timings, measured through Streamlit's AppTest on the demo.

    .venv/bin/python bench/dashboard.py

Prints: cold start of the app to its first render (a fresh Python process, imports
included); quantize + evaluate the default recipe (64 calibration images, 1096 evaluation
images) clicked right after the first render, when the FP32 baseline is still being measured
in the background; the same click once the baseline is ready; a further recipe on the same
model; and a rerun of pages whose run is cached. bench/latency.py calls this too.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

APP = str(ROOT / "app.py")
TIMEOUT_S = 900

_COLD_START = f"""
import time
started = time.perf_counter()
from streamlit.testing.v1 import AppTest
at = AppTest.from_file({APP!r}, default_timeout={TIMEOUT_S})
at.run()
assert not at.exception, [e.value for e in at.exception]
print(time.perf_counter() - started, flush=True)
import os
os._exit(0)  # do not wait for the background FP32 baseline the first render started
"""


def cold_start_s() -> float:
    """Seconds from launching a fresh interpreter to the app's first complete render."""
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", _COLD_START],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=TIMEOUT_S,
    )
    float(out.stdout.strip().splitlines()[-1])  # the script's own figure, as a check it ran
    return time.perf_counter() - started


def _timed(step) -> float:
    started = time.perf_counter()
    at = step()
    if at.exception:
        raise RuntimeError(f"the app raised: {[e.value for e in at.exception]}")
    return time.perf_counter() - started


def _new_session():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S)
    at.run()
    return at


def _wait_for_baselines() -> None:
    from aslquant.ui.baseline import STORE

    while STORE.busy():
        time.sleep(0.2)


def measure() -> dict[str, float]:
    """Every dashboard timing, in seconds (each from its own click or rerun)."""
    from aslquant.ui import baseline

    out = {"cold start to first render": cold_start_s()}
    at = _new_session()
    # Clicked at once: the FP32 baseline the first render started is still being measured.
    out["first recipe, clicked at once (waits for the FP32 baseline)"] = _timed(
        lambda: at.button(key="quantize").click().run()
    )
    _wait_for_baselines()
    at.selectbox(key="q_act").set_value("minmax").run()
    out["further recipe, same model (FP32 reused)"] = _timed(
        lambda: at.button(key="quantize").click().run()
    )
    out["rerun of the Quantize page (run cached)"] = _timed(lambda: at.run())
    at.switch_page("pages/compare.py").run()
    out["rerun of the Compare page (run cached)"] = _timed(lambda: at.run())
    at.switch_page("pages/layers.py").run()  # first visit computes the per-layer errors
    out["rerun of the Layers page (run cached)"] = _timed(lambda: at.run())

    # A new browser session on a model whose baseline is ready: what a user sees when they
    # read the Model page for a few seconds before pressing Quantize.
    baseline.STORE.clear()  # forget what the first session measured
    fresh = _new_session()
    _wait_for_baselines()
    fresh.selectbox(key="q_backend").set_value("onednn").run()
    out["first recipe, FP32 baseline measured while the page was open"] = _timed(
        lambda: fresh.button(key="quantize").click().run()
    )
    return out


TARGETS = {
    "first recipe, FP32 baseline measured while the page was open": 10.0,
    "first recipe, clicked at once (waits for the FP32 baseline)": 10.0,
    "further recipe, same model (FP32 reused)": 5.0,
    "rerun of the Quantize page (run cached)": 1.0,
    "rerun of the Compare page (run cached)": 1.0,
    "rerun of the Layers page (run cached)": 1.0,
}


def print_table(timings: dict[str, float]) -> None:
    print("| dashboard step | seconds | target |")
    print("|---|---|---|")
    for name, seconds in timings.items():
        target = TARGETS.get(name)
        verdict = (
            "" if target is None else f"<= {target:g} s: {'met' if seconds <= target else 'MISSED'}"
        )
        print(f"| {name} | {seconds:.2f} | {verdict} |")


if __name__ == "__main__":
    print_table(measure())
