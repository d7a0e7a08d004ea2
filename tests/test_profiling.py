"""Per-layer time breakdown, the threads x batch table and the speed explanation, on the demo."""

from __future__ import annotations

import json

import pytest
import torch
import torch.ao.quantization as tq
from torch import nn

from aslquant import machine, parity, profiling
from aslquant.data import Preprocess
from aslquant.errors import InputError
from aslquant.measure import ChannelsLastFp32
from aslquant.model import LAYER_NAMES, CustomCNN
from aslquant.qmodules import QuantizedMaxPool2d
from aslquant.recipe import QuantRecipe
from aslquant.run import RunConfig, execute
from tests.test_machine import CASCADE_LAKE, HASWELL

SMALL = Preprocess(input_size=96)


def small_config(eval_images: int = 58, **recipe) -> RunConfig:
    return RunConfig(
        eval_images=eval_images, threads=1, preprocess=SMALL, recipe=QuantRecipe(**recipe)
    )


# --- fast: which module and op belongs to which row ---------------------------------------------


def test_modules_map_to_their_layer_row_by_name_and_type():
    row = profiling.module_row
    assert row("conv1", nn.Conv2d(3, 16, 5)) == "conv1"
    assert row("model.fc2", nn.Linear(256, 29)) == "fc2"  # the channels-last FP32 wrapper
    assert row("relu3", nn.ReLU()) == "conv3" and row("relu5", nn.Identity()) == "fc1"
    assert row("pool", QuantizedMaxPool2d(2, 2)) == profiling.MAX_POOL
    assert row("avgpool", nn.AdaptiveAvgPool2d(1)) == profiling.AVG_POOL
    # A stub in front of conv1 is a conversion, whatever its key says.
    assert row("to_int8.conv1", tq.QuantStub()) == profiling.QDQ
    assert row("to_float.output", tq.DeQuantStub()) == profiling.QDQ
    assert row("quant", nn.Identity()) == profiling.QDQ  # FX's stand-in for the stub
    assert row("to_int8", nn.ModuleDict()) is None
    assert row("fc1._packed_params", nn.Module()) is None


def test_ops_outside_modules_map_by_their_registered_name():
    assert profiling.op_row("aten::quantize_per_tensor") == profiling.QDQ
    assert profiling.op_row("aten::dequantize") == profiling.QDQ
    assert profiling.op_row("aten::flatten") == profiling.OTHER
    assert profiling.op_row("quantized::max_pool2d") == profiling.MAX_POOL
    assert profiling.op_type_row("onednn::qconv_pointwise") == profiling.CONVOLUTIONS
    assert profiling.op_type_row("onednn::qlinear_pointwise") == profiling.LINEARS
    assert profiling.op_type_row("quantized::max_pool2d") == profiling.MAX_POOL
    assert profiling.op_type_row("quantized_decomposed::dequantize_per_tensor") == profiling.QDQ


def test_ranged_copy_wraps_each_row_module_and_computes_the_same():
    model = CustomCNN().eval()
    ranged, count = profiling.ranged_copy(model)
    wrapped = [n for n, m in ranged.named_modules() if isinstance(m, profiling._Ranged)]
    assert count == len(wrapped) == 15  # 2 stubs, 6 layers, 5 ReLUs, 2 pools
    assert "conv1" in wrapped and "pool" in wrapped and "quant" in wrapped
    assert not any(isinstance(m, profiling._Ranged) for m in model.modules())  # untouched
    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(ranged(x), model(x))


def test_fp32_breakdown_adds_up():
    model = ChannelsLastFp32(CustomCNN().eval())
    x = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    times = profiling.layer_times(model, None, x, 1, model="fp32", calls=12)
    assert tuple(times.rows) == profiling.MODULE_ROWS
    assert all(times.rows[name] > 0 for name in LAYER_NAMES)
    assert times.rows[profiling.MAX_POOL] > 0 and times.calls == 12
    assert abs(times.coverage - 1) <= profiling.COVERAGE_TOLERANCE, times.to_dict()
    assert times.reliability.figures["calls"] == 12


def test_bounds_are_checked_before_timing():
    with pytest.raises(InputError, match="batch size"):
        profiling._check_bounds(batches=(0,), thread_counts=(1,))
    with pytest.raises(InputError, match="threads"):
        profiling._check_bounds(batches=(1,), thread_counts=(profiling.all_threads() + 1,))


# --- slow: a real static run --------------------------------------------------------------------


@pytest.fixture(scope="module")
def run():
    return execute(small_config(calib_images=32), timed=False)


@pytest.fixture(scope="module")
def breakdown(run):
    return profiling.time_breakdown(run)


@pytest.fixture(scope="module")
def table(run):
    # batch 8 with fewer calls, to show the table says so
    return profiling.threads_batch_table(run, batches=(1, 8), runs_by_batch={8: 12})


@pytest.mark.slow
def test_breakdown_rows_add_up_to_the_end_to_end_latency(run, breakdown):
    """The issue's "Done when": rows within 15% of the end-to-end forward pass."""
    assert breakdown.fp32.grouping == breakdown.int8.grouping == profiling.BY_MODULE
    for times in (breakdown.fp32, breakdown.int8):
        assert abs(times.coverage - 1) <= profiling.COVERAGE_TOLERANCE, times.to_dict()
        assert times.end_to_end_ms > 0 and times.batch == 1 and times.threads == 1
        assert all(times.rows[name] > 0 for name in LAYER_NAMES)
    # The eager INT8 model converts the input once (QuantStub) and the logits once.
    assert breakdown.int8.rows[profiling.QDQ] > 0
    table = breakdown.table()
    assert list(table["row"]) == list(profiling.MODULE_ROWS)
    assert table["int8_share"].sum() == pytest.approx(1.0)
    assert not any(isinstance(m, profiling._Ranged) for m in run.quantized.module.modules())
    json.dumps(breakdown.to_dict())


@pytest.mark.slow
def test_table_cells_carry_runs_speedup_and_a_verdict(table):
    threads = tuple(dict.fromkeys((1, profiling.all_threads())))
    assert table.thread_counts == threads and table.batches == (1, 8)
    assert [(c.threads, c.batch) for c in table.cells] == [(t, b) for t in threads for b in (1, 8)]
    for cell in table.cells:
        assert cell.runs == (30 if cell.batch == 1 else 12)
        assert cell.speedup == pytest.approx(cell.fp32.p50_ms / cell.int8.p50_ms)
        for timing in (cell.fp32, cell.int8):
            assert 0 < timing.p50_ms <= timing.p95_ms
            assert isinstance(timing.reliability, machine.Reliability)
            assert timing.reliability.figures["calls"] == timing.runs
            assert timing.reliability.figures["threads"] == cell.threads
            assert "load_1min" in timing.reliability.figures  # the load was watched
    assert any("batch 8: 12 timed calls" in note for note in table.notes)
    frame = table.frame()
    assert len(frame) == len(table.cells) and set(frame["runs"]) == {30, 12}
    json.dumps(table.to_dict())


@pytest.mark.slow
def test_explanation_is_built_from_the_measurements_and_the_cpu(breakdown, table):
    quiet = profiling.explain_speed(breakdown, table, machine.parse_cpuinfo(CASCADE_LAKE, "x86_64"))
    steady = breakdown.fp32.reliability.reliable and breakdown.int8.reliability.reliable
    for times in (breakdown.fp32, breakdown.int8):
        quoted = times.end_to_end_ms if steady else times.profiled_ms
        assert f"{quoted:.2f} ms" in quiet[0]
    assert any("quantize/dequantize" in line for line in quiet)
    assert any("Max-pooling" in line for line in quiet)
    assert any("AVX512-VNNI" in line for line in quiet)
    assert not any("Without VNNI" in line for line in quiet)
    assert any(line.startswith("With 1 thread(s): INT8 is batch 1") for line in quiet)
    old = profiling.explain_speed(breakdown, None, machine.parse_cpuinfo(HASWELL, "x86_64"))
    assert any("Without VNNI" in line for line in old)
    assert not any(line.startswith("With 1 thread") for line in old)  # no table given


@pytest.mark.slow
def test_compiled_pt2e_run_has_no_torchscript_and_is_profiled_by_op_type():
    """pt2e compiles for about a minute here: one run serves both features."""
    run = execute(small_config(method="pt2e", calib_images=16, eval_images=29), timed=False)
    checked = parity.runtime_parity(run, images=29)
    missing = {s.name: s.reason for s in checked.not_produced}
    assert set(missing) == {parity.TORCHSCRIPT, parity.LITE}
    assert all("torch.compile" in reason for reason in missing.values())
    assert checked.step.scale is None and "pt2e" in checked.step.source
    assert checked.produced == [
        parity.TORCH_FP32, parity.TORCH_QUANTIZED, parity.ONNX_FP32, parity.ONNX_INT8
    ]  # fmt: skip

    breakdown = profiling.time_breakdown(run, calls=12)
    assert breakdown.fp32.grouping == breakdown.int8.grouping == profiling.BY_OP
    assert breakdown.rows == profiling.OP_ROWS
    assert any("op type" in note for note in breakdown.notes)
    for times in (breakdown.fp32, breakdown.int8):
        assert times.rows[profiling.CONVOLUTIONS] > 0
        assert abs(times.coverage - 1) <= profiling.COVERAGE_TOLERANCE, times.to_dict()
