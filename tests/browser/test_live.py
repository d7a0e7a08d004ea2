"""The live webcam in headless Chromium: frames reach both models and both top-3 lists update.

Uses bench/live.py's own page driving (quantize, START, read the figures off the page), so
the benchmark's reading of the page is tested too. Chromium's fake camera is the source.
"""

from __future__ import annotations

import re

import pytest

from bench.live import go, quantize_default, stream
from tests.browser.driver import press, screenshot, wait_script_done

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _no_error_on(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0
    errors = page.locator('[data-testid="stAlertContentError"]')
    assert errors.count() == 0, errors.all_inner_texts()


def test_live_webcam_processes_frames_and_updates_both_top3(page) -> None:
    quantize_default(page)
    go(page, "Predict")
    _no_error_on(page)
    # What the demo model was trained on is said before anything is predicted.
    assert page.get_by_text(re.compile("trained on synthetic rendered hands")).first.is_visible()
    page.get_by_role("tab", name="Live webcam").click()
    assert page.get_by_text(re.compile("with 1 intra-op thread")).first.is_visible()
    figures = stream(page, seconds=6, warmup=0)
    _no_error_on(page)
    assert figures["processed"] > 0 and figures["fps"] > 0
    # Each frame's end-to-end time includes its FP32 call, so its percentiles do too.
    assert figures["e2e"][0] >= figures["fp32"][0] > 0 and figures["int8"][0] > 0
    # Both models' top-3 kept changing while the fake camera's picture moved.
    assert all(n > 0 for n in figures["changes"].values()), figures["changes"]
    assert "frames arrive at" in figures["caption"]
    # The browser shows its own camera view, with the models' centre square drawn over it.
    preview = figures["preview"]
    assert preview is not None, "the local preview never played"
    assert preview["square"] > 0 and preview["width"] > 0
    screenshot(page, "live")


def test_snapshots_in_your_own_conditions_become_a_checked_test_set(page) -> None:
    """Pick a letter, take a snapshot with the (fake) camera, add it; twice, under two letters.
    The counts, the zip download and the FP32 vs quantized check follow."""
    page.get_by_role("tab", name="Your own conditions").click()
    tab = page.get_by_role("tabpanel", name="Your own conditions")
    for letter in ("B", "C"):
        tab.locator('[data-testid="stSelectbox"]').first.click()
        page.get_by_role("option", name=letter, exact=True).click()
        wait_script_done(page)
        tab.get_by_role("button", name="Take Photo").click()
        wait_script_done(page)
        # The button's accessible name ends with its keyboard shortcut's label (Enter).
        tab.get_by_role("button", name=re.compile(f"^Add as {letter}")).click()
        wait_script_done(page)
        tab.get_by_role("button", name="Clear photo").click()
        wait_script_done(page)
    tab.get_by_text("2 snapshots").wait_for()
    assert tab.get_by_text(re.compile(r"B 1, C 1")).first.is_visible()
    assert tab.locator('[data-testid="stDownloadButton"]').count() == 1
    press(page, "Check FP32 vs quantized on them")
    _no_error_on(page)
    cards = tab.locator('[data-testid="stMetric"]').all_inner_texts()
    assert any("FP32 top-1 on your snapshots" in c for c in cards), cards
    assert tab.get_by_text(re.compile("Drop on your 2 snapshots")).first.is_visible()
