"""Layers: what each VGG19 layer sees (feature maps, strongest channels, the patches that excite a channel),
the style (Gram) matrices of S, C and a run's G, and per-layer reconstruction strips (Gatys et al. 2016,
Fig. 1), each layer a tracked run. `?strip=<parent run id>` reopens a strip. The logic is in engine/explore.py.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st
from PIL import Image

from engine import tracking
from engine.core import images
from engine.core.config import GATYS_STYLE_LAYERS
from engine.core.errors import InputError
from engine.core.vgg import LAYER_NAMES
from engine.studies import explore
from views import auth
from views.common import (
    input_error,
    job_queue,
    read_failed,
    store_down,
    store_failed,
    tracking_uri,
    visitor_text,
)
from views.uploads import UPLOAD_LIMITS, UPLOAD_TYPES

ACTIVE = ("SCHEDULED", "RUNNING")
RELU_LAYERS = [name for name in LAYER_NAMES if name.startswith("relu")]


@st.cache_data(max_entries=16, show_spinner=False)
def _decode(data: bytes, name: str) -> Image.Image:
    return images.load_image(data, name=name)


@st.cache_data(max_entries=32, show_spinner=False)
def _analysis(data: bytes, layer: str, size: int, k: int):
    img = images.resize_long_side(_decode(data, "image"), size)
    strengths = explore.channel_strengths(img, layer).numpy()
    top = explore.top_channels(img, layer, k)
    return img, strengths, top, explore.feature_map_grid(img, layer, top, tile=128, columns=4 if k <= 16 else 8)


@st.cache_data(max_entries=32, show_spinner=False)
def _patches(data: bytes, layer: str, size: int, channel: int, k: int):
    img = images.resize_long_side(_decode(data, "image"), size)
    return explore.top_patches(img, layer, channel, k)


@st.cache_data(max_entries=32, show_spinner=False)
def _gram(data: bytes, layer: str, size: int):
    return explore.gram_heatmap(_decode(data, "image"), layer, size)


def recent_runs() -> pd.DataFrame:
    """Finished single runs (no sweep or strip parents), newest first."""
    if store_down():
        return pd.DataFrame(columns=["run_id", "run_name"])
    try:
        runs = tracking.list_runs(tracking_uri(), tracking.DEFAULT_EXPERIMENT, "attributes.status = 'FINISHED'", 50)
    except Exception:  # an unreadable store only hides the list
        return pd.DataFrame(columns=["run_id", "run_name"])
    for tag in ("tags.sweep.role", "tags.explorer.role"):
        if tag in runs:
            runs = runs[runs[tag].isna()]
    return runs


def run_label(runs: pd.DataFrame, run_id: str) -> str:
    name = runs.loc[runs["run_id"] == run_id, "run_name"]
    return f"{name.iloc[0] if len(name) else run_id} ({run_id[:8]})"


# --------------------------------------------------------------------------------------------------
# Strips


def child_image(run_id: str, status: str) -> tuple[Image.Image | None, str]:
    """The child's current G (the queue's memory while it runs, result.png once done) and its state."""
    progress = job_queue().progress(run_id)
    if progress is not None and not progress.done:
        if progress.state == "SCHEDULED":
            return None, f"queued ({progress.position})"
        return progress.image, f"step {progress.step}/{progress.total_steps}"
    try:
        return Image.open(tracking.download_artifact(tracking_uri(), run_id, "result.png")), status.lower()
    except InputError:
        return None, status.lower()


def strip_view(parent_id: str) -> bool:
    """Draw the strip; True while any layer is still queued or running."""
    children = explore.strip_children(tracking_uri(), parent_id)
    if not children:
        st.caption("No runs in this strip yet.")
        return True
    shown, states = [], []
    for _, run_id, status in children:
        image, state = child_image(run_id, status)
        shown.append(image)
        states.append(state)
    labels = [label for label, _, _ in children]
    st.image(explore.strip_image(shown, labels, tile=160), caption=" | ".join(labels))
    columns = st.columns(len(children))
    for column, (label, run_id, _), state in zip(columns, children, states, strict=True):
        column.page_link("views/runs.py", label=label, query_params={"run": run_id})
        column.caption(state)
    progress = [job_queue().progress(run_id) for _, run_id, _ in children]
    return any(p is not None and not p.done for p in progress) or any(s in ACTIVE for _, _, s in children)


@st.fragment(run_every=1.0)
def live_strip(parent_id: str, refused: str | None = None) -> None:
    try:
        going = strip_view(parent_id)
        # every layer ended, and the job service has ended the parent: show the finished strip
        ended = not going and tracking.load_run(tracking_uri(), parent_id).status not in ACTIVE
    except Exception as exc:
        store_failed(exc)
    if ended:
        st.rerun()
    if st.button("Cancel this strip", key=f"cancel_{parent_id}", disabled=refused is not None, help=refused):
        try:
            for _, run_id, _ in explore.strip_children(tracking_uri(), parent_id):
                job_queue().cancel(run_id, actor=auth.actor())
        except InputError as exc:
            input_error(exc)


def show_strip(parent_id: str) -> None:
    if store_down():
        st.caption(f"Strip `{parent_id}` shows again when the tracking store is back.")
        return
    try:
        parent = tracking.load_run(tracking_uri(), parent_id)
    except InputError as exc:
        st.warning(f"Cannot open the strip in this address: {visitor_text(exc)}")
        return
    st.markdown(f"**{parent.name}** · `{parent_id}` · {parent.status.lower()}")
    if parent.status in ACTIVE:
        live_strip(parent_id, auth.refusal(parent.tags, "cancel"))
    else:
        try:
            strip_view(parent_id)
        except Exception as exc:
            store_failed(exc)


# --------------------------------------------------------------------------------------------------
# The page

st.title("Layers")
st.caption(
    "What each VGG19 layer sees in your images, and what each layer's style adds: choose λ knowingly. "
    "Sizes are small by default so this fits a CPU."
)

if "run" in st.query_params:  # not this page's parameter (a run page's address with /layers in it?)
    st.info(
        "This page takes no run in its address. To see what the layers see in a run's inputs, pick the run "
        "under 'Or use the inputs of a recent run'; `?strip=<parent id>` reopens a reconstruction strip."
    )
if down := store_down():
    st.warning(f"{down} Uploads work here meanwhile.", icon=":material/cloud_off:")
runs = recent_runs()
left, middle, right = st.columns(3)
with left:
    content_file = st.file_uploader("Image (content C)", type=UPLOAD_TYPES, key="layers_content", help=UPLOAD_LIMITS)
with middle:
    style_file = st.file_uploader("Style image S", type=UPLOAD_TYPES, key="layers_style", help=UPLOAD_LIMITS)
with right:
    source_run = st.selectbox(
        "Or use the inputs of a recent run", [None, *runs["run_id"]],
        format_func=lambda r: "(none)" if r is None else run_label(runs, r), key="layers_source_run",
    )  # fmt: skip

content_bytes = content_file.getvalue() if content_file else None
style_bytes = style_file.getvalue() if style_file else None
if source_run and (content_bytes is None or style_bytes is None):
    try:
        run_inputs = tracking.load_inputs(tracking_uri(), source_run)
    except Exception as exc:
        read_failed(exc)
    content_bytes = content_bytes or run_inputs.content.png
    style_bytes = style_bytes or run_inputs.styles[0].png

strip_ids = list(dict.fromkeys([*st.session_state.get("layers_strips", []),
                                *filter(None, [st.query_params.get("strip")])]))  # fmt: skip

if content_bytes is None and style_bytes is None:
    st.info("Upload an image (or pick a recent run) to see what each layer sees.")
    for parent_id in reversed(strip_ids):
        show_strip(parent_id)
    st.stop()

try:
    inputs = {}
    if content_bytes is not None:
        inputs["content"] = (content_bytes, _decode(content_bytes, "content image"))
    if style_bytes is not None:
        inputs["style"] = (style_bytes, _decode(style_bytes, "style image"))
except InputError as exc:
    input_error(exc)

# -- Activations ---------------------------------------------------------------------------------------
st.subheader("Activations")
controls = st.columns(4)
which = controls[0].selectbox("Image", list(inputs), key="layers_which")
layer = controls[1].selectbox("Layer", RELU_LAYERS, index=RELU_LAYERS.index("relu3_1"), key="layers_layer")
size = int(controls[2].number_input("Analysis size (px)", 32, 512, 128, step=32, key="layers_size"))
k = int(controls[3].slider("Channels shown", 4, 32, 16, step=4, key="layers_k"))
data = inputs[which][0]
with st.spinner("Running VGG19…"):
    analysed, strengths, top, grid = _analysis(data, layer, size, k)
grid_column, chart_column = st.columns([3, 2])
grid_column.image(grid, caption=f"Strongest {len(top)} channels of {layer} (each map normalised to its own range)")
with chart_column:
    bar_count = min(64, len(strengths))
    st.caption(f"Mean activation per channel of {layer}: the {bar_count} strongest of its {len(strengths)} channels")
    order = strengths.argsort()[::-1]
    frame = pd.DataFrame({"channel": [f"ch {c}" for c in order], "strength": strengths[order]})
    st.bar_chart(frame.head(bar_count), x="channel", y="strength", sort="-strength", height=260)
    st.caption("Strongest: " + ", ".join(f"ch {c} ({strengths[c]:.3g})" for c in top[:8]))

channel = st.selectbox("Channel for the top patches", top, format_func=lambda c: f"ch {c}", key="layers_channel")
found = _patches(data, layer, size, int(channel), 8)
side = explore.patch_size(layer, analysed.size)
st.caption(f"The {len(found)} patches of the image ({side}×{side} px at {size} px) that excite ch {channel} most")
for column, (patch, score) in zip(st.columns(len(found)), found, strict=True):
    column.image(patch.resize((96, 96), Image.Resampling.NEAREST), caption=f"{score:.3g}")

# -- Style matrices ------------------------------------------------------------------------------------
st.subheader("Style matrices")
gram_controls = st.columns(3)
gram_layer = gram_controls[0].selectbox(
    "Layer", list(GATYS_STYLE_LAYERS) + [n for n in RELU_LAYERS if n not in GATYS_STYLE_LAYERS], key="layers_gram"
)
g_run = gram_controls[1].selectbox(
    "G of a run", [None, *runs["run_id"]], format_func=lambda r: "(none)" if r is None else run_label(runs, r),
    index=1 if source_run is None and len(runs) else (list(runs["run_id"]).index(source_run) + 1 if source_run else 0),
    key="layers_g_run",
)  # fmt: skip
gram_size = int(gram_controls[2].number_input("Gram size (px)", 32, 512, explore.DEFAULT_SIZE, step=32,
                                              key="layers_gram_size"))  # fmt: skip
grams: dict[str, tuple[Image.Image, object]] = {}
for name in ("style", "content"):
    if name in inputs:
        grams[name] = _gram(inputs[name][0], gram_layer, gram_size)
if g_run:
    try:
        grams["G"] = _gram(Path(tracking.download_artifact(tracking_uri(), g_run, "result.png")).read_bytes(),
                           gram_layer, gram_size)  # fmt: skip
    except InputError as exc:
        st.warning(f"No result to read from run {g_run}: {visitor_text(exc)}")
other = "G" if "G" in grams else "content"
if "style" in grams and other in grams:
    diff_image, _, cost = explore.gram_difference(grams["style"][1], grams[other][1])
    grams[f"style − {other}"] = (diff_image, None)
columns = st.columns(max(len(grams), 1))
n_c = explore.channel_count(gram_layer)
for column, (name, (heatmap, _)) in zip(columns, grams.items(), strict=False):
    column.image(heatmap, caption=f"{name}: G[{gram_layer}]/(n_H·n_W), {n_c}×{n_c}", width="stretch")
if "style" in grams and other in grams:
    st.caption(
        f"Red: the style has more of that channel pair; blue: {other} has more. J_style[{gram_layer}] of "
        f"{other} against S = {cost:.4g}. Heat-maps of 512 channels are block-averaged to 128×128."
    )

# -- Reconstructions -----------------------------------------------------------------------------------
st.subheader("Per-layer reconstructions")
st.caption(
    "Gatys et al. 2016, Fig. 1: content reconstructed from one layer at a time; style from growing sets of "
    "layers; and each style layer alone (λ = 1, content weight 0). All start from the same white noise; "
    "every image is a tracked run (source explorer) in the history and the compare page."
)
strip_controls = st.columns(3)
strip_size = int(strip_controls[0].number_input("Strip size (px)", 16, 512, explore.DEFAULT_SIZE, step=16,
                                                key="layers_strip_size"))  # fmt: skip
strip_steps = int(strip_controls[1].number_input("Steps per layer", 1, 2000, explore.DEFAULT_STEPS,
                                                 key="layers_strip_steps"))  # fmt: skip
strip_seed = int(strip_controls[2].number_input("Seed", 0, 2**31 - 1, explore.DEFAULT_SEED, key="layers_strip_seed"))
buttons = st.columns(3)
for column, kind in zip(buttons, explore.KINDS, strict=True):
    if column.button(explore.KIND_TITLES[kind], key=f"layers_start_{kind}"):
        if "content" not in inputs or "style" not in inputs:
            st.warning("Reconstructions need both a content and a style image.")
            st.stop()
        try:
            parent_id, _ = explore.submit_strip(
                job_queue(), kind, inputs["content"][0], inputs["style"][0], size=strip_size, steps=strip_steps,
                seed=strip_seed, owner=auth.owner(),
            )  # fmt: skip
        except InputError as exc:
            input_error(exc)
        st.session_state["layers_strips"] = [*st.session_state.get("layers_strips", []), parent_id]
        strip_ids.append(parent_id)
        st.query_params["strip"] = parent_id

for parent_id in reversed(strip_ids):
    show_strip(parent_id)
