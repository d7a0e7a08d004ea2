"""Model page: which checkpoint, labels and images; preprocessing; model card; sample grid."""

from __future__ import annotations

import dataclasses

import streamlit as st

from aslquant.data import IMAGENET_MEAN, IMAGENET_STD, MAX_INPUT_SIZE, Preprocess
from aslquant.errors import InputError
from aslquant.labels import load_labels
from aslquant.model import MIN_INPUT_SIZE, load_checkpoint
from aslquant.present import format as fmt
from aslquant.present import tables
from aslquant.present.markup import md_code_span, md_text
from aslquant.ui import cache, session, widgets

st.title("Model")
st.caption(
    "The model being quantized, the images it is measured on, and how images become its input. "
    "The demo (a CustomCNN trained on synthetic ASL hand signs) is loaded already."
)


def _use_uploads(ckpt, labels) -> None:
    """Validate uploaded checkpoint + labels with the engine's safe loaders, then keep them."""
    names = load_labels(labels.getvalue(), name=labels.name)
    load_checkpoint(ckpt.getvalue(), num_labels=len(names), name=ckpt.name)
    src = session.source()
    session.set_source(
        dataclasses.replace(
            src,
            checkpoint=str(session.save_upload(ckpt.getvalue(), ckpt.name)),
            labels=str(session.save_upload(labels.getvalue(), labels.name)),
            name=f"{ckpt.name} + {labels.name}",
        )
    )


with widgets.guard("the Model page"):
    src = session.source()
    left, right = st.columns([3, 2], gap="large")

    with left:
        st.subheader("Checkpoint and labels")
        st.write(
            f"In use: **{md_text(src.name)}** · {md_code_span(src.checkpoint)} · labels "
            f"{md_code_span(src.labels)}"
        )
        with st.form("upload_model", clear_on_submit=False):
            ckpt = st.file_uploader(
                "Checkpoint (.pth state_dict of the CustomCNN)", type=["pth", "pt"]
            )
            labels = st.file_uploader(
                "Labels (lb.pkl LabelBinarizer, labels.txt or a JSON list)",
                type=["pkl", "txt", "json"],
            )
            st.caption(
                "Files are read without running any code from them: weights-only checkpoints and "
                "a restricted unpickler for lb.pkl."
            )
            use = st.form_submit_button("Use these files")
        if use:
            if ckpt is None or labels is None:
                st.error("Upload both a checkpoint (.pth) and a labels file.")
            else:
                with widgets.guard("reading the uploads"):
                    _use_uploads(ckpt, labels)
                    st.success(f"Using {md_text(ckpt.name)} with {md_text(labels.name)}.")
                    src = session.source()
        if not src.is_demo and st.button("Back to the demo model"):
            session.set_source(session.demo_source())
            st.rerun()

        st.subheader("Images")
        st.write(f"In use: {md_code_span(src.data)}")
        choice = st.radio(
            "Image source",
            ["Keep current", "Demo images", "Folder or .zip on this server", "Upload a .zip"],
            horizontal=True,
            help="Class folders (ImageFolder or the Kaggle ASL layout) or flat files like "
            "A_test.jpg; in a folder or a zip.",
        )
        new_data = None
        if choice == "Demo images":
            new_data = session.demo_source().data
        elif choice == "Folder or .zip on this server":
            typed = st.text_input("Path to a folder or .zip", placeholder="/data/asl_alphabet_test")
            if typed and st.button("Use this folder"):
                new_data = typed.strip()
        elif choice == "Upload a .zip":
            up = st.file_uploader("Images as a .zip", type=["zip"])
            if up is not None and st.button("Use this zip"):
                new_data = str(session.save_upload(up.getvalue(), up.name))
        if new_data and new_data != src.data:
            trial = dataclasses.replace(src, data=new_data)
            cache.image_set(trial)  # raises InputError naming the folder if it is unusable
            session.set_source(trial)
            src = trial
            st.success(f"Using images from {md_code_span(new_data)}.")

    with right:
        st.subheader("Preprocessing")
        st.caption("Must match how the checkpoint was trained (torchvision semantics).")
        pp = src.preprocess
        norm_options = ["none", "ImageNet mean/std", "custom"]
        imagenet = (pp.mean, pp.std) == (IMAGENET_MEAN, IMAGENET_STD)
        # Widgets start from the stored settings; keys keep them stable while the user edits.
        for key, value in (
            ("pp_size", pp.input_size),
            ("pp_crop", pp.crop),
            ("pp_scale", pp.scale),
            (
                "pp_norm",
                "none" if pp.mean is None else "ImageNet mean/std" if imagenet else "custom",
            ),
            ("pp_mean", " ".join(map(str, pp.mean or IMAGENET_MEAN))),
            ("pp_std", " ".join(map(str, pp.std or IMAGENET_STD))),
            ("pp_bgr", pp.bgr),
        ):
            if key not in st.session_state:
                st.session_state[key] = value
        size = st.number_input(
            "Input size (px, square)", MIN_INPUT_SIZE, MAX_INPUT_SIZE, step=4, key="pp_size"
        )
        crop = st.checkbox(
            "Resize shorter side, then center-crop", key="pp_crop", help="Off: resize to a square."
        )
        scale = st.radio(
            "Pixel scale",
            [1, 255],
            format_func=lambda s: "0..1 (ToTensor)" if s == 1 else "0..255 (raw)",
            horizontal=True,
            key="pp_scale",
        )
        norm = st.radio("Normalize", norm_options, horizontal=True, key="pp_norm")
        mean = std = None
        if norm == "ImageNet mean/std":
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        elif norm == "custom":
            mean_text = st.text_input("Mean (R G B)", key="pp_mean")
            std_text = st.text_input("Std (R G B)", key="pp_std")
            mean, std = mean_text.replace(",", " ").split(), std_text.replace(",", " ").split()
        bgr = st.checkbox("Feed channels as BGR (OpenCV-trained models)", key="pp_bgr")
        try:
            new_pp = Preprocess(
                input_size=int(size), crop=crop, scale=int(scale), mean=mean, std=std, bgr=bgr
            )
        except InputError as err:
            st.error(str(err))
            new_pp = pp
        if new_pp != pp:
            src = dataclasses.replace(src, preprocess=new_pp)
            session.set_source(src)

    st.divider()
    st.subheader("Model card")
    model, class_names = cache.model_and_labels(src)
    rows = cache.model_card(src)
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Classes", fmt.count(len(class_names)))
    c2.metric("Parameters", fmt.count(sum(r["params"] for r in rows)))
    c3.metric("MACs per image", fmt.count(sum(r["macs"] for r in rows)))
    c4.metric("FP32 weights", fmt.size(sum(r["fp32_bytes"] for r in rows)))
    st.dataframe(tables.model_card_table(rows).to_frame(), hide_index=True, width="stretch")
    st.caption(
        f"Shapes and MACs at {src.preprocess.input_size} x {src.preprocess.input_size} input."
    )

    st.subheader("Sample images per class")
    images = cache.image_set(src)
    counts = images.counts()
    st.caption(
        f"{len(images.items)} images ({images.layout} layout) in {len(class_names)} classes"
        + (f"; {len(images.skipped)} files skipped" if images.skipped else "")
    )
    first: dict[int, str] = {}
    for item in images.items:
        first.setdefault(item.label, item.path)
    per_row = 10
    shown = [i for i in range(len(class_names)) if i in first]
    for start in range(0, len(shown), per_row):
        cols = st.columns(per_row)
        for col, ci in zip(cols, shown[start : start + per_row], strict=False):
            col.image(
                cache.thumbnail(first[ci]),
                caption=f"{md_text(class_names[ci])} ({fmt.count(counts[class_names[ci]])})",
                width="stretch",
            )
    missing = [class_names[i] for i in range(len(class_names)) if i not in first]
    if missing:
        st.info("No images for: " + ", ".join(md_text(name) for name in missing))
    if images.skipped:
        skipped = tables.skipped_table(images.skipped, limit=len(images.skipped))
        with st.expander(skipped.title):
            st.dataframe(skipped.to_frame(), hide_index=True)
