"""`python -m aslquant report`: the report contract, exit codes, and plain-PyTorch equality."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aslquant.cli import main
from aslquant.run import DEMO_CHECKPOINT, DEMO_DATA, DEMO_LABELS
from tests.seed_model import SeedCustomCNN

REPO = Path(__file__).resolve().parent.parent


#: Images the demo report evaluates: 20 per class, stratified (FP32 scores ~93% on them). The
#: default evaluates all 1096 non-calibration images, 8 s more on one core;
#: test_default_split_evaluates_every_other_image checks that default without evaluating.
DEMO_EVAL_IMAGES = 580
#: Images for the per-layer error section (default 256, 4 s more at 224 px on one core).
DEMO_LAYER_IMAGES = 32


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory) -> tuple[dict, Path, str]:
    out = tmp_path_factory.mktemp("report")
    args = ["--verbose", "report", "--eval-images", str(DEMO_EVAL_IMAGES),
            "--layer-images", str(DEMO_LAYER_IMAGES), "--out", str(out)]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "aslquant", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads((out / "report.json").read_text()), out, proc.stderr


@pytest.mark.slow
def test_demo_report_contract(demo_report):
    report, out, stderr = demo_report
    assert (out / "report.md").read_text().startswith("# aslquant report")
    for key in (
        "config",
        "fp32",
        "int8",
        "agreement",
        "n_eval",
        "threads",
        "flipped",
        "layers",
        "onnx",
    ):
        assert key in report
    for model in ("fp32", "int8"):
        m = report[model]
        assert 0 <= m["accuracy"] <= 1 and 0 <= m["top5"] <= 1 and m["top5"] >= m["accuracy"]
        assert isinstance(m["size_bytes"], int) and m["size_bytes"] > 0
        assert set(m["latency_ms"]) == {"b1_p50", "b1_p95", "b32_p50", "b32_p95"}
        assert m["latency_ms"]["b1_p95"] >= m["latency_ms"]["b1_p50"] > 0
    assert report["fp32"]["size_bytes"] / report["int8"]["size_bytes"] >= 3.5
    assert [row["n_images"] for row in report["layers"]] == [DEMO_LAYER_IMAGES] * 6
    assert report["config"]["recipe"]["method"] == "static"
    assert report["config"]["recipe"]["reduce_range"] is True
    assert report["config"]["preprocess"]["input_size"] == 224
    assert report["n_calib"] == 64 and report["n_eval"] == DEMO_EVAL_IMAGES
    assert report["config"]["eval_images"] == DEMO_EVAL_IMAGES
    assert report["fp32"]["accuracy"] >= 0.90  # the demo at its trained size (224 px)
    agree = report["agreement"]
    assert len(report["flipped"]) == round((1 - agree) * report["n_eval"])
    for row in report["flipped"]:
        assert row["fp32"] != row["int8"] and set(row) >= {"path", "true", "fp32", "int8"}
    assert "calibrating" in stderr and "evaluating" in stderr  # --verbose: progress on stderr


def test_default_split_evaluates_every_other_image(tmp_path):
    """Without --calib-data or --eval-images, the 64 calibration images are not evaluated on
    and every other demo image is (what a plain `report` evaluates: 1160 - 64)."""
    from aslquant.cli import build_parser
    from aslquant.cli.options import config_from_args
    from aslquant.run import load_inputs

    args = build_parser().parse_args(["report", "--out", str(tmp_path / "x")])
    inputs = load_inputs(config_from_args(args))
    calib = {item.path for item in inputs.calib_items}
    evaluated = {item.path for item in inputs.eval_items}
    assert len(calib) == 64 and len(evaluated) == 1160 - 64 and not calib & evaluated


@pytest.fixture
def shared_runs(monkeypatch):
    """The CLI runs of one test whose configurations are identical (only a gate threshold
    differs) quantize, evaluate and time once: later runs reuse that deterministic result,
    while argument parsing, the analyses, the gates and the exit code run every time."""
    import aslquant.run

    real, done = aslquant.run.execute, {}

    def execute(config, *args, **kwargs):
        if config not in done:
            done[config] = real(config, *args, **kwargs)
        return done[config]

    monkeypatch.setattr(aslquant.run, "execute", execute)
    return done


@pytest.fixture(scope="module")
def planted_checkpoint(tmp_path_factory) -> Path:
    """The demo model with conv2's channel 3 made 50x larger (and conv3 compensating): the
    same function in FP32, but per-tensor INT8 weights and activations collapse."""
    from aslquant.equalize import rescale_channel
    from aslquant.model import load_checkpoint
    from aslquant.run import DEMO_CHECKPOINT

    model = rescale_channel(load_checkpoint(DEMO_CHECKPOINT), "conv2", 3, 50.0)
    path = tmp_path_factory.mktemp("planted") / "planted.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.mark.slow
def test_fail_if_drop_gate_says_beyond_or_within_the_uncertainty(
    planted_checkpoint, shared_runs, tmp_path, capsys
):
    args = ["report", "--checkpoint", str(planted_checkpoint), "--eval-images", "116",
            "--calib-images", "16", "--weight-observer", "minmax", "--input-size", "128"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "a"), "--fail-if-drop", "100"]) == 0
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    drop = report["uncertainty"]["drop"]
    assert drop["low"] > 2  # the planted channel really hurts
    assert report["gates"][0]["outcome"] == "pass"
    capsys.readouterr()
    # A gate far below the whole interval fails beyond the uncertainty.
    assert main([*args, "--out", str(tmp_path / "b"), "--fail-if-drop", "1"]) == 3
    assert "fail beyond uncertainty" in capsys.readouterr().err
    # Just below the estimate, inside the interval: it fails, and says the call is uncertain.
    within = (drop["estimate"] + drop["low"]) / 2
    assert main([*args, "--out", str(tmp_path / "c"), "--fail-if-drop", f"{within:.3f}"]) == 3
    assert "fail within uncertainty" in capsys.readouterr().err
    assert len(shared_runs) == 1  # the three runs had one configuration


#: The side both evaluations below resize to. Not the demo's 224 (its images are 224 px, so
#: that resize is a no-op and costs 5x more): at 96 the resize itself is compared too, and
#: the demo still scores well above chance (about 58% at scale 1), so a mismatch would show.
FOREIGN_SIZE = 96


def _plain_pytorch_accuracy(
    model: torch.nn.Module, folder: Path, names: list[str], scale: int, bgr: bool
) -> float:
    """An evaluation written the way a user would, independent of aslquant.data."""
    correct = total = 0
    size = (FOREIGN_SIZE, FOREIGN_SIZE)
    for index, name in enumerate(names):
        for path in sorted((folder / name).glob("*.jpg")):
            img = Image.open(path).convert("RGB").resize(size, Image.BILINEAR)
            arr = np.asarray(img, dtype=np.float32)
            if bgr:
                arr = arr[:, :, ::-1]
            if scale == 1:
                arr = arr / 255.0
            x = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None]
            with torch.no_grad():
                correct += int(model(x).argmax(1).item() == index)
            total += 1
    return correct / total


@pytest.mark.slow
@pytest.mark.parametrize("scale, bgr", [(1, False), (255, True)])
def test_foreign_seed_checkpoint_matches_plain_pytorch(tmp_path, scale, bgr):
    """A seed-class checkpoint + real joblib lb.pkl: our FP32 accuracy equals a plain loop's."""
    joblib = pytest.importorskip("joblib")
    from sklearn.preprocessing import LabelBinarizer

    names = sorted(p.name for p in DEMO_DATA.iterdir() if p.is_dir())
    seed = SeedCustomCNN(len(names))
    seed.load_state_dict(torch.load(DEMO_CHECKPOINT, weights_only=True))
    seed.eval()
    torch.save(seed.state_dict(), tmp_path / "model.pth")
    joblib.dump(LabelBinarizer().fit(names), tmp_path / "lb.pkl")
    # A small evaluation folder: 6 images per class copied from the demo.
    folder = tmp_path / "eval"
    for name in names:
        (folder / name).mkdir(parents=True)
        for src in sorted((DEMO_DATA / name).glob("*.jpg"))[:6]:
            (folder / name / src.name).write_bytes(src.read_bytes())
    calib = tmp_path / "calib"
    for name in names[:2]:
        (calib / name).mkdir(parents=True)
        for src in sorted((DEMO_DATA / name).glob("*.jpg"))[6:8]:
            (calib / name / src.name).write_bytes(src.read_bytes())
    flags = ["--scale", str(scale), "--input-size", str(FOREIGN_SIZE)] + (["--bgr"] if bgr else [])
    out = tmp_path / "out"
    code = main(
        ["report", "--checkpoint", str(tmp_path / "model.pth"), "--labels", str(tmp_path / "lb.pkl"),
         "--data", str(folder), "--calib-data", str(calib), "--calib-images", "4", *flags,
         "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    expected = _plain_pytorch_accuracy(seed, folder, names, scale, bgr)
    assert report["n_eval"] == 6 * len(names)
    assert report["config"]["preprocess"]["input_size"] == FOREIGN_SIZE
    assert report["fp32"]["accuracy"] == pytest.approx(expected, abs=1e-9)


def test_demo_paths_exist():
    assert DEMO_CHECKPOINT.is_file() and DEMO_LABELS.is_file() and DEMO_DATA.is_dir()


@pytest.mark.slow
def test_runtime_disagreement_gate_fails_when_a_shipped_file_differs(
    planted_checkpoint, tmp_path, capsys
):
    """ONNX Runtime's INT8 file (per-channel weights) and the validated torch model
    (per-tensor weights collapsed by the planted channel) answer differently: exit 3."""
    args = ["report", "--checkpoint", str(planted_checkpoint), "--eval-images", "58",
            "--calib-images", "16", "--weight-observer", "minmax", "--input-size", "96"]  # fmt: skip
    code = main([*args, "--out", str(tmp_path / "a"), "--max-runtime-disagreement", "1"])
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    gate = report["gates"][0]
    assert gate["name"] == "--max-runtime-disagreement" and gate["failed"]
    assert code == 3
    assert "onnx" in capsys.readouterr().err.lower()
    int8 = next(c for c in report["parity"]["shipped"] if c["runtime"] == "onnx_int8")
    assert int8["disagreeing"] > 0 and len(int8["images"]) == int8["disagreeing"]
    # Files the run could export exactly reproduce it.
    ts = next(c for c in report["parity"]["shipped"] if c["runtime"] == "torchscript")
    assert ts["disagreeing"] == 0


@pytest.mark.slow
def test_robust_gap_gate_fails_on_a_model_int8_breaks(planted_checkpoint, tmp_path, capsys):
    args = ["report", "--checkpoint", str(planted_checkpoint), "--eval-images", "58",
            "--calib-images", "16", "--weight-observer", "minmax", "--input-size", "96"]  # fmt: skip
    code = main([*args, "--out", str(tmp_path / "a"), "--max-robust-gap", "2", "--seeds", "3"])
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    names = [g["name"] for g in report["gates"]]
    assert names == ["--max-robust-gap"]
    assert report["gates"][0]["failed"] and code == 3
    assert "--max-robust-gap" in capsys.readouterr().err
    rows = report["robustness"]["rows"]
    assert rows[0]["corruption"] == "clean" and len(rows) == 1 + 8 * 3
    assert report["seed_spread"]["k"] == 3 and len(report["seed_spread"]["draws"]) == 3
    assert report["margins"]["flips"] == len(report["flipped"])
    markdown = (tmp_path / "a" / "report.md").read_text()
    for title in ("Robustness", "Calibration luck", "confidence margin", "Gates"):
        assert title in markdown


def test_progress_is_silent_off_a_terminal_unless_verbose(monkeypatch):
    """A script or CI log sees only the error line; --verbose adds one line per stage."""
    import io

    import aslquant.cli as cli

    for verbose, expected in ((False, ""), (True, "calibrating ... ")):
        monkeypatch.setattr(cli, "_VERBOSE", verbose)
        stream = io.StringIO()
        bar = cli.ProgressBar(stream)
        bar("calibrating", 0.5)
        bar("calibrating", 1.0)
        assert stream.getvalue().startswith(expected) and stream.getvalue().count("\n") == verbose
