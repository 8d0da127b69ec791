"""The job queue: accept jobs durably, run them on workers, and show their live progress.

Scope: `submit` and `submit_batch` validate a job, store it as a SCHEDULED MLflow run (config and
inputs) and queue it in the durable `Ledger` before returning, so a restart of the app loses nothing.
Workers, one per device, claim batches from the ledger atomically and run them with the one worker
function (`worker.run_batch`); a backend decides where a worker lives:

- `thread`: in this process (tests, the CLI's queue);
- `process`: one child process per device (the app's default), so the optimisation never shares an
  interpreter lock with page rendering; its typed messages come back over a pipe;
- `ray`: Ray tasks on a cluster (`engine.jobs.ray_backend`, `STYLELAB_RAY_ADDRESS`).

Start-up, in the background, queues again the jobs whose worker died (attempts counted, see `ledger`).
Cancel reaches any worker through the store (`tracking.request_cancel`). Pages poll
`JobQueue.progress(run_id)`, which reads memory only: one shared snapshot per job, whatever the number of
viewers. Nothing here imports Streamlit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from engine import tracking
from engine.core.config import TransferConfig, check_style_images
from engine.core.errors import InputError
from engine.core.images import InputImage, Inputs
from engine.core.plan import estimate_seconds, gflop_per_step
from engine.core.transfer import check_batchable, check_mask, check_style_masks
from engine.jobs import ownership, worker
from engine.jobs import preview as previews
from engine.jobs.backends import make_backend
from engine.jobs.ledger import Ledger, PreviewRow, ledger_path
from engine.jobs.serving import recover_jobs

__all__ = ["BACKENDS", "JobProgress", "JobQueue", "JobSpec", "default_backend"]

log = logging.getLogger(__name__)

BACKENDS = ("thread", "process", "ray")
GroupFinaliser = Callable[[str, str], object]
RATE_SMOOTHING = 0.3  # weight of the newest run in the exponential mean of seconds per GFLOP
WRITE_BACK_EVERY_S = 10.0  # how often runs saved locally while the store was down are written back


def default_backend() -> str:
    """`ray` when STYLELAB_RAY_ADDRESS is set, else STYLELAB_BACKEND, else `process`."""
    if os.environ.get("STYLELAB_RAY_ADDRESS"):
        return "ray"
    return os.environ.get("STYLELAB_BACKEND", "process")


@dataclass(frozen=True)
class JobSpec:
    """One style transfer to run: the config and its images, decoded once (`InputImage`; raw bytes are
    decoded here). `tags` are extra MLflow tags of the run (e.g. a sweep child's `sweep.<param>`)."""

    config: TransferConfig
    content: InputImage | bytes
    styles: tuple[InputImage | bytes, ...]
    source: str = "app"
    experiment: str = tracking.DEFAULT_EXPERIMENT
    run_name: str | None = None
    parent_run_id: str | None = None
    tags: dict[str, str] = dataclasses.field(default_factory=dict, hash=False)
    owner: str | None = None  # the signed-in user who submits it (tags `owner`, `mlflow.user`)
    mask: InputImage | bytes | None = None  # the regions' mask when `config.regions` (engine.core.regions)
    style_masks: tuple[InputImage | bytes | None, ...] = ()  # per style image, which part each region takes

    def __post_init__(self) -> None:  # decode raw bytes here, once; decoded images pass as they are
        inputs = Inputs.decode(self.content, self.styles, self.mask, self.style_masks)
        object.__setattr__(self, "content", inputs.content)
        object.__setattr__(self, "styles", inputs.styles)
        object.__setattr__(self, "mask", inputs.mask)
        object.__setattr__(self, "style_masks", inputs.style_masks)

    @property
    def inputs(self) -> Inputs:
        return Inputs(self.content, self.styles, self.mask, self.style_masks)


@dataclass(frozen=True)
class JobProgress:
    """An immutable snapshot of one job, safe to read from any thread. `state` is the run's MLflow status."""

    run_id: str
    state: str  # SCHEDULED | RUNNING | FINISHED | FAILED | KILLED
    position: int | None  # 1-based place in the queue while SCHEDULED, else None
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
    attempt: int = 1

    @property
    def done(self) -> bool:
        return self.state in tracking.TERMINAL


@dataclass(eq=False)
class _Job:
    """What this process shows of one job; read and written only under `JobQueue._lock`."""

    run_id: str
    config: TransferConfig
    aspect: float
    state: str = "SCHEDULED"
    work: tuple[float, ...] = ()  # GFLOP of each step of its batch, set when it starts (ETA, measured speed)
    device: str = ""
    attempt: int = 1
    batch_size: int = 1
    step: int = 0
    size: tuple[int, int] | None = None
    costs: dict[str, float] = dataclasses.field(default_factory=dict)
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)
    image: Image.Image | None = None
    error: str | None = None
    warning: str | None = None
    started: float | None = None  # time.monotonic() when a worker took it
    ended: float | None = None
    report_elapsed: float = 0.0  # elapsed_s of the latest step
    report_at: float = 0.0  # time.monotonic() of the latest step


class JobQueue:
    """A durable FIFO of style-transfer jobs and one worker per device (see the module's docstring).

    Each job is an MLflow run from `submit` on (SCHEDULED, then RUNNING, then FINISHED, FAILED or
    KILLED); its run id is the job id. A failing job ends FAILED and never stops the worker.
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
        backend: str | None = None,
        queue_db: str | Path | None = None,
        poll_s: float = 0.5,
        group_finalisers: Sequence[GroupFinaliser] = (),
    ) -> None:
        """`devices`: one worker each (default: every GPU, else the CPU); [] runs no worker here, so this
        process only accepts jobs (other processes or machines on the same ledger run them).
        `group_finalisers`: called as `f(tracking_uri, parent_run_id)` when the last child of a group
        (a sweep, a layer strip) ends, once per group; see `add_group_finaliser`."""
        if preview_every < 1:
            raise ValueError(f"preview_every must be at least 1, got {preview_every}")
        backend = backend or default_backend()
        if backend not in BACKENDS:
            raise InputError(f"Unknown job backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
        self.backend = backend
        self.name = f"q{next(self._ids)}"  # names its worker threads
        self.tracking_uri: str = tracking.resolve_tracking_uri(tracking_uri)
        self.preview_every = preview_every
        self.fallback_dir = str(fallback_dir) if fallback_dir is not None else None
        self.fallback_root = tracking.default_fallback_root(fallback_dir)  # where local workers save runs
        self.keep_finished = keep_finished
        self.poll_s = poll_s
        self.ledger = Ledger(queue_db or ledger_path(self.tracking_uri))
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._jobs: dict[str, _Job] = {}  # submit order
        self._inputs: dict[str, Inputs] = {}  # decoded inputs of batches submitted here, until they start
        self._cancelled: set[str] = set()
        self._rates: dict[str, float] = {}  # device -> measured seconds per GFLOP (exponential mean)
        self._stop = threading.Event()
        self._finalisers: list[GroupFinaliser] = list(group_finalisers)
        # Recovery reads the store, and a new SQLite store runs MLflow's migrations first (seconds): in the
        # background, so a page can draw at once; submits wait for it (it must not see their new runs).
        self._recovery: tuple[tuple[str, ...], list[str]] = ((), [])
        self._started = threading.Event()
        threading.Thread(target=self._start_up, name=f"stylelab-start-up-{self.name}", daemon=True).start()
        self._pool_keeps_inputs = self.backend == "thread"  # other workers read the store
        self._pool = make_backend(self, devices)
        self.devices: list[str] = self._pool.devices
        self._write_back_failed: set[str] = set()  # folders whose write-back failed for a reason already logged
        threading.Thread(target=self._write_back_loop, name=f"stylelab-write-back-{self.name}", daemon=True).start()

    # -- recovery ------------------------------------------------------------------------------------

    def _start_up(self) -> None:
        try:
            self._recovery = self._recover()
            self._finalise_ready_groups()
            ownership.delete_pending(self.tracking_uri)
        finally:
            self._started.set()

    def wait_started(self, timeout_s: float | None = None) -> bool:
        """Wait until start-up recovery is over (it runs in the background); False on timeout."""
        return self._started.wait(timeout_s)

    @property
    def recovered(self) -> tuple[str, ...]:
        """Jobs queued again at start-up because their worker had died."""
        self.wait_started()
        return self._recovery[0]

    @property
    def orphaned_runs(self) -> list[str]:
        """Active runs that no queue would run, marked FAILED at start-up."""
        self.wait_started()
        return self._recovery[1]

    def _recover(self) -> tuple[tuple[str, ...], list[str]]:
        """At start-up: queue again the jobs whose worker died, fail those tried `MAX_ATTEMPTS` times, and
        fail active runs that no queue will run. Skipped when the store is unreachable."""
        try:
            found = recover_jobs(self.ledger, self.tracking_uri)
            uri = tracking.check_reachable(self.tracking_uri)
            orphaned = tracking.mark_orphaned_runs(uri, tracking.DEFAULT_EXPERIMENT, keep=self.ledger.known)
            if found.requeued:
                log.warning("Queued again after their worker died: %s", ", ".join(found.requeued))
            return found.requeued, orphaned
        except Exception as e:
            log.warning("Could not recover the jobs of %s: %s", self.tracking_uri, e)
            return (), []

    # -- writing back runs whose store failed -------------------------------------------------------

    def _write_back_loop(self) -> None:
        """Every `WRITE_BACK_EVERY_S` (and at once, for folders left before a restart)."""
        while not self._stop.is_set():
            try:
                self.write_back_pending()
            except Exception:
                log.exception("Writing back saved runs failed")
            self._stop.wait(WRITE_BACK_EVERY_S)

    def write_back_pending(self) -> list[str]:
        """When the store answers, write back every run saved under the fallback folder while it was
        down (`tracking.write_back`: metrics, result, tags, then its saved status); return their run ids.
        Its job here then drops the warning that said where the result was saved."""
        folders = tracking.pending_write_backs(self.fallback_root, self.tracking_uri)
        if not folders:
            return []
        try:
            tracking.check_reachable(self.tracking_uri, timeout_s=tracking.CHECK_TIMEOUT_S)
        except InputError:
            return []
        done = []
        for folder in folders:
            try:
                what = tracking.write_back(self.tracking_uri, folder)
            except Exception as e:
                if folder.name not in self._write_back_failed:
                    self._write_back_failed.add(folder.name)
                    log.warning("Could not write back %s: %s", folder, tracking.short_error(e))
                continue
            log.info("Written back from %s: %s", folder, what)
            ownership.delete_if_marked(self.tracking_uri, folder.name)  # marked deleted while it ran
            self._write_back_failed.discard(folder.name)
            with self._lock:
                job = self._jobs.get(folder.name)
                if job is not None:
                    job.warning = None
            done.append(folder.name)
        return done

    # -- submit and cancel ---------------------------------------------------------------------------

    def submit(self, spec: JobSpec) -> str:
        """Validate the job (InputError, with nothing queued or logged, when an image cannot be read, the
        settings do not match the images, or the store is unreachable), store it as a SCHEDULED run,
        queue it durably, and return its run id at once."""
        return self.submit_batch([spec])[0]

    def submit_batch(self, specs: Sequence[JobSpec]) -> list[str]:
        """Queue `specs` as one batch: one worker runs them together with `transfer_batch` (one network
        pass per step for all), and each stays its own job and MLflow run (progress, cancel, metrics,
        result), as if submitted alone. Validated like `submit`, plus: every spec must have the same
        content and style images, and their configs may differ only in `transfer.BATCH_KNOBS` (cost
        weights, seed, init); else InputError with nothing queued. Returns the run ids, in order.

        A child cancelled while the batch runs stops being recorded at once while the others run on;
        when the batch ends, its run ends KILLED with its result of the batch's end. Cancelling every
        child stops the batch. Any error fails every child with the same message."""
        specs = list(specs)
        if not specs:
            raise InputError("A batch needs at least one job.")
        for spec in specs:
            if not isinstance(spec.config, TransferConfig):
                raise TypeError(f"JobSpec.config must be a TransferConfig, got {type(spec.config).__name__}")
            if spec.source not in tracking.SOURCES:
                raise ValueError(f"source must be one of {tracking.SOURCES}, got {spec.source!r}")
        self._check_open()
        inputs = specs[0].inputs
        for spec in specs[1:]:
            if spec.inputs.digests != inputs.digests:
                raise InputError("The jobs of a batch must share their content and style images, and their mask.")
        for spec in specs:
            check_style_images(spec.config.style_blend, len(inputs.styles), spec.config.regions)
            check_mask(spec.config, inputs.mask_image, inputs.content.image.size)
            check_style_masks(spec.config, inputs.style_images, inputs.style_mask_images)
        check_batchable([spec.config for spec in specs])
        self.wait_started()
        uri = tracking.check_reachable(self.tracking_uri)
        run_ids: list[str] = []
        try:
            for spec in specs:
                tags = {str(k): str(v) for k, v in spec.tags.items()} or None
                run_ids.append(tracking.create_run(uri, spec.experiment, spec.config, inputs, source=spec.source,
                                                   parent_run_id=spec.parent_run_id, run_name=spec.run_name,
                                                   tags=tags, owner=spec.owner))  # fmt: skip
            batch = uuid.uuid4().hex
            width, height = inputs.content.image.size
            with self._lock:
                for spec, run_id in zip(specs, run_ids, strict=True):
                    self._jobs[run_id] = _Job(run_id, spec.config, height / width)
                if self._pool_keeps_inputs:
                    self._inputs[batch] = inputs
            self.ledger.add(batch, run_ids)  # durable from here on
        except BaseException:
            for run_id in run_ids:
                self._end_unstarted(run_id, "creating the runs of its batch failed")
            raise
        with self._lock:
            self._wake.notify_all()
        self._pool.notify()
        return run_ids

    def cancel(self, run_id: str, *, actor: tracking.Actor = tracking.SINGLE_USER) -> bool:
        """Cancel a queued job (its run ends KILLED, it never runs) or a running one, on any worker (the
        loop stops after the current step; the run ends KILLED with the best image so far as
        result.png; in a batch whose other jobs run on, see `submit_batch`). False when the job is
        unknown or already over. NotAllowed when `actor` may not change the run (`tracking.access`)."""
        if not actor.single_user:
            ownership.check_owner(self.tracking_uri, run_id, actor, "cancel")
        if self.ledger.withdraw(run_id):
            self._end_unstarted(run_id, "cancelled before it started")
            return True
        if self.ledger.state(run_id) != "running":
            return False
        with self._lock:
            self._cancelled.add(run_id)
            job = self._jobs.get(run_id)
            if job is not None and job.batch_size > 1:  # it may show RUNNING a while yet: say why
                job.warning = "Cancelled: its run ends KILLED when the rest of its batch ends."
        try:
            tracking.request_cancel(self.tracking_uri, run_id)
        except Exception as e:  # a local worker still sees the local flag
            log.warning("Could not record the cancel of %s in the store: %s", run_id, e)
        return True

    def delete(self, run_id: str, *, actor: tracking.Actor = tracking.SINGLE_USER) -> ownership.Deleted:
        """Delete a run (MLflow's soft delete) and, for a sweep's or a layer strip's parent, its children;
        active ones are cancelled first and deleted by the service once they end (see `ownership.delete`).
        NotAllowed, with nothing changed, when `actor` may not change the run (a group's parent's owner owns
        the group)."""
        return ownership.delete(self, run_id, actor)

    def _end_unstarted(self, run_id: str, reason: str) -> None:
        with contextlib.suppress(Exception):
            tracking.set_run_tags(self.tracking_uri, run_id, {"stopped": "cancelled"})
            tracking.set_run_status(self.tracking_uri, run_id, "KILLED", reason)
        with contextlib.suppress(Exception):
            self.ledger.withdraw(run_id)
        with self._lock:
            job = self._jobs.get(run_id)
            if job is not None:
                self._end(job, "KILLED")
        self._group_maybe_done(run_id)

    # -- groups (sweeps, layer strips) ---------------------------------------------------------------

    def add_group_finaliser(self, finaliser: GroupFinaliser) -> None:
        """Call `finaliser(tracking_uri, parent_run_id)` when a group's last child ends (the studies that
        submit groups register theirs; the app passes them at start-up so a restart finalises too)."""
        with self._lock:
            if finaliser not in self._finalisers:
                self._finalisers.append(finaliser)

    def _group_maybe_done(self, run_id: str) -> None:
        """The service, not a page, ends a group's parent: once, by whoever ends its last child. A run
        ended after someone deleted it is soft-deleted here first (`ownership.delete`)."""
        try:
            parent = tracking.parent_of(self.tracking_uri, run_id)
            ownership.delete_if_marked(self.tracking_uri, run_id)  # after a read that answered: no extra wait
            if parent and tracking.group_ready(self.tracking_uri, parent):
                self._finalise_group(parent)
        except Exception:
            log.exception("Could not check the group of run %s", run_id)

    def _finalise_ready_groups(self) -> None:
        """Groups whose last child ended while no service was there to see it (e.g. across a restart)."""
        try:
            for parent in tracking.ready_groups(self.tracking_uri):
                self._finalise_group(parent)
        except Exception as e:
            log.warning("Could not look for groups to finalise: %s", e)

    def _finalise_group(self, parent: str) -> None:
        with self._lock:
            finalisers = list(self._finalisers)
        if not finalisers or not self.ledger.claim_group_end(parent):
            return
        if ownership.end_deleted_group(self.tracking_uri, parent):  # no contact sheet for a deleted group
            return
        for finalise in finalisers:
            try:
                finalise(self.tracking_uri, parent)
            except Exception:
                log.exception("Could not finalise group %s", parent)

    # -- live previews (engine.jobs.preview: cheap, untracked, at a bounded priority) -------------------

    def submit_preview(self, slot: str, config: TransferConfig, inputs: Inputs) -> str:
        """Queue the preview of `config` on `inputs` for `slot` (one browser session: its newer previews
        abandon the older ones) and return its id at once; see `preview`. Settings already previewed
        return that preview."""
        self._check_open()
        check_style_images(config.style_blend, len(inputs.styles), config.regions)
        check_mask(config, inputs.mask_image, inputs.content.image.size)
        if any(m is not None for m in inputs.style_masks):
            raise InputError("Live previews do not take masks on the style images; press Run to see this setting.")
        small = previews.preview_config(config)
        preview_id = self.ledger.add_preview(slot, previews.preview_key(small, inputs), small.to_json(),
                                             previews.preview_images(inputs), previews.DEBOUNCE_S)  # fmt: skip
        with self._lock:
            self._wake.notify_all()
        self._pool.notify()
        return preview_id

    def preview(self, preview_id: str) -> PreviewRow | None:
        """A preview's state and, once done, its result (PNG bytes); None for an unknown id."""
        return self.ledger.preview(preview_id)

    # -- reading progress ----------------------------------------------------------------------------

    def progress(self, run_id: str) -> JobProgress | None:
        """A snapshot of the job, or None when this process does not follow it (another process or a
        Ray node runs it: read MLflow then)."""
        with self._lock:
            job = self._jobs.get(run_id)
            if job is None or (job.state == "SCHEDULED" and not self._pool.reports_progress):
                return None
            snapshot = self._snapshot(job, time.monotonic())
        if snapshot.state == "SCHEDULED":
            owner = self.ledger.owner(run_id)
            if owner is not None:  # claimed: by one of our workers (its first message is on its way) or not
                return dataclasses.replace(snapshot, state="RUNNING") if self._pool.owns(owner) else None
            snapshot = dataclasses.replace(snapshot, position=self.ledger.position(run_id))
        return snapshot

    def jobs(self) -> list[JobProgress]:
        """Every job this process follows, newest first."""
        with self._lock:
            now = time.monotonic()
            return [self._snapshot(job, now) for job in reversed(self._jobs.values())]

    def queue_length(self) -> int:
        """Jobs queued or running, on any worker of this queue's ledger."""
        return self.ledger.active_count()

    @property
    def seconds_per_gflop(self) -> dict[str, float]:
        """Measured seconds per GFLOP per device, an exponential mean over the runs done here."""
        with self._lock:
            return dict(self._rates)

    def estimate_seconds(self, config: TransferConfig, device: str | None = None, *, aspect: float = 0.75) -> float:
        """`plan.estimate_seconds` for `device` (default: the first worker's) with the rate measured on it
        when there is one, else the device type's default."""
        device = device or self.devices[0]
        with self._lock:
            rate = self._rates.get(device)
        return estimate_seconds(config, device, rate, aspect=aspect)

    def _snapshot(self, job: _Job, now: float) -> JobProgress:
        elapsed = eta = None
        if job.started is not None:
            elapsed = (job.ended or now) - job.started
        if job.state == "RUNNING" and job.step > 0:
            eta = self._remaining(job, now)
        elif job.state == "FINISHED":
            eta = 0.0
        return JobProgress(
            run_id=job.run_id, state=job.state, position=None, step=job.step, total_steps=job.config.total_steps,
            size=job.size, elapsed_s=elapsed or 0.0, eta_s=eta, costs=dict(job.costs),
            history=tuple(job.history),  # the dicts are never changed once appended
            image=job.image, error=job.error, warning=job.warning, device=job.device, attempt=job.attempt,
        )  # fmt: skip

    @staticmethod
    def _remaining(job: _Job, now: float) -> float:
        """Remaining seconds from the time per step so far, each step weighted by its FLOPs (so coarse
        scales, which are cheaper, do not make the fine scale look fast); counts down between steps."""
        work = job.work
        done = sum(work[: job.step])
        per_gflop = job.report_elapsed / done if done > 0 else 0.0
        return max(0.0, per_gflop * sum(work[job.step :]) - (now - job.report_at))

    # -- messages from the workers -------------------------------------------------------------------

    def _apply(self, message: worker.Message) -> None:
        """Fold one worker message into what this process shows."""
        if isinstance(message, worker.Started):
            known = []
            for run_id in message.run_ids:
                with self._lock:
                    job = self._jobs.get(run_id)
                if job is None:  # queued by another process, or before a restart
                    try:
                        config = tracking.load_config(self.tracking_uri, run_id)
                    except Exception:
                        continue
                    job = _Job(run_id, config, 0.75)
                known.append(job)
            if not known:
                return
            work = gflop_per_step([job.config for job in known], known[0].aspect, message.device)
            now = time.monotonic()
            with self._lock:
                for job in known:
                    self._jobs.setdefault(job.run_id, job)
                    job.state, job.device, job.started, job.work = "RUNNING", message.device, now, work
                    job.attempt, job.step, job.history, job.ended = message.attempt, 0, [], None
                    job.batch_size = len(message.run_ids)
            return
        with self._lock:
            job = self._jobs.get(message.run_id)
            if job is None:
                return
            if isinstance(message, worker.Stepped):
                job.step, job.size, job.costs = message.step, message.size, dict(message.costs)
                job.history.append({"step": message.step, **message.costs})
                job.report_elapsed, job.report_at = message.elapsed_s, time.monotonic()
                if message.image is not None:
                    job.image = message.image
            elif isinstance(message, worker.Ended):
                if message.image is not None:
                    job.image = message.image
                if message.status in tracking.TERMINAL:
                    if message.result is not None:
                        self._measure(job.work, job.device, message.result.steps_done, message.result.elapsed_s)
                    self._end(job, message.status, error=message.error, warning=message.warning)
                else:  # interrupted: queued again
                    job.state, job.step, job.started = "SCHEDULED", 0, None
                self._cancelled.discard(message.run_id)
        if isinstance(message, worker.Ended) and message.status in tracking.TERMINAL:
            self._group_maybe_done(message.run_id)

    def _measure(self, work: tuple[float, ...], device: str, steps_done: int, elapsed_s: float) -> None:
        """Fold a batch's seconds per GFLOP into the device's exponential mean (under the lock)."""
        gflop = sum(work[:steps_done])
        if gflop <= 0 or elapsed_s <= 0:
            return
        rate = elapsed_s / gflop
        old = self._rates.get(device)
        self._rates[device] = rate if old is None else (1 - RATE_SMOOTHING) * old + RATE_SMOOTHING * rate

    def _end(self, job: _Job, state: str, *, error: str | None = None, warning: str | None = None) -> None:
        """Mark `job` over (under the lock) and forget the oldest ended jobs beyond `keep_finished`."""
        job.state, job.error = state, error
        job.warning = warning or job.warning
        job.ended = time.monotonic()
        ended = [rid for rid, j in self._jobs.items() if j.state in tracking.TERMINAL]
        for rid in ended[: max(0, len(ended) - self.keep_finished)]:
            del self._jobs[rid]

    # -- what the workers call -----------------------------------------------------------------------

    def take_inputs(self, batch: str) -> Inputs | None:
        """The decoded inputs of a batch submitted in this process (None: the worker reads the store)."""
        with self._lock:
            return self._inputs.pop(batch, None)

    def locally_cancelled(self, run_id: str) -> bool:
        with self._lock:
            return run_id in self._cancelled

    def wait_for_work(self) -> None:
        with self._lock:
            if not self._stop.is_set():
                self._wake.wait(self.poll_s)

    # -- shutting down -------------------------------------------------------------------------------

    def shutdown(self, wait: bool = False) -> None:
        """Stop taking jobs: running jobs stop after their current step and go back to the queue
        (SCHEDULED, to run again at the next start), queued jobs stay queued. `wait` blocks until the
        workers have ended."""
        self._stop.set()
        with self._lock:
            self._wake.notify_all()
        self._pool.stop(wait)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _check_open(self) -> None:
        if self._stop.is_set():
            raise RuntimeError("The job queue is shut down; no new jobs are taken.")
