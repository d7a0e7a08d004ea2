"""What runtime.configure()'s allocator setting buys: CPU time of the same runs with and without.

    .venv/bin/python bench/allocator.py [--runs 4] [--eval-images 168]

Runs ``--runs`` untimed demo quantizations (static, seeds 0..runs-1, the first
``--eval-images`` of the class-stratified split) in two fresh child processes: one that calls
``aslquant.runtime.configure()`` (glibc keeps large blocks for reuse) and one that does not
(glibc's default: every block above its mmap threshold is mapped and unmapped). Each child
prints its user and kernel CPU seconds and minor page faults for the runs alone (after one
warm-up run), read from ``resource.getrusage``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile


def _child(configured: bool, runs: int, eval_images: int) -> None:
    if configured:
        from aslquant import runtime

        runtime.configure(tempfile.mkdtemp(prefix="aslquant-bench-"))
    from aslquant.run import RunConfig, execute

    execute(RunConfig(eval_images=eval_images, seed=runs), timed=False)  # warm-up
    before = resource.getrusage(resource.RUSAGE_SELF)
    for seed in range(runs):
        execute(RunConfig(eval_images=eval_images, seed=seed), timed=False)
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "user_s": after.ru_utime - before.ru_utime,
        "kernel_s": after.ru_stime - before.ru_stime,
        "minor_faults": after.ru_minflt - before.ru_minflt,
    }))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--eval-images", type=int, default=168)
    parser.add_argument("--child", choices=["configured", "plain"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child == "configured", args.runs, args.eval_images)
        return
    print(f"{args.runs} untimed runs on {args.eval_images} images each, after one warm-up run:")
    for kind in ("plain", "configured"):
        out = subprocess.run(
            [sys.executable, __file__, "--child", kind, "--runs", str(args.runs),
             "--eval-images", str(args.eval_images)],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        figures = json.loads(out.strip().splitlines()[-1])
        label = "runtime.configure()" if kind == "configured" else "glibc default"
        print(f"  {label:20s} user {figures['user_s']:5.1f} s, kernel {figures['kernel_s']:4.1f} s, "
              f"{figures['minor_faults']:,} minor page faults")  # fmt: skip


if __name__ == "__main__":
    main()
