"""The queue survives restarts and shares a store safely: the ledger's claims, recovery after a worker
dies, two processes on one store, and the real `streamlit run app.py` stopped by SIGTERM or SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine import tracking
from engine.core.config import TransferConfig
from engine.jobs import MAX_ATTEMPTS, JobQueue, JobSpec, Ledger
from engine.jobs.ledger import owner_id

ROOT = Path(__file__).resolve().parents[1]
TINY = TransferConfig(size=32, steps=3, coarse_levels=0)
LONGER = TINY.replace(steps=150)  # a few seconds: long enough to be caught mid-run
TIMEOUT_S = 180

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _spec(content: bytes, style: bytes, config: TransferConfig = TINY) -> JobSpec:
    return JobSpec(config=config, content=content, styles=(style,))


def _wait_status(uri: str, run_ids: list[str], want: set[str], timeout_s: float = TIMEOUT_S) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    while True:
        statuses = {r: tracking.load_run(uri, r).status for r in run_ids}
        if all(s in want for s in statuses.values()) or time.monotonic() > deadline:
            return statuses
        time.sleep(0.3)


def _ran_once(uri: str, run_id: str, steps: int) -> bool:
    """One result was recorded (one `steps_done` point) and every step's cost is there."""
    history = tracking.metric_history(uri, run_id, ["steps_done", "cost/total"])
    return history["steps_done"].count() == 1 and list(history["cost/total"].dropna().index) == list(
        range(1, steps + 1)
    )


# --------------------------------------------------------------------------------------------------
# The ledger


def test_a_batch_is_claimed_by_exactly_one_owner_in_fifo_order(tmp_path):
    ledger = Ledger(tmp_path / "queue.db")
    ledger.add("b1", ["a", "b"])
    ledger.add("b2", ["c"])
    assert ledger.position("a") == ledger.position("b") == 1 and ledger.position("c") == 2
    first, second = ledger.claim("host:1:x"), ledger.claim("host:2:y")
    assert (first.run_ids, second.run_ids) == (("a", "b"), ("c",))
    assert ledger.claim("host:3:z") is None
    ledger.done(["a", "b"])
    assert ledger.state("a") == "done" and ledger.active_count() == 1


def test_jobs_of_a_dead_worker_are_queued_again_then_given_up_after_the_stated_attempts(tmp_path):
    ledger = Ledger(tmp_path / "queue.db")
    ledger.add("b1", ["a"])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_owner = owner_id().rsplit(":", 2)[0] + f":{dead.stdout.strip()}:"  # this host, a process that ended
    for attempt in range(1, MAX_ATTEMPTS + 1):
        claim = ledger.claim(dead_owner)
        assert claim.attempt == attempt
        found = ledger.recover()
        expected = ((), ("a",)) if attempt == MAX_ATTEMPTS else (("a",), ())
        assert (found.requeued, found.given_up) == expected
    assert ledger.state("a") == "done"
    live = ledger.claim(owner_id())  # nothing left to claim
    assert live is None


def test_a_live_owner_on_another_host_keeps_its_jobs_until_its_heartbeat_is_stale(tmp_path):
    ledger = Ledger(tmp_path / "queue.db")
    ledger.add("b1", ["a"])
    ledger.claim("elsewhere:123:")
    assert ledger.recover(stale_after_s=60).requeued == ()
    assert ledger.recover(stale_after_s=0).requeued == ("a",)


# --------------------------------------------------------------------------------------------------
# Two processes on one store

_SERVE = """
import sys, time, torch
torch.set_num_threads(1)
from engine.jobs import JobQueue
queue = JobQueue(sys.argv[1], devices=["cpu"], backend="thread", poll_s=0.1)
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline and queue.queue_length() > 0:
    time.sleep(0.2)
queue.shutdown(wait=True)
"""


def test_two_processes_on_one_store_run_each_job_exactly_once(uri, content_png, style_png):
    submitter = JobQueue(uri, devices=[], backend="thread")  # accepts jobs, runs none
    run_ids = [submitter.submit(_spec(content_png, style_png, TINY.replace(seed=i))) for i in range(6)]
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    servers = [
        subprocess.Popen([sys.executable, "-c", _SERVE, uri, str(TIMEOUT_S)], cwd=ROOT, env=env) for _ in range(2)
    ]
    for server in servers:
        assert server.wait(timeout=TIMEOUT_S + 30) == 0
    statuses = _wait_status(uri, run_ids, {"FINISHED"}, timeout_s=5)
    assert set(statuses.values()) == {"FINISHED"}, statuses
    assert all(_ran_once(uri, r, TINY.steps) for r in run_ids)
    assert {tracking.load_run(uri, r).tags["attempts"] for r in run_ids} == {"1"}


# --------------------------------------------------------------------------------------------------
# The real app, stopped and started again


def _start_app(tracking_uri: str, log: Path) -> subprocess.Popen:
    from conftest import free_port

    port = free_port()
    env = os.environ | {"MLFLOW_TRACKING_URI": tracking_uri, "PYTHONPATH": str(ROOT), "STYLELAB_BACKEND": "process",
                        "STYLELAB_WORKER_THREADS": "1"}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"],
        cwd=ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    proc.url = f"http://127.0.0.1:{port}"
    return proc


def _open_studio(browser, proc: subprocess.Popen) -> None:
    """The app's queue starts with the first page a visitor opens."""
    page = browser.new_page()
    deadline = time.monotonic() + 60
    while True:
        try:
            page.goto(proc.url)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    page.get_by_text("Upload a content image").wait_for(timeout=60_000)
    page.close()


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_restart_of_the_app_loses_no_job_and_runs_none_twice(
    stop, new_store, tmp_path, content_png, style_png, browser
):
    uri = new_store(tmp_path / "store")
    log = tmp_path / "app.log"
    app = _start_app(uri, log)
    _open_studio(browser, app)
    submitter = JobQueue(uri, devices=[], backend="thread")
    running = submitter.submit(_spec(content_png, style_png, LONGER))
    queued = [submitter.submit(_spec(content_png, style_png, TINY.replace(seed=i))) for i in (1, 2)]
    deadline = time.monotonic() + TIMEOUT_S
    while tracking.metric_history(uri, running, ["cost/total"]).empty:  # mid-run, with steps logged
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)

    os.killpg(app.pid, stop)
    app.wait(timeout=60)
    time.sleep(1)  # its worker process, whose parent is gone, ends too
    before = {r: tracking.load_run(uri, r).status for r in [running, *queued]}
    assert before[running] in ("RUNNING", "SCHEDULED") and before[queued[1]] == "SCHEDULED", before

    again = _start_app(uri, log)
    try:
        _open_studio(browser, again)
        statuses = _wait_status(uri, [running, *queued], {"FINISHED", "FAILED", "KILLED"})
    finally:
        os.killpg(again.pid, signal.SIGTERM)
        again.wait(timeout=60)
    assert set(statuses.values()) == {"FINISHED"}, (statuses, log.read_text()[-3000:])
    assert _ran_once(uri, running, LONGER.steps) and all(_ran_once(uri, r, TINY.steps) for r in queued)
    assert tracking.load_run(uri, running).tags["attempts"] == "2"  # the interrupted run started again
    assert Ledger(tmp_path / "store" / "stylelab-queue.db").active_count() == 0
