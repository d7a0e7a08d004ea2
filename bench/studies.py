"""What each trust study costs on the demo, at its default size, and what it finds.

    nice -n 10 .venv/bin/python bench/studies.py [--eval-images N] [--threads N]
        [--only seeds sizes robust margins]

Runs the demo recipe once (``run.execute``, default recipe and preprocessing, untimed), then
with its FP32 baseline:

- ``seeds``: ``calibration_study.seed_spread_of(config, k=3)``
- ``sizes``: ``calibration_study.calibration_size_study(config)`` (8, 32, 128, 512 x 3 seeds)
- ``robust``: ``robustness.robustness_split(result)`` (8 corruptions x 3 severities + clean,
  290 images)
- ``margins``: ``margins.flip_margins(result.evaluation)``

and prints each study's wall-clock seconds with its headline. The load average is printed
before and after: on a shared machine the seconds are this machine's at this moment, not
benchmark figures.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from aslquant import calibration_study as cs  # noqa: E402
from aslquant import margins as mg  # noqa: E402
from aslquant import robustness as rb  # noqa: E402
from aslquant import runtime  # noqa: E402
from aslquant.engine_lock import default_threads  # noqa: E402
from aslquant.run import RunConfig, execute  # noqa: E402

STUDIES = ("seeds", "sizes", "robust", "margins")


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval-images", type=int, default=None, help="default: all available")
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--only", nargs="+", choices=STUDIES, default=list(STUDIES))
    args = parser.parse_args()
    runtime.configure()

    config = RunConfig(eval_images=args.eval_images, threads=args.threads)
    print(f"demo, {config.recipe.describe()}, {config.recipe.calib_images} calibration images,")
    print(f"{config.preprocess.input_size} px, {config.threads} threads; {load()}")
    started = time.perf_counter()
    result = execute(config, timed=False)
    print(
        f"\nrun (untimed): {time.perf_counter() - started:6.1f} s  {result.n_eval} images, "
        f"FP32 {result.fp32.accuracy:.2%}, INT8 {result.int8.accuracy:.2%}, drop "
        f"{result.accuracy_drop_points:.2f} points"
    )
    print(
        "  phases: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in result.timings_s.items() if k != "fp32_reused")
    )

    if "seeds" in args.only:
        t0 = time.perf_counter()
        study = cs.seed_spread_of(config, k=3, baseline=result.baseline)
        print(f"\nseed spread (k=3): {time.perf_counter() - t0:6.1f} s")
        print(f"  {study.summary}")
        print(f"  evaluation: {study.split.description}")
        print(f"  FP32 evaluations: {study.fp32_evaluations}; per draw: "
              + ", ".join(f"{d.seconds:.1f} s" for d in study.draws))  # fmt: skip
        for note in study.notes:
            print(f"  note: {note}")

    if "sizes" in args.only:
        t0 = time.perf_counter()
        sizes = cs.calibration_size_study(config, baseline=result.baseline)
        print(f"\ncalibration-size study (sizes x 3 seeds): {time.perf_counter() - t0:6.1f} s")
        print(f"  evaluation: {sizes.split.description}")
        print(f"  FP32 evaluations: {sizes.fp32_evaluations}")
        for point in sizes.points:
            seconds = sum(d.seconds for d in point.draws)
            print(
                f"  {point.size:4d} images: drop {point.drop.mean:5.2f} "
                f"({point.drop.min:5.2f} to {point.drop.max:5.2f}) points, INT8 "
                f"{point.int8_accuracy.mean:.2%}, overlap {point.mean_overlap:.0%}, "
                f"{seconds:.1f} s for 3 draws"
            )
        print(f"  reading: {sizes.reading}")
        for note in sizes.notes:
            print(f"  note: {note}")

    if "robust" in args.only:
        t0 = time.perf_counter()
        split = rb.robustness_split(result)
        print(
            f"\nrobustness split ({len(split.rows)} conditions): {time.perf_counter() - t0:6.1f} s"
        )
        print(f"  on {split.subset}")
        for row in split.rows:
            change = "" if row.gap_change is None else f", change {row.gap_change:+.2f}"
            print(
                f"  {row.label:44s} FP32 {row.fp32_accuracy.estimate:6.2%} INT8 "
                f"{row.int8_accuracy.estimate:6.2%} gap {row.gap.estimate:5.2f} "
                f"[{row.gap.low:5.2f}, {row.gap.high:5.2f}]{change}  {row.seconds:.1f} s "
                f"({row.corruption_seconds:.1f} s corrupting)"
            )
        print(f"  gate at 1 point: {rb.robust_gap_gate(split, 1.0).reason}")

    if "margins" in args.only:
        t0 = time.perf_counter()
        margins = mg.flip_margins(result.evaluation)
        print(f"\nmargins: {time.perf_counter() - t0:6.3f} s")
        print(f"  {margins.headline}")
        for b in margins.bins:
            print(f"  margin {b.low:.3f}..{b.high:.3f}: {b.images} images, {b.flips} flips")

    print(f"\n{load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
