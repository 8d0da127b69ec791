"""MLflow tracking: write a run while it optimises, read runs back for the app, the CLI and the MLflow UI.

Scope: the store's location, one `RunTracker` per run (params, tags, inputs, per-step metrics, snapshots
of G, the result), orphaned-run clean-up, and fast readers (`list_runs`, `metric_history`, `image_steps`,
`load_config`, `download_artifact`). The only module of the engine that imports MLflow; no Streamlit.

Naming (see DESIGN.md, "MLflow naming contract"):
- params: `TransferConfig.to_params()` (`alpha`, `beta`, `lambda.<layer>`, …) plus `style_images`;
- metrics with step = iteration: `cost/total`, `cost/content`, `cost/style` (Σ λ·J), `cost/style/<layer>`
  (J_style[l], unweighted), `cost/tv`, `time/step_seconds`; at the end `final/<cost>` (the costs of the
  returned image, the best G at the final scale, which can differ from the last step's `cost/*`),
  `time/total_seconds`, `time/tracking_seconds` (time the optimisation thread spent in tracking) and
  `steps_done`, all at step = steps_done; with them `quality/content`, `quality/style` and
  `quality/style/<layer>`, the result's costs under one fixed reference setting (`engine.quality`),
  comparable across runs whatever their λ, and `time/quality_seconds`;
- images: `client.log_image(run_id, G, key="generated", step=k)`; MLflow 3.17 stores each as two
  artifacts, `images/generated+step+<k>+timestamp+<ms>+<uuid>.png` (full size) and
  `…+compressed.webp` (long side 256), and tags the run `mlflow.loggedImages`;
- artifacts: `inputs/content.png`, `inputs/style.png` (`inputs/style_<i>.png` for further styles),
  `config.json`, `result.png`, `thumbnail.png` (long side ≤ 256);
- tags: `source`, `sha256.content`, `sha256.style.<i>` (i = 0 for inputs/style.png), `device`
  (e.g. "cuda:0"), `device_name`, `gpu` (CUDA only), `torch_version`, `stylelab_version`, `worker`
  ("<host>:<pid>", for orphan detection) and `worker_start`, `failure_reason` and `stopped` when they
  apply, `quality_error` when the quality figures could not be computed (the run still succeeds),
  `mlflow.parentRunId` for sweep children (and `sweep.*`, see `engine.sweep`).

Threads: every call names its tracking URI and run id (`MlflowClient(uri)`); nothing uses MLflow's
process-global fluent API. A `RunTracker` hands all writes during a run to one background writer
thread, so a slow or dead store never stalls the optimisation: on a store error it stops logging,
keeps the data, and `finish` saves the result locally (see `RunTracker.warning`).
"""

from __future__ import annotations

import contextlib
import getpass
import io
import json
import os
import queue
import re
import shutil
import socket
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from array import array
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag, ViewType
from PIL import Image

import engine
from engine import images
from engine.config import TransferConfig, check_style_images
from engine.device import device_name, pick_device
from engine.errors import InputError
from engine.quality import reference_costs
from engine.transfer import StepReport, TransferResult, transfer

__all__ = [
    "DEFAULT_EXPERIMENT",
    "SOURCES",
    "RunTracker",
    "UILinks",
    "check_reachable",
    "create_parent_run",
    "default_artifact_root",
    "download_artifact",
    "get_or_create_experiment",
    "image_steps",
    "list_runs",
    "load_config",
    "load_inputs",
    "load_run",
    "log_run_image",
    "mark_orphaned_runs",
    "metric_history",
    "mlflow_ui_command",
    "mlflow_ui_links",
    "resolve_tracking_uri",
    "set_run_status",
    "set_run_tags",
    "tracked_transfer",
]

DEFAULT_EXPERIMENT = "style-transfer"
SOURCES = ("cli", "app", "sweep", "explorer")
IMAGE_KEY = "generated"
THUMBNAIL_SIZE = 256
DEFAULT_FLUSH_EVERY = 25
DEFAULT_SNAPSHOTS = 20  # snapshots per run when snapshot_every is not given
TERMINAL = ("FINISHED", "FAILED", "KILLED")
_MAX_METRICS_PER_BATCH = 1000  # MLflow's limit for log_batch
_MAX_TAG_LENGTH = 5000


# --------------------------------------------------------------------------------------------------
# The store


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The tracking URI to use: `uri`, else $MLFLOW_TRACKING_URI, else MLflow's own default
    (`sqlite:///<cwd>/mlflow.db`) made absolute, so the app, the CLI and `mlflow ui` started elsewhere
    agree. Relative SQLite and file-store paths are made absolute too."""
    uri = (uri or os.environ.get("MLFLOW_TRACKING_URI") or "").strip()
    if not uri:
        return f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////") and ":memory:" not in uri:
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    scheme = urllib.parse.urlparse(uri).scheme
    if scheme == "file":
        return Path(_local_path(uri)).resolve().as_uri()
    if scheme == "" or (len(scheme) == 1 and os.name == "nt"):  # a bare path: a file store
        return Path(uri).resolve().as_uri()
    if scheme in ("http", "https"):
        return uri.rstrip("/")
    return uri


def _is_http(uri: str) -> bool:
    return urllib.parse.urlparse(uri).scheme in ("http", "https")


def default_artifact_root(tracking_uri: str, experiment: str = DEFAULT_EXPERIMENT) -> str | None:
    """Where a new experiment keeps its artifacts: for SQLite `<dir of the db>/mlruns/<experiment>`
    (MLflow's default `./mlruns` when the db is in the working directory, but absolute, and named
    after the experiment since its id is not known before it exists); None (the store or the server
    decides) otherwise. Runs then live in `<that>/<run_id>/artifacts`."""
    if tracking_uri.startswith("sqlite:///") and ":memory:" not in tracking_uri:
        folder = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment).strip("._") or "experiment"
        return (Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent / "mlruns" / folder).as_uri()
    return None


def get_or_create_experiment(
    client: MlflowClient, name: str = DEFAULT_EXPERIMENT, artifact_root: str | None = None
) -> str:
    """The id of experiment `name`, created (or restored, when deleted) if needed. SQLite stores get an
    explicit absolute artifact location (`artifact_root` or `default_artifact_root`); HTTP servers and
    file stores choose their own."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    uri = client.tracking_uri
    location = artifact_root if artifact_root is not None else default_artifact_root(uri, name)
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created meanwhile by another thread or process
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def check_reachable(uri: str | None = None, timeout_s: float = 5.0) -> str:
    """Raise InputError, within about `timeout_s`, when the tracking store cannot be used; return the
    resolved URI. HTTP servers get one request without retries (MLflow's default retries for minutes);
    other stores (SQLite, files) are opened, which creates a new SQLite database."""
    uri = resolve_tracking_uri(uri)
    hint = (
        "Start it with `mlflow server --host 127.0.0.1 --port 5000 --backend-store-uri "
        "sqlite:///mlflow.db`, or unset MLFLOW_TRACKING_URI to use a local store."
    )
    if _is_http(uri):
        from mlflow.utils.credentials import get_default_host_creds
        from mlflow.utils.rest_utils import http_request

        try:
            response = http_request(
                get_default_host_creds(uri),
                "/api/2.0/mlflow/experiments/search",
                "GET",
                params={"max_results": 1},
                max_retries=0,
                backoff_factor=0,
                backoff_jitter=0,
                timeout=timeout_s,
                raise_on_status=False,
            )
        except Exception as e:
            raise InputError(f"Cannot reach the MLflow tracking server at {uri}: {_why(e, timeout_s)}. {hint}") from e
        if response.status_code in (401, 403):
            raise InputError(
                f"The MLflow tracking server at {uri} refused access (HTTP {response.status_code}). Set "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)."
            )
        if response.status_code != 200:
            raise InputError(
                f"Cannot use the MLflow tracking server at {uri}: it answered HTTP {response.status_code} "
                f"({response.text[:200]!r}); is this URL an MLflow server? {hint}"
            )
        return uri
    if uri.startswith("sqlite:///") and ":memory:" not in uri:
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not folder.is_dir():
            raise InputError(f"Cannot open the MLflow store {uri}: the folder {folder} does not exist.")
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as e:
        raise InputError(f"Cannot open the MLflow tracking store {uri}: {_short(e)}.") from e
    return uri


def _why(e: BaseException, timeout_s: float) -> str:
    """A connection failure in a few words, not urllib3's paragraph."""
    text = str(e)
    for needle, words in (
        ("Connection refused", "connection refused (is the server running?)"),
        ("Name or service not known", "unknown host name"),
        ("nodename nor servname", "unknown host name"),
        ("Temporary failure in name resolution", "the host name could not be resolved"),
        ("timed out", f"no answer within {timeout_s:g} s"),
        ("Timeout", f"no answer within {timeout_s:g} s"),
        ("SSLError", "TLS handshake failed"),
    ):
        if needle in text:
            return words
    return _short(e, 200)


def _short(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------------------------------
# Writing one run


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _process_start(pid: int) -> str | None:
    """The start time of process `pid` in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except OSError:
        return False
    return True


def _device_tags(device: str | torch.device | None) -> dict[str, str]:
    dev = pick_device(str(device)) if device is not None else pick_device()
    tags = {"device": str(dev), "device_name": device_name(dev)}
    if dev.type == "cuda":
        tags["gpu"] = torch.cuda.get_device_name(dev)
    return tags


def _png(img: Image.Image) -> bytes:
    """Lossless PNG, fast: zlib level 1 encodes a 1024-px photo in ~0.1 s (level 6: ~0.25 s), ~3 % larger."""
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _as_input(source: bytes | Image.Image, name: str) -> tuple[Image.Image, bytes, str]:
    """(decoded RGB image, its PNG, sha256): the hash of the file's bytes when given bytes, else of
    the PNG (the file stored as the run's input artifact)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        img = images.load_image(data, name=name)
        return img, _png(img), images.sha256_of(data)
    if isinstance(source, Image.Image):
        img = source if source.mode == "RGB" else source.convert("RGB")
        png = _png(img)
        return img, png, images.sha256_of(png)
    raise TypeError(f"{name}: expected image bytes or a PIL image, got {type(source).__name__}")


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


class RunTracker:
    """One MLflow run of one style transfer, created when the job is submitted.

    The constructor creates the run and logs params, tags and inputs before returning (so the run id
    is a permalink at once; a store error here raises InputError). From `start()` on, every write goes
    through one background writer thread: `on_step` only buffers metrics (a `log_batch` every
    `flush_every` steps) and renders a snapshot every `snapshot_every` steps and at the last step.
    When the store fails mid-run, the tracker stops writing, keeps every metric in memory, and
    `finish` saves result.png, config.json and metrics.json in `fallback_dir/<run_id>/`, telling where
    in `warning`. What already reached the store stays there.

    Used as a context manager, an exception ends the run FAILED (KILLED for KeyboardInterrupt) with
    the reason in tag `failure_reason`, and the exception propagates.

    Call its methods from one thread, the one that runs the job (the writer thread is internal); to
    cancel a running job, make the loop's `should_stop` return True, which ends the run KILLED.
    `cancel()` is for a queued job that never started.
    """

    def __init__(
        self,
        tracking_uri: str | None,
        experiment: str,
        config: TransferConfig,
        content: bytes | Image.Image,
        styles: Sequence[bytes | Image.Image],
        *,
        source: str = "cli",
        snapshot_every: int | None = None,
        flush_every: int = DEFAULT_FLUSH_EVERY,
        parent_run_id: str | None = None,
        status: str = "RUNNING",
        device: str | torch.device | None = None,
        run_name: str | None = None,
        tags: dict[str, str] | None = None,
        fallback_dir: str | Path | None = None,
        drain_timeout_s: float = 60.0,
        quality: bool = True,
    ) -> None:
        check_style_images((), len(styles))
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        if status not in ("RUNNING", "SCHEDULED"):
            raise ValueError(f"a new run is RUNNING or SCHEDULED, got {status!r}")
        if flush_every < 1:
            raise ValueError(f"flush_every must be at least 1, got {flush_every}")
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.config = config
        self.source = source
        self.snapshot_every = (
            max(1, round(config.total_steps / DEFAULT_SNAPSHOTS)) if snapshot_every is None else snapshot_every
        )
        self.flush_every = flush_every
        self.drain_timeout_s = drain_timeout_s
        self.fallback_root = Path(fallback_dir or Path.cwd() / "stylelab-unsaved").resolve()
        self.warning: str | None = None  # set when the result had to be saved locally
        self.error: BaseException | None = None  # the store's first error during the run
        self.fallback_path: Path | None = None
        self.logged_through_step = 0  # metrics of steps 1..this reached the store
        self.writer_cpu_s = 0.0  # CPU time the writer thread spent (PNG encoding, store calls)
        self.status = status
        self.quality = quality
        self._device = device

        self.content_image, content_png, content_sha = _as_input(content, "content image")
        decoded = [_as_input(s, f"style image {i + 1}") for i, s in enumerate(styles)]
        self.style_images = [img for img, _, _ in decoded]

        self._client = MlflowClient(self.tracking_uri)
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Task] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._drained = threading.Event()
        self._pending: list[Metric] = []
        self._history: dict[str, tuple[array, array]] = {}
        self._last_report: StepReport | None = None
        self._last_snapshot_step = 0
        self._last_elapsed = 0.0
        self._tracking_s = 0.0
        self._started = False
        self._closed = False

        run_tags = {
            "source": source,
            "sha256.content": content_sha,
            **{f"sha256.style.{i}": sha for i, (_, _, sha) in enumerate(decoded)},
            **_device_tags(device),
            "torch_version": torch.__version__,
            "stylelab_version": str(getattr(engine, "__version__", "0.1.0")),
            "worker": _worker_id(),
            **({"worker_start": start} if (start := _process_start(os.getpid())) else {}),
            **(tags or {}),
        }
        with contextlib.suppress(Exception):
            run_tags.setdefault("mlflow.user", getpass.getuser())
        if parent_run_id:
            run_tags["mlflow.parentRunId"] = parent_run_id
        try:
            self.experiment_id = get_or_create_experiment(self._client, experiment)
            run = self._client.create_run(self.experiment_id, tags=run_tags, run_name=run_name or self._default_name())
        except Exception as e:
            raise InputError(f"Cannot create a run in the MLflow store {self.tracking_uri}: {_short(e)}") from e
        self.run_id: str = run.info.run_id
        self.artifact_uri: str = run.info.artifact_uri
        try:
            if status == "SCHEDULED":
                self._client.update_run(self.run_id, status="SCHEDULED")
            params = config.to_params() | {"style_images": str(len(styles))}
            items = [Param(k, v) for k, v in params.items()]
            for i in range(0, len(items), 100):
                self._client.log_batch(self.run_id, params=items[i : i + 100], synchronous=True)
            with tempfile.TemporaryDirectory(prefix="stylelab-inputs-") as folder:
                (Path(folder) / "content.png").write_bytes(content_png)
                for i, (_, png, _) in enumerate(decoded):
                    (Path(folder) / ("style.png" if i == 0 else f"style_{i}.png")).write_bytes(png)
                self._client.log_artifacts(self.run_id, folder, "inputs")
            self._client.log_text(self.run_id, config.to_json(), "config.json")
        except Exception as e:
            with contextlib.suppress(Exception):
                self._client.set_tag(self.run_id, "failure_reason", f"could not log inputs: {_short(e)}")
                self._client.set_terminated(self.run_id, "FAILED")
            raise InputError(f"Cannot log to the MLflow store {self.tracking_uri}: {_short(e)}") from e

    def _default_name(self) -> str:
        c = self.config
        return f"{self.source} {c.size}px {c.optimizer}×{c.total_steps} β/α={c.beta / max(c.alpha, 1e-30):.0e}"

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self, device: str | torch.device | None = None) -> None:
        """The optimisation begins: status RUNNING; `worker` (and the device tags, when `device` is
        given) name the process and device that actually run it."""
        if self._started:
            return
        self._started = True
        self._thread = threading.Thread(target=self._write_loop, name=f"mlflow-{self.run_id[:8]}", daemon=True)
        self._thread.start()
        tags = {"worker": _worker_id()}
        if start := _process_start(os.getpid()):
            tags["worker_start"] = start
        if device is not None:
            tags |= _device_tags(device)
            self._device = device
        self._queue.put(_Task("tags", tags))
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

    def finish(self, result: TransferResult) -> None:
        """Log the result and end the run: FINISHED, KILLED when cancelled, FAILED when it diverged."""
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
        quality_tags = self._log_quality(result, final) if self.quality else {}
        self._queue.put(_Task("metrics", ([Metric(k, v, stamp, step) for k, v in final.items()], False)))
        self._queue.put(_Task("image", ("result.png", result.image)))
        self._queue.put(_Task("image", ("thumbnail.png", _thumbnail(result.image))))
        status, reason = "FINISHED", None
        if result.stopped == "cancelled":
            status = "KILLED"
        elif result.stopped == "diverged":
            status = "FAILED"
            reason = (
                f"diverged: the cost became non-finite at step {step}; the result is the best image "
                "before that. Lower lr or the weights."
            )
        tags = quality_tags | ({"stopped": result.stopped} if result.stopped else {})
        if reason:
            tags["failure_reason"] = reason
        self._close(status, tags, result=result, final=final)

    def _log_quality(self, result: TransferResult, final: dict[str, float]) -> dict[str, str]:
        """Add `quality/content`, `quality/style` and `quality/style/<layer>` (the result's costs under
        `engine.quality.REFERENCE`, comparable across runs) and `time/quality_seconds` to `final`. Never
        raises: a failure leaves the metrics out and returns the tag `quality_error` instead."""
        t0 = time.perf_counter()
        try:
            figures = reference_costs(
                result.image,
                self.content_image,
                self.style_images,
                style_blend=self.config.style_blend or None,
                device=self._device,
            )
        except Exception as e:  # a quality figure is a bonus; the run itself succeeded
            return {"quality_error": _short(e, _MAX_TAG_LENGTH)}
        final |= {f"quality/{k}": float(v) for k, v in figures.items()}
        final["time/quality_seconds"] = time.perf_counter() - t0
        return {}

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

    def __enter__(self) -> RunTracker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if self._closed:
            return
        if exc is not None:
            self.fail(exc)
        else:
            self.fail("the run ended without a result")

    # -- writing -----------------------------------------------------------------------------------

    def _flush(self) -> None:
        if self._pending:
            batch, self._pending = self._pending, []
            self._queue.put(_Task("metrics", (batch, True)))

    def _snapshot(self, report: StepReport) -> None:
        self._last_snapshot_step = report.step
        self._queue.put(_Task("snapshot", (report.step, report.image())))

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
            self._queue.put(_Task("tags", tags))
        self._queue.put(_Task("terminate", status))
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
                except Exception as e:
                    with self._lock:
                        self.error = self.error or e
                else:
                    self.writer_cpu_s += time.thread_time() - cpu
                    if task.kind == "terminate":
                        self._drained.set()
                    continue
            if task.kind == "terminate":
                self._drained.set()
                with contextlib.suppress(Exception):
                    reason = (
                        f"the tracking store failed during the run ({_short(self.error)}); what was not logged "
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
                "experiment_id": self.experiment_id,
                "error": _short(self.error) if self.error else None,
                "status": status,
                "tags": tags,
                "logged_to_store_through_step": self.logged_through_step,
                "final": final or {},
                "history": {k: [[s, v] for s, v in zip(st, vs, strict=True)] for k, (st, vs) in self._history.items()},
            }
            (folder / "metrics.json").write_text(json.dumps(metrics, indent=1, allow_nan=True))
        except OSError as e:
            self.warning = (
                f"The MLflow store at {self.tracking_uri} failed during run {self.run_id} ({_short(self.error)}), "
                f"and saving the result locally in {folder} failed too ({_short(e)})."
            )
            return
        self.fallback_path = folder
        saved = "result, config and metrics" if result is not None else "config and metrics"
        n = self.logged_through_step
        in_store = f"metrics of steps 1–{n} are in MLflow" if n else "no step's metrics reached MLflow"
        self.warning = (
            f"The MLflow store at {self.tracking_uri} failed during run {self.run_id} "
            f"({_short(self.error)}). The {saved} were saved in {folder} instead; {in_store}."
        )

    # -- reading back (for tests and the live view) -------------------------------------------------

    def history(self) -> pd.DataFrame:
        """Every metric reported so far, kept in memory (index step, one column per key)."""
        frames = {k: pd.Series(vs, index=pd.Index(st, name="step")) for k, (st, vs) in self._history.items()}
        return pd.DataFrame(frames).sort_index()


# --------------------------------------------------------------------------------------------------
# Sweeps and status changes


def create_parent_run(
    tracking_uri: str | None,
    experiment: str = DEFAULT_EXPERIMENT,
    *,
    name: str,
    params: dict[str, str] | None = None,
    source: str = "sweep",
    tags: dict[str, str] | None = None,
) -> str:
    """A RUNNING parent run for a sweep; its children pass `parent_run_id=` to `RunTracker`."""
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    run_tags = {"source": source, "worker": _worker_id()}
    if start := _process_start(os.getpid()):
        run_tags["worker_start"] = start
    run = client.create_run(
        get_or_create_experiment(client, experiment),
        tags=run_tags | {k: str(v) for k, v in (tags or {}).items()},
        run_name=name,
    )
    if params:
        client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    return run.info.run_id


def set_run_status(tracking_uri: str | None, run_id: str, status: str, reason: str | None = None) -> None:
    """End (FINISHED, FAILED, KILLED) or move (RUNNING, SCHEDULED) a run, with an optional `failure_reason`."""
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    if reason:
        client.set_tag(run_id, "failure_reason", reason[:_MAX_TAG_LENGTH])
    if status in TERMINAL:
        client.set_terminated(run_id, status)
    else:
        client.update_run(run_id, status=status)


def set_run_tags(tracking_uri: str | None, run_id: str, tags: dict[str, str]) -> None:
    """Set tags on an existing run, in one call."""
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    client.log_batch(run_id, tags=[RunTag(k, str(v)[:_MAX_TAG_LENGTH]) for k, v in tags.items()], synchronous=True)


def log_run_image(
    tracking_uri: str | None,
    run_id: str,
    image: Image.Image,
    artifact_file: str | None = None,
    *,
    key: str | None = None,
    step: int = 0,
) -> None:
    """Log `image` on a run: as artifact `artifact_file` (e.g. "contact_sheet.png"; rewriting it replaces
    it), and/or in the MLflow UI's image grid under `key` at `step` (each call adds one)."""
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    if artifact_file is not None:
        client.log_image(run_id, image, artifact_file=artifact_file)
    if key is not None:
        client.log_image(run_id, image, key=key, step=step, synchronous=True)


def mark_orphaned_runs(tracking_uri: str | None, experiment: str = DEFAULT_EXPERIMENT) -> list[str]:
    """Set FAILED every RUNNING or SCHEDULED run whose `worker` tag names this host and a process that
    has ended (or a reused pid: its `worker_start` differs). Returns their run ids. Runs of other hosts
    and of live processes are left alone."""
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    host = socket.gethostname()
    runs = [
        run
        for status in ("RUNNING", "SCHEDULED")  # search filters take no IN for status
        for run in client.search_runs([exp.experiment_id], f"attributes.status = '{status}'", max_results=5000)
    ]
    orphaned = []
    for run in runs:
        worker = run.data.tags.get("worker", "")
        run_host, _, pid_text = worker.rpartition(":")
        if run_host != host or not pid_text.isdigit():
            continue
        pid = int(pid_text)
        started = run.data.tags.get("worker_start")
        if _pid_alive(pid) and (started is None or _process_start(pid) in (None, started)):
            continue
        client.set_tag(
            run.info.run_id, "failure_reason", f"worker process {pid} on {host} ended before the run finished"
        )
        client.set_terminated(run.info.run_id, "FAILED")
        orphaned.append(run.info.run_id)
    return orphaned


# --------------------------------------------------------------------------------------------------
# Readers


def _local_path(uri: str) -> str:
    parsed = urllib.parse.urlparse(uri)
    return urllib.request.url2pathname(parsed.path) if parsed.scheme == "file" else uri


def _local_artifact_root(artifact_uri: str) -> Path | None:
    """The artifact folder on this machine, or None when it lives behind a server or in the cloud."""
    scheme = urllib.parse.urlparse(artifact_uri).scheme
    if scheme == "file" or scheme == "" or (len(scheme) == 1 and os.name == "nt"):
        return Path(_local_path(artifact_uri))
    return None


def _cache_root(cache_dir: str | Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "stylelab" / "mlflow-artifacts"


def _get_run(client: MlflowClient, run_id: str) -> Run:
    try:
        return client.get_run(run_id)
    except Exception as e:
        raise InputError(f"No run {run_id!r} in the MLflow store {client.tracking_uri}: {_short(e)}") from e


def _fetch(client: MlflowClient, run_id: str, artifact_uri: str, path: str, cache_dir: str | Path | None) -> str:
    """A local path of artifact `path`: in place for local stores, else downloaded once into the cache
    (artifacts never change once written, so a cached copy stays valid)."""
    root = _local_artifact_root(artifact_uri)
    if root is not None:
        local = root / path
        if not local.exists():
            raise InputError(f"Run {run_id} has no artifact {path!r}.")
        return str(local)
    target = _cache_root(cache_dir) / run_id / path
    if target.exists():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=target.parent, prefix=".download-")
    try:
        try:
            downloaded = client.download_artifacts(run_id, path, tmp)
        except Exception as e:
            raise InputError(f"Could not download artifact {path!r} of run {run_id}: {_short(e)}") from e
        os.replace(downloaded, target)  # atomic: concurrent readers see a whole file or none
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def list_runs(
    tracking_uri: str | None,
    experiment: str = DEFAULT_EXPERIMENT,
    filter_string: str = "",
    max_results: int = 500,
) -> pd.DataFrame:
    """Runs of `experiment`, newest first, from ONE search: columns run_id, run_name, status,
    start_time, end_time (UTC), source, parent_run_id, failure_reason, artifact_uri, thumbnail_uri,
    thumbnail_path (the local file when the artifact store is on this machine and the thumbnail exists,
    else missing (test with `pd.isna`): fetch it with `download_artifact(uri, run_id, "thumbnail.png")`),
    then `params.<k>`, `metrics.<k>` (latest values: `metrics.final/total`, `metrics.cost/total`, …)
    and `tags.<k>` as in `mlflow.search_runs`. Keys with `/` need backticks in `filter_string`:
    metrics.`final/total` < 1e5."""
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    base = ["run_id", "run_name", "status", "start_time", "end_time", "source", "parent_run_id",
            "failure_reason", "artifact_uri", "thumbnail_uri", "thumbnail_path"]  # fmt: skip
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return pd.DataFrame(columns=base)
    try:
        runs = client.search_runs(
            [exp.experiment_id],
            filter_string,
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=max_results,
            order_by=["attributes.start_time DESC"],
        )
    except Exception as e:
        if getattr(e, "error_code", None) == "INVALID_PARAMETER_VALUE":
            raise InputError(f"Invalid run filter {filter_string!r}: {_short(e)}") from e
        raise
    rows = []
    for run in runs:
        info, data = run.info, run.data
        root = _local_artifact_root(info.artifact_uri)
        thumb = root / "thumbnail.png" if root is not None else None
        row: dict[str, Any] = {
            "run_id": info.run_id,
            "run_name": info.run_name,
            "status": info.status,
            "start_time": info.start_time,
            "end_time": info.end_time,
            "source": data.tags.get("source"),
            "parent_run_id": data.tags.get("mlflow.parentRunId"),
            "failure_reason": data.tags.get("failure_reason"),
            "artifact_uri": info.artifact_uri,
            "thumbnail_uri": f"{info.artifact_uri.rstrip('/')}/thumbnail.png",
            "thumbnail_path": str(thumb) if thumb is not None and thumb.exists() else None,
        }
        row |= {f"params.{k}": v for k, v in data.params.items()}
        row |= {f"metrics.{k}": v for k, v in data.metrics.items()}
        row |= {f"tags.{k}": v for k, v in data.tags.items()}
        rows.append(row)
    frame = pd.DataFrame(rows, columns=None if rows else base)
    for col in ("start_time", "end_time"):
        frame[col] = pd.to_datetime(frame[col], unit="ms", utc=True)
    ordered = base + sorted(c for c in frame.columns if c not in base)
    return frame[ordered]


def metric_history(tracking_uri: str | None, run_id: str, keys: Iterable[str] | None = None) -> pd.DataFrame:
    """Every logged value of the run's metrics (or of `keys`): index `step`, one column per key, NaN
    where a key has no value at a step (e.g. `final/*` exist only at the last step)."""
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    run = _get_run(client, run_id)
    wanted = sorted(run.data.metrics) if keys is None else list(keys)
    columns = {}
    for key in wanted:
        points = client.get_metric_history(run_id, key)
        by_step = {m.step: m.value for m in sorted(points, key=lambda m: (m.step, m.timestamp))}
        columns[key] = pd.Series(by_step, dtype="float64")
    frame = pd.DataFrame(columns)
    frame.index.name = "step"
    return frame.sort_index()


# MLflow 3.17: images/<key with / as ~>+step+<k>+timestamp+<ms>+<uuid>(+compressed).png|.webp;
# older versions used % as the separator.
_IMAGE_FILE = re.compile(
    r"^(?P<key>.+?)[+%]step[+%](?P<step>\d+)[+%]timestamp[+%](?P<ts>\d+)[+%](?P<uuid>[^+%]+?)"
    r"(?P<compressed>[+%]compressed)?\.(?P<ext>png|webp)$"
)


def image_steps(
    tracking_uri: str | None,
    run_id: str,
    key: str = IMAGE_KEY,
    *,
    compressed: bool = False,
    cache_dir: str | Path | None = None,
) -> list[tuple[int, str]]:
    """(step, local path) of each image logged with `log_image(key=key, step=…)`, by step; the
    full-size PNGs, or MLflow's 256-px WebP previews with `compressed=True`. Local stores give paths in
    place; remote ones are downloaded once into a cache (`cache_dir`, default ~/.cache/stylelab)."""
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    run = _get_run(client, run_id)
    names = {key.replace("/", "~"), key.replace("/", "#"), key}
    try:
        files = client.list_artifacts(run_id, "images")
    except Exception as e:
        raise InputError(f"Could not list the images of run {run_id}: {_short(e)}") from e
    latest: dict[int, tuple[int, str]] = {}
    for f in files:
        m = _IMAGE_FILE.match(f.path.rsplit("/", 1)[-1])
        if m is None or m["key"] not in names or bool(m["compressed"]) != compressed:
            continue
        step, ts = int(m["step"]), int(m["ts"])
        if step not in latest or ts > latest[step][0]:
            latest[step] = (ts, f.path)
    return [
        (step, _fetch(client, run_id, run.info.artifact_uri, path, cache_dir))
        for step, (_, path) in sorted(latest.items())
    ]


def download_artifact(tracking_uri: str | None, run_id: str, path: str, cache_dir: str | Path | None = None) -> str:
    """A local path of the run's artifact `path` (e.g. "result.png"): in place for local stores, else
    downloaded once into the cache. InputError when the run or the artifact does not exist."""
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    run = _get_run(client, run_id)
    return _fetch(client, run_id, run.info.artifact_uri, path, cache_dir)


def load_config(tracking_uri: str | None, run_id: str) -> TransferConfig:
    """The run's TransferConfig, rebuilt from its params (clone a run, open a permalink)."""
    run = _get_run(MlflowClient(resolve_tracking_uri(tracking_uri)), run_id)
    return TransferConfig.from_params(run.data.params)


class RunSummary(NamedTuple):
    run_id: str
    experiment_id: str
    name: str
    status: str  # SCHEDULED, RUNNING, FINISHED, FAILED, KILLED
    start_time: pd.Timestamp | None
    end_time: pd.Timestamp | None
    params: dict[str, str]
    metrics: dict[str, float]  # latest value of each metric
    tags: dict[str, str]


def load_run(tracking_uri: str | None, run_id: str) -> RunSummary:
    """One run's status, params, latest metrics and tags in one call (the run page's header)."""
    run = _get_run(MlflowClient(resolve_tracking_uri(tracking_uri)), run_id)
    stamp = lambda ms: pd.Timestamp(ms, unit="ms", tz="UTC") if ms else None  # noqa: E731
    return RunSummary(
        run_id=run.info.run_id,
        experiment_id=run.info.experiment_id,
        name=run.info.run_name or run.info.run_id,
        status=run.info.status,
        start_time=stamp(run.info.start_time),
        end_time=stamp(run.info.end_time),
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
        tags=dict(run.data.tags),
    )


def load_inputs(tracking_uri: str | None, run_id: str) -> tuple[bytes, list[bytes]]:
    """The run's content and style images as PNG bytes (`inputs/content.png`, `inputs/style.png`,
    `inputs/style_<i>.png`), to run them again with other settings."""
    uri = resolve_tracking_uri(tracking_uri)
    run = _get_run(MlflowClient(uri), run_id)
    count = int(run.data.params.get("style_images", "1"))
    names = ["inputs/content.png", "inputs/style.png", *(f"inputs/style_{i}.png" for i in range(1, count))]
    data = [Path(download_artifact(uri, run_id, name)).read_bytes() for name in names]
    return data[0], data[1:]


class UILinks(NamedTuple):
    runs: dict[str, str]  # run id -> its page in the MLflow UI
    compare: str  # the UI's compare view of all of them


def mlflow_ui_links(ui_base: str, experiment_id: str | Sequence[str], run_ids: Sequence[str]) -> UILinks:
    """Links into the MLflow UI at `ui_base` (e.g. http://127.0.0.1:5000): each run's page
    `{ui}/#/experiments/{exp}/runs/{id}` and `{ui}/#/compare-runs?runs=[…]&experiments=[…]`
    (URL-encoded JSON lists). `experiment_id` may be one id or one per run."""
    ui = ui_base.rstrip("/")
    exps = [experiment_id] * len(run_ids) if isinstance(experiment_id, str) else list(experiment_id)
    if len(exps) != len(run_ids):
        raise ValueError("give one experiment id, or one per run")
    runs = {rid: f"{ui}/#/experiments/{exp}/runs/{rid}" for rid, exp in zip(run_ids, exps, strict=True)}

    def encoded(items: Iterable[str]) -> str:
        return urllib.parse.quote(json.dumps(list(items), separators=(",", ":")), safe="")

    compare = f"{ui}/#/compare-runs?runs={encoded(run_ids)}&experiments={encoded(dict.fromkeys(exps))}"
    return UILinks(runs, compare)


def mlflow_ui_command(tracking_uri: str | None = None, port: int = 5000) -> str:
    """The command that starts the MLflow UI on the same store (for the app's sidebar and the CLI)."""
    uri = resolve_tracking_uri(tracking_uri)
    if _is_http(uri):
        return f"open {uri}"
    return f"mlflow ui --backend-store-uri '{uri}' --port {port}"


# --------------------------------------------------------------------------------------------------
# One call for the command line


def tracked_transfer(
    content_img: bytes | Image.Image,
    style_imgs: Sequence[bytes | Image.Image],
    config: TransferConfig,
    *,
    tracking_uri: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    source: str = "cli",
    on_step: Callable[[StepReport], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    device: str | torch.device | None = None,
    snapshot_every: int | None = None,
    flush_every: int = DEFAULT_FLUSH_EVERY,
    parent_run_id: str | None = None,
    run_name: str | None = None,
    fallback_dir: str | Path | None = None,
) -> tuple[TransferResult, RunTracker]:
    """Run `engine.transfer.transfer` as an MLflow run: check the store first (InputError before any
    compute when it is unreachable), then log everything as `RunTracker` describes. The user's
    `on_step` sees every step after the tracker. A store failure mid-run never stops the
    optimisation; then `tracker.warning` says where the result was saved."""
    uri = check_reachable(tracking_uri)
    dev = pick_device(str(device)) if device is not None else pick_device()
    tracker = RunTracker(
        uri,
        experiment,
        config,
        content_img,
        style_imgs,
        source=source,
        snapshot_every=snapshot_every,
        flush_every=flush_every,
        parent_run_id=parent_run_id,
        device=dev,
        run_name=run_name,
        fallback_dir=fallback_dir,
    )

    def step(report: StepReport) -> None:
        tracker.on_step(report)
        if on_step is not None:
            on_step(report)

    with tracker:
        tracker.start()
        result = transfer(
            tracker.content_image, tracker.style_images, config, on_step=step, should_stop=should_stop, device=dev
        )
        tracker.finish(result)
    return result, tracker
