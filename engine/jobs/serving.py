"""Serving one device: the loop every local worker runs (a thread of the app, or a child process), and
the pieces the Ray backend shares with it: claiming from the ledger, beating the heartbeat, watching for
cancels, settling a batch, recovering the jobs of dead workers."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence

from engine import tracking
from engine.core.images import Inputs
from engine.jobs import worker
from engine.jobs.ledger import MAX_ATTEMPTS, Claim, Ledger, Recovered, owner_id
from engine.jobs.preview import PreviewRunner

__all__ = ["CancelWatch", "Claimer", "recover_jobs", "run_claim", "serve"]

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0
CANCEL_POLL_S = 1.0  # how often a worker asks the store whether its jobs were cancelled
RECOVER_EVERY_S = 10.0


class CancelWatch:
    """Whether a job was cancelled: the local flag at once, the store's `cancel_requested` tag (set by any
    process) as a side thread last read it, every `CANCEL_POLL_S`. The optimisation never waits on the
    store for it, even a hung one. A context manager: the side thread ends with the batch."""

    def __init__(self, tracking_uri: str, run_ids: Sequence[str], local: Callable[[str], bool] = lambda r: False):
        self._uri, self._run_ids, self._local = tracking_uri, list(run_ids), local
        self._seen: frozenset[str] = frozenset()
        self._closed = threading.Event()
        threading.Thread(target=self._poll, name="stylelab-cancel-watch", daemon=True).start()

    def _poll(self) -> None:
        while not self._closed.wait(CANCEL_POLL_S):
            with contextlib.suppress(Exception):  # a store down for a moment cancels nothing
                self._seen = self._seen | tracking.cancel_requested(self._uri, self._run_ids)

    def __call__(self, run_id: str) -> bool:
        return self._local(run_id) or run_id in self._seen

    def close(self) -> None:
        self._closed.set()

    def __enter__(self) -> CancelWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Claimer:
    """One step of every worker's loop: claim the oldest queued batch for `owner`, and while nothing is
    queued, recover the jobs of dead workers every `RECOVER_EVERY_S`."""

    def __init__(self, ledger: Ledger, tracking_uri: str, owner: str) -> None:
        self._ledger, self._uri, self._owner = ledger, tracking_uri, owner
        self._last_recovery = time.monotonic()

    def next(self) -> Claim | None:
        try:
            claim = self._ledger.claim(self._owner)
        except Exception as e:
            log.warning("Could not read the job queue %s: %s", self._ledger.path, e)
            claim = None
        if claim is None and time.monotonic() - self._last_recovery > RECOVER_EVERY_S:
            self._last_recovery = time.monotonic()
            with contextlib.suppress(Exception):  # logged; the next idle round tries again
                recover_jobs(self._ledger, self._uri)
        return claim


def serve(
    ledger: Ledger,
    tracking_uri: str,
    device: str,
    *,
    stop: Callable[[], bool],
    publish: Callable[[worker.Message], None],
    wait: Callable[[], None],
    take_inputs: Callable[[str], Inputs | None] = lambda batch: None,
    local_cancel: Callable[[str], bool] = lambda run_id: False,
    preview_every: int = 5,
    fallback_dir: str | None = None,
    owner: str | None = None,
    previews: bool = True,
) -> None:
    """Claim batches from `ledger` and run them on `device` until `stop()`: the loop of every local
    worker (a thread or a child process). Beats the heartbeat of its claims from a side thread. With
    `previews`, it also runs the studio's live previews (`engine.jobs.preview`)."""
    owner = owner or owner_id()
    beating = threading.Event()

    def heartbeat() -> None:
        while not beating.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):
                ledger.heartbeat(owner)

    threading.Thread(target=heartbeat, name=f"stylelab-heartbeat-{device}", daemon=True).start()
    claims = Claimer(ledger, tracking_uri, owner)
    # Live previews share this loop at the priority `engine.jobs.preview` states.
    runner = PreviewRunner(ledger, device, owner, stop) if previews else None
    try:
        while not stop():
            if runner is not None and runner.idle(batch_waiting=lambda: bool(ledger.queued())):
                continue
            claim = claims.next()
            if claim is None:
                wait()
                continue
            if runner is not None:
                runner.batch_started()
            run_claim(ledger, tracking_uri, device, claim, stop=stop, publish=publish,
                      inputs=take_inputs(claim.batch), local_cancel=local_cancel, preview_every=preview_every,
                      fallback_dir=fallback_dir, owner=owner,
                      between_steps=runner.between_steps if runner is not None else None)  # fmt: skip
    finally:
        beating.set()


def run_claim(
    ledger: Ledger,
    tracking_uri: str,
    device: str,
    claim: Claim,
    *,
    stop: Callable[[], bool],
    publish: Callable[[worker.Message], None],
    inputs: Inputs | None,
    local_cancel: Callable[[str], bool],
    preview_every: int,
    fallback_dir: str | None,
    owner: str,
    between_steps: Callable[[float], None] | None = None,
) -> None:
    """Run one claimed batch and settle it in the ledger: done, or given back when interrupted.
    `between_steps(elapsed_s)` runs after each of its iterations (live previews)."""

    def settle_then_publish(message: worker.Message) -> None:
        # Done in the ledger before anyone hears of the end, so the queue's length agrees with a
        # progress that says done (an interrupted job is given back below, after its message).
        if isinstance(message, worker.Ended) and message.status in tracking.TERMINAL:
            ledger.done([message.run_id])
        publish(message)

    try:
        with CancelWatch(tracking_uri, claim.run_ids, local_cancel) as cancelled:
            ended = worker.run_batch(tracking_uri, claim.run_ids, device, cancelled=cancelled, interrupted=stop,
                                     publish=settle_then_publish, inputs=inputs, preview_every=preview_every,
                                     attempt=claim.attempt, fallback_dir=fallback_dir,
                                     between_steps=between_steps)  # fmt: skip
    except Exception:  # a bug in the bookkeeping itself: the jobs stay claimed, recovery retries them
        log.exception("Jobs %s failed in the worker", ", ".join(claim.run_ids))
        return
    ledger.release([e.run_id for e in ended if e.status not in tracking.TERMINAL], owner)


def recover_jobs(ledger: Ledger, tracking_uri: str) -> Recovered:
    """Queue again the jobs whose worker died (their runs back to SCHEDULED) and fail those tried
    `MAX_ATTEMPTS` times, with that reason. Raises (after logging) when the ledger or the store fails."""
    try:
        found = ledger.recover()
        for run_id in found.requeued:
            tracking.set_run_status(tracking_uri, run_id, "SCHEDULED")
        for run_id in found.given_up:
            reason = f"its worker stopped {MAX_ATTEMPTS} times before the run finished; it was not tried again"
            tracking.set_run_status(tracking_uri, run_id, "FAILED", reason)
    except Exception as e:
        log.warning("Could not recover jobs: %s", e)
        raise
    return found
