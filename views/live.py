"""The run page's live view: one shared frame per watched run, read once per interval for every viewer
(issue 17: eight watchers used to stop the runs they watched)."""

from __future__ import annotations

import gc
import io
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from dataclasses import replace as dataclasses_replace
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from engine import tracking
from engine.core.config import TransferConfig
from views.common import cost_chart_spec, cost_contributions, job_queue, tracking_uri

LIVE_READ_EVERY_S = 1.0  # one read of a run's progress per this interval, whatever the number of viewers
LIVE_CHART_EVERY_S = 3.0  # the cost chart and G are rebuilt at most this often per run


def live_history(records: tuple[Mapping[str, float], ...]) -> pd.DataFrame:
    """A job's in-memory history ({"step", "total", "style/relu1_1", …}) in the MLflow metric names."""
    frame = pd.DataFrame(list(records))
    if frame.empty:
        return frame
    return frame.set_index("step").rename(columns=lambda c: f"cost/{c}")


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


