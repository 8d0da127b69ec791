"""MLflow tracking against real stores: the store tests run on a SQLite store in a temporary folder and on
a real `mlflow server` on PostgreSQL with served artifacts (conftest's `tracking_store`); the fault test
kills a real `mlflow server` on SQLite. Each transfer is tiny (32 px, a few steps) with the real VGG19."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import TrackingStore
from mlflow import MlflowClient
from PIL import Image
from servers import MlflowServer, free_port

from engine.core import images
from engine.core.config import TransferConfig
from engine.core.errors import InputError
from engine.core.samples import sample_path
from engine.core.transfer import TransferResult, transfer
from engine.jobs import tracked_transfer
from engine.tracking import (
    RunRecorder,
    check_reachable,
    create_parent_run,
    download_artifact,
    get_or_create_experiment,
    group_ready,
    image_steps,
    list_runs,
    load_config,
    mark_orphaned_runs,
    metric_history,
    mlflow_ui_links,
    resolve_tracking_uri,
)

LAMBDAS = {"relu1_1": 0.3, "relu2_1": 0.7}
# α and β are pinned so the checks below do not depend on the defaults.
CONFIG = TransferConfig(size=32, steps=6, alpha=1.0, beta=1e5, style_layers=LAMBDAS, tv_weight=2.0)
COST_KEYS = ["cost/total", "cost/content", "cost/style", "cost/style/relu1_1", "cost/style/relu2_1", "cost/tv"]


# --------------------------------------------------------------------------------------------------
# Fixtures: inputs, stores, servers


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """These tests check tracking, not speed: one thread keeps the tiny transfers quick and steady on a
    shared machine (with other work on the cores, OpenMP spin-waits can slow them tenfold)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def content_bytes() -> bytes:
    return (sample_path("tubingen.jpg")).read_bytes()


@pytest.fixture(scope="module")
def style_bytes() -> bytes:
    return (sample_path("starry_night.jpg")).read_bytes()


@pytest.fixture(scope="module")
def small_inputs(content_bytes, style_bytes) -> tuple[Image.Image, Image.Image]:
    """Decoded and shrunk inputs for tests that only need a run, not a transfer."""
    return (
        images.resize_long_side(images.load_image(content_bytes), 48),
        images.resize_long_side(images.load_image(style_bytes), 48),
    )


@pytest.fixture(scope="module")
def doomed(start_mlflow_server) -> MlflowServer:
    """A real tracking server on a SQLite copy, to be killed mid-run by the fault test."""
    return start_mlflow_server()


# --------------------------------------------------------------------------------------------------
# One real tracked run on each store, checked by several tests


@dataclass
class TrackedRun:
    store: TrackingStore
    uri: str
    result: object
    tracker: RunRecorder
    reports: list
    client: MlflowClient


@pytest.fixture(scope="module")
def tracked(tracking_store, store_uri, content_bytes, style_bytes, tmp_path_factory) -> TrackedRun:
    reports = []
    tracker = tracked_transfer(
        content_bytes,
        [style_bytes],
        CONFIG,
        tracking_uri=store_uri,
        on_step=lambda r: reports.append((r.step, dict(r.costs), r.size)),
        device="cpu",
        snapshot_every=2,
        flush_every=4,  # batches at steps 4 and 6
        fallback_dir=tmp_path_factory.mktemp("unsaved"),
    )
    result = tracker.result
    return TrackedRun(tracking_store, store_uri, result, tracker, reports, MlflowClient(store_uri))


def test_tracked_run_logs_every_config_param_including_each_lambda(tracked):
    params = tracked.client.get_run(tracked.tracker.run_id).data.params
    # the user's β and the effective one the optimiser used at the 32×24 output (β/64: size-aware weights)
    assert params == CONFIG.to_params() | {"style_images": "1", "beta_effective": repr(1e5 / 64)}
    assert params["params_version"] == "2" and load_config(tracked.uri, tracked.tracker.run_id) == CONFIG
    assert params["lambda.relu1_1"] == "0.3" and params["lambda.relu2_1"] == "0.7"


def test_each_cost_metric_has_exactly_one_point_per_step_with_the_reported_value(tracked):
    expected = {step: costs for step, costs, _ in tracked.reports}
    assert sorted(expected) == [1, 2, 3, 4, 5, 6]
    for key in [*COST_KEYS, "time/step_seconds"]:
        history = tracked.client.get_metric_history(tracked.tracker.run_id, key)
        assert sorted(m.step for m in history) == [1, 2, 3, 4, 5, 6], key
        if key.startswith("cost/"):
            for m in history:
                assert m.value == pytest.approx(expected[m.step][key.removeprefix("cost/")], rel=1e-12)


def test_logged_costs_are_the_weighted_sums_at_every_step(tracked):
    frame = metric_history(tracked.uri, tracked.tracker.run_id, keys=COST_KEYS)
    assert list(frame.index) == [1, 2, 3, 4, 5, 6]
    for step, row in frame.iterrows():
        style = sum(LAMBDAS[layer] * row[f"cost/style/{layer}"] for layer in LAMBDAS)
        assert row["cost/style"] == pytest.approx(style, rel=1e-5), step
        beta = CONFIG.effective_beta(24, 32)  # the size-aware β at the 32×24 output, as logged in beta_effective
        total = CONFIG.alpha * row["cost/content"] + beta * row["cost/style"] + CONFIG.tv_weight * row["cost/tv"]
        assert row["cost/total"] == pytest.approx(total, rel=1e-5), step
        assert row["cost/tv"] > 0  # the TV term is really in play


def test_snapshots_are_logged_at_every_second_step_and_the_last(tracked, tmp_path):
    steps = image_steps(tracked.uri, tracked.tracker.run_id, cache_dir=tmp_path)
    assert [step for step, _ in steps] == [2, 4, 6]
    for _, path in steps:
        with Image.open(path) as img:
            assert max(img.size) == CONFIG.size
        assert Path(path).is_relative_to(tmp_path) == (tracked.store.kind == "postgres")  # served: downloaded
    previews = image_steps(tracked.uri, tracked.tracker.run_id, compressed=True)
    assert [step for step, _ in previews] == [2, 4, 6] and all(p.endswith(".webp") for _, p in previews)


def test_inputs_result_thumbnail_and_config_are_artifacts(tracked, content_bytes):
    client, run_id = tracked.client, tracked.tracker.run_id
    top = {f.path for f in client.list_artifacts(run_id)}
    assert {"inputs", "result.png", "thumbnail.png", "config.json", "images"} <= top
    assert {f.path for f in client.list_artifacts(run_id, "inputs")} == {"inputs/content.png", "inputs/style.png"}
    with Image.open(download_artifact(tracked.uri, run_id, "inputs/content.png")) as img:
        assert img.tobytes() == images.load_image(content_bytes).tobytes()  # lossless copy of the decoded input
    with Image.open(download_artifact(tracked.uri, run_id, "result.png")) as img:
        assert img.tobytes() == tracked.result.image.tobytes()
    config_json = Path(download_artifact(tracked.uri, run_id, "config.json")).read_text()
    assert TransferConfig.from_json(config_json) == CONFIG


def test_tags_hold_the_input_hashes_source_worker_and_versions(tracked, content_bytes, style_bytes):
    tags = tracked.client.get_run(tracked.tracker.run_id).data.tags
    assert tags["sha256.content"] == images.sha256_of(content_bytes)
    assert tags["sha256.style.0"] == images.sha256_of(style_bytes)
    assert tags["source"] == "cli"
    assert tags["worker"] == f"{socket.gethostname()}:{os.getpid()}"
    assert tags["device"] == "cpu" and "gpu" not in tags
    assert tags["torch_version"] and tags["stylelab_version"]
    assert tags["mlflow.runName"] == tracked.client.get_run(tracked.tracker.run_id).info.run_name


def test_finished_run_has_status_finished_and_final_metrics_of_the_result(tracked):
    run = tracked.client.get_run(tracked.tracker.run_id)
    assert run.info.status == "FINISHED" and tracked.tracker.status == "FINISHED"
    assert tracked.tracker.warning is None and tracked.tracker.error is None
    metrics = run.data.metrics
    assert metrics["final/total"] == pytest.approx(tracked.result.costs["total"], rel=1e-12)
    assert metrics["steps_done"] == 6
    assert 0 < metrics["time/tracking_seconds"] < metrics["time/total_seconds"]


def test_load_config_rebuilds_the_runs_config_from_its_params(tracked):
    assert load_config(tracked.uri, tracked.tracker.run_id) == CONFIG


def test_list_runs_returns_the_run_with_params_final_costs_and_an_existing_thumbnail(tracked, small_inputs, tmp_path):
    newer = RunRecorder.create(tracked.uri, "style-transfer", CONFIG, small_inputs[0], [small_inputs[1]], source="app")
    newer.cancel()
    frame = list_runs(tracked.uri)
    assert frame["run_id"].tolist() == [newer.run_id, tracked.tracker.run_id]  # newest first
    assert frame["start_time"].is_monotonic_decreasing
    row = frame.set_index("run_id").loc[tracked.tracker.run_id]
    assert row["status"] == "FINISHED" and row["source"] == "cli"
    assert row["params.lambda.relu2_1"] == "0.7"
    assert row["metrics.final/total"] == pytest.approx(tracked.result.costs["total"])
    if tracked.store.kind == "sqlite":
        thumbnail = row["thumbnail_path"]  # the file in place
    else:
        assert pd.isna(row["thumbnail_path"])  # served artifacts are fetched on demand
        thumbnail = download_artifact(tracked.uri, tracked.tracker.run_id, "thumbnail.png", cache_dir=tmp_path)
    with Image.open(thumbnail) as thumb:
        assert max(thumb.size) <= 256
    assert row["thumbnail_uri"].endswith("/thumbnail.png")
    assert pd.isna(frame.set_index("run_id").loc[newer.run_id, "thumbnail_path"])  # no result, no thumbnail
    assert tracked.tracker.run_id in set(list_runs(tracked.uri, filter_string="params.size = '32'")["run_id"])
    assert list_runs(tracked.uri, filter_string="tags.source = 'explorer'").empty


def test_readers_raise_input_error_for_unknown_runs_and_artifacts(tracked):
    with pytest.raises(InputError, match="No run"):
        load_config(tracked.uri, "0" * 32)
    local = tracked.store.kind == "sqlite"
    missing = "no artifact 'missing.png'" if local else "Could not download artifact 'missing.png'"
    with pytest.raises(InputError, match=missing):
        download_artifact(tracked.uri, tracked.tracker.run_id, "missing.png")


def test_artifacts_are_kept_where_the_store_keeps_them(tracked):
    run = tracked.client.get_run(tracked.tracker.run_id)
    if tracked.store.kind == "sqlite":  # beside the database, whatever the working directory
        db_folder = Path(tracked.uri.removeprefix("sqlite:///")).parent
        assert Path(urllib.parse.urlparse(run.info.artifact_uri).path).is_relative_to(db_folder / "mlruns")
    else:  # proxied through the server into its --artifacts-destination, not on the client's disk
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")
        stored = list(tracked.store.server.artifacts.glob(f"**/{tracked.tracker.run_id}/artifacts/result.png"))
        assert len(stored) == 1
        with Image.open(stored[0]) as img:
            assert img.tobytes() == tracked.result.image.tobytes()


def test_the_experiment_is_tagged_for_mlflows_model_training_view(tracked):
    experiment = tracked.client.get_experiment(tracked.client.get_run(tracked.tracker.run_id).info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    # an experiment made before the tag existed gets it when stylelab next opens it
    old = tracked.client.create_experiment("made-before-the-tag")
    assert "mlflow.experimentKind" not in tracked.client.get_experiment(old).tags
    assert get_or_create_experiment(tracked.client, "made-before-the-tag") == old
    assert tracked.client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"


def test_a_postgresql_uri_works_without_a_server_with_artifacts_under_the_working_directory(
    new_pg_database, content_bytes, style_bytes, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # MLflow puts a database store's artifacts in ./mlruns
    uri = new_pg_database()  # postgresql+psycopg://mlflow:…@127.0.0.1:<port>/<db>
    config = CONFIG.replace(steps=2)
    tracker = tracked_transfer(content_bytes, [style_bytes], config, tracking_uri=uri, device="cpu",
                               snapshot_every=1, fallback_dir=tmp_path / "unsaved")  # fmt: skip
    assert tracker.status == "FINISHED" and tracker.warning is None
    assert load_config(uri, tracker.run_id) == config
    assert list(metric_history(uri, tracker.run_id, keys=["cost/total"]).index) == [1, 2]
    assert Path(download_artifact(uri, tracker.run_id, "result.png")).is_relative_to(tmp_path / "mlruns")


# --------------------------------------------------------------------------------------------------
# Lifecycle on each store


def test_cancelled_run_ends_killed_with_its_last_state_logged(store_uri, content_bytes, style_bytes, tmp_path):
    seen = []
    tracker = tracked_transfer(
        content_bytes,
        [style_bytes],
        CONFIG.replace(steps=20),
        tracking_uri=store_uri,
        experiment="cancelled",
        on_step=seen.append,
        should_stop=lambda: len(seen) >= 2,
        device="cpu",
        snapshot_every=10,
        fallback_dir=tmp_path,
    )
    result = tracker.result
    assert result.stopped == "cancelled" and result.steps_done == 2
    run = MlflowClient(store_uri).get_run(tracker.run_id)
    assert run.info.status == "KILLED" and run.data.tags["stopped"] == "cancelled"
    assert [step for step, _ in image_steps(store_uri, tracker.run_id)] == [2]
    assert Path(download_artifact(store_uri, tracker.run_id, "result.png")).exists()


def _wait_for_status(uri: str, run_id: str, status: str, timeout_s: float = 10) -> str:
    deadline = time.monotonic() + timeout_s
    while (now := MlflowClient(uri).get_run(run_id).info.status) != status and time.monotonic() < deadline:
        time.sleep(0.05)
    return now


def test_queued_run_is_scheduled_then_running_and_a_child_of_its_sweep(store_uri, small_inputs, tmp_path):
    parent = create_parent_run(store_uri, "sweep", name="sweep of beta", params={"grid": "beta"}, size=1)
    tracker = RunRecorder.create(
        store_uri, "sweep", CONFIG, small_inputs[0], [small_inputs[1]], source="sweep",
        status="SCHEDULED", parent_run_id=parent, fallback_dir=tmp_path,
    )  # fmt: skip
    client = MlflowClient(store_uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "SCHEDULED"
    assert run.data.tags["mlflow.parentRunId"] == parent and run.data.tags["source"] == "sweep"
    assert run.data.params["beta"] == CONFIG.to_params()["beta"]
    tracker.start()
    assert _wait_for_status(store_uri, tracker.run_id, "RUNNING") == "RUNNING"
    tracker.cancel("cancelled while queued")
    run = client.get_run(tracker.run_id)
    assert run.info.status == "KILLED" and run.data.tags["failure_reason"] == "cancelled while queued"
    assert group_ready(store_uri, parent)  # its one child has ended
    assert client.get_run(parent).data.tags["group.size"] == "1"


def test_exception_inside_the_tracker_context_fails_the_run_with_the_reason(store_uri, small_inputs, tmp_path):
    tracker = RunRecorder.create(
        store_uri, "errors", CONFIG, small_inputs[0], [small_inputs[1]], fallback_dir=tmp_path
    )
    with pytest.raises(RuntimeError, match="boom"), tracker:
        tracker.start()
        raise RuntimeError("boom")
    run = MlflowClient(store_uri).get_run(tracker.run_id)
    assert run.info.status == "FAILED" and run.data.tags["failure_reason"] == "RuntimeError: boom"


def test_diverged_run_ends_failed_with_the_reason_and_keeps_its_best_image(store_uri, small_inputs, tmp_path):
    tracker = RunRecorder.create(
        store_uri, "diverged", CONFIG, small_inputs[0], [small_inputs[1]], fallback_dir=tmp_path
    )
    best = Image.new("RGB", (32, 24), (200, 100, 50))
    costs = {"total": 1.0, "content": 1.0, "style": 0.0, "tv": 0.0, "style/relu1_1": 0.0, "style/relu2_1": 0.0}
    tracker.finish(
        TransferResult(best, costs, steps_done=3, total_steps=6, elapsed_s=0.5, device="cpu", stopped="diverged")
    )
    run = MlflowClient(store_uri).get_run(tracker.run_id)
    assert run.info.status == "FAILED" and run.data.tags["stopped"] == "diverged"
    assert "diverged at step 3" in run.data.tags["failure_reason"]
    with Image.open(download_artifact(store_uri, tracker.run_id, "result.png")) as img:
        assert img.tobytes() == best.tobytes()


def test_orphaned_runs_of_ended_processes_on_this_host_are_marked_failed(store_uri):
    client = MlflowClient(store_uri)
    exp = client.create_experiment("orphans")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host, me = socket.gethostname(), os.getpid()
    my_start = Path(f"/proc/{me}/stat").read_text().rsplit(")", 1)[1].split()[19]

    def run(worker: str, status: str = "RUNNING", **tags: str) -> str:
        run_id = client.create_run(exp, tags={"worker": worker, **tags}).info.run_id
        if status != "RUNNING":
            client.update_run(run_id, status=status)
        return run_id

    dead_running = run(f"{host}:{dead.pid}")
    dead_scheduled = run(f"{host}:{dead.pid}", "SCHEDULED")
    reused_pid = run(f"{host}:{me}", worker_start="1")  # our pid, but another process's start time
    alive = run(f"{host}:{me}", worker_start=my_start)
    alive_without_start = run(f"{host}:{me}")
    other_host = run(f"not-{host}:{dead.pid}")
    already_finished = run(f"{host}:{dead.pid}", "FINISHED")

    marked = mark_orphaned_runs(store_uri, "orphans")

    assert set(marked) == {dead_running, dead_scheduled, reused_pid}
    reason = client.get_run(dead_running).data.tags["failure_reason"]
    assert reason == f"worker process {dead.pid} on {host} ended before the run finished"
    assert all(client.get_run(r).info.status == "FAILED" for r in marked)
    for run_id, status in [(alive, "RUNNING"), (alive_without_start, "RUNNING"), (other_host, "RUNNING"),
                           (already_finished, "FINISHED")]:  # fmt: skip
        assert client.get_run(run_id).info.status == status
    assert mark_orphaned_runs(store_uri, "orphans") == []


# --------------------------------------------------------------------------------------------------
# A tracking server that is down, or dies mid-run


def test_a_server_that_does_not_answer_to_the_name_used_says_to_allow_it(tracking_store):
    if tracking_store.kind != "postgres":
        pytest.skip("only an mlflow server checks the Host header")
    port = tracking_store.server.port  # started with --allowed-hosts 127.0.0.1:<port>, as the README's set-up
    assert check_reachable(tracking_store.uri) == tracking_store.uri
    with pytest.raises(InputError, match=rf"does not answer to the name localhost:{port}: start it with "
                                         rf"`--allowed-hosts localhost:{port}`"):  # fmt: skip
        check_reachable(f"http://localhost:{port}")


def test_unreachable_server_raises_input_error_quickly_before_any_compute(content_bytes, style_bytes, monkeypatch):
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)  # MLflow's default retries for minutes
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    steps = []
    start = time.monotonic()
    with pytest.raises(InputError, match=r"Cannot reach the MLflow tracking server at http://127\.0\.0\.1:\d+") as e:
        tracked_transfer(content_bytes, [style_bytes], CONFIG, tracking_uri=uri, on_step=steps.append, device="cpu")
    assert time.monotonic() - start < 15
    assert steps == []
    assert "mlflow server" in str(e.value) and "MLFLOW_TRACKING_URI" in str(e.value)


def test_store_failing_mid_run_does_not_stop_the_optimisation_and_saves_the_result_locally(
    doomed, content_bytes, style_bytes, tmp_path, monkeypatch
):
    server = doomed
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail at once instead of retrying for minutes
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    content, style = images.load_image(content_bytes), images.load_image(style_bytes)
    tracker = RunRecorder.create(
        server.uri, "doomed", CONFIG, content_bytes, [style_bytes], snapshot_every=2, flush_every=1,
        fallback_dir=tmp_path / "unsaved", drain_timeout_s=20,
    )  # fmt: skip

    def step(report):
        tracker.on_step(report)
        if report.step == 3:  # once steps 1-2 are in the store, the server dies
            client, deadline = MlflowClient(server.uri), time.monotonic() + 20
            while len(client.get_metric_history(tracker.run_id, "cost/total")) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            server.kill()

    with tracker:
        tracker.start()
        result = transfer(content, [style], CONFIG, on_step=step, device="cpu")
        tracker.finish(result)

    assert result.steps_done == 6 and result.stopped is None
    assert tracker.error is not None and 2 <= tracker.logged_through_step <= 3
    folder = tracker.fallback_path
    assert folder == tmp_path / "unsaved" / tracker.run_id
    assert str(folder) in tracker.warning
    with Image.open(folder / "result.png") as img:
        assert img.tobytes() == result.image.tobytes()
    assert TransferConfig.from_json((folder / "config.json").read_text()) == CONFIG
    saved = json.loads((folder / "metrics.json").read_text())
    assert [s for s, _ in saved["history"]["cost/total"]] == [1, 2, 3, 4, 5, 6]
    assert saved["final"]["final/total"] == pytest.approx(result.costs["total"])
    assert {p.name for p in (folder / "images").iterdir()} >= {"generated_step_000004.png", "generated_step_000006.png"}
    # Nothing that reached the store is lost: read the dead server's database directly.
    stored = MlflowClient(f"sqlite:///{server.db}")
    logged = sorted(m.step for m in stored.get_metric_history(tracker.run_id, "cost/total"))
    assert logged == list(range(1, tracker.logged_through_step + 1))
    assert stored.get_run(tracker.run_id).data.params["beta"] == CONFIG.to_params()["beta"]


# --------------------------------------------------------------------------------------------------
# Pure helpers


def test_tracking_uri_is_the_argument_else_the_environment_else_an_absolute_sqlite_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert resolve_tracking_uri("sqlite:///rel.db") == f"sqlite:///{tmp_path / 'rel.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000/")
    assert resolve_tracking_uri() == "http://mlflow.example:5000"
    assert resolve_tracking_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"


def test_sqlite_store_in_a_missing_folder_is_reported_as_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        check_reachable(f"sqlite:///{tmp_path / 'nope' / 'mlflow.db'}")


def test_ui_links_point_at_run_pages_and_an_encoded_compare_view():
    links = mlflow_ui_links("http://127.0.0.1:5000/", "3", ["a1", "b2"])
    assert links.runs == {  # in the UI's model-training view, not its GenAI view
        "a1": "http://127.0.0.1:5000/#/experiments/3/runs/a1?workflowType=machine_learning",
        "b2": "http://127.0.0.1:5000/#/experiments/3/runs/b2?workflowType=machine_learning",
    }
    base, query = links.compare.split("?", 1)
    assert base == "http://127.0.0.1:5000/#/compare-runs"
    parsed = urllib.parse.parse_qs(query)
    assert json.loads(parsed["runs"][0]) == ["a1", "b2"] and json.loads(parsed["experiments"][0]) == ["3"]
    assert parsed["workflowType"] == ["machine_learning"]
    assert "[" not in query and '"' not in query  # URL-encoded
