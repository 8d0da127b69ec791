"""Running jobs: the durable queue (`queue`, `ledger`), the one worker function (`worker`) and the
backends that host it (threads, child processes, a Ray cluster in `ray_backend`).

Depends on `engine.core` and `engine.tracking`; nothing here imports Streamlit.
"""

from engine.jobs.ledger import MAX_ATTEMPTS, Ledger, ledger_path
from engine.jobs.queue import BACKENDS, JobProgress, JobQueue, JobSpec, default_backend
from engine.jobs.worker import Ended, Started, Stepped, run_batch, tracked_transfer

__all__ = [
    "BACKENDS",
    "MAX_ATTEMPTS",
    "Ended",
    "JobProgress",
    "JobQueue",
    "JobSpec",
    "Ledger",
    "Started",
    "Stepped",
    "default_backend",
    "ledger_path",
    "run_batch",
    "tracked_transfer",
]
