"""``python -m aslquant sweep``: accuracy, latency and size over a grid of recipes (Pareto data)."""

from __future__ import annotations

import argparse
import shlex

from aslquant import experiments, methods
from aslquant.cli import EXIT_OK, ProgressBar
from aslquant.cli.options import (
    add_grid_options,
    add_run_options,
    config_from_args,
    grid_flag,
    grid_from_args,
    grid_to_args,
)

#: Recipe fields the grid can vary: the default grid's, then the ones a grid may add.
GRID_FIELDS = (*experiments.DEFAULT_GRID, *experiments.EXTRA_GRID_FIELDS)


def add_parser(sub) -> None:
    sw = sub.add_parser(
        "sweep", help="accuracy, latency and size over a grid of recipes (Pareto data)"
    )
    add_run_options(sw)
    add_grid_options(sw, GRID_FIELDS)
    # Fine-tuning methods would train once per grid point: not part of a sweep.
    for action in sw._actions:
        if action.dest == "grid_method":
            action.choices = methods.names(lambda m: not m.trains)
            action.help = f"methods to compare ({grid_flag('method')} takes several)"
    sw.add_argument("--out", required=True, help="output folder")
    sw.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from aslquant.report import sweep_report, write_sweep_reports

    config = config_from_args(args)
    grid = grid_from_args(args, GRID_FIELDS)
    from aslquant.report import prepare_out_dir

    prepare_out_dir(args.out)
    rows = experiments.config_sweep(config, grid, progress=ProgressBar())
    command = config.cli_command("sweep")
    extra = grid_to_args(grid)
    if extra:
        head, out = command.rsplit(" --out ", 1)
        command = f"{head} {' '.join(shlex.quote(a) for a in extra)} --out {out}"
    report = sweep_report(config, command, grid, [row.to_dict() for row in rows])
    files = write_sweep_reports(report, args.out)
    for row in report["sweep"]:
        if row.get("accuracy") is None:
            print(f"  {row.get('label', '?')}: {row.get('error', 'failed')}")
            continue
        print(
            f"  {100 * row['accuracy']:6.2f}%  b1 {row['b1_p50']:7.2f} ms  "
            f"b32 {row['b32_p50']:8.2f} ms  {row['size_bytes'] / 1e6:6.3f} MB  {row['label']}"
        )
    print("wrote " + ", ".join(str(p) for p in files.values()))
    return EXIT_OK
