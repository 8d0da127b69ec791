"""The background job queue against a real SQLite MLflow store and the real VGG19: order, progress,
cancellation, failures, validation at submit, shutdown, batches and the time estimate. The tests that
exercise the store (jobs finishing as runs, cancel, a batch) also run on a real `mlflow server` on
PostgreSQL (conftest's `tracking_store`), sharing one store per module and kind. Every transfer is
tiny (32 px, a few steps, one scale); jobs meant to keep the worker busy are long and get cancelled."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from engine import jobs
from engine.core import images, plan
from engine.core.config import TransferConfig
from engine.core.device import check_fits, estimate_run_bytes
from engine.core.errors import InputError
from engine.core.plan import default_seconds_per_gflop, estimate_seconds
from engine.core.transfer import TransferResult, transfer
from engine.jobs import JobProgress, JobQueue, JobSpec
from engine.tracking import (
    DEFAULT_EXPERIMENT,
    download_artifact,
    get_or_create_experiment,
    image_steps,
    list_runs,
    load_config,
    load_run,
    metric_history,
)

CONFIG = TransferConfig(size=32, steps=3, coarse_levels=0)
BUSY = CONFIG.replace(steps=2000)  # keeps a worker busy until it is cancelled (~40 ms a step)
TIMEOUT_S = 60


# --------------------------------------------------------------------------------------------------
# Fixtures and helpers


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _spec(content: bytes, style: bytes, config: TransferConfig = CONFIG, **kwargs) -> JobSpec:
    return JobSpec(config=config, content=content, styles=(style,), **kwargs)


def _wait(queue: JobQueue, run_id: str, until: Callable[[JobProgress], bool], what: str) -> JobProgress:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        progress = queue.progress(run_id)
        if progress is not None and until(progress):
            return progress
        time.sleep(0.01)
    pytest.fail(f"job {run_id} did not become {what} within {TIMEOUT_S} s: {queue.progress(run_id)}")


def _wait_done(queue: JobQueue, run_id: str) -> JobProgress:
    return _wait(queue, run_id, lambda p: p.done, "done")


def _runs(uri: str) -> pd.DataFrame:
    return list_runs(uri).set_index("run_id")


def _has_artifact(uri: str, run_id: str, path: str) -> bool:
    try:
        download_artifact(uri, run_id, path)
    except InputError:
        return False
    return True


# --------------------------------------------------------------------------------------------------
# Three jobs on one worker, checked by several tests


@dataclass
class ThreeJobs:
    uri: str
    queue: JobQueue
    ids: list[str]
    while_first_runs: dict[str, JobProgress]  # each job's progress once the first was running
    length_while_first_runs: int
    first_mid_run: JobProgress  # the first job after a few steps
    done: dict[str, JobProgress]


@pytest.fixture(scope="module")
def three_jobs(store_uri, tmp_path_factory, content_png, style_png) -> Iterator[ThreeJobs]:
    uri, folder = store_uri, tmp_path_factory.mktemp("three")
    queue = JobQueue(uri, devices=["cpu"], backend="thread", preview_every=2, fallback_dir=folder / "unsaved",
                     queue_db=folder / "queue.db")  # fmt: skip
    try:
        configs = [CONFIG.replace(steps=40), CONFIG.replace(steps=3, seed=1), CONFIG.replace(steps=4, seed=2)]
        ids = [queue.submit(_spec(content_png, style_png, config)) for config in configs]
        _wait(queue, ids[0], lambda p: p.state == "RUNNING", "running")
        while_first_runs = {rid: queue.progress(rid) for rid in ids}
        length = queue.queue_length()
        first_mid_run = _wait(queue, ids[0], lambda p: p.step >= 3 or p.done, "at step 3")
        done = {rid: _wait_done(queue, rid) for rid in ids}
        yield ThreeJobs(uri, queue, ids, while_first_runs, length, first_mid_run, done)
    finally:
        queue.shutdown(wait=True)


def test_queued_jobs_wait_in_fifo_order_with_their_positions(three_jobs):
    first, second, third = (three_jobs.while_first_runs[rid] for rid in three_jobs.ids)
    assert first.state == "RUNNING" and first.position is None and first.device == "cpu"
    assert (second.state, second.position) == ("SCHEDULED", 1)
    assert (third.state, third.position) == ("SCHEDULED", 2)
    assert second.eta_s is None and second.step == 0 and second.device == ""
    assert three_jobs.length_while_first_runs == 3
    ended = _runs(three_jobs.uri).loc[three_jobs.ids, "end_time"]
    assert ended.is_monotonic_increasing  # one worker ran them in the order they came


def test_every_job_finishes_as_a_finished_mlflow_run_under_its_job_id(three_jobs):
    assert all(p.state == "FINISHED" and p.error is None for p in three_jobs.done.values())
    runs = _runs(three_jobs.uri)
    assert set(runs.index) == set(three_jobs.ids)
    assert (runs.loc[three_jobs.ids, "status"] == "FINISHED").all()
    assert (runs.loc[three_jobs.ids, "source"] == "app").all()
    assert (runs.loc[three_jobs.ids, "tags.device"] == "cpu").all()
    assert three_jobs.queue.queue_length() == 0
    assert [p.run_id for p in three_jobs.queue.jobs()] == three_jobs.ids[::-1]  # newest first


def test_progress_has_one_history_entry_per_step_and_the_result_image(three_jobs, content_png):
    for rid in three_jobs.ids:
        progress = three_jobs.done[rid]
        total = progress.total_steps
        assert progress.step == total
        assert [h["step"] for h in progress.history] == list(range(1, total + 1))
        assert progress.costs == {k: v for k, v in progress.history[-1].items() if k != "step"}
        assert {"total", "content", "style", "tv"} <= set(progress.costs)
        assert progress.image is not None and progress.image.size == (32, 24) == progress.size
        logged = metric_history(three_jobs.uri, rid, keys=["cost/total"])["cost/total"]
        assert list(logged.index) == list(range(1, total + 1))
        assert list(logged) == pytest.approx([h["total"] for h in progress.history], rel=1e-12)
        assert progress.eta_s == 0.0 and progress.elapsed_s > 0


def test_a_running_job_reports_elapsed_time_and_an_eta(three_jobs):
    mid = three_jobs.first_mid_run
    assert mid.state == "RUNNING" and 3 <= mid.step < mid.total_steps == 40
    assert mid.eta_s is not None and mid.eta_s > 0 and mid.elapsed_s > 0
    assert len(mid.history) == mid.step and mid.image is not None  # previews from step 1 on


def test_finished_runs_give_the_queue_a_measured_seconds_per_gflop(three_jobs):
    rate = three_jobs.queue.seconds_per_gflop["cpu"]
    assert rate > 0
    assert three_jobs.queue.estimate_seconds(CONFIG) == pytest.approx(estimate_seconds(CONFIG, "cpu", rate))


# --------------------------------------------------------------------------------------------------
# Cancelling


def test_cancelling_a_queued_job_kills_its_run_before_it_ever_runs(store_uri, make_queue, content_png, style_png):
    uri = store_uri
    queue = make_queue(uri)
    busy = queue.submit(_spec(content_png, style_png, BUSY))
    waiting = queue.submit(_spec(content_png, style_png))
    _wait(queue, busy, lambda p: p.state == "RUNNING", "running")

    assert queue.cancel(waiting) is True
    cancelled = queue.progress(waiting)
    assert (cancelled.state, cancelled.position, cancelled.step) == ("KILLED", None, 0)
    assert queue.queue_length() == 1
    assert queue.cancel(waiting) is False  # already over
    assert queue.cancel("no-such-run") is False

    assert queue.cancel(busy) is True
    _wait_done(queue, busy)
    time.sleep(0.2)  # a worker that wrongly kept the cancelled job would start it now
    assert queue.progress(waiting).step == 0 and queue.queue_length() == 0
    run = _runs(uri).loc[waiting]
    assert run["status"] == "KILLED" and run["tags.stopped"] == "cancelled"
    assert metric_history(uri, waiting).empty  # no step ever ran
    assert not _has_artifact(uri, waiting, "result.png")


def test_cancelling_a_running_job_kills_it_with_the_best_image_as_result(store_uri, make_queue, content_png, style_png):
    uri = store_uri
    queue = make_queue(uri)
    run_id = queue.submit(_spec(content_png, style_png, BUSY))
    _wait(queue, run_id, lambda p: p.step >= 2, "at step 2")

    assert queue.cancel(run_id) is True
    progress = _wait_done(queue, run_id)
    assert progress.state == "KILLED" and progress.error is None
    assert 2 <= progress.step < BUSY.total_steps and progress.image is not None
    run = _runs(uri).loc[run_id]
    assert run["status"] == "KILLED" and run["tags.stopped"] == "cancelled"
    assert _has_artifact(uri, run_id, "result.png")
    assert queue.cancel(run_id) is False


# --------------------------------------------------------------------------------------------------
# Failures


def test_a_job_failing_in_the_worker_fails_its_run_and_the_next_job_still_runs(uri, make_queue, content_png, style_png):
    too_big = CONFIG.replace(size=4096, tile_size="0")
    try:  # the content is 4:3, so the untiled run would be 4096×3072: ~47 GiB, more than this machine has
        cpu = torch.device("cpu")
        check_fits(estimate_run_bytes(too_big, 3072, 4096, cpu), 3072, 4096, cpu)
    except InputError:
        pass
    else:
        pytest.skip("this machine has the memory for a 4096-px run; the test needs one that does not")
    queue = make_queue(uri)
    failing = queue.submit(_spec(content_png, style_png, too_big))
    after = queue.submit(_spec(content_png, style_png))

    failed = _wait_done(queue, failing)
    assert failed.state == "FAILED"
    assert failed.error.startswith("A 4096×3072 run needs about") and "Choose a smaller size" in failed.error
    assert _wait_done(queue, after).state == "FINISHED"
    runs = _runs(uri)
    assert runs.loc[failing, "status"] == "FAILED" and runs.loc[failing, "failure_reason"] == failed.error
    assert runs.loc[after, "status"] == "FINISHED"


def test_submitting_a_file_that_is_not_an_image_raises_and_creates_no_run(uri, make_queue, content_png, style_png):
    queue = make_queue(uri)
    with pytest.raises(InputError, match="content image is not an image"):
        queue.submit(_spec(b"%PDF-1.4 not an image", style_png))
    with pytest.raises(InputError, match="style image 2 is not an image"):
        queue.submit(JobSpec(config=CONFIG, content=content_png, styles=(style_png, b"hello")))
    with pytest.raises(InputError, match="style_blend has 2 weights but there are 1 style images"):
        queue.submit(_spec(content_png, style_png, CONFIG.replace(style_blend=(0.5, 0.5))))
    with pytest.raises(InputError, match="at least one style image"):
        queue.submit(JobSpec(config=CONFIG, content=content_png, styles=()))
    assert list_runs(uri).empty
    assert queue.jobs() == [] and queue.queue_length() == 0


def test_an_unreachable_tracking_server_is_refused_at_submit(make_queue, content_png, style_png):
    queue = make_queue("http://127.0.0.1:9")  # starting the queue itself must not fail or hang
    with pytest.raises(InputError, match=r"Cannot reach the MLflow tracking server at http://127\.0\.0\.1:9"):
        queue.submit(_spec(content_png, style_png))
    assert queue.jobs() == [] and queue.queue_length() == 0


def test_a_new_queue_fails_runs_that_a_dead_process_left_scheduled(uri, make_queue):
    client = MlflowClient(uri)
    experiment = get_or_create_experiment(client, DEFAULT_EXPERIMENT)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    orphan = client.create_run(experiment, tags={"worker": f"{host}:{dead.pid}"}).info.run_id
    client.update_run(orphan, status="SCHEDULED")
    alive = client.create_run(experiment, tags={"worker": f"{host}:{os.getpid()}"}).info.run_id

    queue = make_queue(uri)
    assert queue.orphaned_runs == [orphan]
    runs = _runs(uri)
    assert runs.loc[orphan, "status"] == "FAILED"
    assert "ended before the run finished" in runs.loc[orphan, "failure_reason"]
    assert runs.loc[alive, "status"] == "RUNNING"
    assert queue.progress(orphan) is None  # not a job of this process


# --------------------------------------------------------------------------------------------------
# Shutdown


def test_shutdown_stops_the_workers_and_keeps_every_job_for_the_next_start(uri, make_queue, content_png, style_png):
    queue = make_queue(uri, devices=["cpu", "cpu"])

    def workers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith(f"stylelab-worker-{queue.name}-")]

    assert len(workers()) == 2 and all(t.daemon for t in workers())
    running = [queue.submit(_spec(content_png, style_png, BUSY)) for _ in range(2)]
    waiting = queue.submit(_spec(content_png, style_png))
    for rid in running:
        _wait(queue, rid, lambda p: p.step >= 1, "at step 1")

    queue.shutdown(wait=True)
    assert workers() == []
    assert [queue.progress(rid).state for rid in [*running, waiting]] == ["SCHEDULED"] * 3
    runs = _runs(uri)
    assert (runs.loc[[*running, waiting], "status"] == "SCHEDULED").all()  # back in the queue, not lost
    assert all(runs.loc[rid, "tags.interrupted"] for rid in running)
    assert queue.queue_length() == 3
    with pytest.raises(RuntimeError, match="shut down"):
        queue.submit(_spec(content_png, style_png))

    again = make_queue(uri)  # the next start runs them, in their order, each once
    assert again.cancel(running[0]) and again.cancel(running[1])  # the busy ones: not worth 2000 steps here
    assert _wait_done(again, waiting).state == "FINISHED"
    runs = _runs(uri)
    assert list(runs.loc[[*running, waiting], "status"]) == ["KILLED", "KILLED", "FINISHED"]
    assert runs.loc[waiting, "tags.attempts"] == "1"  # a clean stop does not count as an attempt


# --------------------------------------------------------------------------------------------------
# Batches: jobs that differ only in weights, seed or init run as one transfer_batch, each its own run

BATCH = [
    CONFIG.replace(steps=4, beta=1e4),
    CONFIG.replace(steps=4, beta=1e6, seed=3),
    CONFIG.replace(steps=4, style_layers=(("relu1_1", 0.5), ("relu3_1", 2.0)), tv_weight=1.0),
]


@dataclass
class Batch:
    uri: str
    ids: list[str]
    running: list[JobProgress]  # every job once the batch was running
    done: list[JobProgress]
    alone: list[TransferResult]  # each config of BATCH run on its own with `transfer`


@pytest.fixture(scope="module")
def batch_of_three(store_uri, tmp_path_factory, content_png, style_png) -> Iterator[Batch]:
    uri, folder = store_uri, tmp_path_factory.mktemp("batch")
    queue = JobQueue(uri, devices=["cpu"], backend="thread", preview_every=2, fallback_dir=folder / "unsaved",
                     queue_db=folder / "queue.db")  # fmt: skip
    try:
        ids = queue.submit_batch([_spec(content_png, style_png, config, tags={"team": "a"}) for config in BATCH])
        # RUNNING shows as soon as our worker claims the batch; its device with the worker's first message
        _wait(queue, ids[0], lambda p: p.device != "" or p.done, "running on its device")
        running = [queue.progress(rid) for rid in ids]
        done = [_wait_done(queue, rid) for rid in ids]
    finally:
        queue.shutdown(wait=True)
    content, style = images.load_image(content_png), images.load_image(style_png)
    alone = [transfer(content, [style], config, device="cpu") for config in BATCH]
    yield Batch(uri, ids, running, done, alone)


def test_a_batch_runs_its_jobs_together_each_as_its_own_finished_run(batch_of_three):
    assert [(p.state, p.position, p.device) for p in batch_of_three.running] == [("RUNNING", None, "cpu")] * 3
    assert [(p.state, p.error, p.step) for p in batch_of_three.done] == [("FINISHED", None, 4)] * 3
    runs = _runs(batch_of_three.uri).loc[batch_of_three.ids]
    assert list(runs["status"]) == ["FINISHED"] * 3 and set(runs["tags.team"]) == {"a"}
    assert [load_config(batch_of_three.uri, rid) for rid in batch_of_three.ids] == BATCH  # each its own params
    for rid in batch_of_three.ids:
        for artifact in ("result.png", "thumbnail.png", "inputs/content.png", "config.json"):
            assert _has_artifact(batch_of_three.uri, rid, artifact), (rid, artifact)
        assert [step for step, _ in image_steps(batch_of_three.uri, rid)] == [1, 2, 3, 4]
        assert load_run(batch_of_three.uri, rid).metrics["quality/style"] > 0


def test_each_job_of_a_batch_logs_every_step_with_its_own_costs(batch_of_three):
    totals = []
    for rid, config, progress in zip(batch_of_three.ids, BATCH, batch_of_three.done, strict=True):
        logged = metric_history(batch_of_three.uri, rid)
        assert list(logged.index) == [1, 2, 3, 4]
        assert list(logged["cost/total"]) == pytest.approx([h["total"] for h in progress.history], rel=1e-12)
        layers = sorted(k.removeprefix("cost/style/") for k in logged if k.startswith("cost/style/"))
        assert layers == sorted(config.lambdas)  # a job logs only its own style layers
        weighted = sum(lam * logged[f"cost/style/{layer}"] for layer, lam in config.lambdas.items())
        assert list(logged["cost/style"]) == pytest.approx(list(weighted), rel=1e-5)
        assert logged["time/step_seconds"].notna().all()
        totals.append(logged["cost/total"].iloc[-1])
    assert len(set(totals)) == 3


def test_each_job_of_a_batch_ends_where_its_config_alone_would(batch_of_three):
    # Measured on the 2-core CPU box: batch and alone agree to 6e-7 relative after 4 steps (1e-2 only
    # after 20, as L-BFGS amplifies floating-point order); 1e-3 leaves a wide margin.
    for rid, alone in zip(batch_of_three.ids, batch_of_three.alone, strict=True):
        final = load_run(batch_of_three.uri, rid).metrics
        for cost in ("total", "content", "style"):
            assert final[f"final/{cost}"] == pytest.approx(alone.costs[cost], rel=1e-3), (rid, cost)


def test_cancelling_queued_jobs_of_a_batch_leaves_the_rest_of_it(uri, make_queue, content_png, style_png):
    queue = make_queue(uri)
    busy = queue.submit(_spec(content_png, style_png, BUSY))
    first, second = queue.submit_batch([_spec(content_png, style_png, c) for c in BATCH[:2]])
    (last,) = queue.submit_batch([_spec(content_png, style_png)])
    _wait(queue, busy, lambda p: p.state == "RUNNING", "running")
    assert [queue.progress(rid).position for rid in (first, second, last)] == [1, 1, 2]  # a batch: one place
    assert queue.queue_length() == 4

    assert queue.cancel(first) is True
    assert (queue.progress(first).state, queue.progress(second).position) == ("KILLED", 1)
    assert queue.cancel(second) is True  # the batch is empty now: it leaves the queue
    assert queue.progress(last).position == 1 and queue.queue_length() == 2
    assert queue.cancel(busy) is True
    assert _wait_done(queue, last).state == "FINISHED"
    runs = _runs(uri)
    for rid in (first, second):
        assert (runs.loc[rid, "status"], runs.loc[rid, "tags.stopped"]) == ("KILLED", "cancelled")
        assert metric_history(uri, rid).empty and queue.progress(rid).step == 0


def test_cancelling_a_running_job_of_a_batch_stops_only_its_record(uri, make_queue, content_png, style_png):
    queue = make_queue(uri)
    first, second = queue.submit_batch([_spec(content_png, style_png, c) for c in (BUSY, BUSY.replace(beta=1e4))])
    _wait(queue, first, lambda p: p.step >= 2, "at step 2")

    assert queue.cancel(first) is True
    at_cancel = queue.progress(first).step
    mid = _wait(queue, second, lambda p: p.step >= at_cancel + 4, "past the cancel")
    frozen = queue.progress(first)
    assert frozen.state == "RUNNING" and at_cancel <= frozen.step <= at_cancel + 1  # the step under way at most
    assert "ends KILLED when the rest of its batch ends" in frozen.warning
    assert mid.state == "RUNNING" and mid.eta_s is not None and mid.eta_s > 0
    _wait(queue, second, lambda p: p.step >= mid.step + 2, "running on")
    assert queue.progress(first).step == frozen.step

    assert queue.cancel(second) is True  # the last job still recorded: the batch stops
    first_done, second_done = _wait_done(queue, first), _wait_done(queue, second)
    assert (first_done.state, second_done.state) == ("KILLED", "KILLED")
    assert second_done.step < BUSY.total_steps and first_done.step == frozen.step
    runs = _runs(uri)
    for rid, last_step in ((first, frozen.step), (second, second_done.step)):
        assert (runs.loc[rid, "status"], runs.loc[rid, "tags.stopped"]) == ("KILLED", "cancelled")
        assert metric_history(uri, rid, keys=["cost/total"]).index.max() == last_step
        assert _has_artifact(uri, rid, "result.png")
        # the result, final/* and steps_done are of the batch's end, for the job cancelled early too
        assert load_run(uri, rid).metrics["steps_done"] == second_done.step


def test_a_failing_batch_fails_every_job_with_the_same_message(uri, make_queue, content_png, style_png, monkeypatch):
    real = jobs.worker.transfer_batch

    def failing(content, styles, configs, *, on_step, **kwargs):
        def step(reports):
            on_step(reports)
            if len(configs) > 1 and reports[0].step == 2:
                raise RuntimeError("boom at step 2")

        return real(content, styles, configs, on_step=step, **kwargs)

    monkeypatch.setattr(jobs.worker, "transfer_batch", failing)
    queue = make_queue(uri)
    ids = queue.submit_batch([_spec(content_png, style_png, c) for c in BATCH])
    after = queue.submit(_spec(content_png, style_png))
    done = [_wait_done(queue, rid) for rid in ids]
    assert [(p.state, p.error) for p in done] == [("FAILED", "RuntimeError: boom at step 2")] * 3
    assert _wait_done(queue, after).state == "FINISHED"
    runs = _runs(uri)
    assert list(runs.loc[ids, "failure_reason"]) == ["RuntimeError: boom at step 2"] * 3
    assert list(runs.loc[ids, "status"]) == ["FAILED"] * 3
    assert all(list(metric_history(uri, rid, keys=["cost/total"]).index) == [1, 2] for rid in ids)


def test_submit_batch_refuses_jobs_that_cannot_share_a_batch(uri, make_queue, content_png, style_png):
    queue = make_queue(uri)
    with pytest.raises(InputError, match="cannot share a batch: they differ in size"):
        queue.submit_batch([_spec(content_png, style_png), _spec(content_png, style_png, CONFIG.replace(size=40))])
    with pytest.raises(InputError, match="share their content and style images"):
        queue.submit_batch([_spec(content_png, style_png), _spec(style_png, style_png)])
    with pytest.raises(InputError, match="style image 1 is not an image"):
        queue.submit_batch([_spec(content_png, b"nope")] * 2)
    with pytest.raises(InputError, match="at least one job"):
        queue.submit_batch([])
    assert list_runs(uri).empty
    assert queue.jobs() == [] and queue.queue_length() == 0


# --------------------------------------------------------------------------------------------------
# The time estimate


@pytest.mark.parametrize("coarse_levels", [0, 1])
def test_estimated_seconds_grow_about_fourfold_from_128_to_256_px(coarse_levels):
    small = TransferConfig(size=128, steps=100, coarse_levels=coarse_levels, coarse_steps=50)
    large = small.replace(size=256)
    ratio = estimate_seconds(large, "cpu") / estimate_seconds(small, "cpu")
    assert 3.6 < ratio < 4.4


def test_estimated_seconds_scale_with_steps_rate_and_device():
    config = TransferConfig(size=256, steps=100, coarse_levels=0)
    assert estimate_seconds(config.replace(steps=200), "cpu") == pytest.approx(2 * estimate_seconds(config, "cpu"))
    assert estimate_seconds(config, "cpu", 0.01) == pytest.approx(2 * estimate_seconds(config, "cpu", 0.005))
    assert estimate_seconds(config, "cuda:0") < estimate_seconds(config, "cpu") / 10
    assert default_seconds_per_gflop("cpu") == pytest.approx(1 / plan.CPU_GFLOPS)
    # 4:3 landscape and 3:4 portrait cost the same; a square costs a third more
    landscape = estimate_seconds(config, "cpu")
    assert estimate_seconds(config, "cpu", aspect=4 / 3) == pytest.approx(landscape, rel=0.02)
    assert estimate_seconds(config, "cpu", aspect=1.0) == pytest.approx(4 / 3 * landscape, rel=0.02)


def test_a_batch_counts_the_work_of_every_image_to_the_deepest_layer_any_reads():
    one = plan.gflop_per_step([BATCH[0]], 0.75)  # reads relu5_1
    assert len(one) == 4 and plan.gflop_per_step(BATCH, 0.75) == pytest.approx([3 * g for g in one])
    assert plan.gflop_per_step([BATCH[2]], 0.75)[0] < one[0]  # relu4_2 at most: a shorter network
