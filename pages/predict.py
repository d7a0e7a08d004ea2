"""Predict page: an uploaded image, a camera snapshot or the live webcam through both models."""

from __future__ import annotations

import dataclasses
import hashlib
import logging

import plotly.graph_objects as go
import streamlit as st

from aslquant.data import open_image
from aslquant.ui import live, session, widgets
from aslquant.ui.predict import ModelPair, PairPrediction, predict_pair

st.title("Predict")
st.caption(
    "Show the models a hand sign: FP32 and quantized top-3 side by side, with the time each took."
)

_PROCESSOR = "aslquant_live_processor"
_PAIRS = "aslquant_model_pairs"


def _pair(entry: session.RunEntry, live_frames: bool = False) -> ModelPair:
    # One ModelPair object per run and session, so the live processor sees a stable identity.
    # Live frames run single-threaded: the browser, video coding and the server share the
    # cores, and a multi-threaded OpenMP team slows down badly when it cannot own them.
    pairs = st.session_state.setdefault(_PAIRS, {})
    if entry.key not in pairs:
        pairs.clear()
        pairs[entry.key] = {
            False: ModelPair.from_result(entry.result, label=entry.label),
            True: dataclasses.replace(
                ModelPair.from_result(entry.result, label=entry.label), threads=1
            ),
        }
    return pairs[entry.key][live_frames]


def _top3_figure(rows: list[tuple[str, float]], title: str) -> go.Figure:
    names = [n for n, _ in rows][::-1]
    probs = [100 * p for _, p in rows][::-1]
    fig = go.Figure(
        go.Bar(
            x=probs,
            y=names,
            orientation="h",
            text=[f"{p:.1f}%" for p in probs],
            textposition="auto",
        )  # fmt: skip
    )
    fig.update_layout(
        title=title,
        height=220,
        margin=dict(l=10, r=10, t=40, b=40),
        xaxis=dict(title="probability (%)", range=[0, 100]),
        yaxis=dict(title="class", type="category"),
    )
    return fig


def _show(prediction: PairPrediction, key: str) -> None:
    left, right = st.columns(2)
    for col, name, rows, ms in (
        (left, "FP32", prediction.fp32, prediction.fp32_ms),
        (right, "Quantized", prediction.int8, prediction.int8_ms),
    ):
        with col:
            best, p = rows[0]
            st.metric(f"{name} prediction", best, delta=f"{100 * p:.1f}% · {ms:.2f} ms",
                      delta_color="off", delta_arrow="off", border=True)  # fmt: skip
            widgets.plot(_top3_figure(rows, f"{name} top-3"), key=f"{key}_{name}")
    st.caption(
        ("Both models agree. " if prediction.agree else "The models disagree on this image. ")
        + f"Latency: {prediction.timing}."
    )


@st.cache_data(max_entries=64, show_spinner="Running both models...")
def _predict_cached(run_key: str, digest: str, _pair: ModelPair, _image) -> PairPrediction:
    # Keyed by run and image content: reruns of the page (e.g. switching tabs) reuse the
    # prediction and its 30-call latency instead of timing again.
    return predict_pair(_pair, _image, timing_runs=30)


def _predict_bytes(data: bytes, name: str, pair: ModelPair, run_key: str, key: str) -> None:
    image = open_image(data, name)
    cols = st.columns([1, 3])
    cols[0].image(image, caption=f"{name} ({image.width}x{image.height})", width="stretch")
    with cols[1]:
        digest = hashlib.sha256(data).hexdigest()
        _show(_predict_cached(run_key, digest, pair, image), key)


with widgets.guard("the Predict page"):
    entry = widgets.require_run()
    if entry is not None:
        entry = widgets.run_picker(st, "Which run's models", key="predict_run")
        pair = _pair(entry)
        upload_tab, camera_tab, live_tab = st.tabs(
            ["Upload an image", "Camera snapshot", "Live webcam"]
        )

        with upload_tab:
            up = st.file_uploader(
                "An image of a hand sign", type=["jpg", "jpeg", "png", "bmp", "webp"], key="pred_up"
            )
            if up is not None:
                with widgets.guard("predicting the uploaded image"):
                    _predict_bytes(up.getvalue(), up.name, pair, entry.key, "upload")
            else:
                st.caption("The image is resized per the Model page's preprocessing settings.")

        with camera_tab:
            shot = st.camera_input("Take a snapshot", key="pred_camera")
            if shot is not None:
                with widgets.guard("predicting the snapshot"):
                    _predict_bytes(shot.getvalue(), "snapshot", pair, entry.key, "camera")

        with live_tab:
            st.caption(
                "Press START and allow the camera. Both models run on the centre square of every "
                "frame (outlined in green). WebRTC stays on this machine: no STUN/TURN servers."
            )
            processor = st.session_state.get(_PROCESSOR)
            if processor is None:
                processor = st.session_state[_PROCESSOR] = live.LiveProcessor()
            processor.set_models(_pair(entry, live_frames=True))
            try:
                from streamlit_webrtc import WebRtcMode, webrtc_streamer

                ctx = webrtc_streamer(
                    key="live",
                    mode=WebRtcMode.SENDRECV,
                    rtc_configuration=live.RTC_CONFIGURATION,
                    media_stream_constraints=live.MEDIA_CONSTRAINTS,
                    video_frame_callback=processor.callback,
                    async_processing=True,
                )
                playing = bool(ctx.state.playing)
            except Exception:  # the component cannot start here: snapshots still work
                logging.getLogger("aslquant.ui").exception("streamlit-webrtc unavailable")
                st.warning("Live video is unavailable here; use the Camera snapshot tab.")
                playing = False

            @st.fragment(run_every=0.5 if playing else None)
            def _live_stats() -> None:
                with widgets.guard("the live view"):
                    stats = processor.snapshot()
                    if stats is None:
                        st.info(
                            "Waiting for frames. If nothing arrives after START, WebRTC cannot "
                            "connect in this browser: use the Camera snapshot tab instead."
                            if playing
                            else "Not streaming."
                        )
                        return
                    if stats.error:
                        st.warning(f"Last frame failed: {stats.error}")
                    c = st.columns(4)
                    c[0].metric("Frames processed", stats.frames)
                    c[1].metric("Frames per second", f"{stats.fps:.1f}")
                    c[2].metric("FP32 ms/frame (p50 / p95)",
                                f"{stats.fp32_ms_p50:.1f} / {stats.fp32_ms_p95:.1f}")  # fmt: skip
                    c[3].metric("Quantized ms/frame (p50 / p95)",
                                f"{stats.int8_ms_p50:.1f} / {stats.int8_ms_p95:.1f}")  # fmt: skip
                    if stats.fp32:
                        left, right = st.columns(2)
                        for col, name, rows in (
                            (left, "FP32", stats.fp32),
                            (right, "Quantized", stats.int8),
                        ):
                            col.markdown(
                                f"**{name}:** "
                                + " · ".join(f"{n} {100 * p:.1f}%" for n, p in rows),
                                help="top-3 on the latest frame",
                            )
                    st.caption(
                        f"Latency over the last {stats.window} frames; models: {stats.label}."
                    )

            _live_stats()
