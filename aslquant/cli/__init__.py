"""`python -m aslquant`: the headless view of the engine.

Exit codes: 0 success; 2 bad input (one line on stderr naming the file and what is wrong);
3 when ``--fail-if-drop`` is exceeded (a CI gate before shipping a model).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from aslquant.errors import InputError

EXIT_OK, EXIT_BAD_INPUT, EXIT_DROP = 0, 2, 3


class ProgressBar:
    """A one-line progress bar on stderr (a line per stage when stderr is not a terminal)."""

    def __init__(self, stream=sys.stderr, width: int = 30) -> None:
        self.stream, self.width = stream, width
        self.tty = stream.isatty()
        self.stage: str | None = None
        self.start = time.perf_counter()

    def __call__(self, stage: str, fraction: float) -> None:
        fraction = min(1.0, max(0.0, fraction))
        elapsed = time.perf_counter() - self.start
        if self.tty:
            filled = int(round(self.width * fraction))
            bar = "#" * filled + "-" * (self.width - filled)
            self.stream.write(f"\r{stage:<20} [{bar}] {100 * fraction:5.1f}% {elapsed:6.1f}s")
            if fraction >= 1.0:
                self.stream.write("\n")
        elif stage != self.stage:
            self.stream.write(f"{stage} ... ({elapsed:.1f}s)\n")
        self.stage = stage
        self.stream.flush()


class _Parser(argparse.ArgumentParser):
    """argparse that reports option errors as bad input (exit 2, one line)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise InputError(f"{self.prog}: {message}")


def _on_off(value: str) -> bool:
    if value not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"expected on or off, got {value!r}")
    return value == "on"


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Options shared by every subcommand that loads a model and data."""
    from aslquant.recipe import ACT_OBSERVERS, BACKENDS, METHODS, QSCHEMES, WEIGHT_OBSERVERS

    g = p.add_argument_group("inputs (default: the demo in sample_data/)")
    g.add_argument("--checkpoint", help="state_dict .pth of the CustomCNN")
    g.add_argument("--labels", help="lb.pkl (joblib LabelBinarizer), labels.txt or JSON list")
    g.add_argument("--data", help="evaluation images: class folders, Kaggle layout, flat or .zip")
    g.add_argument(
        "--calib-data", help="calibration images (default: images of --data not evaluated)"
    )
    g.add_argument("--train-data", help="labelled training images for --method qat")
    g.add_argument("--eval-images", type=int, help="evaluation images (default: all available)")
    g.add_argument("--seed", type=int, default=0, help="seed for sampling images (default 0)")
    r = p.add_argument_group("quantization recipe")
    r.add_argument("--method", choices=list(METHODS), default="static")
    r.add_argument("--backend", choices=list(BACKENDS), default="x86")
    r.add_argument("--act-observer", choices=list(ACT_OBSERVERS), default="histogram")
    r.add_argument("--weight-observer", choices=list(WEIGHT_OBSERVERS), default="per-channel")
    r.add_argument("--qscheme", choices=list(QSCHEMES), default="symmetric",
                   help="weight quantization scheme (activations are always affine)")  # fmt: skip
    r.add_argument("--reduce-range", type=_on_off, default=None, metavar="on|off",
                   help="7-bit activations (default: on for x86/fbgemm, off otherwise)")  # fmt: skip
    r.add_argument("--calib-images", type=int, default=64)
    r.add_argument("--calib-batch-size", type=int, default=16)
    r.add_argument("--keep-fp32", nargs="+", default=[], metavar="LAYER",
                   help="layers left in float (conv1..conv4, fc1, fc2)")  # fmt: skip
    r.add_argument("--qat-epochs", type=int, default=3)
    r.add_argument("--no-fuse", action="store_true", help="do not fuse conv+ReLU / linear+ReLU")
    pre = p.add_argument_group("preprocessing (must match how the checkpoint was trained)")
    pre.add_argument("--input-size", type=int, default=224)
    pre.add_argument("--center-crop", action="store_true",
                     help="resize the shorter side then center-crop (default: resize to a square)")  # fmt: skip
    pre.add_argument("--scale", type=int, choices=[1, 255], default=1,
                     help="1: pixels in 0..1 (ToTensor); 255: keep 0..255")  # fmt: skip
    pre.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"))
    pre.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"))
    pre.add_argument("--imagenet", action="store_true", help="ImageNet mean/std")
    pre.add_argument("--bgr", action="store_true", help="feed channels as BGR (OpenCV-trained)")
    p.add_argument("--threads", type=int, default=None, help="torch threads for timing")
    p.add_argument("--latency-runs", type=int, default=30, help="timed calls per latency (>= 30)")


def config_from_args(args: argparse.Namespace):
    """Build the frozen RunConfig an argparse namespace describes."""
    from aslquant.data import IMAGENET_MEAN, IMAGENET_STD, Preprocess
    from aslquant.engine_lock import default_threads
    from aslquant.recipe import QuantRecipe
    from aslquant.run import DEMO_CHECKPOINT, DEMO_DATA, DEMO_LABELS, RunConfig

    mean, std = args.mean, args.std
    if args.imagenet:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    preprocess = Preprocess(
        input_size=args.input_size,
        crop=args.center_crop,
        scale=args.scale,
        mean=tuple(mean) if mean else None,
        std=tuple(std) if std else None,
        bgr=args.bgr,
    )
    recipe = QuantRecipe(
        method=args.method,
        backend=args.backend,
        act_observer=args.act_observer,
        weight_observer=args.weight_observer,
        qscheme=args.qscheme,
        reduce_range=args.reduce_range,
        calib_images=args.calib_images,
        calib_batch_size=args.calib_batch_size,
        keep_fp32=tuple(args.keep_fp32),
        fuse=not args.no_fuse,
        qat_epochs=args.qat_epochs,
    )
    return RunConfig(
        checkpoint=args.checkpoint or str(DEMO_CHECKPOINT),
        labels=args.labels or str(DEMO_LABELS),
        data=args.data or str(DEMO_DATA),
        calib_data=args.calib_data,
        train_data=args.train_data,
        preprocess=preprocess,
        recipe=recipe,
        eval_images=args.eval_images,
        seed=args.seed,
        threads=args.threads or default_threads(),
        latency_runs=args.latency_runs,
    )


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


def cmd_report(args: argparse.Namespace) -> int:
    from aslquant import report as report_mod
    from aslquant.run import execute

    config = config_from_args(args)
    report_mod.prepare_out_dir(args.out)  # fail before minutes of work, not after
    bar = ProgressBar()
    result = execute(config, progress=bar)
    for hook in REPORT_HOOKS:
        hook(result, args, bar)
    files = report_mod.write_report(result, args.out)
    for hook in WRITE_HOOKS:
        files.update(hook(result, args, files) or {})
    report = report_mod.report_dict(result)
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
        return EXIT_DROP
    return EXIT_OK


#: Extra work on a finished run before reports are written: hook(result, args, progress).
#: Analysis and ONNX register here so `report` stays one command.
REPORT_HOOKS: list = []
#: Extra files after report.json/report.md: hook(result, args, files) -> {name: path}.
WRITE_HOOKS: list = []


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m aslquant", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    rep = sub.add_parser("report", help="quantize, evaluate, time; write report.json and report.md")
    add_run_options(rep)
    rep.add_argument("--fail-if-drop", type=float, metavar="POINTS",
                     help="exit 3 if top-1 drops by more than this many points")  # fmt: skip
    rep.add_argument("--out", required=True, help="output folder")
    rep.set_defaults(func=cmd_report)

    syn = sub.add_parser("synth", help="generate synthetic ASL images", add_help=False)
    syn.set_defaults(func=None, delegate="synth")
    trn = sub.add_parser("train-demo", help="train the demo checkpoint", add_help=False)
    trn.set_defaults(func=None, delegate="train-demo")
    for extend in PARSER_EXTENSIONS:
        extend(sub)
    return parser


#: Functions that add subcommands: extend(subparsers). Kept as a list so analysis/export
#: can add `sweep` and `export` without this file knowing their details.
PARSER_EXTENSIONS: list = []


def _load_extensions() -> None:
    """Import the modules that register subcommands and report hooks (once)."""
    import importlib

    for name in ("aslquant.cli_analysis",):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # synth and train-demo parse their own options.
    if argv and argv[0] == "synth":
        from aslquant.synth import synth_main

        return _guard(lambda: synth_main(argv[1:]))
    if argv and argv[0] == "train-demo":
        from aslquant.train_demo import train_demo_main

        return _guard(lambda: train_demo_main(argv[1:]))
    _load_extensions()
    parser = build_parser()

    def run() -> int:
        args = parser.parse_args(argv)
        return args.func(args)

    return _guard(run)


def _guard(run) -> int:
    try:
        return run()
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
