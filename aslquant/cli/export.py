"""``python -m aslquant export``: the run's model files for each runtime."""

from __future__ import annotations

import argparse
import sys

from aslquant import export
from aslquant.cli import EXIT_OK, ProgressBar
from aslquant.cli.options import add_run_options, config_from_args


def add_parser(sub) -> None:
    ex = sub.add_parser(
        "export",
        help="write quantized.packed.pt, quantized.pt, quantized.ptl, fp32.onnx and int8.onnx",
    )
    add_run_options(ex)
    ex.add_argument("--out", required=True, help="output folder")
    ex.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from aslquant.report import prepare_out_dir
    from aslquant.run import execute

    config = config_from_args(args)
    out = prepare_out_dir(args.out)
    result = execute(config, progress=ProgressBar(), timed=False)
    exported = export.export_models(result, out)
    for name, path in exported.files.items():
        print(f"{name:12s} {path}  ({path.stat().st_size:,} bytes)")
    for note in exported.notes:
        print(f"note: {note}", file=sys.stderr)
    return EXIT_OK
