"""Fixtures for the browser tests: `streamlit run app.py` on a free port, headless Chromium.

Chromium is the Debian package (`/usr/bin/chromium`, installed by scripts/test.sh); Playwright
only drives it, nothing is downloaded. The fake camera flags give WebRTC a synthetic stream.
scripts/test.sh runs them in a pytest process of their own, not on xdist workers (xdist 3.8's
``loadgroup`` does not group under pytest 9: it renames node ids through an attribute pytest 9
no longer reads, so the tests of one module and their shared tab were split over two workers). One
process runs them all, in file order, against one server: the runs one module computes are
cached for the next, as for real users. That process runs beside the unit tests, so the waits
here allow for a busy machine (they wait for states, never for fixed times).
The server serves a class-balanced subset of the demo images (8 per class) so a run takes
seconds; with ASLQUANT_SCREENSHOTS=1 it serves the whole demo and the tour writes docs/*.png.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser.driver import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS, new_tab, streamlit_server

ROOT = Path(__file__).resolve().parents[2]
PER_CLASS = 8


@pytest.fixture(scope="session")
def browser_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The images the browser tests' server evaluates on."""
    from aslquant.run import DEMO_DATA

    if SCREENSHOTS:
        return Path(DEMO_DATA)
    dest = tmp_path_factory.mktemp("demo_subset")
    for cls in sorted(p for p in Path(DEMO_DATA).iterdir() if p.is_dir()):
        (dest / cls.name).mkdir()
        for f in sorted(cls.glob("*.jpg"))[:PER_CLASS]:
            shutil.copy(f, dest / cls.name / f.name)
    return dest


@pytest.fixture(scope="session")
def app_url(tmp_path_factory: pytest.TempPathFactory, browser_data: Path) -> Iterator[str]:
    """The dashboard served by a real `streamlit run`, shared by the browser tests."""
    log_path = tmp_path_factory.mktemp("streamlit") / "server.log"
    env = dict(os.environ)
    env["ASLQUANT_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    env["ASLQUANT_DATA"] = str(browser_data)
    with streamlit_server(env, log_path) as url:
        yield url
    # Surface server-side errors in the test output (tracebacks go to the log, not pages).
    text = log_path.read_text(errors="replace")
    if "Traceback" in text:
        print(f"--- streamlit server log ({log_path}) ---\n{text[-6000:]}")


@pytest.fixture(scope="session")
def browser() -> Iterator:
    if not Path(CHROMIUM).exists() and not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def page(browser, app_url: str) -> Iterator:
    """One browser tab (one Streamlit session) shared by the tests of a module, in order."""
    tab = new_tab(browser, app_url)
    try:
        yield tab
    finally:
        tab.context.close()
