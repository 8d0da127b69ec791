"""Who may change a run, on the pages: the visitor as the job queue's `actor`, the "Only my runs" filter,
who is signed in (sidebar), and the Delete control and deleted notice of run pages. The rule itself is
`engine.tracking.access`; sign-in is `views.gate`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pandas as pd
import streamlit as st

from engine import tracking
from engine.core.errors import InputError
from views.gate import admins, identity, owner, sign_in_enabled

__all__ = ["account_sidebar", "actor", "delete_control", "deleted_notice", "mine", "owner", "refusal",
           "sign_in_enabled"]  # fmt: skip


def actor() -> tracking.Actor:
    """Who asks, for the job queue's checks: the signed-in user, or the single user with sign-in off."""
    user = identity()
    if user is None:
        if sign_in_enabled():  # the gate lets nobody through unsigned; never treat them as the single user
            raise InputError("Sign in first.")
        return tracking.SINGLE_USER
    return tracking.Actor.signed_in(user, admins())


def refusal(tags: Mapping[str, str], action: str) -> str | None:
    """Why the visitor may not `action` ("cancel", "delete") a run with these tags; None when they may."""
    if not sign_in_enabled():
        return None
    return tracking.refusal(actor(), tracking.run_owner(tags), action)


def mine(runs: pd.DataFrame) -> pd.Series:
    """Which rows of `tracking.list_runs` the signed-in user owns (tag `owner`, compared case-blind)."""
    user = (identity() or "").casefold()
    owners = runs["tags.owner"] if "tags.owner" in runs.columns else pd.Series("", index=runs.index)
    return owners.fillna("").astype(str).str.strip().str.casefold().eq(user) & bool(user)


def account_sidebar() -> None:
    """Who is signed in, and a way out (with sign-in on)."""
    user = identity()
    if user is None:
        return
    with st.sidebar:
        admin = " (admin)" if actor().admin else ""
        st.caption(f"**Signed in** as {user}{admin}")
        if st.button("Sign out", icon=":material/logout:", key="sign_out"):
            st.logout()


# --------------------------------------------------------------------------------------------------
# Run pages: deleted runs, and the delete control


def deleted_notice(run: tracking.RunSummary) -> bool:
    """Say so when the run is deleted (who deleted it and when, as far as recorded); True when it is."""
    deletion = tracking.deletion_of(run.tags, run.lifecycle_deleted)
    if deletion is None:
        return False
    by = f" by {deletion.by}" if deletion.by else ""
    when = f" on {deletion.at.replace('T', ' at ').replace('+00:00', ' UTC')}" if deletion.at else ""
    st.title(run.name)
    st.warning(f"Run `{run.run_id}` was deleted{by}{when}. Its results are no longer shown.",
               icon=":material/delete:")  # fmt: skip
    return True


def delete_control(run: tracking.RunSummary, delete: Callable[..., object]) -> None:
    """A "Delete" popover with its confirmation, disabled with the reason for who may not (for an active
    run the reason covers its Cancel button too, which shows it only as its tooltip); `delete(run_id,
    actor=...)` is the job queue's, which checks again and refuses with NotAllowed."""
    active = run.status in tracking.ACTIVE
    reason = refusal(run.tags, "cancel or delete" if active else "delete")  # one line says both
    group = run.tags.get(tracking.GROUP_ROLE_TAG) == "parent"
    with st.popover("Delete", icon=":material/delete:", disabled=reason is not None, help=reason):
        st.write(
            "Delete this run"
            + (" and every run of its group" if group else "")
            + ("? It is cancelled first." if active else "?")
            + " It disappears from the history; its link says it was deleted."
        )
        if st.button("Delete it", type="primary", key=f"delete_{run.run_id}"):
            try:
                delete(run.run_id, actor=actor())
            except InputError as exc:
                st.error(str(exc), icon="⚠️")
                st.stop()
            st.rerun()
    if reason:
        st.caption(reason)
