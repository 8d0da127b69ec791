"""Fixtures the tests share: the shared test images, small PNG inputs, one torch thread, throwaway MLflow
stores (copies of one migrated SQLite template), the app's store for AppTest, a real `streamlit run
app.py` on a free loopback port (`start_streamlit`), and Debian's Chromium driven by Playwright."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

# Ray reads this when it is imported: without it, it turns 127.0.0.1 into the machine's network address,
# and tests here may only talk to loopback. Set for the whole session, before any test imports Ray.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import pytest
import torch
from browser_helpers import CHROMIUM, CHROMIUM_ARGS
from mlflow import MlflowClient

from engine.core import images
from engine.core.samples import sample_path
from engine.jobs import JobQueue

ROOT = Path(__file__).resolve().parents[1]


def png_bytes(path: Path, long_side: int = 64) -> bytes:
    """An image, shrunk to `long_side` and encoded as PNG: a small upload."""
    buffer = io.BytesIO()
    images.resize_long_side(images.load_image(path), long_side).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def content_png() -> bytes:
    return png_bytes(sample_path("tubingen.jpg"))  # 64×48


@pytest.fixture(scope="session")
def style_png() -> bytes:
    return png_bytes(sample_path("starry_night.jpg"))


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread keeps tiny transfers quick and steady on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def template_db(tmp_path_factory) -> Path:
    """An empty, migrated MLflow SQLite database (migrations take seconds; each store copies it)."""
    folder = tmp_path_factory.mktemp("template")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)  # MLflow places its Default experiment's artifacts relative to the cwd
        MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments(max_results=1)
    return folder / "mlflow.db"


@pytest.fixture(scope="session")
def new_store(template_db) -> Callable[[Path], str]:
    """`new_store(folder) -> tracking URI`: a fresh SQLite store in `folder`."""

    def make(folder: Path) -> str:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template_db, folder / "mlflow.db")
        return f"sqlite:///{folder / 'mlflow.db'}"

    return make


@pytest.fixture
def uri(new_store, tmp_path) -> str:
    """A fresh store for one test."""
    return new_store(tmp_path / "store")


@pytest.fixture(scope="module")
def app_store(new_store, tmp_path_factory) -> Iterator[str]:
    """The store the app's pages use in AppTest. The tracking URI and the job queue are cache_resource
    singletons of the process, so they are cleared before and after the module."""
    from views import common

    uri = new_store(tmp_path_factory.mktemp("app-store"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("STYLELAB_BACKEND", "thread")  # AppTest waits on jobs in this process
        common.tracking_uri.clear()
        common.job_queue.clear()
        yield uri
        common.job_queue().shutdown(wait=True)  # no worker thread (a studio's live preview) left inside torch
        common.job_queue.clear()
        common.tracking_uri.clear()


@pytest.fixture
def make_queue(tmp_path) -> Iterator[Callable[..., JobQueue]]:
    """JobQueue factory (one CPU worker by default); every queue is shut down at teardown."""
    made: list[JobQueue] = []

    def make(tracking_uri: str, **given) -> JobQueue:
        kwargs = {"devices": ["cpu"], "preview_every": 2, "fallback_dir": tmp_path / "unsaved", "backend": "thread"}
        kwargs |= given
        made.append(JobQueue(tracking_uri, **kwargs))
        return made[-1]

    yield make
    for queue in made:
        queue.shutdown(wait=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def start_streamlit() -> Iterator[Callable[[str], str]]:
    """`start(tracking_uri) -> base URL`: serves the app against that store until the module's tests end."""
    procs: list[subprocess.Popen] = []

    def start(tracking_uri: str) -> str:
        port = free_port()
        env = os.environ | {"MLFLOW_TRACKING_URI": tracking_uri, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
             "--server.address", "127.0.0.1", "--server.headless", "true"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).status == 200:
                    return url
            except OSError:
                time.sleep(0.3)
        proc.kill()
        pytest.fail(f"streamlit did not start: {proc.stdout.read().decode()[-2000:]}")

    yield start
    for proc in procs:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=20)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()
