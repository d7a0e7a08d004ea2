"""The CLI's analysis wiring: report --onnx/--analysis/--target-drop, sweep, export."""

from __future__ import annotations

import json
import math

import pytest

from aslquant.cli import main
from aslquant.model import LAYER_NAMES

#: These tests check the wiring (sections, files, exit codes), not the demo's figures, so
#: every run is at 96 px: about 5x cheaper than the demo's 224 (timing included).
SIZE = ["--input-size", "96"]
#: Small runs: 2 images per class evaluated, 16 calibration images.
SMALL = ["--eval-images", "58", "--calib-images", "16", *SIZE]


@pytest.mark.slow
def test_report_onnx_writes_layers_onnx_and_html(tmp_path, capsys):
    out = tmp_path / "r"
    code = main(["report", *SMALL, "--onnx", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert [r["name"] for r in report["layers"]] == list(LAYER_NAMES)
    for row in report["layers"]:
        for key in ("weight_sqnr_db", "activation_sqnr_db", "activation_sqnr_isolated_db"):
            assert isinstance(row[key], float) and math.isfinite(row[key])
    for key in ("fp32", "int8"):
        onnx = report["onnx"][key]
        assert 0 <= onnx["accuracy"] <= 1
        assert onnx["latency_ms"]["b1_p50"] > 0 and onnx["latency_ms"]["b32_p95"] > 0
        assert (out / f"{key}.onnx").is_file()
    md = (out / "report.md").read_text()
    assert "## ONNX Runtime" in md and "## Per-layer error" in md
    page = (out / "report.html").read_text()
    assert 'id="sqnr"' in page and "ONNX Runtime" in page and "<script src" not in page
    assert "report.html" in capsys.readouterr().out


@pytest.mark.slow
def test_report_analysis_and_target_drop_sections(tmp_path, capsys):
    out = tmp_path / "a"
    args = ["report", *SMALL, "--analysis", "--analysis-images", "29"]
    code = main([*args, "--target-drop", "100", "--layer-images", "16", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert len(report["sensitivity"]) == 6 and report["sensitivity"][0]["rank"] == 1
    assert [r["bits"] for r in report["bit_sweep"]] == [8, 6, 5, 4, 3, 2]
    assert all(r["n_images"] == 29 for r in report["bit_sweep"])
    assert report["layers"][0]["n_images"] == 16
    mixed = report["mixed_precision"]
    assert mixed["reached"] and mixed["target_drop_points"] == 100.0
    md = (out / "report.md").read_text()
    assert "## Sensitivity" in md and "## Bit-width sweep" in md and "## Mixed precision" in md
    page = (out / "report.html").read_text()
    assert 'id="sensitivity"' in page and 'id="bits"' in page


@pytest.mark.slow
def test_sweep_subcommand_writes_pareto_data(tmp_path, capsys):
    out = tmp_path / "s"
    code = main(
        [
            "sweep",
            "--eval-images",
            "29",
            *SIZE,
            "--act-observers",
            "minmax",
            "histogram",
            "--weight-observers",
            "per-channel",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    rows = report["sweep"]
    assert len(rows) == 3 and rows[0]["method"] == "fp32"
    assert {r["act_observer"] for r in rows[1:]} == {"minmax", "histogram"}
    assert all(r["b1_p50"] > 0 and r["size_bytes"] > 0 for r in rows)
    assert "--act-observers minmax histogram" in report["command"]
    assert 'id="pareto"' in (out / "report.html").read_text()
    assert "Configuration sweep" in (out / "report.md").read_text()


@pytest.mark.slow
def test_sweep_varies_reduce_range_and_the_techniques(tmp_path, capsys):
    out = tmp_path / "s"
    args = ["--reduce-ranges", "on", "off", "--equalizes", "on", "off"]
    grid = ["--act-observers", "histogram", "--weight-observers", "per-channel", *args]
    run = ["sweep", "--eval-images", "29", "--calib-images", "16", *SIZE, *grid]
    code = main([*run, "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    recipes = [r["recipe"] for r in report["sweep"][1:]]
    assert sorted((r["reduce_range"], r["equalize"]) for r in recipes) == [
        (False, False),
        (False, True),
        (True, False),
        (True, True),
    ]
    assert len({r["label"] for r in report["sweep"]}) == 5  # each row says what it varied
    assert " ".join(args) in report["command"]


@pytest.mark.slow
def test_export_subcommand_writes_four_files(tmp_path, capsys):
    out = tmp_path / "e"
    code = main(["export", *SMALL, "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    for name in ("quantized.pt", "quantized.ptl", "fp32.onnx", "int8.onnx"):
        assert (out / name).is_file() and name in captured.out
    assert "ExecuTorch" in captured.err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["report", "--target-drop", "-1"], "--target-drop"),
        (["report", "--target-drop", "lots"], "--target-drop"),
        (["report", "--analysis-images", "0"], "--analysis-images"),
        (["sweep", "--backends", "tpu"], "tpu"),
        (["sweep", "--methods", "qat"], "qat"),
    ],
)
def test_bad_options_exit_2_with_one_line(argv, message, tmp_path, capsys):
    code = main([*argv, "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err
    assert not (tmp_path / "x").exists()  # rejected before any work
