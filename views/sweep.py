"""A sweep (`?run=<parent run id>`): its children as a labelled grid while they run, then the contact
sheet, with a link that opens every child in the compare page."""

import streamlit as st

from engine import tracking
from engine.core.errors import InputError
from engine.studies import sweep
from views import auth
from views.common import input_error, job_queue, read_failed, store_down, store_failed, tracking_uri, visitor_text

ACTIVE = ("SCHEDULED", "RUNNING")


def grid_view(grid: sweep.SweepGrid) -> None:
    """Cells row-major under their column labels, each row after its label."""
    label_width = [1] if grid.row_labels else []
    header = st.columns(label_width + [3] * grid.cols)
    for column, label in zip(header[len(label_width) :], grid.col_labels, strict=True):
        column.markdown(f"**{label}**")
    for r in range(grid.rows):
        row = st.columns(label_width + [3] * grid.cols)
        if grid.row_labels:
            row[0].markdown(f"**{grid.row_labels[r]}**")
        for cell in grid.cells[r * grid.cols : (r + 1) * grid.cols]:
            column = row[len(label_width) + cell.col]
            if cell.image is not None:
                column.image(cell.image, width="stretch")
            if cell.run_id:
                column.page_link("views/runs.py", label=cell.caption, query_params={"run": cell.run_id})
            else:
                column.caption(cell.caption)


@st.fragment(run_every=1.0)
def live_grid(parent_id: str, refused: str | None = None) -> None:
    try:
        grid = sweep.sweep_grid(tracking_uri(), parent_id, queue=job_queue())
    except Exception as exc:
        read_failed(exc)
    if grid.status not in ACTIVE:
        st.rerun()
    counts = ", ".join(f"{n} {status.lower()}" for status, n in grid.counts().items() if n)
    st.caption(f"{len(grid.cells)} runs: {counts}")
    grid_view(grid)
    if st.button("Cancel the sweep", disabled=refused is not None, help=refused):
        try:
            sweep.cancel_sweep(tracking_uri(), parent_id, queue=job_queue(), actor=auth.actor())
        except InputError as exc:
            input_error(exc)


parent_id = st.query_params.get("run")
if not parent_id:
    st.info("Start a sweep from the studio: open 'Sweep' under the settings.")
    st.page_link("views/studio.py", label="Open the studio", icon=":material/palette:")
    st.stop()
if down := store_down():
    st.warning(down, icon=":material/cloud_off:")
    st.stop()
try:
    parent = tracking.load_run(tracking_uri(), parent_id)
except Exception as exc:
    read_failed(exc)
if auth.deleted_notice(parent):
    st.stop()
if "sweep.axes" not in parent.params:  # e.g. a single run's id: say so, and link to its own page
    st.error(f"Run `{parent_id}` is not a sweep: this page shows the parent run of a sweep.", icon="⚠️")
    st.page_link("views/runs.py", label="Open the run's page", icon=":material/history:",
                 query_params={"run": parent_id})  # fmt: skip
    st.stop()
st.title(parent.name)
st.caption(f"Sweep `{parent_id}` over {parent.params.get('sweep.axes', '?')} · {parent.status.lower()}")
auth.delete_control(parent, job_queue().delete)
if parent.status in ACTIVE:
    live_grid(parent_id, auth.refusal(parent.tags, "cancel"))
    st.stop()

if parent.status == "FAILED":
    st.error(visitor_text(parent.tags.get("failure_reason", "The sweep failed.")))
try:
    children = sweep.sweep_children(tracking_uri(), parent_id)
except Exception as exc:
    store_failed(exc)
if len(children) >= 2:
    st.page_link("views/compare.py", label="Open all runs in the compare page", icon=":material/compare:",
                 query_params={"runs": ",".join(children["run_id"])})  # fmt: skip
try:
    st.image(tracking.download_artifact(tracking_uri(), parent_id, "contact_sheet.png"), caption="contact sheet")
except InputError:
    st.caption("No contact sheet was logged.")
try:
    grid_view(sweep.sweep_grid(tracking_uri(), parent_id))
except Exception as exc:
    read_failed(exc)
