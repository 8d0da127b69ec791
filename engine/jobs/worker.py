"""The one worker function: run a batch of stored jobs and record them. The CLI, the studio, sweeps and
the layer explorer all end up here, whichever backend (a thread, a process, a Ray task) calls it.

`run_batch` reads what the store holds for each job (config; inputs, unless the caller already has
them decoded), runs one `transfer_batch`, fans every step out to each job's `RunRecorder` and to
`publish` (typed messages, for whoever shows live progress), computes the quality figures, and ends
each run by the one rule of `tracking.end_status`. It never raises for a job's own failure: the run
ends FAILED with the reason, and the worker goes on.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from engine.core.config import TransferConfig
from engine.core.device import device_name
from engine.core.errors import InputError
from engine.core.images import Inputs
from engine.core.quality import reference_costs
from engine.core.transfer import StepReport, TransferResult, transfer_batch
from engine.tracking import (
    DEFAULT_EXPERIMENT,
    RunRecorder,
    check_reachable,
    create_run,
    end_status,
    load_config,
    load_inputs,
    short_error,
)

__all__ = ["Ended", "Started", "Stepped", "run_batch", "tracked_transfer"]

log = logging.getLogger(__name__)


# Typed messages from a worker to its watchers (picklable: they cross process boundaries).
@dataclass(frozen=True)
class Started:
    run_ids: tuple[str, ...]
    device: str
    attempt: int


@dataclass(frozen=True)
class Stepped:
    run_id: str
    step: int
    total_steps: int
    size: tuple[int, int]
    costs: dict[str, float]
    elapsed_s: float
    image: Image.Image | None  # G, every `preview_every` steps, at the first and at the last


@dataclass(frozen=True)
class Ended:
    run_id: str
    status: str  # FINISHED, FAILED, KILLED, or SCHEDULED when the worker was interrupted (queued again)
    error: str | None
    warning: str | None
    result: TransferResult | None = None  # the best G and its costs, when the batch returned one

    @property
    def image(self) -> Image.Image | None:
        return None if self.result is None else self.result.image


Message = Started | Stepped | Ended


def _ignore(message: Message) -> None:
    pass


def run_batch(
    tracking_uri: str,
    run_ids: Sequence[str],
    device: str,
    *,
    cancelled: Callable[[str], bool] = lambda run_id: False,
    interrupted: Callable[[], bool] = lambda: False,
    publish: Callable[[Message], None] = _ignore,
    inputs: Inputs | None = None,
    configs: Sequence[TransferConfig] | None = None,
    preview_every: int = 5,
    snapshot_every: int | None = None,
    flush_every: int = 25,
    attempt: int = 1,
    fallback_dir: str | None = None,
    quality: bool = True,
    between_steps: Callable[[float], None] | None = None,
) -> list[Ended]:
    """Run the stored jobs `run_ids` (one batch; they share their inputs) on `device`, each recorded in
    its own MLflow run. A job for which `cancelled(run_id)` turns true stops being recorded at once and
    ends KILLED with the batch's result; all cancelled, the batch stops. When `interrupted()` turns true
    (the service shuts down), the batch stops and every job not cancelled goes back to SCHEDULED, to run
    again from the start elsewhere. `between_steps(elapsed_s)` is called after every iteration (the
    worker's live previews run there, see `engine.jobs.preview`). Returns one `Ended` per job, in order."""
    run_ids = list(run_ids)
    publish(Started(tuple(run_ids), device, attempt))
    recorders: list[RunRecorder] = []
    try:
        configs = list(configs) if configs is not None else [load_config(tracking_uri, r) for r in run_ids]
        inputs = inputs if inputs is not None else load_inputs(tracking_uri, run_ids[0])
        for run_id, config in zip(run_ids, configs, strict=True):
            recorder = RunRecorder(tracking_uri, run_id, config, snapshot_every=snapshot_every, flush_every=flush_every,
                                   fallback_dir=fallback_dir)  # fmt: skip
            recorder.start(device, tags={"attempts": str(attempt)})
            recorders.append(recorder)
    except Exception as e:  # the store lost the job, or it cannot be read: nothing to run
        reason = str(e) if isinstance(e, InputError) else f"could not start the job ({short_error(e)})"
        ended = [_fail(tracking_uri, run_id, reason, recorders) for run_id in run_ids]
        for message in ended:
            publish(message)
        return ended

    dropped = [False] * len(run_ids)  # cancelled while the rest of the batch runs on

    def should_stop() -> bool:
        return interrupted() or all(cancelled(r) for r in run_ids)

    def on_step(reports: list[StepReport]) -> None:
        stopping = should_stop()
        for i, (run_id, recorder, report) in enumerate(zip(run_ids, recorders, reports, strict=True)):
            # A job cancelled alone is recorded no further; when the whole batch stops, this step is
            # recorded for every job still in it, as a single run's last step always was.
            dropped[i] = dropped[i] or (cancelled(run_id) and not stopping)
            if dropped[i]:
                continue
            report = dataclasses.replace(report, _image=functools.cache(report._image))  # render G once
            recorder.on_step(report)
            show = report.step % preview_every == 0 or report.step in (1, report.total_steps)
            publish(Stepped(run_id, report.step, report.total_steps, report.size, dict(report.costs),
                            report.elapsed_s, report.preview() if show else None))  # fmt: skip
        if between_steps is not None and not stopping:
            between_steps(reports[0].elapsed_s)

    results: list[TransferResult] | None = None
    error: str | None = None
    try:
        results = transfer_batch(inputs.content.image, inputs.style_images, configs, on_step=on_step,
                                 should_stop=should_stop, device=device, mask=inputs.mask_image,
                                 style_masks=inputs.style_mask_images)  # fmt: skip
    except InputError as e:
        error = str(e)
    except Exception as e:
        if _is_out_of_memory(e):
            error = _out_of_memory_message(configs[0], len(configs), device)
        else:
            log.exception("Runs %s failed", ", ".join(run_ids))
            error = f"{type(e).__name__}: {e}"
    if error is not None:
        _free_gpu_memory(device)  # the exception, and with it the frames holding tensors, is gone now
        for recorder in recorders:
            recorder.fail(error)
        ended = [Ended(r, "FAILED", error, rec.warning) for r, rec in zip(run_ids, recorders, strict=True)]
    else:
        ended = []
        suspend = interrupted()
        for i, (run_id, recorder, result) in enumerate(zip(run_ids, recorders, results, strict=True)):
            if suspend and not (dropped[i] or cancelled(run_id)):
                recorder.suspend("the worker stopped before the run finished; it runs again from the start")
                ended.append(Ended(run_id, "SCHEDULED", None, recorder.warning))
                continue
            if (dropped[i] or cancelled(run_id)) and result.stopped is None:
                result = dataclasses.replace(result, stopped="cancelled")
            ended.append(_finish(recorder, result, inputs, configs[i], device, quality))
    for message in ended:
        publish(message)
    return ended


def _finish(
    recorder: RunRecorder, result: TransferResult, inputs: Inputs, config: TransferConfig, device: str, quality: bool
) -> Ended:
    metrics, tags = quality_figures(result, inputs, config, device) if quality else ({}, {})
    recorder.finish(result, extra_metrics=metrics, extra_tags=tags)
    status, reason = end_status(result)
    return Ended(recorder.run_id, status, reason, recorder.warning, result)


def quality_figures(
    result: TransferResult, inputs: Inputs, config: TransferConfig, device: str
) -> tuple[dict[str, float], dict[str, str]]:
    """`quality/content`, `quality/style`, `quality/style/<layer>` and `quality/style_w2`: the result's
    costs under `engine.core.quality.REFERENCE`, comparable across runs whatever their λ or style cost, and
    `time/quality_seconds`.
    A failure leaves them out and returns the tag `quality_error` instead: the run itself succeeded."""
    t0 = time.perf_counter()
    try:
        figures = reference_costs(
            result.image, inputs.content.image, inputs.style_images, style_blend=config.style_blend or None,
            device=device,
        )  # fmt: skip
    except Exception as e:
        return {}, {"quality_error": short_error(e, 5000)}
    metrics = {f"quality/{k}": float(v) for k, v in figures.items()}
    metrics["time/quality_seconds"] = time.perf_counter() - t0
    return metrics, {}


def _fail(tracking_uri: str, run_id: str, reason: str, recorders: Sequence[RunRecorder]) -> Ended:
    recorder = next((r for r in recorders if r.run_id == run_id), None)
    try:
        if recorder is None:
            recorder = RunRecorder(tracking_uri, run_id, TransferConfig())
        recorder.fail(reason)
    except Exception:
        log.exception("Could not end run %s FAILED", run_id)
    return Ended(run_id, "FAILED", reason, recorder.warning if recorder else None)


def _out_of_memory_message(config: TransferConfig, batch: int, device: str) -> str:
    kind = "GPU memory" if torch.device(device).type == "cuda" else "memory"
    batched = f" for a batch of {batch} images" if batch > 1 else ""
    try:
        label = f"{device_name(torch.device(device))} ({device})"
    except Exception:
        label = device
    return (
        f"Out of {kind} at {config.size} px{batched} on {label}. "
        f"Choose a smaller size (about {max(config.size // 2, 16)} px) and run again."
    )


def _is_out_of_memory(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or (isinstance(e, RuntimeError) and "out of memory" in str(e))


def _free_gpu_memory(device: str) -> None:
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        with torch.cuda.device(dev):
            torch.cuda.empty_cache()


def tracked_transfer(
    content: object,
    styles: Sequence[object],
    config: TransferConfig,
    *,
    tracking_uri: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    source: str = "cli",
    on_step: Callable[[Stepped], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    device: str | None = None,
    snapshot_every: int | None = None,
    flush_every: int = 25,
    run_name: str | None = None,
    mask: object = None,
    style_masks: Sequence[object] = (),
    fallback_dir: str | None = None,
    quality: bool = True,
) -> Ended:
    """One job, here and now (the CLI, scripts, tests): check the store (InputError before any compute
    when it is unreachable), store the run, and run it through `run_batch` like any queued job.
    `on_step` sees each step's `Stepped` message; `should_stop()` cancels (the run ends KILLED with its
    best image)."""
    from engine.core.device import pick_device

    uri = check_reachable(tracking_uri)
    dev = str(pick_device(device))
    decoded = Inputs.decode(content, styles, mask, style_masks)
    run_id = create_run(uri, experiment, config, decoded, source=source, status="RUNNING", run_name=run_name,
                        device=dev)  # fmt: skip

    def publish(message: Message) -> None:
        if on_step is not None and isinstance(message, Stepped):
            on_step(message)

    (ended,) = run_batch(uri, [run_id], dev, cancelled=lambda r: should_stop(), publish=publish, inputs=decoded,
                         configs=[config], snapshot_every=snapshot_every, flush_every=flush_every,
                         fallback_dir=fallback_dir, quality=quality)  # fmt: skip
    return ended
