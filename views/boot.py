"""The engine's first import, in the background: PyTorch, MLflow and the pages' helpers take seconds to
import, once per server process. `app.py` starts the import (`preload`) before anything else, so a page
can draw what needs only Streamlit (the studio's uploaders) at once; code that needs the engine calls
`wait` first. Streamlit only, like `views.gate`.
"""

from __future__ import annotations

import importlib
import logging
import threading

HEAVY_MODULES = ("views.common", "views.auth")  # and through them torch, mlflow, the engine

log = logging.getLogger(__name__)
_done = threading.Event()
_start_lock = threading.Lock()
_started = False


def _import_all() -> None:
    try:
        for name in HEAVY_MODULES:
            importlib.import_module(name)
    except Exception:  # `wait`'s callers import again and get the error where it matters
        log.exception("Importing the engine failed")
    finally:
        _done.set()


def preload() -> None:
    """Start importing the engine in a background thread, once per process."""
    global _started
    with _start_lock:
        if _started:
            return
        _started = True
    threading.Thread(target=_import_all, name="stylelab-preload", daemon=True).start()


def ready() -> bool:
    """Whether the engine is imported (never blocks)."""
    return _done.is_set()


def wait() -> None:
    """Block until the background import is over. Call it before importing the engine in a page: two
    threads importing the same modules at once can see each other's half-initialised modules."""
    preload()
    _done.wait()
