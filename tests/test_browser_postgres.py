"""The README's team set-up end to end: `streamlit run app.py` with MLFLOW_TRACKING_URI pointing at a real
`mlflow server` whose backend store is PostgreSQL and whose artifacts are served (`--artifacts-destination`),
driven by Debian's Chromium. A tiny run from the studio finishes, its permalink shows the result in a
fresh browser context, and the run is in the PostgreSQL database and its result in the served artifacts.

Screenshots land in test-artifacts/screenshots/ (postgres-*.png).
"""

from __future__ import annotations

import re

import psycopg
import pytest
from browser_helpers import BROWSER_TEST, set_number, shot, upload_inputs
from mlflow import MlflowClient

from engine.core.samples import sample_path

playwright = pytest.importorskip("playwright.sync_api")

pytestmark = BROWSER_TEST
STEPS = 12


@pytest.fixture(scope="module")
def team(new_pg_database, start_mlflow_server, start_streamlit, tmp_path_factory):
    """(the app's URL, the mlflow server, the PostgreSQL database's URI)."""
    database = new_pg_database()
    server = start_mlflow_server(database)
    folder = tmp_path_factory.mktemp("team-app")
    app = start_streamlit(server.uri, STYLELAB_MLFLOW_UI=server.uri, STYLELAB_QUEUE_DB=str(folder / "queue.db"),
                          STYLELAB_UNSAVED_DIR=str(folder / "unsaved"))  # fmt: skip
    return app, server, database


def test_a_run_from_the_studio_lands_in_postgresql_and_its_permalink_shows_the_result(team, browser):
    app, server, database = team
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(app)
    upload_inputs(page, sample_path("tubingen.jpg"), [sample_path("starry_night.jpg")])
    page.get_by_text("Estimate on").wait_for(timeout=180_000)  # the app's job queue is up (slow on a busy machine)
    set_number(page, "Size (long side, px)", 64)
    set_number(page, "Steps", STEPS)
    page.get_by_role("button", name="Run").click()
    page.wait_for_url(re.compile(r"/runs\?run=\w+"))
    run_id = page.url.split("run=")[1]
    page.get_by_text("result G").wait_for(timeout=240_000)
    shot(page, "postgres-1-finished")
    context.close()

    other = browser.new_context(viewport={"width": 1400, "height": 1000})
    again = other.new_page()
    again.goto(f"{app}/runs?run={run_id}")
    again.get_by_text("result G").wait_for(timeout=60_000)
    assert again.get_by_text(run_id).count() >= 1
    assert again.locator("[data-testid=stImage] img").count() >= 3  # content, style, result
    link = again.get_by_role("link", name="open in the MLflow UI").get_attribute("href")
    assert link.startswith(f"{server.uri}/#/experiments/") and f"/runs/{run_id}?" in link
    shot(again, "postgres-2-permalink")
    other.close()

    run = MlflowClient(server.uri).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["steps"] == str(STEPS)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert len(list(server.artifacts.glob(f"**/{run_id}/artifacts/result.png"))) == 1
    with psycopg.connect(database.replace("postgresql+psycopg://", "postgresql://")) as db:
        status, = db.execute("SELECT status FROM runs WHERE run_uuid = %s", (run_id,)).fetchone()
        steps = db.execute("SELECT COUNT(DISTINCT step) FROM metrics WHERE run_uuid = %s AND key = 'cost/total'",
                           (run_id,)).fetchone()[0]  # fmt: skip
    assert status == "FINISHED" and steps == STEPS
