"""Which process wrote a run, and runs that a dead process of this host left RUNNING or SCHEDULED."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

from mlflow import MlflowClient

from engine.tracking.schema import DEFAULT_EXPERIMENT, GROUP_ROLE_TAG
from engine.tracking.store import resolve_tracking_uri


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def process_start(pid: int) -> str | None:
    """The start time of process `pid` in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except OSError:
        return False
    return True


def mark_orphaned_runs(
    tracking_uri: str | None,
    experiment: str = DEFAULT_EXPERIMENT,
    keep: Callable[[list[str]], set[str]] = lambda run_ids: set(),
) -> list[str]:
    """Set FAILED every RUNNING or SCHEDULED run whose `worker` tag names this host and a process that
    has ended (or a reused pid: its `worker_start` differs). Returns their run ids. Runs of other hosts
    and of live processes are left alone, and so are those `keep` names (e.g. jobs a durable queue will
    run again)."""
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
    kept = keep([run.info.run_id for run in runs]) if runs else set()
    for run in runs:
        if run.info.run_id in kept or run.data.tags.get(GROUP_ROLE_TAG) == "parent":
            continue
        worker = run.data.tags.get("worker", "")
        run_host, _, pid_text = worker.rpartition(":")
        if run_host != host or not pid_text.isdigit():
            continue
        pid = int(pid_text)
        started = run.data.tags.get("worker_start")
        if pid_alive(pid) and (started is None or process_start(pid) in (None, started)):
            continue
        client.set_tag(
            run.info.run_id, "failure_reason", f"worker process {pid} on {host} ended before the run finished"
        )
        client.set_terminated(run.info.run_id, "FAILED")
        orphaned.append(run.info.run_id)
    return orphaned
