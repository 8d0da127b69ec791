"""Writing one run: `create_run` stores a job as a SCHEDULED run (params, tags, inputs, config.json), and
`RunRecorder` maps its step reports and result onto it while it runs (metrics, snapshots of G, result).

Naming (see DESIGN.md, "MLflow naming contract"):
- params: `TransferConfig.to_params()` (`alpha`, `beta`, `lambda.<layer>`, …, `params_version`) plus
  `style_images` and `beta_effective` (the size-aware β the optimiser used at the output size);
- metrics with step = iteration: `cost/total`, `cost/content`, `cost/style` (Σ λ·J), `cost/style/<layer>`
  (J_style[l], unweighted), `cost/tv`, `time/step_seconds`; at the end `final/<cost>` (the costs of the
  returned image, the best G at the final scale), `time/total_seconds`, `time/tracking_seconds` and
  `steps_done`, all at step = steps_done, with what the worker adds (`quality/*`, see `engine.jobs.worker`);
- images: `client.log_image(run_id, G, key="generated", step=k)` (MLflow 3.17 stores each as a PNG and a
  256-px WebP, and tags the run `mlflow.loggedImages`);
- artifacts: `inputs/content.png`, `inputs/style.png` (`inputs/style_<i>.png` for further styles),
  `config.json`, `result.png`, `thumbnail.png` (long side ≤ 256);
- tags: `owner` and `mlflow.user` (the signed-in user; without sign-in `mlflow.user` is the OS user),
  `source`, `sha256.content`, `sha256.style.<i>`, `device`, `device_name`, `gpu` (CUDA only),
  `torch_version`, `stylelab_version`, `worker` ("<host>:<pid>") and `worker_start`, `failure_reason`
  and `stopped` when they apply, `memory_plan` (untiled, or by tiles: `device.ScalePlan.describe`),
  `mlflow.parentRunId` for children of a group (see `groups`).

Threads: every call names its tracking URI and run id (`MlflowClient(uri)`); nothing uses MLflow's
process-global fluent API. A slow or dead store never stalls the optimisation (see `RunRecorder`).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import queue
import socket
import tempfile
import threading
import time
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from PIL import Image

import engine
from engine.core.config import TransferConfig, check_style_images
from engine.core.device import device_name, pick_device
from engine.core.errors import InputError
from engine.core.images import Inputs, long_side_size
from engine.core.transfer import StepReport, TransferResult
from engine.tracking.orphans import process_start, worker_id
from engine.tracking.schema import (
    _MAX_METRICS_PER_BATCH,
    _MAX_TAG_LENGTH,
    ACTIVE,
    DEFAULT_FLUSH_EVERY,
    DEFAULT_SNAPSHOTS,
    IMAGE_KEY,
    OWNER_TAG,
    SOURCES,
    THUMBNAIL_SIZE,
    USER_TAG,
    style_artifact,
    style_mask_artifact,
)
from engine.tracking.store import (
    default_fallback_root,
    get_or_create_experiment,
    resolve_tracking_uri,
    short_error,
    store_error_reason,
)


def _device_tags(device: str | torch.device | None) -> dict[str, str]:
    dev = pick_device(str(device)) if device is not None else pick_device()
    tags = {"device": str(dev), "device_name": device_name(dev)}
    if dev.type == "cuda":
        tags["gpu"] = torch.cuda.get_device_name(dev)
    return tags


def _thumbnail(img: Image.Image, size: int = THUMBNAIL_SIZE) -> Image.Image:
    thumb = img.copy()
    thumb.thumbnail((size, size), Image.Resampling.LANCZOS)  # only ever shrinks
    return thumb


def _metric_key(cost: str) -> str:
    return f"cost/{cost}"


class _Task(NamedTuple):
    kind: str  # metrics | snapshot | image | tags | status | terminate
    payload: Any


_STOP = _Task("stop", None)


def _default_name(config: TransferConfig, source: str) -> str:
    c = config
    return f"{source} {c.size}px {c.optimizer}×{c.total_steps} β/α={c.beta / max(c.alpha, 1e-30):.0e}"


def effective_params(config: TransferConfig, inputs: Inputs) -> dict[str, str]:
    """`beta_effective`: the β the optimiser uses at the output size (`TransferConfig.effective_beta`; a
    coarse scale uses its own size's). The user's β stays the param `beta`."""
    width, height = long_side_size(inputs.content.image.size, config.size)
    return {"beta_effective": repr(config.effective_beta(height, width))}


def create_run(
    tracking_uri: str | None,
    experiment: str,
    config: TransferConfig,
    inputs: Inputs,
    *,
    source: str = "cli",
    status: str = "SCHEDULED",
    parent_run_id: str | None = None,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    device: str | torch.device | None = None,
    owner: str | None = None,
) -> str:
    """Create a run with its params, tags, inputs (`inputs/*.png`) and `config.json`, as SCHEDULED (a
    job accepted into the queue) or RUNNING, and return its run id: from here on the store holds
    everything needed to run it, on any worker. `owner`: the signed-in user who starts it (tags `owner`
    and `mlflow.user`); without one, `mlflow.user` is the OS user. InputError when the store refuses; a
    run half created is ended FAILED."""
    check_style_images((), len(inputs.styles))
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if status not in ACTIVE:
        raise ValueError(f"a new run is RUNNING or SCHEDULED, got {status!r}")
    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(uri)
    run_tags = {
        "source": source,
        "sha256.content": inputs.content.sha256,
        **{f"sha256.style.{i}": s.sha256 for i, s in enumerate(inputs.styles)},
        **({"sha256.mask": inputs.mask.sha256} if inputs.mask else {}),
        **{f"sha256.style_mask.{i}": m.sha256 for i, m in enumerate(inputs.style_masks) if m is not None},
        **_device_tags(device),
        "torch_version": torch.__version__,
        "stylelab_version": str(getattr(engine, "__version__", "0.1.0")),
        "worker": worker_id(),
        **({"worker_start": start} if (start := process_start(os.getpid())) else {}),
        **(tags or {}),
    }
    if owner:  # the signed-in user is the run's owner and MLflow's "User"
        run_tags |= {OWNER_TAG: owner, USER_TAG: owner}
    else:
        with contextlib.suppress(Exception):
            run_tags.setdefault(USER_TAG, getpass.getuser())
    if parent_run_id:
        run_tags["mlflow.parentRunId"] = parent_run_id
    try:
        experiment_id = get_or_create_experiment(client, experiment)
        run = client.create_run(experiment_id, tags=run_tags, run_name=run_name or _default_name(config, source))
    except Exception as e:
        raise InputError(f"Cannot create a run in the MLflow store: {short_error(e)}") from e
    run_id = run.info.run_id
    try:
        if status == "SCHEDULED":
            client.update_run(run_id, status="SCHEDULED")
        params = config.to_params() | {"style_images": str(len(inputs.styles))} | effective_params(config, inputs)
        if masked := [str(i + 1) for i, m in enumerate(inputs.style_masks) if m is not None]:
            params["style_masks"] = ",".join(masked)  # the style images with a mask, by number
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):
            client.log_batch(run_id, params=items[i : i + 100], synchronous=True)
        with tempfile.TemporaryDirectory(prefix="stylelab-inputs-") as folder:
            (Path(folder) / "content.png").write_bytes(inputs.content.png)
            for i, style in enumerate(inputs.styles):
                (Path(folder) / style_artifact(i).removeprefix("inputs/")).write_bytes(style.png)
            if inputs.mask is not None:
                (Path(folder) / "mask.png").write_bytes(inputs.mask.png)
            for i, style_mask in enumerate(inputs.style_masks):
                if style_mask is not None:
                    (Path(folder) / style_mask_artifact(i).removeprefix("inputs/")).write_bytes(style_mask.png)
            client.log_artifacts(run_id, folder, "inputs")
        client.log_text(run_id, config.to_json(), "config.json")
    except Exception as e:
        with contextlib.suppress(Exception):
            client.set_tag(run_id, "failure_reason", f"could not log inputs: {short_error(e)}")
            client.set_terminated(run_id, "FAILED")
        raise InputError(f"Cannot log to the MLflow store: {short_error(e)}") from e
    return run_id


def end_status(result: TransferResult) -> tuple[str, str | None]:
    """The one rule for how a run that returned a result ends, and why: FINISHED; KILLED when
    cancelled; FAILED when it diverged (the result is then the best image before that)."""
    if result.stopped == "cancelled":
        return "KILLED", None
    if result.stopped == "diverged":
        return "FAILED", (
            f"The optimisation diverged at step {result.steps_done} (the cost became non-finite); the result "
            "is the best image before that. Lower lr or the weights."
        )
    return "FINISHED", None


class RunRecorder:
    """Maps one run's step reports and result onto its MLflow run (created before by `create_run`).

    Every write goes through one background writer thread from `start()` on: `on_step` only buffers
    metrics (a `log_batch` every `flush_every` steps) and renders a snapshot every `snapshot_every`
    steps and at the last step. When the store fails mid-run, the recorder stops writing, keeps every
    metric in memory, and the end (`finish`, `fail`, `cancel`) saves result.png, config.json and
    metrics.json (every metric, tag and the end status) in `fallback_dir/<run_id>/`, snapshots in its
    `images/`, saying where in `warning`. What already reached the store stays there;
    `tracking.write_back` logs the rest and ends the run once the store answers again.

    Used as a context manager, an exception ends the run FAILED (KILLED for KeyboardInterrupt) with
    the reason in tag `failure_reason`, and the exception propagates. Call its methods from the thread
    that runs the job (the writer thread is internal).
    """

    def __init__(
        self,
        tracking_uri: str | None,
        run_id: str,
        config: TransferConfig,
        *,
        snapshot_every: int | None = None,
        flush_every: int = DEFAULT_FLUSH_EVERY,
        status: str = "SCHEDULED",
        fallback_dir: str | Path | None = None,
        drain_timeout_s: float = 60.0,
    ) -> None:
        if flush_every < 1:
            raise ValueError(f"flush_every must be at least 1, got {flush_every}")
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.run_id = run_id
        self.config = config
        self.snapshot_every = (
            max(1, round(config.total_steps / DEFAULT_SNAPSHOTS)) if snapshot_every is None else snapshot_every
        )
        self.flush_every = flush_every
        self.drain_timeout_s = drain_timeout_s
        self.fallback_root = default_fallback_root(fallback_dir)
        self.warning: str | None = None  # set when the result had to be saved locally
        self.error: BaseException | None = None  # the store's first error during the run
        self.fallback_path: Path | None = None
        self.logged_through_step = 0  # metrics of steps 1..this reached the store
        self.writer_cpu_s = 0.0  # CPU time the writer thread spent (PNG encoding, store calls)
        self.status = status
        self.inputs: Inputs | None = None  # set by `create`

        self._client = MlflowClient(self.tracking_uri)
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Task] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._drained = threading.Event()
        self._pending: list[Metric] = []
        self._tags: dict[str, str] = {}  # every tag given to the writer
        self._history: dict[str, tuple[array, array]] = {}
        self._last_report: StepReport | None = None
        self._last_snapshot_step = 0
        self._last_elapsed = 0.0
        self._tracking_s = 0.0
        self._started = False
        self._closed = False

    @classmethod
    def create(
        cls,
        tracking_uri: str | None,
        experiment: str,
        config: TransferConfig,
        content: object,
        styles: Sequence[object],
        *,
        source: str = "cli",
        status: str = "RUNNING",
        parent_run_id: str | None = None,
        run_name: str | None = None,
        tags: dict[str, str] | None = None,
        device: str | torch.device | None = None,
        **options: Any,
    ) -> RunRecorder:
        """Decode the inputs (`Inputs.decode`), `create_run`, then a recorder for it (scripts and tests;
        a queued job's recorder attaches to the run its submit created)."""
        inputs = Inputs.decode(content, styles)
        run_id = create_run(tracking_uri, experiment, config, inputs, source=source, status=status,
                            parent_run_id=parent_run_id, run_name=run_name, tags=tags, device=device)  # fmt: skip
        recorder = cls(tracking_uri, run_id, config, status=status, **options)
        recorder.inputs = inputs
        return recorder

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self, device: str | torch.device | None = None, tags: dict[str, str] | None = None) -> None:
        """The optimisation begins: status RUNNING; `worker` (and the device tags, when `device` is
        given) name the process and device that actually run it; `tags` are set with them."""
        if self._started:
            return
        self._started = True
        self._thread = threading.Thread(target=self._write_loop, name=f"mlflow-{self.run_id[:8]}", daemon=True)
        self._thread.start()
        tags = {"worker": worker_id(), **(tags or {})}
        if start := process_start(os.getpid()):
            tags["worker_start"] = start
        if device is not None:
            tags |= _device_tags(device)
        self._put_tags(tags)
        if self.status == "SCHEDULED":
            self._queue.put(_Task("status", "RUNNING"))
        self.status = "RUNNING"

    def on_step(self, report: StepReport) -> None:
        """Buffer this step's metrics; flush every `flush_every` steps; log a snapshot of G every
        `snapshot_every` steps and at the last step. Never raises because of the store."""
        if self._closed:
            return
        t0 = time.perf_counter()
        if not self._started:
            self.start()
        stamp = int(time.time() * 1000)
        values = {_metric_key(k): v for k, v in report.costs.items()}
        values["time/step_seconds"] = report.elapsed_s - self._last_elapsed
        self._last_elapsed = report.elapsed_s
        for key, value in values.items():
            value = float(value)
            self._pending.append(Metric(key, value, stamp, report.step))
            steps, vals = self._history.setdefault(key, (array("q"), array("d")))
            steps.append(report.step)
            vals.append(value)
        self._last_report = report
        if report.step % self.flush_every == 0 or report.step == report.total_steps:
            self._flush()
        every = self.snapshot_every
        if report.step == report.total_steps or (every > 0 and report.step % every == 0):
            self._snapshot(report)
        self._tracking_s += time.perf_counter() - t0

    def finish(
        self,
        result: TransferResult,
        extra_metrics: dict[str, float] | None = None,
        extra_tags: dict[str, str] | None = None,
    ) -> None:
        """Log the result (with `extra_metrics` at the last step, e.g. the worker's quality figures) and
        end the run as `end_status` says."""
        if self._closed:
            return
        t0 = time.perf_counter()
        if not self._started:
            self.start()
        self._flush()
        last = self._last_report
        if last is not None and self._last_snapshot_step != last.step:
            self._snapshot(last)  # a cancelled run's last state
        self._tracking_s += time.perf_counter() - t0
        step = result.steps_done
        stamp = int(time.time() * 1000)
        final = {f"final/{k}": float(v) for k, v in result.costs.items()}
        final |= {
            "time/total_seconds": float(result.elapsed_s),
            "time/tracking_seconds": self._tracking_s,
            "steps_done": float(step),
        }
        final |= {k: float(v) for k, v in (extra_metrics or {}).items()}
        self._queue.put(_Task("metrics", ([Metric(k, v, stamp, step) for k, v in final.items()], False)))
        self._queue.put(_Task("image", ("result.png", result.image)))
        self._queue.put(_Task("image", ("thumbnail.png", _thumbnail(result.image))))
        status, reason = end_status(result)
        tags = dict(extra_tags or {}) | ({"stopped": result.stopped} if result.stopped else {})
        if result.memory_plan:
            tags["memory_plan"] = result.memory_plan
        if reason:
            tags["failure_reason"] = reason
        self._close(status, tags, result=result, final=final)

    def fail(self, exc: BaseException | str) -> None:
        """End the run FAILED with tag `failure_reason` (KILLED for KeyboardInterrupt)."""
        if self._closed:
            return
        if not self._started:
            self.start()
        self._flush()
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        if isinstance(exc, KeyboardInterrupt):
            reason = "interrupted"
        elif isinstance(exc, (InputError, str)):
            reason = str(exc)
        else:
            reason = f"{type(exc).__name__}: {exc}"
        self._close(status, {"failure_reason": reason[:_MAX_TAG_LENGTH]})

    def cancel(self, reason: str = "cancelled") -> None:
        """End the run KILLED without a result (e.g. a queued job cancelled before it started)."""
        if self._closed:
            return
        if not self._started:
            self.start()
        self._flush()
        self._close("KILLED", {"stopped": "cancelled", "failure_reason": reason[:_MAX_TAG_LENGTH]})

    def suspend(self, reason: str) -> None:
        """Put the run back to SCHEDULED (its worker stops; it will run again from the start): what was
        logged stays, and `interrupted` says why."""
        if self._closed:
            return
        if not self._started:
            self.start()
        self._flush()
        self._close("SCHEDULED", {"interrupted": reason[:_MAX_TAG_LENGTH]})

    def __enter__(self) -> RunRecorder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if self._closed:
            return
        if exc is not None:
            self.fail(exc)
        else:
            self.fail("the run ended without a result")

    # -- writing -----------------------------------------------------------------------------------

    def _put_tags(self, tags: dict[str, str]) -> None:
        self._tags |= {k: str(v) for k, v in tags.items()}  # what a write-back sets, should the store fail
        self._queue.put(_Task("tags", tags))

    def _flush(self) -> None:
        if self._pending:
            batch, self._pending = self._pending, []
            self._queue.put(_Task("metrics", (batch, True)))

    def _snapshot(self, report: StepReport) -> None:
        self._last_snapshot_step = report.step
        self._queue.put(_Task("snapshot", (report.step, report.preview())))  # a large G is shrunk; result.png is not

    def _close(
        self,
        status: str,
        tags: dict[str, str],
        *,
        result: TransferResult | None = None,
        final: dict[str, float] | None = None,
    ) -> None:
        self._closed = True
        self._last_report = None  # it holds the last G (GPU memory)
        if tags:
            self._put_tags(tags)
        self._queue.put(_Task("status", status) if status in ACTIVE else _Task("terminate", status))
        if status in ACTIVE:
            self._queue.put(_Task("drained", None))
        self._queue.put(_STOP)
        drained = self._drained.wait(self.drain_timeout_s)
        self.status = status
        with self._lock:
            if not drained and self.error is None:
                self.error = TimeoutError(f"the store did not answer within {self.drain_timeout_s:g} s")
            error = self.error
        if error is not None:
            self._save_locally(result, final, status, tags)

    def _write_loop(self) -> None:
        """The writer thread: perform tasks in order; after the store's first error, write nothing more
        to it (the metrics stay in `_history`, snapshots go to the fallback folder) except one last,
        best-effort FAILED status that nobody waits for."""
        while True:
            task = self._queue.get()
            if task is _STOP:
                return
            if self.error is None:
                cpu = time.thread_time()
                try:
                    self._write(task)
                except Exception as e:  # this task, too, goes to the fallback folder below
                    with self._lock:
                        self.error = self.error or e
                else:
                    self.writer_cpu_s += time.thread_time() - cpu
                    if task.kind in ("terminate", "drained"):
                        self._drained.set()
                    continue
            if task.kind == "drained":
                self._drained.set()
            elif task.kind == "terminate":
                self._drained.set()
                with contextlib.suppress(Exception):
                    reason = (
                        f"the tracking store failed during the run ({short_error(self.error)}); what was not logged "
                        f"was saved on {socket.gethostname()} in {self._fallback_folder()}"
                    )
                    self._client.set_tag(self.run_id, "failure_reason", reason[:_MAX_TAG_LENGTH])
                    self._client.set_terminated(self.run_id, "FAILED")
            elif task.kind == "snapshot":
                step, img = task.payload
                with contextlib.suppress(Exception):
                    folder = self._fallback_folder() / "images"
                    folder.mkdir(parents=True, exist_ok=True)
                    img.save(folder / f"{IMAGE_KEY}_step_{step:06d}.png")

    def _write(self, task: _Task) -> None:
        client, run_id = self._client, self.run_id
        if task.kind == "metrics":
            metrics, per_step = task.payload
            for i in range(0, len(metrics), _MAX_METRICS_PER_BATCH):
                client.log_batch(run_id, metrics=metrics[i : i + _MAX_METRICS_PER_BATCH], synchronous=True)
            if per_step:
                self.logged_through_step = max(self.logged_through_step, *(m.step for m in metrics))
        elif task.kind == "snapshot":
            step, img = task.payload
            client.log_image(run_id, img, key=IMAGE_KEY, step=step, synchronous=True)
        elif task.kind == "image":
            name, img = task.payload
            client.log_image(run_id, img, artifact_file=name)
        elif task.kind == "tags":
            client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in task.payload.items()], synchronous=True)
        elif task.kind == "status":
            client.update_run(run_id, status=task.payload)
        elif task.kind == "terminate":
            client.set_terminated(run_id, task.payload)
        elif task.kind == "drained":
            pass

    def _fallback_folder(self) -> Path:
        return self.fallback_root / self.run_id

    def _save_locally(
        self,
        result: TransferResult | None,
        final: dict[str, float] | None,
        status: str,
        tags: dict[str, str],
    ) -> None:
        folder = self._fallback_folder()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if result is not None:
                result.image.save(folder / "result.png")
            (folder / "config.json").write_text(self.config.to_json())
            metrics = {
                "run_id": self.run_id,
                "tracking_uri": self.tracking_uri,
                "error": short_error(self.error) if self.error else None,
                "status": status,
                "tags": self._tags | tags,  # every tag of the run, the end's last
                "logged_to_store_through_step": self.logged_through_step,
                "final": final or {},
                "history": {k: [[s, v] for s, v in zip(st, vs, strict=True)] for k, (st, vs) in self._history.items()},
            }
            tmp = folder / ".metrics.json.tmp"  # whole or absent: its presence means "to write back"
            tmp.write_text(json.dumps(metrics, indent=1, allow_nan=True))
            os.replace(tmp, folder / "metrics.json")
        except OSError as e:
            self.warning = (
                f"The MLflow store at {self.tracking_uri} failed during run {self.run_id} ({short_error(self.error)}), "
                f"and saving the result locally in {folder} failed too ({short_error(e)})."
            )
            return
        self.fallback_path = folder
        saved = "result, config and metrics" if result is not None else "config and metrics"
        n = self.logged_through_step
        in_store = f"metrics of steps 1–{n} are in MLflow" if n else "no step's metrics reached MLflow"
        self.warning = (
            f"The MLflow store at {self.tracking_uri} failed during run {self.run_id} "
            f"({store_error_reason(self.error)}). The {saved} were saved in {folder} instead; {in_store}."
        )

    # -- reading back (for tests and the live view) -------------------------------------------------

    def history(self) -> pd.DataFrame:
        """Every metric reported so far, kept in memory (index step, one column per key)."""
        frames = {k: pd.Series(vs, index=pd.Index(st, name="step")) for k, (st, vs) in self._history.items()}
        return pd.DataFrame(frames).sort_index()
