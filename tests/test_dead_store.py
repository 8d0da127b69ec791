"""A tracking server that dies mid-run (issue 17), against a real `mlflow server` process killed with
SIGKILL and started again on the same database and artifacts: the run finishes and is saved locally,
`write_back` replays it (every step's metrics, the result, FINISHED) once, and the real app answers on
every page while the server is down and shows the run written back once it is up again."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port
from mlflow import MlflowClient
from PIL import Image

from engine import tracking
from engine.core.config import TransferConfig
from engine.jobs import tracked_transfer

ROOT = Path(__file__).resolve().parents[1]
MLFLOW = Path(sys.executable).parent / "mlflow"
CONFIG = TransferConfig(size=32, steps=8, coarse_levels=0)
COSTS = ["cost/total", "cost/content", "cost/style", "cost/tv"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class MlflowServer:
    """A real `mlflow server` on a fixed loopback port, its database and artifacts in `folder`, that
    survives being killed: `start` again serves the same runs."""

    def __init__(self, template_db: Path, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.db = folder, folder / "mlflow.db"
        self.db.write_bytes(template_db.read_bytes())
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 90) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        command = [
            str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{self.db}", "--artifacts-destination", str(self.folder / "artifacts"),
        ]  # fmt: skip
        with open(self.folder / "server.log", "ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=self.folder, env=env,
                                         start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        self.kill()
        pytest.fail(f"mlflow server did not start:\n{(self.folder / 'server.log').read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL its process group, as a crash would."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
            self.proc = None


@pytest.fixture
def server(template_db, tmp_path):
    srv = MlflowServer(template_db, tmp_path / "server")
    srv.start()
    yield srv
    srv.kill()


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
