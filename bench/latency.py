"""The benchmark: every backend and method on the demo, both FP32 baselines, the dashboard.

    .venv/bin/python -m bench.latency [--threads 2] [--runs 30] [--eval-images N]

One process, in this order: the FP32 model is evaluated and timed once (torch eager in
channels-last layout, aslquant's FP32 baseline); each quantized row is one `execute()` of the engine (the code behind `python -m
aslquant report` and the dashboard) reusing that FP32 baseline, so every ratio is against FP32
measured in the same process; then ONNX Runtime FP32 and INT8 (QDQ, per-channel, calibrated
on the same 64 images). Latency: median and p95 over >= 30 timed calls after warm-up at a
fixed thread count; the batch-32 samples are the evaluation's full batches. Sizes: the packed
state_dict (aslquant.serialize), the same container for FP32 and INT8; ONNX rows: file size.
Then the targets of the performance issue with the measured value of each. Every latency
carries the reliability verdict of aslquant.machine (spread, CPU share, load, steal).
Prints markdown: paste it into the README. The dashboard's own timings: bench/dashboard.py.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
from pathlib import Path

import torch

from aslquant import methods, runtime
from aslquant.errors import InputError, UnsupportedCombination
from aslquant.run import RunConfig, execute, load_inputs, measure_fp32

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("x86", "onednn", "fbgemm", "qnnpack")
#: Every method that calibrates INT8 kernels (dynamic and fp16 keep float compute).
METHODS = methods.names(lambda m: m.calibrates)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical cores"


def commit() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return sha + (" (+ uncommitted changes)" if dirty else "")
    except OSError:
        return "unknown"


def _lat(lat: dict, batch: int) -> str:
    return f"{lat[f'b{batch}_p50']:.2f} / {lat[f'b{batch}_p95']:.2f}"


def main() -> int:
    runtime.configure()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--eval-images", type=int, default=None, help="default: all 1096")
    args = parser.parse_args()

    import onnxruntime

    base_config = RunConfig(
        threads=args.threads, latency_runs=args.runs, eval_images=args.eval_images
    )
    baseline = measure_fp32(base_config, load_inputs(base_config))
    fp32 = baseline.metrics
    print(
        f"Measured {datetime.date.today().isoformat()} on {machine()}; commit {commit()}; "
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; {args.threads} "
        f"threads; {baseline.evaluation.n} demo evaluation images; {args.runs} timed calls "
        "per figure after warm-up.\n"
    )
    print(
        "| model | method | runtime / backend | top-1 | size (bytes) | FP32/size | "
        "b1 p50 / p95 (ms) | b1 speed-up | b32 p50 / p95 (ms) | b32 speed-up |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")

    def row(model, method, runtime, accuracy, size, lat) -> None:
        b1 = fp32.latency_ms["b1_p50"] / lat["b1_p50"]
        b32 = fp32.latency_ms["b32_p50"] / lat["b32_p50"]
        print(
            f"| {model} | {method} | {runtime} | {100 * accuracy:.2f}% | {size:,} | "
            f"{fp32.size_bytes / size:.2f}x | {_lat(lat, 1)} | {b1:.2f}x | {_lat(lat, 32)} | "
            f"{b32:.2f}x |"
        )

    row("FP32", "-", "torch eager (channels-last)", fp32.accuracy, fp32.size_bytes, fp32.latency_ms)
    results = {}
    for method in METHODS:
        for backend in BACKENDS:
            try:
                config = base_config.with_recipe(method=method, backend=backend)
                result = execute(config, baseline=baseline)
            except (UnsupportedCombination, InputError) as err:
                reason = str(err).split(";")[0]
                print(f"| INT8 | {method} | torch {backend} | n/a: {reason} |||||||")
                continue
            results[(method, backend)] = result
            q = result.int8
            row(
                "INT8",
                method,
                f"torch {backend}",
                q.accuracy,
                q.size_bytes,
                q.latency_ms,
            )
            unreliable = [
                f"{name} {batch}"
                for name, metrics in (("FP32", result.fp32), ("INT8", result.int8))
                for batch, verdict in (metrics.latency_reliability or {}).items()
                if not verdict.reliable
            ]
            if unreliable:
                print(f"<!-- {method}/{backend}: UNRELIABLE timing: {', '.join(unreliable)} -->")

    from aslquant.export import onnx_compare

    reference = results[(methods.DEFAULT_METHOD, "x86")]
    onnx = onnx_compare(reference)
    for key, label in (("fp32", "FP32"), ("int8", "INT8")):
        r = onnx[key]
        method = "-" if key == "fp32" else "QDQ static, per-channel"
        row(label, method, "ONNX Runtime", r["accuracy"], r["size_bytes"], r["latency_ms"])

    # --- the targets ----------------------------------------------------------------------
    best = min(results.values(), key=lambda r: r.int8.latency_ms["b1_p50"])
    best32 = min(results.values(), key=lambda r: r.int8.latency_ms["b32_p50"])
    q1, q32 = best.int8.latency_ms["b1_p50"], best32.int8.latency_ms["b32_p50"]
    ort_f, ort_q = onnx["fp32"]["latency_ms"], onnx["int8"]["latency_ms"]
    static_x86 = reference.int8
    checks = [
        ("best INT8 vs torch FP32, batch 1", fp32.latency_ms["b1_p50"] / q1, ">=", 4.0, best),
        ("best INT8 vs torch FP32, batch 32", fp32.latency_ms["b32_p50"] / q32, ">=", 5.0, best32),
        ("best INT8 vs ONNX Runtime FP32, batch 1", ort_f["b1_p50"] / q1, ">=", 2.0, best),
        ("best INT8 vs ONNX Runtime FP32, batch 32", ort_f["b32_p50"] / q32, ">=", 2.0, best32),
        ("best INT8 / ONNX Runtime INT8 latency, batch 1", q1 / ort_q["b1_p50"], "<=", 0.8, best),
        (
            "best INT8 / ONNX Runtime INT8 latency, batch 32",
            q32 / ort_q["b32_p50"],
            "<=",
            0.8,
            best32,
        ),
        (
            "FP32 / INT8 size (static x86)",
            fp32.size_bytes / static_x86.size_bytes,
            ">=",
            3.8,
            reference,
        ),
    ]
    print("\n| target | measured | goal | verdict | row |")
    print("|---|---|---|---|---|")
    for name, value, op, goal, result in checks:
        met = value >= goal if op == ">=" else value <= goal
        recipe = result.config.recipe
        print(
            f"| {name} | {value:.2f}x | {op} {goal:g}x | {'met' if met else 'MISSED'} | "
            f"{recipe.method} {recipe.backend} |"
        )

    return 0


if __name__ == "__main__":
    raise SystemExit(main())
