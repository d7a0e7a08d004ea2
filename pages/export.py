"""Export page: the run's model files and its reports, ready to download."""

from __future__ import annotations

import streamlit as st

from aslquant.present import format as fmt
from aslquant.present import tables
from aslquant.present.markup import md_text
from aslquant.ui import cache, widgets

st.title("Export")
st.caption(
    "Everything needed to ship the quantized model: model files for each runtime and the run's "
    "report (JSON for machines, Markdown and HTML for people)."
)

MODEL_FILES = {
    "packed": ("Packed state_dict (.pt)", "application/octet-stream",
               "the size shown on every page; aslquant.serialize.load_packed, then "
               "load_state_dict into the same recipe's model"),
    "torchscript": ("TorchScript (.pt)", "application/octet-stream",
                    "torch.jit.load on a server or desktop"),
    "lite": ("PyTorch Lite (.ptl)", "application/octet-stream",
             "the lite interpreter on Android/iOS (deprecated in favour of ExecuTorch)"),
    "onnx_fp32": ("ONNX FP32 (.onnx)", "application/octet-stream",
                  "ONNX Runtime or any ONNX consumer, float model"),
    "onnx_int8": ("ONNX INT8 (.onnx)", "application/octet-stream",
                  "ONNX Runtime, QDQ INT8 model quantized with the same calibration images"),
}  # fmt: skip

with widgets.guard("the Export page"):
    entry = widgets.require_run()
    if entry is not None:
        entry = widgets.run_picker(st, "Run to export", key="export_run")
        key = entry.key
        st.caption(f"Recipe: {entry.result.config.recipe.describe()} · run key `{key}`")

        st.subheader("Model files")
        exported = widgets.wait_for(cache.export_files(entry.result), "Exporting the models")
        files = exported["files"]
        for note in exported["notes"]:
            st.caption(f"Note: {note}")
        cols = st.columns(len(MODEL_FILES))
        for col, (kind, (title, mime, use)) in zip(cols, MODEL_FILES.items(), strict=True):
            with col:
                if kind in files:
                    name, data = files[kind]
                    st.download_button(
                        f"⬇ {title}", data, file_name=name, mime=mime, key=f"dl_{kind}",
                        width="stretch",
                    )  # fmt: skip
                    st.caption(f"{fmt.size(len(data))} · {use}")
                else:
                    st.warning(f"{title}: not produced for this run's method.")

        st.subheader("ONNX Runtime check")
        onnx = widgets.on_request(
            f"onnx_{key}",
            "Run both ONNX files in ONNX Runtime on the evaluation images: accuracy, latency "
            "and agreement with the PyTorch models (about a minute).",
            "Measure in ONNX Runtime",
            "onnx_go",
            "ONNX Runtime",
            lambda: cache.onnx_compare(entry.result),
        )
        if onnx:
            onnx_table = tables.onnx_table(onnx)
            st.dataframe(onnx_table.to_frame(), hide_index=True, width="stretch")
            for note in onnx_table.notes:
                st.caption(md_text(note))

        st.subheader("Reports")
        layers = widgets.wait_for(cache.layer_errors(entry.result), "Per-layer error")
        texts = cache.report_texts(entry.result, layers, onnx)
        c1, c2, c3 = st.columns(3)
        c1.download_button("⬇ report.json", texts["json"], "report.json", "application/json",
                           key="dl_json", width="stretch")  # fmt: skip
        c2.download_button("⬇ report.md", texts["md"], "report.md", "text/markdown",
                           key="dl_md", width="stretch")  # fmt: skip
        c3.download_button("⬇ report.html", texts["html"], "report.html", "text/html",
                           key="dl_html", width="stretch")  # fmt: skip
        st.caption("The HTML report is one self-contained file: it opens offline.")
        with st.expander("Preview report.md"):
            st.markdown(texts["md"])
