"""One Streamlit AppTest per dashboard page, plus uploads and a second session.

The app runs in-process against the demo checkpoint and labels and a real subset of the demo
images (6 per class; the Ship check and the doctor scale with them: 6 instead of 8 took the
page tests from 154 s to 129 s on one core), so the default quantization takes seconds. The
browser tests (tests/browser/) keep only what needs a browser: real uploads, charts rendering,
the webcam.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from aslquant.run import DEMO_DATA, DEMO_LABELS

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
PER_CLASS = 6
#: Calibration images the tests quantize with (the form's default is 64). Every analysis the
#: pages start re-calibrates several recipes (the doctor 16 times), and calibration dominates
#: their cost; 16 images still give each observer a range.
CALIB = 16
TIMEOUT = 900


def _subset(dest: Path, per_class: int = PER_CLASS) -> Path:
    """A real subset of the demo images: the first ``per_class`` of each class folder."""
    for cls in sorted(p for p in Path(DEMO_DATA).iterdir() if p.is_dir()):
        (dest / cls.name).mkdir(parents=True)
        for f in sorted(cls.glob("*.jpg"))[:per_class]:
            shutil.copy(f, dest / cls.name / f.name)
    return dest


def _no_errors(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _current(at: AppTest):
    runs = at.session_state["aslquant_runs"]
    key = at.session_state["aslquant_current_run"]
    return next(e for e in runs if e.key == key)


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    data = _subset(tmp_path_factory.mktemp("demo_subset"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ASLQUANT_DATA", str(data))
        yield mp


@pytest.fixture(scope="module")
def quantized_app(env) -> AppTest:
    """The app after pressing Quantize with the default recipe, its timing finished."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    _no_errors(at)
    at.slider(key="q_calib").set_value(CALIB).run()
    at.button(key="quantize").click().run()
    _no_errors(at)
    # The click returns once the evaluation is done; timing goes on in the background.
    _current(at).job.result(timeout=TIMEOUT)
    at.run()
    _no_errors(at)
    return at


def test_quantize_page_form_before_any_run(env) -> None:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    _no_errors(at)
    labels = {s.label for s in at.selectbox}
    assert {"Method", "Activation observer", "Weight observer", "Weight qscheme"} <= labels
    assert at.slider(key="q_calib").value == 64
    assert at.multiselect(key="q_keep").value == []
    assert at.radio(key="q_reduce").value == "default"
    # Each choice carries its one-line explanation for students.
    captions = " ".join(c.value for c in at.caption)
    assert "histogram" in captions.lower() and "per output channel" in captions
    assert not at.metric  # no summary before a run
    # A combination the registry refuses is refused while the form is edited, not on Quantize.
    at.selectbox(key="q_method").set_value("pt2e").run()
    at.selectbox(key="q_act").set_value("minmax").run()
    assert len(at.error) == 1 and "chooses its own observers" in at.error[0].value
    assert at.button(key="quantize").disabled


@pytest.mark.slow
def test_quantize_page_summary(quantized_app: AppTest) -> None:
    at = quantized_app.switch_page("pages/quantize.py").run()
    _no_errors(at)
    r = _current(at).result
    metrics = _metrics(at)
    assert metrics["Quantized top-1"] == f"{100 * r.int8.accuracy:.2f}%"
    assert metrics["Size: x smaller"] == f"{r.size_ratio:.2f}x"
    for batch in (1, 32):
        assert metrics[f"vs torch FP32, b{batch}"] == f"{r.speedup(batch):.2f}x"
    assert metrics["Same top-1"] == f"{100 * r.agreement:.2f}%"
    assert r.n_eval == 29 * PER_CLASS - CALIB and r.n_calib == CALIB
    # The drop's interval and the McNemar verdict are on the page.
    captions = " ".join(c.value for c in at.caption)
    assert "95% CI" in captions and "McNemar" in captions or "distinguishable" in captions
    assert any("python -m aslquant report" in c.value for c in at.code)


@pytest.mark.slow
def test_a_second_session_gets_the_same_run(quantized_app: AppTest, env) -> None:
    first = _current(quantized_app)
    other = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    other.slider(key="q_calib").set_value(CALIB).run()
    other.button(key="quantize").click().run()
    _no_errors(other)
    second = _current(other)
    assert second.key == first.key and second.job is first.job  # one shared job, not two runs
    assert _metrics(other)["Quantized top-1"] == _metrics(quantized_app)["Quantized top-1"]


@pytest.mark.slow
def test_model_page(quantized_app: AppTest) -> None:
    at = quantized_app.switch_page("pages/model.py").run()
    _no_errors(at)
    metrics = _metrics(at)
    assert metrics["Classes"] == "29"
    card = at.dataframe[0].value
    assert list(card["layer"]) == ["conv1", "conv2", "conv3", "conv4", "fc1", "fc2"]
    assert len(at.image) == 29  # the per-class sample grid: one image per class


@pytest.mark.slow
def test_layers_page(quantized_app: AppTest) -> None:
    at = quantized_app.switch_page("pages/layers.py").run()
    _no_errors(at)
    assert len(at.get("plotly_chart")) >= 3  # SQNR bars, histogram, playground
    # The playground reacts: fewer bits -> lower SQNR.
    sqnr8 = float(next(m.value for m in at.metric if m.label == "SQNR").split()[0])
    at.slider(key="pg_bits_conv1_weights").set_value(3).run()
    _no_errors(at)
    sqnr3 = float(next(m.value for m in at.metric if m.label == "SQNR").split()[0])
    assert sqnr3 < sqnr8 - 20
    # Sensitivity, then "keep in FP32 and re-run" adds a run that keeps conv1 in float.
    at.button(key="sens_go").click().run()
    _no_errors(at)
    before = len(at.session_state["aslquant_runs"])
    at.multiselect(key=f"sens_keep_{_current(at).key}").set_value(["conv1"]).run()
    at.button(key="sens_rerun").click().run()
    _no_errors(at)
    runs = at.session_state["aslquant_runs"]
    assert len(runs) == before + 1 and runs[-1].result.config.recipe.keep_fp32 == ("conv1",)
    at.session_state["aslquant_current_run"] = runs[0].key  # back to the first run


@pytest.mark.slow
def test_doctor_page(quantized_app: AppTest) -> None:
    at = quantized_app.switch_page("pages/doctor.py").run()
    _no_errors(at)
    at.button(key="doctor_go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.get("plotly_chart")) >= 2  # per-point evidence, remedies of the top finding
    assert any("python -m aslquant report" in c.value for c in at.code)  # the replay command
    assert any(e.label.startswith("1. ") for e in at.expander)


@pytest.mark.slow
def test_compare_page(quantized_app: AppTest) -> None:
    at = quantized_app.switch_page("pages/compare.py").run()
    _no_errors(at)
    assert len(at.get("plotly_chart")) >= 5  # runs bars, Pareto, 2 confusions, difference
    at.button(key="breakdown_go").click().run()
    _no_errors(at)
    assert len(at.get("plotly_chart")) >= 6  # + where the time goes


@pytest.mark.slow
def test_predict_page(quantized_app: AppTest) -> None:
    at = quantized_app.switch_page("pages/predict.py").run()
    _no_errors(at)
    assert at.selectbox(key="predict_run").value == _current(at).key
    assert [t.label for t in at.tabs] == [
        "Upload an image",
        "Camera snapshot",
        "Live webcam",
        "Your own conditions",
    ]
    # Before any snapshot the own-conditions tab offers the letters and says it has none.
    assert at.selectbox(key="own_label").options[:3] == ["A", "B", "C"]
    assert any(m.value == "No snapshots yet." for m in at.info)
    texts = [m.value for m in at.info]
    assert any("trained on synthetic rendered hands" in t for t in texts), texts


@pytest.mark.slow
def test_ship_check_page(quantized_app: AppTest) -> None:
    at = quantized_app.switch_page("pages/ship.py").run()
    _no_errors(at)
    at.button(key="ship_go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    verdicts = " ".join(a.value for kind in (at.success, at.warning, at.error) for a in kind)
    for gate in ("Accuracy drop", "Robustness gap", "Runtime parity", "Latency"):
        assert gate in verdicts, gate
    assert len(at.get("plotly_chart")) >= 2  # robustness, margins


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
    for page in ("layers", "doctor", "compare", "predict", "ship", "export"):
        at.switch_page(f"pages/{page}.py").run()
        _no_errors(at)
        assert at.button(key="require_run").label == "Quantize with the default recipe"


def _upload(at: AppTest, checkpoint: tuple[str, bytes], labels: tuple[str, bytes]) -> AppTest:
    at.switch_page("pages/model.py").run()
    uploaders = at.get("file_uploader")
    uploaders[0].set_value((*checkpoint, "application/octet-stream"))
    uploaders[1].set_value((*labels, "application/octet-stream"))
    return at.button(key="FormSubmitter:upload_model-Use these files").click().run()


def test_uploads_use_the_same_loaders_and_bounds(env) -> None:
    """A compression-bomb checkpoint and a corrupted lb.pkl each give one st.error; the app
    keeps serving (a later run of the page works)."""
    from tests.test_hostile_checkpoints import _bomb

    good_labels = Path(DEMO_LABELS).read_bytes()
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    started = time.perf_counter()
    _upload(at, ("bomb.pth", _bomb(3, 256 * 1024 * 1024)), ("lb.pkl", good_labels))
    assert time.perf_counter() - started < 10
    assert not at.exception
    assert len(at.error) == 1 and "bomb.pth" in at.error[0].value
    corrupt = bytearray(good_labels)
    corrupt[len(corrupt) // 2] ^= 0xFF
    checkpoint = (ROOT / "sample_data" / "model.pth").read_bytes()
    _upload(at, ("model.pth", checkpoint), ("lb.pkl", bytes(corrupt)))
    assert not at.exception
    assert len(at.error) == 1 and "lb.pkl" in at.error[0].value and "\n" not in at.error[0].value
    at.switch_page("pages/quantize.py").run()
    _no_errors(at)  # still the demo model: nothing from the refused files was used


def test_bad_checkpoint_on_disk_shows_one_line_error(env, tmp_path: Path) -> None:
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
    """add_run drops the oldest beyond MAX_RUNS and says so (real jobs, new keys)."""
    job = quantized_app.session_state["aslquant_runs"][0].job

    def script() -> None:
        import streamlit as st

        from aslquant.ui import session

        for i in range(session.MAX_RUNS + 2):
            session.add_run(f"k{i}", st.session_state["job"], 0.0)
        st.text(f"{len(session.runs())} {session.runs()[0].key} {len(session.evicted())}")

    at = AppTest.from_function(script, default_timeout=TIMEOUT)
    at.session_state["job"] = job
    at.run()
    assert not at.exception
    assert at.text[0].value == "10 k2 2"


@pytest.mark.slow
def test_summary_shows_the_speed_up_against_onnx_runtime_fp32(quantized_app: AppTest) -> None:
    from aslquant.baselines import STORE

    # Showing the page asks for the run's FP32 side (measured again if the bounded store has
    # dropped it while other pages' analyses used other image sets); ONNX Runtime is timed in
    # the background, and the page shows its figure on the next rerun.
    at = quantized_app.switch_page("pages/quantize.py").run()
    deadline = time.monotonic() + TIMEOUT
    while STORE.busy() and time.monotonic() < deadline:
        time.sleep(0.5)
    at.run()
    _no_errors(at)
    r = _current(at).result
    ort = STORE.onnx_fp32(r.baseline.key)
    assert ort and "latency_ms" in ort, ort
    metrics = _metrics(at)
    for batch in (1, 32):
        speedup = r.speedup(batch, against=ort["latency_ms"])
        assert metrics[f"vs ONNX RT FP32, b{batch}"] == f"{speedup:.2f}x"
