"""In headless Chromium, what only a browser shows: charts render, real file uploads work, the
Ship check's calibration study, robustness split and margin plot draw. With
ASLQUANT_SCREENSHOTS=1 (on the whole demo) each page is saved to docs/<page>.png.

The tests share one tab (one Streamlit session) and run in file order.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from aslquant.run import DEMO_CHECKPOINT, DEMO_DATA, DEMO_LABELS
from tests.browser.driver import (
    RUN_TIMEOUT_MS,
    assert_clean,
    charts,
    go,
    metric,
    press,
    quantize,
    screenshot,
    wait_script_done,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_quantize_shows_the_first_number_then_every_card(page) -> None:
    timings = quantize(page)
    assert timings["first_number_s"] <= timings["all_cards_s"]
    assert_clean(page)
    assert re.fullmatch(r"\d+\.\d\dx", metric(page, "Size: x smaller"))
    assert re.fullmatch(r"\d+\.\d\d%", metric(page, "Quantized top-1"))
    assert re.fullmatch(r"\d+\.\d\dx", metric(page, "vs ONNX RT FP32, b1"))
    screenshot(page, "quantize")


def test_model_page_with_real_uploads(page) -> None:
    go(page, "Model")
    assert_clean(page)
    assert metric(page, "Classes") == "29"
    page.locator('[data-testid="stImage"]').nth(28).wait_for()  # one sample per class
    screenshot(page, "model")
    inputs = page.locator('[data-testid="stFileUploaderDropzoneInput"]')
    inputs.nth(0).set_input_files(str(DEMO_CHECKPOINT))
    inputs.nth(1).set_input_files(str(DEMO_LABELS))
    press(page, "Use these files")
    assert_clean(page)
    page.get_by_text("Using model.pth with lb.pkl").wait_for()


def test_layers_page_draws_its_charts(page) -> None:
    go(page, "Layers")
    assert charts(page, 3) >= 3  # SQNR bars, histogram explorer, playground
    press(page, "Measure sensitivity")
    press(page, "Run the bit-width sweep")
    assert charts(page, 5, timeout=RUN_TIMEOUT_MS) >= 5
    assert_clean(page)
    screenshot(page, "layers")


def test_ship_check_draws_calibration_study_robustness_and_margins(page) -> None:
    go(page, "Ship check")
    press(page, "Run the ship check")
    page.get_by_text("Robustness: images like the webcam's").wait_for()
    press(page, "Run the calibration study")
    # Robustness split, margins, calibration study.
    assert charts(page, 3, timeout=RUN_TIMEOUT_MS) >= 3
    titles = page.locator(".js-plotly-plot .gtitle").evaluate_all(
        "els => els.map(e => e.textContent || '')"
    )
    for title in ("INT8 gap on corrupted images", "Where INT8 changes the answer",
                  "How many calibration images are enough"):  # fmt: skip
        assert any(title in t for t in titles), (title, titles)
    assert_clean(page)
    screenshot(page, "ship")


def test_doctor_page(page) -> None:
    go(page, "Doctor")
    page.get_by_text("Meet my budget").first.click()  # diagnosis only: quicker
    wait_script_done(page)
    press(page, "Examine")
    assert charts(page, 2, timeout=RUN_TIMEOUT_MS) >= 2
    assert_clean(page)
    screenshot(page, "doctor")


def test_compare_page(page) -> None:
    go(page, "Compare")
    assert charts(page, 5) >= 5  # runs bars, Pareto, two confusion matrices, difference
    assert_clean(page)
    screenshot(page, "compare")


def test_predict_an_uploaded_image(page) -> None:
    go(page, "Predict")
    image = sorted((Path(DEMO_DATA) / "L").glob("*.jpg"))[0]
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').first.set_input_files(str(image))
    page.locator('[data-testid="stMetric"]', has_text="Quantized prediction").wait_for()
    wait_script_done(page)
    assert_clean(page)
    assert metric(page, "FP32 prediction") and metric(page, "Quantized prediction")
    assert charts(page, 2) >= 2  # the two top-3 bar charts
    screenshot(page, "predict")


def test_export_page(page) -> None:
    go(page, "Export")
    buttons = page.locator('[data-testid="stDownloadButton"]')
    buttons.nth(6).wait_for(timeout=RUN_TIMEOUT_MS)
    text = " ".join(buttons.all_inner_texts())
    for name in ("TorchScript", "Lite", "ONNX FP32", "ONNX INT8", "report.json", "report.md",
                 "report.html"):  # fmt: skip
        assert name in text, text
    assert_clean(page)
    screenshot(page, "export")
