"""MLflow tracking, the only code of the engine that imports MLflow (no Streamlit).

- `schema`: the names of the contract (experiment, sources, image keys) and the one status vocabulary;
- `store`: where the store is, whether it answers, the experiment;
- `recorder`: `create_run` (a job is stored as a SCHEDULED run) and `RunRecorder` (steps and result);
- `groups`: parent runs (sweeps, layer strips), status and tag changes;
- `access`: who owns a run and who may change it (cancel, delete);
- `deletion`: deleting runs (MLflow's soft delete, once they are over);
- `orphans`: which process wrote a run, and runs a dead process left active;
- `readers`: runs, histories, images and artifacts read back;
- `replay`: writing back a run whose store failed mid-run, from the folder it was saved in;
- `links`: the MLflow UI.

The names below are the package's interface; its modules are private to it.
"""

from engine.tracking.access import (
    SINGLE_USER,
    Actor,
    NotAllowed,
    check_may_change,
    may_change,
    refusal,
    run_owner,
)
from engine.tracking.deletion import (
    Deletion,
    children_of,
    delete_if_marked,
    deletion_of,
    mark_deleted,
    pending_deletions,
)
from engine.tracking.groups import (
    cancel_requested,
    create_parent_run,
    group_ready,
    log_run_image,
    parent_of,
    ready_groups,
    request_cancel,
    set_run_status,
    set_run_tags,
)
from engine.tracking.links import UILinks, mlflow_ui_command, mlflow_ui_links
from engine.tracking.orphans import mark_orphaned_runs, pid_alive, process_start, worker_id
from engine.tracking.readers import (
    RunSummary,
    download_artifact,
    image_steps,
    list_runs,
    load_config,
    load_inputs,
    load_run,
    metric_history,
)
from engine.tracking.recorder import RunRecorder, create_run, end_status
from engine.tracking.replay import is_written_back, pending_write_backs, saved_folder, saved_run, write_back
from engine.tracking.schema import (
    ACTIVE,
    DEFAULT_EXPERIMENT,
    DELETE_TAG,
    DELETED_BY_TAG,
    GROUP_ROLE_TAG,
    IMAGE_KEY,
    OWNER_TAG,
    SOURCES,
    STATUSES,
    TERMINAL,
    THUMBNAIL_SIZE,
    check_run_id,
    is_run_id,
    shown_id,
    style_artifact,
)
from engine.tracking.store import (
    CHECK_TIMEOUT_S,
    StoreUnavailable,
    check_reachable,
    default_artifact_root,
    default_fallback_root,
    get_or_create_experiment,
    http_timeout_s,
    resolve_tracking_uri,
    short_error,
)

__all__ = [
    "ACTIVE",
    "CHECK_TIMEOUT_S",
    "DEFAULT_EXPERIMENT",
    "DELETED_BY_TAG",
    "DELETE_TAG",
    "GROUP_ROLE_TAG",
    "IMAGE_KEY",
    "OWNER_TAG",
    "SINGLE_USER",
    "SOURCES",
    "STATUSES",
    "TERMINAL",
    "THUMBNAIL_SIZE",
    "Actor",
    "Deletion",
    "NotAllowed",
    "RunRecorder",
    "RunSummary",
    "StoreUnavailable",
    "UILinks",
    "cancel_requested",
    "check_may_change",
    "check_reachable",
    "check_run_id",
    "children_of",
    "create_parent_run",
    "create_run",
    "default_artifact_root",
    "default_fallback_root",
    "delete_if_marked",
    "deletion_of",
    "download_artifact",
    "end_status",
    "get_or_create_experiment",
    "group_ready",
    "http_timeout_s",
    "image_steps",
    "is_run_id",
    "is_written_back",
    "list_runs",
    "load_config",
    "load_inputs",
    "load_run",
    "log_run_image",
    "mark_deleted",
    "mark_orphaned_runs",
    "may_change",
    "metric_history",
    "mlflow_ui_command",
    "mlflow_ui_links",
    "parent_of",
    "pending_deletions",
    "pending_write_backs",
    "pid_alive",
    "process_start",
    "ready_groups",
    "refusal",
    "request_cancel",
    "resolve_tracking_uri",
    "run_owner",
    "saved_folder",
    "saved_run",
    "set_run_status",
    "set_run_tags",
    "short_error",
    "shown_id",
    "style_artifact",
    "worker_id",
    "write_back",
]
