"""Studio: upload C and S, set the weights, start a run. `?clone=<run id>` starts from a run's settings
and inputs."""

import streamlit as st

from engine import images, tracking
from engine.config import TransferConfig
from engine.errors import InputError
from engine.jobs import JobSpec
from pages.common import (
    UPLOAD_LIMITS,
    UPLOAD_TYPES,
    estimate_caption,
    input_error,
    job_queue,
    settings_ui,
    tracking_uri,
)

st.title("Studio")

clone_id = st.query_params.get("clone")
defaults, cloned_inputs = TransferConfig(), None
if clone_id:
    try:
        defaults = tracking.load_config(tracking_uri(), clone_id)
        cloned_inputs = tracking.load_inputs(tracking_uri(), clone_id)
        st.info(f"Settings and inputs of run `{clone_id}`. Upload other images to replace them.")
    except InputError as exc:
        st.warning(f"Could not clone run {clone_id}: {exc}")

upload_left, upload_right = st.columns(2)
with upload_left:
    content_file = st.file_uploader("Content image C", type=UPLOAD_TYPES, key="content", help=UPLOAD_LIMITS)
with upload_right:
    style_files = st.file_uploader(
        "Style image(s) S", type=UPLOAD_TYPES, accept_multiple_files=True, key="styles", help=UPLOAD_LIMITS
    )
st.caption(UPLOAD_LIMITS)

content_bytes = content_file.getvalue() if content_file else (cloned_inputs[0] if cloned_inputs else None)
style_bytes = [f.getvalue() for f in style_files] if style_files else (cloned_inputs[1] if cloned_inputs else [])
if content_bytes is None or not style_bytes:
    st.info("Upload a content image and at least one style image to begin.")
    st.stop()

try:
    content = images.load_image(content_bytes, name="content image")
    styles = [images.load_image(b, name=f"style image {i + 1}") for i, b in enumerate(style_bytes)]
except InputError as exc:
    input_error(exc)

thumbs = st.columns(1 + len(styles), gap="small")
thumbs[0].image(images.resize_long_side(content, 256), caption=f"content, {content.width}×{content.height}")
for i, (column, style) in enumerate(zip(thumbs[1:], styles, strict=True)):
    column.image(images.resize_long_side(style, 256), caption=f"style {i + 1}, {style.width}×{style.height}")

st.subheader("Settings")
try:
    config = settings_ui(defaults, len(styles))
except InputError as exc:
    input_error(exc)

estimate, fits = estimate_caption(config, content.height / content.width)
(st.caption if fits else st.warning)(estimate + ("" if fits else " That is more than this device has: lower the size."))

if st.button("Run", type="primary", disabled=not fits):
    try:
        run_id = job_queue().submit(JobSpec(config=config, content=content_bytes, styles=tuple(style_bytes)))
    except InputError as exc:
        input_error(exc)
    st.switch_page("pages/runs.py", query_params={"run": run_id})
