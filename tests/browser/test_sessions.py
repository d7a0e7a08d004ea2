"""Two browser sessions on one server: the same recipe and the same analyses, one after the
other (a reload) and at the same time. Both get the same figures and no error element.

Before cached work became shared jobs, the second session replayed the progress bar the first
one drew inside the cached function: "CacheReplayClosureError: ... a streamlit element is
called on some layout block created outside the function".
"""

from __future__ import annotations

import re

import pytest

from tests.browser.driver import (
    assert_clean,
    errors_on,
    go,
    metric,
    new_tab,
    press,
    quantize,
    wait_script_done,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CARDS = ("Quantized top-1", "Size: x smaller", "Same top-1")


def _cards(page) -> dict[str, str]:
    # The summary re-draws itself while timing is pending: read it between two draws.
    wait_script_done(page)
    return {label: metric(page, label) for label in CARDS}


def test_a_second_session_quantizes_the_same_recipe(browser, app_url) -> None:
    first = new_tab(browser, app_url)
    quantize(first)
    assert_clean(first)
    figures = _cards(first)
    # A reload is a new session on the same server, with the run already cached.
    first.reload()
    quantize(first)
    assert_clean(first)
    assert _cards(first) == figures
    second = new_tab(browser, app_url)
    quantize(second)
    assert_clean(second)
    assert _cards(second) == figures
    for tab in (first, second):
        tab.context.close()


def test_two_sessions_at_the_same_time_share_one_run(browser, app_url) -> None:
    tabs = [new_tab(browser, app_url) for _ in range(2)]
    for tab in tabs:
        # A new session opens on the Quantize page; its first script run is left to finish
        # before the form is touched. Known defect, not root-caused: run alone on a fresh server,
        # this test failed in 3 of 5 runs on 2026-11-26 (2 of 2 before that wait, 1 of 3 after),
        # once because the "off" click never took and twice because one session's recipe said
        # "unfused" although nobody touched that box, so the two sessions ran different recipes.
        # It passed in every whole-suite run on a fresh clone that day.
        tab.get_by_role("heading", name="Quantize", exact=True).wait_for()
        wait_script_done(tab)
        # A recipe no other test ran: both sessions start it while neither is cached.
        group = tab.locator('[data-testid="stRadio"]', has_text="reduce_range")
        group.get_by_text("off", exact=True).click()
        wait_script_done(tab)
        # The rerun that applies the choice has drawn the recipe line (8-bit activations):
        # only then does Quantize start this recipe and not the cached default one.
        tab.get_by_text("histogram activations (8-bit)").first.wait_for()
    # Playwright's sync API is bound to its thread: click both in quick succession, then wait
    # for both (the server runs the two sessions' scripts concurrently).
    for tab in tabs:
        tab.get_by_role("button", name="Quantize", exact=True).click()
    for tab in tabs:
        tab.locator('[data-testid="stMetric"]', has_text="Size: x smaller").wait_for(
            timeout=15 * 60_000
        )
        wait_script_done(tab)
    for tab in tabs:
        assert errors_on(tab) == []
    # Which run each tab shows (its summary title and run key), for a failure message.
    shown = [
        (
            tab.get_by_role("heading", name=re.compile("^Summary:")).first.inner_text(),
            tab.get_by_text(re.compile("Run key")).first.inner_text(),
        )
        for tab in tabs
    ]
    assert all("(8-bit)" in title for title, _ in shown), shown
    assert _cards(tabs[0]) == _cards(tabs[1]), shown
    for tab in tabs:
        tab.context.close()


def test_cached_analyses_in_two_sessions(browser, app_url) -> None:
    """Each session opens the same run's analyses: the second gets the first one's cached work."""
    tabs = [new_tab(browser, app_url) for _ in range(2)]
    for tab in tabs:
        quantize(tab)
        go(tab, "Layers")
        for button in ("Measure sensitivity", "Run the bit-width sweep"):
            press(tab, button)
            assert errors_on(tab) == [], ("Layers", button)
        go(tab, "Export")
        assert errors_on(tab) == [], "Export"
    for tab in tabs:
        tab.context.close()
