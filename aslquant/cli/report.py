"""CLI wiring for analysis and exports (imported by ``aslquant.cli`` when it starts).

* ``report`` always fills report.json's ``layers`` and writes report.html next to report.md;
  ``--onnx`` adds ONNX Runtime FP32/INT8 measurements, ``--analysis`` the sensitivity and
  bit-width sections, ``--target-drop`` a mixed-precision search, ``--qat-vs-ptq`` a QAT run.
* ``sweep`` runs a grid of recipes and writes the Pareto data (report.json ``sweep``).
* ``export`` writes quantized.pt, quantized.ptl, fp32.onnx and int8.onnx.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from aslquant import analysis, cli, export
from aslquant.errors import UnsupportedCombination
from aslquant.recipe import ACT_OBSERVERS, BACKENDS, METHODS, QSCHEMES, WEIGHT_OBSERVERS


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {number}")
    return number


def _points(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of points, got {value!r}") from None
    if not number >= 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {value}")
    return number


def report_hook(result, args: argparse.Namespace, progress) -> None:
    """Fill layers (always), onnx and the analysis sections the flags ask for."""
    result.layers = analysis.layer_errors(
        result, max_images=getattr(args, "layer_images", analysis.LAYER_IMAGES), progress=progress
    )
    if getattr(args, "onnx", False):
        result.onnx = export.onnx_compare(result, out_dir=args.out, progress=progress)
    images = getattr(args, "analysis_images", analysis.VARIANT_IMAGES)
    ranking = None
    if getattr(args, "analysis", False):
        try:
            ranking = analysis.sensitivity(result, progress=progress, max_images=images)
            result.extra["sensitivity"] = ranking
        except UnsupportedCombination as err:
            result.notes.append(f"sensitivity skipped: {err}")
        result.extra["bit_sweep"] = analysis.bit_sweep(result, progress=progress, max_images=images)
    target = getattr(args, "target_drop", None)
    if target is not None:
        try:
            result.extra["mixed_precision"] = analysis.greedy_mixed_precision(
                result, target, progress=progress, max_images=images, ranking=ranking
            )
        except UnsupportedCombination as err:
            result.notes.append(f"mixed precision search skipped: {err}")
    epochs = getattr(args, "qat_vs_ptq", None)
    if epochs:
        result.extra["qat_vs_ptq"] = analysis.qat_vs_ptq(result.config, epochs, progress=progress)


def write_hook(result, args: argparse.Namespace, files: dict) -> dict:
    """report.html beside report.json, and the analysis sections appended to report.md."""
    from aslquant.report import report_dict
    from aslquant.report_html import analysis_markdown, report_html

    report = report_dict(result)
    extra_md = analysis_markdown(report)
    if extra_md and "md" in files:
        with open(files["md"], "a", encoding="utf-8") as handle:
            handle.write("\n" + extra_md)
    path = files["json"].parent / "report.html"
    path.write_text(report_html(report), encoding="utf-8")
    return {"html": path}


# --- sweep -----------------------------------------------------------------------------------


def cmd_sweep(args: argparse.Namespace) -> int:
    from aslquant.report import _clean, prepare_out_dir
    from aslquant.report_html import sweep_html, sweep_markdown

    config = cli.config_from_args(args)
    out = prepare_out_dir(args.out)
    grid = {}
    for key, attr in (
        ("method", "methods"),
        ("backend", "backends"),
        ("act_observer", "act_observers"),
        ("weight_observer", "weight_observers"),
        ("qscheme", "qschemes"),
    ):
        values = getattr(args, attr)
        if values:
            grid[key] = list(dict.fromkeys(values))
    rows = analysis.config_sweep(config, grid, progress=cli.ProgressBar())
    command = config.cli_command().replace(" report ", " sweep ", 1)
    for key, attr in (
        ("method", "--methods"),
        ("backend", "--backends"),
        ("act_observer", "--act-observers"),
        ("weight_observer", "--weight-observers"),
        ("qscheme", "--qschemes"),
    ):
        if key in grid:
            command += f" {attr} " + " ".join(shlex.quote(v) for v in grid[key])
    report = _clean({"config": config.to_dict(), "command": command, "grid": grid, "sweep": rows})
    files = {
        "json": out / "report.json",
        "md": out / "report.md",
        "html": out / "report.html",
    }
    files["json"].write_text(json.dumps(report, indent=2))
    files["md"].write_text(sweep_markdown(report["sweep"], command))
    files["html"].write_text(sweep_html(report["sweep"], command), encoding="utf-8")
    for row in report["sweep"]:
        if row.get("accuracy") is None:
            print(f"  {row.get('label', '?')}: {row.get('error', 'failed')}")
            continue
        print(
            f"  {100 * row['accuracy']:6.2f}%  b1 {row['b1_p50']:7.2f} ms  "
            f"b32 {row['b32_p50']:8.2f} ms  {row['size_bytes'] / 1e6:6.3f} MB  {row['label']}"
        )
    print("wrote " + ", ".join(str(p) for p in files.values()))
    return cli.EXIT_OK


# --- export ----------------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    from aslquant.report import prepare_out_dir
    from aslquant.run import execute

    config = cli.config_from_args(args)
    out = prepare_out_dir(args.out)
    result = execute(config, progress=cli.ProgressBar())
    files = export.export_models(result, out)
    for name, path in files.items():
        print(f"{name:12s} {path}  ({path.stat().st_size:,} bytes)")
    print(f"warning: {export.LITE_DEPRECATION}", file=sys.stderr)
    for note in result.notes:
        if note != export.LITE_DEPRECATION:
            print(f"note: {note}", file=sys.stderr)
    return cli.EXIT_OK


def extend(subparsers) -> None:
    """Add the analysis flags to ``report`` and the ``sweep`` and ``export`` subcommands."""
    rep = subparsers.choices["report"]
    g = rep.add_argument_group("analysis and exports")
    g.add_argument("--onnx", action="store_true",
                   help="also export FP32/INT8 ONNX and measure them with ONNX Runtime")  # fmt: skip
    g.add_argument("--analysis", action="store_true",
                   help="add sensitivity (one layer in FP32 at a time) and a simulated bit sweep")  # fmt: skip
    g.add_argument("--target-drop", type=_points, metavar="POINTS",
                   help="find the fewest FP32 layers that bring the drop to POINTS or less")  # fmt: skip
    g.add_argument("--qat-vs-ptq", type=_positive, metavar="EPOCHS",
                   help="also run QAT for EPOCHS and compare per-epoch accuracy with PTQ")  # fmt: skip
    g.add_argument("--layer-images", type=_positive, default=analysis.LAYER_IMAGES,
                   help=f"evaluation images for per-layer SQNR (default {analysis.LAYER_IMAGES})")  # fmt: skip
    g.add_argument("--analysis-images", type=_positive, default=analysis.VARIANT_IMAGES,
                   help="evaluation images for sensitivity / bit sweep / mixed precision "
                        f"(default {analysis.VARIANT_IMAGES})")  # fmt: skip

    sw = subparsers.add_parser(
        "sweep", help="accuracy, latency and size over a grid of recipes (Pareto data)"
    )
    cli.add_run_options(sw)
    s = sw.add_argument_group("grid (default: static on x86, every observer pair)")
    s.add_argument("--methods", nargs="+", choices=[m for m in METHODS if m != "qat"])
    s.add_argument("--backends", nargs="+", choices=list(BACKENDS))
    s.add_argument("--act-observers", nargs="+", choices=list(ACT_OBSERVERS))
    s.add_argument("--weight-observers", nargs="+", choices=list(WEIGHT_OBSERVERS))
    s.add_argument("--qschemes", nargs="+", choices=list(QSCHEMES))
    sw.add_argument("--out", required=True, help="output folder")
    sw.set_defaults(func=cmd_sweep)

    ex = subparsers.add_parser(
        "export", help="write quantized.pt, quantized.ptl, fp32.onnx and int8.onnx"
    )
    cli.add_run_options(ex)
    ex.add_argument("--out", required=True, help="output folder")
    ex.set_defaults(func=cmd_export)


def _register() -> None:
    if report_hook not in cli.REPORT_HOOKS:
        cli.REPORT_HOOKS.append(report_hook)
    if write_hook not in cli.WRITE_HOOKS:
        cli.WRITE_HOOKS.append(write_hook)
    if extend not in cli.PARSER_EXTENSIONS:
        cli.PARSER_EXTENSIONS.append(extend)


_register()
