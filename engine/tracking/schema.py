"""The MLflow naming contract in one place: experiment, sources, image keys, and the one status vocabulary.

Every run, job and page uses MLflow's run statuses (`SCHEDULED`, `RUNNING`, `FINISHED`, `FAILED`, `KILLED`);
there is no second set of job states.
"""

from __future__ import annotations

import re

from engine.core.errors import InputError

DEFAULT_EXPERIMENT = "style-transfer"
SOURCES = ("cli", "app", "sweep", "explorer")
IMAGE_KEY = "generated"
THUMBNAIL_SIZE = 256
DEFAULT_FLUSH_EVERY = 25
DEFAULT_SNAPSHOTS = 20  # snapshots per run when snapshot_every is not given
TERMINAL = ("FINISHED", "FAILED", "KILLED")
_MAX_METRICS_PER_BATCH = 1000  # MLflow's limit for log_batch
_MAX_TAG_LENGTH = 5000
ACTIVE = ("SCHEDULED", "RUNNING")
STATUSES = (*ACTIVE, *TERMINAL)
CANCEL_TAG = "cancel_requested"  # set on a run to stop it, read by whichever worker runs it
GROUP_ROLE_TAG = "group.role"  # "parent" on a sweep's or a layer strip's parent run
GROUP_SIZE_TAG = "group.size"  # how many children the parent waits for
OWNER_TAG = "owner"  # the signed-in user who started the run (with sign-in on; see `access`)
USER_TAG = "mlflow.user"  # MLflow's own "User": the owner with sign-in on, else the OS user
DELETE_TAG = "delete_requested"  # when someone deleted the run (UTC, ISO 8601); it is soft-deleted once over
DELETED_BY_TAG = "deleted_by"  # who deleted it, when sign-in says who


# MLflow's stores name a run `uuid.uuid4().hex`: 32 lowercase hexadecimal characters. Ids come from
# addresses people type or paste (`/runs?run=<id>`), and reach store queries, artifact and cache paths
# and the folder a run is saved in while its store is down, so each is checked here before any of that.
RUN_ID_PATTERN = re.compile(r"[0-9a-f]{32}")


def is_run_id(text: object) -> bool:
    """Whether `text` has the form of an MLflow run id (it may still name no run)."""
    return isinstance(text, str) and RUN_ID_PATTERN.fullmatch(text) is not None


def shown_id(text: object) -> str:
    """A value given as a run id, quoted for a message: as it is when it is a short word, else described
    (a page never echoes a path, or whatever else an address carried)."""
    if isinstance(text, str) and re.fullmatch(r"[A-Za-z0-9_-]{1,40}", text):
        return repr(text)
    return "The run id in this address"


def check_run_id(text: object) -> str:
    """`text` when it has the form of a run id; else InputError saying what a run id looks like."""
    if is_run_id(text):
        return text  # type: ignore[return-value]
    raise InputError(
        f"{shown_id(text)} is not a run id: run ids are 32 hexadecimal characters (0-9, a-f), as in a run "
        "page's address. Check the link, or open the Runs page and pick the run there."
    )


def style_artifact(index: int) -> str:
    """Where style image `index` (0-based) of a run is stored: `inputs/style.png`, then `style_<i>.png`."""
    return "inputs/style.png" if index == 0 else f"inputs/style_{index}.png"


def style_mask_artifact(index: int) -> str:
    """Where the mask of style image `index` (0-based) is stored, named as `style_artifact`."""
    return style_artifact(index).replace("style", "style_mask", 1)
