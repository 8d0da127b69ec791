"""Where a queue's workers live: `Threads` in the app's process, `Processes` (one child per device, the
app's default), and `ray_backend.RayWorkers`. Each has `devices`, `reports_progress`, `notify()` (a job was
submitted), `owns(owner)` (a ledger claim is one of its workers') and `stop(wait)`."""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import threading
import types
from typing import TYPE_CHECKING

import torch

from engine.core.errors import InputError
from engine.jobs.ledger import Ledger, owner_pid
from engine.jobs.serving import serve

if TYPE_CHECKING:
    from engine.jobs.queue import JobQueue

__all__ = ["Processes", "Threads", "make_backend"]

log = logging.getLogger(__name__)


def _local_devices(devices: list[str] | None) -> list[str]:
    from engine.core.device import pick_device

    if devices is None:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        devices = [f"cuda:{i}" for i in range(count)] or ["cpu"]
    names = [str(pick_device(d)) for d in devices]
    for name in names:
        dev = torch.device(name)
        if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"There is no GPU {name}; this machine has {torch.cuda.device_count()}.")
    return names


class Threads:
    """One worker thread per device in this process."""

    reports_progress = True

    def __init__(self, queue: JobQueue, devices: list[str] | None) -> None:
        self.devices = _local_devices(devices)
        self._threads = [
            threading.Thread(
                target=serve,
                args=(queue.ledger, queue.tracking_uri, device),
                kwargs=dict(
                    stop=lambda: queue.stopping,
                    publish=queue._apply,
                    wait=queue.wait_for_work,
                    take_inputs=queue.take_inputs,
                    local_cancel=queue.locally_cancelled,
                    preview_every=queue.preview_every,
                    fallback_dir=queue.fallback_dir,
                ),
                name=f"stylelab-worker-{queue.name}-{device}-{i}",
                daemon=True,
            )
            for i, device in enumerate(self.devices)
        ]
        for thread in self._threads:
            thread.start()

    def notify(self) -> None:
        pass  # the queue's condition already wakes its threads

    def owns(self, owner: str) -> bool:
        return owner_pid(owner) == os.getpid()

    def stop(self, wait: bool) -> None:
        if wait:
            for thread in self._threads:
                thread.join()


def _serve_in_child(ledger_file: str, tracking_uri: str, device: str, stop, wake, messages, preview_every: int,
                    fallback_dir: str | None, poll_s: float, torch_threads: int | None) -> None:  # fmt: skip
    """A child process's main: the same `serve` loop, its messages sent to the parent. `wake` is set by
    the parent on every submit, so a waiting worker claims at once instead of at its next poll (jobs
    queued by other processes are seen at the poll)."""
    if torch_threads:
        torch.set_num_threads(torch_threads)
    if cpus := os.environ.get("STYLELAB_WORKER_CPUS"):  # e.g. "0": the optimisation's own cores
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    parent = os.getppid()

    def wait() -> None:
        wake.wait(poll_s)
        wake.clear()  # a submit after this is still seen: the loop claims from the ledger next

    serve(Ledger(ledger_file), tracking_uri, device, stop=lambda: stop.is_set() or os.getppid() != parent,
          publish=messages.put, wait=wait, preview_every=preview_every, fallback_dir=fallback_dir)  # fmt: skip


class Processes:
    """One child process per device (spawned: CUDA and threads do not survive a fork). Typed messages come
    back over a queue that one thread of this process folds into memory; a child whose parent is gone
    ends after its batch (or at once when idle)."""

    reports_progress = True

    def __init__(self, queue: JobQueue, devices: list[str] | None) -> None:
        self.devices = _local_devices(devices)
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._wake = context.Event()
        self._messages = context.Queue()
        threads = os.environ.get("STYLELAB_WORKER_THREADS")
        self._children = [
            context.Process(
                target=_serve_in_child,
                args=(str(queue.ledger.path), queue.tracking_uri, device, self._stop, self._wake, self._messages,
                      queue.preview_every, queue.fallback_dir, queue.poll_s, int(threads) if threads else None),
                name=f"stylelab-worker-{device}",
                daemon=True,
            )
            for device in self.devices
        ]  # fmt: skip
        main = sys.modules.get("__main__")
        # A spawned child imports the parent's __main__ first; under Streamlit that is the app's script,
        # which would start a queue of its own. The worker needs none of it.
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            for child in self._children:
                child.start()
        finally:
            if main is not None:
                sys.modules["__main__"] = main
        self._receiver = threading.Thread(target=self._receive, args=(queue,), name="stylelab-messages", daemon=True)
        self._receiver.start()

    def _receive(self, queue: JobQueue) -> None:
        while True:
            message = self._messages.get()
            if message is None:
                return
            try:
                queue._apply(message)
            except Exception:
                log.exception("Could not apply a worker message")

    def notify(self) -> None:
        self._wake.set()

    def owns(self, owner: str) -> bool:
        return owner_pid(owner) in {child.pid for child in self._children}

    def stop(self, wait: bool) -> None:
        self._stop.set()
        self._wake.set()
        if wait:
            for child in self._children:
                child.join(timeout=120)
            self._messages.put(None)
            self._receiver.join(timeout=10)


def make_backend(queue: JobQueue, devices: list[str] | None):
    if queue.backend == "thread":
        return Threads(queue, devices)
    if queue.backend == "process":
        return Processes(queue, devices)
    from engine.jobs.ray_backend import RayWorkers  # Ray is imported only when asked for

    return RayWorkers(queue, devices)
