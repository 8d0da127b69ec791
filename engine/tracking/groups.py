"""Parent runs (sweeps, layer strips) and status or tag changes of existing runs."""

from __future__ import annotations

import os
from collections.abc import Sequence

from mlflow import MlflowClient
from mlflow.entities import Param, RunTag, ViewType
from PIL import Image

from engine.tracking.orphans import process_start, worker_id
from engine.tracking.schema import (
    _MAX_TAG_LENGTH,
    CANCEL_TAG,
    DEFAULT_EXPERIMENT,
    GROUP_ROLE_TAG,
    GROUP_SIZE_TAG,
    OWNER_TAG,
    TERMINAL,
    USER_TAG,
)
from engine.tracking.store import get_or_create_experiment, resolve_tracking_uri

# --------------------------------------------------------------------------------------------------
# Sweeps and status changes


def create_parent_run(
    tracking_uri: str | None,
    experiment: str = DEFAULT_EXPERIMENT,
    *,
    name: str,
    params: dict[str, str] | None = None,
    source: str = "sweep",
    tags: dict[str, str] | None = None,
    size: int,
    owner: str | None = None,
) -> str:
    """A RUNNING parent run of a group (a sweep, a layer strip) of `size` children, which pass
    `parent_run_id=` when they are created. The job service ends it once all `size` have ended
    (`group_ready`); a parent's state follows its children, so no orphan check ever fails it. `owner`:
    the signed-in user who starts the group (tags `owner`, `mlflow.user`), as for its children."""
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    run_tags = {"source": source, "worker": worker_id(), GROUP_ROLE_TAG: "parent", GROUP_SIZE_TAG: str(size)}
    if owner:
        run_tags |= {OWNER_TAG: owner, USER_TAG: owner}
    if start := process_start(os.getpid()):
        run_tags["worker_start"] = start
    run = client.create_run(
        get_or_create_experiment(client, experiment),
        tags=run_tags | {k: str(v) for k, v in (tags or {}).items()},
        run_name=name,
    )
    if params:
        client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    return run.info.run_id


def set_run_status(tracking_uri: str | None, run_id: str, status: str, reason: str | None = None) -> None:
    """End (FINISHED, FAILED, KILLED) or move (RUNNING, SCHEDULED) a run, with an optional `failure_reason`."""
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    if reason:
        client.set_tag(run_id, "failure_reason", reason[:_MAX_TAG_LENGTH])
    if status in TERMINAL:
        client.set_terminated(run_id, status)
    else:
        client.update_run(run_id, status=status)


def set_run_tags(tracking_uri: str | None, run_id: str, tags: dict[str, str]) -> None:
    """Set tags on an existing run, in one call."""
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    client.log_batch(run_id, tags=[RunTag(k, str(v)[:_MAX_TAG_LENGTH]) for k, v in tags.items()], synchronous=True)


def log_run_image(
    tracking_uri: str | None,
    run_id: str,
    image: Image.Image,
    artifact_file: str | None = None,
    *,
    key: str | None = None,
    step: int = 0,
) -> None:
    """Log `image` on a run: as artifact `artifact_file` (e.g. "contact_sheet.png"; rewriting it replaces
    it), and/or in the MLflow UI's image grid under `key` at `step` (each call adds one)."""
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    if artifact_file is not None:
        client.log_image(run_id, image, artifact_file=artifact_file)
    if key is not None:
        client.log_image(run_id, image, key=key, step=step, synchronous=True)


def parent_of(tracking_uri: str | None, run_id: str) -> str | None:
    """The run's parent run id, when it is a child of a group."""
    return MlflowClient(resolve_tracking_uri(tracking_uri)).get_run(run_id).data.tags.get("mlflow.parentRunId")


def group_ready(tracking_uri: str | None, parent_run_id: str) -> bool:
    """Whether a group's parent is still RUNNING and all of its `group.size` children have ended: the
    moment to finalise it, once."""
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    parent = client.get_run(parent_run_id)
    size = parent.data.tags.get(GROUP_SIZE_TAG, "")
    if parent.info.status != "RUNNING" or not size.isdigit():
        return False
    children = client.search_runs(  # deleted children count too: they have ended
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'", ViewType.ALL, max_results=5000
    )
    return sum(c.info.status in TERMINAL for c in children) >= int(size)


def ready_groups(tracking_uri: str | None, experiment: str = DEFAULT_EXPERIMENT) -> list[str]:
    """Parents of groups whose children have all ended, but that nobody finalised (e.g. the app stopped
    between the last child and its parent)."""
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    parents = client.search_runs(
        [exp.experiment_id], f"attributes.status = 'RUNNING' AND tags.`{GROUP_ROLE_TAG}` = 'parent'", max_results=1000
    )
    return [p.info.run_id for p in parents if group_ready(tracking_uri, p.info.run_id)]


def request_cancel(tracking_uri: str | None, run_id: str) -> None:
    """Ask whichever worker runs `run_id` (a thread, another process, a Ray node) to stop it: the store
    is what they all read."""
    MlflowClient(resolve_tracking_uri(tracking_uri)).set_tag(run_id, CANCEL_TAG, "true")


def cancel_requested(tracking_uri: str | None, run_ids: Sequence[str]) -> set[str]:
    """Which of `run_ids` someone asked to cancel (`request_cancel`), in one search."""
    if not run_ids:
        return set()
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    experiments = {client.get_run(run_ids[0]).info.experiment_id}
    quoted = ", ".join(f"'{r}'" for r in run_ids)
    found = client.search_runs(
        list(experiments), f"attributes.run_id IN ({quoted}) AND tags.{CANCEL_TAG} = 'true'", max_results=len(run_ids)
    )
    return {run.info.run_id for run in found}
