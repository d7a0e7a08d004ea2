"""aslquant.present: every formatter, the Markdown/HTML escapers, and every table builder.

Formatters and escapers are tested on plain values (None, NaN, negative, huge, hostile text).
Table builders are tested on the rows of real runs and analyses of the demo model: one small
module-scoped run (58 evaluation images, 32 calibration images) shared by the slow tests. The
tables' structure, not demo accuracy, is checked, so runs use a 96-pixel input (SMALL: about 5x
cheaper per image than the demo's 224, latency timing and ONNX export included).
"""

from __future__ import annotations

import html
import math
from types import SimpleNamespace

import pandas as pd
import pytest

from aslquant import analysis, experiments, export
from aslquant.data import Preprocess
from aslquant.model import LAYER_NAMES, layer_table
from aslquant.present import format as fmt
from aslquant.present import tables
from aslquant.present.markup import html_text, md_code_block, md_code_span, md_text, visible
from aslquant.recipe import QuantRecipe
from aslquant.report import report_dict, run_summary
from aslquant.run import RunConfig, execute, time_run
from tests.markdown_reading import md_cells, md_unescape

NAN = float("nan")
INF = float("inf")

# --- formatters --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, expected",
    [
        (lambda: fmt.percent(0.93123), "93.12%"),
        (lambda: fmt.percent(0.93123, 1), "93.1%"),
        (lambda: fmt.percent(0.93123, unit=False), "93.12"),
        (lambda: fmt.percent(1.0), "100.00%"),
        (lambda: fmt.percent(-0.5), "-50.00%"),
        (lambda: fmt.percent(-0.000001), "0.00%"),  # no "-0.00%"
        (lambda: fmt.percent(0.0123, signed=True), "+1.23%"),
        (lambda: fmt.percent(1e12), "100000000000000.00%"),
        (lambda: fmt.percent(None), "n/a"),
        (lambda: fmt.percent(NAN), "n/a"),
        (lambda: fmt.percent(INF), "n/a"),
        (lambda: fmt.percent("not a number"), "n/a"),
        (lambda: fmt.points(0.254), "0.25"),
        (lambda: fmt.points(0.254, unit=True), "0.25 points"),
        (lambda: fmt.points(-1.5, signed=True), "-1.50"),
        (lambda: fmt.points(1.5, signed=True), "+1.50"),
        (lambda: fmt.points(-0.001, signed=True), "+0.00"),
        (lambda: fmt.points(None, unit=True), "n/a"),
        (lambda: fmt.points(NAN, signed=True), "n/a"),
        (lambda: fmt.ms(12.3456), "12.35"),
        (lambda: fmt.ms(12.3456, unit=True), "12.35 ms"),
        (lambda: fmt.ms(1e9), "1000000000.00"),
        (lambda: fmt.ms(None), "n/a"),
        (lambda: fmt.ms(None, none=fmt.PENDING), "pending"),
        (lambda: fmt.ms(None, unit=True, none=fmt.PENDING), "pending"),
        (lambda: fmt.db(31.44), "31.4"),
        (lambda: fmt.db(-3.06, unit=True), "-3.1 dB"),
        (lambda: fmt.db(INF), "n/a"),
        (lambda: fmt.size(0), "0 B"),
        (lambda: fmt.size(999), "999 B"),
        (lambda: fmt.size(1000), "1.0 kB"),
        (lambda: fmt.size(87_340), "87.3 kB"),
        (lambda: fmt.size(100_000), "0.10 MB"),
        (lambda: fmt.size(1_106_432), "1.11 MB"),
        (lambda: fmt.size(5_000_000_000), "5.00 GB"),
        (lambda: fmt.size(10**15), "1000000.00 GB"),
        (lambda: fmt.size(-2048), "-2.0 kB"),
        (lambda: fmt.size(None), "n/a"),
        (lambda: fmt.size(NAN), "n/a"),
        (lambda: fmt.ratio(3.891), "3.89x"),
        (lambda: fmt.ratio(0), "n/a"),
        (lambda: fmt.ratio(-2), "n/a"),
        (lambda: fmt.ratio(None, none=fmt.PENDING), "pending"),
        (lambda: fmt.speedup(2.0), "2.00x faster"),
        (lambda: fmt.speedup(1.0), "1.00x faster"),
        (lambda: fmt.speedup(0.5), "2.00x slower"),
        (lambda: fmt.speedup(0.2331), "4.29x slower"),
        (lambda: fmt.speedup(0), "n/a"),
        (lambda: fmt.speedup(-1.5), "n/a"),
        (lambda: fmt.speedup(INF), "n/a"),
        (lambda: fmt.speedup(None, none=fmt.PENDING), "pending"),
        (lambda: fmt.speedup(1e6, 0), "1000000x faster"),
        (lambda: fmt.smaller(3.89), "3.89x smaller"),
        (lambda: fmt.smaller(0.5), "2.00x larger"),
        (lambda: fmt.count(1234567), "1,234,567"),
        (lambda: fmt.count(-12), "-12"),
        (lambda: fmt.count(None), "n/a"),
        (lambda: fmt.number(-0.004), "0.00"),
        (lambda: fmt.number(2.5, 0), "2"),  # round half to even, like Python
        (lambda: fmt.general(1.23456e-5), "1.23e-05"),
        (lambda: fmt.general(123456789.0), "1.23e+08"),
        (lambda: fmt.general(0.0814), "0.0814"),
        (lambda: fmt.general(None), "n/a"),
        (lambda: fmt.shape([32, 112, 112]), "32 x 112 x 112"),
        (lambda: fmt.value_range(-6.1712, 8.0634), "-6.17 .. 8.06"),
        (lambda: fmt.value_range(None, 1.0), "n/a"),
        (lambda: fmt.qparams(0.08144, 0), "0.0814 / zp 0"),
        (lambda: fmt.qparams(None, None), "n/a"),
        (lambda: fmt.latency({"b1_p50": 1.234, "b1_p95": 2.0}, 1), "1.23"),
        (lambda: fmt.latency({"b1_p50": 1.234}, 1, unit=True), "1.23 ms"),
        (lambda: fmt.latency({"b1_p50": 1.234}, 32), "n/a"),
        (lambda: fmt.latency(None, 1), "pending"),
        (lambda: fmt.latency_spread({"b32_p50": 10.0, "b32_p95": 12.345}, 32), "10.00 / 12.35"),
        (lambda: fmt.latency_spread({"b32_p50": 10.0, "b32_p95": None}, 32), "10.00 / n/a"),
        (lambda: fmt.latency_spread(None, 32), "pending"),
    ],
)
def test_formatter(call, expected):
    assert call() == expected


def test_missing_is_none_nan_inf_or_not_a_number():
    assert all(fmt.missing(v) for v in (None, NAN, INF, -INF, "x", object()))
    assert not any(fmt.missing(v) for v in (0, -1, 0.0, 1e308, "3.5"))


@pytest.mark.parametrize(
    "call, expected",
    [
        # anything with estimate/low/high (the stats module's Interval)
        (
            lambda: fmt.interval(SimpleNamespace(estimate=0.9312, low=0.9201, high=0.9423)),
            "93.1% (95% CI 92.0–94.2)",
        ),
        # its own confidence level, when it has one
        (
            lambda: fmt.interval(SimpleNamespace(estimate=0.5, low=0.4, high=0.6, level=0.9)),
            "50.0% (90% CI 40.0–60.0)",
        ),
        # an estimate and a (low, high) pair
        (lambda: fmt.interval(0.9312, (0.9201, 0.9423)), "93.1% (95% CI 92.0–94.2)"),
        # an estimate and an object with low/high
        (
            lambda: fmt.interval(0.9312, SimpleNamespace(low=0.92, high=0.94), digits=2),
            "93.12% (95% CI 92.00–94.00)",
        ),
        (
            lambda: fmt.interval(0.31, (-0.42, 1.07), kind="points", digits=2),
            "0.31 points (95% CI -0.42–1.07)",
        ),
        (lambda: fmt.interval(12.3, (11.0, 15.25), kind="ms"), "12.3 ms (95% CI 11.0–15.2)"),
        (lambda: fmt.interval(0.93, None), "93.0%"),  # no bounds: the estimate alone
        (lambda: fmt.interval(0.93, (None, NAN)), "93.0%"),
        (lambda: fmt.interval(None, (0.1, 0.2)), "n/a"),
        (lambda: fmt.interval(SimpleNamespace(estimate=NAN, low=0, high=1)), "n/a"),
    ],
)
def test_interval(call, expected):
    assert call() == expected


def test_interval_refuses_an_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        fmt.interval(0.5, (0.4, 0.6), kind="furlongs")


# --- escaping ----------------------------------------------------------------------------------

#: Names a labels file or a folder could carry; each must render as the text it is.
HOSTILE = [
    "<img src=x onerror=alert(1)>",
    "<script>alert(1)</script>",
    "a|b",
    "# heading",
    "**bold** and __strong__",
    "[link](javascript:alert(1))",
    "![img](http://example.com/x.png)",
    "`code` and ```fence```",
    "- item",
    "+ item",
    "1. first",
    "2) second",
    "> quote",
    "$x^2$",
    ":red[coloured] :smile:",
    "&amp; &#60;",
    "~~strike~~",
    "_em_ snake_case",
    "\\ backslash \\|",
    "http://example.com www.example.com a@example.com",
    "    four spaces",
    "===",
    "tab\tand\nnewline\r",
    "\x1b[2J\x1b[H ansi",
    "\u202eevil bidi",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_md_text_renders_the_name_as_text(name):
    for line_start in (False, True):
        source = md_text(name, line_start=line_start)
        assert "<" not in source and ">" not in source  # no HTML can open
        assert "\n" not in source and "\x1b" not in source
        # Every markup character that could act is escaped: reading back gives the name.
        assert md_unescape(source) == visible(name), source
        bare = source.replace("&#32;", " ")  # the entity for a protected leading space
        for ch in "*`[]|~$#":
            assert bare.count(ch) == bare.count("\\" + ch), (ch, source)
    start = md_text(name, line_start=True)
    assert not start.startswith(("-", "+", "=", " ", "#", ">"))
    assert not any(start.startswith(f"{d}.") or start.startswith(f"{d})") for d in range(10))


def test_md_text_leaves_numbers_and_prose_readable():
    assert md_text("93.10%") == "93.10%"
    assert md_text("Recipe: static on x86 (7-bit).") == "Recipe: static on x86 (7-bit)."
    assert md_text("-0.25", line_start=False) == "-0.25"
    assert md_text("size (packed state_dict)") == "size (packed state_dict)"
    assert md_text("0 .. 18.3") == "0 .. 18.3"


def test_visible_shows_control_characters():
    assert visible("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert visible("x\ty\nz\r") == "x y z "
    assert visible("\x7f\x9b") == "\\x7f\\x9b"
    assert visible("Ünïcode ✓") == "Ünïcode ✓"


def test_code_span_and_block_cannot_be_closed_from_inside():
    span = md_code_span("a ``` b ` c")
    assert span.startswith("````") and span.endswith("````")
    block = md_code_block("python -m aslquant report --data '```\n# not a heading\n```'")
    lines = block.split("\n")
    fence = lines[0]
    assert set(fence) == {"`"} and len(fence) > 3 and lines[-1] == fence
    assert all(not line.startswith(fence) for line in lines[1:-1])
    assert "\x1b" not in md_code_block("\x1b[2J")


def test_html_text_escapes_markup_and_quotes():
    assert html_text("<img src=x onerror=alert(1)>") == "&lt;img src=x onerror=alert(1)&gt;"
    assert html_text("\"a\" & 'b'") == "&quot;a&quot; &amp; &#x27;b&#x27;"
    assert html_text("\x1b[2J") == "\\x1b[2J"


def test_table_renders_hostile_cells_as_text():
    table = tables.Table("t <b>", ("name", "n"), tuple((h, "1") for h in HOSTILE), ("<i>note</i>",))
    md = table.to_markdown().split("\n")
    header, rule, *rows = md[: 2 + len(HOSTILE)]
    assert md_cells(header) == ["name", "n"] and rule == "|---|---|"
    for name, row in zip(HOSTILE, rows, strict=True):
        cells = md_cells(row)
        assert len(cells) == 2, row  # a "|" in a name does not split the cell
        assert md_unescape(cells[0]) == visible(name).strip()
    assert "<" not in table.to_markdown()
    page = table.to_html()
    assert "<img" not in page and "<script" not in page and "<i>" not in page
    assert html.escape(HOSTILE[0]) in page


def test_table_frame_gives_numbers_where_the_column_is_numeric():
    table = tables.Table(
        "t",
        ("name", "n", "drop", "mixed"),
        (("12", "1,234", "-0.25", "3"), ("b", "5", "+1.00", "pending")),
        numeric=frozenset({"n", "drop", "mixed"}),
    )
    frame = table.to_frame()
    assert list(frame["name"]) == ["12", "b"]  # not declared numeric: text
    assert list(frame["n"]) == [1234, 5]
    assert list(frame["drop"]) == [-0.25, 1.0]
    assert list(frame["mixed"]) == ["3", "pending"]  # one non-number keeps the column text
    with pytest.raises(ValueError, match="cells"):
        tables.Table("t", ("a", "b"), (("1",),))
    with pytest.raises(ValueError, match="unknown"):
        tables.Table("t", ("a",), (("1",),), numeric=frozenset({"b"}))


# --- table builders on real rows ---------------------------------------------------------------


SMALL = Preprocess(input_size=96)


def small_config(**recipe) -> RunConfig:
    return RunConfig(
        eval_images=58,
        recipe=QuantRecipe(calib_images=32, **recipe),
        latency_runs=30,
        preprocess=SMALL,
    )


@pytest.fixture(scope="module")
def evaluated():
    """A real run before its timing: latencies pending."""
    return execute(small_config(), timed=False)


@pytest.fixture(scope="module")
def timed(evaluated):
    return time_run(evaluated)


@pytest.fixture(scope="module")
def layers(evaluated):
    return [r.to_dict() for r in analysis.layer_errors(evaluated, max_images=16)]


@pytest.fixture(scope="module")
def sensitivity(evaluated):
    return [r.to_dict() for r in analysis.sensitivity(evaluated, max_images=29)]


def _frame_matches(table: tables.Table) -> None:
    frame = table.to_frame()
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == list(table.columns) and len(frame) == len(table.rows)
    md = table.to_markdown().split("\n")
    assert len(md) >= 2 + len(table.rows)
    for row, line in zip(table.rows, md[2:], strict=False):
        assert [md_unescape(c) for c in md_cells(line)] == [visible(c).strip() for c in row]


@pytest.mark.slow
def test_summary_table_and_cards_of_a_timed_run(timed):
    s = run_summary(timed)
    assert s["size_ratio"] == timed.size_ratio == timed.fp32.size_bytes / timed.int8.size_bytes
    b1 = timed.fp32.latency_ms["b1_p50"] / timed.int8.latency_ms["b1_p50"]
    assert s["latency_ratio_b1"] == timed.speedup(1) == b1
    table = tables.summary_table(s)
    _frame_matches(table)
    rows = {row[0]: row[1:] for row in table.rows}
    u = timed.uncertainty
    assert rows["top-1 accuracy"][1] == fmt.interval(u.int8_accuracy)
    assert rows["top-1 accuracy"][1].startswith(f"{100 * timed.int8.accuracy:.1f}% (95% CI ")
    assert rows["top-1 accuracy"][2] == "drop " + fmt.interval(u.drop, kind="points")
    assert rows["size (packed state_dict)"][2] == f"{timed.size_ratio:.2f}x smaller"
    lat = timed.int8.latency_ms
    assert (
        rows["latency batch 32 p50 / p95 (ms)"][1] == f"{lat['b32_p50']:.2f} / {lat['b32_p95']:.2f}"
    )
    assert rows["latency batch 1 p50 / p95 (ms)"][2].endswith(("x faster", "x slower"))
    cards = {c.title: c for c in tables.summary_cards(s)}
    assert cards["vs torch FP32, b1"].value == f"{b1:.2f}x"
    assert cards["size"].value == f"{timed.size_ratio:.2f}x smaller"


@pytest.mark.slow
def test_pending_latency_shows_pending_everywhere(evaluated):
    assert not evaluated.timed and evaluated.speedup(1) is None and evaluated.speedup(32) is None
    s = run_summary(evaluated)
    assert s["latency_ratio_b1"] is None and s["int8"]["latency_ms"] is None
    rows = {row[0]: row[1:] for row in tables.summary_table(s).rows}
    for batch in (1, 32):
        assert rows[f"latency batch {batch} p50 / p95 (ms)"] == ("pending",) * 3
    # Accuracy and size are there before the timing.
    assert rows["top-1 accuracy"][0] == fmt.interval(evaluated.uncertainty.fp32_accuracy)
    cards = {c.title: c for c in tables.summary_cards(s)}
    assert cards["vs torch FP32, b32"].value == "pending"
    history = tables.runs_table([{**s, "run": 1}])
    row = dict(zip(history.columns, history.rows[0], strict=True))
    assert row["b1 speed-up"] == "pending" and row["b32 p50 / p95 (ms)"] == "pending"
    assert history.to_frame()["run"].tolist() == [1]


@pytest.mark.slow
def test_runs_table_has_a_row_per_run(evaluated, timed):
    runs = [{**run_summary(r), "run": i} for i, r in enumerate((evaluated, timed), 1)]
    table = tables.runs_table(runs)
    _frame_matches(table)
    frame = table.to_frame()
    assert frame["run"].tolist() == [1, 2]
    assert frame["quantized top-1 (%)"].tolist() == [round(100 * timed.int8.accuracy, 2)] * 2
    assert frame["drop (points)"].tolist() == [round(timed.accuracy_drop_points, 2) + 0.0] * 2
    assert frame["b1 speed-up"].tolist() == ["pending", fmt.number(timed.speedup(1))]


@pytest.mark.slow
def test_per_class_flipped_and_skipped_tables(evaluated):
    report = report_dict(evaluated)
    per_class = tables.per_class_table(report["per_class_drops"])
    _frame_matches(per_class)
    assert [r[0] for r in per_class.rows] == list(evaluated.class_names)
    assert per_class.to_frame()["images"].sum() == evaluated.n_eval
    flipped = tables.flipped_table(report["flipped"])
    assert len(flipped.rows) == len(evaluated.flipped()) and not flipped.notes
    assert flipped.title == f"Images whose prediction changed ({len(evaluated.flipped())})"
    if len(report["flipped"]) > 1:
        cut = tables.flipped_table(report["flipped"], limit=1)
        assert len(cut.rows) == 1 and "report.json lists all" in cut.notes[0]
    skipped = tables.skipped_table([("a/b.txt", "not an image"), {"path": "c", "reason": "r"}])
    assert skipped.rows == (("a/b.txt", "not an image"), ("c", "r"))
    assert skipped.title == "2 files skipped (not readable images)"


@pytest.mark.slow
def test_layer_error_table(layers):
    table = tables.layer_error_table(list(reversed(layers)))  # rows come back in network order
    _frame_matches(table)
    assert [r[0] for r in table.rows] == list(LAYER_NAMES)
    frame = table.to_frame()
    assert frame["weight SQNR (dB)"].tolist() == [round(r["weight_sqnr_db"], 1) for r in layers]
    fc2 = dict(zip(table.columns, table.rows[-1], strict=True))
    row = layers[-1]
    assert fc2["activation scale / zero point"] == (
        f"{row['act_scale']:.3g} / zp {row['act_zero_point']}"
    )
    assert "Measured on 16 images." in table.notes


@pytest.mark.slow
def test_sensitivity_and_mixed_precision_tables(evaluated, sensitivity):
    table = tables.sensitivity_table(sensitivity)
    _frame_matches(table)
    assert table.to_frame()["rank"].tolist() == list(range(1, len(sensitivity) + 1))
    first = min(sensitivity, key=lambda r: r["rank"])
    assert table.rows[0][1] == first["layer"]
    row = dict(zip(table.columns, table.rows[0], strict=True))
    assert row["gain (points)"] == f"{first['gain_points'] + 0.0:+.2f}"
    assert "(29 images)" in table.title
    mixed = analysis.greedy_mixed_precision(evaluated, 100.0, max_images=29, ranking=sensitivity)
    mtable = tables.mixed_precision_table(mixed)
    _frame_matches(mtable)
    assert len(mtable.rows) == len(mixed.steps)
    assert mtable.notes[0].startswith("Target drop 100.00 points: reached")


@pytest.mark.slow
def test_bit_sweep_table(evaluated):
    rows = [r.to_dict() for r in analysis.bit_sweep(evaluated, max_images=29)]
    table = tables.bit_sweep_table(rows)
    _frame_matches(table)
    assert table.to_frame()["bits"].tolist() == sorted((r["bits"] for r in rows), reverse=True)
    top = max(rows, key=lambda r: r["bits"])
    assert table.rows[0][1] == f"{100 * top['accuracy']:.2f}"


@pytest.mark.slow
def test_qat_table():
    config = RunConfig(
        eval_images=29, recipe=QuantRecipe(calib_images=16), latency_runs=30, preprocess=SMALL
    )
    qat = experiments.qat_vs_ptq(config, 1)
    table = tables.qat_table(qat)
    _frame_matches(table)
    assert [r[0] for r in table.rows] == ["FP32", "post-training static", "QAT epoch 1"]
    assert table.rows[1][2] == f"{100 * qat.ptq.accuracy:.2f}"


@pytest.mark.slow
def test_onnx_table(timed):
    onnx = export.onnx_compare(timed)
    table = tables.onnx_table(onnx)
    _frame_matches(table)
    assert [r[0] for r in table.rows] == ["ONNX fp32", "ONNX int8"]
    assert table.rows[0][1] == f"{100 * onnx['fp32']['accuracy']:.2f}"
    assert onnx["runtime"] in table.notes[0]


def test_model_card_table():
    from aslquant.model import load_checkpoint
    from aslquant.run import DEMO_CHECKPOINT

    rows = layer_table(load_checkpoint(str(DEMO_CHECKPOINT), num_labels=29), 224)
    table = tables.model_card_table(rows)
    _frame_matches(table)
    frame = table.to_frame()
    assert frame["parameters"].tolist() == [r["params"] for r in rows]
    assert table.rows[0][2] == " x ".join(map(str, rows[0]["input_shape"]))


def test_plain_accepts_typed_rows():
    class Row:
        def to_dict(self) -> dict:
            return {"name": "conv1", "weight_sqnr_db": 40.0}

    table = tables.layer_error_table([Row()])
    assert table.rows[0][:3] == ("conv1", "yes", "40.0")
    assert math.isclose(table.to_frame()["weight SQNR (dB)"][0], 40.0)
