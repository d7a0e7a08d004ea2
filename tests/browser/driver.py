"""Driving the dashboard in Debian's headless Chromium: shared by the browser tests and by the
browser benchmarks (``python -m bench.dashboard``, ``python -m bench.live``).

Streamlit 1.67 marks a running script on the app root (``[data-testid="stApp"]`` gets
``data-test-script-state="running"``): every wait here watches that instead of sleeping.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
CHROMIUM = os.environ.get("ASLQUANT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]
RUN_TIMEOUT_MS = 15 * 60_000
RUNNING = '[data-testid="stApp"][data-test-script-state="running"]'
#: Screenshots are written to docs/ only when asked (they are committed files).
SCREENSHOTS = os.environ.get("ASLQUANT_SCREENSHOTS") == "1"
MAX_PNG_BYTES = 480_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as resp:
            return resp.status == 200 and resp.read().strip() == b"ok"
    except OSError:
        return False


@contextlib.contextmanager
def streamlit_server(
    env: dict[str, str], log_path: Path, options: tuple[str, ...] = ()
) -> Iterator[str]:
    """`streamlit run app.py` on a free port; its URL while it runs; stopped after."""
    port = free_port()
    cmd = [
        sys.executable, "-m", "streamlit", "run", "app.py",
        "--server.port", str(port), "--server.address", "127.0.0.1",
        "--server.headless", "true", "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false", *options,
    ]  # fmt: skip
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while not healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def new_tab(browser, url: str, width: int = 1440, height: int = 1000):
    """A new browser context (a new Streamlit session) on ``url``, with the camera allowed."""
    context = browser.new_context(viewport={"width": width, "height": height})
    context.grant_permissions(["camera"], origin=url)
    tab = context.new_page()
    tab.set_default_timeout(60_000)
    tab.goto(url)
    return tab


def wait_script_done(page, timeout_ms: int = RUN_TIMEOUT_MS) -> None:
    """Wait for the script run a click started: running appears, then goes."""
    with contextlib.suppress(Exception):  # a very short run may finish before we look
        page.wait_for_selector(RUNNING, timeout=3_000)
    page.wait_for_selector(RUNNING, state="detached", timeout=timeout_ms)


def go(page, title: str) -> None:
    page.locator('[data-testid="stSidebarNavLink"]', has_text=title).first.click()
    page.get_by_role("heading", name=title, exact=True).first.wait_for()
    wait_script_done(page)


def metric(page, label: str, part: str = "stMetricValue") -> str:
    box = page.locator('[data-testid="stMetric"]', has_text=label).first
    return box.locator(f'[data-testid="{part}"]').inner_text().strip()


def errors_on(page) -> list[str]:
    """Exception and error elements on the page, as text (empty when the page is clean)."""
    found = page.locator('[data-testid="stException"]').all_inner_texts()
    found += page.locator('[data-testid="stAlertContentError"]').all_inner_texts()
    if "Traceback" in page.locator("body").inner_text():
        found.append("a traceback is shown")
    return found


def assert_clean(page) -> None:
    assert errors_on(page) == []


@contextlib.contextmanager
def showing_the_page_on_failure(page, what: str) -> Iterator[None]:
    """A wait that times out says what the page showed instead (the CI log has no browser)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        yield
    except PlaywrightTimeout as err:
        try:
            shown = page.locator('[data-testid="stMain"]').inner_text(timeout=5_000)
        except PlaywrightTimeout:
            shown = "(the page did not answer)"
        raise AssertionError(f"{what}: {err.message.splitlines()[0]}; the page showed:\n"
                             f"{shown[:3000]}") from None  # fmt: skip


def charts(page, at_least: int, timeout: int = 120_000) -> int:
    """Wait for ``at_least`` rendered Plotly charts (each has an SVG main layer)."""
    with showing_the_page_on_failure(page, f"waiting for {at_least} charts"):
        page.wait_for_function(
            "n => Array.from(document.querySelectorAll('.js-plotly-plot'))"
            ".filter(el => el.querySelector('.main-svg')).length >= n",
            arg=at_least,
            timeout=timeout,
        )
    return page.locator(".js-plotly-plot").count()


def press(page, name: str, timeout_ms: int = RUN_TIMEOUT_MS) -> None:
    """Click a button by its label and wait for the run it starts."""
    with showing_the_page_on_failure(page, f"pressing {name!r}"):
        page.get_by_role("button", name=name, exact=True).first.click()
        wait_script_done(page, timeout_ms)


def quantize(page) -> dict[str, float]:
    """Press Quantize on the Quantize page. Seconds from the click until the first accuracy
    is on screen, and until every summary card has its figure (nothing pending)."""
    page.get_by_role("heading", name="Quantize", exact=True).wait_for()
    wait_script_done(page)
    started = time.perf_counter()
    page.get_by_role("button", name="Quantize", exact=True).click()
    page.locator('[data-testid="stMetricValue"]', has_text="%").first.wait_for(
        timeout=RUN_TIMEOUT_MS
    )
    first = time.perf_counter() - started
    page.locator('[data-testid="stMetric"]', has_text="Size: x smaller").wait_for(
        timeout=RUN_TIMEOUT_MS
    )
    page.wait_for_function(
        """() => { const v = Array.from(document.querySelectorAll(
                       '[data-testid="stMetricValue"]')).map(e => e.innerText);
                   return v.length >= 7 && !v.some(t => t.includes("pending")); }""",
        timeout=RUN_TIMEOUT_MS,
    )
    wait_script_done(page)
    return {"first_number_s": first, "all_cards_s": time.perf_counter() - started}


def screenshot(page, name: str) -> Path | None:
    """Full-page PNG of the app's main area into docs/ (only with ASLQUANT_SCREENSHOTS=1)."""
    if not SCREENSHOTS:
        return None
    height = page.evaluate(
        """() => { const m = document.querySelector('[data-testid="stMain"]')
                   || document.querySelector('section.main');
                   return m ? m.scrollHeight : document.body.scrollHeight; }"""
    )
    old = page.viewport_size
    page.set_viewport_size({"width": old["width"], "height": int(min(max(height, 900), 6000))})
    page.wait_for_timeout(800)  # let Plotly resize to the new viewport
    data = page.screenshot(full_page=True)
    page.set_viewport_size(old)
    DOCS.mkdir(exist_ok=True)
    path = DOCS / f"{name}.png"
    image = Image.open(io.BytesIO(data)).convert("RGB")
    for colors in (256, 128, 64):
        buffer = io.BytesIO()
        image.quantize(colors=colors).save(buffer, "PNG", optimize=True)
        if buffer.tell() <= MAX_PNG_BYTES:
            break
    path.write_bytes(buffer.getvalue())
    return path
