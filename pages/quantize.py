"""Quantize page: choose a recipe, press Quantize, read the summary; every run is kept."""

from __future__ import annotations

import streamlit as st

from aslquant.errors import InputError
from aslquant.methods import METHODS
from aslquant.model import LAYER_NAMES
from aslquant.present import format as fmt
from aslquant.present import tables
from aslquant.present.markup import md_code_span, md_text
from aslquant.recipe import (
    ACT_OBSERVERS,
    BACKENDS,
    FIELDS,
    QSCHEMES,
    REDUCE_RANGE_BY_DEFAULT,
    WEIGHT_OBSERVERS,
    QuantRecipe,
)
from aslquant.report import run_summary
from aslquant.ui import cache, session, widgets

st.title("Quantize")
st.caption(
    "Turn the FP32 model into an INT8 one and measure what changed: accuracy, size, speed. "
    "Each choice below says in one line what it does."
)

REDUCE = {"default": None, "on": True, "off": False}


def _summary_cards(entry: session.RunEntry) -> None:
    """The summary; while timing (or the ONNX Runtime baseline) is pending, it re-draws itself
    every half second until every card has its figure, then the page re-runs once."""
    pending = not widgets.summary_settled(entry)

    @st.fragment(run_every=0.5 if pending else None)
    def cards() -> None:
        widgets.show_summary(entry)
        if pending and widgets.summary_settled(entry):
            st.rerun()  # every figure is in: redraw the page without the timer

    cards()


def _init(values: dict) -> None:
    # Widget state is dropped when the user visits another page; restore the last recipe.
    for key, value in values.items():
        if key not in st.session_state:
            st.session_state[key] = value


with widgets.guard("the Quantize page"):
    src = session.source()
    n_images = len(cache.image_set(src).items)
    last = session.default_recipe()
    _init(
        {
            "q_method": last.method,
            "q_backend": last.backend,
            "q_act": last.act_observer,
            "q_weight": last.weight_observer,
            "q_qscheme": last.qscheme,
            "q_reduce": next(k for k, v in REDUCE.items() if v == last.reduce_range),
            "q_calib": min(last.calib_images, max(1, n_images - 1)),
            "q_keep": list(last.keep_fp32),
            "q_qat_epochs": last.qat_epochs,
            "q_fuse": last.fuse,
            "q_equalize": last.equalize,
            "q_bias": last.bias_correction,
            "q_eval": 0,
        }
    )

    c1, c2, c3 = st.columns(3, gap="large")
    with c1:
        method = st.selectbox("Method", list(METHODS), key="q_method")
        st.caption(METHODS[method].help)
        backend = st.selectbox(
            "Backend (the kernels that run INT8)", list(BACKENDS), key="q_backend"
        )
        st.caption(BACKENDS[backend])
    spec = METHODS[method]
    calibrated = spec.uses_observers
    with c2:
        act = st.selectbox(
            "Activation observer", list(ACT_OBSERVERS), key="q_act", disabled=not calibrated
        )
        st.caption(ACT_OBSERVERS[act])
        weight = st.selectbox(
            "Weight observer",
            list(WEIGHT_OBSERVERS),
            key="q_weight",
            disabled=not spec.weight_settings,
        )
        st.caption(WEIGHT_OBSERVERS[weight])
        qscheme = st.selectbox(
            "Weight qscheme", list(QSCHEMES), key="q_qscheme", disabled=not spec.weight_settings
        )
        st.caption(QSCHEMES[qscheme] + " Activations are always affine.")
    with c3:
        default_rr = "on (7-bit)" if backend in REDUCE_RANGE_BY_DEFAULT else "off (8-bit)"
        reduce = st.radio(
            "reduce_range (7-bit activations)",
            list(REDUCE),
            format_func=lambda k: f"backend default: {default_rr}" if k == "default" else k,
            horizontal=True,
            key="q_reduce",
            disabled=not calibrated,
        )
        st.caption(
            "7-bit activations leave headroom so x86 int8 kernels (VPMADDUBSW) cannot overflow; "
            "8-bit is a little more precise."
        )
        calib = st.slider(
            "Calibration images",
            1,
            max(2, min(512, n_images - 1)),
            key="q_calib",
            disabled=not calibrated,
        )
        st.caption(
            "Images run through the model so observers can see typical activation ranges; they "
            "are kept out of the evaluation set."
        )
        keep = st.multiselect("Layers to keep in FP32", list(LAYER_NAMES), key="q_keep")
        st.caption("Mixed precision: sensitive layers stay float, the rest become INT8.")
        qat_epochs = 3
        if spec.trains:
            qat_epochs = st.number_input("QAT epochs", 1, 20, key="q_qat_epochs")
            st.caption("Fine-tuning passes over the calibration images with fake quantization.")

    with st.expander("Techniques (remedies the Doctor may prescribe)"):
        t1, t2, t3 = st.columns(3)
        fuse = t1.checkbox(FIELDS["fuse"].help, key="q_fuse")
        equalize = t2.checkbox(
            "Cross-layer equalization",
            key="q_equalize",
            disabled=not spec.supports_equalize,
            help=FIELDS["equalize"].help,
        )
        bias = t3.checkbox(
            "Bias correction",
            key="q_bias",
            disabled=not spec.supports_bias_correction,
            help=FIELDS["bias_correction"].help,
        )

    with st.expander("Evaluation"):
        eval_images = st.number_input(
            "Evaluation images (0 = all not used for calibration)",
            0,
            n_images,
            step=29,
            key="q_eval",
            help="Fewer images run faster; accuracy figures then have wider error bars.",
        )

    recipe = None
    try:
        recipe = QuantRecipe(
            method=method,
            backend=backend,
            act_observer=act,
            weight_observer=weight,
            qscheme=qscheme,
            reduce_range=REDUCE[reduce],
            calib_images=int(calib),
            keep_fp32=tuple(keep),
            fuse=bool(fuse),
            equalize=bool(equalize) and spec.supports_equalize,
            bias_correction=bool(bias) and spec.supports_bias_correction,
            qat_epochs=int(qat_epochs),
        )
        config = src.config(recipe, eval_images=int(eval_images) or None)
        st.caption(f"Recipe: **{recipe.describe()}** · images from {md_code_span(src.data)}")
    except InputError as err:
        st.error(str(err))

    if st.button("Quantize", type="primary", disabled=recipe is None, key="quantize"):
        session.remember_recipe(recipe)
        entry = widgets.quantize_with_progress(config)
        # Rerun so the sidebar (drawn before this page) lists the new run too.
        st.session_state["aslquant_flash"] = (
            f"Run {entry.label}: evaluated in {fmt.number(entry.seconds, 1)} s"
            + ("." if entry.job.done else "; timing goes on in the background.")
        )
        st.rerun()
    flash = st.session_state.pop("aslquant_flash", None)
    if flash:
        st.success(flash)

    entry = session.current_run()
    if entry is not None:
        st.divider()
        st.subheader(f"Summary: {entry.label}")
        _summary_cards(entry)
        r = entry.result
        st.dataframe(
            tables.summary_table(run_summary(r)).to_frame(), hide_index=True, width="stretch"
        )
        st.caption(
            f"Evaluated on {r.n_eval} images, calibrated on {r.n_calib}; latency over "
            f"{r.config.latency_runs} timed calls after warm-up, {r.threads} threads. "
            f"Run key `{r.key}`; took {fmt.number(entry.seconds, 1)} s."
        )
        st.markdown("**Reproduce this run from the command line:**")
        st.code(r.config.cli_command(), language="bash")
        for note in r.notes:
            st.caption("Note: " + md_text(note))
        if r.skipped:
            skipped = tables.skipped_table(r.skipped, limit=len(r.skipped))
            with st.expander(skipped.title):
                st.dataframe(skipped.to_frame(), hide_index=True)

        st.subheader("Run history")
        history = [{**run_summary(e.result), "run": e.number} for e in reversed(session.runs())]
        st.dataframe(tables.runs_table(history).to_frame(), hide_index=True, width="stretch")
        st.caption(
            f"This session keeps the {session.MAX_RUNS} most recent runs; older ones are dropped. "
            "Pick the run the other pages show in the sidebar."
        )
        if session.evicted():
            st.caption("Dropped so far: " + "; ".join(session.evicted()))
