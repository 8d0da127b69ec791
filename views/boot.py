"""The engine's first import, in the background: PyTorch, MLflow and the pages' helpers take seconds to
import, once per server process. `app.py` starts the import (`preload`) before anything else, so a page
can draw what needs only Streamlit (the studio's uploaders) at once; code that needs the engine calls
`wait` first. Streamlit only, like `views.gate`.
"""

from __future__ import annotations

import importlib
import logging
import threading

import streamlit as st

HEAVY_MODULES = ("views.common", "views.auth")  # and through them torch, mlflow, the engine

log = logging.getLogger(__name__)
_done = threading.Event()
_start_lock = threading.Lock()
_started = False


def _import_all(start_queue: bool) -> None:
    try:
        for name in HEAVY_MODULES:
            importlib.import_module(name)
    except Exception:  # `wait`'s callers import again and get the error where it matters
        log.exception("Importing the engine failed")
        _done.set()
        return
    _done.set()
    if start_queue:  # jobs queued before a restart, or by other servers, start now, not at a later visit
        try:
            importlib.import_module("views.common").job_queue()
        except Exception:  # the pages that need the queue create it again and show the error
            log.exception("Starting the job queue failed")


def preload(start_queue: bool = False) -> None:
    """Start importing the engine in a background thread, once per process; with `start_queue`, then
    start the server's job queue (the app does; tests that only import the pages do not)."""
    global _started
    with _start_lock:
        if _started:
            return
        _started = True
    threading.Thread(target=_import_all, args=(start_queue,), name="stylelab-preload", daemon=True).start()


def ready() -> bool:
    """Whether the engine is imported (never blocks)."""
    return _done.is_set()


def wait() -> None:
    """Block until the background import is over. Call it before importing the engine in a page: two
    threads importing the same modules at once can see each other's half-initialised modules."""
    preload()
    _done.wait()


def wait_then_redraw() -> None:
    """For the studio, which draws before the engine is in: wait for it; when it was not in yet, run the
    page again, so that what app.py draws only with the engine (the sidebar: queue, device, account)
    shows instead of "Starting…"."""
    if not ready():
        wait()
        st.rerun()
