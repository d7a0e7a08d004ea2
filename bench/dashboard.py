"""The dashboard's own timings, measured in a real browser on a fresh server.

    .venv/bin/python -m bench.dashboard [--live-seconds 30] [--no-live]

Each scenario starts `streamlit run app.py` with an empty cache folder (nothing decoded,
measured or compiled before) and drives Debian's headless Chromium with Playwright, clicking
as soon as the page is there:

1. the demo: press Quantize on the Quantize page; seconds until the first accuracy is on
   screen, and until every summary card has its figure (latency and ONNX Runtime included);
2. a second session (a new tab) quantizing the same recipe on the same server;
3. a user's own checkpoint and images: upload model.pth and lb.pkl on the Model page (under
   other names), point at a folder of 870 images (806 are evaluated), go to Quantize and press
   it; the same two times;
4. the live webcam (bench/live.py): frames per second over ``--live-seconds`` with the
   end-to-end p50/p95.

Prints a markdown table with the date, the machine and the goals; asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import tempfile
from pathlib import Path

from aslquant.machine import cpu_features, load_snapshot, usable_cores
from aslquant.run import DEMO_CHECKPOINT, DEMO_DATA, DEMO_LABELS
from tests.browser.driver import (
    CHROMIUM,
    CHROMIUM_ARGS,
    go,
    new_tab,
    press,
    quantize,
    streamlit_server,
    wait_script_done,
)

GOALS = {
    "demo: first accuracy": 8.0,
    "demo: every card": 20.0,
    "own checkpoint, 806 images: first accuracy": 20.0,
}
PER_CLASS_OWN = 30  # 870 images: 64 calibrate, 806 are evaluated


def _own_images(dest: Path) -> Path:
    for cls in sorted(p for p in Path(DEMO_DATA).iterdir() if p.is_dir()):
        (dest / cls.name).mkdir(parents=True)
        for f in sorted(cls.glob("*.jpg"))[:PER_CLASS_OWN]:
            shutil.copy(f, dest / cls.name / f.name)
    return dest


def _server(tmp: Path, name: str):
    env = dict(os.environ)
    env["ASLQUANT_CACHE_DIR"] = str(tmp / f"cache-{name}")  # fresh: nothing cached
    env.pop("ASLQUANT_DATA", None)
    return streamlit_server(env, tmp / f"{name}.log")


def demo_and_second_session(browser, tmp: Path) -> dict[str, float]:
    with _server(tmp, "demo") as url:
        first = new_tab(browser, url)
        times = quantize(first)
        second = new_tab(browser, url)
        again = quantize(second)
        for tab in (first, second):
            tab.context.close()
    return {
        "demo: first accuracy": times["first_number_s"],
        "demo: every card": times["all_cards_s"],
        "second session, same recipe: every card": again["all_cards_s"],
    }


def own_checkpoint(browser, tmp: Path) -> dict[str, float]:
    folder = _own_images(tmp / "own-images")
    uploads = tmp / "uploads"
    uploads.mkdir()
    checkpoint = shutil.copy(DEMO_CHECKPOINT, uploads / "my_asl_model.pth")
    labels = shutil.copy(DEMO_LABELS, uploads / "my_lb.pkl")
    with _server(tmp, "own") as url:
        tab = new_tab(browser, url)
        go(tab, "Model")
        inputs = tab.locator('[data-testid="stFileUploaderDropzoneInput"]')
        inputs.nth(0).set_input_files(str(checkpoint))
        inputs.nth(1).set_input_files(str(labels))
        press(tab, "Use these files")
        tab.get_by_text("Folder or .zip on this server").click()
        wait_script_done(tab)
        tab.get_by_placeholder("/data/asl_alphabet_test").fill(str(folder))
        tab.get_by_placeholder("/data/asl_alphabet_test").press("Enter")
        wait_script_done(tab)
        press(tab, "Use this folder")
        go(tab, "Quantize")
        times = quantize(tab)
        tab.context.close()
    return {
        "own checkpoint, 806 images: first accuracy": times["first_number_s"],
        "own checkpoint, 806 images: every card": times["all_cards_s"],
    }


def live(browser, tmp: Path, seconds: float) -> dict[str, float]:
    from bench.live import quantize_default, stream, wait_background_timing

    with _server(tmp, "live") as url:
        tab = new_tab(browser, url)
        quantize_default(tab)
        wait_background_timing(tab, 600)
        go(tab, "Predict")
        figures = stream(tab, seconds=seconds, warmup=2)
        tab.context.close()
    return {
        "live: frames per second": figures["fps"],
        "live: end-to-end p50 (ms)": figures["e2e"][0],
        "live: end-to-end p95 (ms)": figures["e2e"][1],
        "live: both top-3 updated": float(all(n > 0 for n in figures["changes"].values())),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--live-seconds", type=float, default=30.0)
    parser.add_argument("--no-live", action="store_true")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    load = load_snapshot()
    features = cpu_features()
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        results |= demo_and_second_session(browser, Path(tmp))
        results |= own_checkpoint(browser, Path(tmp))
        if not args.no_live:
            results |= live(browser, Path(tmp), args.live_seconds)
        browser.close()
    print(
        f"Measured {datetime.date.today().isoformat()}: {features.model or 'unknown CPU'}, "
        f"{usable_cores()} cores ({', '.join(features.present()) or 'features unknown'}); "
        f"load average {'n/a' if load.load_1min is None else f'{load.load_1min:.2f}'} at the start; "
        "Chromium and the server on this machine."
    )
    print("\n| dashboard step (real browser, fresh server) | measured | goal |")
    print("|---|---|---|")
    goals = GOALS | {
        "live: frames per second": ">= 15",
        "live: end-to-end p95 (ms)": "<= 150",
    }
    for name, value in results.items():
        goal = goals.get(name)
        if isinstance(goal, float):
            verdict = f"<= {goal:g} s: {'met' if value <= goal else 'MISSED'}"
            print(f"| {name} | {value:.1f} s | {verdict} |")
        elif name.startswith("live: both"):
            print(f"| {name} | {'yes' if value else 'no'} | yes |")
        elif name.startswith("live"):
            met = (value >= 15) if "frames" in name else (value <= 150 if "p95" in name else None)
            verdict = "" if met is None else f"{goal}: {'met' if met else 'MISSED'}"
            print(f"| {name} | {value:.1f} | {verdict} |")
        else:
            print(f"| {name} | {value:.1f} s | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
