"""The doctor's cost and result on the fragile demo with 870 evaluation images.

    .venv/bin/python -m bench.doctor [--eval-images 870] [--target-drop 0.2] [--seeds 3]

Runs ``doctor.examine`` (the code behind ``python -m aslquant doctor`` and the Doctor page) on
the fragile demo: setup checks, the per-point diagnosis, every remedy over the calibration
seeds on the selection half, the ranking and "meet my budget", then the held-out before/after.
Prints the wall-clock seconds (goal: at most 3 minutes on the 2-core machine), the split, the
prescription with its held-out seed spread, and the load average before and after (on a busy
machine the seconds are that machine's at that moment).
"""

from __future__ import annotations

import argparse
import os
import time

from aslquant import doctor, runtime
from aslquant.demos import demos
from aslquant.engine_lock import default_threads
from aslquant.run import RunConfig

GOAL_SECONDS = 180.0


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval-images", type=int, default=870)
    parser.add_argument("--target-drop", type=float, default=0.2)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    runtime.configure()
    fragile = demos()["fragile"]
    config = RunConfig(
        checkpoint=str(fragile.checkpoint),
        labels=str(fragile.labels),
        data=str(fragile.data),
        preprocess=fragile.preprocess,
        eval_images=args.eval_images,
        threads=default_threads(),
    )
    print(f"before: {_load()}; {os.cpu_count()} logical cores, {config.threads} threads")
    start = time.perf_counter()
    report = doctor.examine(config, args.target_drop, seeds=args.seeds)
    seconds = time.perf_counter() - start
    print(f"after: {_load()}")
    verdict = "met" if seconds <= GOAL_SECONDS else "MISSED"
    print(
        f"doctor on {args.eval_images} evaluation images ({report.n_selection} selection + "
        f"{report.n_held_out} held-out, {report.seeds} seeds): {seconds:.1f} s "
        f"(goal <= {GOAL_SECONDS:.0f} s: {verdict})"
    )
    top = report.ranked[0] if report.ranked else None
    if top is not None:
        print(f"first finding: {top['finding']['title']}")
    p = report.prescription
    if p is not None:
        gap = p.before.drop - p.after.drop
        print(f"prescription ({'reached' if p.reached else 'NOT reached'}): {p.recipe.describe()}")
        print(
            f"held-out drop {p.before.drop:.2f} -> {p.after.drop:.2f} points; seed spread "
            f"{p.after.spread.min:.2f}..{p.after.spread.max:.2f} (width "
            f"{p.after.spread.max - p.after.spread.min:.2f}) against the gap closed {gap:.2f}: "
            f"{'holds' if p.claim_holds else 'does NOT hold'}"
        )
        print(f"replay: {p.command}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
