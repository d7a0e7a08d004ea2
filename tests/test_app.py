"""Streamlit AppTest for every dashboard page (the live/predict engine: tests/test_live.py).

The app runs in-process against the demo checkpoint and labels and a real subset of the demo
images (4 per class), so a full default quantization finishes in well under a minute.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from aslquant.run import DEMO_DATA

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
PER_CLASS = 4
TIMEOUT = 900


def _small_demo(dest: Path) -> Path:
    """A real subset of the demo images: the first PER_CLASS of each class folder."""
    for cls in sorted(p for p in Path(DEMO_DATA).iterdir() if p.is_dir()):
        (dest / cls.name).mkdir(parents=True)
        for f in sorted(cls.glob("*.jpg"))[:PER_CLASS]:
            shutil.copy(f, dest / cls.name / f.name)
    return dest


def _no_errors(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _small_demo(tmp_path_factory.mktemp("demo_small"))


@pytest.fixture(scope="module")
def env(small_data: Path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ASLQUANT_DATA", str(small_data))
        yield mp


@pytest.fixture(scope="module")
def quantized_app(env) -> AppTest:
    """The app after pressing Quantize with the default recipe on the Quantize page."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    _no_errors(at)
    at.button(key="quantize").click().run()
    _no_errors(at)
    # The click returns once the evaluation is done; timing goes on in the background.
    _current(at).job.result(timeout=TIMEOUT)
    at.run()
    _no_errors(at)
    return at


def _current(at: AppTest):
    runs = at.session_state["aslquant_runs"]
    key = at.session_state["aslquant_current_run"]
    return next(e for e in runs if e.key == key)


def test_quantize_page_widgets_before_any_run(env) -> None:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    _no_errors(at)
    labels = {s.label for s in at.selectbox}
    assert {"Method", "Activation observer", "Weight observer", "Weight qscheme"} <= labels
    assert any(s.label.startswith("Backend") for s in at.selectbox)
    assert at.slider(key="q_calib").value == 64
    assert at.multiselect(key="q_keep").value == []
    assert at.radio(key="q_reduce").value == "default"
    assert at.button(key="quantize").label == "Quantize"
    # Each choice carries its one-line explanation for students.
    captions = " ".join(c.value for c in at.caption)
    assert "histogram" in captions.lower() and "per output channel" in captions
    assert not at.metric  # no summary before a run


@pytest.mark.slow
def test_default_quantize_produces_summary(quantized_app: AppTest) -> None:
    at = quantized_app
    entry = _current(at)
    r = entry.result
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Quantized top-1"] == f"{100 * r.int8.accuracy:.2f}%"
    ratio = r.fp32.size_bytes / r.int8.size_bytes
    assert metrics["Size: x smaller"] == f"{ratio:.2f}x"
    assert ratio > 3  # INT8 weights are a quarter of FP32 ones
    for batch in (1, 32):
        speedup = r.fp32.latency_ms[f"b{batch}_p50"] / r.int8.latency_ms[f"b{batch}_p50"]
        assert metrics[f"vs torch FP32, b{batch}"] == f"{speedup:.2f}x"
    assert metrics["Same top-1"] == f"{100 * r.agreement:.2f}%"
    assert r.n_eval == 29 * PER_CLASS - 64
    assert r.config.recipe.method == "static" and r.config.latency_runs >= 30
    assert any("python -m aslquant report" in c.value for c in at.code)
    history = at.dataframe[-1].value
    assert list(history["run"]) == [entry.number]


@pytest.mark.slow
def test_model_page(quantized_app: AppTest) -> None:
    at = quantized_app.switch_page("pages/model.py").run()
    _no_errors(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Classes"] == "29"
    card = at.dataframe[0].value
    assert list(card["layer"]) == ["conv1", "conv2", "conv3", "conv4", "fc1", "fc2"]
    assert card["parameters"].sum() == int(metrics["Parameters"].replace(",", ""))
    assert at.number_input(key="pp_size").value == 224
    assert len(at.image) == 29  # the per-class sample grid: one image per class
    assert [b.label for b in at.button] == ["Use these files"]


@pytest.mark.slow
def test_layers_page(quantized_app: AppTest) -> None:
    at = quantized_app.switch_page("pages/layers.py").run()
    _no_errors(at)
    charts = at.get("plotly_chart")
    assert len(charts) >= 3  # SQNR bars, histogram, playground
    assert at.selectbox(key="hist_layer").value == "conv1"
    assert {b.label for b in at.button} >= {"Measure sensitivity", "Run the bit-width sweep"}
    # The playground reacts: fewer bits -> lower SQNR.
    sqnr8 = float(next(m.value for m in at.metric if m.label == "SQNR").split()[0])
    at.slider(key="pg_bits_conv1_weights").set_value(3).run()
    _no_errors(at)
    sqnr3 = float(next(m.value for m in at.metric if m.label == "SQNR").split()[0])
    assert sqnr3 < sqnr8 - 20


@pytest.mark.slow
def test_layers_sensitivity_and_rerun(quantized_app: AppTest) -> None:
    at = quantized_app.switch_page("pages/layers.py").run()
    at.button(key="sens_go").click().run()
    _no_errors(at)
    assert len(at.get("plotly_chart")) >= 4
    before = len(at.session_state["aslquant_runs"])
    at.multiselect(key=f"sens_keep_{_current(at).key}").set_value(["conv1"]).run()
    at.button(key="sens_rerun").click().run()
    _no_errors(at)
    runs = at.session_state["aslquant_runs"]
    assert len(runs) == before + 1
    assert runs[-1].result.config.recipe.keep_fp32 == ("conv1",)
    # Back to the first run for the other tests.
    at.session_state["aslquant_current_run"] = runs[0].key


@pytest.mark.slow
def test_compare_page(quantized_app: AppTest) -> None:
    at = quantized_app.switch_page("pages/compare.py").run()
    _no_errors(at)
    assert len(at.get("plotly_chart")) >= 5  # runs bars, Pareto, 2 confusions, difference
    table = at.dataframe[0].value
    assert len(table) == len(at.session_state["aslquant_runs"])


@pytest.mark.slow
def test_predict_page(quantized_app: AppTest) -> None:
    at = quantized_app.switch_page("pages/predict.py").run()
    _no_errors(at)
    assert at.selectbox(key="predict_run").value == _current(at).key
    assert len(at.tabs) == 3
    assert [t.label for t in at.tabs] == ["Upload an image", "Camera snapshot", "Live webcam"]


@pytest.mark.slow
def test_export_page(quantized_app: AppTest) -> None:
    at = quantized_app.switch_page("pages/export.py").run()
    _no_errors(at)
    labels = [d.label for d in at.download_button]
    for name in ("TorchScript", "Lite", "ONNX FP32", "ONNX INT8", "report.json", "report.md",
                 "report.html"):  # fmt: skip
        assert any(name in label for label in labels), (name, labels)


def test_pages_without_a_run_offer_one(env) -> None:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    for page in ("layers", "compare", "predict", "export"):
        at.switch_page(f"pages/{page}.py").run()
        _no_errors(at)
        assert at.button(key="require_run").label == "Quantize with the default recipe"


def test_bad_checkpoint_shows_one_line_error(env, tmp_path: Path) -> None:
    from aslquant.ui.session import demo_source

    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"this is not a checkpoint")
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.session_state["aslquant_source"] = dataclasses.replace(
        demo_source(), checkpoint=str(bad), name="broken"
    )
    at.switch_page("pages/model.py").run()
    assert not at.exception
    assert len(at.error) == 1
    message = at.error[0].value
    assert "broken.pth" in message and "\n" not in message and "Traceback" not in message


@pytest.mark.slow
def test_run_history_keeps_ten_most_recent(quantized_app: AppTest) -> None:
    """add_run drops the oldest beyond MAX_RUNS and says so (real results, new keys)."""
    base = quantized_app.session_state["aslquant_runs"][0].job

    def script() -> None:
        import streamlit as st

        from aslquant.ui import session

        for i in range(session.MAX_RUNS + 2):
            session.add_run(f"k{i}", st.session_state["base"], 0.0)
        st.text(f"{len(session.runs())} {session.runs()[0].key} {len(session.evicted())}")

    at = AppTest.from_function(script, default_timeout=TIMEOUT)
    at.session_state["base"] = base
    at.run()
    assert not at.exception
    assert at.text[0].value == "10 k2 2"


@pytest.mark.slow
def test_summary_also_shows_the_speed_up_against_onnx_runtime_fp32(quantized_app: AppTest) -> None:
    from aslquant.baselines import STORE

    deadline = time.monotonic() + TIMEOUT
    while STORE.busy() and time.monotonic() < deadline:  # ONNX Runtime is timed in the background
        time.sleep(0.5)
    # Earlier tests may have left this session on another page.
    at = quantized_app.switch_page("pages/quantize.py").run()
    _no_errors(at)
    r = _current(at).result
    ort = STORE.onnx_fp32(r.baseline.key)
    assert ort and "latency_ms" in ort, ort
    metrics = {m.label: m.value for m in at.metric}
    for batch in (1, 32):
        speedup = ort["latency_ms"][f"b{batch}_p50"] / r.int8.latency_ms[f"b{batch}_p50"]
        assert metrics[f"vs ONNX RT FP32, b{batch}"] == f"{speedup:.2f}x"
    assert "than ONNX Runtime FP32" in at.markdown[0].value
