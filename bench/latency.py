"""Print the README's benchmark table: every backend and method on the demo, plus ONNX Runtime.

    .venv/bin/python bench/latency.py [--threads 2] [--runs 50] [--markdown]

Each row is one `execute()` of the engine (the same code as `python -m aslquant report`):
accuracy on the demo's evaluation split, state_dict size, and latency medians/p95 measured with
torch.utils.benchmark after warm-up at a fixed thread count. FP32 is re-timed in every run, so
each row also carries its own FP32/INT8 ratio from the same process and moment.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from aslquant.run import RunConfig, execute  # noqa: E402

ROWS = [
    ("static", "x86"),
    ("static", "onednn"),
    ("static", "fbgemm"),
    ("static", "qnnpack"),
    ("fx", "x86"),
    ("dynamic", "x86"),
    ("fp16", "x86"),
    ("pt2e", "x86"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--no-onnx", action="store_true")
    parser.add_argument("--eval-images", type=int, default=None, help="default: all 1096")
    args = parser.parse_args()
    print(
        f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{args.threads} threads, {args.runs} timed runs per figure, demo sample_data/ "
        f"({args.eval_images or 'all'} evaluation images)"
    )
    header = (
        "| model | runtime | top-1 | size (KB) | b1 p50 / p95 (ms) | b32 p50 / p95 (ms) "
        "| speed-up b1 vs FP32 |"
    )
    print(header)
    print("|---|---|---|---|---|---|---|")
    first = None
    for method, backend in ROWS:
        config = RunConfig(
            threads=args.threads, latency_runs=args.runs, eval_images=args.eval_images
        ).with_recipe(method=method, backend=backend)
        result = execute(config)
        if first is None:
            first = result
            _row("FP32", "torch eager", result.fp32, 1.0)
        ratio = result.fp32.latency_ms["b1_p50"] / result.int8.latency_ms["b1_p50"]
        name = "FP16 weights" if method == "fp16" else f"INT8 {method}"
        _row(name, f"torch {backend}" if method != "fp16" else "torch", result.int8, ratio)
    if not args.no_onnx:
        from aslquant.export import onnx_compare

        onnx = onnx_compare(first)
        fp32_b1 = first.fp32.latency_ms["b1_p50"]
        for key, label in (("fp32", "FP32"), ("int8", "INT8 QDQ")):
            row = onnx[key]
            ratio = fp32_b1 / row["latency_ms"]["b1_p50"]
            lat = row["latency_ms"]
            print(
                f"| {label} | ONNX Runtime | {100 * row['accuracy']:.1f}% | "
                f"{row.get('size_bytes', 0) / 1024:.0f} | {lat['b1_p50']:.2f} / {lat['b1_p95']:.2f} "
                f"| {lat['b32_p50']:.1f} / {lat['b32_p95']:.1f} | {ratio:.2f}x |"
            )
    return 0


def _row(name: str, runtime: str, m, ratio: float) -> None:
    lat = m.latency_ms
    print(
        f"| {name} | {runtime} | {100 * m.accuracy:.1f}% | {m.size_bytes / 1024:.0f} | "
        f"{lat['b1_p50']:.2f} / {lat['b1_p95']:.2f} | {lat['b32_p50']:.1f} / {lat['b32_p95']:.1f} "
        f"| {ratio:.2f}x |"
    )


if __name__ == "__main__":
    raise SystemExit(main())
