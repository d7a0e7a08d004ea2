"""aslquant dashboard: `streamlit run app.py`.

Navigation and the sidebar only; every page is a thin view over the aslquant engine.
"""

from __future__ import annotations

import streamlit as st

import aslquant  # noqa: F401  (silences torch.ao deprecation warnings once, before pages import torch)
from aslquant.ui import state

st.set_page_config(page_title="aslquant: ASL CustomCNN quantization lab", page_icon=":material/back_hand:",
                   layout="wide")  # fmt: skip

PAGES = [
    st.Page("pages/model.py", title="Model", icon=":material/memory:"),
    st.Page("pages/quantize.py", title="Quantize", icon=":material/tune:", default=True),
    st.Page("pages/layers.py", title="Layers", icon=":material/stacked_bar_chart:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page("pages/predict.py", title="Predict", icon=":material/back_hand:"),
    st.Page("pages/export.py", title="Export", icon=":material/download:"),
]

nav = st.navigation(PAGES)

with st.sidebar:
    src = state.source()
    # Measure the FP32 side (once per model and image set, in the background) while the user
    # reads the pages, so the first Quantize only waits for the quantized model.
    state.prefetch_baseline(src)
    st.caption(f"Model: **{src.name}**  ·  input {src.preprocess.input_size} px")
    if state.runs():
        state.run_picker(st, "Current run", key="sidebar_run")
        st.caption(
            f"{len(state.runs())} run(s) in this session; the {state.MAX_RUNS} most recent are "
            "kept, older ones are dropped."
        )
    else:
        st.caption("No run yet: press **Quantize** on the Quantize page.")

nav.run()
