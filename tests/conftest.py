"""Fixtures the tests share: the shared test images, small PNG inputs, one torch thread, throwaway MLflow
stores (copies of one migrated SQLite template), real `mlflow server` processes on SQLite or on a
throwaway PostgreSQL cluster (`tracking_store` runs a module's store tests on both), the app's store for
AppTest, a real `streamlit run app.py` on a free loopback port (`start_streamlit`), and Debian's
Chromium driven by Playwright.

A server the tests need but this machine lacks (PostgreSQL, Chromium) skips its tests with the reason;
with STYLELAB_REQUIRE_SERVERS=1 (set by .ci/run) it fails them instead, so CI never passes by skipping."""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

# Ray reads this when it is imported: without it, it turns 127.0.0.1 into the machine's network address,
# and tests here may only talk to loopback. Set for the whole session, before any test imports Ray.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import pytest
import torch
from browser_helpers import CHROMIUM, CHROMIUM_ARGS
from mlflow import MlflowClient
from PIL import Image
from servers import MlflowServer, PostgresCluster, ServerError, free_port, migrate, postgres_missing

from engine.core import images
from engine.core.samples import sample_path
from engine.jobs import JobQueue

ROOT = Path(__file__).resolve().parents[1]


def sample_image(name: str, long_side: int) -> Image.Image:
    """A sample image of samples/ (credited in samples/SOURCES.md), shrunk to `long_side` px."""
    return images.resize_long_side(images.load_image(sample_path(name)), long_side)


def png_bytes(path: Path, long_side: int = 64) -> bytes:
    """An image, shrunk to `long_side` and encoded as PNG: a small upload."""
    buffer = io.BytesIO()
    images.resize_long_side(images.load_image(path), long_side).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session", autouse=True)
def _nothing_written_to_home(tmp_path_factory) -> Iterator[None]:
    """Readers cache a served store's artifacts under XDG_CACHE_HOME and the queue keeps an HTTP store's
    ledger under XDG_DATA_HOME, both in the home folder by default: this session's go to a temporary one
    (the app and workers the tests start inherit it)."""
    folder = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(folder / "cache"))
        mp.setenv("XDG_DATA_HOME", str(folder / "data"))
        yield


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


@contextlib.contextmanager
def app_serving(uri: str, folder: Path) -> Iterator[str]:
    """Point the app's pages (AppTest) at `uri`, the queue's ledger in `folder`. The tracking URI and the
    job queue are cache_resource singletons of the process, so they are cleared before and after."""
    from views import common

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("STYLELAB_BACKEND", "thread")  # AppTest waits on jobs in this process
        mp.setenv("STYLELAB_QUEUE_DB", str(folder / "queue.db"))
        common.tracking_uri.clear()
        common.job_queue.clear()
        try:
            yield uri
        finally:
            common.job_queue().shutdown(wait=True)  # no worker thread (a studio's live preview) left inside torch
            common.job_queue.clear()
            common.tracking_uri.clear()


@pytest.fixture(scope="module")
def app_store(new_store, tmp_path_factory) -> Iterator[str]:
    """A SQLite store the app's pages use in AppTest, for the module (see `app_serving`)."""
    folder = tmp_path_factory.mktemp("app-store")
    with app_serving(new_store(folder), folder) as uri:
        yield uri


# --------------------------------------------------------------------------------------------------
# Servers: PostgreSQL, mlflow server, and one store per module on each kind


def missing_server(reason: str) -> NoReturn:
    """Skip the test for want of a server this machine lacks; fail it where servers are required (CI)."""
    if os.environ.get("STYLELAB_REQUIRE_SERVERS") == "1":
        pytest.fail(f"{reason}, and STYLELAB_REQUIRE_SERVERS=1 requires it", pytrace=False)
    pytest.skip(reason)


PG_TEMPLATE = "mlflow_template"


@pytest.fixture(scope="session")
def postgres(tmp_path_factory) -> Iterator[PostgresCluster]:
    """A throwaway PostgreSQL cluster for the session (Debian's binaries, loopback, a free port), holding one
    migrated MLflow database, `PG_TEMPLATE`, that every store copies (migrations take ~10 s, a copy 0.2 s)."""
    if reason := postgres_missing():
        missing_server(reason)
    cluster = PostgresCluster()
    try:
        cluster.start()
        cluster.create_mlflow_database(PG_TEMPLATE)
        migrate(cluster.uri(PG_TEMPLATE), tmp_path_factory.mktemp("pg-migrate"))
    except ServerError as e:
        cluster.stop()
        pytest.fail(str(e), pytrace=False)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def new_pg_database(postgres) -> Callable[[], str]:
    """`new_pg_database() -> SQLAlchemy URI`: a fresh, migrated MLflow database of its own."""
    names = itertools.count(1)
    return lambda: postgres.create_mlflow_database(f"store_{next(names)}", template=PG_TEMPLATE)


@pytest.fixture(scope="module")
def start_mlflow_server(template_db, tmp_path_factory) -> Iterator[Callable[..., MlflowServer]]:
    """`start(backend_uri=None, allowed_hosts=()) -> MlflowServer`: a real `mlflow server` on a free loopback
    port, on that backend store (default: a copy of the SQLite template) with its served artifact store,
    started and healthy (~10 s); killed when the module's tests end."""
    started: list[MlflowServer] = []

    def start(backend_uri: str | None = None, allowed_hosts: tuple[str, ...] = ()) -> MlflowServer:
        folder = tmp_path_factory.mktemp("mlflow-server")
        if backend_uri:
            server = MlflowServer(backend_uri, folder, allowed_hosts=allowed_hosts)
        else:
            server = MlflowServer.sqlite_copy(template_db, folder)
        started.append(server)
        try:
            return server.start()
        except ServerError as e:
            pytest.fail(str(e), pytrace=False)

    yield start
    for server in started:
        server.kill()


@dataclass(frozen=True)
class TrackingStore:
    kind: str  # "sqlite": a SQLite file; "postgres": an mlflow server on PostgreSQL with served artifacts
    uri: str
    server: MlflowServer | None = None


STORE_KINDS = ("sqlite", "postgres")


@pytest.fixture(scope="module", params=STORE_KINDS)
def tracking_store(request, new_store, tmp_path_factory, start_mlflow_server) -> Iterator[TrackingStore]:
    """The store of a module's store tests, which run once on each kind: a SQLite file (the default), and the
    README's team set-up, a real `mlflow server` on a fresh PostgreSQL database with `--artifacts-destination`."""
    if request.param == "sqlite":
        yield TrackingStore("sqlite", new_store(tmp_path_factory.mktemp("sqlite-store")))
        return
    # --allowed-hosts as the README gives it: the server answers to 127.0.0.1:<port> only
    server = start_mlflow_server(request.getfixturevalue("new_pg_database")(), allowed_hosts=("127.0.0.1",))
    yield TrackingStore("postgres", server.uri, server)


@pytest.fixture(scope="module")
def store_uri(tracking_store) -> str:
    return tracking_store.uri


@pytest.fixture
def make_queue(tmp_path) -> Iterator[Callable[..., JobQueue]]:
    """JobQueue factory (one CPU worker by default); every queue is shut down at teardown."""
    made: list[JobQueue] = []

    def make(tracking_uri: str, **given) -> JobQueue:
        # the ledger in the test's folder: an HTTP store's default one would be in ~/.local/share
        kwargs = {"devices": ["cpu"], "preview_every": 2, "fallback_dir": tmp_path / "unsaved", "backend": "thread",
                  "queue_db": tmp_path / "queue.db"}  # fmt: skip
        kwargs |= given
        made.append(JobQueue(tracking_uri, **kwargs))
        return made[-1]

    yield make
    for queue in made:
        queue.shutdown(wait=True)


@pytest.fixture(scope="module")
def start_streamlit(tmp_path_factory) -> Iterator[Callable[[str], str]]:
    """`start(tracking_uri, **env) -> base URL`: serves the app against that store, with extra environment
    variables, until the module's tests end. Its output goes to a file (`app.log` in a fresh folder): a pipe
    nobody reads would block the app once it filled."""
    procs: list[subprocess.Popen] = []

    def start(tracking_uri: str, **env: str) -> str:
        port = free_port()
        env = os.environ | {"MLFLOW_TRACKING_URI": tracking_uri, "PYTHONPATH": str(ROOT)} | env
        log_path = tmp_path_factory.mktemp("streamlit") / "app.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                 "--server.address", "127.0.0.1", "--server.headless", "true"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
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
        pytest.fail(f"streamlit did not start: {log_path.read_text(errors='replace')[-2000:]}")

    yield start
    for proc in procs:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=20)


@pytest.fixture
def needs_chromium() -> None:
    """For BROWSER_TEST: skip (fail in CI) where Debian's Chromium is missing."""
    if not Path(CHROMIUM).exists():
        missing_server("Chromium is not installed (apt-get install chromium)")


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        missing_server("Chromium is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()
