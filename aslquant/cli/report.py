"""``python -m aslquant report``: quantize, evaluate, time; write report.json/md/html.

``report`` always fills report.json's ``layers`` (per-layer error). ``--onnx`` adds ONNX Runtime
FP32/INT8 measurements, ``--analysis`` the sensitivity and bit-width sections, ``--target-drop``
a mixed-precision search, ``--qat-vs-ptq`` a QAT run. Every section is computed as a new value
next to the run; the run itself is never changed.
"""

from __future__ import annotations

import argparse
import sys

from aslquant import analysis, experiments, export
from aslquant.cli import EXIT_GATE, EXIT_OK, ProgressBar
from aslquant.cli.options import add_run_options, config_from_args, points, whole_number
from aslquant.errors import UnsupportedCombination


def add_parser(sub) -> None:
    rep = sub.add_parser("report", help="quantize, evaluate, time; write report.json/md/html")
    add_run_options(rep)
    g = rep.add_argument_group("analysis and exports")
    g.add_argument("--onnx", action="store_true",
                   help="also export FP32/INT8 ONNX and measure them with ONNX Runtime")  # fmt: skip
    g.add_argument("--analysis", action="store_true",
                   help="add sensitivity (one layer in FP32 at a time) and a simulated bit sweep")  # fmt: skip
    g.add_argument("--target-drop", type=points, metavar="POINTS",
                   help="find the fewest FP32 layers that bring the drop to POINTS or less")  # fmt: skip
    g.add_argument("--qat-vs-ptq", type=whole_number(1, 50), metavar="EPOCHS",
                   help="also run QAT for EPOCHS and compare per-epoch accuracy with PTQ")  # fmt: skip
    g.add_argument("--layer-images", type=whole_number(1), default=analysis.LAYER_IMAGES,
                   help=f"evaluation images for per-layer SQNR (default {analysis.LAYER_IMAGES})")  # fmt: skip
    g.add_argument("--analysis-images", type=whole_number(1), default=analysis.VARIANT_IMAGES,
                   help="evaluation images for sensitivity / bit sweep / mixed precision "
                        f"(default {analysis.VARIANT_IMAGES})")  # fmt: skip
    gates = rep.add_argument_group("gates (exit 3 when one fails)")
    gates.add_argument("--fail-if-drop", type=points, metavar="POINTS",
                       help="exit 3 if top-1 drops by more than this many points")  # fmt: skip
    rep.add_argument("--out", required=True, help="output folder")
    rep.set_defaults(func=run)


def analyses(result, args: argparse.Namespace, progress, notes: list[str]) -> dict:
    """The report sections the flags ask for, each a new value (the run is not changed)."""
    state = analysis.RunAnalysis(result)  # shared by the sections below
    sections: dict = {"layers": state.layers(max_images=args.layer_images, progress=progress)}
    if args.onnx:
        sections["onnx"] = export.onnx_compare(result, out_dir=args.out, progress=progress)
    images = args.analysis_images
    ranking = None
    if args.analysis:
        try:
            ranking = analysis.sensitivity(result, progress=progress, max_images=images)
            sections["sensitivity"] = ranking
        except UnsupportedCombination as err:
            notes.append(f"sensitivity skipped: {err}")
        sections["bit_sweep"] = analysis.bit_sweep(state, progress=progress, max_images=images)
    if args.target_drop is not None:
        try:
            sections["mixed_precision"] = analysis.greedy_mixed_precision(
                result, args.target_drop, progress=progress, max_images=images, ranking=ranking
            )
        except UnsupportedCombination as err:
            notes.append(f"mixed precision search skipped: {err}")
    if args.qat_vs_ptq:
        sections["qat_vs_ptq"] = experiments.qat_vs_ptq(
            result.config, args.qat_vs_ptq, progress=progress
        )
    return {name: analysis.report_value(value) for name, value in sections.items()}


def _summary(report: dict) -> str:
    f, q = report["fp32"], report["int8"]
    return (
        f"{report['recipe']}\n"
        f"  top-1  FP32 {100 * f['accuracy']:.2f}%  quantized {100 * q['accuracy']:.2f}%  "
        f"(drop {report['accuracy_drop_points']:.2f} points, agreement {100 * report['agreement']:.2f}%,"
        f" {report['n_eval']} images)\n"
        f"  size   FP32 {f['size_bytes']:,} B  quantized {q['size_bytes']:,} B  "
        f"({report['size_ratio']:.2f}x smaller)\n"
        f"  b1 p50 FP32 {f['latency_ms']['b1_p50']:.2f} ms  quantized {q['latency_ms']['b1_p50']:.2f} ms"
        f"  ({report['latency_ratio_b1']:.2f}x), {report['threads']} threads"
    )


def run(args: argparse.Namespace) -> int:
    from aslquant import report as report_mod
    from aslquant.run import execute

    config = config_from_args(args)
    report_mod.prepare_out_dir(args.out)  # fail before minutes of work, not after
    bar = ProgressBar()
    result = execute(config, progress=bar)
    notes: list[str] = []
    sections = analyses(result, args, bar, notes)
    report = report_mod.report_dict(result, sections, notes=notes)
    files = report_mod.write_run_reports(report, args.out)
    print(_summary(report))
    print("wrote " + ", ".join(str(p) for p in files.values()))
    if result.skipped:
        print(f"note: {len(result.skipped)} files skipped (see report.md)", file=sys.stderr)
    if args.fail_if_drop is not None and result.accuracy_drop_points > args.fail_if_drop:
        print(
            f"top-1 dropped {result.accuracy_drop_points:.2f} points, more than "
            f"--fail-if-drop {args.fail_if_drop}",
            file=sys.stderr,
        )
        return EXIT_GATE
    return EXIT_OK
