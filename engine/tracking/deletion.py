"""Deleting runs: MLflow's soft delete (the run's lifecycle stage becomes `deleted`; `mlflow gc` purges
it for good, `MlflowClient.restore_run` brings it back).

A deletion is first recorded on the run (tags `delete_requested`, the time, and `deleted_by`, who), and
the run is soft-deleted once it is over: MLflow refuses every write to a deleted run, so a run still
queued or running is cancelled first (`engine.jobs.JobQueue.delete`) and deleted by the job service
when it ends; a group's parent when its finaliser has ended it. Pages treat a run marked for deletion
as deleted from the moment it is marked.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from mlflow import MlflowClient
from mlflow.entities import RunTag, ViewType

from engine.tracking.schema import (
    _MAX_TAG_LENGTH,
    DEFAULT_EXPERIMENT,
    DELETE_TAG,
    DELETED_BY_TAG,
    TERMINAL,
)
from engine.tracking.store import resolve_tracking_uri


class Deletion(NamedTuple):
    """That a run was deleted: when (UTC, ISO 8601; None when deleted outside stylelab, e.g. in the MLflow
    UI), by whom (None when nobody was signed in), and whether MLflow has soft-deleted it yet."""

    at: str | None
    by: str | None
    done: bool


def deletion_of(tags: Mapping[str, str], lifecycle_deleted: bool = False) -> Deletion | None:
    """The run's deletion from its tags and lifecycle stage, or None when it is not deleted."""
    if DELETE_TAG not in tags and not lifecycle_deleted:
        return None
    return Deletion(tags.get(DELETE_TAG) or None, tags.get(DELETED_BY_TAG) or None, lifecycle_deleted)


def mark_deleted(tracking_uri: str | None, run_ids: Iterable[str], by: str | None) -> None:
    """Record on each run that it is deleted, now, by `by` (None: sign-in is off; nobody is recorded)."""
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    tags = [RunTag(DELETE_TAG, now)] + ([RunTag(DELETED_BY_TAG, by[:_MAX_TAG_LENGTH])] if by else [])
    for run_id in run_ids:
        client.log_batch(run_id, tags=tags, synchronous=True)


def delete_if_marked(tracking_uri: str | None, run_id: str) -> bool:
    """Soft-delete the run when it is marked for deletion and over (FINISHED, FAILED, KILLED); True when it
    is deleted (now or before). Safe to call from several processes: deleting twice is harmless."""
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    run = client.get_run(run_id)
    if run.info.lifecycle_stage == "deleted":
        return True
    if DELETE_TAG not in run.data.tags or run.info.status not in TERMINAL:
        return False
    client.delete_run(run_id)
    return True


def children_of(tracking_uri: str | None, parent_run_id: str) -> list[str]:
    """The run ids of a group's children (a sweep's, a layer strip's), deleted ones left out."""
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    parent = client.get_run(parent_run_id)
    found = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'", ViewType.ACTIVE_ONLY,
        max_results=5000,
    )  # fmt: skip
    return [run.info.run_id for run in found]


def pending_deletions(tracking_uri: str | None, experiment: str = DEFAULT_EXPERIMENT) -> list[str]:
    """Runs marked for deletion that are over but not deleted yet (e.g. the app stopped in between)."""
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    found = client.search_runs(
        [exp.experiment_id], f"tags.{DELETE_TAG} != ''", ViewType.ACTIVE_ONLY, max_results=5000
    )
    return [run.info.run_id for run in found if run.info.status in TERMINAL]
