"""The background job queue: style transfers run in worker threads, one per device, fed from one FIFO.

Scope: submit (validate, create the MLflow run as SCHEDULED, queue), batches (`submit_batch`: jobs that
differ only in cost weights or G₀ run as one `transfer_batch` on one worker, each still its own job and
MLflow run), cancel, live progress in memory, and a wall-time estimate. Pages poll
`JobQueue.progress(run_id)`; nothing here imports Streamlit, and workers only update plain state under a
lock. Everything a page needs goes through the small interface below (`submit`, `submit_batch`, `cancel`,
`progress`, `jobs`, `queue_length`, `shutdown`, `estimate_seconds`), so the in-process threads can later
give way to remote workers (e.g. a Ray cluster sharing an MLflow server). A run's permanent record is its
MLflow run (the job id is its run id); memory holds only live progress.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import itertools
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from engine import images, tracking
from engine.config import TransferConfig, check_style_images
from engine.device import device_name, flops_per_iteration, pick_device
from engine.errors import InputError
from engine.transfer import StepReport, TransferResult, check_batchable, transfer_batch
from engine.vgg import LAYER_INDEX

__all__ = ["STATES", "JobProgress", "JobQueue", "JobSpec", "default_seconds_per_gflop", "estimate_seconds"]

log = logging.getLogger(__name__)

STATES = ("queued", "running", "finished", "failed", "cancelled")
TERMINAL_STATES = ("finished", "failed", "cancelled")
# Achieved convolution GFLOP/s before a device has run anything here (benchmarks/results/fast-*.json,
# 256 px): this project's 2-thread CPU 223; an H200 48 000 at 256 px and 106 000 at 512 px (bf16,
# CUDA graphs), so 50 000 is a fair first guess for a recent GPU.
CPU_GFLOPS = 220.0
CUDA_GFLOPS = 50_000.0
RATE_SMOOTHING = 0.3  # weight of the newest run in the exponential mean of seconds per GFLOP


# --------------------------------------------------------------------------------------------------
# Estimates


def default_seconds_per_gflop(device: str | torch.device) -> float:
    """Seconds per GFLOP of `flops_per_iteration` before any run on this device was measured."""
    return 1 / (CUDA_GFLOPS if torch.device(device).type == "cuda" else CPU_GFLOPS)


def _scale_shapes(config: TransferConfig, aspect: float) -> list[tuple[int, int, int]]:
    """(height, width, iterations) of G per scale, for a content image of aspect `aspect` = height/width."""
    shapes = []
    for size, steps in config.schedule:
        if aspect <= 1:
            width, height = size, max(1, round(size * aspect))
        else:
            width, height = max(1, round(size / aspect)), size
        shapes.append((height, width, steps))
    return shapes


def _deepest(config: TransferConfig) -> str:
    return max(config.layers, key=LAYER_INDEX.__getitem__)


def _gflop_per_step(configs: Sequence[TransferConfig], aspect: float) -> tuple[float, ...]:
    """GFLOP of each iteration of a batch of `configs` (one config: a single run), in order (coarse scales
    first). Each image of a batch passes the network up to the deepest layer any of them reads, so a
    batch of B counts B× and its measured seconds per GFLOP stay comparable with single runs'."""
    deepest = max(map(_deepest, configs), key=LAYER_INDEX.__getitem__)
    per_scale = [
        (len(configs) * flops_per_iteration(h, w, deepest) / 1e9, steps)
        for h, w, steps in _scale_shapes(configs[0], aspect)  # a batch shares its schedule
    ]
    return tuple(gflop for gflop, steps in per_scale for _ in range(steps))


def estimate_seconds(
    config: TransferConfig,
    device: str | torch.device,
    seconds_per_gflop: float | None = None,
    *,
    aspect: float = 0.75,
) -> float:
    """Predicted wall time of the optimisation: Σ over `config.schedule` of iterations ×
    `flops_per_iteration(h, w, deepest layer)` × `seconds_per_gflop` (default: per device type, see
    `default_seconds_per_gflop`). `aspect` is the content's height/width (4:3 landscape if unknown).
    Start-up (weights, inputs) and tracking are not included."""
    if aspect <= 0:
        raise ValueError(f"aspect must be positive, got {aspect}")
    rate = default_seconds_per_gflop(device) if seconds_per_gflop is None else seconds_per_gflop
    deepest = _deepest(config)
    gflop = sum(steps * flops_per_iteration(h, w, deepest) / 1e9 for h, w, steps in _scale_shapes(config, aspect))
    return gflop * rate


# --------------------------------------------------------------------------------------------------
# The interface


@dataclass(frozen=True)
class JobSpec:
    """One style transfer to run: the config and the uploaded files' bytes (uploads vanish with their
    Streamlit session, so the job keeps its own copy). `tags` are extra MLflow tags of the run, set
    when it is created (e.g. a sweep child's `sweep.<param>`)."""

    config: TransferConfig
    content: bytes
    styles: tuple[bytes, ...]
    source: str = "app"
    experiment: str = tracking.DEFAULT_EXPERIMENT
    run_name: str | None = None
    parent_run_id: str | None = None
    tags: dict[str, str] = dataclasses.field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class JobProgress:
    """An immutable snapshot of one job, safe to read from any thread."""

    run_id: str
    state: str  # "queued" | "running" | "finished" | "failed" | "cancelled"
    position: int | None  # 1-based place in the queue while queued, else None
    step: int
    total_steps: int
    size: tuple[int, int] | None  # (w, h) of G at the current scale
    elapsed_s: float  # since a worker took the job (0 while queued)
    eta_s: float | None  # remaining seconds (None before step 1 and after a run that did not finish)
    costs: dict[str, float]  # the latest step's costs (keys as StepReport.costs)
    history: tuple[dict[str, float], ...]  # {"step": k, **costs} per step, for live charts
    image: Image.Image | None  # the latest G, refreshed every `preview_every` steps and at the end
    error: str | None  # why it failed, fit for the UI
    warning: str | None  # e.g. the store failed and the result was saved locally; a batch's job cancelled
    device: str  # the worker's device ("cpu", "cuda:0"); "" while queued

    @property
    def done(self) -> bool:
        return self.state in TERMINAL_STATES


@dataclass(eq=False)
class _Batch:
    """One entry of the FIFO: the jobs a worker runs together as one `transfer_batch` (one job for
    `submit`). A queued job cancelled leaves `jobs`; a batch left empty leaves the FIFO."""

    jobs: list[_Job]
    aspect: float  # the content's height/width, for the work estimate


@dataclass(eq=False)
class _Job:
    """A job's mutable state; read and written only under `JobQueue._lock`."""

    run_id: str
    spec: JobSpec | None  # dropped once the job ends (it holds the uploads' bytes)
    tracker: tracking.RunTracker | None  # dropped once the job ends
    config: TransferConfig
    batch: _Batch
    work: tuple[float, ...] = ()  # GFLOP of each step of its batch, set when it starts (ETA, measured speed)
    cancel: threading.Event = dataclasses.field(default_factory=threading.Event)
    state: str = "queued"
    device: str = ""
    step: int = 0
    size: tuple[int, int] | None = None
    costs: dict[str, float] = dataclasses.field(default_factory=dict)
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)
    image: Image.Image | None = None
    error: str | None = None
    warning: str | None = None
    started: float | None = None  # time.monotonic() when a worker took it
    ended: float | None = None
    report_elapsed: float = 0.0  # StepReport.elapsed_s of the latest step
    report_at: float = 0.0  # time.monotonic() of the latest step


class JobQueue:
    """One FIFO of style-transfer jobs and one daemon worker thread per device pulling from it.

    Each job is an MLflow run from `submit` on (status SCHEDULED, then RUNNING, then FINISHED, FAILED or
    KILLED); its run id is the job id. A failing job ends its run FAILED and never stops the worker.
    The FIFO holds batches (`submit_batch`); a single job is a batch of one.
    """

    _ids = itertools.count(1)

    def __init__(
        self,
        tracking_uri: str | None = None,
        *,
        devices: list[str] | None = None,
        preview_every: int = 5,
        fallback_dir: str | Path | None = None,
        keep_finished: int = 100,
    ) -> None:
        if preview_every < 1:
            raise ValueError(f"preview_every must be at least 1, got {preview_every}")
        if devices is None:
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            devices = [f"cuda:{i}" for i in range(count)] or ["cpu"]
        if not devices:
            raise InputError("Give at least one device to run jobs on.")
        self.devices: list[str] = [str(pick_device(d)) for d in devices]
        for name in self.devices:
            dev = torch.device(name)
            if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
                raise InputError(f"There is no GPU {name}; this machine has {torch.cuda.device_count()}.")
        self.tracking_uri: str = tracking.resolve_tracking_uri(tracking_uri)
        self.preview_every = preview_every
        self.fallback_dir = fallback_dir
        self.keep_finished = keep_finished
        self.orphaned_runs: list[str] = self._mark_orphans()

        self._name = f"q{next(self._ids)}"
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: collections.deque[_Batch] = collections.deque()
        self._jobs: dict[str, _Job] = {}  # submit order
        self._rates: dict[str, float] = {}  # device -> measured seconds per GFLOP (exponential mean)
        self._stopping = False
        self._cleanup: list[threading.Thread] = []
        self._workers = [
            threading.Thread(
                target=self._work, args=(device,), name=f"stylelab-jobs-{self._name}-{device}-{i}", daemon=True
            )
            for i, device in enumerate(self.devices)
        ]
        for worker in self._workers:
            worker.start()

    def _mark_orphans(self) -> list[str]:
        """Runs a dead process of this host left RUNNING or SCHEDULED become FAILED. Skipped (the
        queue still starts) when the store is unreachable; `submit` then says why."""
        try:
            uri = tracking.check_reachable(self.tracking_uri)
            return tracking.mark_orphaned_runs(uri, tracking.DEFAULT_EXPERIMENT)
        except Exception as e:
            log.warning("Could not check %s for orphaned runs: %s", self.tracking_uri, e)
            return []

    # -- submit and cancel ---------------------------------------------------------------------------

    def submit(self, spec: JobSpec) -> str:
        """Validate the job (InputError, with nothing queued or logged, when an image cannot be read, the
        settings do not match the images, or the store is unreachable), create its MLflow run as
        SCHEDULED, queue it, and return its run id at once."""
        return self.submit_batch([spec])[0]

    def submit_batch(self, specs: Sequence[JobSpec]) -> list[str]:
        """Queue `specs` as one batch: one worker runs them together with `transfer_batch` (one network
        pass per step for all), and each stays its own job and MLflow run (progress, cancel, metrics,
        result), as if submitted alone. Validated like `submit`, plus: every spec must have the same
        content and style bytes, and their configs may differ only in `transfer.BATCH_KNOBS` (cost
        weights, seed, init); else InputError with nothing queued. Returns the run ids, in order.

        A child cancelled while the batch runs stops being recorded at once (no further metrics or
        previews) while the others run on; when the batch ends, its run ends KILLED with its result of
        the batch's end (result.png, `final/*` and `steps_done` of the last step, its `cost/*` stopping
        where it was cancelled). Cancelling every child stops the batch. Any error fails every child
        with the same message."""
        specs = list(specs)
        if not specs:
            raise InputError("A batch needs at least one job.")
        for spec in specs:
            if not isinstance(spec.config, TransferConfig):
                raise TypeError(f"JobSpec.config must be a TransferConfig, got {type(spec.config).__name__}")
            if spec.source not in tracking.SOURCES:
                raise ValueError(f"source must be one of {tracking.SOURCES}, got {spec.source!r}")
        self._check_open()
        first = specs[0]
        if any(spec.content != first.content or spec.styles != first.styles for spec in specs[1:]):
            raise InputError("The jobs of a batch must share their content and style images.")
        content = images.load_image(first.content, name="content image")
        for spec in specs:
            check_style_images(spec.config.style_blend, len(first.styles))
        for i, style in enumerate(first.styles):
            images.load_image(style, name=f"style image {i + 1}")
        check_batchable([spec.config for spec in specs])
        uri = tracking.check_reachable(self.tracking_uri)
        trackers: list[tracking.RunTracker] = []
        try:
            for spec in specs:
                trackers.append(self._new_run(uri, spec))
        except BaseException:
            for tracker in trackers:
                self._end_queued_run(tracker, "creating the runs of its batch failed")
            raise
        width, height = content.size
        with self._lock:
            if not self._stopping:
                batch = _Batch([], height / width)
                for spec, tracker in zip(specs, trackers, strict=True):
                    job = _Job(tracker.run_id, spec, tracker, spec.config, batch)
                    self._jobs[job.run_id] = job
                    batch.jobs.append(job)
                self._queue.append(batch)
                self._wake.notify()
                return [job.run_id for job in batch.jobs]
        for tracker in trackers:
            tracker.cancel("the job queue shut down before the job started")
        raise RuntimeError("The job queue is shut down; no new jobs are taken.")

    def _new_run(self, uri: str, spec: JobSpec) -> tracking.RunTracker:
        """The job's MLflow run, SCHEDULED, with its params, tags and inputs."""
        return tracking.RunTracker(
            uri,
            spec.experiment,
            spec.config,
            spec.content,
            list(spec.styles),
            source=spec.source,
            status="SCHEDULED",
            parent_run_id=spec.parent_run_id,
            run_name=spec.run_name,
            tags={str(k): str(v) for k, v in spec.tags.items()} or None,
            fallback_dir=self.fallback_dir,
        )

    def cancel(self, run_id: str) -> bool:
        """Cancel a queued job (its run ends KILLED, it never runs) or a running one (the loop stops
        after the current step; the run ends KILLED with the best image so far as result.png; in a
        batch whose other jobs run on, see `submit_batch`). False when the job is unknown or already
        over."""
        with self._lock:
            job = self._jobs.get(run_id)
            if job is None or job.state in TERMINAL_STATES:
                return False
            if job.state == "running":
                job.cancel.set()
                if len(job.batch.jobs) > 1:  # it may show "running" a while yet: say why
                    job.warning = "Cancelled: its run ends KILLED when the rest of its batch ends."
                return True
            job.batch.jobs.remove(job)
            if not job.batch.jobs:
                self._queue.remove(job.batch)
            tracker = job.tracker
            self._end(job, "cancelled")
        if tracker is not None:
            self._end_queued_run(tracker, "cancelled before it started")
        return True

    # -- reading progress ----------------------------------------------------------------------------

    def progress(self, run_id: str) -> JobProgress | None:
        """A snapshot of the job, or None when this process does not know the run (read MLflow then)."""
        with self._lock:
            job = self._jobs.get(run_id)
            return None if job is None else self._snapshot(job, time.monotonic())

    def jobs(self) -> list[JobProgress]:
        """Every job this process knows, newest first."""
        with self._lock:
            now = time.monotonic()
            return [self._snapshot(job, now) for job in reversed(self._jobs.values())]

    def queue_length(self) -> int:
        """Jobs queued or running."""
        with self._lock:
            return sum(job.state in ("queued", "running") for job in self._jobs.values())

    @property
    def seconds_per_gflop(self) -> dict[str, float]:
        """Measured seconds per GFLOP per device, an exponential mean over the runs done here."""
        with self._lock:
            return dict(self._rates)

    def estimate_seconds(self, config: TransferConfig, device: str | None = None, *, aspect: float = 0.75) -> float:
        """`estimate_seconds` for `device` (default: the first worker's) with the rate measured on it
        when there is one, else the device type's default."""
        device = device or self.devices[0]
        with self._lock:
            rate = self._rates.get(device)
        return estimate_seconds(config, device, rate, aspect=aspect)

    def _snapshot(self, job: _Job, now: float) -> JobProgress:
        position = elapsed = eta = None
        if job.state == "queued":
            position = self._queue.index(job.batch) + 1  # a batch's jobs share its place
        if job.started is not None:
            elapsed = (job.ended or now) - job.started
        if job.state == "running" and job.step > 0:
            eta = self._remaining(job, now)
        elif job.state == "finished":
            eta = 0.0
        return JobProgress(
            run_id=job.run_id,
            state=job.state,
            position=position,
            step=job.step,
            total_steps=job.config.total_steps,
            size=job.size,
            elapsed_s=elapsed or 0.0,
            eta_s=eta,
            costs=dict(job.costs),
            history=tuple(job.history),  # the dicts are never changed once appended
            image=job.image,
            error=job.error,
            warning=job.warning,
            device=job.device,
        )

    @staticmethod
    def _remaining(job: _Job, now: float) -> float:
        """Remaining seconds from the time per step so far, each step weighted by its FLOPs (so coarse
        scales, which are cheaper, do not make the fine scale look fast); counts down between steps."""
        work = job.work
        done = sum(work[: job.step])
        per_gflop = job.report_elapsed / done if done > 0 else 0.0
        return max(0.0, per_gflop * sum(work[job.step :]) - (now - job.report_at))

    # -- shutting down -------------------------------------------------------------------------------

    def shutdown(self, wait: bool = False) -> None:
        """Stop taking jobs: running jobs stop after their current step (runs KILLED, with their best
        image as result), queued jobs are cancelled (runs KILLED), and the workers end. `wait` blocks
        until all of that is done."""
        with self._lock:
            self._stopping = True
            queued = [job for batch in self._queue for job in batch.jobs]
            self._queue.clear()
            trackers = []
            for job in queued:
                trackers.append(job.tracker)
                self._end(job, "cancelled")
            for job in self._jobs.values():
                if job.state == "running":
                    job.cancel.set()
            self._wake.notify_all()
        if trackers:
            cleanup = threading.Thread(
                target=lambda: [self._end_queued_run(t, "the job queue shut down") for t in trackers if t is not None],
                name=f"stylelab-jobs-{self._name}-shutdown",
                daemon=True,
            )
            cleanup.start()
            self._cleanup.append(cleanup)
        if wait:
            for thread in [*self._workers, *self._cleanup]:
                if thread is not threading.current_thread():
                    thread.join()

    def _check_open(self) -> None:
        with self._lock:
            if self._stopping:
                raise RuntimeError("The job queue is shut down; no new jobs are taken.")

    @staticmethod
    def _end_queued_run(tracker: tracking.RunTracker, reason: str) -> None:
        try:
            tracker.cancel(reason)
        except Exception:
            log.exception("Could not end run %s KILLED", tracker.run_id)

    # -- the workers ---------------------------------------------------------------------------------

    def _work(self, device: str) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                batch = self._queue.popleft()
                jobs = list(batch.jobs)
                work = _gflop_per_step([job.config for job in jobs], batch.aspect)
                now = time.monotonic()
                for job in jobs:
                    job.state, job.device, job.started, job.work = "running", device, now, work
                trackers = [job.tracker for job in jobs]
            try:
                self._run(jobs, trackers, device)
            except Exception as e:  # a bug in the bookkeeping itself: end the runs, keep the worker alive
                log.exception("Jobs %s failed in the worker", ", ".join(job.run_id for job in jobs))
                for job in jobs:
                    with self._lock:
                        over, tracker = job.state in TERMINAL_STATES, job.tracker
                        if not over:
                            self._end(job, "failed", error=f"The job failed unexpectedly ({type(e).__name__}: {e}).")
                    if not over and tracker is not None:
                        with contextlib.suppress(Exception):
                            tracker.fail(e)

    def _run(self, jobs: list[_Job], trackers: list[tracking.RunTracker], device: str) -> None:
        """Run `jobs` (a batch; often one job) with one `transfer_batch`, each step's reports fanned out
        to the jobs' runs and progress, then end every job's run."""
        configs = [job.config for job in jobs]
        dropped = [False] * len(jobs)  # cancelled while the rest of the batch runs on

        def should_stop() -> bool:
            return self._stopping or all(job.cancel.is_set() for job in jobs)

        def on_step(reports: list[StepReport]) -> None:
            stopping = should_stop()
            for i, (job, tracker, report) in enumerate(zip(jobs, trackers, reports, strict=True)):
                # A job cancelled alone is recorded no further; when the whole batch stops, this step
                # is recorded for every job still in it, as a single run's last step always was.
                dropped[i] = dropped[i] or (job.cancel.is_set() and not stopping)
                if not dropped[i]:
                    self._record_step(job, tracker, report)

        results: list[TransferResult] | None = None
        error: str | None = None
        out_of_memory = False
        try:
            for tracker in trackers:
                tracker.start(device)
            content, styles = trackers[0].content_image, trackers[0].style_images  # a batch shares its inputs
            results = transfer_batch(content, styles, configs, on_step=on_step, should_stop=should_stop, device=device)
        except InputError as e:
            error = str(e)
            for tracker in trackers:
                tracker.fail(e)
        except Exception as e:
            if _is_out_of_memory(e):
                out_of_memory = True
                error = _out_of_memory_message(configs[0], len(configs), device)
                for tracker in trackers:
                    tracker.fail(error)
            else:
                log.exception("Runs %s failed", ", ".join(job.run_id for job in jobs))
                error = f"{type(e).__name__}: {e}"
                for tracker in trackers:
                    tracker.fail(e)
        if out_of_memory:  # the exception, and with it the frames holding tensors, is gone now
            _free_gpu_memory(device)

        if results is not None:
            with self._lock:
                self._measure(jobs[0].work, device, results[0])  # the batch's steps and time are shared
        for i, (job, tracker) in enumerate(zip(jobs, trackers, strict=True)):
            state, job_error, result = "failed", error, None
            if results is not None:
                result = results[i]
                if dropped[i] and result.stopped is None:
                    result = dataclasses.replace(result, stopped="cancelled")
                tracker.finish(result)
                state, job_error = _outcome(result)
            with self._lock:
                if result is not None:
                    job.image = result.image
                self._end(job, state, error=job_error, warning=tracker.warning)

    def _record_step(self, job: _Job, tracker: tracking.RunTracker, report: StepReport) -> None:
        """One step of one job: log it to its run, and update its live progress (with a preview of G
        every `preview_every` steps, at the first and at the last)."""
        report = dataclasses.replace(report, _image=functools.cache(report._image))  # render G once
        tracker.on_step(report)
        every = self.preview_every
        image = report.image() if report.step % every == 0 or report.step in (1, report.total_steps) else None
        now = time.monotonic()
        with self._lock:
            job.step, job.size = report.step, report.size
            job.costs = dict(report.costs)
            job.history.append({"step": report.step, **report.costs})
            job.report_elapsed, job.report_at = report.elapsed_s, now
            if image is not None:
                job.image = image

    def _measure(self, work: tuple[float, ...], device: str, result: TransferResult) -> None:
        """Fold this batch's seconds per GFLOP into the device's exponential mean (under the lock)."""
        gflop = sum(work[: result.steps_done])
        if gflop <= 0 or result.elapsed_s <= 0:
            return
        rate = result.elapsed_s / gflop
        old = self._rates.get(device)
        self._rates[device] = rate if old is None else (1 - RATE_SMOOTHING) * old + RATE_SMOOTHING * rate

    def _end(self, job: _Job, state: str, *, error: str | None = None, warning: str | None = None) -> None:
        """Mark `job` over (under the lock), drop what it no longer needs, and forget the oldest ended
        jobs beyond `keep_finished` (their runs stay in MLflow)."""
        job.state, job.error, job.warning = state, error, warning
        job.ended = time.monotonic()
        job.spec = None
        job.tracker = None
        ended = [rid for rid, j in self._jobs.items() if j.state in TERMINAL_STATES]
        for rid in ended[: max(0, len(ended) - self.keep_finished)]:
            del self._jobs[rid]


def _outcome(result: TransferResult) -> tuple[str, str | None]:
    """A job's end state, and the error to show, from its result."""
    if result.stopped == "diverged":
        return "failed", (
            f"The optimisation diverged at step {result.steps_done} (the cost became non-finite); the "
            "result is the best image before that. Lower lr or the weights."
        )
    return ("cancelled" if result.stopped == "cancelled" else "finished"), None


def _out_of_memory_message(config: TransferConfig, batch: int, device: str) -> str:
    kind = "GPU memory" if torch.device(device).type == "cuda" else "memory"
    batched = f" for a batch of {batch} images" if batch > 1 else ""
    return (
        f"Out of {kind} at {config.size} px{batched} on {_device_label(device)}. "
        f"Choose a smaller size (about {max(config.size // 2, 16)} px) and run again."
    )


def _is_out_of_memory(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or (isinstance(e, RuntimeError) and "out of memory" in str(e))


def _device_label(device: str) -> str:
    try:
        return f"{device_name(torch.device(device))} ({device})"
    except Exception:
        return device


def _free_gpu_memory(device: str) -> None:
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        with torch.cuda.device(dev):
            torch.cuda.empty_cache()
