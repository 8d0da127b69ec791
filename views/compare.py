"""Compare: several runs side by side (`?runs=<id>,<id>,…`, a shareable permalink).

Results at one size with their inputs, the settings that differ, every run's cost curves overlaid, the
final style cost per layer, and for two runs an A/B swipe, a flicker and a difference heat-map. All of it
is read from MLflow; the decisions (what differs, sizes, colours) live in engine/compare.py.
"""

from __future__ import annotations

import html

import altair as alt
import pandas as pd
import streamlit as st
from PIL import Image

from engine import tracking
from engine.core.errors import InputError
from engine.studies import compare
from views.common import mlflow_ui_base, store_down, store_failed, store_label, tracking_uri
from views.regions import regions_caption

STATUS_ICON = {
    "FINISHED": ":material/check_circle:", "RUNNING": ":material/autorenew:", "SCHEDULED": ":material/schedule:",
    "FAILED": ":material/error:", "KILLED": ":material/cancel:",
}  # fmt: skip
TERMINAL = ("FINISHED", "FAILED", "KILLED")
DISPLAY_LONG_SIDE = 1024  # results are shown at most this large (the smallest common size otherwise)
PER_ROW = 4


@st.cache_data(max_entries=64, show_spinner=False)
def finished_history(uri: str, run_id: str) -> pd.DataFrame:
    """A finished run's metric history never changes: read it once per server."""
    return tracking.metric_history(uri, run_id)


def history(uri: str, run: tracking.RunSummary) -> pd.DataFrame:
    if run.status in TERMINAL:
        return finished_history(uri, run.run_id)
    return tracking.metric_history(uri, run.run_id)


def result_path(uri: str, run: tracking.RunSummary) -> tuple[str | None, str]:
    """The run's result, else its latest snapshot of G (a run still going, or one that failed)."""
    try:
        return tracking.download_artifact(uri, run.run_id, "result.png"), "result"
    except InputError:
        pass
    snapshots = tracking.image_steps(uri, run.run_id)
    if snapshots:
        return snapshots[-1][1], f"G at step {snapshots[-1][0]}"
    return None, "no image yet"


def input_paths(uri: str, run: tracking.RunSummary) -> list[tuple[str, str]]:
    """(caption, local path) of the run's content and style images."""
    count = int(run.params.get("style_images", "1") or 1)
    names = [("content C", "inputs/content.png"), ("style S", tracking.style_artifact(0))]
    names += [(f"style S{i + 1}", tracking.style_artifact(i)) for i in range(1, count)]
    if regions_caption(run.params):
        names.append(("mask", "inputs/mask.png"))
    paths = []
    for caption, name in names:
        try:
            paths.append((caption, tracking.download_artifact(uri, run.run_id, name)))
        except InputError:
            continue
    return paths


def open_image(path: str) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


def pick_runs_help() -> None:
    st.info(
        "Pick two or more runs to compare: on the Runs page tick **compare** under each, then follow "
        "**Compare N runs**. The address of this page (`/compare?runs=<id>,<id>,…`) is a permalink to "
        "share."
    )
    st.page_link("views/runs.py", label="Open the Runs page", icon=":material/history:")
    st.stop()


def color_scale(labels: list[str]) -> alt.Scale:
    """The same colour for a run in every chart and caption."""
    colors = compare.run_colors(labels)
    return alt.Scale(domain=list(colors), range=list(colors.values()))


def legend(labels: list[str]) -> None:
    """One legend for a grid of small charts (each chart's own legend would crowd it)."""
    items = [
        f'<span style="color:{color}; font-size:1.2em">■</span>&nbsp;{html.escape(label)}'
        for label, color in compare.run_colors(labels).items()
    ]
    st.markdown("&emsp;".join(items), unsafe_allow_html=True)


def results_row(runs: list[tracking.RunSummary], labels: list[str], images: dict[str, Image.Image],
                kinds: dict[str, str], masks: dict[str, str]) -> None:  # fmt: skip
    """Each run's result, with its mask beside it when it has regions (`masks`: run id → local path)."""
    shown = compare.same_size([images[r.run_id] for r in runs if r.run_id in images], DISPLAY_LONG_SIDE)
    by_id = dict(zip([r.run_id for r in runs if r.run_id in images], shown, strict=True))
    for start in range(0, len(runs), PER_ROW):
        columns = st.columns(PER_ROW if len(runs) > PER_ROW else len(runs))
        for column, run, label in zip(columns, runs[start : start + PER_ROW], labels[start : start + PER_ROW],
                                      strict=False):  # fmt: skip
            with column:
                result, mask = st.columns([3, 1]) if run.run_id in masks else (st.container(), None)
                if run.run_id in by_id:
                    result.image(by_id[run.run_id], width="stretch", alt=f"result of run {run.run_id}")
                else:
                    result.caption("No image yet.")
                if mask is not None:
                    mask.image(masks[run.run_id], width="stretch", alt=f"mask of run {run.run_id}",
                               caption=regions_caption(run.params))  # fmt: skip
                st.page_link("views/runs.py", label=label, icon=STATUS_ICON.get(run.status),
                             query_params={"run": run.run_id})  # fmt: skip
                st.caption(f"`{run.run_id[:8]}` · {run.status.lower()} · {kinds[run.run_id]}")


def inputs_expander(uri: str, runs: list[tracking.RunSummary], labels: list[str]) -> None:
    shared = compare.same_inputs({r.run_id: r.tags for r in runs})
    title = "Inputs (the same content and style for every run)" if shared else "Inputs of each run"
    with st.expander(title, expanded=not shared):
        if shared:
            paths = input_paths(uri, runs[0])
            columns = st.columns(max(1, len(paths)))
            for column, (caption, path) in zip(columns, paths, strict=True):
                column.image(path, caption=caption, width="stretch")
            return
        columns = st.columns(min(len(runs), PER_ROW))
        for i, (run, label) in enumerate(zip(runs, labels, strict=True)):
            with columns[i % len(columns)]:
                st.markdown(f"**{label}**")
                paths = input_paths(uri, run)
                inner = st.columns(max(1, len(paths)))
                for column, (caption, path) in zip(inner, paths, strict=True):
                    column.image(path, caption=caption, width="stretch")


def settings_section(runs: list[tracking.RunSummary], labels: list[str]) -> None:
    st.subheader("Settings that differ")
    params = {label: run.params for run, label in zip(runs, labels, strict=True)}
    differ = compare.differing_params(params)
    if differ.empty:
        st.success("All settings are the same.")
    else:
        st.dataframe(differ.fillna("—"), width="stretch")
    if st.toggle("Show all settings", key="all_settings"):
        keys = sorted(set().union(*(p.keys() for p in params.values())))
        table = pd.DataFrame({label: [p.get(k, "—") for k in keys] for label, p in params.items()}, index=keys)
        table.index.name = "param"
        highlight = table.style.apply(
            lambda row: ["background-color: rgba(255, 196, 0, 0.25)" if row.name in differ.index else ""] * len(row),
            axis=1,
        )
        st.dataframe(highlight, width="stretch")


def cost_section(uri: str, runs: list[tracking.RunSummary], labels: list[str]) -> None:
    scale = color_scale(labels)
    uses_tv = any(float(run.params.get("tv_weight", "0") or 0) > 0 for run in runs)
    histories = {label: history(uri, run) for run, label in zip(runs, labels, strict=True)}
    curves = compare.cost_curves(histories, tv=uses_tv)
    st.subheader("Costs per step")
    if curves.empty:
        st.caption("No costs logged yet.")
    else:
        st.caption("Each cost as logged at every step (J_style[l] unweighted), one colour per run, log scale.")
        keys = compare.cost_keys(set(curves["key"]))
        legend(labels)
        columns = st.columns(3)
        for i, key in enumerate(keys):
            data = curves[curves["key"] == key]
            chart = (
                alt.Chart(data, title=key)
                .mark_line()
                .encode(
                    x=alt.X("step:Q", title="step", axis=alt.Axis(format="d", tickMinStep=1)),
                    y=alt.Y("value:Q", scale=alt.Scale(type="log"), title=None),
                    color=alt.Color("run:N", scale=scale, legend=None),
                    tooltip=["run", "step", alt.Tooltip("value:Q", format=".4g")],
                )
                .properties(height=220)
            )
            columns[i % 3].altair_chart(chart, width="stretch")

    finals = compare.final_layer_costs({label: run.metrics for run, label in zip(runs, labels, strict=True)})
    if not finals.empty:
        st.subheader("Final costs per layer")
        st.caption("J_style[l] of each run's result (unweighted by λ), log scale.")
        layers = list(dict.fromkeys(finals["layer"]))
        chart = (
            alt.Chart(finals)
            .mark_bar()
            .encode(
                x=alt.X("layer:N", sort=layers, title="style layer", axis=alt.Axis(labelAngle=0)),
                xOffset=alt.XOffset("run:N", sort=labels),
                y=alt.Y("cost:Q", scale=alt.Scale(type="log"), stack=None, title="J_style[l] (log)"),
                color=alt.Color("run:N", scale=scale, title=None, legend=alt.Legend(orient="top")),
                tooltip=["run", "layer", alt.Tooltip("cost:Q", format=".4g")],
            )
            .properties(height=360)
        )
        st.altair_chart(chart, width="stretch")

    quality = compare.quality_points({label: run.metrics for run, label in zip(runs, labels, strict=True)})
    if not quality.empty:
        st.subheader("Quality: content vs style")
        st.caption(
            "Each result's content and style costs under one fixed reference setting (the same layers, λ and size "
            "for every run), so runs with different settings compare: lower is closer to the content, resp. the style."
        )
        chart = (
            alt.Chart(quality)
            .mark_circle(size=120)
            .encode(
                x=alt.X("content:Q", title="quality/content", scale=alt.Scale(zero=False, padding=40)),
                y=alt.Y("style:Q", title="quality/style", scale=alt.Scale(zero=False, padding=40)),
                color=alt.Color("run:N", scale=scale, title=None, legend=alt.Legend(orient="top")),
                tooltip=["run", alt.Tooltip("content:Q", format=".4g"), alt.Tooltip("style:Q", format=".4g")],
            )
            .properties(height=300)
        )
        st.altair_chart(chart, width="stretch")


@st.fragment
def swipe_view(a: Image.Image, b: Image.Image, labels: list[str]) -> None:
    """The slider reruns only this fragment, not the page."""
    fraction = st.slider("Swipe", 0, 100, 50, format="%d%%", key="swipe",
                         help=f"left of the line: {labels[0]}; right: {labels[1]}")  # fmt: skip
    st.image(compare.swipe(a, b, fraction / 100), width="stretch", alt="swipe A/B",
             caption=f"◀ {labels[0]} | {labels[1]} ▶")  # fmt: skip


def ab_section(a: Image.Image, b: Image.Image, labels: list[str]) -> None:
    """Two runs: swipe, flicker and the difference heat-map."""
    st.subheader("A/B")
    left, right = st.columns(2)
    with left:
        swipe_view(a, b, labels)
        with st.expander("Flicker A/B"):
            st.image(compare.flicker_gif(a, b), width="stretch", alt="flicker A/B",
                     caption="A and B alternate every 0.7 s")  # fmt: skip
    with right:
        differences = compare.pixel_differences(a, b)
        vmax = compare.heatmap_scale(differences)
        heatmap, mean = compare.difference_heatmap(a, b, vmax=vmax)
        st.markdown("**Difference**")
        st.image(heatmap, width="stretch", alt="difference heat-map")
        st.image(compare.colorbar(), width="stretch", alt="colour key")
        st.caption(
            f"Colour key: 0 (identical) … {vmax:.3f} or more (the 99th percentile of this pair). Per pixel "
            f"|A − B| averaged over R, G, B, on a 0–1 scale. Mean difference **{mean:.3f}** "
            f"({100 * mean:.1f} % of the range)."
        )


uri = tracking_uri()
run_ids = compare.parse_run_ids(st.query_params.get("runs"))
st.title("Compare runs")
if run_ids and (down := store_down()):
    st.warning(down, icon=":material/cloud_off:")
    st.stop()

runs: list[tracking.RunSummary] = []
unknown: list[str] = []
malformed = [rid for rid in run_ids if not tracking.is_run_id(rid)]  # never sent to the store
for rid in run_ids:
    if rid in malformed:
        continue
    try:
        runs.append(tracking.load_run(uri, rid))
    except InputError as exc:
        if store_down(fresh=True):
            store_failed(exc)
        unknown.append(rid)
deleted = [run for run in runs if tracking.deletion_of(run.tags, run.lifecycle_deleted) is not None]
runs = [run for run in runs if run not in deleted]
others = "; showing the others." if len(runs) >= 2 else "."
if deleted:
    st.warning(
        f"Deleted, so not shown: {', '.join(f'`{run.run_id}` ({run.name})' for run in deleted)}{others}",
        icon=":material/delete:",
    )
if malformed:
    shown = ", ".join(tracking.shown_id(rid) for rid in malformed)
    what = "Not run ids" if len(malformed) > 1 else "Not a run id"
    st.error(f"{what}: {shown} (run ids are 32 hexadecimal characters, 0-9 and a-f){others}", icon="⚠️")
if unknown:
    st.error(
        f"No run{'s' if len(unknown) > 1 else ''} {', '.join(f'`{rid}`' for rid in unknown)} in the MLflow "
        f"store ({store_label(uri)}){others}",
        icon="⚠️",
    )
if len(runs) < 2:
    pick_runs_help()

labels = compare.run_labels([run.name for run in runs])
links = tracking.mlflow_ui_links(mlflow_ui_base(), [run.experiment_id for run in runs], [r.run_id for r in runs])
st.link_button(f"Open these {len(runs)} runs in the MLflow UI's compare view", links.compare,
               icon=":material/open_in_new:")  # fmt: skip

images: dict[str, Image.Image] = {}
kinds: dict[str, str] = {}
masks: dict[str, str] = {}
try:
    for run in runs:
        path, kinds[run.run_id] = result_path(uri, run)
        if path is not None:
            images[run.run_id] = open_image(path)
        if regions_caption(run.params):
            masks[run.run_id] = tracking.download_artifact(uri, run.run_id, "inputs/mask.png")
except Exception as exc:
    store_failed(exc)
if any(run.status not in TERMINAL for run in runs):
    st.caption("Some runs are still going: reload the page for their latest state.")
results_row(runs, labels, images, kinds, masks)
try:
    inputs_expander(uri, runs, labels)
    settings_section(runs, labels)
    if len(runs) == 2:
        a, b = runs
        if a.run_id in images and b.run_id in images:
            ab_section(images[a.run_id], images[b.run_id], labels)
        else:
            st.caption("The A/B views need an image of both runs.")
    cost_section(uri, runs, labels)
except Exception as exc:
    store_failed(exc)
