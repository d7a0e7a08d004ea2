"""Every table the dashboard and the reports show, built once as a neutral value.

A builder takes the rows as report.json holds them (plain dicts; typed rows with ``to_dict()``
are accepted too) and returns a ``Table`` of text formatted by ``present.format``. The same
Table becomes a pandas DataFrame on a page (``to_frame``: number columns as numbers, so they
sort), a Markdown table in report.md (``to_markdown``) and an HTML table in report.html
(``to_html``), so the three always show the same figures. Units live in the column headers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from aslquant.model import LAYER_NAMES
from aslquant.present import format as fmt
from aslquant.present.markup import html_text, md_text

#: A cell that reads as a number: optional sign, digits with optional thousands separators, an
#: optional fraction. Nothing else ("1e5", "0x1f" and "n/a" stay text).
_NUMBER = re.compile(r"^[+-]?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?$")


def plain(row: Any) -> Any:
    """A report.json-shaped value: typed rows (anything with ``to_dict()``) become dicts."""
    return row.to_dict() if hasattr(row, "to_dict") else row


def plain_rows(rows: Iterable[Any] | None) -> list[dict]:
    return [plain(r) for r in rows or ()]


def _as_number(text: str) -> int | float | None:
    if text == "":
        return None
    digits = text.replace(",", "")
    return float(digits) if "." in digits else int(digits)


@dataclass(frozen=True)
class Table:
    """A titled table of text cells.

    ``columns``: the headers (with units); ``rows``: tuples of cell text, one per column;
    ``notes``: sentences that belong under the table; ``numeric``: the columns whose cells are
    numbers (a page gets them as numbers, so they sort; a column with any other text, such
    as ``pending``, stays text).
    """

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    notes: tuple[str, ...] = ()
    numeric: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for row in self.rows:
            if len(row) != len(self.columns):
                raise ValueError(
                    f"table {self.title!r}: a row has {len(row)} cells for "
                    f"{len(self.columns)} columns"
                )
        unknown = set(self.numeric) - set(self.columns)
        if unknown:
            raise ValueError(f"table {self.title!r}: numeric columns {sorted(unknown)} unknown")

    def column(self, name: str) -> list[str]:
        i = self.columns.index(name)
        return [row[i] for row in self.rows]

    def to_frame(self) -> pd.DataFrame:
        """The table as a DataFrame (pages show it with ``hide_index=True``)."""
        data: dict[str, list] = {}
        for name in self.columns:
            cells = self.column(name)
            if name in self.numeric and all(c == "" or _NUMBER.match(c) for c in cells):
                data[name] = [_as_number(c) for c in cells]
            else:
                data[name] = cells
        return pd.DataFrame(data, columns=list(self.columns))

    def to_markdown(self) -> str:
        """GitHub-flavoured Markdown; every cell escaped, notes as paragraphs below."""
        lines = [
            "| " + " | ".join(md_text(c) for c in self.columns) + " |",
            "|" + "---|" * len(self.columns),
        ]
        lines += ["| " + " | ".join(md_text(c) for c in row) + " |" for row in self.rows]
        for note in self.notes:
            lines += ["", md_text(note, line_start=True)]
        return "\n".join(lines)

    def to_html(self) -> str:
        """An HTML table; every cell escaped, notes as muted paragraphs below."""
        head = "".join(f"<th>{html_text(c)}</th>" for c in self.columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{html_text(c)}</td>" for c in row) + "</tr>" for row in self.rows
        )
        notes = "".join(f"<p class='muted'>{html_text(n)}</p>" for n in self.notes)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{notes}"


@dataclass(frozen=True)
class Card:
    """A headline figure: what it is, its value, and a note under it."""

    title: str
    value: str
    note: str = ""


def _table(
    title: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    notes: Iterable[str] = (),
    numeric: Iterable[str] = (),
) -> Table:
    return Table(
        title,
        tuple(columns),
        tuple(tuple(str(c) for c in row) for row in rows),
        tuple(n for n in notes if n),
        frozenset(numeric),
    )


@dataclass(frozen=True)
class _Col:
    """One column of a record table: its header, how a record becomes its cell, and whether
    the cell is a number."""

    header: str
    cell: Callable[[Mapping], str]
    numeric: bool = False


def _records(
    title: str, cols: Sequence[_Col], records: Iterable[Any], notes: Iterable[str] = ()
) -> Table:
    """A table with one row per record (a report.json row dict or a typed row)."""
    return _table(
        title,
        [c.header for c in cols],
        ([c.cell(r) for c in cols] for r in plain_rows(records)),
        notes,
        [c.header for c in cols if c.numeric],
    )


def _key(key: str, default: str = "") -> Callable[[Mapping], str]:
    # A key present with None (a row without an error) reads as the default, not "None".
    return lambda r: default if r.get(key) is None else r[key]


def _first(rows: Sequence[Mapping], key: str) -> Any:
    return plain(rows[0]).get(key) if rows else None


def _shown(what: str, shown: int, total: int) -> str:
    return f"First {shown} of {total} {what} shown; report.json lists all." if total > shown else ""


def _pct(value: Any, *, none: str = fmt.NA) -> str:
    """A fraction in a column whose header says (%)."""
    return fmt.percent(value, unit=False, none=none)


def _ci(value: Any, n: Any) -> str:
    """The 95% interval of a fraction measured on ``n`` images (Wilson's score interval, which
    needs only the count: aslquant.stats), as ``lo–hi`` in a column whose header says (%)."""
    interval = _wilson(value, n)
    if interval is None:
        return fmt.NA
    return f"{fmt.number(100 * interval.low, 1)}–{fmt.number(100 * interval.high, 1)}"


def _wilson(value: Any, n: Any):
    from aslquant.stats import wilson_interval

    if fmt.missing(value) or not n:
        return None
    return wilson_interval(int(round(float(value) * int(n))), int(n))


def _interval_cell(interval: Any, kind: str = "percent") -> str:
    return fmt.interval(interval, kind=kind) if interval else fmt.NA


def _overlaps(rows: list[dict], key: str = "accuracy", n_key: str = "n_images") -> dict[int, str]:
    """For each row (by position), the rows whose accuracy interval overlaps its own: a ranking
    between them is within the measurement's uncertainty."""
    intervals = [_wilson(r.get(key), r.get(n_key)) for r in rows]
    out = {}
    for i, a in enumerate(intervals):
        same = [
            str(j + 1)
            for j, b in enumerate(intervals)
            if j != i and a is not None and b is not None and a.overlaps(b)
        ]
        out[i] = ", ".join(same)
    return out


# --- one run -----------------------------------------------------------------------------------


def _latency_none(*models: Mapping) -> str:
    """How a latency-derived figure reads when missing: ``pending`` while any model's timing
    is still running, else ``n/a``."""
    return fmt.PENDING if any(m.get("latency_ms") is None for m in models) else fmt.NA


def summary_table(summary: Mapping) -> Table:
    """FP32 vs quantized: accuracy, size and latency, with the drop and ratios.

    ``summary``: report.json's top level (``fp32``, ``int8``, ``accuracy_drop_points``,
    ``size_ratio``, ``latency_ratio_b1``, ``latency_ratio_b32``, ``agreement``). Rows measure
    different things, so here each cell carries its unit.
    """
    f, q = summary["fp32"], summary["int8"]
    u = summary.get("uncertainty") or {}
    pending = _latency_none(f, q)
    rows = [
        [
            "top-1 accuracy",
            _interval_cell(u.get("fp32_accuracy")) if u else fmt.percent(f["accuracy"]),
            _interval_cell(u.get("int8_accuracy")) if u else fmt.percent(q["accuracy"]),
            "drop "
            + (
                _interval_cell(u.get("drop"), "points")
                if u
                else fmt.points(summary["accuracy_drop_points"], unit=True)
            ),
        ],
        ["top-5 accuracy", fmt.percent(f["top5"]), fmt.percent(q["top5"]), ""],
        [
            "same top-1 as FP32",
            "",
            _interval_cell(u.get("agreement")) if u else fmt.percent(summary["agreement"]),
            (u.get("mcnemar") or {}).get("verdict", ""),
        ],
        [
            "size (packed state_dict)",
            fmt.size(f["size_bytes"]),
            fmt.size(q["size_bytes"]),
            fmt.smaller(summary["size_ratio"]),
        ],
        [
            "size (TorchScript)",
            fmt.size(f.get("torchscript_bytes")),
            fmt.size(q.get("torchscript_bytes")),
            "",
        ],
    ]
    for batch in fmt.BATCHES:
        rows.append(
            [
                f"latency batch {batch} p50 / p95 (ms)",
                fmt.latency_spread(f.get("latency_ms"), batch),
                fmt.latency_spread(q.get("latency_ms"), batch),
                fmt.speedup(summary.get(f"latency_ratio_b{batch}"), none=pending),
            ]
        )
    return _table("Summary", ["", "FP32 (torch)", "quantized (torch)", "change"], rows)


def summary_cards(summary: Mapping) -> tuple[Card, ...]:
    """The headline cards of a run: quantized top-1, agreement, size, speed at batch 1 and 32."""
    f, q = summary["fp32"], summary["int8"]
    return (
        Card(
            "top-1 quantized",
            fmt.percent(q["accuracy"]),
            f"FP32 {fmt.percent(f['accuracy'])}, drop "
            + fmt.points(summary["accuracy_drop_points"], unit=True),
        ),
        Card(
            "same top-1 as FP32",
            fmt.percent(summary["agreement"]),
            f"on {fmt.count(summary.get('n_eval'))} images",
        ),
        Card(
            "size",
            fmt.smaller(summary["size_ratio"]),
            f"{fmt.size(f['size_bytes'])} → {fmt.size(q['size_bytes'])}",
        ),
        *speedup_cards(
            "torch FP32",
            f.get("latency_ms"),
            q.get("latency_ms"),
            summary.get("latency_ratio_b1"),
            summary.get("latency_ratio_b32"),
        ),
    )


def speedup_cards(
    baseline: str,
    base_latency: Mapping | None,
    quant_latency: Mapping | None,
    ratio_b1: float | None,
    ratio_b32: float | None,
) -> tuple[Card, Card]:
    """Speed-up (baseline median latency over the quantized model's; above 1 is faster) at
    batch 1 and 32 against a named FP32 baseline; ``pending`` until both are timed."""
    none = fmt.NA if base_latency is not None and quant_latency is not None else fmt.PENDING
    b1, b32 = (
        Card(
            f"vs {baseline}, b{batch}",
            fmt.ratio(value, none=none),
            f"{fmt.latency(base_latency, batch)} → {fmt.latency(quant_latency, batch)} ms p50",
        )
        for batch, value in zip(fmt.BATCHES, (ratio_b1, ratio_b32), strict=True)
    )
    return b1, b32


def _speedup_cell(batch: int) -> Callable[[Mapping], str]:
    return lambda s: fmt.number(
        s.get(f"latency_ratio_b{batch}"), none=_latency_none(s["fp32"], s["int8"])
    )


_RUN_COLUMNS = (
    _Col("run", lambda s: s.get("run", ""), numeric=True),
    _Col("recipe", _key("recipe")),
    _Col("FP32 top-1 (%)", lambda s: _pct(s["fp32"]["accuracy"]), numeric=True),
    _Col("quantized top-1 (%)", lambda s: _pct(s["int8"]["accuracy"]), numeric=True),
    _Col("drop (points)", lambda s: fmt.points(s["accuracy_drop_points"]), numeric=True),
    _Col(
        "drop 95% CI (points)",
        lambda s: _interval_cell((s.get("uncertainty") or {}).get("drop"), "points"),
    ),
    _Col("agreement (%)", lambda s: _pct(s["agreement"]), numeric=True),
    _Col("quantized size", lambda s: fmt.size(s["int8"]["size_bytes"])),
    _Col("size ratio", lambda s: fmt.number(s["size_ratio"]), numeric=True),
    _Col("b1 p50 / p95 (ms)", lambda s: fmt.latency_spread(s["int8"].get("latency_ms"), 1)),
    _Col("b32 p50 / p95 (ms)", lambda s: fmt.latency_spread(s["int8"].get("latency_ms"), 32)),
    _Col("b1 speed-up", _speedup_cell(1), numeric=True),
    _Col("b32 speed-up", _speedup_cell(32), numeric=True),
    _Col("key", _key("run_key")),
)


def runs_table(runs: Iterable[Mapping]) -> Table:
    """Runs side by side (the run history): one row per run summary.

    Each row is a run's summary (``report.run_summary``) plus ``run``, its number in the
    session.
    """
    return _records("Runs", _RUN_COLUMNS, runs)


def per_class_table(rows: Iterable[Mapping]) -> Table:
    """Per-class top-1 of both models and the drop with its interval (report.json
    ``per_class_drops``); a class is flagged only when its interval excludes zero."""
    cols = (
        _Col("class", _key("name")),
        _Col("images", lambda r: fmt.count(r["n"]), numeric=True),
        _Col("FP32 top-1 (%)", lambda r: _pct(r["fp32_accuracy"]), numeric=True),
        _Col("quantized top-1 (%)", lambda r: _pct(r["int8_accuracy"]), numeric=True),
        _Col("drop, 95% CI", lambda r: _interval_cell(r["drop"], "points")),
        _Col("flag", lambda r: r["direction"] if r.get("flagged") else ""),
    )
    return _records(
        "Per-class accuracy",
        cols,
        rows,
        ["A class is flagged only when its drop's interval excludes zero (Newcombe's interval)."],
    )


def flipped_table(rows: Sequence[Mapping], limit: int = 500) -> Table:
    """Images whose top-1 changed (report.json ``flipped``), the first ``limit`` of them."""
    cols = (
        _Col("image", _key("path")),
        _Col("true", _key("true")),
        _Col("FP32", _key("fp32")),
        _Col("quantized", _key("int8")),
    )
    return _records(
        f"Images whose prediction changed ({len(rows)})",
        cols,
        rows[:limit],
        [_shown("images", limit, len(rows))],
    )


def skipped_table(rows: Iterable[Mapping | Sequence], limit: int = 50) -> Table:
    """Files that were not readable images: report.json ``skipped`` rows or (path, reason)."""
    pairs = [(r["path"], r["reason"]) if isinstance(r, Mapping) else tuple(r) for r in rows]
    return _table(
        f"{len(pairs)} file{'' if len(pairs) == 1 else 's'} skipped (not readable images)",
        ["file", "reason"],
        pairs[:limit],
        [_shown("files", limit, len(pairs))],
    )


def onnx_table(onnx: Mapping) -> Table:
    """ONNX Runtime FP32 and INT8 next to torch (report.json ``onnx``)."""
    models = [
        {**onnx[key], "model": f"ONNX {key}"}
        for key in ("fp32", "int8")
        if isinstance(onnx.get(key), Mapping)
    ]
    cols = (
        _Col("model", _key("model")),
        _Col("top-1 (%)", lambda r: _pct(r.get("accuracy")), numeric=True),
        _Col("agreement with torch (%)", lambda r: _pct(r.get("agreement_with_torch")), True),
        _Col("file size", lambda r: fmt.size(r.get("size_bytes"))),
        _Col("b1 p50 / p95 (ms)", lambda r: fmt.latency_spread(r.get("latency_ms"), 1)),
        _Col("b32 p50 / p95 (ms)", lambda r: fmt.latency_spread(r.get("latency_ms"), 32)),
    )
    runtime = onnx.get("runtime")
    notes = [
        f"{runtime}, {onnx.get('threads')} threads, measured in the same run." if runtime else "",
        onnx.get("note", ""),
    ]
    return _records("ONNX Runtime", cols, models, notes)


# --- analyses ----------------------------------------------------------------------------------


def layer_order(rows: Iterable[Any]) -> list[dict]:
    """Rows sorted in network order (LAYER_NAMES), for tables next to the figures."""
    index = {n: i for i, n in enumerate(LAYER_NAMES)}
    return sorted(plain_rows(rows), key=lambda r: index.get(r.get("name", r.get("layer")), 99))


def _db_cell(key: str) -> Callable[[Mapping], str]:
    return lambda r: fmt.db(r.get(key))


_LAYER_COLUMNS = (
    _Col("layer", _key("name")),
    _Col("quantized", lambda r: "yes" if r.get("quantized", True) else "no (FP32)"),
    _Col("weight SQNR (dB)", _db_cell("weight_sqnr_db"), numeric=True),
    _Col("weight MSE", lambda r: fmt.general(r.get("weight_mse"))),
    _Col("activation SQNR cumulative (dB)", _db_cell("activation_sqnr_db"), numeric=True),
    _Col("activation SQNR isolated (dB)", _db_cell("activation_sqnr_isolated_db"), numeric=True),
    _Col("activation range (FP32)", lambda r: fmt.value_range(r.get("act_min"), r.get("act_max"))),
    _Col(
        "activation scale / zero point",
        lambda r: fmt.qparams(r.get("act_scale"), r.get("act_zero_point")),
    ),
)


def layer_error_table(rows: Iterable[Any]) -> Table:
    """Per-layer error (report.json ``layers``): SQNR of weights and activations, ranges."""
    layers = layer_order(rows)
    n = _first(layers, "n_images")
    notes = [
        "Cumulative: the quantized model fed the image (earlier layers' error included). "
        "Isolated: the layer fed the FP32 input, so only its own error.",
        f"Measured on {n} images." if n else "",
    ]
    return _records("Per-layer error", _LAYER_COLUMNS, layers, notes)


def _variant_columns(first: _Col) -> tuple[_Col, ...]:
    """A recipe variant's columns (sensitivity, mixed precision): what it keeps in FP32, then
    its accuracy with its interval, agreement with FP32 and drop."""
    return (
        first,
        _Col("top-1 (%)", lambda r: _pct(r["accuracy"]), numeric=True),
        _Col("top-1 95% CI (%)", lambda r: _ci(r["accuracy"], r.get("n_images"))),
        _Col("agreement (%)", lambda r: _pct(r["agreement"]), numeric=True),
        _Col("drop (points)", lambda r: fmt.points(r["drop_points"]), numeric=True),
    )


def sensitivity_table(rows: Iterable[Any]) -> Table:
    """One layer kept in FP32 at a time (report.json ``sensitivity``), most helpful first."""
    # Copies: the overlap column is added to the table's rows, never to the report's.
    sens = sorted((dict(r) for r in plain_rows(rows)), key=lambda r: r.get("rank", 0))
    n = _first(sens, "n_images")
    overlaps = _overlaps(sens)
    for i, row in enumerate(sens):
        row["within_interval_of"] = overlaps[i]
    cols = (
        _Col("rank", lambda r: fmt.count(r["rank"]), numeric=True),
        *_variant_columns(_Col("layer kept in FP32", _key("layer"))),
        _Col("gain (points)", lambda r: fmt.points(r["gain_points"], signed=True), numeric=True),
        _Col("not ranked apart from", _key("within_interval_of")),
    )
    return _records(
        "Sensitivity: one layer kept in FP32" + (f" ({n} images)" if n else ""),
        cols,
        sens,
        ["Ranks whose top-1 intervals overlap are within the uncertainty: not ranked apart."],
    )


def mixed_precision_table(mixed: Any) -> Table:
    """The greedy search's steps (report.json ``mixed_precision``) and its verdict."""
    m = plain(mixed)
    verdict = (
        f"Target drop {fmt.points(m['target_drop_points'], unit=True)}: "
        f"{'reached' if m['reached'] else 'not reached'} keeping "
        f"{', '.join(m['keep_fp32']) or 'no layer'} in FP32."
    )
    cols = _variant_columns(_Col("layers in FP32", lambda r: ", ".join(r["keep_fp32"]) or "(none)"))
    return _records("Mixed precision search", cols, m["steps"], [verdict])


_BIT_COLUMNS = (
    _Col("bits", lambda r: fmt.count(r["bits"]), numeric=True),
    _Col("top-1 simulated (%)", lambda r: _pct(r["accuracy"]), numeric=True),
    _Col("top-1 95% CI (%)", lambda r: _ci(r["accuracy"], r.get("n_images"))),
    _Col("agreement (%)", lambda r: _pct(r.get("agreement")), numeric=True),
    _Col("weight SQNR (dB)", _db_cell("weight_sqnr_db"), numeric=True),
    _Col("output SQNR (dB)", _db_cell("activation_sqnr_db"), numeric=True),
)


def bit_sweep_table(rows: Iterable[Any]) -> Table:
    """Simulated bit widths (report.json ``bit_sweep``), widest first."""
    bits = sorted(plain_rows(rows), key=lambda r: -r["bits"])
    n = _first(bits, "n_images")
    note = (
        "Fake quantization in float: what N-bit weights and activations would do, not "
        "measured INT8 kernels."
    )
    return _records(
        "Bit-width sweep (simulated with fake quantization" + (f", {n} images)" if n else ")"),
        _BIT_COLUMNS,
        bits,
        [note],
    )


_SWEEP_COLUMNS = (
    _Col("row", _key("position")),
    _Col("config", _key("label")),
    _Col("top-1 (%)", lambda r: _pct(r.get("accuracy")), numeric=True),
    _Col("top-1 95% CI (%)", lambda r: _ci(r.get("accuracy"), r.get("n_eval"))),
    _Col("not ranked apart from rows", _key("within_interval_of")),
    _Col("agreement (%)", lambda r: _pct(r.get("agreement")), numeric=True),
    _Col("b1 p50 (ms)", lambda r: fmt.ms(r.get("b1_p50")), numeric=True),
    _Col("b32 p50 (ms)", lambda r: fmt.ms(r.get("b32_p50")), numeric=True),
    _Col("size", lambda r: fmt.size(r.get("size_bytes"))),
    _Col("note", _key("error")),
)


def config_sweep_table(rows: Iterable[Any]) -> Table:
    """A configuration sweep (report.json ``sweep``): the FP32 reference first; each config
    names the others whose accuracy intervals overlap its own (not ranked apart)."""
    sweep = [dict(r) for r in plain_rows(rows)]  # copies: the report's rows stay as they are
    overlaps = _overlaps(sweep, n_key="n_eval")
    for i, row in enumerate(sweep):
        row["position"] = str(i + 1)
        row["within_interval_of"] = overlaps[i]
    return _records(
        "Configuration sweep",
        _SWEEP_COLUMNS,
        sweep,
        ["Configs whose top-1 intervals overlap are within the uncertainty: not ranked apart."],
    )


def qat_table(qat: Any) -> Table:
    """QAT after each epoch next to post-training static (report.json ``qat_vs_ptq``)."""
    q = plain(qat)
    rows = [
        ["FP32", "", _pct(q["fp32_accuracy"])],
        ["post-training static", "", _pct(q["ptq"]["accuracy"])],
    ]
    rows += [
        [f"QAT epoch {h['epoch']}", fmt.general(h.get("train_loss"), 4), _pct(h.get("accuracy"))]
        for h in plain_rows(q["qat"]["history"])
    ]
    columns = ["model", "train loss", "top-1 converted INT8 (%)"]
    return _table("QAT vs post-training static", columns, rows, numeric=columns[1:])


_MODEL_CARD_COLUMNS = (
    _Col("layer", _key("name")),
    _Col("type", _key("type")),
    _Col("input shape", lambda r: fmt.shape(r["input_shape"])),
    _Col("output shape", lambda r: fmt.shape(r["output_shape"])),
    _Col("parameters", lambda r: fmt.count(r["params"]), numeric=True),
    _Col("MACs", lambda r: fmt.count(r["macs"]), numeric=True),
    _Col("FP32 bytes", lambda r: fmt.count(r["fp32_bytes"]), numeric=True),
)


def model_card_table(rows: Iterable[Mapping]) -> Table:
    """The FP32 model's layers (``model.layer_table``): shapes, parameters, MACs, bytes."""
    return _records("Model card", _MODEL_CARD_COLUMNS, rows)


def sweep_cards(rows: Iterable[Any], best: int = 3) -> tuple[Card, ...]:
    """The ``best`` measured configurations of a sweep: most accurate first, then fastest."""
    measured = [
        r for r in plain_rows(rows) if not fmt.missing(r.get("accuracy")) and not r.get("reference")
    ]
    measured.sort(
        key=lambda r: (-r["accuracy"], math.inf if fmt.missing(r.get("b1_p50")) else r["b1_p50"])
    )
    return tuple(
        Card(
            r.get("label", ""),
            fmt.percent(r["accuracy"]),
            f"{fmt.ms(r.get('b1_p50'), unit=True)} b1 p50",
        )
        for r in measured[:best]
    )


# --- shipping: runtime parity and where the time goes --------------------------------------------


def parity_table(parity: Mapping) -> Table:
    """Each shipped file against the validated model it must reproduce (report.json ``parity``)."""
    produced = {r["name"]: r for r in parity.get("runtimes", [])}
    cols = (
        _Col("shipped file", lambda r: produced.get(r["runtime"], {}).get("title", r["runtime"])),
        _Col(
            "checked against",
            lambda r: produced.get(r["reference"], {}).get("title", r["reference"]),
        ),
        _Col("agreement", lambda r: fmt.interval(r["agreement"])),
        _Col("images that differ", lambda r: f"{r['disagreeing']} of {r['n']}", numeric=False),
        _Col("max |Δlogit|", lambda r: fmt.number(r.get("max_abs_logit"), 4)),
        _Col("max Δ in output steps", lambda r: fmt.number(r.get("max_steps"), 1)),
    )
    missing = [
        f"{r['title']}: not produced ({r['reason']})"
        for r in parity.get("runtimes", [])
        if not r.get("produced")
    ]
    notes = [
        f"{parity.get('n_images')} images ({parity.get('subset')}), {parity.get('threads')} threads.",
        *missing,
        *parity.get("notes", []),
    ]
    return _records("Runtime parity: shipped files vs the validated models", cols,
                    parity.get("shipped", []), notes)  # fmt: skip


def breakdown_table(breakdown: Mapping) -> Table:
    """Per-layer time of the FP32 and the quantized model (torch.profiler, batch 1)."""
    cols = (
        _Col("part", _key("row")),
        _Col("FP32 (ms)", lambda r: fmt.number(r.get("fp32_ms"), 3), numeric=True),
        _Col("FP32 share (%)", lambda r: _pct(r.get("fp32_share")), numeric=True),
        _Col("quantized (ms)", lambda r: fmt.number(r.get("int8_ms"), 3), numeric=True),
        _Col("quantized share (%)", lambda r: _pct(r.get("int8_share")), numeric=True),
        _Col("quantized / FP32", lambda r: fmt.number(r.get("int8_over_fp32"), 2), numeric=True),
    )
    notes = [
        f"Rows add up to {fmt.percent(breakdown['fp32'].get('coverage'), 0)} (FP32) and "
        f"{fmt.percent(breakdown['int8'].get('coverage'), 0)} (quantized) of the end-to-end "
        "time measured the same way"
        + (
            "."
            if breakdown.get("adds_up")
            else ": outside the 15% tolerance, re-run on a quiet machine."
        ),
        *breakdown.get("notes", []),
    ]
    return _records("Where the time goes, layer by layer", cols, breakdown.get("table", []), notes)


def threads_batch_table(table: Mapping) -> Table:
    """FP32 and quantized latency over thread counts x batch sizes, each cell judged."""
    cols = (
        _Col("threads", lambda r: str(r["threads"]), numeric=True),
        _Col("batch", lambda r: str(r["batch"]), numeric=True),
        _Col(
            "FP32 p50 / p95 (ms)",
            lambda r: f"{fmt.ms(r['fp32']['p50_ms'])} / {fmt.ms(r['fp32']['p95_ms'])}",
        ),
        _Col(
            "quantized p50 / p95 (ms)",
            lambda r: f"{fmt.ms(r['int8']['p50_ms'])} / {fmt.ms(r['int8']['p95_ms'])}",
        ),
        _Col("speed-up", lambda r: fmt.ratio(r.get("speedup"))),
        _Col("calls", lambda r: str(r.get("runs")), numeric=True),
        _Col("reliable", lambda r: "yes" if r.get("reliable") else "NO: busy machine"),
    )
    return _records("Threads x batch", cols, table.get("cells", []), table.get("notes", []))


# --- trust: calibration luck, robustness, margins -------------------------------------------------


def _spread_text(spread: Mapping, digits: int = 2, scale: float = 1.0) -> str:
    return (
        f"{fmt.number(spread['mean'] * scale, digits)} "
        f"({fmt.number(spread['min'] * scale, digits)} to {fmt.number(spread['max'] * scale, digits)})"
    )


def seed_spread_table(study: Mapping) -> Table:
    """The recipe re-run with k calibration draws (report.json ``seed_spread``)."""
    cols = (
        _Col("draw", lambda r: "the run's own" if r.get("seed") is None else f"seed {r['seed']}"),
        _Col("quantized top-1 (%)", lambda r: _pct(r.get("int8_accuracy")), numeric=True),
        _Col("drop (points)", lambda r: fmt.number(r.get("drop_points")), numeric=True),
        _Col("drop interval over images", lambda r: fmt.interval(r["drop"], kind="points")),
        _Col("same top-1 (%)", lambda r: _pct(r.get("agreement")), numeric=True),
    )
    notes = [
        study.get("summary", ""),
        study["split"].get("description", ""),
        *study.get("notes", []),
    ]
    return _records("Calibration luck: the same recipe, other calibration draws", cols,
                    study.get("draws", []), notes)  # fmt: skip


def calibration_study_table(study: Mapping) -> Table:
    """Drop and quantized accuracy per calibration-set size, mean and range over the seeds."""
    cols = (
        _Col("calibration images", lambda r: str(r["size"]), numeric=True),
        _Col("drop, mean (min to max), points", lambda r: _spread_text(r["drop"])),
        _Col(
            "quantized top-1, mean (min to max), %",
            lambda r: _spread_text(r["int8_accuracy"], 2, 100),
        ),
        _Col("same top-1, mean (min to max), %", lambda r: _spread_text(r["agreement"], 2, 100)),
    )
    notes = [
        study.get("reading", ""),
        study["split"].get("description", ""),
        *study.get("notes", []),
    ]
    return _records("How many calibration images are enough", cols, study.get("points", []), notes)


def robustness_table(split: Mapping) -> Table:
    """FP32 and INT8 on corrupted copies of the evaluation images, the gap with its interval."""
    cols = (
        _Col("condition", _key("label")),
        _Col("FP32 top-1 (%)", lambda r: _pct(r["fp32_accuracy"]["estimate"]), numeric=True),
        _Col("quantized top-1 (%)", lambda r: _pct(r["int8_accuracy"]["estimate"]), numeric=True),
        _Col("INT8 gap", lambda r: fmt.interval(r["gap"], kind="points")),
        _Col(
            "gap change vs clean (points)", lambda r: fmt.number(r.get("gap_change"), signed=True)
        ),
        _Col("PSNR (dB)", lambda r: fmt.db(r.get("psnr_db"))),
    )
    notes = [f"{split.get('subset', '')}; corruptions seeded with {split.get('seed')}.",
             *split.get("notes", [])]  # fmt: skip
    return _records(
        "Robustness: where the model will really run", cols, split.get("rows", []), notes
    )


def margins_table(margins: Mapping) -> Table:
    """Flips per FP32 top-1/top-2 margin bin (report.json ``margins``)."""
    cols = (
        _Col("FP32 margin", lambda r: f"{fmt.number(r['low'])} to {fmt.number(r['high'])}"),
        _Col("images", lambda r: str(r["images"]), numeric=True),
        _Col("flips", lambda r: str(r["flips"]), numeric=True),
        _Col("flips that broke a right answer", lambda r: str(r["flips_breaking"]), numeric=True),
        _Col("flip rate (%)", lambda r: _pct(r.get("flip_rate")), numeric=True),
    )
    return _records("Flips against the FP32 model's confidence margin", cols,
                    margins.get("bins", []), [margins.get("headline", "")])  # fmt: skip
