"""aslquant.machine: instruction sets from OS text, what they mean, and the latency verdict."""

from __future__ import annotations

import math
import sys
import time

import numpy as np
import pytest

from aslquant import machine
from aslquant.machine import LoadDuring

# Abridged /proc/cpuinfo and sysctl texts in the formats the OS writes them.
HASWELL = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Core(TM) i7-4770 CPU @ 3.40GHz
flags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi1 bmi2
processor\t: 1
flags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi1 bmi2
"""
SKYLAKE_SP = """model name\t: Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz
flags\t\t: sse4_2 avx avx2 avx512f avx512dq avx512cd avx512bw avx512vl
"""
CASCADE_LAKE = SKYLAKE_SP.replace("avx512vl", "avx512vl avx512_vnni")
SAPPHIRE_RAPIDS = CASCADE_LAKE.replace(
    "avx512_vnni", "avx512_vnni avx_vnni amx_bf16 avx512_fp16 amx_tile amx_int8"
)
ALDER_LAKE = """model name\t: 12th Gen Intel(R) Core(TM) i7-12700
flags\t\t: sse4_2 avx avx2 fma avx_vnni
"""
GRAVITON2 = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs
CPU implementer\t: 0x41
"""
CORTEX_A72 = GRAVITON2.replace(" asimddp", "")
INTEL_MAC = """machdep.cpu.brand_string: Intel(R) Core(TM) i9-9880H CPU @ 2.30GHz
machdep.cpu.features: FPU VME DE PSE TSC MSR PAE SSE SSE2 SSE3 SSSE3 FMA SSE4.1 SSE4.2 AVX1.0
machdep.cpu.leaf7_features: RDWRFSGS TSC_THREAD_OFFSET BMI1 AVX2 SMEP BMI2 ERMS INVPCID
"""
APPLE_M1 = """machdep.cpu.brand_string: Apple M1
hw.optional.neon: 1
hw.optional.arm.FEAT_DotProd: 1
hw.optional.arm.FEAT_I8MM: 0
"""


def test_x86_flags_from_cpuinfo():
    old = machine.parse_cpuinfo(HASWELL, "x86_64")
    assert old.source == "/proc/cpuinfo" and old.model.startswith("Intel(R) Core(TM) i7-4770")
    assert (old.avx2, old.avx512, old.vnni, old.amx) == (True, False, False, False)
    assert old.present() == ["AVX2"]
    skylake = machine.parse_cpuinfo(SKYLAKE_SP, "x86_64")
    assert (skylake.avx512, skylake.vnni) == (True, False)
    cascade = machine.parse_cpuinfo(CASCADE_LAKE, "x86_64")
    assert cascade.vnni and cascade.vnni_kinds == ("AVX512_VNNI",) and cascade.avx512_vnni
    spr = machine.parse_cpuinfo(SAPPHIRE_RAPIDS, "x86_64")
    assert spr.amx and spr.vnni_kinds == ("AVX512_VNNI", "AVX_VNNI")
    assert spr.present() == ["AVX2", "AVX-512", "AVX512-VNNI", "AVX-VNNI", "AMX"]
    client = machine.parse_cpuinfo(ALDER_LAKE, "x86_64")
    assert (client.avx512, client.vnni, client.avx512_vnni) == (False, True, False)
    # AVX-512F alone is not the F/BW/DQ/VL set FBGEMM's AVX-512 kernels need.
    partial = machine.parse_cpuinfo("flags\t: avx2 avx512f\n", "x86_64")
    assert partial.avx512 is False


def test_arm_features_from_cpuinfo_and_sysctl():
    graviton = machine.parse_cpuinfo(GRAVITON2, "aarch64")
    assert (graviton.neon, graviton.dotprod, graviton.avx2) == (True, True, False)
    a72 = machine.parse_cpuinfo(CORTEX_A72, "aarch64")
    assert (a72.neon, a72.dotprod) == (True, False)
    m1 = machine.parse_sysctl(APPLE_M1, "arm64")
    assert m1.source == "sysctl" and m1.model == "Apple M1"
    assert (m1.neon, m1.dotprod, m1.vnni) == (True, True, False)


def test_intel_mac_from_sysctl_and_unreadable_text_is_unknown():
    mac = machine.parse_sysctl(INTEL_MAC, "x86_64")
    assert (mac.avx2, mac.avx512, mac.vnni) == (True, False, False)
    for features in (
        machine.parse_cpuinfo("processor\t: 0\n", "x86_64"),
        machine.parse_sysctl("kern.ostype: Darwin\n", "x86_64"),
    ):
        assert features.source == "unknown" and not features.known
        assert (features.avx2, features.vnni, features.neon) == (None, None, None)
        assert all(note.fast is None for note in machine.backend_notes(features))
        assert "could not be read" in machine.reduce_range_advice(features)


def test_advice_follows_the_instruction_sets():
    no_vnni = machine.reduce_range_advice(machine.parse_cpuinfo(SKYLAKE_SP, "x86_64"))
    assert "VPMADDUBSW" in no_vnni and "65,280" in no_vnni and "risks wrong" in no_vnni
    vnni = machine.reduce_range_advice(machine.parse_cpuinfo(CASCADE_LAKE, "x86_64"))
    assert "VPDPBUSD" in vnni and "reduce_range=off is safe" in vnni
    client = machine.reduce_range_advice(machine.parse_cpuinfo(ALDER_LAKE, "x86_64"))
    assert "onednn with reduce_range=off is safe" in client
    assert "keep reduce_range on for fbgemm" in client
    arm = machine.reduce_range_advice(machine.parse_cpuinfo(GRAVITON2, "aarch64"))
    assert "keep it off" in arm


def test_backend_notes_follow_the_instruction_sets():
    def notes(text: str, arch: str = "x86_64") -> dict[str, machine.BackendNote]:
        return {n.backend: n for n in machine.backend_notes(machine.parse_cpuinfo(text, arch))}

    assert list(notes(HASWELL)) == list(machine.BACKENDS)
    haswell = notes(HASWELL)
    assert haswell["fbgemm"].fast and "AVX2 kernels" in haswell["fbgemm"].text
    assert not haswell["onednn"].fast and "no VNNI" in haswell["onednn"].text
    assert not haswell["qnnpack"].fast and "SSE2" in haswell["qnnpack"].text
    assert "AVX-512 VNNI kernels" in notes(CASCADE_LAKE)["fbgemm"].text
    assert "AMX" in notes(SAPPHIRE_RAPIDS)["onednn"].text
    no_avx2 = notes("flags\t: sse4_2 avx\n")
    assert not no_avx2["x86"].fast and "no AVX2" in no_avx2["x86"].text
    graviton = notes(GRAVITON2, "aarch64")
    assert graviton["qnnpack"].fast and "dotprod" in graviton["qnnpack"].text
    assert not graviton["x86"].fast and "not available" in graviton["fbgemm"].text
    assert "dotprod" not in notes(CORTEX_A72, "aarch64")["qnnpack"].text


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/cpuinfo")
def test_this_machine_is_read_from_the_os_and_agrees_with_cpuid():
    features = machine.cpu_features()
    assert features.source == "/proc/cpuinfo" and features.known
    flags = set(features.flags)
    assert features.avx2 == ("avx2" in flags)
    caps = None
    if features.is_x86:
        import torch

        caps = torch.cpu.get_capabilities()
    if caps:  # torch reads CPUID itself: an independent reading of the same hardware
        assert features.avx2 == caps["avx2"]
        assert features.avx512_vnni == caps["avx512_vnni"]
        assert ("AVX_VNNI" in features.vnni_kinds) == caps["avx_vnni"]
    summary = machine.machine_summary()
    assert summary["cpu"]["source"] == "/proc/cpuinfo"
    assert [b["backend"] for b in summary["backends"]] == list(machine.BACKENDS)
    assert summary["cores"] >= 1


# ---------------------------------------------------------------------------------------------
# The latency verdict


STEADY = [0.010 + 0.0002 * (i % 5) for i in range(30)]


def _quiet(**changes) -> LoadDuring:
    fields = dict(
        wall_s=1.0,
        process_cpu_s=0.98,
        cores=2,
        load_1min=0.9,
        others_busy_cores=0.1,
        steal_fraction=0.0,
    )
    return LoadDuring(**(fields | changes))


def test_steady_times_on_a_quiet_machine_are_reliable():
    verdict = machine.judge_latency(STEADY, _quiet())
    assert verdict.reliable and verdict.reasons == ()
    assert "can be compared" in verdict.advice
    assert verdict.figures["p95_over_p50"] == pytest.approx(
        np.percentile(STEADY, 95) / np.median(STEADY)
    )
    assert verdict.to_dict()["reasons"] == []


def test_each_reason_by_itself():
    spread = [0.010] * 28 + [0.050] * 2  # p95 interpolates to 0.0322: 3.2x the median
    cases = {
        "p95/p50 = 3.2 (> 1.5)": (spread, _quiet()),
        "load average 3.9 on 2 cores while timing": (STEADY, _quiet(load_1min=3.9)),
        "CPU time was 48% of wall time: other processes took the cores": (
            STEADY,
            _quiet(process_cpu_s=0.48),
        ),
        "other processes kept 1.9 of 2 cores busy while timing (this measurement needs 1)": (
            STEADY,
            _quiet(others_busy_cores=1.9),
        ),
        "steal 12%: the hypervisor gave this machine's CPU to other virtual machines": (
            STEADY,
            _quiet(steal_fraction=0.12),
        ),
        "only 5 timed calls (< 10): no spread to judge": (STEADY[:5], _quiet()),
    }
    for reason, (times, load) in cases.items():
        verdict = machine.judge_latency(times, load)
        assert verdict.reasons == (reason,), verdict.reasons
        assert not verdict.reliable
        assert "Close other programs" in verdict.advice
    assert "virtual machine" in machine.judge_latency(STEADY, _quiet(steal_fraction=0.12)).advice
    assert "at least 30 calls" in machine.judge_latency(STEADY[:5], _quiet()).advice


def test_spare_cores_and_short_windows_are_taken_into_account():
    # One other busy process on a 2-core machine does not compete with a 1-thread timing...
    assert machine.judge_latency(STEADY, _quiet(others_busy_cores=1.0), threads=1).reliable
    # ...but it does with a 2-thread one.
    two = machine.judge_latency(STEADY, _quiet(others_busy_cores=1.0), threads=2)
    assert two.reasons == (
        "other processes kept 1.0 of 2 cores busy while timing (this measurement needs 2)",
    )
    # 50 ms is five kernel ticks: too coarse to judge others' share or steal.
    short = _quiet(wall_s=0.05, process_cpu_s=0.049, others_busy_cores=1.9, steal_fraction=0.2)
    assert machine.judge_latency(STEADY, short).reliable
    # No load figures at all (an OS that reports none): judged on the spread alone.
    unsampled = machine.judge_latency(STEADY, None)
    assert unsampled.reliable and "not sampled" in unsampled.advice
    blind = _quiet(load_1min=None, others_busy_cores=None, steal_fraction=None)
    assert machine.judge_latency(STEADY, blind).reliable


def _reasons_from_figures(figures: dict) -> set[str]:
    """Which limits the reported figures cross (as the reasons' first words), recomputed
    from the figures alone."""
    crossed = set()
    if figures["p95_over_p50"] > machine.P95_OVER_P50_MAX:
        crossed.add("p95/p50")
    if figures["load_1min"] is not None:
        if figures["load_1min"] > machine.LOAD_PER_CORE_MAX * figures["cores"]:
            crossed.add("load average")
    if figures["cpu_share"] < machine.CPU_SHARE_MIN:
        crossed.add("CPU time was")
    if figures["wall_s"] >= machine.TICK_WINDOW_MIN_S:
        spare = max(0, figures["cores"] - figures["threads"])
        others = figures["others_busy_cores"]
        if others is not None and others > spare + machine.OTHERS_BUSY_SLACK_CORES:
            crossed.add("other processes kept")
        if figures["steal_fraction"] is not None and figures["steal_fraction"] > 0.05:
            crossed.add("steal")
    return crossed


def test_a_real_busy_loop_is_judged_consistently_with_its_figures():
    """Real timings on a shared machine may or may not be reliable; what must hold is that
    the figures are physically sane and the verdict is exactly the limits they cross."""

    def spin() -> None:
        total = 0
        for i in range(60_000):
            total += i * i

    with machine.watch_load() as watch:
        seconds = []
        for _ in range(30):
            start = time.perf_counter()
            spin()
            seconds.append(time.perf_counter() - start)
    load = watch.result
    assert load is not None and load.wall_s >= sum(seconds)
    assert 0 < load.cpu_share <= load.cores * 1.05
    assert load.cores == machine.usable_cores()
    if load.others_busy_cores is not None:
        assert -1e-9 <= load.others_busy_cores <= load.cores + 1e-9
        assert 0.0 <= load.steal_fraction <= 1.0
    verdict = machine.judge_latency(seconds, load, threads=1)
    assert verdict.figures["calls"] == 30 and verdict.figures["p95_over_p50"] >= 1.0
    crossed = _reasons_from_figures(verdict.figures)
    assert {next(k for k in crossed if r.startswith(k)) for r in verdict.reasons} == crossed
    assert len(verdict.reasons) == len(crossed)
    assert verdict.reliable == (not crossed)
    assert machine.judge_latency(seconds, load, threads=1) == verdict


def test_load_between_computes_shares_from_counters():
    before = machine.LoadSnapshot(
        wall=10.0, process_cpu=5.0, load_1min=1.0, core_times=(100.0, 40.0, 1.0, 2)
    )
    after = machine.LoadSnapshot(
        wall=11.0, process_cpu=5.5, load_1min=2.5, core_times=(102.0, 41.5, 1.2, 2)
    )
    during = machine.load_between(before, after)
    assert during.wall_s == pytest.approx(1.0) and during.process_cpu_s == pytest.approx(0.5)
    assert during.cpu_share == pytest.approx(0.5)
    assert during.load_1min == 2.5
    # 1.5 busy core-seconds of 2 over 1 s on 2 cores = 1.5 cores busy, 0.5 of them ours.
    assert during.others_busy_cores == pytest.approx(1.0)
    assert during.steal_fraction == pytest.approx(0.1)
    unknown = machine.load_between(
        machine.LoadSnapshot(0.0, 0.0, None, None), machine.LoadSnapshot(1.0, 1.0, None, None)
    )
    assert unknown.others_busy_cores is None and unknown.load_1min is None
    assert not math.isnan(unknown.cpu_share)
