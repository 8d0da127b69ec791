"""Runs: the history gallery, or one run (`?run=<id>`, a permalink) with live progress while it goes.

Everything shown is read from MLflow, except the live view of a run this server is computing, which
reads the job queue's memory (faster) and falls back to what MLflow holds for runs of other workers.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from engine import tracking
from engine.core.errors import InputError
from views import auth
from views.common import (
    cost_chart,
    cost_contributions,
    input_error,
    job_queue,
    mlflow_ui_base,
    store_down,
    store_failed,
    tracking_uri,
    visitor_text,
)
from views.live import LIVE_READ_EVERY_S, freeze_startup_heap, live_frame
from views.regions import regions_caption

ACTIVE = ("SCHEDULED", "RUNNING")
STATUS_ICON = {
    "FINISHED": ":material/check_circle:", "RUNNING": ":material/autorenew:", "SCHEDULED": ":material/schedule:",
    "FAILED": ":material/error:", "KILLED": ":material/cancel:",
}  # fmt: skip


def run_page(run_id: str) -> None:
    try:  # the id comes from the address: checked before it reaches the store or a folder name
        tracking.check_run_id(run_id)
    except InputError as exc:
        input_error(exc)
    if store_down():
        waiting_view(run_id)
        return
    try:
        run = tracking.load_run(tracking_uri(), run_id)
    except InputError as exc:
        if store_down(fresh=True):  # it died since the check
            waiting_view(run_id)
            return
        input_error(exc)
    if auth.deleted_notice(run):
        return
    if run.tags.get("sweep.role") == "parent":  # a sweep's parent has a grid, not one image
        st.switch_page("views/sweep.py", query_params={"run": run_id})
    st.title(run.name)
    links = tracking.mlflow_ui_links(mlflow_ui_base(), run.experiment_id, [run_id])
    status = "" if run.status in ACTIVE else f"{run.status.lower()} · "  # the live view shows its own state
    owner = f"by {owner} · " if (owner := tracking.run_owner(run.tags)) else ""
    st.caption(
        f"{STATUS_ICON.get(run.status, '')} Run `{run_id}` · {status}{owner}source {run.tags.get('source', '?')} · "
        f"device {run.tags.get('device_name', run.tags.get('device', '?'))} · "
        + (f"{plan} · " if "tiles" in (plan := run.tags.get("memory_plan", "")) else "")
        + f"[open in the MLflow UI]({links.runs[run_id]})"
    )
    auth.delete_control(run, job_queue().delete)
    if run.status in ACTIVE:
        if saved_locally(run_id):  # over, but its store failed: not written back yet
            waiting_view(run_id)
        else:
            live_view(run_id, run.params, run.tags)
        return
    if run.status == "FAILED":
        st.error(f"This run failed: {visitor_text(run.tags.get('failure_reason', 'no reason was recorded'))}")
    elif run.status == "KILLED":
        st.warning("This run was cancelled; the result is the best image before it stopped.")
    try:
        finished_view(run)
    except Exception as exc:
        store_failed(exc)


def saved_locally(run_id: str) -> str | None:
    """Where this server saved the run, when it is over but its store failed during it and it is not
    written back yet: the worker's warning (it names the folder), else the folder found on disk."""
    queue = job_queue()
    progress = queue.progress(run_id)
    if progress is not None and progress.done and progress.warning:
        return visitor_text(progress.warning)
    folder = tracking.saved_folder(queue.fallback_root, run_id)
    if (folder / "metrics.json").is_file() and not tracking.is_written_back(folder):
        return visitor_text(
            f"The tracking store failed during this run; its result, config and metrics were saved in {folder}."
        )
    return None


@st.fragment(run_every=2.0)
def waiting_view(run_id: str) -> None:
    """A run this page cannot read from the store (down), or whose record waits to be written back:
    what this server knows of it. Reruns the page once the store has the run again."""
    down = store_down()
    saved = saved_locally(run_id)
    if not down:
        try:
            terminal = tracking.load_run(tracking_uri(), run_id).status not in ACTIVE
        except InputError:
            terminal = False
        if terminal or not saved:
            st.rerun()
    st.title(f"Run {run_id[:8]}")
    if down:
        st.warning(down, icon=":material/cloud_off:")
    progress = job_queue().progress(run_id)
    if progress is not None and not progress.done:
        st.progress(progress.step / progress.total_steps,
                    text=f"step {progress.step} of {progress.total_steps} (computed here; not logged while the "
                    "store is down)")  # fmt: skip
    elif progress is not None:
        ended = {"FINISHED": "finished", "FAILED": "failed", "KILLED": "was cancelled"}.get(progress.state, "ended")
        st.info(f"This run {ended} on this server{f': {visitor_text(progress.error)}' if progress.error else '.'}")
    if saved:
        st.info(
            f"{saved} It is written back to MLflow (metrics, result, status) when the store answers again; "
            "this page then shows it.",
            icon=":material/save:",
        )
    if progress is not None and progress.image is not None:
        st.image(progress.image, caption="result G" if progress.done else f"G at step {progress.step}", width=384)
    elif progress is None and not saved:
        st.caption("This server does not compute this run; its page shows again when the store is back.")


@st.fragment(run_every=LIVE_READ_EVERY_S)
def live_view(run_id: str, params: dict[str, str], tags: dict[str, str]) -> None:
    """Progress of a queued or running job; reruns the page once the run is over.

    Every viewer of a run draws the same shared frame (`live_frame`: one read per interval per run, not
    one per viewer), and the chart and G are the very same objects until they change, so a tick costs
    each viewer a few small elements, not a chart and an image built anew."""
    freeze_startup_heap()
    try:
        frame = live_frame(run_id, params)
    except Exception as exc:  # the store is down: say so, do not hang
        store_failed(exc)
    if frame.state not in ACTIVE:
        st.rerun()
    if frame.state == "SCHEDULED" and not frame.remote:
        st.info(f"Waiting in the queue: position {frame.position}.")
    else:
        eta = f", about {frame.eta_s:.0f} s left" if frame.eta_s is not None else ""
        where = " (from MLflow; another worker computes this run)" if frame.remote else ""
        text = f"step {frame.step} of {frame.total_steps}{eta}{where}"
        st.progress(min(1.0, frame.step / frame.total_steps), text=text)
        if frame.warning:
            st.caption(frame.warning)
    image_column, chart_column = st.columns([2, 3])
    if frame.image is not None:
        image_column.image(frame.image, caption=f"G at step {frame.image_step}", width="stretch")
    with chart_column:
        if frame.chart is None:
            st.caption("No costs logged yet.")
        else:
            st.vega_lite_chart(spec=frame.chart, width="stretch")
    refused = auth.refusal(tags, "cancel")
    if st.button("Cancel this run", disabled=refused is not None, help=refused):
        try:
            job_queue().cancel(run_id, actor=auth.actor())
        except InputError as exc:
            input_error(exc)


def finished_view(run: tracking.RunSummary) -> None:
    uri = tracking_uri()
    columns = st.columns(3)
    try:
        result_path = tracking.download_artifact(uri, run.run_id, "result.png")
    except InputError:
        result_path = None
    content_path = tracking.download_artifact(uri, run.run_id, "inputs/content.png")
    style_path = tracking.download_artifact(uri, run.run_id, tracking.style_artifact(0))
    columns[0].image(content_path, caption="content C", width="stretch")
    if regions_caption(run.params):  # the mask under the content: which part took which style
        mask_path = tracking.download_artifact(uri, run.run_id, "inputs/mask.png")
        columns[0].image(mask_path, caption="mask: " + regions_caption(run.params), width="stretch")
    columns[1].image(style_path, caption="style S", width="stretch")
    if result_path:
        columns[2].image(result_path, caption="result G", width="stretch")
        columns[2].download_button(
            "Download result.png", Path(result_path).read_bytes(), file_name=f"stylelab-{run.run_id}.png",
            mime="image/png",
        )  # fmt: skip
    st.page_link("views/studio.py", label="Clone these settings into the studio", icon=":material/content_copy:",
                 query_params={"clone": run.run_id})  # fmt: skip

    final = {k.removeprefix("final/"): v for k, v in run.metrics.items() if k.startswith("final/")}
    if final:
        st.subheader("Final costs")
        st.table(pd.DataFrame([final]).T.rename(columns={0: "cost"}))

    st.subheader("Costs per step")
    cost_chart(cost_contributions(tracking.metric_history(uri, run.run_id), run.params))

    snapshots = tracking.image_steps(uri, run.run_id)
    if snapshots:
        st.subheader("Evolution of G")
        steps = [step for step, _ in snapshots]
        chosen = st.select_slider("Step", options=steps, value=steps[-1])
        st.image(dict(snapshots)[chosen], caption=f"G at step {chosen}", width=384)

    st.subheader("Settings")
    st.dataframe(pd.DataFrame(sorted(run.params.items()), columns=["param", "value"]), hide_index=True)


def history_page() -> None:
    st.title("Runs")
    if down := store_down():
        st.warning(down, icon=":material/cloud_off:")
        st.stop()
    try:
        runs = tracking.list_runs(tracking_uri(), tracking.DEFAULT_EXPERIMENT)
    except Exception as exc:
        store_failed(exc)
    if runs.empty:
        st.info("No runs yet. Start one in the studio.")
        st.page_link("views/studio.py", label="Open the studio", icon=":material/palette:")
        return
    statuses = st.multiselect("Status", sorted(runs["status"].unique()), placeholder="any status")
    text = st.text_input("Name contains", placeholder="e.g. 256px")
    if auth.sign_in_enabled() and st.toggle("Only my runs", key="mine"):
        runs = runs[auth.mine(runs)]
        if runs.empty:
            st.info("You have no runs yet. Start one in the studio.")
    if statuses:
        runs = runs[runs["status"].isin(statuses)]
    if text:
        runs = runs[runs["run_name"].str.contains(text, case=False, regex=False)]
    selected = []
    columns = st.columns(4)
    for i, (_, run) in enumerate(runs.iterrows()):
        with columns[i % 4].container(border=True):
            if isinstance(run["thumbnail_path"], str):
                st.image(run["thumbnail_path"], width="stretch")
            st.page_link("views/runs.py", label=f"{STATUS_ICON.get(run['status'], '')} {run['run_name']}",
                         query_params={"run": run["run_id"]})  # fmt: skip
            st.caption(_summary(run))
            if st.checkbox("compare", key=f"compare_{run['run_id']}"):
                selected.append(run["run_id"])
    if len(selected) >= 2:
        experiment_id = tracking.load_run(tracking_uri(), selected[0]).experiment_id
        links = tracking.mlflow_ui_links(mlflow_ui_base(), experiment_id, selected)
        with st.container(horizontal=True, vertical_alignment="center"):
            st.page_link("views/compare.py", label=f"Compare {len(selected)} runs", icon=":material/compare:",
                         query_params={"runs": ",".join(selected)})  # fmt: skip
            st.link_button("Open them in the MLflow UI", links.compare, icon=":material/open_in_new:")


def _summary(run: pd.Series) -> str:
    start = run["start_time"].strftime("%Y-%m-%d %H:%M") if pd.notna(run["start_time"]) else ""
    parts = [start, f"{run.get('params.size', '?')} px", f"β {run.get('params.beta', '?')}"]
    if isinstance(run.get("tags.owner"), str):
        parts.insert(1, f"by {run['tags.owner']}")
    lambdas = {
        k.removeprefix("params.lambda."): v for k, v in run.items() if k.startswith("params.lambda.") and pd.notna(v)
    }
    if lambdas:
        parts.append("λ " + ", ".join(f"{k}={v}" for k, v in lambdas.items()))
    if pd.notna(run.get("metrics.final/total")):
        parts.append(f"J {run['metrics.final/total']:.3g}")
    if pd.notna(run.get("failure_reason")):
        parts.append(f"failed: {visitor_text(run['failure_reason'])}")
    return " · ".join(parts)


run_id = st.query_params.get("run")
if run_id:
    run_page(run_id)
else:
    history_page()
