"""Studio: upload C and S, set the weights, start a run. `?clone=<run id>` starts from a run's settings
and inputs.

A page without images stops after the uploaders and the start hint."""

import streamlit as st
from PIL import Image

from engine import tracking
from engine.core import images
from engine.core.adain import adain_preview
from engine.core.config import TransferConfig, dominant_style
from engine.core.errors import InputError
from engine.core.samples import CONTENTS, STYLES, sample_bytes
from engine.jobs import JobSpec
from engine.studies.sweep import SweepAxis, expand, submit_sweep, sweepable_params
from views import auth
from views.common import (
    estimate_caption,
    input_error,
    job_queue,
    settings_ui,
    store_down_text,
    tracking_uri,
    visitor_text,
)
from views.preview import live_preview
from views.regions import regions_ui
from views.uploads import UPLOAD_LIMITS, UPLOAD_TYPES

st.title("Studio")
clone_note = st.container()  # says whose settings these are, above the uploaders

use_samples = st.toggle(
    "Try the sample images", key="use_samples",
    help="A photo of Tübingen and three public-domain paintings that ship with stylelab (samples/SOURCES.md). "
    "An upload replaces the sample.",
)  # fmt: skip
upload_left, upload_right = st.columns(2)
with upload_left:
    sample_content = st.selectbox("Sample content", list(CONTENTS), key="sample_content") if use_samples else None
    content_file = st.file_uploader("Content image C", type=UPLOAD_TYPES, key="content", help=UPLOAD_LIMITS)
with upload_right:
    sample_styles = (
        st.multiselect("Sample style(s)", list(STYLES), default=list(STYLES)[:1], key="sample_styles")
        if use_samples
        else []
    )
    style_files = st.file_uploader(
        "Style image(s) S", type=UPLOAD_TYPES, accept_multiple_files=True, key="styles", help=UPLOAD_LIMITS
    )
st.caption(f"{UPLOAD_LIMITS} A larger file is marked red in the uploader and never sent: shrink it, or save it as "
           "JPEG, and choose it again.")  # the browser refuses it, so this page never hears of it

START_HINT = "Upload a content image and at least one style image to begin, or try the sample images."
clone_id = st.query_params.get("clone")
if not (clone_id or content_file or sample_content or style_files or sample_styles):
    st.info(START_HINT)
    st.stop()


PREVIEW_MAX_SIZE = 512


@st.cache_data(max_entries=16, show_spinner="AdaIN preview…")
def instant_preview(content_sha: str, style_sha: str, size: int, _content: Image.Image, _style: Image.Image) -> bytes:
    """The AdaIN one-pass result as PNG, cached by the inputs' sha256 and the size (the images are not hashed)."""
    return images.image_to_png_bytes(adain_preview(_content, _style, size))


defaults, cloned_inputs = TransferConfig(), None
if clone_id:
    try:
        defaults = tracking.load_config(tracking_uri(), clone_id)
        cloned_inputs = tracking.load_inputs(tracking_uri(), clone_id)
        clone_note.info(f"Settings and inputs of run `{clone_id}`. Upload other images to replace them.")
    except InputError as exc:
        clone_note.warning(f"Could not clone this run: {visitor_text(exc)}")

# An upload wins over a sample, and a sample over a cloned run's inputs.
if content_file:
    content_bytes = content_file.getvalue()
elif sample_content:
    content_bytes = sample_bytes(CONTENTS[sample_content])
else:
    content_bytes = cloned_inputs.content.png if cloned_inputs else None
if style_files:
    style_bytes = [f.getvalue() for f in style_files]
elif sample_styles:
    style_bytes = [sample_bytes(STYLES[name]) for name in sample_styles]
else:
    style_bytes = [s.png for s in cloned_inputs.styles] if cloned_inputs else []
if content_bytes is None or not style_bytes:
    if content_bytes is None and not style_bytes:
        st.info(START_HINT)
    else:  # say what the server holds, so a file that never arrived is not waited on in silence
        have, want = (("content image", "at least one style image") if content_bytes is not None
                      else ("style image(s)", "a content image"))  # fmt: skip
        st.info(f"The server has your {have}; now upload {want}.")
        st.caption(
            "An image counts once the server has it (its name shows in the uploader and this message changes). "
            "If a file you chose does not arrive within a few seconds, remove it and choose it again."
        )
    st.stop()

try:
    inputs = images.Inputs.decode(content_bytes, style_bytes)  # the edge: decoded once, then passed on as is
except InputError as exc:
    input_error(exc)
content, styles = inputs.content.image, inputs.style_images

thumbs = st.columns(1 + len(styles), gap="small")
thumbs[0].image(images.resize_long_side(content, 256), caption=f"content, {content.width}×{content.height}")
for i, (column, style) in enumerate(zip(thumbs[1:], styles, strict=True)):
    column.image(images.resize_long_side(style, 256), caption=f"style {i + 1}, {style.width}×{style.height}")

st.subheader("Settings")
try:
    config = settings_ui(defaults, len(styles))
except InputError as exc:
    input_error(exc)
with st.expander("Regions: give parts of the content their own styles", expanded=bool(defaults.regions)):
    config, mask = regions_ui(config, content, len(styles), cloned_inputs.mask if cloned_inputs else None)
# A cloned run's masks on its style images (command line only) go with its style images, as they were.
style_masks = cloned_inputs.style_masks if cloned_inputs and not (style_files or sample_styles) and mask else ()
if any(m is not None for m in style_masks):
    st.caption("The cloned run's masks on its style images are kept: each region takes its own part of them.")
inputs = images.Inputs(inputs.content, inputs.styles, mask, style_masks)

estimate, fits = estimate_caption(config, content.height / content.width)
(st.caption if fits else st.warning)(estimate)  # when it does not fit, the estimate says what to do
# A fragment timer set in the run that calls st.switch_page fires on the next page and crashes it in the
# browser ("Bad delta path"): the run that leaves for the run's (or sweep's) page draws no live preview.
if not (st.session_state.get("run_pressed") or st.session_state.get("sweep_pressed")):
    live_preview(config, inputs)

if st.checkbox("Instant preview (AdaIN)", key="adain_preview", help="Huang & Belongie 2017, one network pass"):
    pick = dominant_style(config.style_blend, len(styles))  # the style the 'adain' init uses
    preview_size = min(config.size, PREVIEW_MAX_SIZE)
    try:
        png = instant_preview(images.sha256_of(content_bytes), images.sha256_of(style_bytes[pick]), preview_size,
                              content, styles[pick])  # fmt: skip
    except InputError as exc:
        st.error(str(exc), icon="⚠️")
    else:
        st.image(
            png,
            caption=f"AdaIN, {preview_size} px{f', style {pick + 1}' if len(styles) > 1 else ''}: a one-pass "
            "approximation (well under a second on a GPU). Initial image 'adain' starts the optimisation from it.",
        )


def refused(exc: InputError) -> None:
    """A submit refused before anything was stored or queued; a store that does not answer is said in
    the visitor's terms (what is wrong, that nothing started, what to do), not the admin's hint."""
    if isinstance(exc, tracking.StoreUnavailable):
        st.error(f"Nothing was started: {store_down_text(exc.reason)} Your images and settings stay on this "
                 "page: press Run again when it is back.", icon=":material/cloud_off:")  # fmt: skip
        st.stop()
    input_error(exc)


if st.button("Run", type="primary", disabled=not fits, key="run_pressed"):
    try:
        run_id = job_queue().submit(JobSpec(config=config, content=inputs.content, styles=inputs.styles,
                                            mask=inputs.mask, style_masks=inputs.style_masks,
                                            owner=auth.owner()))  # fmt: skip
    except InputError as exc:
        refused(exc)
    st.switch_page("views/runs.py", query_params={"run": run_id})

with st.expander("Sweep: vary one or two settings over a list or a grid"):
    st.caption(
        "One run per setting, same inputs and seed, as children of one parent run. Values are comma-separated, "
        "e.g. 0.1, 0.5, 1 for a λ; a style_layers value is like relu1_1=0.5 relu3_1=1."
    )
    axes = []
    for i, (default, values) in enumerate([("lambda.relu3_1", "0, 0.2, 1"), (None, "")]):
        options = sweepable_params(config) if i == 0 else ["(none)", *sweepable_params(config)]
        left, right = st.columns([1, 2])
        param = left.selectbox(f"Axis {i + 1}", options, index=options.index(default) if default else 0, key=f"axis{i}")
        text = right.text_input(f"Values of axis {i + 1}", value=values, key=f"values{i}")
        if param != "(none)" and text.strip():
            axes.append((param, tuple(v.strip() for v in text.split(",") if v.strip())))
    try:
        settings = expand(config, [SweepAxis(param, values) for param, values in axes])
    except InputError as exc:
        st.error(str(exc))
        settings = []
    if settings:
        seconds = sum(job_queue().estimate_seconds(c, aspect=content.height / content.width) for _, c in settings)
        st.caption(f"{len(settings)} runs, about {seconds:.0f} s in all on this device.")
    if st.button("Run sweep", disabled=not settings or not fits, key="sweep_pressed"):
        try:
            handle = submit_sweep(job_queue(), config, [SweepAxis(p, v) for p, v in axes], inputs.content,
                                  inputs.styles, owner=auth.owner(), mask=inputs.mask,
                                  style_masks=inputs.style_masks)  # fmt: skip
        except InputError as exc:
            refused(exc)
        st.switch_page("views/sweep.py", query_params={"run": handle.parent_run_id})
