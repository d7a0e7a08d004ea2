"""Plotly figure builders: pure functions of plain data (lists of dicts, arrays).

No Streamlit here: the pages, the HTML report and the tests call the same builders. Rows are
report.json-shaped dicts (typed rows with ``to_dict()`` are accepted); numbers printed on a
figure come from ``present.format``, like everywhere else. Every axis
has a title with its unit; colours come from Plotly's default template so the figures read
in light and dark themes alike (no hard-coded backgrounds).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from aslquant.present import format as fmt
from aslquant.present.tables import plain, plain_rows

#: Qualitative colours that keep contrast on white and on dark backgrounds.
COLORS = {
    "fp32": "#1f77b4",
    "int8": "#ff7f0e",
    "weights": "#1f77b4",
    "cumulative": "#ff7f0e",
    "isolated": "#2ca02c",
    "clip": "rgba(214, 39, 40, 0.15)",
    "grid": "rgba(127, 127, 127, 0.45)",
    "good": "#2ca02c",
    "bad": "#d62728",
}


def _layout(fig: go.Figure, title: str, x: str, y: str, **extra) -> go.Figure:
    fig.update_layout(
        title=title,
        xaxis_title=x,
        yaxis_title=y,
        margin={"l": 60, "r": 20, "t": 60, "b": 50},
        legend={"orientation": "h", "y": -0.2},
        **extra,
    )
    return fig


def _num(value) -> float | None:
    """A plottable number, or None (a gap) for a missing one."""
    return None if fmt.missing(value) else float(value)


def sqnr_bars(layers: list[dict]) -> go.Figure:
    """Per-layer SQNR (dB): weights, activations cumulative and activations isolated."""
    layers = plain_rows(layers)
    names = [row["name"] for row in layers]
    fig = go.Figure()
    for key, label, color in (
        ("weight_sqnr_db", "weights", COLORS["weights"]),
        ("activation_sqnr_db", "activations (cumulative)", COLORS["cumulative"]),
        ("activation_sqnr_isolated_db", "activations (isolated)", COLORS["isolated"]),
    ):
        values = [_num(row.get(key)) for row in layers]
        fig.add_bar(
            x=names,
            y=values,
            name=label,
            marker_color=color,
            text=[fmt.db(v) for v in values],
            textposition="outside",
            hovertemplate="%{x}: %{y:.2f} dB<extra>" + label + "</extra>",
        )
    return _layout(
        fig,
        "Signal-to-quantization-noise ratio per layer (higher is better)",
        "layer",
        "SQNR (dB)",
        barmode="group",
    )


def histogram_figure(hist: dict, title: str = "") -> go.Figure:
    """Histogram of values with the representable INT8 grid and the clipping range shaded."""
    hist = plain(hist)
    edges = np.asarray(hist["edges"], dtype=float)
    counts = np.asarray(hist["counts"], dtype=float)
    centers = (edges[:-1] + edges[1:]) / 2
    fig = go.Figure()
    fig.add_bar(
        x=centers,
        y=counts,
        width=np.diff(edges),
        name="values",
        marker_color=COLORS["fp32"],
        hovertemplate="%{x:.4g}: %{y} values<extra></extra>",
    )
    lo, hi = _num(hist.get("clip_min")), _num(hist.get("clip_max"))
    if lo is not None and hi is not None:
        # Shade what gets clipped: everything outside the representable range.
        if edges[0] < lo:
            fig.add_vrect(x0=edges[0], x1=lo, fillcolor=COLORS["clip"], line_width=0)
        if edges[-1] > hi:
            fig.add_vrect(x0=hi, x1=edges[-1], fillcolor=COLORS["clip"], line_width=0)
        for x in (lo, hi):
            fig.add_vline(x=x, line_dash="dash", line_color=COLORS["bad"])
        fig.add_scatter(
            x=[lo, hi],
            y=[0, 0],
            mode="markers",
            marker={"color": COLORS["bad"], "symbol": "line-ns-open", "size": 14},
            name=f"clipping range [{fmt.general(lo, 4)}, {fmt.general(hi, 4)}]",
        )
    grid = list(hist.get("grid") or [])
    if grid:
        # Grid levels as a rug under the bars: at 8 bits there can be 256 of them.
        top = float(counts.max()) if len(counts) else 1.0
        xs: list = []
        ys: list = []
        for g in grid:
            xs += [g, g, None]
            ys += [0, -0.04 * top, None]
        scale = _num(hist.get("scale"))
        fig.add_scatter(
            x=xs,
            y=ys,
            mode="lines",
            line={"color": COLORS["grid"], "width": 1},
            name=f"representable values ({len(grid)}, step {fmt.general(scale)})"
            if scale
            else "representable values",
            hoverinfo="skip",
        )
    kind = hist.get("kind", "values")
    return _layout(
        fig,
        title or f"{hist.get('layer', '')} {kind}",
        "value (float units of the layer's " + ("weights)" if kind == "weights" else "output)"),
        "count (values per bin)",
        bargap=0,
    )


def playground_figure(values, fq: dict, observer: dict | None = None) -> go.Figure:
    """Original vs fake-quantized values, with the clipping range and an observer's range.

    ``fq`` is ``analysis.fake_quantize(values, ...)``; ``observer`` optionally
    ``{"min": float, "max": float, "name": str}`` (e.g. what a MinMax observer would pick).
    """
    values = np.asarray(values, dtype=float).ravel()
    deq = np.asarray(fq["dequantized"], dtype=float).ravel()
    order = np.argsort(values)
    fig = go.Figure()
    fig.add_scatter(
        x=values[order],
        y=values[order],
        mode="lines",
        name="original (y = x)",
        line={"color": COLORS["fp32"], "dash": "dot"},
    )
    fig.add_scatter(
        x=values[order],
        y=deq[order],
        mode="lines",
        name=f"after {fq.get('bits', '?')}-bit round trip",
        line={"color": COLORS["int8"], "shape": "hv"},
    )
    lo, hi = fq.get("range", [None, None])
    if lo is not None and hi is not None:
        fig.add_vrect(x0=lo, x1=hi, fillcolor="rgba(44, 160, 44, 0.10)", line_width=0)
    if observer and observer.get("min") is not None and observer.get("max") is not None:
        for x in (observer["min"], observer["max"]):
            fig.add_vline(x=float(x), line_dash="dash", line_color=COLORS["bad"])
        fig.add_annotation(
            x=float(observer["max"]),
            y=1,
            yref="paper",
            text=str(observer.get("name", "observer")),
            showarrow=False,
        )
    title = (
        f"{fq.get('bits', '?')}-bit: scale {fmt.general(fq['scale'], 4)}, zero point "
        f"{fq['zero_point']}, SQNR {fmt.db(fq.get('sqnr_db'), unit=True)}, "
        f"{fmt.percent(fq.get('clipped_fraction', 0), 1)} clipped"
    )
    return _layout(
        fig, title, "original value (float units)", "value after quantization (float units)"
    )


def bit_sweep_figure(rows: list[dict]) -> go.Figure:
    """Simulated accuracy (%) and SQNR (dB) against bit width, INT8 reference as a line."""
    rows = sorted(plain_rows(rows), key=lambda r: -r["bits"])
    bits = [r["bits"] for r in rows]
    fig = go.Figure()
    fig.add_scatter(
        x=bits,
        y=[100 * r["accuracy"] for r in rows],
        mode="lines+markers",
        name="top-1 accuracy, simulated (%)",
        line={"color": COLORS["int8"]},
    )
    fig.add_scatter(
        x=bits,
        y=[_num(r.get("activation_sqnr_db")) for r in rows],
        mode="lines+markers",
        name="output SQNR (dB)",
        yaxis="y2",
        line={"color": COLORS["isolated"], "dash": "dot"},
    )
    fig.add_scatter(
        x=bits,
        y=[_num(r.get("weight_sqnr_db")) for r in rows],
        mode="lines+markers",
        name="weight SQNR (dB)",
        yaxis="y2",
        line={"color": COLORS["weights"], "dash": "dot"},
    )
    if rows and rows[0].get("int8_accuracy") is not None:
        fig.add_hline(
            y=100 * rows[0]["int8_accuracy"],
            line_dash="dash",
            line_color=COLORS["bad"],
            annotation_text="real INT8 model",
        )
    if rows and rows[0].get("fp32_accuracy") is not None:
        fig.add_hline(
            y=100 * rows[0]["fp32_accuracy"],
            line_dash="dot",
            line_color=COLORS["fp32"],
            annotation_text="FP32",
            annotation_position="bottom right",
        )
    return _layout(
        fig,
        "Bit-width sweep (simulated with fake quantization)",
        "bits for weights and activations",
        "top-1 accuracy (%)",
        xaxis={"autorange": "reversed", "dtick": 1, "title": "bits for weights and activations"},
        yaxis2={"title": "SQNR (dB)", "overlaying": "y", "side": "right"},
    )


def pareto_figure(points: list[dict]) -> go.Figure:
    """Accuracy (%) vs batch-1 latency (ms); marker area ~ model size; frontier drawn."""
    points = plain_rows(points)
    ok = [
        p for p in points if not fmt.missing(p.get("accuracy")) and not fmt.missing(p.get("b1_p50"))
    ]
    fig = go.Figure()
    if ok:
        sizes = np.array([float(p.get("size_bytes") or 0) for p in ok])
        marker = 12 + 30 * np.sqrt(sizes / max(1.0, sizes.max()))
        fig.add_scatter(
            x=[p["b1_p50"] for p in ok],
            y=[100 * p["accuracy"] for p in ok],
            mode="markers",
            marker={
                "size": marker,
                "color": [COLORS["fp32"] if p.get("reference") else COLORS["int8"] for p in ok],
                "opacity": 0.8,
            },
            text=[p.get("label", "") for p in ok],
            customdata=[[(p.get("size_bytes") or 0) / 1e6] for p in ok],
            hovertemplate="%{text}<br>%{x:.2f} ms, %{y:.2f}%, %{customdata[0]:.3f} MB"
            "<extra></extra>",
            name="configs (marker area ~ size)",
        )
        frontier = []
        best = -np.inf
        for p in sorted(ok, key=lambda q: (q["b1_p50"], -q["accuracy"])):
            if p["accuracy"] > best:
                frontier.append(p)
                best = p["accuracy"]
        fig.add_scatter(
            x=[p["b1_p50"] for p in frontier],
            y=[100 * p["accuracy"] for p in frontier],
            mode="lines",
            line={"dash": "dot", "color": COLORS["good"]},
            name="Pareto frontier",
        )
    return _layout(
        fig,
        "Accuracy vs latency per configuration",
        "latency, batch 1, p50 (ms)",
        "top-1 accuracy (%)",
    )


def confusion_figure(matrix, class_names: Sequence[str], title: str) -> go.Figure:
    """Confusion matrix as a heatmap: rows true class, columns predicted class (counts)."""
    m = np.asarray(matrix)
    fig = go.Figure(
        go.Heatmap(
            z=m,
            x=list(class_names),
            y=list(class_names),
            colorscale="Blues",
            colorbar={"title": "images"},
            hovertemplate="true %{y}, predicted %{x}: %{z} images<extra></extra>",
        )
    )
    return _layout(
        fig,
        title,
        "predicted class",
        "true class",
        yaxis={"autorange": "reversed", "title": "true class"},
    )


def confusion_diff_figure(m_fp32, m_int8, class_names: Sequence[str]) -> go.Figure:
    """Quantized minus FP32 confusion counts: red where the quantized model adds errors."""
    diff = np.asarray(m_int8, dtype=int) - np.asarray(m_fp32, dtype=int)
    bound = max(1, int(np.abs(diff).max()))
    fig = go.Figure(
        go.Heatmap(
            z=diff,
            x=list(class_names),
            y=list(class_names),
            colorscale="RdBu_r",
            zmin=-bound,
            zmax=bound,
            colorbar={"title": "Δ images"},
            hovertemplate="true %{y}, predicted %{x}: %{z:+d} images<extra></extra>",
        )
    )
    return _layout(
        fig,
        "Quantized minus FP32 (diagonal blue = lost correct answers)",
        "predicted class",
        "true class",
        yaxis={"autorange": "reversed", "title": "true class"},
    )


def runs_bars(runs: list[dict]) -> go.Figure:
    """Compare runs: size (MB), latency p50/p95 at batch 1 and 32 (ms), accuracy (%).

    Each run is ``{"label", "size_bytes", "accuracy", "latency_ms": {"b1_p50", ...}}``.
    """
    from plotly.subplots import make_subplots

    labels = [r.get("label", f"run {i + 1}") for i, r in enumerate(runs)]
    fig = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=("size", "latency", "top-1 accuracy"),
        horizontal_spacing=0.08,
    )
    fig.add_bar(x=labels, y=[r["size_bytes"] / 1e6 for r in runs], name="size (MB)", row=1, col=1)
    for key, name in (
        ("b1_p50", "batch 1 p50"),
        ("b1_p95", "batch 1 p95"),
        ("b32_p50", "batch 32 p50"),
        ("b32_p95", "batch 32 p95"),
    ):
        fig.add_bar(
            x=labels,
            y=[_num(r.get("latency_ms", {}).get(key)) for r in runs],
            name=f"latency {name} (ms)",
            row=1,
            col=2,
        )
    fig.add_bar(x=labels, y=[100 * r["accuracy"] for r in runs], name="accuracy (%)", row=1, col=3)
    fig.update_yaxes(title_text="size (MB)", row=1, col=1)
    fig.update_yaxes(title_text="latency (ms)", type="log", row=1, col=2)
    fig.update_yaxes(title_text="top-1 accuracy (%)", row=1, col=3)
    for col in (1, 2, 3):
        fig.update_xaxes(title_text="run", row=1, col=col)
    fig.update_layout(
        title="Runs compared", barmode="group", legend={"orientation": "h", "y": -0.3}
    )
    return fig


def sensitivity_figure(rows: list[dict]) -> go.Figure:
    """Accuracy points won back by keeping each layer alone in FP32, most sensitive first."""
    rows = sorted(plain_rows(rows), key=lambda r: r.get("rank", 0))
    fig = go.Figure()
    gains = [r["gain_points"] for r in rows]
    fig.add_bar(
        x=[r["layer"] for r in rows],
        y=gains,
        marker_color=[COLORS["good"] if g > 0 else COLORS["grid"] for g in gains],
        text=[fmt.points(g, signed=True) for g in gains],
        textposition="outside",
        customdata=[[100 * r["accuracy"], 100 * r["agreement"]] for r in rows],
        hovertemplate="%{x} in FP32: %{y:+.2f} points<br>accuracy %{customdata[0]:.2f}%, "
        "agreement %{customdata[1]:.2f}%<extra></extra>",
        name="accuracy gained",
    )
    return _layout(
        fig,
        "Sensitivity: accuracy gained when only this layer stays FP32",
        "layer kept in FP32",
        "top-1 gained vs all-quantized (percentage points)",
    )


def breakdown_figure(breakdown: dict) -> go.Figure:
    """Per-part time (ms, batch 1) of the FP32 and the quantized model, side by side."""
    rows = breakdown.get("table", [])
    parts = [r["row"] for r in rows]
    fig = go.Figure()
    for key, label, color in (
        ("fp32_ms", "FP32", COLORS["fp32"]),
        ("int8_ms", "quantized", COLORS["int8"]),
    ):
        fig.add_bar(
            x=parts,
            y=[_num(r.get(key)) for r in rows],
            name=label,
            marker_color=color,
            hovertemplate="%{x}: %{y:.3f} ms<extra>" + label + "</extra>",
        )
    return _layout(
        fig,
        "Where the time goes (torch.profiler, batch 1)",
        "part of the model",
        "time per forward (ms)",
        barmode="group",
    )


def calibration_study_figure(study: dict) -> go.Figure:
    """Drop vs calibration-set size: the mean with the min..max over seeds as error bars."""
    points = study.get("points", [])
    sizes = [p["size"] for p in points]
    drops = [p["drop"] for p in points]
    fig = go.Figure(
        go.Scatter(
            x=sizes,
            y=[d["mean"] for d in drops],
            mode="lines+markers",
            error_y={
                "type": "data",
                "symmetric": False,
                "array": [d["max"] - d["mean"] for d in drops],
                "arrayminus": [d["mean"] - d["min"] for d in drops],
            },
            name="drop (mean, min..max over seeds)",
            hovertemplate="%{x} images: drop %{y:.2f} points<extra></extra>",
        )
    )
    fig.update_xaxes(type="log")
    return _layout(
        fig,
        "How many calibration images are enough",
        "calibration images (log scale)",
        "top-1 drop (points)",
    )


def robustness_figure(split: dict) -> go.Figure:
    """The INT8 gap (points) per corruption and severity, with its 95% interval."""
    rows = split.get("rows", [])
    fig = go.Figure()
    for severity in sorted({r["severity"] for r in rows}):
        chosen = [r for r in rows if r["severity"] == severity]
        gaps = [r["gap"] for r in chosen]
        fig.add_bar(
            x=[r["title"] for r in chosen],
            y=[g["estimate"] for g in gaps],
            name="clean" if severity == 0 else f"severity {severity}",
            error_y={
                "type": "data",
                "symmetric": False,
                "array": [_num(g["high"] - g["estimate"]) for g in gaps],
                "arrayminus": [_num(g["estimate"] - g["low"]) for g in gaps],
            },
            hovertemplate="%{x}: gap %{y:.2f} points<extra>severity " + str(severity) + "</extra>",
        )
    return _layout(
        fig,
        "INT8 gap on corrupted images (bars: gap, whiskers: 95% interval)",
        "corruption",
        "FP32 minus INT8 top-1 (points)",
        barmode="group",
    )


def margins_figure(margins: dict) -> go.Figure:
    """Flip rate per bin of the FP32 model's top-1 minus top-2 probability."""
    bins = margins.get("bins", [])
    fig = go.Figure(
        go.Bar(
            x=[f"{b['low']:.2f}–{b['high']:.2f}" for b in bins],
            y=[0.0 if b["flip_rate"] is None else 100 * b["flip_rate"] for b in bins],
            text=[f"{b['flips']}/{b['images']}" for b in bins],
            textposition="outside",
            marker_color=COLORS["int8"],
            hovertemplate="margin %{x}: %{y:.1f}% flipped<extra></extra>",
        )
    )
    return _layout(
        fig,
        "Where INT8 changes the answer: by how sure FP32 was",
        "FP32 top-1 minus top-2 probability",
        "images flipped (%)",
    )
