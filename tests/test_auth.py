"""Sign-in and run ownership without a browser: the rule (`tracking.access`), its enforcement by the job
queue (cancel, delete) against real MLflow stores, deleting runs and groups, and the page logic with
AppTest's `user` and `secrets` (the gate, "only my runs", buttons disabled with their reason, owner tags).

The real sign-in (provider, callback, cookie, return to a permalink) is tests/test_browser_auth.py.
"""

from __future__ import annotations

import getpass
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from streamlit.testing.v1 import AppTest

from engine import tracking
from engine.core.config import TransferConfig
from engine.core.errors import InputError
from engine.core.images import Inputs
from engine.jobs import JobSpec
from engine.studies import sweep
from views.gate import return_target

ROOT = Path(__file__).resolve().parents[1]
ALICE, BOB, ADMIN = "alice@example.com", "bob@example.com", "boss@example.com"
TINY = TransferConfig(size=32, steps=2, coarse_levels=0, init="content")
LONG = TransferConfig(size=32, steps=20_000, coarse_levels=0, init="content")  # runs until cancelled
AUTH_SECRETS = {
    "auth": {
        "redirect_uri": "http://127.0.0.1:8501/oauth2callback",
        "cookie_secret": "a-long-random-test-secret-0123456789",
        "client_id": "stylelab",
        "client_secret": "test-secret",
        "server_metadata_url": "http://127.0.0.1:9/.well-known/openid-configuration",
    },
    "stylelab": {"admins": [ADMIN]},
}


def as_(user: str) -> tracking.Actor:
    return tracking.Actor.signed_in(user, [ADMIN])


def spec(content_png: bytes, style_png: bytes, owner: str | None, config: TransferConfig = TINY) -> JobSpec:
    return JobSpec(config=config, content=content_png, styles=(style_png,), owner=owner)


def finished_run(uri: str, content_png: bytes, style_png: bytes, owner: str | None, name: str = "a run") -> str:
    """A run stored and ended FINISHED without computing (the store and its tags are what these test)."""
    inputs = Inputs.decode(content_png, [style_png])
    run_id = tracking.create_run(uri, tracking.DEFAULT_EXPERIMENT, TINY, inputs, source="app", status="RUNNING",
                                 owner=owner, run_name=name)  # fmt: skip
    tracking.set_run_status(uri, run_id, "FINISHED")
    return run_id


def wait_for(predicate, timeout: float = 60.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


# --------------------------------------------------------------------------------------------------
# The rule


@pytest.mark.parametrize(
    ("actor", "owner", "allowed"),
    [
        (tracking.SINGLE_USER, ALICE, True),  # sign-in off: one user, who may do anything
        (tracking.SINGLE_USER, None, True),
        (as_(ALICE), ALICE, True),
        (as_("Alice@Example.com"), ALICE, True),  # e-mail addresses compare case-blind
        (as_(BOB), ALICE, False),
        (as_(BOB), None, False),  # no owner (sign-in was off, or the CLI): the admins'
        (as_(ADMIN), ALICE, True),
        (as_(ADMIN.upper()), None, True),
    ],
)
def test_only_the_owner_or_an_admin_may_change_a_run(actor, owner, allowed):
    assert tracking.may_change(actor, owner) is allowed
    assert (tracking.refusal(actor, owner, "cancel") is None) is allowed


def test_a_refusal_says_who_may_and_who_asked():
    assert tracking.refusal(as_(BOB), ALICE, "delete") == (
        f"Only its owner ({ALICE}) or an admin can delete this run; you are signed in as {BOB}."
    )
    assert "started without sign-in" in tracking.refusal(as_(BOB), None, "cancel")
    with pytest.raises(tracking.NotAllowed, match="Only its owner"):
        tracking.check_may_change(as_(BOB), ALICE, "cancel")
    assert issubclass(tracking.NotAllowed, InputError)  # pages show it like any user error


def test_the_return_address_after_sign_in_is_one_of_the_apps_pages():
    pages = ["", "studio", "runs", "compare"]
    assert return_target("runs%3Frun%3Dabc123", pages) == ("runs", {"run": "abc123"})
    assert return_target("compare%3Fruns%3Da%252Cb", pages) == ("compare", {"runs": "a,b"})
    assert return_target("studio", pages) == ("studio", {})
    for bad in (None, "", "https%3A%2F%2Fevil.example%2F", "%2F%2Fevil.example", "nope%3Fx%3D1", "runs" + "x" * 7000):
        assert return_target(bad, pages) is None, bad


# --------------------------------------------------------------------------------------------------
# Owners on the record


def test_a_run_carries_its_owner_in_owner_and_mlflow_user(uri, make_queue, content_png, style_png):
    queue = make_queue(uri, devices=[])  # accepts jobs, runs none: they stay queued
    mine = queue.submit(spec(content_png, style_png, ALICE))
    anonymous = queue.submit(spec(content_png, style_png, None))
    client = MlflowClient(uri)
    run = client.get_run(mine)
    assert run.data.tags["owner"] == ALICE and run.data.tags["mlflow.user"] == ALICE
    assert run.info.user_id == ALICE  # what the MLflow UI shows as the run's User
    run = client.get_run(anonymous)
    assert "owner" not in run.data.tags
    assert run.data.tags["mlflow.user"] == getpass.getuser()  # sign-in off: the OS user, as before


def test_a_sweep_and_its_children_carry_its_owner(uri, make_queue, content_png, style_png):
    queue = make_queue(uri, devices=[])
    handle = sweep.submit_sweep(queue, TINY, [sweep.SweepAxis("seed", ("1", "2"))], content_png, (style_png,),
                                owner=ALICE)  # fmt: skip
    client = MlflowClient(uri)
    for run_id in [handle.parent_run_id, *handle.run_ids]:
        tags = client.get_run(run_id).data.tags
        assert (tags["owner"], tags["mlflow.user"]) == (ALICE, ALICE), run_id


# --------------------------------------------------------------------------------------------------
# Cancel and delete, enforced by the job queue


def test_another_user_cannot_cancel_a_run_and_nothing_changes(uri, make_queue, content_png, style_png):
    queue = make_queue(uri, devices=[])
    run_id = queue.submit(spec(content_png, style_png, ALICE))
    with pytest.raises(tracking.NotAllowed, match=f"Only its owner \\({ALICE}\\)"):
        queue.cancel(run_id, actor=as_(BOB))
    assert tracking.load_run(uri, run_id).status == "SCHEDULED"
    assert queue.ledger.state(run_id) == "queued"
    assert queue.cancel(run_id, actor=as_(ALICE)) is True
    assert tracking.load_run(uri, run_id).status == "KILLED"


def test_an_admin_and_the_single_user_may_cancel_any_run(uri, make_queue, content_png, style_png):
    queue = make_queue(uri, devices=[])
    first, second = (queue.submit(spec(content_png, style_png, ALICE)) for _ in range(2))
    assert queue.cancel(first, actor=as_(ADMIN)) is True
    assert queue.cancel(second) is True  # sign-in off
    assert {tracking.load_run(uri, r).status for r in (first, second)} == {"KILLED"}


def test_another_user_cannot_cancel_a_sweep(uri, make_queue, content_png, style_png):
    queue = make_queue(uri, devices=[])
    handle = sweep.submit_sweep(queue, TINY, [sweep.SweepAxis("seed", ("1", "2"))], content_png, (style_png,),
                                owner=ALICE)  # fmt: skip
    with pytest.raises(tracking.NotAllowed):
        sweep.cancel_sweep(uri, handle.parent_run_id, queue=queue, actor=as_(BOB))
    assert {tracking.load_run(uri, r).status for r in handle.run_ids} == {"SCHEDULED"}
    assert sweep.cancel_sweep(uri, handle.parent_run_id, queue=queue, actor=as_(ALICE)) == 2


def test_deleting_a_finished_run_hides_it_and_records_who(uri, make_queue, content_png, style_png):
    queue = make_queue(uri, devices=[])
    run_id = finished_run(uri, content_png, style_png, ALICE)
    kept = finished_run(uri, content_png, style_png, ALICE)
    with pytest.raises(tracking.NotAllowed):
        queue.delete(run_id, actor=as_(BOB))
    assert tracking.deletion_of(tracking.load_run(uri, run_id).tags) is None  # refused: nothing marked
    deleted = queue.delete(run_id, actor=as_(ALICE))
    assert deleted.run_ids == (run_id,) and deleted.pending == ()
    run = tracking.load_run(uri, run_id)
    assert run.lifecycle_deleted  # MLflow's soft delete
    deletion = tracking.deletion_of(run.tags, run.lifecycle_deleted)
    assert deletion.by == ALICE and deletion.done and deletion.at.endswith("+00:00")
    assert list(tracking.list_runs(uri)["run_id"]) == [kept]
    with pytest.raises(InputError, match="deleted already"):
        queue.delete(run_id, actor=as_(ALICE))


def test_deleting_a_queued_run_cancels_it_first(uri, make_queue, content_png, style_png):
    queue = make_queue(uri, devices=[])
    run_id = queue.submit(spec(content_png, style_png, None))
    deleted = queue.delete(run_id)  # sign-in off: anyone; nobody is recorded
    run = tracking.load_run(uri, run_id)
    assert deleted.pending == () and run.status == "KILLED" and run.lifecycle_deleted
    assert tracking.deletion_of(run.tags, True).by is None
    assert queue.ledger.state(run_id) == "done"  # left the queue


@pytest.mark.slow
def test_a_running_run_is_cancelled_and_deleted_when_it_stops(uri, make_queue, content_png, style_png,
                                                              one_torch_thread):  # fmt: skip
    queue = make_queue(uri)  # one CPU worker
    run_id = queue.submit(spec(content_png, style_png, ALICE, LONG))
    wait_for(lambda: (p := queue.progress(run_id)) is not None and p.step >= 2, what="the run to start")
    deleted = queue.delete(run_id, actor=as_(ALICE))
    assert deleted.pending == (run_id,)  # running: cancelled now, deleted by the service when it stops
    assert run_id not in set(tracking.list_runs(uri)["run_id"])  # gone from the history at once
    wait_for(lambda: tracking.load_run(uri, run_id).lifecycle_deleted, what="the run to be deleted")
    assert tracking.load_run(uri, run_id).status == "KILLED"


def test_deleting_a_sweep_deletes_its_children(uri, make_queue, content_png, style_png):
    queue = make_queue(uri, devices=[])
    handle = sweep.submit_sweep(queue, TINY, [sweep.SweepAxis("seed", ("1", "2", "3"))], content_png, (style_png,),
                                owner=ALICE)  # fmt: skip
    with pytest.raises(tracking.NotAllowed):
        queue.delete(handle.parent_run_id, actor=as_(BOB))
    deleted = queue.delete(handle.parent_run_id, actor=as_(ADMIN))
    assert set(deleted.run_ids) == {handle.parent_run_id, *handle.run_ids} and deleted.pending == ()
    for run_id in deleted.run_ids:
        run = tracking.load_run(uri, run_id)
        assert run.lifecycle_deleted and run.status == "KILLED", run_id
        assert tracking.deletion_of(run.tags, True).by == ADMIN
    assert tracking.list_runs(uri).empty


def test_a_deleted_child_still_counts_for_its_group(uri, make_queue, content_png, style_png):
    queue = make_queue(uri, devices=[])
    handle = sweep.submit_sweep(queue, TINY, [sweep.SweepAxis("seed", ("1", "2"))], content_png, (style_png,),
                                owner=ALICE)  # fmt: skip
    first, second = handle.run_ids
    queue.delete(first, actor=as_(ALICE))
    assert tracking.load_run(uri, handle.parent_run_id).status == "RUNNING"
    queue.cancel(second, actor=as_(ALICE))
    wait_for(lambda: handle.done, timeout=30, what="the sweep's parent to end")  # the deleted child counted


def test_a_deletion_left_by_a_stopped_app_is_done_at_start_up(uri, make_queue, content_png, style_png):
    run_id = finished_run(uri, content_png, style_png, ALICE)
    tracking.mark_deleted(uri, [run_id], ALICE)  # the app stopped before it soft-deleted the run
    assert tracking.pending_deletions(uri) == [run_id]
    assert not tracking.load_run(uri, run_id).lifecycle_deleted
    assert make_queue(uri, devices=[]).wait_started(timeout_s=60)  # start-up runs in the background
    assert tracking.load_run(uri, run_id).lifecycle_deleted
    assert tracking.pending_deletions(uri) == []


# --------------------------------------------------------------------------------------------------
# Pages (AppTest): the gate, "only my runs", buttons for others, owner tags


@pytest.fixture(scope="module")
def store(app_store) -> str:
    return app_store


def page(user: str | None, **query) -> AppTest:
    """The app with sign-in on (`[auth]` in its secrets), as `user` (None: nobody signed in)."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.secrets = {k: dict(v) for k, v in AUTH_SECRETS.items()}
    at.user = {"is_logged_in": False} if user is None else {"is_logged_in": True, "email": user, "name": user}
    for key, value in query.items():
        at.query_params[key] = value
    return at


def texts(at: AppTest) -> str:
    parts = [e.value for kind in ("markdown", "caption", "info", "error", "warning", "title", "subheader")
             for e in getattr(at, kind)]  # fmt: skip
    return "\n".join(str(p) for p in parts)


def scripts(at: AppTest) -> str:
    return "\n".join(element.proto.body for element in at.get("html"))


def test_an_anonymous_visitor_sees_only_the_sign_in_page(store, content_png, style_png):
    run_id = finished_run(store, content_png, style_png, ALICE, name="alice's secret run")
    at = page(None, run=run_id)
    at.switch_page("views/runs.py")
    at.run()
    assert not at.exception
    assert "Sign in to stylelab" in texts(at)
    assert "alice's secret run" not in texts(at) and "Queue" not in texts(at)  # no page, no sidebar
    assert [b.label for b in at.button] == ["Sign in"]
    assert f"stylelab_next=runs%3Frun%3D{run_id}" in scripts(at)  # where to come back to after the callback


def test_with_sign_in_off_nothing_asks_to_sign_in(store):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    assert not at.exception
    assert "Sign in" not in texts(at) and "Signed in" not in texts(at)
    assert "Upload a content image" in texts(at)


def test_history_shows_owners_and_only_my_runs_on_demand(store, content_png, style_png):
    finished_run(store, content_png, style_png, ALICE, name="run of alice")
    finished_run(store, content_png, style_png, BOB, name="run of bob")
    at = page(ALICE)
    at.switch_page("views/runs.py")
    at.run()
    assert not at.exception
    assert f"**Signed in** as {ALICE}" in texts(at)
    shown = [link.label for link in at.get("page_link")]
    assert any("run of alice" in s for s in shown) and any("run of bob" in s for s in shown)
    assert f"by {BOB}" in texts(at)
    at.toggle(key="mine").set_value(True).run()
    shown = [link.label for link in at.get("page_link")]
    assert any("run of alice" in s for s in shown) and not any("run of bob" in s for s in shown)


def test_cancel_and_delete_are_disabled_for_others_with_the_reason(store, content_png, style_png):
    from views.common import job_queue

    job_queue()  # started before the run below, so its start-up check leaves the run alone
    inputs = Inputs.decode(content_png, [style_png])
    run_id = tracking.create_run(store, tracking.DEFAULT_EXPERIMENT, TINY, inputs, source="app", owner=BOB)
    at = page(ALICE, run=run_id)  # bob's queued run (no queue here runs it), seen by alice
    at.switch_page("views/runs.py")
    at.run()
    assert not at.exception
    cancel = next(b for b in at.button if b.label == "Cancel this run")
    reason = f"Only its owner ({BOB}) or an admin can cancel or delete this run; you are signed in as {ALICE}."
    assert cancel.disabled and reason in texts(at)
    assert cancel.help == f"Only its owner ({BOB}) or an admin can cancel this run; you are signed in as {ALICE}."

    at = page(BOB, run=run_id)
    at.switch_page("views/runs.py")
    at.run()
    assert not next(b for b in at.button if b.label == "Cancel this run").disabled
    assert "can cancel or delete this run" not in texts(at)
    at.button(key=f"delete_{run_id}").click().run()  # bob deletes his run
    assert not at.exception
    assert f"was deleted by {BOB}" in texts(at)
    # No queue runs it (it is in no ledger), so nothing ends it yet: it is gone from the history, and
    # soft-deleted by whichever service ends it (the queue tests above cover that).
    assert run_id not in set(tracking.list_runs(store)["run_id"])
    assert tracking.deletion_of(tracking.load_run(store, run_id).tags).by == BOB


def test_the_admin_may_delete_anyones_finished_run_and_its_link_says_so(store, content_png, style_png):
    run_id = finished_run(store, content_png, style_png, BOB, name="bob's finished run")
    at = page(ADMIN, run=run_id)
    at.switch_page("views/runs.py")
    at.run()
    assert not at.exception and f"**Signed in** as {ADMIN} (admin)" in texts(at)
    at.button(key=f"delete_{run_id}").click().run()
    assert f"Run `{run_id}` was deleted by {ADMIN} on " in texts(at)
    assert tracking.load_run(store, run_id).lifecycle_deleted
    at = page(BOB, run=run_id)  # the permalink, opened later by anyone
    at.switch_page("views/runs.py")
    at.run()
    assert f"was deleted by {ADMIN}" in texts(at) and "result G" not in texts(at)


def test_the_compare_page_names_a_deleted_run_and_shows_the_others(store, content_png, style_png):
    kept = [finished_run(store, content_png, style_png, ALICE, name=f"kept {i}") for i in range(2)]
    gone = finished_run(store, content_png, style_png, ALICE, name="gone")
    at = page(ALICE, run=gone)
    at.switch_page("views/runs.py")
    at.run()
    at.button(key=f"delete_{gone}").click().run()
    at = page(BOB, runs=",".join([*kept, gone]))
    at.switch_page("views/compare.py")
    at.run()
    assert not at.exception
    assert f"Deleted, so not shown: `{gone}` (gone); showing the others." in texts(at)
    shown = [link.label for link in at.get("page_link")]
    assert any("kept 0" in label for label in shown) and any("kept 1" in label for label in shown)
    assert not any("gone" in label for label in shown)


@pytest.mark.slow
def test_a_run_started_in_the_studio_belongs_to_who_is_signed_in(store, content_png, style_png):
    at = page(ALICE)
    at.run()
    at.file_uploader(key="content").set_value(("c.png", content_png, "image/png"))
    at.file_uploader(key="styles").set_value([("s.png", style_png, "image/png")])
    at.run()
    next(n for n in at.number_input if n.label.startswith("Size")).set_value(32)
    next(n for n in at.number_input if n.label == "Steps").set_value(2)
    next(s for s in at.selectbox if s.label == "Coarse-to-fine levels").set_value(0)
    next(b for b in at.button if b.label == "Run").click().run()
    assert not at.exception
    run_id = at.query_params["run"]
    tags = tracking.load_run(store, run_id).tags
    assert (tags["owner"], tags["mlflow.user"]) == (ALICE, ALICE)
    # let it finish: a worker thread still running at the end of the module would outlive its queue
    wait_for(lambda: tracking.load_run(store, run_id).status in tracking.TERMINAL, what="the run to end")


def test_the_sweep_page_disables_cancel_for_others_and_says_when_a_sweep_was_deleted(store):
    params = TINY.to_params() | {"style_images": "1", "sweep.axes": "seed", "sweep.size": "2",
                                 "sweep.values.seed": '["1", "2"]'}  # fmt: skip
    parent = tracking.create_parent_run(store, name="bob's sweep", params=params, source="sweep",
                                        tags={"sweep.role": "parent"}, size=2, owner=BOB)  # fmt: skip
    at = page(ALICE, run=parent)
    at.switch_page("views/sweep.py")
    at.run()
    assert not at.exception
    assert next(b for b in at.button if b.label == "Cancel the sweep").disabled
    assert f"Only its owner ({BOB}) or an admin can cancel or delete this run" in texts(at)
    tracking.mark_deleted(store, [parent], BOB)
    at.run()
    assert f"Run `{parent}` was deleted by {BOB}" in texts(at)
    assert not any(b.label == "Cancel the sweep" for b in at.button)


def test_several_providers_get_a_sign_in_button_each(store):
    at = page(None)
    provider = {k: AUTH_SECRETS["auth"][k] for k in ("client_id", "client_secret", "server_metadata_url")}
    at.secrets = {"auth": {"redirect_uri": AUTH_SECRETS["auth"]["redirect_uri"], "cookie_secret": "x" * 32,
                           "google": provider, "microsoft": provider}}  # fmt: skip
    at.run()
    assert not at.exception
    assert [b.label for b in at.button] == ["Sign in with Google", "Sign in with Microsoft"]


def test_a_sign_in_that_is_not_set_up_right_says_so_without_details(store):
    # st.login validates the secrets Streamlit itself loaded, which AppTest's `secrets` do not reach: here it
    # finds no [auth], as a server would whose [auth] lacks a key. The visitor gets a line, the log the why.
    at = page(None).run()
    at.button(key="sign_in_default").click().run()
    assert not at.exception
    errors = "\n".join(e.value for e in at.error)
    assert "Sign-in is not set up correctly on this server" in errors
    assert "secrets.toml" not in errors
