"""Predict page: an uploaded image, a camera snapshot or the live webcam through both models."""

from __future__ import annotations

import hashlib
import json
import logging

import plotly.graph_objects as go
import streamlit as st

from aslquant import live, own_images
from aslquant.data import open_image
from aslquant.predict import (
    GUESS_BELOW,
    GUESS_MARGIN,
    ModelPair,
    PairPrediction,
    guess_reason,
    predict_pair,
    provenance,
)
from aslquant.present import format as fmt
from aslquant.present.markup import md_text
from aslquant.ui import session, widgets

st.title("Predict")
st.caption(
    "Show the models a hand sign: FP32 and quantized top-3 side by side, with the time each took."
)

_PROCESSOR = "aslquant_live_processor"
_PAIRS = "aslquant_model_pairs"
#: How often the live numbers on the page refresh while streaming.
REFRESH_SECONDS = 0.5
_PREVIEW_HEIGHT = 300
#: Above this p95 wait for the engine lock, the live view says what it is waiting for.
ENGINE_WAIT_NOTE_MS = 50.0
_CONFIDENCE_NOTE = (
    f"Confidence is the model's own top-1 probability. It is called a guess below "
    f"{100 * GUESS_BELOW:.0f}%, or when the runner-up is within {100 * GUESS_MARGIN:.0f} points; "
    "a model shown images unlike its training data can also be confidently wrong."
)


def _pair(entry: session.RunEntry) -> ModelPair:
    # One ModelPair object per run and session, so the live processor sees a stable identity.
    pairs = st.session_state.setdefault(_PAIRS, {})
    if entry.key not in pairs:
        pairs.clear()
        pairs[entry.key] = ModelPair.from_result(entry.result, label=entry.label)
    return pairs[entry.key]


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


def _verdict(col, label: str, name: str, rows: list[tuple[str, float]], note: str) -> None:
    """The model's answer with its confidence as the headline, and a warning when it guesses."""
    best, p = rows[0]
    reason = guess_reason(rows)
    col.metric(label, best, delta=f"{100 * p:.1f}% confident · {note}",
               delta_color="off", delta_arrow="off", border=True)  # fmt: skip
    if reason:
        col.warning(f"{name} is guessing: {reason}.", icon=":material/help:")


def _show(prediction: PairPrediction, key: str) -> None:
    left, right = st.columns(2)
    for col, name, rows, ms in (
        (left, "FP32", prediction.fp32, prediction.fp32_ms),
        (right, "Quantized", prediction.int8, prediction.int8_ms),
    ):
        with col:
            _verdict(col, f"{name} prediction", name, rows, f"{ms:.2f} ms")
            widgets.plot(_top3_figure(rows, f"{name} top-3"), key=f"{key}_{name}")
    st.caption(
        ("Both models agree. " if prediction.agree else "The models disagree on this image. ")
        + f"Latency: {prediction.timing}. {_CONFIDENCE_NOTE}"
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


def _preview(constraints: dict) -> None:
    """The browser's own camera view with the model's square drawn over it (no round trip).

    The server receives the stream and sends nothing back, so this preview never waits for
    the models and no frame is encoded twice; the square is CSS, not pixels.
    """
    html = f"""
<div style="position:relative;display:inline-block;max-width:100%">
  <video id="v" autoplay muted playsinline
         style="display:block;max-width:100%;max-height:{_PREVIEW_HEIGHT - 24}px;background:#111">
  </video>
  <div id="sq" style="position:absolute;display:none;box-sizing:border-box;
       border:3px solid rgb(40,220,90);pointer-events:none"></div>
</div>
<div id="msg" style="font:12px sans-serif;color:#888">Local preview: the green square is what
the models see.</div>
<script>
const v = document.getElementById("v"), sq = document.getElementById("sq");
function place() {{
  const w = v.clientWidth, h = v.clientHeight;
  if (!w || !h) return;
  const s = Math.min(w, h);
  Object.assign(sq.style, {{width: s + "px", height: s + "px", left: (w - s) / 2 + "px",
                            top: (h - s) / 2 + "px", display: "block"}});
}}
v.addEventListener("loadedmetadata", place);
v.addEventListener("resize", place);
new ResizeObserver(place).observe(v);
navigator.mediaDevices.getUserMedia({json.dumps(constraints)})
  .then(stream => {{ v.srcObject = stream; }})
  .catch(err => {{ document.getElementById("msg").textContent =
                   "No local preview (" + err.name + "); the models still see the stream."; }});
</script>"""
    st.iframe(html, height=_PREVIEW_HEIGHT)


def _ms(pair: tuple[float, float]) -> str:
    return f"{pair[0]:.1f} / {pair[1]:.1f}"


def _live_numbers(processor: live.LiveProcessor, playing: bool) -> None:
    stats = processor.snapshot()
    if stats is None:
        st.info(
            "Waiting for frames. If nothing arrives after START, WebRTC cannot "
            "connect in this browser: use the Camera snapshot tab instead."
            if playing
            else "Not streaming. Press START to send the camera to the models."
        )
        return
    if stats.error:
        st.warning(f"Last frame failed: {stats.error}")
    if stats.engine_wait_ms[1] > ENGINE_WAIT_NOTE_MS:
        st.info(
            f"Frames waited up to {stats.engine_wait_ms[1]:.0f} ms (p95) for the engine: a "
            "quantization run or the background FP32 / ONNX Runtime timing (of any session) "
            "holds it, and measurements go first. The live view speeds up when they finish.",
            icon=":material/hourglass_top:",
        )
    c = st.columns(3)
    c[0].metric("Frames processed", stats.processed,
                help="Frames both models ran on since START (or since the models changed).")  # fmt: skip
    c[1].metric("Frames per second", f"{stats.fps:.1f}",
                help=f"Processed frames per second over the last {stats.window_seconds:.0f} s.")  # fmt: skip
    c[2].metric("Frames dropped", stats.dropped, delta=f"of {stats.received} received",
                delta_color="off", delta_arrow="off",
                help="Frames replaced by a newer one while the models were busy: only the "
                "newest frame is worth predicting.")  # fmt: skip
    c = st.columns(3)
    c[0].metric("End-to-end ms (p50 / p95)", _ms(stats.e2e_ms),
                help="From the frame's arrival at the server (decoded) to both predictions "
                "ready: waiting, crop and resize, FP32 and quantized.")  # fmt: skip
    c[1].metric("FP32 ms/frame (p50 / p95)", _ms(stats.fp32_ms))
    c[2].metric("Quantized ms/frame (p50 / p95)", _ms(stats.int8_ms))
    if stats.fp32:
        left, right = st.columns(2)
        for col, name, rows in ((left, "FP32", stats.fp32), (right, "Quantized", stats.int8)):
            _verdict(col, f"{name}, live", name, rows, f"frame {stats.sequence}")
            col.markdown(
                f"{name}: " + " · ".join(f"{n} {100 * p:.1f}%" for n, p in rows),
                help="top-3 on the latest processed frame",
            )
    size = f"{stats.frame_size[0]}x{stats.frame_size[1]}" if stats.frame_size else "unknown"
    st.caption(
        f"Rates and percentiles over the last {stats.window_frames} processed frames "
        f"({stats.window_seconds:.0f} s window); frames arrive at {size}. Waiting (mailbox + "
        f"engine lock) {_ms(stats.wait_ms)} ms, crop and resize {_ms(stats.preprocess_ms)} ms "
        f"(p50 / p95). Models: {stats.label}. This refreshes every {REFRESH_SECONDS} s."
    )


def _live_tab(pair: ModelPair) -> None:
    processor = st.session_state.get(_PROCESSOR)
    if processor is None:
        processor = st.session_state[_PROCESSOR] = live.LiveProcessor()
    processor.set_models(pair)
    size = pair.preprocess.input_size
    engine = pair.quantized.backend or "no quantized engine (float)"
    threads = "1 intra-op thread" if processor.threads == 1 else f"{processor.threads} threads"
    constraints = live.media_constraints(size)
    asked = constraints["video"]
    st.caption(
        f"Press START and allow the camera. The browser sends the camera to the server at about "
        f"{asked['width']['ideal']}x{asked['height']['ideal']} (enough for the {size}-pixel "
        "square) and nothing comes back: the preview is your browser's own view, with the centre "
        "square the models see drawn over it. WebRTC stays on this machine (no STUN/TURN servers)."
    )
    st.caption(
        f"How frames are processed: only the newest frame counts. A frame that arrives while the "
        f"models are busy replaces the waiting one and is counted as dropped. One worker thread "
        f"for this browser tab crops the centre square, resizes it once to {size}x{size}, then "
        f"runs FP32 and the quantized model one after the other with {threads} ({engine} "
        f"engine), holding the server's engine lock only for those two calls. On a 2-core "
        f"machine that leaves a core for the browser and the video decoder."
    )
    try:
        from streamlit_webrtc import WebRtcMode, create_video_sink_track, webrtc_streamer

        # A sink consumes the decoded frames and sends nothing back (SENDONLY): no video is
        # encoded on the server. Its callback only hands the frame to the processor's mailbox.
        sink = create_video_sink_track(
            processor.on_frame, key="aslquant_live_sink", on_ended=processor.stream_ended
        )
        ctx = webrtc_streamer(
            key="live",
            mode=WebRtcMode.SENDONLY,
            rtc_configuration=live.RTC_CONFIGURATION,
            media_stream_constraints=constraints,
            sink_video_track=sink,
        )
        playing = bool(ctx.state.playing)
    except Exception:  # the component cannot start here: snapshots still work
        logging.getLogger("aslquant.ui").exception("streamlit-webrtc unavailable")
        st.warning("Live video is unavailable here; use the Camera snapshot tab.")
        return

    view, numbers = st.columns([2, 3])
    with view:
        if playing:
            _preview(constraints)

    @st.fragment(run_every=REFRESH_SECONDS if playing else None)
    def _refresh() -> None:
        with widgets.guard("the live view"):
            _live_numbers(processor, playing)

    with numbers:
        _refresh()
    st.caption(_CONFIDENCE_NOTE)


def _own_conditions_tab(entry) -> None:
    """Labelled snapshots in the user's own light and background become a test set."""
    result = entry.result
    names = list(result.class_names)
    root = session.session_dir() / "own_images"
    st.caption(
        "Test images are rarely taken where the model will run. Pick the letter you will sign, "
        "take a snapshot, and press **Add** (or Enter); repeat in your own light and background. "
        "The snapshots become a test set: download it as a zip (one folder per class, the "
        "layout every loader here reads) or check FP32 against the quantized model on it."
    )
    c = st.columns([1, 3])
    label = c[0].selectbox("Letter in the snapshot", names, key="own_label")
    shot = c[1].camera_input("Snapshot to label", key="own_camera")
    added = st.session_state.setdefault("aslquant_own_added", set())
    if shot is not None:
        digest = hashlib.sha256(shot.getvalue()).hexdigest()
        already = digest in added
        if st.button(
            f"Add as {label}" if not already else "Added: take another snapshot",
            key="own_add",
            type="primary",
            disabled=already,
            shortcut="Enter",
        ):
            with widgets.guard("adding the snapshot"):
                own_images.add_snapshot(root, names, label, shot.getvalue())
                added.add(digest)
                st.rerun()
    counts = own_images.snapshot_counts(root, names)
    if not counts:
        st.info("No snapshots yet.")
        return
    total = sum(counts.values())
    st.markdown(
        f"**{total} snapshots** in {len(counts)} classes: "
        + ", ".join(f"{md_text(k)} {v}" for k, v in counts.items())
    )
    c = st.columns(3)
    c[0].download_button(
        "Download as a zip (ImageFolder)",
        own_images.image_folder_zip(root),
        file_name="my_asl_images.zip",
        mime="application/zip",
        key="own_zip",
    )
    check = c[1].button("Check FP32 vs quantized on them", key="own_check")
    if c[2].button("Clear the snapshots", key="own_clear"):
        for path in own_images.snapshot_paths(root):
            own_images.remove_snapshot(path, root)
        added.clear()
        st.session_state.pop("aslquant_own_check", None)
        st.rerun()
    if check:
        with widgets.guard("checking your snapshots"), st.spinner("Running both models"):
            st.session_state["aslquant_own_check"] = (
                entry.key,
                total,
                own_images.check_own_images(result, root),
            )
    done = st.session_state.get("aslquant_own_check")
    if done is None or done[0] != entry.key:
        return
    _, checked_total, outcome = done
    if checked_total != total:
        st.caption(f"Checked on {checked_total} snapshots; check again to include all {total}.")
    u = outcome.summary
    c = st.columns(3)
    c[0].metric("FP32 top-1 on your snapshots", fmt.percent(u.fp32_accuracy.estimate),
                help=fmt.interval(u.fp32_accuracy), border=True)  # fmt: skip
    c[1].metric("Quantized top-1", fmt.percent(u.int8_accuracy.estimate),
                help=fmt.interval(u.int8_accuracy), border=True)  # fmt: skip
    c[2].metric("Same answer", fmt.percent(u.agreement.estimate),
                help=fmt.interval(u.agreement), border=True)  # fmt: skip
    st.markdown(
        f"Drop on your {outcome.n} snapshots: {fmt.interval(u.drop, kind='points')}; on the "
        f"run's test images: {fmt.interval(outcome.test_drop, kind='points')}. "
        f"{md_text(u.mcnemar.verdict)}"
    )
    if outcome.n < 30:
        st.caption(
            "Fewer than 30 snapshots: the intervals are wide; take more for a verdict you can "
            "rely on."
        )
    if outcome.changed:
        st.dataframe(
            [
                {"snapshot": a, "true": b, "FP32": f, "quantized": q}
                for a, b, f, q in outcome.changed
            ],
            hide_index=True,
        )


with widgets.guard("the Predict page"):
    entry = widgets.require_run()
    if entry is not None:
        entry = widgets.run_picker(st, "Which run's models", key="predict_run")
        pair = _pair(entry)
        st.info(provenance(pair.checkpoint), icon=":material/school:")
        upload_tab, camera_tab, live_tab, own_tab = st.tabs(
            ["Upload an image", "Camera snapshot", "Live webcam", "Your own conditions"]
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
            _live_tab(pair)

        with own_tab:
            _own_conditions_tab(entry)
