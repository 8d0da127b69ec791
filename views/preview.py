"""The studio's live preview: whenever a setting changes, a small preview of it is queued (debounced, in
the background, abandoned when the settings change again; `engine.jobs.preview` says what it is and
what it may cost a full run), and the last few previews stay side by side so two settings can be judged
without a run. Kept apart from views/studio.py, which only calls `live_preview`."""

from __future__ import annotations

import uuid

import streamlit as st

from engine.core.config import TransferConfig
from engine.core.errors import InputError
from engine.core.images import Inputs
from engine.jobs.preview import PREVIEW_SIZE, PREVIEW_STEPS, preview_config, preview_key
from views.common import job_queue, visitor_text

SHOWN = 4  # previews side by side, newest first
POLL_S = 0.5
PENDING = ("queued", "running")


def live_preview(config: TransferConfig, inputs: Inputs) -> None:
    """Queue the preview of `config` when it differs from the last one, and draw the strip of previews."""
    if not st.toggle(
        "Live preview", value=False, key="live_preview",  # off: every visitor's renders share the server's CPU
        help=f"Re-renders at {PREVIEW_SIZE} px and {PREVIEW_STEPS} iterations whenever a setting changes, without "
        "a tracked run. The balance of α, β and λ is the same at every size, so it shows what Run will make.",
    ):  # fmt: skip
        return
    slot = st.session_state.setdefault("preview_slot", uuid.uuid4().hex)  # this browser session's previews
    small = preview_config(config)
    key = preview_key(small, inputs)
    shown: list[dict] = st.session_state.setdefault("previews", [])
    if not shown or shown[0]["key"] != key:
        superseded = bool(shown) and _state(shown[0]["id"]) in PENDING  # never shown: the new one replaces it
        try:
            preview_id = job_queue().submit_preview(slot, config, inputs)
        except InputError as exc:
            st.caption(f"No live preview: {visitor_text(exc)}")
            return
        if superseded:
            shown.pop(0)
        label = _changes(shown[0]["params"], small.to_params()) if shown else "current settings"
        shown.insert(0, {"key": key, "id": preview_id, "params": small.to_params(), "label": label})
        del shown[SHOWN:]
    pending = any(_state(entry["id"]) in PENDING for entry in shown)
    st.fragment(run_every=POLL_S if pending else None)(_strip)()


def _state(preview_id: str) -> str | None:
    row = job_queue().preview(preview_id)
    return None if row is None else row.state


def _changes(before: dict[str, str], after: dict[str, str]) -> str:
    """What differs from the previous preview's settings, e.g. "λ relu3_1 0.5, β 400000.0"."""
    names = {"alpha": "α", "beta": "β"}
    parts = []
    for name in sorted(before.keys() | after.keys()):
        if before.get(name) != after.get(name):
            label = names.get(name, name.replace("lambda.", "λ "))
            parts.append(f"{label} {after.get(name, 'off')}")
    return ", ".join(parts) or "same settings"


def _strip() -> None:
    """The previews, newest first; once none is pending, the page reruns once so polling stops."""
    shown = st.session_state.get("previews", [])
    columns = st.columns(SHOWN)
    pending = False
    for i, (column, entry) in enumerate(zip(columns, shown, strict=False)):
        row = job_queue().preview(entry["id"])
        state = None if row is None else row.state
        title = "now" if i == 0 else f"{i} before"
        with column:
            if state == "done":
                st.image(row.result, caption=f"{title}: {entry['label']} ({row.seconds:.1f} s)", width="stretch")
            elif state in PENDING:
                pending = True
                if row.result is not None:  # a first look: the image so far
                    st.image(row.result, caption=f"{title}: {entry['label']} (iteration {row.step} of "
                             f"{entry['params']['steps']}…)", width="stretch")  # fmt: skip
                else:
                    st.caption(f"{title}: {entry['label']}")
                    st.caption(":material/hourglass_top: rendering the preview…")
            elif state == "failed":
                st.caption(f"{title}: {entry['label']}")
                st.warning(f"The preview failed: {visitor_text(row.error)}", icon="⚠️")
            else:
                st.caption(f"{title}: {entry['label']} (gone; change a setting to render again)")
    if not pending and st.session_state.get("preview_polling"):
        st.session_state["preview_polling"] = False
        st.rerun()  # the fragment was defined polling; draw it once more without the timer
    st.session_state["preview_polling"] = pending
