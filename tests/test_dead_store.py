"""A tracking server that dies mid-run (issue 17), against a real `mlflow server` process killed with
SIGKILL and started again on the same database and artifacts: the run finishes and is saved locally,
`write_back` replays it (every step's metrics, the result, FINISHED) once, and the real app answers on
every page while the server is down and shows the run written back once it is up again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from browser_helpers import BROWSER_TEST, shot
from mlflow import MlflowClient
from PIL import Image
from servers import MlflowServer, free_port

from engine import tracking
from engine.core.config import TransferConfig
from engine.jobs import JobQueue, JobSpec, tracked_transfer

ROOT = Path(__file__).resolve().parents[1]
CONFIG = TransferConfig(size=32, steps=8, coarse_levels=0)
COSTS = ["cost/total", "cost/content", "cost/style", "cost/tv"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def server(start_mlflow_server) -> MlflowServer:
    """A real `mlflow server` on a copy of the SQLite template; `kill()` and `start()` again serve the same runs."""
    return start_mlflow_server()


def _steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_a_run_whose_server_died_is_written_back_finished_with_every_step_once(
    server, content_png, style_png, tmp_path
):
    unsaved = tmp_path / "unsaved"
    client = MlflowClient(server.uri)
    seen = []

    def on_step(message) -> None:
        seen.append(message.step)
        if message.step == 4:  # steps 1-2 are in the store (batches of 2): the server dies
            deadline = time.monotonic() + 20
            while len(client.get_metric_history(message.run_id, "cost/total")) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            server.kill()

    start = time.monotonic()
    ended = tracked_transfer(content_png, [style_png], CONFIG, tracking_uri=server.uri, on_step=on_step,
                             device="cpu", snapshot_every=3, flush_every=2, fallback_dir=str(unsaved))  # fmt: skip
    took = time.monotonic() - start
    run_id = ended.run_id
    folder = unsaved / run_id
    assert ended.status == "FINISHED" and seen == list(range(1, CONFIG.steps + 1))
    assert ended.warning and str(folder) in ended.warning
    assert took < 60, f"the run took {took:.0f} s with its store dead"  # no minutes of retries
    assert tracking.pending_write_backs(unsaved, server.uri) == [folder]
    saved = tracking.saved_run(folder)
    assert 2 <= saved["logged_to_store_through_step"] < CONFIG.steps and saved["status"] == "FINISHED"

    with pytest.raises(Exception):  # noqa: B017 - the store is down: the write-back fails, marks nothing
        tracking.write_back(server.uri, folder)
    assert not tracking.is_written_back(folder)

    server.start()  # the same database and artifacts
    assert client.get_run(run_id).info.status == "RUNNING"  # what the dead server left
    what = tracking.write_back(server.uri, folder)
    assert run_id in what and "FINISHED" in what
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    every = list(range(1, CONFIG.steps + 1))
    for key in COSTS:
        assert _steps(client, run_id, key) == every, key  # each step once: none missing, none twice
    assert _steps(client, run_id, "steps_done") == [CONFIG.steps]
    assert run.data.metrics["final/total"] == pytest.approx(saved["final"]["final/total"])
    assert "quality/style" in run.data.metrics
    assert run.data.tags["attempts"] == "1" and "written_back" in run.data.tags
    artifacts = {f.path for f in client.list_artifacts(run_id)}
    assert {"result.png", "thumbnail.png", "config.json"} <= artifacts
    steps = [s for s, _ in tracking.image_steps(server.uri, run_id)]
    assert CONFIG.steps in steps  # the last snapshot, logged after the server died
    result = tracking.download_artifact(server.uri, run_id, "result.png", cache_dir=tmp_path / "cache")
    with Image.open(result) as logged, Image.open(folder / "result.png") as kept:
        assert logged.convert("RGB").tobytes() == kept.convert("RGB").tobytes()

    again = tracking.write_back(server.uri, folder)  # a no-op
    assert "already written back" in again
    assert _steps(client, run_id, "cost/total") == every
    assert tracking.pending_write_backs(unsaved, server.uri) == []


# --------------------------------------------------------------------------------------------------
# The real app, its tracking server killed mid-run and started again

BROWSER_CONFIG = TransferConfig(size=48, steps=200, coarse_levels=0)  # ~10 s: long enough to kill mid-run
DOWN_TEXT = "does not answer"
ANSWER_WITHIN_MS = 10_000


def _start_app(server: MlflowServer, tmp_path: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = os.environ | {
        "MLFLOW_TRACKING_URI": server.uri, "PYTHONPATH": str(ROOT), "STYLELAB_BACKEND": "process",
        "STYLELAB_WORKER_THREADS": "1", "STYLELAB_UNSAVED_DIR": str(tmp_path / "unsaved"),
        "STYLELAB_QUEUE_DB": str(tmp_path / "queue.db"), "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"],
        cwd=ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    return proc, f"http://127.0.0.1:{port}"


def _answer_time(page, url: str, text: str, timeout_ms: int = ANSWER_WITHIN_MS) -> float:
    """Seconds from opening `url` until `text` shows (fails after `timeout_ms`)."""
    start = time.monotonic()
    page.goto(url)
    page.get_by_text(text).first.wait_for(timeout=timeout_ms)
    return time.monotonic() - start


def _browser_test(test):
    for mark in BROWSER_TEST:  # slow, and skipped without Chromium
        test = mark(test)
    return test


@_browser_test
def test_the_app_answers_while_its_server_is_down_and_writes_the_run_back_when_it_returns(
    server, content_png, style_png, browser, tmp_path
):
    log = tmp_path / "app.log"
    app, url = _start_app(server, tmp_path, log)
    try:
        page = browser.new_page()
        deadline = time.monotonic() + 60
        while True:
            try:
                page.goto(url)
                break
            except Exception:
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.5)
        page.get_by_text("Upload a content image").wait_for(timeout=60_000)  # the app's queue is up

        submitter = JobQueue(server.uri, devices=[], backend="thread", queue_db=tmp_path / "queue.db",
                             fallback_dir=tmp_path / "submitter-unsaved")  # fmt: skip
        run_id = submitter.submit(JobSpec(config=BROWSER_CONFIG, content=content_png, styles=(style_png,)))
        submitter.shutdown()
        client = MlflowClient(server.uri)
        deadline = time.monotonic() + 120
        while not client.get_metric_history(run_id, "cost/total"):  # mid-run, the first batch logged
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        server.kill()

        timings = {
            "/runs": _answer_time(page, f"{url}/runs", DOWN_TEXT),
            "/runs?run=<id>": _answer_time(page, f"{url}/runs?run={run_id}", DOWN_TEXT),
            "/compare?runs=<id>,<id>": _answer_time(page, f"{url}/compare?runs={run_id},{run_id[::-1]}", DOWN_TEXT),
            "/sweep?run=<id>": _answer_time(page, f"{url}/sweep?run={run_id}", DOWN_TEXT),
            "/layers": _answer_time(page, f"{url}/layers", DOWN_TEXT),
        }
        print("answered with the server down (s):", {k: round(v, 2) for k, v in timings.items()})
        assert all(t < ANSWER_WITHIN_MS / 1000 for t in timings.values()), timings

        page.goto(f"{url}/runs?run={run_id}")  # the run ends while the server is down: where it was saved
        folder = f"unsaved/{run_id}"
        page.get_by_text(folder).first.wait_for(timeout=120_000)
        page.get_by_text(DOWN_TEXT).first.wait_for(timeout=5_000)
        shot(page, "dead-store-run-saved-locally")
        assert (tmp_path / folder / "result.png").is_file()

        server.start()  # the same database and artifacts: the app writes the run back
        deadline = time.monotonic() + 60
        while client.get_run(run_id).info.status != "FINISHED":
            assert time.monotonic() < deadline, (client.get_run(run_id).info.status, log.read_text()[-3000:])
            time.sleep(0.5)
        every = list(range(1, BROWSER_CONFIG.steps + 1))
        assert _steps(client, run_id, "cost/total") == every
        assert {"result.png", "thumbnail.png"} <= {f.path for f in client.list_artifacts(run_id)}
        deadline = time.monotonic() + 10  # the marker is written just after the run's status (replay.write_back)
        while not tracking.is_written_back(tmp_path / folder):
            assert time.monotonic() < deadline, "the run is FINISHED but its folder is not marked written back"
            time.sleep(0.1)

        fresh = browser.new_page()
        fresh.goto(f"{url}/runs?run={run_id}")
        fresh.get_by_text("Download result.png").wait_for(timeout=30_000)
        fresh.get_by_text("result G").first.wait_for(timeout=5_000)
        shot(fresh, "dead-store-written-back")
        fresh.close()
        page.close()
    finally:
        os.killpg(app.pid, signal.SIGTERM)
        app.wait(timeout=60)
