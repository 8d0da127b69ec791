"""End to end in a real browser: `streamlit run app.py` on a free loopback port with a temporary MLflow
store, driven by Debian's Chromium through Playwright (the server and browser fixtures are in conftest.py).

Screenshots land in test-artifacts/screenshots/ (look at them after a run).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from browser_helpers import BROWSER_TEST, set_number, shot, upload_inputs

from engine.core.samples import sample_path

playwright = pytest.importorskip("playwright.sync_api")

ROOT = Path(__file__).resolve().parents[1]

pytestmark = BROWSER_TEST


@pytest.fixture(scope="module")
def server(tmp_path_factory, start_streamlit):
    folder = tmp_path_factory.mktemp("browser-store")
    return start_streamlit(f"sqlite:///{folder}/mlflow.db")


def test_upload_run_watch_progress_and_reopen_the_permalink(server, browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(server)
    upload_inputs(page, sample_path("tubingen.jpg"), [sample_path("starry_night.jpg")])
    page.get_by_text("content, 512×384").wait_for()  # thumbnails, captioned with the decoded size
    page.get_by_text("Estimate on").wait_for()
    set_number(page, "Size (long side, px)", 6000)  # print size: the estimate shows the tiled plan
    plan = page.get_by_text(re.compile(r"6000×4500 in tiles of \d+ px"))
    plan.wait_for()
    plan.scroll_into_view_if_needed()  # the page scrolls inside Streamlit's container: bring the estimate in
    shot(page, "1-studio-print-size")
    set_number(page, "Size (long side, px)", 128)
    set_number(page, "Steps", 60)
    shot(page, "1-studio")

    page.get_by_role("button", name="Run").click()
    page.wait_for_url(re.compile(r"/runs\?run=\w+"))
    run_id = page.url.split("run=")[1]
    page.get_by_text(re.compile(r"step [1-9]\d* of 60")).wait_for()  # live progress
    page.get_by_text(re.compile(r"G at step [1-9]")).wait_for()  # the current G
    page.locator(".vega-embed").first.wait_for()  # live cost curves
    shot(page, "2-progress")
    page.get_by_text("result G").wait_for(timeout=240_000)
    page.get_by_text("Evolution of G").wait_for()
    assert page.get_by_text(run_id).count() >= 1
    shot(page, "3-finished")

    other = browser.new_context(viewport={"width": 1400, "height": 1000})
    again = other.new_page()
    again.goto(f"{server}/runs?run={run_id}")
    again.get_by_text("result G").wait_for(timeout=60_000)
    assert again.get_by_text(run_id).count() >= 1
    assert again.get_by_text("finished", exact=False).count() >= 1
    result_images = again.locator("img[alt='result G'], [data-testid=stImage] img")
    assert result_images.count() >= 3  # content, style, result
    shot(again, "4-permalink")
    other.close()
    context.close()
