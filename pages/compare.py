"""Compare page: runs side by side, the accuracy/latency trade-off, what changed per class."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from aslquant.present import figures
from aslquant.recipe import ACT_OBSERVERS, BACKENDS, WEIGHT_OBSERVERS
from aslquant.ui import state

st.title("Compare")
st.caption(
    "Every run of this session side by side, and where the quantized model answers differently."
)


def _run_rows(entries: list[state.RunEntry]) -> list[dict]:
    rows = []
    for e in entries:
        r = e.result
        rows.append(
            {
                "label": f"#{e.number} {r.config.recipe.method}/{r.config.recipe.backend}",
                "recipe": r.config.recipe.describe(),
                "size_bytes": r.int8.size_bytes,
                "accuracy": r.int8.accuracy,
                "latency_ms": dict(r.int8.latency_ms),
                "agreement": r.agreement,
                "fp32_accuracy": r.fp32.accuracy,
                "fp32_size_bytes": r.fp32.size_bytes,
                "fp32_latency_ms": dict(r.fp32.latency_ms),
            }
        )
    return rows


with state.guard("the Compare page"):
    entry = state.require_run()
    if entry is not None:
        entries = state.runs()
        rows = _run_rows(entries)
        first = entries[0].result

        st.subheader("Runs")
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "run": row["label"],
                        "recipe": row["recipe"],
                        "top-1 %": 100 * row["accuracy"],
                        "drop (points)": 100 * (row["fp32_accuracy"] - row["accuracy"]),
                        "agreement %": 100 * row["agreement"],
                        "size (MB)": row["size_bytes"] / 1e6,
                        "b1 p50 ms": row["latency_ms"]["b1_p50"],
                        "b1 p95 ms": row["latency_ms"]["b1_p95"],
                        "b32 p50 ms": row["latency_ms"]["b32_p50"],
                        "b32 p95 ms": row["latency_ms"]["b32_p95"],
                    }
                    for row in rows
                ]
            ).round(3),
            hide_index=True,
            width="stretch",
        )
        # The FP32 model as the first bar group: the baseline every run is measured against.
        baseline = {
            "label": "FP32",
            "size_bytes": first.fp32.size_bytes,
            "accuracy": first.fp32.accuracy,
            "latency_ms": dict(first.fp32.latency_ms),
        }
        state.plot(figures.runs_bars([baseline, *rows]), key="runs_bars")
        st.caption(
            "Latency is measured per run in this process (p50 and p95 over "
            f"{first.config.latency_runs} timed calls, {first.threads} threads); other work on "
            "the machine at the time shows up as a wider p95."
        )

        st.subheader("Accuracy vs latency")
        points = [
            {
                "label": "FP32 (reference)",
                "accuracy": first.fp32.accuracy,
                "b1_p50": first.fp32.latency_ms["b1_p50"],
                "size_bytes": first.fp32.size_bytes,
                "reference": True,
            }
        ] + [
            {
                "label": row["recipe"],
                "accuracy": row["accuracy"],
                "b1_p50": row["latency_ms"]["b1_p50"],
                "size_bytes": row["size_bytes"],
            }
            for row in rows
        ]
        with st.expander("Add a configuration sweep to the plot"):
            st.caption(
                "Quantizes, evaluates and times every combination below on the current run's "
                "model and images (each takes about as long as one run)."
            )
            g1, g2, g3 = st.columns(3)
            grid = {
                "backend": g1.multiselect("Backends", list(BACKENDS), ["x86"], key="sw_backend"),
                "act_observer": g2.multiselect(
                    "Activation observers",
                    list(ACT_OBSERVERS),
                    ["minmax", "histogram"],
                    key="sw_act",
                ),  # fmt: skip
                "weight_observer": g3.multiselect(
                    "Weight observers",
                    list(WEIGHT_OBSERVERS),
                    list(WEIGHT_OBSERVERS),
                    key="sw_weight",
                ),  # fmt: skip
            }
            grid_json = json.dumps(grid, sort_keys=True)
            sweep_key = f"sweep_{entry.key}_{grid_json}"
            n = len(grid["backend"]) * len(grid["act_observer"]) * len(grid["weight_observer"])
            if n and st.button(f"Run the sweep ({n} configurations)", key="sweep_go"):
                bar = state.ProgressBar(st, "Sweep")
                st.session_state[sweep_key] = [
                    r.to_dict()
                    for r in state.config_sweep(entry.key, grid_json, entry.result.config, bar)
                ]
                bar.empty()
            sweep = st.session_state.get(sweep_key)
            if sweep:
                failed = [r for r in sweep if r.get("error")]
                for r in failed:
                    st.caption(f"Skipped {r['label']}: {r['error']}")
        sweep = st.session_state.get(sweep_key) or []
        points += [
            {**r, "label": f"sweep: {r['label']}"}
            for r in sweep
            if not r.get("reference") and not r.get("error")
        ]
        state.plot(figures.pareto_figure(points), key="pareto")
        st.caption("Up and to the left is better; marker area grows with the model's size.")

        st.subheader("Confusion matrices")
        entry = state.run_picker(st, "Run", key="compare_run")
        r = entry.result
        c1, c2 = st.columns(2)
        with c1:
            state.plot(
                figures.confusion_figure(r.confusion_fp32, r.class_names, "FP32"), key="cm_fp32"
            )
        with c2:
            state.plot(
                figures.confusion_figure(r.confusion_int8, r.class_names, "Quantized"),
                key="cm_int8",
            )
        state.plot(
            figures.confusion_diff_figure(r.confusion_fp32, r.confusion_int8, r.class_names),
            key="cm_diff",
        )

        flipped = r.flipped()
        st.subheader(f"Images whose prediction flipped ({len(flipped)} of {r.n_eval})")
        if not flipped:
            st.success("Both models give the same top-1 answer on every evaluation image.")
        limit = 24
        per_row = 6
        for start in range(0, min(len(flipped), limit), per_row):
            cols = st.columns(per_row)
            for col, row in zip(cols, flipped[start : start + per_row], strict=False):
                with col:
                    col.image(state.thumbnail(row["file"], 160), width="stretch")
                    col.markdown(
                        f"**true {row['true']}**  \n"
                        + "FP32: "
                        + ", ".join(f"{n} {100 * p:.0f}%" for n, p in row["fp32_top3"])
                        + "  \nINT8: "
                        + ", ".join(f"{n} {100 * p:.0f}%" for n, p in row["int8_top3"])
                    )
        if len(flipped) > limit:
            st.caption(f"First {limit} shown; report.json lists all {len(flipped)}.")
