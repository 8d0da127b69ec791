"""The `ray` backend against a real local Ray head (2 CPUs, loopback only): jobs run as Ray tasks that
read and write the MLflow store themselves; progress and cancel go through the store."""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# loopback only, and token auth with a token of this test's own (head, its workers and this driver); set
# before Ray is imported, which reads them then
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": os.environ.get("RAY_AUTH_TOKEN") or secrets.token_hex(32)}  # fmt: skip
os.environ.update(LOOPBACK)

ray = pytest.importorskip("ray")

from conftest import free_port  # noqa: E402
from PIL import Image  # noqa: E402

from engine import tracking  # noqa: E402
from engine.core.config import TransferConfig  # noqa: E402
from engine.core.images import Inputs  # noqa: E402
from engine.jobs import JobSpec, preview  # noqa: E402

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 120.0  # each Ray worker imports torch and loads VGG19 first
TINY = TransferConfig(size=32, steps=3, coarse_levels=0)


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory) -> Iterator[str]:
    """A Ray head on 127.0.0.1 with 2 CPUs and no dashboard, in its own process group; its GCS address."""
    port = free_port()
    temp = tmp_path_factory.mktemp("ray")
    log = open(temp / "head.log", "wb")  # noqa: SIM115
    env = os.environ | LOOPBACK | {"PYTHONPATH": str(ROOT)}
    env.pop("STYLELAB_RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
         "--port", str(port), "--num-cpus", "2", "--num-gpus", "0", "--include-dashboard", "false",
         "--ray-client-server-port", str(free_port()), "--disable-usage-stats"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for key, value in LOOPBACK.items():
            mp.setenv(key, value)
        mp.setenv("STYLELAB_RAY_ADDRESS", address)
        try:
            deadline = time.time() + 60
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"ray start ended: {(temp / 'head.log').read_text()[-3000:]}")
                if "Ray runtime started" in (temp / "head.log").read_text(errors="replace"):
                    break
                if time.time() > deadline:
                    pytest.fail(f"Ray did not start: {(temp / 'head.log').read_text()[-3000:]}")
                time.sleep(0.5)
            yield address
        finally:
            if ray.is_initialized():
                ray.shutdown()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
            log.close()


def wait_for(predicate, what: str, timeout_s: float = TIMEOUT_S, every_s: float = 0.2):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


def status(uri: str, run_id: str) -> str:
    return tracking.load_run(uri, run_id).status


def costs(uri: str, run_id: str):
    return tracking.metric_history(uri, run_id, ["cost/total"])["cost/total"].dropna()


def test_jobs_run_once_on_ray_with_live_progress_in_mlflow(ray_cluster, uri, make_queue, content_png, style_png):
    queue = make_queue(uri, backend="ray", devices=None)
    assert queue.devices == ["ray:0", "ray:1"]
    assert queue._pool.reports_progress is False
    longer = queue.submit(JobSpec(TransferConfig(size=48, steps=200, coarse_levels=0), content_png, (style_png,)))
    tiny = [queue.submit(JobSpec(TINY, content_png, (style_png,))) for _ in range(4)]

    def live() -> bool:  # the longer job's metrics are in the store while it still runs
        run = tracking.load_run(uri, longer)
        if run.status != "RUNNING":
            assert run.status not in tracking.TERMINAL, f"{longer} ended before any progress was read"
            return False
        return len(costs(uri, longer)) > 0

    wait_for(live, "live progress of the longer job in MLflow", every_s=0.1)
    assert queue.progress(longer) is None  # remote jobs: the page reads MLflow
    for run_id in [*tiny, longer]:
        wait_for(lambda r=run_id: status(uri, r) in tracking.TERMINAL, f"{run_id} to end")
    for run_id in tiny:
        run = tracking.load_run(uri, run_id)
        assert run.status == "FINISHED", run.tags
        assert run.tags["attempts"] == "1"
        assert len(costs(uri, run_id)) == TINY.steps
    assert status(uri, longer) == "FINISHED"
    assert len(costs(uri, longer)) == 200
    assert all(queue.ledger.state(r) == "done" for r in [*tiny, longer])
    wait_for(lambda: queue.progress(tiny[0]) is not None, "the end to reach the queue's memory", timeout_s=10)
    assert queue.progress(tiny[0]).state == "FINISHED"


def test_cancel_reaches_a_remote_job(ray_cluster, uri, make_queue, content_png, style_png):
    queue = make_queue(uri, backend="ray", devices=None)
    run_id = queue.submit(JobSpec(TransferConfig(size=32, steps=2000, coarse_levels=0), content_png, (style_png,)))
    wait_for(lambda: status(uri, run_id) == "RUNNING" and len(costs(uri, run_id)) > 0, "the first logged step")
    assert queue.cancel(run_id)
    wait_for(lambda: status(uri, run_id) in tracking.TERMINAL, "the cancelled job to end")
    run = tracking.load_run(uri, run_id)
    assert run.status == "KILLED", run.tags
    assert len(costs(uri, run_id)) < 2000
    assert Path(tracking.download_artifact(uri, run_id, "result.png")).stat().st_size > 0
    wait_for(lambda: queue.ledger.state(run_id) == "done", "the ledger to settle", timeout_s=10)


def test_a_live_preview_renders_as_a_ray_task_and_a_newer_one_cancels_it(ray_cluster, uri, make_queue, content_png,
                                                                          style_png, monkeypatch):  # fmt: skip
    queue = make_queue(uri, backend="ray", devices=None)
    looks = []  # the first looks the driver passed on from the task's stream: (preview, step, image size)
    show = queue.ledger.show_preview_step

    def show_and_note(preview_id, image, step):
        looks.append((preview_id, step, Image.open(io.BytesIO(image)).size))
        show(preview_id, image, step)

    monkeypatch.setattr(queue.ledger, "show_preview_step", show_and_note)
    inputs = Inputs.decode(content_png, [style_png])
    setting = TransferConfig(size=96, coarse_levels=0)
    first = queue.submit_preview("session", setting, inputs)
    wait_for(lambda: queue.preview(first).state == "running", "the first preview to start on a slot", every_s=0.05)
    newer = queue.submit_preview("session", setting.replace(style_layers={"relu3_1": 1.0}), inputs)
    assert queue.preview(first).state == "abandoned"  # the driver cancels its Ray task
    done = wait_for(lambda: (p := queue.preview(newer)).state in ("done", "failed") and p, "the newer preview")
    assert done.state == "done", done.error
    image = Image.open(io.BytesIO(done.result))
    assert max(image.size) == 96  # the setting's own size, under the preview's 128 px
    steps = range(preview.FIRST_LOOK_EVERY, preview.PREVIEW_STEPS, preview.FIRST_LOOK_EVERY)  # 10, 20
    assert [step for p, step, _ in looks if p == newer] == list(steps)
    assert all(size == image.size for _, _, size in looks)
    assert len(tracking.list_runs(uri)) == 0  # a preview is not an MLflow run
    assert queue.preview(first).state == "abandoned"
