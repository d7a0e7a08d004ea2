"""Layers page: where quantization hurts, layer by layer, and a playground to feel why."""

from __future__ import annotations

import numpy as np
import streamlit as st

from aslquant import analysis
from aslquant.model import LAYER_NAMES
from aslquant.present import figures, tables
from aslquant.present import format as fmt
from aslquant.ui import cache, session, widgets

st.title("Layers")
st.caption(
    "SQNR (signal-to-quantization-noise ratio) says how loud the rounding noise is next to the "
    "signal: every +6 dB is one more bit of precision. Low bars mark the layers that hurt."
)


def _rerun_keeping(entry: session.RunEntry, keep: list[str]) -> None:
    """Quantize again with ``keep`` in FP32 and open the summary of the new run."""
    config = entry.result.config.with_recipe(keep_fp32=tuple(keep))
    session.remember_recipe(config.recipe)
    session.forget_widget("q_keep")  # the Quantize page shows the new recipe next time
    widgets.quantize_with_progress(config)
    st.switch_page("pages/quantize.py")


with widgets.guard("the Layers page"):
    entry = widgets.require_run()
    if entry is not None:
        entry = widgets.run_picker(st, "Run", key="layers_run")
        result, key = entry.result, entry.key
        st.caption(f"Recipe: {result.config.recipe.describe()}")

        st.subheader("Per-layer error")
        with st.spinner("Comparing every layer of the two models..."):
            rows = widgets.wait_for(cache.layer_errors(result), "Per-layer error")
        widgets.plot(figures.sqnr_bars(rows), key="sqnr")
        st.caption(
            "Weights: the layer's weights against their INT8 version. Activations (cumulative): "
            "the layer's output when the quantized model sees the image, so earlier layers' "
            "errors add up. Isolated: the same layer fed the FP32 input, so only its own error."
        )
        st.dataframe(tables.layer_error_table(rows).to_frame(), hide_index=True, width="stretch")

        st.subheader("Histogram explorer")
        c1, c2 = st.columns([1, 1])
        layer = c1.selectbox("Layer", list(LAYER_NAMES), key="hist_layer")
        kind = c2.radio("Values", ["weights", "activations"], horizontal=True, key="hist_kind")
        hist = widgets.wait_for(cache.layer_histogram(result, layer, kind), "Histogram")
        widgets.plot(figures.histogram_figure(hist), key="hist")
        st.caption(
            "Grey ticks under the bars are the values INT8 can represent; anything in the red "
            "shaded area is clipped to the edge of the range."
            + (f" {hist['note']}." if hist.get("note") else "")
        )

        st.subheader("Sensitivity: which layers to keep in FP32")
        sens = widgets.on_request(
            f"sens_{key}",
            "Re-quantizes the model once per layer with only that layer left in FP32 and "
            "measures how much accuracy each one wins back (about a minute).",
            "Measure sensitivity",
            "sens_go",
            "Sensitivity",
            lambda: cache.sensitivity(result),
        )
        if sens:
            widgets.plot(figures.sensitivity_figure(sens), key="sens")
            st.dataframe(
                tables.sensitivity_table(sens).to_frame(), hide_index=True, width="stretch"
            )
            suggested = [r["layer"] for r in sens if r["gain_points"] > 0][:1]
            keep = st.multiselect(
                "Layers to keep in FP32",
                list(LAYER_NAMES),
                default=sorted(
                    set(result.config.recipe.keep_fp32) | set(suggested), key=LAYER_NAMES.index
                ),
                key=f"sens_keep_{key}",
            )
            if st.button("Keep these layers in FP32 and re-run", type="primary", key="sens_rerun"):
                _rerun_keeping(entry, keep)
            with st.expander("Find the fewest FP32 layers for a target drop (greedy)"):
                target = st.number_input("Largest acceptable drop (points)", 0.0, 50.0, 1.0, 0.5)
                if st.button("Search", key="greedy_go"):
                    found = widgets.wait_for(
                        cache.greedy(result, float(target)), "Mixed precision search"
                    )
                    greedy = tables.mixed_precision_table(found)
                    st.dataframe(greedy.to_frame(), hide_index=True)
                    for note in greedy.notes:
                        st.write(note)

        st.subheader("Bit-width sweep")
        bit_rows = widgets.on_request(
            f"bits_{key}",
            "Simulates 8, 6, 5, 4, 3 and 2 bits with fake quantization (float math) to show "
            "how quickly accuracy falls as the grid gets coarser.",
            "Run the bit-width sweep",
            "bits_go",
            "Bit-width sweep",
            lambda: cache.bit_sweep(result),
        )
        if bit_rows:
            widgets.plot(figures.bit_sweep_figure(bit_rows), key="bits")
            bit_table = tables.bit_sweep_table(bit_rows)
            st.dataframe(bit_table.to_frame(), hide_index=True, width="stretch")
            st.caption(" ".join(bit_table.notes))

        st.subheader("Quantization playground")
        st.caption(
            "Take a layer's real values, choose the bits, the clipping range and the zero point, "
            "and watch the rounding and clipping error. Red dashed lines: the observer's choice."
        )

        @st.fragment
        def playground() -> None:
            with widgets.guard("the playground"):
                p1, p2 = st.columns(2)
                p_layer = p1.selectbox("Layer", list(LAYER_NAMES), key="pg_layer")
                p_kind = p2.radio(
                    "Values", ["weights", "activations"], horizontal=True, key="pg_kind"
                )
                h = widgets.wait_for(cache.layer_histogram(result, p_layer, p_kind), "Histogram")
                values = np.asarray(h["values_sample"], dtype=float)
                lo, hi = float(values.min()), float(values.max())
                obs_lo = h.get("clip_min") if h.get("clip_min") is not None else lo
                obs_hi = h.get("clip_max") if h.get("clip_max") is not None else hi
                span_lo, span_hi = min(lo, obs_lo, 0.0), max(hi, obs_hi, 0.0)
                if span_hi <= span_lo:
                    span_hi = span_lo + 1.0
                s1, s2, s3 = st.columns(3)
                low = int(analysis.BITS.low)
                bits = s1.slider("Bits", low, 8, 8, key=f"pg_bits_{p_layer}_{p_kind}")
                clip = s2.slider(
                    "Clipping range",
                    span_lo,
                    span_hi,
                    (float(max(span_lo, obs_lo)), float(min(span_hi, obs_hi))),
                    step=(span_hi - span_lo) / 200,
                    format="%.4f",
                    key=f"pg_clip_{p_layer}_{p_kind}",
                )
                auto_zp = s3.checkbox(
                    "Zero point from the range", True, key=f"pg_auto_{p_layer}_{p_kind}"
                )
                zp = None
                if not auto_zp:
                    zp = s3.slider(
                        "Zero point", 0, 2**bits - 1, 2 ** (bits - 1),
                        key=f"pg_zp_{p_layer}_{p_kind}_{bits}",
                    )  # fmt: skip
                if clip[1] <= clip[0]:
                    st.error("The clipping range is empty: move the handles apart.")
                    return
                fq = analysis.fake_quantize(values, bits, clip[0], clip[1], zp).to_dict()
                m = st.columns(5)
                m[0].metric("SQNR", fmt.db(fq["sqnr_db"], unit=True))
                m[1].metric("Step (scale)", fmt.general(fq["scale"], 4))
                m[2].metric("Rounding MSE", fmt.general(fq["rounding_mse"]))
                m[3].metric("Clipping MSE", fmt.general(fq["clipping_mse"]))
                m[4].metric("Values clipped", fmt.percent(fq["clipped_fraction"]))
                observer = None
                if h.get("clip_min") is not None:
                    observer = {
                        "min": h["clip_min"],
                        "max": h["clip_max"],
                        "name": f"observer (8-bit, scale {fmt.general(h['scale'])})",
                    }
                widgets.plot(figures.playground_figure(values, fq, observer), key="pg_fig")
                st.caption(
                    f"{fmt.count(len(values))} values sampled from {p_layer} {p_kind}. Narrowing "
                    "the range shrinks the step (less rounding error) but clips more values; "
                    "fewer bits make every step coarser."
                )

        playground()
