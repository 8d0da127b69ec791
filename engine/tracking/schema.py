"""The MLflow naming contract in one place: experiment, sources, image keys, and the one status vocabulary.

Every run, job and page uses MLflow's run statuses (`SCHEDULED`, `RUNNING`, `FINISHED`, `FAILED`, `KILLED`);
there is no second set of job states.
"""

from __future__ import annotations

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
