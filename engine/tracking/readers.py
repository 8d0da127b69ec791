"""Reading runs back for the pages, the CLI and the studies: one search for many runs, one run's history,
images and artifacts."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run, ViewType

from engine.core.config import TransferConfig
from engine.core.errors import InputError
from engine.core.images import Inputs
from engine.tracking.schema import (
    DEFAULT_EXPERIMENT,
    DELETE_TAG,
    IMAGE_KEY,
    check_run_id,
    style_artifact,
    style_mask_artifact,
)
from engine.tracking.store import local_path, resolve_tracking_uri, short_error

# --------------------------------------------------------------------------------------------------
# Readers


def _local_artifact_root(artifact_uri: str) -> Path | None:
    """The artifact folder on this machine, or None when it lives behind a server or in the cloud."""
    scheme = urllib.parse.urlparse(artifact_uri).scheme
    if scheme == "file" or scheme == "" or (len(scheme) == 1 and os.name == "nt"):
        return Path(local_path(artifact_uri))
    return None


def _cache_root(cache_dir: str | Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "stylelab" / "mlflow-artifacts"


def _get_run(client: MlflowClient, run_id: str) -> Run:
    """The run, after checking the id's form (every reader starts here, so no id from an address reaches
    the store, an artifact path or the download cache unchecked)."""
    check_run_id(run_id)
    try:
        return client.get_run(run_id)
    except Exception as e:
        raise InputError(f"No run {run_id!r} in the MLflow store: {short_error(e)}") from e


def _fetch(client: MlflowClient, run_id: str, artifact_uri: str, path: str, cache_dir: str | Path | None) -> str:
    """A local path of artifact `path`: in place for local stores, else downloaded once into the cache
    (artifacts never change once written, so a cached copy stays valid)."""
    parts = Path(path).parts
    if not parts or Path(path).is_absolute() or ".." in parts:
        raise InputError(f"{path!r} is not an artifact path of a run: name a file such as 'result.png'.")
    root = _local_artifact_root(artifact_uri)
    if root is not None:
        local = root / path
        if not local.exists():
            raise InputError(f"Run {run_id} has no artifact {path!r}.")
        return str(local)
    target = _cache_root(cache_dir) / run_id / path
    if target.exists():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=target.parent, prefix=".download-")
    try:
        try:
            downloaded = client.download_artifacts(run_id, path, tmp)
        except Exception as e:
            raise InputError(f"Could not download artifact {path!r} of run {run_id}: {short_error(e)}") from e
        os.replace(downloaded, target)  # atomic: concurrent readers see a whole file or none
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def list_runs(
    tracking_uri: str | None,
    experiment: str = DEFAULT_EXPERIMENT,
    filter_string: str = "",
    max_results: int = 500,
) -> pd.DataFrame:
    """Runs of `experiment` (deleted ones left out), newest first, from ONE search: columns run_id, run_name, status,
    start_time, end_time (UTC), source, parent_run_id, failure_reason, artifact_uri, thumbnail_uri,
    thumbnail_path (the local file when the artifact store is on this machine and the thumbnail exists,
    else missing (test with `pd.isna`): fetch it with `download_artifact(uri, run_id, "thumbnail.png")`),
    then `params.<k>`, `metrics.<k>` (latest values: `metrics.final/total`, `metrics.cost/total`, …)
    and `tags.<k>` as in `mlflow.search_runs`. Keys with `/` need backticks in `filter_string`:
    metrics.`final/total` < 1e5."""
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    base = ["run_id", "run_name", "status", "start_time", "end_time", "source", "parent_run_id",
            "failure_reason", "artifact_uri", "thumbnail_uri", "thumbnail_path"]  # fmt: skip
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return pd.DataFrame(columns=base)
    try:
        runs = client.search_runs(
            [exp.experiment_id],
            filter_string,
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=max_results,
            order_by=["attributes.start_time DESC"],
        )
    except Exception as e:
        if getattr(e, "error_code", None) == "INVALID_PARAMETER_VALUE":
            raise InputError(f"Invalid run filter {filter_string!r}: {short_error(e)}") from e
        raise
    rows = []
    for run in runs:
        info, data = run.info, run.data
        if DELETE_TAG in data.tags:  # deleted, to be soft-deleted when it is over (see `deletion`)
            continue
        root = _local_artifact_root(info.artifact_uri)
        thumb = root / "thumbnail.png" if root is not None else None
        row: dict[str, Any] = {
            "run_id": info.run_id,
            "run_name": info.run_name,
            "status": info.status,
            "start_time": info.start_time,
            "end_time": info.end_time,
            "source": data.tags.get("source"),
            "parent_run_id": data.tags.get("mlflow.parentRunId"),
            "failure_reason": data.tags.get("failure_reason"),
            "artifact_uri": info.artifact_uri,
            "thumbnail_uri": f"{info.artifact_uri.rstrip('/')}/thumbnail.png",
            "thumbnail_path": str(thumb) if thumb is not None and thumb.exists() else None,
        }
        row |= {f"params.{k}": v for k, v in data.params.items()}
        row |= {f"metrics.{k}": v for k, v in data.metrics.items()}
        row |= {f"tags.{k}": v for k, v in data.tags.items()}
        rows.append(row)
    frame = pd.DataFrame(rows, columns=None if rows else base)
    for col in ("start_time", "end_time"):
        frame[col] = pd.to_datetime(frame[col], unit="ms", utc=True)
    ordered = base + sorted(c for c in frame.columns if c not in base)
    return frame[ordered]


def metric_history(tracking_uri: str | None, run_id: str, keys: Iterable[str] | None = None) -> pd.DataFrame:
    """Every logged value of the run's metrics (or of `keys`): index `step`, one column per key, NaN
    where a key has no value at a step (e.g. `final/*` exist only at the last step)."""
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    run = _get_run(client, run_id)
    wanted = sorted(run.data.metrics) if keys is None else list(keys)
    columns = {}
    for key in wanted:
        points = client.get_metric_history(run_id, key)
        by_step = {m.step: m.value for m in sorted(points, key=lambda m: (m.step, m.timestamp))}
        columns[key] = pd.Series(by_step, dtype="float64")
    frame = pd.DataFrame(columns)
    frame.index.name = "step"
    return frame.sort_index()


# MLflow 3.17: images/<key with / as ~>+step+<k>+timestamp+<ms>+<uuid>(+compressed).png|.webp;
# older versions used % as the separator.
_IMAGE_FILE = re.compile(
    r"^(?P<key>.+?)[+%]step[+%](?P<step>\d+)[+%]timestamp[+%](?P<ts>\d+)[+%](?P<uuid>[^+%]+?)"
    r"(?P<compressed>[+%]compressed)?\.(?P<ext>png|webp)$"
)


def image_steps(
    tracking_uri: str | None,
    run_id: str,
    key: str = IMAGE_KEY,
    *,
    compressed: bool = False,
    cache_dir: str | Path | None = None,
) -> list[tuple[int, str]]:
    """(step, local path) of each image logged with `log_image(key=key, step=…)`, by step; the
    full-size PNGs, or MLflow's 256-px WebP previews with `compressed=True`. Local stores give paths in
    place; remote ones are downloaded once into a cache (`cache_dir`, default ~/.cache/stylelab)."""
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    run = _get_run(client, run_id)
    names = {key.replace("/", "~"), key.replace("/", "#"), key}
    try:
        files = client.list_artifacts(run_id, "images")
    except Exception as e:
        raise InputError(f"Could not list the images of run {run_id}: {short_error(e)}") from e
    latest: dict[int, tuple[int, str]] = {}
    for f in files:
        m = _IMAGE_FILE.match(f.path.rsplit("/", 1)[-1])
        if m is None or m["key"] not in names or bool(m["compressed"]) != compressed:
            continue
        step, ts = int(m["step"]), int(m["ts"])
        if step not in latest or ts > latest[step][0]:
            latest[step] = (ts, f.path)
    return [
        (step, _fetch(client, run_id, run.info.artifact_uri, path, cache_dir))
        for step, (_, path) in sorted(latest.items())
    ]


def download_artifact(tracking_uri: str | None, run_id: str, path: str, cache_dir: str | Path | None = None) -> str:
    """A local path of the run's artifact `path` (e.g. "result.png"): in place for local stores, else
    downloaded once into the cache. InputError when the run or the artifact does not exist."""
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    run = _get_run(client, run_id)
    return _fetch(client, run_id, run.info.artifact_uri, path, cache_dir)


def load_config(tracking_uri: str | None, run_id: str) -> TransferConfig:
    """The run's TransferConfig, rebuilt from its params (clone a run, open a permalink)."""
    run = _get_run(MlflowClient(resolve_tracking_uri(tracking_uri)), run_id)
    return TransferConfig.from_params(run.data.params)


class RunSummary(NamedTuple):
    run_id: str
    experiment_id: str
    name: str
    status: str  # SCHEDULED, RUNNING, FINISHED, FAILED, KILLED
    start_time: pd.Timestamp | None
    end_time: pd.Timestamp | None
    params: dict[str, str]
    metrics: dict[str, float]  # latest value of each metric
    tags: dict[str, str]
    lifecycle_deleted: bool = False  # soft-deleted in MLflow (see `deletion`; pages use `deletion_of`)


def load_run(tracking_uri: str | None, run_id: str) -> RunSummary:
    """One run's status, params, latest metrics and tags in one call (the run page's header)."""
    run = _get_run(MlflowClient(resolve_tracking_uri(tracking_uri)), run_id)
    stamp = lambda ms: pd.Timestamp(ms, unit="ms", tz="UTC") if ms else None  # noqa: E731
    return RunSummary(
        run_id=run.info.run_id,
        experiment_id=run.info.experiment_id,
        name=run.info.run_name or run.info.run_id,
        status=run.info.status,
        start_time=stamp(run.info.start_time),
        end_time=stamp(run.info.end_time),
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
        tags=dict(run.data.tags),
        lifecycle_deleted=run.info.lifecycle_stage == "deleted",
    )


def load_inputs(tracking_uri: str | None, run_id: str) -> Inputs:
    """The run's content and style images (`inputs/content.png`, `inputs/style.png`,
    `inputs/style_<i>.png`) and, for a run with regions, its mask (`inputs/mask.png`), decoded: what a
    worker runs, or the studio clones."""
    uri = resolve_tracking_uri(tracking_uri)
    run = _get_run(MlflowClient(uri), run_id)
    count = int(run.data.params.get("style_images", "1"))
    names = ["inputs/content.png", *(style_artifact(i) for i in range(count))]
    read = lambda name: Path(download_artifact(uri, run_id, name)).read_bytes()  # noqa: E731
    content, *styles = (read(name) for name in names)
    mask = read("inputs/mask.png") if run.data.params.get("regions", "none") != "none" else None
    masked = {int(n) - 1 for n in run.data.params.get("style_masks", "").split(",") if n}
    style_masks = [read(style_mask_artifact(i)) if i in masked else None for i in range(count)] if masked else []
    return Inputs.decode(content, styles, mask, style_masks)
