"""The ownership rule (`tracking.access`) enforced by the job service, and deleting runs.

Cancel and delete go through `JobQueue`, which takes who asks (`tracking.Actor`) and refuses with
`tracking.NotAllowed` (an InputError: its message is fit for the page) before anything changes. Deleting
is MLflow's soft delete, done once a run is over, because MLflow refuses writes to a deleted run:
`delete` marks the run (and a group's children) deleted, cancels what is still queued or running, and
soft-deletes what is over; the service deletes the rest as each ends (`delete_if_marked`, called where
a run ends; a deleted group's parent is ended KILLED, not finalised, when its last child ends:
`end_deleted_group`), and at start-up what a stopped app left (`delete_pending`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine import tracking
from engine.core.errors import InputError

if TYPE_CHECKING:
    from engine.jobs.queue import JobQueue

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Deleted:
    """What `delete` did: every run it deleted (the run, then a group's children), and which of them were
    still queued or running: cancelled now, soft-deleted by the service when they end."""

    run_ids: tuple[str, ...]
    pending: tuple[str, ...]


def check_owner(tracking_uri: str, run_id: str, actor: tracking.Actor, action: str) -> tracking.RunSummary:
    """The run, when `actor` may `action` it; NotAllowed (or InputError: no such run) otherwise."""
    run = tracking.load_run(tracking_uri, run_id)
    tracking.check_may_change(actor, tracking.run_owner(run.tags), action)
    return run


def delete(queue: JobQueue, run_id: str, actor: tracking.Actor) -> Deleted:
    """Delete `run_id` and, when it is a group's parent (a sweep, a layer strip), its children: the parent's
    owner owns the group. See the module docstring; `JobQueue.delete` is the entry point."""
    uri = queue.tracking_uri
    run = check_owner(uri, run_id, actor, "delete")
    if tracking.deletion_of(run.tags, run.lifecycle_deleted) is not None:
        raise InputError(f"Run {run_id} is deleted already.")
    parent = run.tags.get(tracking.GROUP_ROLE_TAG) == "parent"
    children = tracking.children_of(uri, run_id) if parent else []
    targets = [*children, run_id]
    tracking.mark_deleted(uri, targets, actor.user)  # first: whoever ends a run from here on deletes it
    for target in targets:
        queue.cancel(target)  # False when it is over already (or a parent: its state follows its children)
    pending = [target for target in targets if not delete_if_marked(uri, target)]
    if parent and run_id in pending and tracking.group_ready(uri, run_id):
        end_deleted_group(uri, run_id)  # its children are over: end it and delete it now
        pending = [target for target in pending if not delete_if_marked(uri, target)]
    return Deleted(tuple(targets), tuple(pending))


def delete_if_marked(tracking_uri: str, run_id: str) -> bool:
    """`tracking.delete_if_marked`, for the service's hooks: a failure is logged, never raised."""
    try:
        return tracking.delete_if_marked(tracking_uri, run_id)
    except Exception as e:
        log.warning("Could not delete run %s: %s", run_id, tracking.short_error(e))
        return False


def end_deleted_group(tracking_uri: str, parent_run_id: str) -> bool:
    """When a group whose children have all ended was deleted: end its parent KILLED and delete it, instead
    of finalising it (True); False when the group is not deleted. A failure is logged, never raised."""
    try:
        parent = tracking.load_run(tracking_uri, parent_run_id)
        if tracking.deletion_of(parent.tags, parent.lifecycle_deleted) is None:
            return False
        if parent.status not in tracking.TERMINAL and not parent.lifecycle_deleted:
            tracking.set_run_status(tracking_uri, parent_run_id, "KILLED", "deleted")
    except Exception as e:
        log.warning("Could not end deleted group %s: %s", parent_run_id, tracking.short_error(e))
        return False
    delete_if_marked(tracking_uri, parent_run_id)
    return True


def delete_pending(tracking_uri: str) -> list[str]:
    """Delete the runs marked for deletion that ended while no service saw them end; returns them."""
    try:
        tracking.check_reachable(tracking_uri, timeout_s=tracking.CHECK_TIMEOUT_S)  # a dead store: seconds, not minutes
        pending = tracking.pending_deletions(tracking_uri)
    except Exception as e:
        log.warning("Could not look for runs to delete: %s", tracking.short_error(e))
        return []
    return [run_id for run_id in pending if delete_if_marked(tracking_uri, run_id)]
