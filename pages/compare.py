"""Compare page: runs side by side, the accuracy/latency trade-off, what changed per class."""

from __future__ import annotations

import json

import streamlit as st

from aslquant.present import figures, tables
from aslquant.present import format as fmt
from aslquant.present.markup import md_text
from aslquant.recipe import ACT_OBSERVERS, BACKENDS, WEIGHT_OBSERVERS
from aslquant.report import run_summary
from aslquant.ui import cache, session, widgets

st.title("Compare")
st.caption(
    "Every run of this session side by side, and where the quantized model answers differently."
)


def _figure_point(label: str, model: dict, **extra) -> dict:
    """One model of a run summary as the figures take it (latency {} while pending)."""
    return {
        "label": label,
        "size_bytes": model["size_bytes"],
        "accuracy": model["accuracy"],
        "latency_ms": model["latency_ms"] or {},
        "b1_p50": (model["latency_ms"] or {}).get("b1_p50"),
        **extra,
    }


with widgets.guard("the Compare page"):
    entry = widgets.require_run()
    if entry is not None:
        entries = session.runs()
        summaries = [{**run_summary(e.result), "run": e.number} for e in entries]
        first = entries[0].result
        fp32 = summaries[0]["fp32"]
        rows = [
            _figure_point(
                f"#{e.number} {e.result.config.recipe.method}/{e.result.config.recipe.backend}",
                s["int8"],
            )
            for e, s in zip(entries, summaries, strict=True)
        ]

        st.subheader("Runs")
        st.dataframe(tables.runs_table(summaries).to_frame(), hide_index=True, width="stretch")
        # The FP32 model as the first bar group: the baseline every run is measured against.
        baseline = _figure_point("FP32", fp32)
        widgets.plot(figures.runs_bars([baseline, *rows]), key="runs_bars")
        st.caption(
            "Latency is measured per run in this process (p50 and p95 over "
            f"{first.config.latency_runs} timed calls, {first.threads} threads); other work on "
            "the machine at the time shows up as a wider p95."
        )

        st.subheader("Accuracy vs latency")
        points = [_figure_point("FP32 (reference)", fp32, reference=True)] + [
            _figure_point(s["recipe"], s["int8"]) for s in summaries
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
                st.session_state[sweep_key] = widgets.wait_for(
                    cache.config_sweep(entry.result, grid), "Sweep"
                )
            sweep = st.session_state.get(sweep_key)
            if sweep:
                st.dataframe(
                    tables.config_sweep_table(sweep).to_frame(), hide_index=True, width="stretch"
                )
        sweep = st.session_state.get(sweep_key) or []
        points += [
            {**r, "label": f"sweep: {r['label']}"}
            for r in sweep
            if not r.get("reference") and not r.get("error")
        ]
        widgets.plot(figures.pareto_figure(points), key="pareto")
        st.caption("Up and to the left is better; marker area grows with the model's size.")

        st.subheader("Confusion matrices")
        entry = widgets.run_picker(st, "Run", key="compare_run")
        r = entry.result
        c1, c2 = st.columns(2)
        with c1:
            widgets.plot(
                figures.confusion_figure(r.confusion_fp32, r.class_names, "FP32"), key="cm_fp32"
            )
        with c2:
            widgets.plot(
                figures.confusion_figure(r.confusion_int8, r.class_names, "Quantized"),
                key="cm_int8",
            )
        widgets.plot(
            figures.confusion_diff_figure(r.confusion_fp32, r.confusion_int8, r.class_names),
            key="cm_diff",
        )
        per_class = tables.per_class_table([row.to_dict() for row in r.per_class_drops()])
        with st.expander(per_class.title):
            st.dataframe(per_class.to_frame(), hide_index=True, width="stretch")

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
                    col.image(cache.thumbnail(row["file"], 160), width="stretch")
                    col.markdown(
                        f"**true {md_text(row['true'])}**  \n"
                        + "FP32: "
                        + ", ".join(
                            f"{md_text(n)} {fmt.percent(p, 0)}" for n, p in row["fp32_top3"]
                        )
                        + "  \nINT8: "
                        + ", ".join(
                            f"{md_text(n)} {fmt.percent(p, 0)}" for n, p in row["int8_top3"]
                        )
                    )
        if len(flipped) > limit:
            st.caption(f"First {limit} shown; report.json lists all {len(flipped)}.")

        st.subheader("Where the time goes")
        st.caption(
            "Why is INT8 faster (or slower) here? torch.profiler splits one forward pass of each "
            "model into its layers, pools and the quantize/dequantize conversions; the CPU's "
            "instruction sets say what the INT8 kernels can use."
        )
        with widgets.guard("the time breakdown"):
            from aslquant.machine import backend_notes, cpu_features, reduce_range_advice

            features = cpu_features()
            with st.expander(
                "This CPU: " + (", ".join(features.present()) or "instruction sets unknown")
            ):
                for note in backend_notes(features):
                    st.markdown(f"**{md_text(note.backend)}**: {md_text(note.text)}")
                st.markdown(f"**reduce_range**: {md_text(reduce_range_advice(features))}")
            timing = widgets.on_request(
                f"breakdown_{entry.key}",
                "Profiles both models of the selected run at batch 1 (about half a minute).",
                "Profile both models",
                "breakdown_go",
                "Profiling",
                lambda: cache.time_breakdown(entry.result),
            )
            if timing:
                widgets.plot(figures.breakdown_figure(timing["breakdown"]), key="breakdown")
                table = tables.breakdown_table(timing["breakdown"])
                st.dataframe(table.to_frame(), hide_index=True, width="stretch")
                for note in table.notes:
                    st.caption(note)
                for line in timing["explanation"]:
                    st.markdown(f"- {md_text(line)}")
            grid = widgets.on_request(
                f"threads_batch_{entry.key}",
                "Times both models at 1 and all threads x batch 1, 8 and 32, each cell judged "
                "for reliability (one to two minutes).",
                "Time threads x batch",
                "threads_batch_go",
                "Threads x batch",
                lambda: cache.threads_batch(entry.result),
            )
            if grid:
                table = tables.threads_batch_table(grid)
                st.dataframe(table.to_frame(), hide_index=True, width="stretch")
                for note in table.notes:
                    st.caption(note)
