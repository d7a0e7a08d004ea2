"""Plotly figures of the doctor's evidence (pure functions of report.json's ``doctor`` data)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go

from aslquant.present.figures import COLORS, _layout


def point_effects_figure(points: Sequence[Mapping]) -> go.Figure:
    """Per quantization point: the drop with only that point quantized, and what keeping it in
    FP32 wins back (real INT8 models, first calibration seed, selection images)."""
    names = [p["point"] for p in points]
    fig = go.Figure()
    fig.add_bar(
        x=names,
        y=[p["drop_only_this_quantized"] for p in points],
        name="drop with only this quantized",
        marker_color=COLORS["int8"],
        hovertemplate="%{x}: %{y:.2f} points<extra>only this quantized</extra>",
    )
    fig.add_bar(
        x=names,
        y=[p["recovered_if_float"] for p in points],
        name="won back by keeping it in FP32",
        marker_color=COLORS["good"],
        hovertemplate="%{x}: %{y:.2f} points<extra>kept in FP32</extra>",
    )
    return _layout(
        fig,
        "Where the accuracy goes: one quantization point at a time",
        "quantization point",
        "top-1 points",
        barmode="group",
    )


def remedies_figure(finding: Mapping) -> go.Figure:
    """One finding's remedies: the mean drop over calibration seeds, with the min..max spread
    as error bars, against the drop before (dashed line)."""
    remedies = finding["remedies"]
    names = [r["remedy"]["name"] for r in remedies]
    spreads = [r["trial"]["seed_spread"] for r in remedies]
    means = [s["mean"] for s in spreads]
    fig = go.Figure(
        go.Bar(
            x=names,
            y=means,
            marker_color=COLORS["isolated"],
            error_y={
                "type": "data",
                "symmetric": False,
                "array": [s["max"] - s["mean"] for s in spreads],
                "arrayminus": [s["mean"] - s["min"] for s in spreads],
            },
            hovertemplate="%{x}: drop %{y:.2f} points<extra>mean of the seeds</extra>",
        )
    )
    if remedies:
        before = means[0] + remedies[0]["recovery_points"]
        fig.add_hline(
            y=before,
            line_dash="dash",
            line_color=COLORS["bad"],
            annotation_text=f"before: {before:.2f}",
        )
    return _layout(
        fig,
        "Drop with each remedy (bars: mean over calibration seeds, whiskers: min..max)",
        "remedy",
        "top-1 drop (points)",
    )


def prescription_figure(prescription: Mapping) -> go.Figure:
    """Held-out before/after of the prescribed recipe, each seed a point, target dashed."""
    fig = go.Figure()
    for key, label, color in (
        ("before", "before", COLORS["bad"]),
        ("after", "after", COLORS["good"]),
    ):
        drops = prescription[key]["drops"]
        fig.add_box(
            y=drops,
            name=label,
            boxpoints="all",
            marker_color=color,
            hovertemplate="%{y:.2f} points<extra>" + label + "</extra>",
        )
    fig.add_hline(
        y=prescription["target_drop"],
        line_dash="dash",
        annotation_text=f"target {prescription['target_drop']:.2f}",
    )
    return _layout(
        fig,
        "Held-out images: drop before and after, one point per calibration seed",
        "",
        "top-1 drop (points)",
    )
