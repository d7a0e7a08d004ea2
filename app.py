"""aslquant dashboard: `streamlit run app.py`.

Navigation and the sidebar only; every page is a thin view over the aslquant engine.
``run()`` is the whole app, so a test can call it.
"""

from __future__ import annotations

import streamlit as st

from aslquant import runtime
from aslquant.demos import demos

PAGES = [
    ("pages/model.py", "Model", ":material/memory:"),
    ("pages/quantize.py", "Quantize", ":material/tune:"),
    ("pages/layers.py", "Layers", ":material/stacked_bar_chart:"),
    ("pages/doctor.py", "Doctor", ":material/healing:"),
    ("pages/compare.py", "Compare", ":material/compare_arrows:"),
    ("pages/predict.py", "Predict", ":material/back_hand:"),
    ("pages/ship.py", "Ship check", ":material/verified:"),
    ("pages/export.py", "Export", ":material/download:"),
]
DEFAULT_PAGE = "Quantize"


def _sidebar() -> None:
    from aslquant.ui import cache, session, widgets

    src = session.source()
    # Measure the FP32 side (once per model and image set, in the background) while the user
    # reads the pages, so the first Quantize waits only for the quantized model.
    cache.prefetch_baseline(src)
    st.caption(f"Model: **{src.name}**  ·  input {src.preprocess.input_size} px")
    names = list(demos())
    if len(names) > 1:
        current = src.demo if src.demo in names else None
        picked = st.segmented_control(
            "Demo model",
            names,
            default=current,
            key=f"demo_switch_{current}",
            help="robust: trained on rendered hands with BatchNorm folded; fragile: trained the "
            "usual way (ImageNet mean/std), where INT8 visibly hurts.",
        )
        if picked and picked != current:
            session.set_source(session.demo_source(picked))
            st.rerun()
    if session.runs():
        widgets.run_picker(st, "Current run", key="sidebar_run")
        st.caption(
            f"{len(session.runs())} run(s) in this session; the {session.MAX_RUNS} most recent "
            "are kept, older ones are dropped."
        )
    else:
        st.caption("No run yet: press **Quantize** on the Quantize page.")


def run() -> None:
    """Configure the process, set up navigation and the sidebar, and run the chosen page."""
    runtime.configure()
    st.set_page_config(page_title="aslquant: ASL CustomCNN quantization lab",
                       page_icon=":material/back_hand:", layout="wide")  # fmt: skip
    nav = st.navigation(
        [
            st.Page(path, title=title, icon=icon, default=title == DEFAULT_PAGE)
            for path, title, icon in PAGES
        ]
    )
    with st.sidebar:
        from aslquant.ui import widgets

        with widgets.guard("the sidebar"):
            _sidebar()
    nav.run()


if __name__ == "__main__":
    run()
