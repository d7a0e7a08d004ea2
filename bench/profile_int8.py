"""Where the INT8 forward pass spends its time, with torch's stock max-pool and with ours.

    .venv/bin/python bench/profile_int8.py [--backend x86] [--threads 2] [--calls 50]

Quantizes the demo model (static, 64 demo calibration images), then runs ``--calls``
batch-1 forwards under ``torch.profiler`` for the model as exported (stock ``nn.MaxPool2d``)
and as the engine runs it (``QuantizedMaxPool2d``), printing each op's share and time per
forward pass. Also prints torch FP32's batch-1 median as loaded (NCHW) and converted to
channels-last. The README's profile figures come from this script.
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import profile

from aslquant import runtime
from aslquant.engine_lock import engine_session
from aslquant.measure import latency_ms
from aslquant.qmodules import portable_copy
from aslquant.quantize import quantize
from aslquant.recipe import QuantRecipe
from aslquant.run import RunConfig, load_inputs


def op_table(module, x, backend: str, threads: int, calls: int) -> None:
    with engine_session(backend, threads), torch.inference_mode():
        for _ in range(10):
            module(x)
        with profile() as prof:
            for _ in range(calls):
                module(x)
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    print(f"  all ops: {total / calls / 1e3:.2f} ms per forward (profiled)")
    for e in events[:6]:
        share = 100 * e.self_cpu_time_total / total
        print(f"  {e.key:32s} {share:5.1f}%  {e.self_cpu_time_total / calls / 1e3:.3f} ms/forward")


def main() -> int:
    runtime.configure()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="x86")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    from aslquant import data as data_mod

    config = RunConfig(threads=args.threads)
    inputs = load_inputs(config)
    calibration = data_mod.load_tensors(inputs.calib_items, config.preprocess).x
    qm = quantize(inputs.model, QuantRecipe(method="static", backend=args.backend), calibration)
    x = calibration[:1]
    for name, module in (
        ("stock nn.MaxPool2d (as exported)", portable_copy(qm.module)),
        ("QuantizedMaxPool2d (as the engine runs it)", qm.module),
    ):
        print(f"INT8 static {args.backend}, batch 1, {args.threads} threads: {name}")
        op_table(module, x, args.backend, args.threads, args.calls)
    fp32 = inputs.model
    channels_last = portable_copy(fp32).to(memory_format=torch.channels_last)
    with engine_session(None, args.threads):
        for name, module in (("as loaded (NCHW)", fp32), ("channels-last", channels_last)):
            p50 = latency_ms(module, x, runs=30, threads=args.threads)["p50"]
            print(f"torch FP32 {name}: batch 1 p50 {p50:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
