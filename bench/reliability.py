"""The latency reliability verdict, shown on a real workload: alone, then beside CPU hogs.

    nice -n 10 .venv/bin/python bench/reliability.py [--calls 30] [--threads N]

Times the demo CustomCNN (``sample_data/model.pth``, FP32, batch 1) twice with the same code
the reports use (``aslquant.measure.time_calls`` under ``aslquant.machine.watch_load``):

1. as the machine is now (run this on a quiet machine: it should be judged reliable);
2. while one CPU-bound busy-loop process per usable core runs beside it (it must be judged
   unreliable, whatever the machine).

and prints each verdict with the figures it rests on. Issue 13 asks for exactly this
printout; the figures are this machine's, at this moment, and are not benchmark results.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

import torch  # noqa: E402

from aslquant import machine  # noqa: E402
from aslquant.demos import default_demo  # noqa: E402
from aslquant.engine_lock import default_threads, engine_session  # noqa: E402
from aslquant.measure import time_calls  # noqa: E402
from aslquant.model import load_checkpoint  # noqa: E402

#: Seconds the busy neighbours run before timing starts, so they are on the cores by then.
NEIGHBOUR_HEAD_START_S = 1.0


def timed(model: torch.nn.Module, x: torch.Tensor, calls: int, threads: int):
    with engine_session(None, threads), machine.watch_load() as watch:
        seconds = time_calls(model, x, calls, warmup=3)
    return machine.judge_latency(seconds, watch.result, threads=threads)


def show(title: str, verdict: machine.Reliability) -> None:
    f = verdict.figures

    def fmt(key: str, spec: str, suffix: str = "") -> str:
        value = f.get(key)
        return "not reported" if value is None else f"{value:{spec}}{suffix}"

    print(f"\n{title}")
    print(f"  verdict:            {'RELIABLE' if verdict.reliable else 'UNRELIABLE'}")
    print(f"  calls x threads:    {f['calls']} x {f['threads']}")
    print(f"  p50 / p95:          {f['p50_ms']:.2f} ms / {f['p95_ms']:.2f} ms")
    print(f"  p95/p50:            {f['p95_over_p50']:.2f}   (limit {machine.P95_OVER_P50_MAX})")
    print(f"  CPU time / wall:    {fmt('cpu_share', '.0%')}   (limit {machine.CPU_SHARE_MIN:.0%})")
    print(f"  load average (1m):  {fmt('load_1min', '.2f')} on {f.get('cores')} cores")
    print(f"  others' busy cores: {fmt('others_busy_cores', '.2f')}")
    print(f"  steal:              {fmt('steal_fraction', '.1%')}")
    for reason in verdict.reasons:
        print(f"  - {reason}")
    print(f"  advice: {verdict.advice}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=30, help="timed calls per scenario")
    parser.add_argument("--threads", type=int, default=default_threads(), help="torch threads")
    args = parser.parse_args(argv)
    from aslquant import runtime

    runtime.configure()

    demo = default_demo()
    model = load_checkpoint(demo.checkpoint).eval()
    size = demo.preprocess.input_size
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    features = machine.cpu_features()
    print(f"model: {demo.checkpoint.relative_to(ROOT)} (FP32), input 1x3x{size}x{size}")
    print(f"CPU: {features.model or features.arch}; {', '.join(features.present()) or 'unknown'}")
    print(f"usable cores: {machine.usable_cores()}; timing with {args.threads} thread(s)")

    show(
        "1. As the machine is now (quiet machine expected)",
        timed(model, x, args.calls, args.threads),
    )
    neighbours = machine.usable_cores()
    with machine.busy_neighbours(neighbours) as pids:
        time.sleep(NEIGHBOUR_HEAD_START_S)
        busy = timed(model, x, args.calls, args.threads)
    show(f"2. Beside {neighbours} CPU-bound busy loops (pids {', '.join(map(str, pids))})", busy)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
