"""Sign-in end to end: a real OpenID Connect provider (`oidc-provider-mock`, its own server process on a free
loopback port), a real `streamlit run app.py` whose secrets (given with `--secrets.files`, from a temporary
folder: the repo's own .streamlit/ is never written) have an `[auth]` section, and Chromium.

It checks: an anonymous visitor who opens a permalink is asked to sign in and sees nothing of the run;
signing in goes through the provider's form and Streamlit's callback, sets Streamlit's identity cookie
(HttpOnly), and lands on the permalink that was opened (Streamlit's callback itself lands on `/`); a
second user sees the owner's Cancel disabled with the reason, and the run goes on; the owner cancels it,
then deletes it, and its permalink says so.

Screenshots: test-artifacts/screenshots/auth-*.png.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from browser_helpers import BROWSER_TEST, shot
from conftest import free_port, png_bytes

from engine import tracking
from engine.core.config import TransferConfig
from engine.core.samples import sample_path
from engine.jobs import JobQueue, JobSpec

pytest.importorskip("playwright.sync_api")
pytest.importorskip("oidc_provider_mock")
pytest.importorskip("authlib")

ROOT = Path(__file__).resolve().parents[1]
ALICE = {"sub": "alice", "email": "alice@example.com", "name": "Alice"}
BOB = {"sub": "bob", "email": "bob@example.com", "name": "Bob"}
LONG = TransferConfig(size=32, steps=100_000, coarse_levels=0, init="content")  # runs until it is cancelled

pytestmark = BROWSER_TEST


def wait_http(url: str, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited: {proc.stdout.read().decode()[-2000:]}")
        try:
            if urllib.request.urlopen(url, timeout=1).status == 200:
                return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"{what} did not answer at {url}")


def start_app(port: int, secrets: Path, tracking_uri: str, **env: str) -> tuple[subprocess.Popen, str]:
    """A real `streamlit run app.py` with these secrets (`--secrets.files`: the repo's .streamlit/ is left
    alone) on 127.0.0.1:`port`, once it answers; and its URL."""
    environment = os.environ | {"MLFLOW_TRACKING_URI": tracking_uri, "PYTHONPATH": str(ROOT)} | env
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--secrets.files", str(secrets)],
        cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/_stcore/health", proc, "streamlit")
    except BaseException:
        stop(proc)
        raise
    return proc, url


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, 15)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)


@pytest.fixture(scope="module")
def provider() -> Iterator[str]:
    """The OpenID Connect provider, a real server process with two users; its issuer URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "oidc_provider_mock", "--host", "127.0.0.1", "--port", str(port),
         "--user-claims", json.dumps(ALICE), "--user-claims", json.dumps(BOB)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    issuer = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{issuer}/.well-known/openid-configuration", proc, "the OIDC provider")
        yield issuer
    finally:
        stop(proc)


class Served(NamedTuple):
    url: str
    uri: str
    run: str  # bob's run, queued or running until bob cancels it


def streamlit_folder_state() -> dict[str, float]:
    folder = ROOT / ".streamlit"
    return {p.name: p.stat().st_mtime for p in folder.iterdir()} if folder.is_dir() else {}


@pytest.fixture(scope="module")
def served(provider, tmp_path_factory, new_store) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("auth-app")
    uri = new_store(folder / "store")
    queue = JobQueue(uri, devices=[], backend="thread", fallback_dir=folder / "unsaved")  # queues, runs nothing
    try:
        run_id = queue.submit(JobSpec(config=LONG, content=png_bytes(sample_path("tubingen.jpg"), 32),
                                      styles=(png_bytes(sample_path("starry_night.jpg"), 32),), run_name="bob's run",
                                      owner=BOB["email"]))  # fmt: skip
    finally:
        queue.shutdown(wait=True)
    port = free_port()
    secrets = folder / "secrets.toml"
    secrets.write_text(
        "[auth]\n"
        f'redirect_uri = "http://127.0.0.1:{port}/oauth2callback"\n'
        'cookie_secret = "a-long-random-cookie-secret-for-tests-only"\n'
        'client_id = "stylelab"\n'
        'client_secret = "test-client-secret"\n'
        f'server_metadata_url = "{provider}/.well-known/openid-configuration"\n'
        "\n[stylelab]\n"
        'admins = ["boss@example.com"]\n'
    )
    before = streamlit_folder_state()
    proc, url = start_app(port, secrets, uri, STYLELAB_WORKER_THREADS="1", STYLELAB_UNSAVED_DIR=str(folder / "unsaved"))
    try:
        yield Served(url, uri, run_id)
    finally:
        stop(proc)
    assert streamlit_folder_state() == before  # the repo's .streamlit/ was not written


def has_cookie(page, name: str, present: bool = True, timeout_s: float = 10) -> bool:
    """Whether the page's context has (or, `present=False`, no longer has) the cookie within the timeout."""
    deadline = time.time() + timeout_s
    while (name in {c["name"] for c in page.context.cookies()}) != present and time.time() < deadline:
        page.wait_for_timeout(200)
    return (name in {c["name"] for c in page.context.cookies()}) == present


def sign_in(page, provider: str, user: dict[str, str]) -> None:
    """From the gate: Streamlit's login, the provider's form, then Streamlit's callback."""
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{provider}/oauth2/authorize**", timeout=30_000)
    page.get_by_placeholder("sub").fill(user["sub"])
    page.get_by_role("button", name="Authorize", exact=True).click()


def test_an_anonymous_visitor_is_asked_to_sign_in_and_sees_nothing_of_the_run(browser, served):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{served.url}/runs?run={served.run}")
    page.get_by_text("Sign in to stylelab").wait_for(timeout=60_000)
    body = page.inner_text("body")
    assert f"/runs?run={served.run}" in body  # it says where it brings the visitor back to
    assert "bob's run" not in body and "Cancel this run" not in body and "Queue" not in body
    assert page.get_by_role("link", name="Runs").count() == 0  # no navigation either
    assert has_cookie(page, "stylelab_next")  # set by the gate's script: where to come back to
    shot(page, "auth-gate")
    context.close()


def test_signing_in_lands_on_the_permalink_and_another_users_cancel_is_refused(browser, served, provider):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{served.url}/runs?run={served.run}")
    sign_in(page, provider, ALICE)
    page.wait_for_url(re.compile(rf"/runs\?run={served.run}$"), timeout=60_000)  # not `/`, where the callback lands
    page.get_by_text("bob's run").first.wait_for(timeout=60_000)
    reason = f"Only its owner ({BOB['email']}) or an admin can cancel or delete this run; you are signed in as " + (
        f"{ALICE['email']}."
    )
    page.get_by_text(reason).wait_for(timeout=60_000)
    cancel = page.get_by_role("button", name="Cancel this run")
    assert cancel.is_disabled()
    assert page.get_by_test_id("stSidebar").get_by_text(f"Signed in as {ALICE['email']}").count() == 1
    cookies = {c["name"]: c for c in context.cookies()}
    assert cookies["_streamlit_user"]["httpOnly"]  # Streamlit's signed identity cookie
    assert has_cookie(page, "stylelab_next", present=False)  # used once, then forgotten
    shot(page, "auth-alice-refused")
    cancel.click(force=True)  # a disabled button does nothing, even clicked
    page.wait_for_timeout(1500)
    assert tracking.load_run(served.uri, served.run).status in tracking.ACTIVE
    context.close()


def test_the_owner_signs_in_and_cancels_the_run(browser, served, provider):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{served.url}/runs?run={served.run}")
    sign_in(page, provider, BOB)
    page.wait_for_url(re.compile(rf"/runs\?run={served.run}$"), timeout=60_000)
    cancel = page.get_by_role("button", name="Cancel this run")
    cancel.wait_for(timeout=60_000)
    assert cancel.is_enabled()
    cancel.click()
    deadline = time.time() + 90
    while tracking.load_run(served.uri, served.run).status != "KILLED" and time.time() < deadline:
        time.sleep(0.5)
    assert tracking.load_run(served.uri, served.run).status == "KILLED"
    page.get_by_text("This run was cancelled").wait_for(timeout=60_000)
    page.get_by_role("button", name="Cancel this run").wait_for(state="detached", timeout=30_000)  # page settled
    shot(page, "auth-bob-cancelled")

    page.get_by_role("button", name="Delete").click()  # the popover, then its confirmation
    page.get_by_role("button", name="Delete it").click()
    page.get_by_text(f"was deleted by {BOB['email']}").wait_for(timeout=60_000)
    assert tracking.load_run(served.uri, served.run).lifecycle_deleted
    shot(page, "auth-bob-deleted")
    context.close()


def test_a_secrets_file_that_does_not_parse_serves_nothing(browser, tmp_path, new_store):
    """Fail closed: a typo in a secrets file meant to turn sign-in on must not open the app to anyone."""
    secrets = tmp_path / "secrets.toml"
    secrets.write_text('[auth\nredirect_uri = "http://127.0.0.1/oauth2callback"\n')  # the section's ] is missing
    proc, url = start_app(free_port(), secrets, new_store(tmp_path / "store"))
    try:
        page = browser.new_context().new_page()
        page.goto(f"{url}/studio")
        page.get_by_text("secrets file cannot be read").wait_for(timeout=60_000)
        body = page.inner_text("body")
        assert "Upload a content image" not in body and "Queue" not in body
        assert str(secrets) not in body  # the path is for the log, not the visitor
        page.context.close()
    finally:
        stop(proc)
