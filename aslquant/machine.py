"""What the machine is and how busy it is, so latency figures and backend advice can be trusted.

Three jobs:

1. **Instruction sets, read from the OS** (``cpu_features``): AVX2, AVX-512, VNNI, AMX on x86;
   NEON and dotprod on ARM. Linux reads ``/proc/cpuinfo``, macOS ``sysctl``, other systems
   torch's CPUID probe (``torch.cpu.get_capabilities``); what none of them reports stays
   unknown (``None``), never assumed.
2. **What they mean** (``backend_notes``, ``reduce_range_advice``): for each quantized backend
   (x86, fbgemm, onednn, qnnpack) and for ``reduce_range``, in plain English. Every claim is
   sourced in a comment next to it.
3. **Whether a timing can be believed** (``watch_load``, ``judge_latency``): load average,
   steal and other processes' CPU use (from ``/proc/stat`` through psutil), and this
   process's CPU time against wall time, sampled around a measurement; then a verdict with
   the reasons and what to do. A latency marked unreliable is still a measurement, but only
   a ratio between two models timed in the same run means anything, and even that loosely.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import psutil

# ---------------------------------------------------------------------------------------------
# Instruction sets


def _token(flag: str) -> str:
    """One spelling for Linux ("avx512_vnni") and macOS ("AVX512VNNI") flag names."""
    return re.sub(r"[^a-z0-9]", "", flag.lower())


_AVX512_FOR_FBGEMM = ("avx512f", "avx512bw", "avx512dq", "avx512vl")
_X86_ARCHES = ("x86_64", "amd64", "i386", "i686", "x86")
_ARM_ARCHES = ("aarch64", "arm64", "armv7l", "armv8l", "arm")


@dataclass(frozen=True)
class CpuFeatures:
    """The INT8-relevant instruction sets of this CPU, as the OS reports them.

    Each flag is True/False when the OS said, None when it could not be read. ``avx512`` means
    F, BW, DQ and VL together, the subset FBGEMM requires for its AVX-512 kernels
    (``fbgemmHasAvx512Support`` in FBGEMM's src/Utils.cc). ``vnni`` is either AVX512_VNNI or
    AVX_VNNI; ``vnni_kinds`` says which. ``amx`` is AMX-TILE with AMX-INT8.
    """

    arch: str
    source: str
    model: str | None = None
    avx2: bool | None = None
    avx512: bool | None = None
    vnni: bool | None = None
    vnni_kinds: tuple[str, ...] = ()
    amx: bool | None = None
    neon: bool | None = None
    dotprod: bool | None = None
    flags: tuple[str, ...] = field(default=(), repr=False)

    @property
    def is_x86(self) -> bool:
        return self.arch.lower() in _X86_ARCHES

    @property
    def is_arm(self) -> bool:
        return self.arch.lower().startswith(_ARM_ARCHES)

    @property
    def known(self) -> bool:
        return self.source != "unknown"

    @property
    def avx512_vnni(self) -> bool | None:
        return None if self.vnni is None else "AVX512_VNNI" in self.vnni_kinds

    def present(self) -> list[str]:
        """Names of the instruction sets found, for a one-line display."""
        names = []
        if self.avx2:
            names.append("AVX2")
        if self.avx512:
            names.append("AVX-512")
        names += [kind.replace("_", "-") for kind in self.vnni_kinds]
        if self.amx:
            names.append("AMX")
        if self.neon:
            names.append("NEON")
        if self.dotprod:
            names.append("dotprod")
        return names

    def to_dict(self) -> dict:
        out = asdict(self)
        out["flags"] = list(self.flags)
        out["vnni_kinds"] = list(self.vnni_kinds)
        out["present"] = self.present()
        return out


def _from_tokens(arch: str, source: str, model: str | None, tokens: set[str]) -> CpuFeatures:
    if arch.lower() in _X86_ARCHES:
        kinds = tuple(
            name
            for token, name in (("avx512vnni", "AVX512_VNNI"), ("avxvnni", "AVX_VNNI"))
            if token in tokens
        )
        return CpuFeatures(
            arch=arch,
            source=source,
            model=model,
            avx2="avx2" in tokens,
            avx512=all(t in tokens for t in _AVX512_FOR_FBGEMM),
            vnni=bool(kinds),
            vnni_kinds=kinds,
            amx="amxtile" in tokens and "amxint8" in tokens,
            neon=False,
            dotprod=False,
            flags=tuple(sorted(tokens)),
        )
    if arch.lower().startswith(_ARM_ARCHES):
        # Linux aarch64 says "asimd" (Advanced SIMD = NEON) and "asimddp" (dot product);
        # 32-bit ARM says "neon"; macOS says hw.optional.neon / hw.optional.arm.FEAT_DotProd.
        return CpuFeatures(
            arch=arch,
            source=source,
            model=model,
            avx2=False,
            avx512=False,
            vnni=False,
            amx=False,
            neon=bool(tokens & {"asimd", "neon"}),
            dotprod=bool(tokens & {"asimddp", "dotprod"}),
            flags=tuple(sorted(tokens)),
        )
    return CpuFeatures(arch=arch, source=source, model=model, flags=tuple(sorted(tokens)))


def parse_cpuinfo(text: str, arch: str) -> CpuFeatures:
    """Features from Linux ``/proc/cpuinfo`` text (the first processor's flags line)."""
    tokens: set[str] | None = None
    model = None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key in ("flags", "features") and tokens is None:
            tokens = {_token(flag) for flag in value.split()}
        elif key in ("model name", "hardware", "cpu model") and model is None:
            model = value.strip() or None
    if tokens is None:
        return CpuFeatures(arch=arch, source="unknown", model=model)
    return _from_tokens(arch, "/proc/cpuinfo", model, tokens)


def parse_sysctl(text: str, arch: str) -> CpuFeatures:
    """Features from macOS ``sysctl -a`` output (``key: value`` lines)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            values[key.strip()] = value.strip()
    model = values.get("machdep.cpu.brand_string")
    x86_keys = ("machdep.cpu.features", "machdep.cpu.leaf7_features", "machdep.cpu.extfeatures")
    if any(key in values for key in x86_keys):
        tokens = {_token(f) for key in x86_keys for f in values.get(key, "").split()}
        return _from_tokens(arch, "sysctl", model, tokens)
    arm = {
        "neon": values.get("hw.optional.neon") or values.get("hw.optional.AdvSIMD"),
        "dotprod": values.get("hw.optional.arm.FEAT_DotProd"),
    }
    if any(v is not None for v in arm.values()):
        tokens = {name for name, v in arm.items() if v == "1"}
        return _from_tokens(arch, "sysctl", model, tokens)
    return CpuFeatures(arch=arch, source="unknown", model=model)


def cpu_features() -> CpuFeatures:
    """This machine's instruction sets, read from the OS now (never assumed)."""
    arch = platform.machine() or "unknown"
    if sys.platform.startswith("linux"):
        try:
            return parse_cpuinfo(Path("/proc/cpuinfo").read_text(errors="replace"), arch)
        except OSError:
            return CpuFeatures(arch=arch, source="unknown")
    if sys.platform == "darwin":
        try:
            out = subprocess.run(
                ["sysctl", "-a"], capture_output=True, text=True, timeout=10, check=False
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return CpuFeatures(arch=arch, source="unknown")
        return parse_sysctl(out, arch)
    return _from_torch(arch) or CpuFeatures(
        arch=arch, source="unknown", model=platform.processor() or None
    )


def _from_torch(arch: str) -> CpuFeatures | None:
    """Where the OS gives no flags (Windows), torch's own CPUID probe (``torch.cpu``)."""
    try:
        import torch

        caps = dict(torch.cpu.get_capabilities())
    except Exception:  # no torch, or a torch without the probe: the features stay unknown
        return None
    tokens = {_token(name) for name, value in caps.items() if value is True}
    model = caps.get("cpu_name") or None
    return _from_tokens(str(caps.get("architecture") or arch), "torch.cpu (CPUID)", model, tokens)


def torch_cpu_capability() -> str | None:
    """The vector level ATen dispatches its own CPU kernels to (e.g. "AVX512"), or None.

    A cross-check of the OS flags, and what the float (non-GEMM) ops of both models run on.
    """
    try:
        import torch

        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # an old torch without the call, or no torch: the figure is optional
        return None


# ---------------------------------------------------------------------------------------------
# What the instruction sets mean for each backend
#
# Sources (checked while writing; re-check them when torch is upgraded):
# [observer] torch/ao/quantization/observer.py (MinMaxObserver.__init__): "For x86 quantized
#     kernels, we need to ensure that the vpmaddubsw instruction does not overflow. We allow
#     for a reduce_range argument to observers that reduces the quantized range to (0,127) or
#     (-64, 63)."
# [qconfig] torch/ao/quantization/qconfig.py get_default_qconfig: x86 and fbgemm use
#     HistogramObserver(reduce_range=True); qnnpack and onednn reduce_range=False, and onednn
#     warns "Default qconfig of oneDNN backend with reduce_range of false may have accuracy
#     issues on CPU without Vector Neural Network Instruction support."
# [fbgemm] pytorch/FBGEMM src/Utils.cc fbgemmInstructionSet(): avx512_vnni, then avx512
#     (F+BW+DQ+VL), then avx2; fbgemmHasAvx512VnniSupport() checks AVX512_VNNI only.
#     src/GenerateKernelU8S8S32ACC32Avx512VNNI.cc emits vpdpbusd.
# [x86] pytorch/pytorch#83888 (RFC, unified x86 backend): "auto selection between FBGEMM and
#     ONEDNN during weight prepacking"; pytorch/pytorch#93218: the x86 engine "always uses
#     fbgemm kernels on OS other than Linux".
# [onednn] pytorch/pytorch#69820 (the ONEDNN backend): "supports VNNI on Cascade Lake and the
#     AMX instruction set ... on Sapphire Rapids which has 8X int8 peak TOPS over VNNI".
#     oneDNN's cpu_isa list has avx2_vnni (AVX-VNNI) and avx512_core_amx.
# [qnnpack] PyTorch's qnnpack q8gemm kernels: NEON assembly for aarch32/aarch64 and SSE2 C
#     kernels for x86 (aten/src/ATen/native/quantized/cpu/qnnpack/src/q8gemm/), none using
#     dotprod. discuss.pytorch.org/t/qnnpack-vs-fbgemm/97016: "Qnnpack only has fast kernels
#     on ARM, on x86 it is taking the slow fallback path."
# [ort] onnxruntime/quantization/quantize.py quantize_static docstring: without VNNI use
#     reduce_range=True "to reduce the risk of integer saturation"; with VNNI "reduce_range=
#     False ... VNNI-capable cores typically accumulate 8-bit products without saturation".
#     MLAS has UDOT/SDOT kernels (core/mlas/lib/aarch64/QgemmU8X8KernelUdot.S).
# The saturation arithmetic is ours: VPMADDUBSW adds two u8 x s8 products into a signed
# 16-bit lane (max 32,767); 2 x 255 x 128 = 65,280 can overflow it, 2 x 127 x 128 = 32,512
# cannot. VPDPBUSD adds four such products into a 32-bit lane.

BACKENDS: tuple[str, ...] = ("x86", "fbgemm", "onednn", "qnnpack")


@dataclass(frozen=True)
class BackendNote:
    """What one quantized backend does on this CPU. ``fast``: None when unknown."""

    backend: str
    fast: bool | None
    text: str

    def to_dict(self) -> dict:
        return asdict(self)


def _fbgemm_level(f: CpuFeatures) -> str | None:
    if f.avx512_vnni and f.avx512:
        return "AVX-512 VNNI"
    if f.avx512:
        return "AVX-512"
    if f.avx2:
        return "AVX2"
    return None


def reduce_range_advice(f: CpuFeatures) -> str:
    """Whether ``reduce_range`` (7-bit activations) is needed on this CPU, and why."""
    if not f.known:
        return (
            "The CPU's instruction sets could not be read on this system, so keep PyTorch's "
            "default: reduce_range on for x86/fbgemm, off for onednn/qnnpack."
        )
    if f.is_arm:
        return (
            "reduce_range exists for x86 kernels; on ARM (qnnpack) keep it off: it would "
            "give up one bit of activation precision and protect against nothing."
        )
    if f.avx512_vnni:
        return (
            "This CPU has AVX-512 VNNI: FBGEMM's and oneDNN's INT8 kernels multiply with "
            "VPDPBUSD, which adds four 8-bit products straight into a 32-bit sum that cannot "
            "overflow. reduce_range=off is safe here and keeps 8-bit activations (half the "
            "rounding step of the 7-bit default)."
        )
    if f.vnni:
        return (
            "This CPU has AVX-VNNI but not AVX-512 VNNI: oneDNN uses it, so onednn with "
            "reduce_range=off is safe; FBGEMM only uses AVX-512 VNNI and keeps its VPMADDUBSW "
            "path, so keep reduce_range on for fbgemm and for x86 (which may pick FBGEMM "
            "kernels for any layer)."
        )
    return (
        "No VNNI on this CPU: x86/FBGEMM INT8 kernels multiply with VPMADDUBSW, which adds "
        "pairs of 8-bit products in a 16-bit register that saturates at 32,767 "
        "(2 x 255 x 128 = 65,280 overflows it). With 7-bit activations (0..127) a pair stays "
        "below it, which is why reduce_range is on by default for x86/fbgemm. Turning it off "
        "here risks wrong (saturated) sums; PyTorch warns the same for onednn without VNNI."
    )


def backend_notes(f: CpuFeatures) -> list[BackendNote]:
    """One plain-English note per backend in ``BACKENDS`` for this CPU."""
    if not f.known:
        unknown = "The CPU's instruction sets could not be read, so this cannot be judged."
        return [BackendNote(b, None, unknown) for b in BACKENDS]
    level = _fbgemm_level(f)
    notes = []
    if f.is_x86:
        x86 = (
            "PyTorch's default INT8 backend on x86: when the weights are packed it picks "
            "FBGEMM or oneDNN kernels for each layer by a fixed rule; on systems other than "
            "Linux it always uses FBGEMM."
        )
        fbgemm = "Meta's x86 INT8 library: it runs the widest of AVX-512 VNNI, AVX-512, AVX2."
        if level:
            x86 += f" On this CPU its FBGEMM kernels run at the {level} level."
            fbgemm += f" On this CPU: its {level} kernels."
        else:
            x86 += " This CPU has no AVX2, so it has no fast INT8 path: expect INT8 to be slow."
            fbgemm += " This CPU has no AVX2: no fast path, expect INT8 slower than FP32."
        onednn = "Intel's oneDNN library: VNNI for 8-bit dot products, AMX tiles where present."
        if f.amx:
            onednn += (
                " This CPU has AMX (up to 8x VNNI's peak INT8 throughput per core): time "
                "onednn against x86, it can be much faster here."
            )
        elif f.vnni:
            onednn += " This CPU has VNNI, so its default reduce_range=off is safe."
        else:
            onednn += (
                " This CPU has no VNNI: expect it to be no faster than FBGEMM, and keep "
                "reduce_range on (PyTorch warns its off-by-default may cost accuracy here)."
            )
        qnnpack = (
            "PyTorch's ARM INT8 backend. On x86 it runs portable SSE2 kernels, typically "
            "much slower than FBGEMM/oneDNN: use it here to preview an ARM deployment's "
            "numerics (per-tensor weights, 8-bit activations), not its speed."
        )
        notes = [
            BackendNote("x86", level is not None, x86),
            BackendNote("fbgemm", level is not None, fbgemm),
            BackendNote("onednn", bool(f.vnni or f.amx), onednn),
            BackendNote("qnnpack", False, qnnpack),
        ]
    elif f.is_arm:
        absent = "x86 only (FBGEMM/oneDNN x86 kernels): not available on this ARM CPU."
        qnnpack = "PyTorch's ARM INT8 backend, NEON assembly kernels: the backend to use here."
        if f.dotprod:
            qnnpack += (
                " This CPU also has dotprod (UDOT/SDOT); PyTorch's qnnpack kernels do not use "
                "it, ONNX Runtime's INT8 kernels do, so an ONNX INT8 export may run faster."
            )
        if f.neon is False:
            qnnpack = "PyTorch's ARM INT8 backend, but this CPU reports no NEON: expect it slow."
        notes = [BackendNote(b, False, absent) for b in ("x86", "fbgemm", "onednn")]
        notes.append(BackendNote("qnnpack", bool(f.neon), qnnpack))
    else:
        other = f"Not judged for a {f.arch} CPU."
        notes = [BackendNote(b, None, other) for b in BACKENDS]
    return notes


def machine_summary() -> dict:
    """Everything a report shows about the machine: features, notes, advice, cores, torch."""
    features = cpu_features()
    try:
        import torch

        engines = [e for e in torch.backends.quantized.supported_engines if e != "none"]
    except Exception:  # the summary is optional information; never fail a report over it
        engines = None
    return {
        "cpu": features.to_dict(),
        "cores": usable_cores(),
        "torch_cpu_capability": torch_cpu_capability(),
        "quantized_engines": engines,
        "backends": [note.to_dict() for note in backend_notes(features)],
        "reduce_range": reduce_range_advice(features),
    }


# ---------------------------------------------------------------------------------------------
# Load sampling


def usable_cores() -> int:
    """Cores this process may run on (its affinity), else the logical core count."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _our_cpu_ids() -> list[int] | None:
    try:
        return sorted(psutil.Process().cpu_affinity())
    except (AttributeError, psutil.Error, OSError):
        return None


def _core_times() -> tuple[float, float, float, int] | None:
    """(total, busy, steal) seconds summed over the cores we may run on, and how many cores.

    psutil reads /proc/stat on Linux. guest time is already inside user time there, so it is
    not added twice; idle and iowait are not busy; steal is counted apart from busy.
    """
    try:
        per_cpu = psutil.cpu_times(percpu=True)
    except (psutil.Error, OSError, NotImplementedError):
        return None
    ids = _our_cpu_ids()
    # /proc/stat lists online CPUs only; index by CPU id only when none is missing.
    if ids and len(per_cpu) == (psutil.cpu_count() or 0) and max(ids) < len(per_cpu):
        per_cpu = [per_cpu[i] for i in ids]
    total = busy = steal = 0.0
    for times in per_cpu:
        fields = times._asdict()
        cpu_total = sum(v for k, v in fields.items() if k not in ("guest", "guest_nice"))
        cpu_steal = fields.get("steal", 0.0)
        idle = fields.get("idle", 0.0) + fields.get("iowait", 0.0)
        total += cpu_total
        steal += cpu_steal
        busy += cpu_total - idle - cpu_steal
    return total, busy, steal, len(per_cpu)


@dataclass(frozen=True)
class LoadSnapshot:
    """The clocks and counters ``load_between`` compares; take one before and one after."""

    wall: float
    process_cpu: float
    load_1min: float | None
    core_times: tuple[float, float, float, int] | None


def load_snapshot() -> LoadSnapshot:
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = None  # Windows, or an OS that does not report it
    return LoadSnapshot(time.perf_counter(), time.process_time(), load, _core_times())


@dataclass(frozen=True)
class LoadDuring:
    """How busy the machine was between two snapshots.

    ``cpu_share``: this process's CPU seconds per wall second (all its threads; 1.0 = one
    core fully ours). ``others_busy_cores``: cores kept busy by everything else on the cores
    we may use. ``steal_fraction``: share of those cores' time a hypervisor gave to other
    virtual machines. ``load_1min``: the larger of the 1-minute load averages at both ends.
    None where the OS does not report it.
    """

    wall_s: float
    process_cpu_s: float
    cores: int
    load_1min: float | None
    others_busy_cores: float | None
    steal_fraction: float | None

    @property
    def cpu_share(self) -> float:
        return self.process_cpu_s / self.wall_s if self.wall_s > 0 else float("nan")

    def to_dict(self) -> dict:
        return asdict(self) | {"cpu_share": self.cpu_share}


def load_between(before: LoadSnapshot, after: LoadSnapshot) -> LoadDuring:
    wall = max(after.wall - before.wall, 1e-9)
    own = max(after.process_cpu - before.process_cpu, 0.0)
    loads = [v for v in (before.load_1min, after.load_1min) if v is not None]
    others = steal = None
    if before.core_times and after.core_times and before.core_times[3] == after.core_times[3]:
        total, busy, stolen = (
            a - b for a, b in zip(after.core_times[:3], before.core_times[:3], strict=True)
        )
        if total > 0:
            # Shares of the kernel's own tick counts (~100 Hz), times the cores they cover.
            others = max(0.0, busy / total * after.core_times[3] - own / wall)
            steal = max(0.0, stolen / total)
    return LoadDuring(
        wall_s=wall,
        process_cpu_s=own,
        cores=usable_cores(),
        load_1min=max(loads) if loads else None,
        others_busy_cores=others,
        steal_fraction=steal,
    )


class LoadWatch:
    """Filled in by ``watch_load``: ``result`` is set when the ``with`` block ends."""

    def __init__(self) -> None:
        self.before = load_snapshot()
        self.result: LoadDuring | None = None


@contextlib.contextmanager
def watch_load() -> Iterator[LoadWatch]:
    """Sample the machine around a measurement::

    with watch_load() as watch:
        seconds = time_calls(model, x, runs=30)
    verdict = judge_latency(seconds, watch.result, threads=1)
    """
    watch = LoadWatch()
    try:
        yield watch
    finally:
        watch.result = load_between(watch.before, load_snapshot())


# ---------------------------------------------------------------------------------------------
# The latency reliability verdict

#: Calls below which a p95 is one or two samples and says nothing about spread.
MIN_CALLS = 10
#: A fixed workload on a quiet core repeats within tens of percent (interrupts, clock
#: changes); when the slowest 5% of calls take 1.5x the median, something else ran.
P95_OVER_P50_MAX = 1.5
#: While timing, at least one thread of ours runs all the time, so we should get at least
#: one core-second per second; below 0.8 we waited a fifth of the time for a core.
CPU_SHARE_MIN = 0.8
#: A 1-minute load average above the core count means tasks queued for a core. It is a slow
#: average that includes our own threads, hence the 25% margin.
LOAD_PER_CORE_MAX = 1.25
#: Other processes may use the cores the measurement does not need; beyond that (plus a
#: third of a core for daemons and short bursts) they took cores from our threads.
OTHERS_BUSY_SLACK_CORES = 0.33
#: Above 5% steal the hypervisor took the CPU often enough to show in the timings.
STEAL_MAX = 0.05
#: The kernel counts CPU time in ticks of ~10 ms; over a shorter window than this (20 ticks
#: per core) other processes' share and steal are too coarse to judge, only reported.
TICK_WINDOW_MIN_S = 0.2


@dataclass(frozen=True)
class Reliability:
    """Whether a latency figure can be believed, why not, and what to do about it."""

    reliable: bool
    reasons: tuple[str, ...]
    advice: str
    figures: dict

    def to_dict(self) -> dict:
        return {
            "reliable": self.reliable,
            "reasons": list(self.reasons),
            "advice": self.advice,
            "figures": dict(self.figures),
        }


def judge_latency(
    seconds: Sequence[float] | np.ndarray,
    load: LoadDuring | None = None,
    *,
    threads: int = 1,
) -> Reliability:
    """Judge per-call times (seconds) and the machine's load while they were taken.

    ``threads``: the thread count the measurement ran with (``torch.get_num_threads()``).
    Reasons name the figure and its limit; every limit is a named constant above.
    """
    times = np.asarray(seconds, dtype=np.float64)
    reasons: list[str] = []
    figures: dict = {"calls": int(times.size), "threads": int(threads)}
    if times.size:
        p50, p95 = (float(v) for v in np.percentile(times, [50, 95]))
        ratio = p95 / p50 if p50 > 0 else float("inf")
        figures |= {"p50_ms": p50 * 1e3, "p95_ms": p95 * 1e3, "p95_over_p50": ratio}
        if ratio > P95_OVER_P50_MAX:
            reasons.append(f"p95/p50 = {ratio:.1f} (> {P95_OVER_P50_MAX:g})")
    if times.size < MIN_CALLS:
        reasons.append(f"only {times.size} timed calls (< {MIN_CALLS}): no spread to judge")
    steal_flagged = False
    if load is not None:
        figures |= {
            "wall_s": load.wall_s,
            "cpu_share": load.cpu_share,
            "cores": load.cores,
            "load_1min": load.load_1min,
            "others_busy_cores": load.others_busy_cores,
            "steal_fraction": load.steal_fraction,
        }
        if load.load_1min is not None and load.load_1min > LOAD_PER_CORE_MAX * load.cores:
            reasons.append(f"load average {load.load_1min:.1f} on {load.cores} cores while timing")
        if load.cpu_share < CPU_SHARE_MIN:
            reasons.append(
                f"CPU time was {load.cpu_share:.0%} of wall time: other processes took the cores"
            )
        spare = max(0, load.cores - threads)
        ticks_enough = load.wall_s >= TICK_WINDOW_MIN_S
        if (
            ticks_enough
            and load.others_busy_cores is not None
            and load.others_busy_cores > spare + OTHERS_BUSY_SLACK_CORES
        ):
            needed = min(threads, load.cores)
            reasons.append(
                f"other processes kept {load.others_busy_cores:.1f} of {load.cores} cores busy "
                f"while timing (this measurement needs {needed})"
            )
        if ticks_enough and load.steal_fraction is not None and load.steal_fraction > STEAL_MAX:
            steal_flagged = True
            reasons.append(
                f"steal {load.steal_fraction:.0%}: the hypervisor gave this machine's CPU "
                "to other virtual machines"
            )
    return Reliability(not reasons, tuple(reasons), _advice(reasons, load, steal_flagged), figures)


def _advice(reasons: list[str], load: LoadDuring | None, steal: bool) -> str:
    if not reasons:
        if load is None:
            return (
                "The timings are steady; the machine's load was not sampled, so compare them "
                "with other runs cautiously."
            )
        return "Nothing competed for the CPU while timing: these figures can be compared."
    parts = []
    if any(r.startswith("only ") for r in reasons):
        parts.append("Time at least 30 calls.")
    if steal:
        parts.append(
            "This is a virtual machine whose host is busy: re-run later or on a dedicated machine."
        )
    parts.append(
        "Close other programs (or wait for them to finish) and re-run. Until then compare "
        "models only as a ratio timed within this one run, never as milliseconds or across runs."
    )
    return " ".join(parts)


# ---------------------------------------------------------------------------------------------
# A CPU-bound neighbour, for benchmarks that show the verdict working


_BUSY_LOOP = "while True:\n    pass\n"


@contextlib.contextmanager
def busy_neighbours(count: int | None = None) -> Iterator[list[int]]:
    """Run ``count`` (default: one per usable core) CPU-bound Python processes meanwhile.

    Yields their process ids; each is terminated (then killed) by id when the block ends.
    """
    procs = [
        subprocess.Popen([sys.executable, "-c", _BUSY_LOOP])
        for _ in range(count if count is not None else usable_cores())
    ]
    try:
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
