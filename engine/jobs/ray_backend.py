"""The `ray` backend of the job queue: each claimed batch runs as one Ray task on a cluster.

`JobQueue(backend="ray")` (or STYLELAB_RAY_ADDRESS set: "auto", "127.0.0.1:6379", "ray://host:10001")
builds a `RayWorkers`. It keeps the queue's durable ledger where it was (beside the store, on this
machine): one driver thread per slot claims a batch, as every local worker does, beats its heartbeat
while it runs, and submits one Ray task that calls the one worker function `worker.run_batch` on a
Ray worker. That task reads the jobs' config and inputs from the MLflow store and writes metrics,
snapshots and results straight to it, so the store must be reachable from every node (an HTTP store,
or a SQLite file on a shared path) and `engine` importable there: this process ships its `engine`
package with the tasks (`runtime_env` py_modules) unless STYLELAB_RAY_SHIP_CODE=0.

- Progress: nothing comes back while a task runs (`reports_progress = False`): the run page reads the
  live metrics from MLflow, flushed every `flush_every` steps.
- Live previews: a slot with no batch claims a waiting preview from the ledger and renders it as a Ray
  generator task on the slot's GPU or CPU (`preview_remote`, which streams its first looks), at most one
  between two batches when a batch waits; a newer preview cancels the task (`ray.cancel`). None runs
  inside a remote batch.
- Cancel: `JobQueue.cancel` sets the store's `cancel_requested` tag, which the task's own `CancelWatch`
  polls.
- Shut down: a small flag actor tells running tasks to stop after their step; their jobs go back to
  the queue (SCHEDULED), as with the other backends. A task whose driver is gone stops too (its claim
  is recovered by the next queue that starts).
- A Ray failure (worker or node died, the task could not run) ends the batch's runs FAILED with the
  reason and takes them out of the queue: each job ran at most once.

Ray is imported only here, so the rest of the app works without it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from queue import SimpleQueue
from typing import TYPE_CHECKING

from engine import tracking
from engine.jobs import preview, worker
from engine.jobs.ledger import Claim, PreviewClaim, owner_id
from engine.jobs.serving import HEARTBEAT_S, CancelWatch, Claimer

if TYPE_CHECKING:
    from engine.jobs.queue import JobQueue

__all__ = ["MAX_CPU_SLOTS", "RayWorkers", "connect"]

log = logging.getLogger(__name__)

MAX_CPU_SLOTS = 8  # slots of a cluster without GPUs: one per CPU, at most this many (STYLELAB_RAY_SLOTS overrides)
STOP_POLL_S = 1.0  # how often a task asks the flag actor whether the queue shuts down
REMOTE_FLUSH_EVERY = 5  # remote jobs flush metrics more often: MLflow is their only live progress


def connect(address: str | None = None):
    """`ray.init` once for this process (a second call reuses the connection), on loopback for a local
    cluster: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps Ray from swapping 127.0.0.1 for the network
    address, and a `ray start --head` cluster's token (~/.ray/auth_token) is used when it exists."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if (Path.home() / ".ray" / "auth_token").exists():
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    if ray.is_initialized():
        return ray
    address = address or os.environ.get("STYLELAB_RAY_ADDRESS") or "auto"
    runtime_env = {}
    if os.environ.get("STYLELAB_RAY_SHIP_CODE", "1") != "0":
        import engine

        runtime_env["py_modules"] = [str(Path(engine.__file__).resolve().parent)]
    ray.init(address=address, ignore_reinit_error=True, log_to_driver=False, runtime_env=runtime_env or None,
             configure_logging=False)  # fmt: skip
    return ray


def _stop_flag_class():
    """The flag actor's class, made here so Ray ships it by value (its worker imports nothing of ours)."""

    class StopFlag:
        def __init__(self) -> None:
            self._set = False

        def set(self) -> None:
            self._set = True

        def is_set(self) -> bool:
            return self._set

    return StopFlag


def run_remote(
    tracking_uri: str,
    run_ids: Sequence[str],
    attempt: int,
    stop_flag,
    preview_every: int,
    flush_every: int,
    fallback_dir: str | None,
) -> list[worker.Ended]:
    """The Ray task: run one claimed batch here with `worker.run_batch`, on this worker's GPU when Ray gave
    it one, else on its CPU. Cancel comes from the store; shut-down from `stop_flag`."""
    import ray

    device = _task_device()
    checked, stopping = [0.0], [False]

    def interrupted() -> bool:
        if stopping[0]:
            return True
        now = time.monotonic()
        if now - checked[0] >= STOP_POLL_S:
            checked[0] = now
            try:
                stopping[0] = bool(ray.get(stop_flag.is_set.remote(), timeout=10))
            except ray.exceptions.GetTimeoutError:
                pass  # a busy flag is not a stop
            except ray.exceptions.RayError:  # the queue's process is gone: give the jobs back
                stopping[0] = True
        return stopping[0]

    with CancelWatch(tracking_uri, run_ids) as cancelled:
        return worker.run_batch(tracking_uri, list(run_ids), device, cancelled=cancelled, interrupted=interrupted,
                                preview_every=preview_every, flush_every=flush_every, attempt=attempt,
                                fallback_dir=fallback_dir)  # fmt: skip


def _task_device() -> str:
    """The device of this Ray task: its GPU when Ray gave it one, else the CPU."""
    import ray
    import torch

    return "cuda:0" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"


def preview_remote(claim: PreviewClaim) -> Iterator[tuple]:
    """The Ray generator task of a live preview: render it here (`preview.render_preview`) and stream
    ("look", png, step) for each first look, then ("end", png or None, error or None). An abandoned preview
    is stopped by `ray.cancel` from the driver, which holds the ledger."""
    streamed: SimpleQueue[tuple] = SimpleQueue()
    stopped = threading.Event()

    def render() -> None:
        end = (None, "the preview failed in its Ray task")  # render_preview returns its own errors
        try:
            end = preview.render_preview(claim, _task_device(), abandoned=stopped.is_set,
                                         show_step=lambda png, step: streamed.put(("look", png, step)))  # fmt: skip
        finally:
            streamed.put(("end", *end))

    # Rendered in a thread so this generator can yield between iterations; a cancel (KeyboardInterrupt
    # here) or the end stops the render at its next iteration.
    threading.Thread(target=render, name=f"preview-{claim.id}", daemon=True).start()
    try:
        while (item := streamed.get())[0] != "end":
            yield item
        yield item
    finally:
        stopped.set()


class RayWorkers:
    """One slot per concurrent job on the cluster (one per GPU, else one per CPU up to `MAX_CPU_SLOTS`),
    each served by a driver thread of this process. `devices` given: one slot per entry."""

    reports_progress = False

    def __init__(self, queue: JobQueue, devices: list[str] | None, *, flush_every: int = REMOTE_FLUSH_EVERY) -> None:
        ray = connect()
        self._ray = ray
        self._queue = queue
        self._flush_every = flush_every
        resources = ray.cluster_resources()
        self._gpus = int(resources.get("GPU", 0))
        if devices is None:
            cap = int(os.environ.get("STYLELAB_RAY_SLOTS") or MAX_CPU_SLOTS)
            count = self._gpus or max(1, min(int(resources.get("CPU", 1)), cap))
        else:
            count = len(devices)
        if count < 1:
            from engine.core.errors import InputError

            raise InputError("Give at least one slot to run jobs on.")
        self.devices = [f"ray:{i}" for i in range(count)]
        slot_resources = {"num_gpus": 1, "num_cpus": 1} if self._gpus else {"num_cpus": 1}
        self._task = ray.remote(run_remote).options(**slot_resources, max_retries=0)
        self._preview_task = ray.remote(preview_remote).options(**slot_resources, max_retries=0)
        self._flag = ray.remote(num_cpus=0)(_stop_flag_class()).remote()
        self._owner = owner_id()
        self._stop = threading.Event()
        self._beating = threading.Event()
        self._lock = threading.Lock()
        self._running: dict[str, object] = {}  # slot -> ObjectRef of its task
        self._heart = threading.Thread(target=self._heartbeat, name=f"stylelab-ray-heartbeat-{queue.name}", daemon=True)
        self._heart.start()
        self._threads = [
            threading.Thread(target=self._serve, args=(slot,), name=f"stylelab-ray-{queue.name}-{slot}", daemon=True)
            for slot in self.devices
        ]
        for thread in self._threads:
            thread.start()

    # -- the driver threads --------------------------------------------------------------------------

    def _stopping(self) -> bool:
        return self._stop.is_set() or self._queue.stopping

    def _heartbeat(self) -> None:
        while not self._beating.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):
                self._queue.ledger.heartbeat(self._owner)

    def _serve(self, slot: str) -> None:
        ledger = self._queue.ledger
        claims = Claimer(ledger, self._queue.tracking_uri, self._owner)
        # Live previews: a slot with no batch renders one as a Ray task, at the local workers' priority
        # between batches (`PreviewRunner.idle`); none run inside a remote batch.
        previews = preview.PreviewRunner(ledger, slot, self._owner, self._stopping, render=self._render_remote)
        while not self._stopping():
            if previews.idle(batch_waiting=lambda: bool(ledger.queued())):
                continue
            claim = claims.next()
            if claim is None:
                self._queue.wait_for_work()
                continue
            previews.batch_started()
            try:
                self._run(slot, claim)
            except Exception:  # a bug in the bookkeeping: the jobs stay claimed (as in queue.run_claim)
                log.exception("Jobs %s failed in the Ray driver", ", ".join(claim.run_ids))

    def _run(self, slot: str, claim: Claim) -> None:
        ray, queue = self._ray, self._queue
        ref = self._task.remote(queue.tracking_uri, claim.run_ids, claim.attempt, self._flag, queue.preview_every,
                                self._flush_every, queue.fallback_dir)  # fmt: skip
        with self._lock:
            self._running[slot] = ref
        try:
            ended: list[worker.Ended] = ray.get(ref)
        except ray.exceptions.RayError as e:
            self._failed(claim, e)
            return
        finally:
            with self._lock:
                self._running.pop(slot, None)
        queue.ledger.done([e.run_id for e in ended if e.status in tracking.TERMINAL])
        queue.ledger.release([e.run_id for e in ended if e.status not in tracking.TERMINAL], self._owner)
        for message in ended:  # what this process shows of the jobs: their end
            with contextlib.suppress(Exception):
                queue._apply(message)

    def _render_remote(
        self, claim: PreviewClaim, abandoned: Callable[[], bool], show_step: Callable[[bytes, int], None]
    ) -> tuple[bytes | None, str | None]:
        """Render a preview as a Ray generator task on this slot's resources, passing its first looks on;
        cancel the task once it is abandoned."""
        ray = self._ray
        stream = self._preview_task.remote(claim)
        while True:
            if abandoned():
                ray.cancel(stream)
                return None, None
            if not ray.wait([stream], timeout=0.1)[0]:
                continue
            try:
                kind, *rest = ray.get(next(stream))
            except StopIteration:
                return None, "the preview failed (its Ray task ended without a result)"
            except ray.exceptions.RayError as e:
                log.warning("Preview %s: its Ray task failed: %s", claim.id, tracking.short_error(e))
                return None, f"the preview failed (its Ray task: {type(e).__name__})"
            if kind == "end":
                return rest[0], rest[1]
            show_step(*rest)

    def _failed(self, claim: Claim, error: Exception) -> None:
        """The task died with its Ray worker or node (or could not run): its runs end FAILED, once."""
        reason = f"its Ray task failed ({type(error).__name__}: {tracking.short_error(error)})"
        log.warning("Jobs %s: %s", ", ".join(claim.run_ids), reason)
        uri = self._queue.tracking_uri
        for run_id in claim.run_ids:
            with contextlib.suppress(Exception):
                if tracking.load_run(uri, run_id).status not in tracking.TERMINAL:
                    tracking.set_run_status(uri, run_id, "FAILED", reason)
            with contextlib.suppress(Exception):
                self._queue._apply(worker.Ended(run_id, "FAILED", reason, None))
        self._queue.ledger.done(list(claim.run_ids))

    # -- shutting down -------------------------------------------------------------------------------

    def notify(self) -> None:
        pass  # the driver threads wait on the queue's condition, which submit notifies

    def owns(self, owner: str) -> bool:
        return False  # remote jobs: their progress is read from MLflow

    def stop(self, wait: bool) -> None:
        """Claim nothing more and tell running tasks to stop after their current step (their jobs go back
        to the queue); `wait` blocks until every driver thread has settled its task."""
        self._stop.set()
        with contextlib.suppress(Exception):
            self._flag.set.remote()
        if not wait:
            return
        for thread in self._threads:
            thread.join(timeout=300)
        self._beating.set()
        with contextlib.suppress(Exception):
            self._ray.kill(self._flag)
