"""Writing back a run whose store failed mid-run, from the folder its `RunRecorder` saved instead.

A recorder that loses its store keeps every metric in memory and, at the end, saves
`<fallback root>/<run id>/`: `metrics.json` (the whole history, the final metrics, every tag, the end
status and `logged_to_store_through_step`), `result.png`, `config.json` and `images/` (the snapshots it
could not log). When the store answers again, `write_back` replays into the run what it lacks: each
history point not in the store yet (the store's own history is read, so a batch that half reached it
is not logged twice), the final metrics, the tags, the snapshots, `result.png` and `thumbnail.png`
(recomputed), and then ends the run with its saved status (FINISHED, FAILED or KILLED). A marker file,
`written_back.json`, makes it idempotent: a second call does nothing. `pending_write_backs` lists the
folders still to write back.

A folder saved by a suspended run (status SCHEDULED: it runs again from the start) is only marked: its
next attempt logs the run anew.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag
from PIL import Image

from engine.core.errors import InputError
from engine.tracking.schema import (
    _MAX_METRICS_PER_BATCH,
    _MAX_TAG_LENGTH,
    ACTIVE,
    IMAGE_KEY,
    TERMINAL,
    THUMBNAIL_SIZE,
    check_run_id,
)
from engine.tracking.store import resolve_tracking_uri, short_error

__all__ = ["MARKER", "is_written_back", "pending_write_backs", "saved_folder", "saved_run", "write_back"]

MARKER = "written_back.json"
_LOCK_NAME = ".writing-back"
_STALE_LOCK_S = 300.0
_lock = threading.Lock()  # one write-back at a time in this process


def saved_folder(fallback_root: str | Path, run_id: str) -> Path:
    """The folder under `fallback_root` where run `run_id` is saved while its store is down; the id is
    checked first (InputError), so an id from an address never names a path outside the root."""
    return Path(fallback_root) / check_run_id(run_id)


def saved_run(folder: str | Path) -> dict:
    """The folder's `metrics.json` (run id, tracking URI, status, tags, final metrics, history)."""
    try:
        return json.loads((Path(folder) / "metrics.json").read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{folder} is not a saved run (no readable metrics.json: {short_error(e)})") from e


def is_written_back(folder: str | Path) -> bool:
    return (Path(folder) / MARKER).exists()


def pending_write_backs(fallback_root: str | Path, tracking_uri: str | None = None) -> list[Path]:
    """The saved runs under `fallback_root` not yet written back, oldest first; with `tracking_uri`,
    only those that belong to that store."""
    root = Path(fallback_root)
    if not root.is_dir():
        return []
    uri = resolve_tracking_uri(tracking_uri) if tracking_uri is not None else None
    found = []
    for folder in root.iterdir():
        if not (folder / "metrics.json").is_file() or is_written_back(folder):
            continue
        if uri is not None:
            try:
                if resolve_tracking_uri(saved_run(folder).get("tracking_uri")) != uri:
                    continue
            except InputError:
                continue
        found.append(folder)
    return sorted(found, key=lambda f: (f / "metrics.json").stat().st_mtime)


def write_back(tracking_uri: str | None, folder: str | Path) -> str:
    """Replay the saved run in `folder` into its run in `tracking_uri` and end it with its saved status;
    return what was done, in a sentence. Does nothing (and says so) when the folder was written back
    already. Raises the store's error when it fails (nothing is marked then: call again later), and
    InputError when the folder is not a saved run or its run is not in the store."""
    folder = Path(folder)
    with _lock, _folder_lock(folder) as owned:
        if not owned:
            return f"{folder.name}: another process is writing it back"
        if is_written_back(folder):
            return f"{folder.name}: already written back"
        saved = saved_run(folder)
        run_id = saved.get("run_id") or folder.name
        uri = resolve_tracking_uri(tracking_uri)
        client = MlflowClient(uri)
        try:
            run = client.get_run(run_id)
        except Exception as e:
            if getattr(e, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
                raise InputError(f"Run {run_id} saved in {folder} is not in the MLflow store {uri}.") from e
            raise
        status = saved.get("status") or "FAILED"
        if status in ACTIVE:  # suspended: the next attempt logs the run again from the start
            _mark(folder, uri, status, "skipped: the run was suspended and runs again")
            return f"{run_id}: suspended run, not written back (it runs again)"

        points = _missing_points(client, run_id, saved)
        for i in range(0, len(points), _MAX_METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=points[i : i + _MAX_METRICS_PER_BATCH], synchronous=True)
        tags = {k: str(v)[:_MAX_TAG_LENGTH] for k, v in (saved.get("tags") or {}).items()}
        tags["written_back"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        if tags:
            client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()], synchronous=True)
        if "failure_reason" not in tags and "failure_reason" in run.data.tags:
            # set by the recorder's last best-effort FAILED, or by start-up's orphan check, while the
            # record was only here: the saved record is the truth
            with contextlib.suppress(Exception):
                client.delete_tag(run_id, "failure_reason")
        snapshots = _log_snapshots(client, run_id, folder)
        result = folder / "result.png"
        if result.is_file():
            with Image.open(result) as img:
                image = img.convert("RGB")
            client.log_image(run_id, image, artifact_file="result.png")
            client.log_image(run_id, _thumbnail(image), artifact_file="thumbnail.png")
        client.set_terminated(run_id, status if status in TERMINAL else "FAILED")
        _mark(folder, uri, status, f"{len(points)} metric points, {snapshots} snapshots")
        image_note = ", result.png and thumbnail.png" if result.is_file() else ""
        return (
            f"{run_id}: wrote back {len(points)} metric points, {snapshots} snapshots{image_note}; "
            f"status {status}"
        )


def _missing_points(client: MlflowClient, run_id: str, saved: dict) -> list[Metric]:
    """The saved history and final metrics that the store lacks (by key and step)."""
    stamp = int(time.time() * 1000)
    through = int(saved.get("logged_to_store_through_step") or 0)
    history: dict[str, list] = saved.get("history") or {}
    final: dict[str, float] = saved.get("final") or {}
    last_step = int(final.get("steps_done", 0) or 0) or max(
        (int(s) for pts in history.values() for s, _ in pts), default=0
    )
    points = []
    for key, values in history.items():
        if not any(int(s) > through for s, _ in values):
            continue  # all of it reached the store before it failed
        have = {m.step for m in client.get_metric_history(run_id, key)}
        points += [Metric(key, float(v), stamp, int(s)) for s, v in values if int(s) not in have]
    for key, value in final.items():
        have = {m.step for m in client.get_metric_history(run_id, key)}
        if last_step not in have:
            points.append(Metric(key, float(value), stamp, last_step))
    return points


def _log_snapshots(client: MlflowClient, run_id: str, folder: Path) -> int:
    images = folder / "images"
    if not images.is_dir():
        return 0
    count = 0
    for path in sorted(images.glob(f"{IMAGE_KEY}_step_*.png")):
        step = int(path.stem.rsplit("_", 1)[-1])
        with Image.open(path) as img:
            client.log_image(run_id, img.convert("RGB"), key=IMAGE_KEY, step=step, synchronous=True)
        count += 1
    return count


def _thumbnail(img: Image.Image) -> Image.Image:
    thumb = img.copy()
    thumb.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.LANCZOS)
    return thumb


def _mark(folder: Path, uri: str, status: str, what: str) -> None:
    marker = {"tracking_uri": uri, "status": status, "written_back_at": time.time(), "what": what}
    tmp = folder / f".{MARKER}.tmp"
    tmp.write_text(json.dumps(marker, indent=1))
    os.replace(tmp, folder / MARKER)


@contextlib.contextmanager
def _folder_lock(folder: Path):
    """A lock file, so two processes sharing the folder do not write one run back twice; a lock older
    than `_STALE_LOCK_S` (its writer died) is taken over. Yields False when another writer holds it."""
    lock = folder / _LOCK_NAME
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            stale = time.time() - lock.stat().st_mtime > _STALE_LOCK_S
        except OSError:
            stale = True
        if not stale:
            yield False
            return
        with contextlib.suppress(OSError):
            lock.unlink()
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            yield False
            return
    except OSError:
        yield True  # a read-only folder: no lock, but no marker either (write_back fails to mark)
        return
    os.close(fd)
    try:
        yield True
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()
