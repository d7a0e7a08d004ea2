"""``python -m aslquant doctor``: diagnose a recipe, try remedies, and meet a drop budget.

Prints the findings ranked by what their best remedy measurably wins back, and with
``--target-drop`` the prescribed recipe, its before/after on held-out images with the
calibration-seed spread, and the command that replays it. Writes report.json/md/html.
"""

from __future__ import annotations

import argparse

from aslquant.cli import EXIT_GATE, EXIT_OK, ProgressBar
from aslquant.cli.options import (
    add_run_options,
    config_from_args,
    finite_number,
    points,
    whole_number,
)


def add_parser(sub) -> None:
    doc = sub.add_parser(
        "doctor", help="diagnose why INT8 loses accuracy, try remedies, meet a drop budget"
    )
    add_run_options(doc)
    g = doc.add_argument_group("doctor")
    g.add_argument("--target-drop", type=points, metavar="POINTS",
                   help="search remedies until the drop is at most POINTS (selection images), "
                        "then prove it on held-out images; exit 3 when no recipe reaches it")  # fmt: skip
    g.add_argument("--max-size-mb", type=finite_number(0.001, 10_000.0), metavar="MB",
                   help="the prescribed model must also be at most this big (0.001..10000)")  # fmt: skip
    g.add_argument("--seeds", type=whole_number(3, 20), default=3,
                   help="calibration draws per figure the doctor ranks (3..20, default 3)")  # fmt: skip
    doc.add_argument("--out", required=True, help="output folder")
    doc.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from aslquant import doctor
    from aslquant.report import doctor_report, prepare_out_dir, write_doctor_reports

    config = config_from_args(args)
    prepare_out_dir(args.out)
    max_size = None if args.max_size_mb is None else int(args.max_size_mb * 1e6)
    result = doctor.examine(
        config,
        args.target_drop,
        seeds=args.seeds,
        max_size_bytes=max_size,
        progress=ProgressBar(),
    )
    report = doctor_report(result)
    files = write_doctor_reports(report, args.out)
    print(f"doctor: {result.n_selection} selection + {result.n_held_out} held-out images, "
          f"{result.seeds} calibration seeds, {result.seconds:.0f} s")  # fmt: skip
    for row in report["doctor"]["ranked"][:8]:
        remedies = ", ".join(
            f"{r['remedy']['name']} {r['recovery_points']:+.2f}" for r in row["remedies"][:3]
        )
        print(f"  {row['rank']}. {row['finding']['title']}  [{remedies or 'no remedy'}]")
    p = report["doctor"].get("prescription")
    if p:
        print(f"prescription ({'reached' if p['reached'] else 'NOT reached'}): {p['describe']}")
        print(f"  {p['note']}")
        if not p["claim_holds"]:
            print("  held-out: the drop did not go down by more than the seed spread (may be luck)")
        print(f"  replay: {p['command']}")
    print("wrote " + ", ".join(str(f) for f in files.values()))
    # A budget is a gate: a script asking for one learns from the exit code that it was missed.
    return EXIT_GATE if p and not p["reached"] else EXIT_OK
