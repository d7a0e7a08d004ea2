"""Latency you can explain: where each model spends its time, and how threads and batch move it.

* ``time_breakdown``: per-layer time of the FP32 and the quantized model from ``torch.profiler``
  (CPU only, shapes not recorded), batch 1 by default, after warm-up. Each forward pass runs
  inside a ``record_function`` range, and on a copy of the model every named module (conv1..fc2
  with their ReLU, the pools, the quantize/dequantize stubs) runs inside a range of its own
  (``ranged_copy``), so ops are attributed to layers by where they ran, not by guessing from
  op names. What runs
  between modules (``torch.flatten``, the channels-last conversion, FX's functional
  quantize/dequantize) is grouped by op type. A compiled pt2e graph has no modules to wrap:
  then both models are grouped by op type (all convolutions together, Inductor's fused
  kernels in "other") and the breakdown says so.
  The rows are medians per forward pass; their sum is checked against the end-to-end latency
  of the same model timed without the profiler at the same batch, engine and threads.
* ``threads_batch_table``: both models at 1 thread and all threads x batch 1/8/32, p50/p95
  of ``measure.time_calls`` under ``engine_session``, the speed-up per cell and each timing's
  reliability verdict (``machine.judge_latency`` over ``machine.watch_load``).
* ``explain_speed``: plain sentences on why INT8 is faster or slower here, built from the
  breakdown, the table and the CPU's instruction sets (``machine``).
"""

from __future__ import annotations

import copy
import os
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import pandas as pd
import torch
import torch.ao.nn.quantized as nnq
import torch.ao.quantization as tq
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from aslquant import machine
from aslquant.engine_lock import engine_session
from aslquant.errors import InputError
from aslquant.machine import Reliability, judge_latency, watch_load
from aslquant.measure import fp32_runner, latency_stats, time_calls
from aslquant.model import LAYER_NAMES
from aslquant.qmodules import RELU_AFTER

Progress = Callable[[str, float], None]

QDQ = "quantize/dequantize"
MAX_POOL, AVG_POOL, OTHER = "max-pool", "avg-pool", "other"
CONVOLUTIONS, LINEARS = "convolutions", "linear layers"
#: Rows of a breakdown by module (each layer includes its ReLU: fused in the INT8 model).
MODULE_ROWS: tuple[str, ...] = (*LAYER_NAMES, MAX_POOL, AVG_POOL, QDQ, OTHER)
#: Rows of a breakdown by op type (compiled graphs, which have no modules to wrap).
OP_ROWS: tuple[str, ...] = (CONVOLUTIONS, LINEARS, MAX_POOL, AVG_POOL, QDQ, OTHER)
BY_MODULE, BY_OP = "module ranges", "op types"
#: The issue's bound: the rows must add up to within this share of the end-to-end latency.
COVERAGE_TOLERANCE = 0.15

#: Profiled forward passes per model (medians of these are the rows), in rounds alternating
#: with as many unprofiled calls, so both see the same machine load.
BREAKDOWN_CALLS = 30
BREAKDOWN_ROUNDS = 3
#: Rows are means over this fastest share of the profiled passes. On a machine shared with
#: other work most passes are preempted somewhere; a quarter of 30 passes is enough to
#: average and is the least disturbed (on a quiet machine it changes the rows by noise only).
FASTEST_SHARE = 0.25
#: The table's batch sizes and the timed calls per figure (the project's minimum is 30).
TABLE_BATCHES: tuple[int, ...] = (1, 8, 32)
TABLE_RUNS = 30
#: Fewer calls than this cannot be judged (machine.MIN_CALLS); a table cell refuses them.
MIN_TABLE_RUNS = machine.MIN_CALLS
MAX_BATCH = 256

_FORWARD = "aslquant.forward"
_PLAIN = "aslquant.forward_plain"
_RANGE = "aslquant.module:"


# ---------------------------------------------------------------------------------------------
# Which module or op belongs to which row


def module_row(name: str, module: nn.Module) -> str | None:
    """The breakdown row of a named module, or None for containers and unnamed parts."""
    if isinstance(module, (tq.QuantStub, tq.DeQuantStub, nnq.Quantize, nnq.DeQuantize)):
        return QDQ
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("quant", "dequant"):  # FX turns the stubs into Identity modules of these names
        return QDQ
    if leaf in LAYER_NAMES:
        return leaf
    owners = {relu: layer for layer, relu in RELU_AFTER.items() if relu}
    if leaf in owners:
        return owners[leaf]
    if isinstance(module, nn.MaxPool2d):  # QuantizedMaxPool2d is one
        return MAX_POOL
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AvgPool2d)):
        return AVG_POOL
    return None


def op_row(op: str) -> str:
    """The row of an op that ran outside any wrapped module, by its registered name."""
    name = op.lower()
    # aten::quantize_per_tensor, aten::dequantize, quantized_decomposed::dequantize_per_channel;
    # not quantized::* kernels (quantized::max_pool2d is a pool).
    if name.rsplit("::", 1)[-1].startswith(("quantize_per", "dequantize")):
        return QDQ
    if "max_pool" in name:
        return MAX_POOL
    if "avg_pool" in name:
        return AVG_POOL
    return OTHER


def op_type_row(op: str) -> str:
    """The row of an op when a model is grouped by op type (no modules to wrap)."""
    name = op.lower()
    if "conv" in name:  # aten::convolution, quantized::conv2d_relu, onednn::qconv_pointwise
        return CONVOLUTIONS
    if "linear" in name or name in ("aten::addmm", "aten::mm"):
        return LINEARS
    return op_row(op)


class _Ranged(nn.Module):
    """A module run inside a profiler range named after its row (on a copy of the model).

    A wrapper rather than forward hooks: hooks send every call through nn.Module's slow path
    and run Python before and after the range opens, which measured ~15 us per hooked call,
    a third of the demo's FP32 pass at 96 px. ``_RecordFunctionFast`` is the range
    torch.fx and AOTAutograd use for their own profiler annotations (C++, no dispatcher op).
    """

    def __init__(self, inner: nn.Module, label: str) -> None:
        super().__init__()
        self.inner = inner
        self.label = label

    def forward(self, *args, **kwargs):
        with _FAST_RANGE(self.label):
            return self.inner(*args, **kwargs)


_FAST_RANGE = getattr(torch._C._profiler, "_RecordFunctionFast", record_function)


def ranged_copy(module: nn.Module) -> tuple[nn.Module, int]:
    """A deep copy of ``module`` whose modules with a row run inside named profiler ranges.

    Only the outermost module of each row is wrapped; Identity modules (the ReLUs fused away,
    FX's stand-ins for the stubs) do no work and are left alone. Returns (copy, how many
    modules were wrapped). The model's own code finds each wrapper under the original name
    (attribute, ModuleDict key or FX call_module target).
    """
    work = copy.deepcopy(module)
    chosen: list[tuple[str, str]] = []
    for name, sub in work.named_modules():
        if not name or any(name.startswith(done + ".") for done, _ in chosen):
            continue
        row = module_row(name, sub)
        if row is not None and not isinstance(sub, nn.Identity):
            chosen.append((name, row))
    for name, row in chosen:
        parent_name, _, leaf = name.rpartition(".")
        parent = work.get_submodule(parent_name) if parent_name else work
        parent.add_module(leaf, _Ranged(getattr(parent, leaf), f"{_RANGE}{row}:{name}"))
    return work, len(chosen)


def _rows_of_forward(event, grouping: str) -> dict[str, float]:
    """Microseconds per row inside one profiled forward pass."""
    rows: dict[str, float] = defaultdict(float)
    if grouping == BY_MODULE:
        for child in event.cpu_children:
            if child.name.startswith(_RANGE):
                rows[child.name[len(_RANGE) :].split(":", 1)[0]] += child.cpu_time_total
            else:
                rows[op_row(child.name)] += child.cpu_time_total
        return rows
    # By op type: every op's own (self) time, so nested ops are not counted twice.
    rows[OTHER] += event.self_cpu_time_total
    todo = list(event.cpu_children)
    while todo:
        op = todo.pop()
        rows[op_type_row(op.name)] += op.self_cpu_time_total
        todo.extend(op.cpu_children)
    return rows


# ---------------------------------------------------------------------------------------------
# One model's breakdown


@dataclass(frozen=True)
class LayerTimes:
    """One model's time per row, in ms per forward pass.

    Three kinds of pass, alternating in rounds so they see the same machine load:

    * passes of the ranged copy (``ranged_copy``) under the profiler give ``rows`` (and
      ``ranged_ms``);
    * passes of the model itself under the profiler give ``profiled_ms``, the end-to-end
      time measured the same way as the rows (the profiler's per-op cost in both, the
      wrappers' Python in neither): ``coverage`` compares the two;
    * passes without the profiler give ``end_to_end_ms`` / ``end_to_end_p95_ms`` (p50/p95),
      the model's latency, judged by ``reliability``.

    ``rows``, ``profiled_ms`` and ``ranged_ms`` are means over the fastest quarter of their
    passes (``FASTEST_SHARE``): additive (the rows of one set of passes), and robust to passes
    the scheduler preempted.
    """

    model: str
    grouping: str  # BY_MODULE or BY_OP
    rows: Mapping[str, float]
    profiled_ms: float
    ranged_ms: float
    end_to_end_ms: float
    end_to_end_p95_ms: float
    calls: int
    batch: int
    threads: int
    reliability: Reliability

    @property
    def total_ms(self) -> float:
        return float(sum(self.rows.values()))

    @property
    def coverage(self) -> float:
        """Sum of the rows over the end-to-end pass measured the same way (1.0: they add up).

        By op type the rows partition the profiled passes exactly; by module, what ran
        between the modules' ranges (Python between them, the flatten) is in "other"
        when it ran an op, and missing when it was pure Python.
        """
        return self.total_ms / self.profiled_ms if self.profiled_ms > 0 else float("nan")

    @property
    def adds_up(self) -> bool:
        return abs(self.coverage - 1.0) <= COVERAGE_TOLERANCE

    @property
    def profiler_overhead(self) -> float:
        """Profiled pass over the unprofiled p50, minus 1 (the profiler's own cost per pass;
        only meaningful when the unprofiled timing is reliable)."""
        if self.end_to_end_ms <= 0:
            return float("nan")
        return self.profiled_ms / self.end_to_end_ms - 1.0

    def share(self, row: str) -> float:
        """The row's share of the sum of rows (0..1)."""
        total = self.total_ms
        return self.rows.get(row, 0.0) / total if total > 0 else float("nan")

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "grouping": self.grouping,
            "rows_ms": dict(self.rows),
            "total_ms": self.total_ms,
            "profiled_ms": self.profiled_ms,
            "ranged_ms": self.ranged_ms,
            "end_to_end_ms": self.end_to_end_ms,
            "end_to_end_p95_ms": self.end_to_end_p95_ms,
            "coverage": self.coverage,
            "adds_up": self.adds_up,
            "profiler_overhead": self.profiler_overhead,
            "calls": self.calls,
            "batch": self.batch,
            "threads": self.threads,
            "reliability": self.reliability.to_dict(),
        }


def fresh_copy(module: nn.Module) -> nn.Module:
    """A deep copy to time, so its first call is at the batch and threads being measured.

    A quantized oneDNN convolution (the x86 engine picks oneDNN kernels for some layers)
    keeps the primitive built for the first input shape and thread count it ran with, and
    rebuilds it on every call with any other: the run's model, first run at batch 1 with the
    default threads and evaluated at batch 32, is slower at other settings than a model that
    serves one batch size (bench/profile_layers.py prints the difference). A copy re-packs its
    weights, so it starts clean. Compiled (pt2e) models are returned as they are: copying one
    would compile it again.
    """
    if isinstance(module, torch._dynamo.eval_frame.OptimizedModule):
        return module
    return copy.deepcopy(module)


def _fastest(values: Sequence[float], share: float = FASTEST_SHARE) -> list[int]:
    """Indices of the fastest ``share`` of the passes (at least one)."""
    keep = max(1, round(len(values) * share))
    return sorted(np.argsort(values, kind="stable")[:keep].tolist())


def layer_times(
    module: nn.Module,
    backend: str | None,
    example: torch.Tensor,
    threads: int,
    *,
    model: str = "model",
    grouping: str = BY_MODULE,
    calls: int = BREAKDOWN_CALLS,
    rounds: int = BREAKDOWN_ROUNDS,
) -> LayerTimes:
    """Profile ``module`` on ``example`` under ``engine_session(backend, threads)``.

    ``calls`` passes of each kind (see ``LayerTimes``) in ``rounds`` rounds. Both the ranged
    model and the plain one are fresh copies (``fresh_copy``) first run at this batch and
    thread count; the caller's module is never run or changed.
    """
    if grouping not in (BY_MODULE, BY_OP):
        raise ValueError(f"grouping must be {BY_MODULE!r} or {BY_OP!r}, got {grouping!r}")
    per_round = max(1, -(-calls // max(1, rounds)))
    by_module = grouping == BY_MODULE
    module = fresh_copy(module)
    ranged, n_ranged = ranged_copy(module) if by_module else (module, 0)
    forwards: list[dict[str, float]] = []
    ranged_us: list[float] = []
    plain_us: list[float] = []
    unprofiled: list[float] = []
    if by_module and n_ranged == 0:
        raise ValueError(f"{model}: no module to wrap in a range; group it by op type instead")
    order = np.random.default_rng(0)
    with engine_session(backend, threads), torch.inference_mode():
        for _ in range(3):  # warm-up of both copies at this shape and thread count
            ranged(example)
            module(example)
        with watch_load() as watch:
            for _ in range(max(1, rounds)):
                unprofiled += list(time_calls(module, example, per_round, warmup=1))
                with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
                    for ranged_first in order.integers(0, 2, size=per_round):
                        # The model itself beside the ranged copy, in a seeded random order so
                        # a busy machine's time slices cannot line up with one of them.
                        passes = [(_FORWARD, ranged)] + ([(_PLAIN, module)] if by_module else [])
                        for label, run in passes if ranged_first else passes[::-1]:
                            with record_function(label):
                                run(example)
                for event in prof.events():
                    if event.name == _FORWARD:
                        forwards.append(_rows_of_forward(event, grouping))
                        ranged_us.append(event.cpu_time_total)
                    elif event.name == _PLAIN:
                        plain_us.append(event.cpu_time_total)
    names = MODULE_ROWS if by_module else OP_ROWS
    fast = _fastest(ranged_us)
    rows = {row: float(np.mean([forwards[i].get(row, 0.0) for i in fast])) / 1e3 for row in names}
    ranged_ms = float(np.mean([ranged_us[i] for i in fast])) / 1e3
    if by_module:
        profiled_ms = float(np.mean([plain_us[i] for i in _fastest(plain_us)])) / 1e3
    else:  # nothing wrapped: the passes are the model's own
        profiled_ms = ranged_ms
    stats = latency_stats(unprofiled)
    return LayerTimes(
        model=model,
        grouping=grouping,
        rows=MappingProxyType(rows),
        profiled_ms=profiled_ms,
        ranged_ms=ranged_ms,
        end_to_end_ms=stats["p50"],
        end_to_end_p95_ms=stats["p95"],
        calls=len(forwards),
        batch=int(example.shape[0]),
        threads=threads,
        reliability=judge_latency(unprofiled, watch.result, threads=threads),
    )


@dataclass(frozen=True)
class Breakdown:
    """The FP32 and the quantized model's layer times, side by side."""

    fp32: LayerTimes
    int8: LayerTimes
    backend: str | None
    method: str
    notes: tuple[str, ...]
    seconds: float

    @property
    def rows(self) -> tuple[str, ...]:
        return MODULE_ROWS if self.fp32.grouping == BY_MODULE else OP_ROWS

    @property
    def adds_up(self) -> bool:
        return self.fp32.adds_up and self.int8.adds_up

    def table(self) -> pd.DataFrame:
        """One row per group: ms and share of each model, and INT8 time over FP32 time."""
        records = []
        for row in self.rows:
            f, q = self.fp32.rows.get(row, 0.0), self.int8.rows.get(row, 0.0)
            records.append(
                {
                    "row": row,
                    "fp32_ms": f,
                    "fp32_share": self.fp32.share(row),
                    "int8_ms": q,
                    "int8_share": self.int8.share(row),
                    "int8_over_fp32": q / f if f > 0 else float("nan"),
                }
            )
        return pd.DataFrame.from_records(records)

    def to_dict(self) -> dict:
        return {
            "backend": self.backend,
            "method": self.method,
            "rows": list(self.rows),
            "table": self.table().to_dict(orient="records"),
            "fp32": self.fp32.to_dict(),
            "int8": self.int8.to_dict(),
            "adds_up": self.adds_up,
            "tolerance": COVERAGE_TOLERANCE,
            "notes": list(self.notes),
            "seconds": self.seconds,
        }


def time_breakdown(
    result,
    *,
    batch: int = 1,
    threads: int | None = None,
    calls: int = BREAKDOWN_CALLS,
    progress: Progress | None = None,
) -> Breakdown:
    """Per-layer time of a run's FP32 and quantized model (an ``aslquant.run.RunResult``).

    Batch ``batch`` of seeded random images at the run's input size, the run's threads unless
    ``threads`` is given. The FP32 model runs as aslquant times it (channels-last).
    """
    started = time.perf_counter()
    threads = threads or result.threads
    _check_bounds(batches=(batch,), thread_counts=(threads,))
    qm = result.quantized
    size = result.config.preprocess.input_size
    example = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    notes = [
        f"batch {batch}, {threads} thread(s), {calls} forward passes per model of each kind "
        "(ranged copy and model under the profiler, model without it) after warm-up; rows are "
        f"means over the fastest {FASTEST_SHARE:.0%} of the passes, checked against the "
        "model's own profiled passes",
        "each layer row includes its ReLU (fused into the layer in the INT8 model)",
    ]
    grouping = BY_MODULE
    if not qm.recipe.method_spec.has_layer_modules:
        grouping = BY_OP
        notes.append(
            f"method {qm.recipe.method} runs a compiled graph with no modules to wrap: both "
            "models are grouped by op type; Inductor fuses quantize/dequantize into its "
            "generated kernels, whose time is in 'other'"
        )
    if progress:
        progress("profiling FP32", 0.0)
    fp32 = layer_times(
        fp32_runner(result.fp32_model), None, example, threads,
        model="fp32", grouping=grouping, calls=calls,
    )  # fmt: skip
    if progress:
        progress("profiling INT8", 0.5)
    int8 = layer_times(
        qm.module, qm.backend, example, threads, model="int8", grouping=grouping, calls=calls
    )
    if progress:
        progress("profiling INT8", 1.0)
    for lt in (fp32, int8):
        if not lt.adds_up:
            notes.append(
                f"{lt.model}: the rows add up to {lt.coverage:.0%} of the profiled forward "
                f"pass (outside the ±{COVERAGE_TOLERANCE:.0%} bound)"
                + ("; the machine was busy" if not lt.reliability.reliable else "")
            )
        if lt.reliability.reliable and abs(lt.profiler_overhead) > COVERAGE_TOLERANCE:
            notes.append(
                f"{lt.model}: profiled passes took {lt.profiler_overhead:+.0%} against the "
                f"unprofiled latency: the profiler's own cost; read the rows as shares"
            )
    return Breakdown(
        fp32, int8, qm.backend, qm.recipe.method, tuple(notes), time.perf_counter() - started
    )


# ---------------------------------------------------------------------------------------------
# Threads x batch


@dataclass(frozen=True)
class Timing:
    """One model at one (threads, batch): per-call p50/p95 and whether to believe them."""

    p50_ms: float
    p95_ms: float
    runs: int
    reliability: Reliability

    def to_dict(self) -> dict:
        return {
            "p50_ms": self.p50_ms,
            "p95_ms": self.p95_ms,
            "runs": self.runs,
            "reliability": self.reliability.to_dict(),
        }


@dataclass(frozen=True)
class TableCell:
    """Both models at one thread count and batch size."""

    threads: int
    batch: int
    fp32: Timing
    int8: Timing

    @property
    def speedup(self) -> float:
        """FP32 p50 over INT8 p50: above 1 means INT8 is faster."""
        return self.fp32.p50_ms / self.int8.p50_ms if self.int8.p50_ms > 0 else float("nan")

    @property
    def reliable(self) -> bool:
        return self.fp32.reliability.reliable and self.int8.reliability.reliable

    @property
    def runs(self) -> int:
        return min(self.fp32.runs, self.int8.runs)

    def to_dict(self) -> dict:
        return {
            "threads": self.threads,
            "batch": self.batch,
            "fp32": self.fp32.to_dict(),
            "int8": self.int8.to_dict(),
            "speedup": self.speedup,
            "reliable": self.reliable,
            "runs": self.runs,
        }


@dataclass(frozen=True)
class ThreadsBatchTable:
    """FP32 and INT8 over thread counts x batch sizes, timed in one process."""

    cells: tuple[TableCell, ...]
    thread_counts: tuple[int, ...]
    batches: tuple[int, ...]
    backend: str | None
    method: str
    notes: tuple[str, ...]
    seconds: float

    def cell(self, threads: int, batch: int) -> TableCell:
        return next(c for c in self.cells if c.threads == threads and c.batch == batch)

    def frame(self) -> pd.DataFrame:
        """One row per cell: p50/p95 of both models, the speed-up, runs and reliability."""
        return pd.DataFrame.from_records(
            [
                {
                    "threads": c.threads,
                    "batch": c.batch,
                    "fp32_p50_ms": c.fp32.p50_ms,
                    "fp32_p95_ms": c.fp32.p95_ms,
                    "int8_p50_ms": c.int8.p50_ms,
                    "int8_p95_ms": c.int8.p95_ms,
                    "speedup": c.speedup,
                    "runs": c.runs,
                    "reliable": c.reliable,
                }
                for c in self.cells
            ]
        )

    def to_dict(self) -> dict:
        return {
            "thread_counts": list(self.thread_counts),
            "batches": list(self.batches),
            "backend": self.backend,
            "method": self.method,
            "cells": [c.to_dict() for c in self.cells],
            "notes": list(self.notes),
            "seconds": self.seconds,
        }


def all_threads() -> int:
    """ "All threads" in the table: the logical cores, at most aslquant.run.MAX_THREADS."""
    from aslquant.run import MAX_THREADS

    return max(1, min(os.cpu_count() or 1, MAX_THREADS))


def _check_bounds(batches: Sequence[int], thread_counts: Sequence[int]) -> None:
    for b in batches:
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= MAX_BATCH:
            raise InputError(f"batch size must be a whole number in 1..{MAX_BATCH}, got {b!r}")
    top = all_threads()
    for t in thread_counts:
        if isinstance(t, bool) or not isinstance(t, int) or not 1 <= t <= top:
            raise InputError(
                f"threads must be a whole number in 1..{top} (this machine's cores), got {t!r}"
            )


def _timing(module, backend, x: torch.Tensor, threads: int, runs: int) -> Timing:
    module = fresh_copy(module)  # first run at this cell's batch and threads
    with engine_session(backend, threads), watch_load() as watch:
        times = time_calls(module, x, runs, warmup=3)
    stats = latency_stats(times)
    return Timing(
        stats["p50"], stats["p95"], len(times), judge_latency(times, watch.result, threads=threads)
    )


def threads_batch_table(
    result,
    *,
    thread_counts: Sequence[int] | None = None,
    batches: Sequence[int] = TABLE_BATCHES,
    runs: int = TABLE_RUNS,
    runs_by_batch: Mapping[int, int] | None = None,
    progress: Progress | None = None,
) -> ThreadsBatchTable:
    """Time a run's two models at each thread count x batch size (``aslquant.run.RunResult``).

    ``thread_counts``: default 1 and all threads (``all_threads()``). ``runs`` timed calls per
    figure after 3 warm-up calls; ``runs_by_batch`` may lower it for a batch size (at least
    ``MIN_TABLE_RUNS``), and the table's notes say so. FP32 and INT8 of a cell are timed one
    after the other on the same seeded random batch, each as a fresh copy (``fresh_copy``:
    what a deployment serving that batch size with that many threads gets); each timing gets
    its own reliability verdict.
    """
    started = time.perf_counter()
    if thread_counts is None:
        thread_counts = tuple(dict.fromkeys((1, all_threads())))
    thread_counts, batches = tuple(thread_counts), tuple(batches)
    _check_bounds(batches, thread_counts)
    per_batch = {b: int((runs_by_batch or {}).get(b, runs)) for b in batches}
    for b, n in per_batch.items():
        if not MIN_TABLE_RUNS <= n <= 1000:
            raise InputError(
                f"timed calls for batch {b} must be in {MIN_TABLE_RUNS}..1000, got {n}"
            )
    notes = [
        "each cell times fresh copies of both models, first run at that cell's batch size "
        "and thread count",
    ]
    notes += [
        f"batch {b}: {n} timed calls per figure, fewer than the project's {TABLE_RUNS}"
        for b, n in per_batch.items()
        if n < TABLE_RUNS
    ]
    if len(thread_counts) == 1 and thread_counts[0] == 1 and all_threads() == 1:
        notes.append("this machine has one core: only the 1-thread row is measured")
    qm = result.quantized
    fp32 = fp32_runner(result.fp32_model)
    size = result.config.preprocess.input_size
    generator = torch.Generator().manual_seed(0)
    inputs = {b: torch.rand(b, 3, size, size, generator=generator) for b in batches}
    cells = []
    total = len(thread_counts) * len(batches)
    for t in thread_counts:
        for b in batches:
            if progress:
                progress(f"timing {t} thread(s), batch {b}", len(cells) / total)
            f = _timing(fp32, None, inputs[b], t, per_batch[b])
            q = _timing(qm.module, qm.backend, inputs[b], t, per_batch[b])
            cells.append(TableCell(t, b, f, q))
    if progress:
        progress("timing", 1.0)
    unreliable = sum(not c.reliable for c in cells)
    if unreliable:
        notes.append(
            f"{unreliable} of {len(cells)} cells were timed while the machine was busy "
            "(see each verdict): compare them only as ratios within this table"
        )
    return ThreadsBatchTable(
        tuple(cells), thread_counts, batches, qm.backend, qm.recipe.method, tuple(notes),
        time.perf_counter() - started,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Why INT8 is faster or slower here


def _faster(ratio: float) -> str:
    if ratio >= 1:
        return f"{ratio:.2f}x faster"
    return f"{1 / ratio:.2f}x slower" if ratio > 0 else "not comparable"


def explain_speed(
    breakdown: Breakdown,
    table: ThreadsBatchTable | None = None,
    features: machine.CpuFeatures | None = None,
) -> tuple[str, ...]:
    """Plain sentences on why INT8 is faster or slower than FP32 on this machine.

    Every number comes from the breakdown, the table or the CPU features (read now when not
    given); nothing is assumed about the hardware.
    """
    features = features or machine.cpu_features()
    fp, q = breakdown.fp32, breakdown.int8
    steady = fp.reliability.reliable and q.reliability.reliable
    if steady:  # the latency itself can be quoted
        f_ms, q_ms, how = fp.end_to_end_ms, q.end_to_end_ms, "median, without the profiler"
    else:  # the least disturbed passes say more than medians taken on a busy machine
        f_ms, q_ms = fp.profiled_ms, q.profiled_ms
        how = f"fastest {FASTEST_SHARE:.0%} of the profiled passes; the machine was busy"
    ratio = f_ms / q_ms if q_ms > 0 else float("nan")
    out = [
        f"At batch {q.batch} with {q.threads} thread(s) the INT8 model took {q_ms:.2f} ms "
        f"against FP32's {f_ms:.2f} ms ({how}): INT8 is {_faster(ratio)}."
    ]
    qdq = q.share(QDQ)
    if qdq == qdq:  # not NaN
        line = (
            f"Converting between float and INT8 (quantize/dequantize) takes "
            f"{q.rows.get(QDQ, 0.0):.3f} ms, {qdq:.0%} of the INT8 forward pass"
        )
        if breakdown.fp32.grouping == BY_OP:
            line += " outside Inductor's fused kernels"
        out.append(
            line + (": a real overhead at this batch size." if qdq >= 0.1 else ": a small cost.")
        )
    out.append(
        f"Max-pooling takes {q.share(MAX_POOL):.0%} of the INT8 pass "
        f"({q.rows.get(MAX_POOL, 0.0):.3f} ms) and {fp.share(MAX_POOL):.0%} of the FP32 pass "
        f"({fp.rows.get(MAX_POOL, 0.0):.3f} ms)."
    )
    compute = [r for r in breakdown.rows if r in LAYER_NAMES or r in (CONVOLUTIONS, LINEARS)]
    # Differences within 10% are not called faster or slower (run-to-run noise is that big).
    slower = [r for r in compute if q.rows.get(r, 0.0) > 1.1 * fp.rows.get(r, 0.0) > 0]
    faster = [r for r in compute if 0 < q.rows.get(r, 0.0) < 0.9 * fp.rows.get(r, 0.0)]
    if faster:
        best = max(faster, key=lambda r: fp.rows[r] / q.rows[r])
        out.append(
            f"INT8 is faster in {', '.join(faster)} (most in {best}: "
            f"{fp.rows[best]:.3f} ms -> {q.rows[best]:.3f} ms)."
        )
    if slower:
        out.append(
            "INT8 is slower in "
            + ", ".join(f"{r} ({fp.rows[r]:.3f} ms -> {q.rows[r]:.3f} ms)" for r in slower)
            + "."
        )
    if features.known:
        present = ", ".join(features.present()) or "none of AVX2, AVX-512, VNNI, AMX, NEON"
        out.append(f"This CPU ({features.model or features.arch}) has: {present}.")
        note = next(
            (n for n in machine.backend_notes(features) if n.backend == breakdown.backend), None
        )
        if note is not None:
            out.append(f"Backend {note.backend}: {note.text}")
        # FBGEMM's AVX2/AVX-512 u8s8 kernels without VNNI: VPMADDUBSW then VPMADDWD (see the
        # sources listed in aslquant.machine); VNNI's VPDPBUSD does both in one instruction.
        if features.is_x86 and not features.vnni:
            out.append(
                "Without VNNI each 8-bit multiply-add takes two instructions (VPMADDUBSW then "
                "VPMADDWD), which limits INT8's advantage over FP32's fused multiply-add."
            )
    else:
        out.append("The CPU's instruction sets could not be read, so the kernels used are unknown.")
    if table is not None and table.cells:
        for t in table.thread_counts:
            row = [table.cell(t, b) for b in table.batches]
            trend = ", ".join(f"batch {c.batch} {_faster(c.speedup)}" for c in row)
            out.append(f"With {t} thread(s): INT8 is {trend}.")
        shaky = [c for c in table.cells if not c.reliable]
        if shaky:
            reasons = sorted(
                {r for c in shaky for t in (c.fp32, c.int8) for r in t.reliability.reasons}
            )
            out.append(
                f"{len(shaky)} of {len(table.cells)} table cells were timed on a busy machine "
                f"({'; '.join(reasons[:3])}): treat their ratios as indicative."
            )
    if not steady:
        out.append(
            "The breakdown itself was timed while the machine was busy: re-run it on a quiet "
            "machine before drawing conclusions from small differences."
        )
    return tuple(out)
