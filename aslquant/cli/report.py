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
from aslquant.machine import machine_summary
from aslquant.margins import flip_margins


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
    g.add_argument("--layer-images", type=whole_number(1, 4096), default=analysis.LAYER_IMAGES,
                   help=f"evaluation images for per-layer SQNR (default {analysis.LAYER_IMAGES})")  # fmt: skip
    g.add_argument("--analysis-images", type=whole_number(1, 4096), default=analysis.VARIANT_IMAGES,
                   help="evaluation images for sensitivity / bit sweep / mixed precision "
                        f"(default {analysis.VARIANT_IMAGES})")  # fmt: skip
    g.add_argument("--parity", action="store_true",
                   help="run the same images through every exported file (TorchScript, .ptl, "
                        "ONNX FP32/INT8) and compare them with the validated models")  # fmt: skip
    g.add_argument("--profile", action="store_true",
                   help="per-layer time of both models (torch.profiler), a threads x batch "
                        "table, and why INT8 is faster or slower on this CPU")  # fmt: skip
    g.add_argument("--seeds", type=whole_number(3, 20), metavar="K",
                   help="re-run the recipe with K calibration draws: the drop's seed spread "
                        "(the --fail-if-drop gate uses it too)")  # fmt: skip
    g.add_argument("--calibration-study", action="store_true",
                   help="accuracy vs calibration-set size (8/32/128/512) x 3 seeds")  # fmt: skip
    g.add_argument("--robustness", action="store_true",
                   help="FP32 vs INT8 on corrupted copies of the evaluation images (noise, blur, "
                        "JPEG, brightness, low resolution, webcam-like) at 3 severities")  # fmt: skip
    gates = rep.add_argument_group("gates (exit 3 when one fails)")
    gates.add_argument("--fail-if-drop", type=points, metavar="POINTS",
                       help="exit 3 if top-1 drops by more than this many points")  # fmt: skip
    gates.add_argument("--max-robust-gap", type=points, metavar="POINTS",
                       help="exit 3 if the INT8 gap on any corrupted split exceeds POINTS "
                            "(implies --robustness)")  # fmt: skip
    gates.add_argument("--max-runtime-disagreement", type=points, metavar="PCT",
                       help="exit 3 if a shipped file disagrees with the validated model on "
                            "more than PCT %% of images (implies --parity)")  # fmt: skip
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
    sections["margins"] = flip_margins(result.evaluation)
    if args.seeds:
        from aslquant.calibration_study import seed_spread_of

        sections["seed_spread"] = seed_spread_of(
            result.config, args.seeds, progress=progress, baseline=result.baseline
        )
    if args.calibration_study:
        from aslquant.calibration_study import calibration_size_study

        sections["calibration_study"] = calibration_size_study(
            result.config, progress=progress, baseline=result.baseline
        )
    if args.robustness or args.max_robust_gap is not None:
        from aslquant.robustness import robustness_split

        sections["robustness"] = robustness_split(result, progress=progress)
    if args.parity or args.max_runtime_disagreement is not None:
        from aslquant.parity import runtime_parity

        sections["parity"] = runtime_parity(result, args.out, progress=progress)
    if args.profile:
        from aslquant.profiling import explain_speed, threads_batch_table, time_breakdown

        breakdown = time_breakdown(result, progress=progress)
        table = threads_batch_table(result, progress=progress)
        sections["profile"] = {
            "breakdown": breakdown,
            "threads_batch": table,
            "explanation": list(explain_speed(breakdown, table)),
        }
    return sections


def gates(result, args: argparse.Namespace, sections: dict) -> list[dict]:
    """The verdict of every gate asked for, each with its evidence (report.json ``gates``)."""
    verdicts = []
    if args.fail_if_drop is not None:
        seeds = sections.get("seed_spread")
        verdict = result.drop_gate(args.fail_if_drop, seeds.drop if seeds else None)
        verdicts.append({"name": "--fail-if-drop", **verdict.to_dict()})
    if args.max_robust_gap is not None:
        from aslquant.robustness import robust_gap_gate

        verdict = robust_gap_gate(sections["robustness"], args.max_robust_gap)
        verdicts.append({"name": "--max-robust-gap", **verdict.to_dict()})
    if args.max_runtime_disagreement is not None:
        from aslquant.parity import runtime_gate

        verdict = runtime_gate(sections["parity"], args.max_runtime_disagreement)
        verdicts.append({"name": "--max-runtime-disagreement", **verdict.to_dict()})
    return verdicts


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
    sections["gates"] = gates(result, args, sections)
    sections["machine"] = machine_summary()
    report = report_mod.report_dict(result, sections, notes=notes)
    files = report_mod.write_run_reports(report, args.out)
    print(_summary(report))
    print("wrote " + ", ".join(str(p) for p in files.values()))
    if result.skipped:
        print(f"note: {len(result.skipped)} files skipped (see report.md)", file=sys.stderr)
    return _gates(report, args)


def _gates(report: dict, args: argparse.Namespace) -> int:
    """Print every gate's verdict with its evidence; exit 3 when one fails."""
    failed = False
    for gate in report.get("gates", []):
        print(f"gate {gate['name']}: {gate['reason']}", file=sys.stderr)
        failed |= gate["failed"]
    return EXIT_GATE if failed else EXIT_OK
