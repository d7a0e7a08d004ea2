"""Where the FP32 and INT8 demo models spend their time, and what parity and profiling cost.

    nice -n 10 .venv/bin/python bench/profile_layers.py [--method static] [--threads 2]
        [--eval-images 290] [--input-size 224] [--no-table] [--no-parity]

Quantizes the demo (the recipe's defaults, ``--method``), then prints, each with the seconds
it took:

1. the per-layer time breakdown (``aslquant.profiling.time_breakdown``, batch 1), with how
   far its rows are from the end-to-end pass and from the unprofiled latency;
2. the threads x batch table (``threads_batch_table``: 1 and all threads x batch 1/8/32, 30
   timed calls each) with each cell's reliability verdict;
3. the plain-English explanation (``explain_speed``);
4. the cost of a reused model: the run's quantized model (first run at batch 1 with torch's
   default threads, then evaluated at batch 32) against a fresh copy, at 1 thread, batch 1
   and 32, alternating (see ``profiling.fresh_copy``);
5. runtime parity at its default size (``aslquant.parity.runtime_parity``: exports, reloads,
   6 runtimes over a class-stratified 290 images).

Timings on a shared machine are marked unreliable by their verdicts: read those as ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from aslquant import parity, profiling, runtime  # noqa: E402
from aslquant.data import Preprocess  # noqa: E402
from aslquant.engine_lock import engine_session  # noqa: E402
from aslquant.measure import time_calls  # noqa: E402
from aslquant.recipe import QuantRecipe  # noqa: E402
from aslquant.run import RunConfig, execute  # noqa: E402


def _timed(label: str, work):
    started = time.perf_counter()
    out = work()
    print(f"[{label}: {time.perf_counter() - started:.1f} s]")
    return out


def _reused_vs_fresh(result) -> None:
    """The run's quantized model against a fresh copy, at 1 thread (the run's model first ran
    with torch's default threads), in 3 alternating rounds of 30 calls each."""
    from aslquant.machine import judge_latency, watch_load

    qm = result.quantized
    size = result.config.preprocess.input_size
    generator = torch.Generator().manual_seed(0)
    for batch in (1, 32):
        x = torch.rand(batch, 3, size, size, generator=generator)
        models = {"the run's model": qm.module, "a fresh copy": profiling.fresh_copy(qm.module)}
        times: dict[str, list[float]] = {name: [] for name in models}
        with engine_session(qm.backend, 1), torch.inference_mode(), watch_load() as watch:
            for name in ("a fresh copy", "the run's model"):  # the copy's first call: here
                models[name](x)
            for _ in range(3):
                for name, module in models.items():
                    times[name] += list(time_calls(module, x, 10, warmup=1))
        everything = [t for values in times.values() for t in values]
        verdict = judge_latency(everything, watch.result, threads=1)
        p50 = {name: float(np.median(values)) * 1e3 for name, values in times.items()}
        reused, new = p50["the run's model"], p50["a fresh copy"]
        print(
            f"  1 thread, batch {batch}: the run's model p50 {reused:.3f} ms, a fresh copy "
            f"{new:.3f} ms ({reused / new - 1:+.0%}); reliable: {verdict.reliable}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="static")
    parser.add_argument("--threads", type=int, default=None, help="default: the run's default")
    parser.add_argument("--eval-images", type=int, default=290)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--no-table", action="store_true")
    parser.add_argument("--no-parity", action="store_true")
    args = parser.parse_args()
    runtime.configure()
    pd.set_option("display.width", 160)
    pd.set_option("display.max_columns", 20)
    config = RunConfig(
        eval_images=args.eval_images,
        preprocess=Preprocess(input_size=args.input_size),
        recipe=QuantRecipe(method=args.method),
    )
    if args.threads:
        config = dataclasses.replace(config, threads=args.threads)
    print(f"demo, {args.method}, {args.input_size} px, {config.threads} thread(s)")
    result = _timed("quantize + evaluate", lambda: execute(config, timed=False))

    breakdown = _timed("breakdown", lambda: profiling.time_breakdown(result))
    print(breakdown.table().round(3).to_string(index=False))
    for lt in (breakdown.fp32, breakdown.int8):
        print(
            f"  {lt.model}: rows {lt.total_ms:.3f} ms = {lt.coverage:.0%} of the profiled pass "
            f"{lt.profiled_ms:.3f} ms; unprofiled p50 {lt.end_to_end_ms:.3f} ms "
            f"(reliable: {lt.reliability.reliable}; {'; '.join(lt.reliability.reasons)})"
        )
    for note in breakdown.notes:
        print(f"  note: {note}")

    table = None
    if not args.no_table:
        table = _timed("threads x batch table", lambda: profiling.threads_batch_table(result))
        print(table.frame().round(3).to_string(index=False))
        for note in table.notes:
            print(f"  note: {note}")
    print("Why:")
    for line in profiling.explain_speed(breakdown, table):
        print(f"  {line}")

    if result.quantized.recipe.method_spec.has_layer_modules:
        print("A reused quantized model against a fresh copy:")
        _reused_vs_fresh(result)

    if not args.no_parity:
        checked = _timed("runtime parity", lambda: parity.runtime_parity(result))
        print(f"  {checked.subset}; {checked.step.source}")
        print(checked.matrix().round(1).to_string())
        for check in checked.shipped:
            steps = "" if check.max_steps is None else f", {check.max_steps:.1f} steps max"
            print(
                f"  {check.runtime} vs {check.reference}: {check.disagreeing}/{check.n} differ, "
                f"max |dlogit| {check.max_abs_logit:.3g}{steps}"
            )
        for status in checked.not_produced:
            print(f"  {status.name}: {status.reason}")
        print(f"  gate at 1%: {parity.runtime_gate(checked, 1.0).reason}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
