"""The studio's live preview in a real browser: a real `streamlit run app.py` (its default process backend)
and Debian's Chromium. A λ slider moved in the studio re-renders the preview without pressing Run, while
a full run started earlier goes on in the same queue and finishes.

Screenshots: test-artifacts/screenshots/preview-*.png.
"""

from __future__ import annotations

import re
import time

import pytest
from browser_helpers import BROWSER_TEST, set_number, shot
from mlflow import MlflowClient

playwright = pytest.importorskip("playwright.sync_api")

pytestmark = BROWSER_TEST


def _studio_with_samples(page, server: str, size: int, steps: int) -> None:
    page.goto(f"{server}/studio")
    page.get_by_text("Upload a content image").wait_for()  # the page is drawn and its session connected
    switch = page.get_by_role("switch", name="Try the sample images")
    for _ in range(5):  # a click while the page is still connecting can be lost: click until it is on
        page.get_by_text("Try the sample images", exact=True).click()
        deadline = time.monotonic() + 10
        while not switch.is_checked() and time.monotonic() < deadline:
            page.wait_for_timeout(250)
        if switch.is_checked():
            break
    page.get_by_text("content, 512×384").wait_for()
    set_number(page, "Size (long side, px)", size)
    set_number(page, "Steps", steps)


def _until(condition, timeout_s: float = 600.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.5)


DONE_CAPTION = r" \(\d+\.\d s\)"  # a finished preview's caption ends with its seconds; a first look's with "…)"


def _preview_now(page):
    return page.locator("[data-testid=stImage]").filter(has_text="now:")


def test_moving_a_lambda_slider_rerenders_the_preview_while_an_earlier_run_finishes(tmp_path, start_streamlit, browser):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    server = start_streamlit(uri)
    context = browser.new_context(viewport={"width": 1400, "height": 2000})
    runner = context.new_page()
    runner.set_default_timeout(300_000)  # a cold worker process on a busy 2-core machine
    _studio_with_samples(runner, server, 128, 150)  # about 15 s on a quiet machine, minutes on a loaded one
    runner.get_by_role("button", name="Run").click()
    shot(runner, "preview-0-studio")
    runner.wait_for_url(re.compile(r"/runs\?run=\w+"))
    run_id = runner.url.split("run=")[1]
    client = MlflowClient(uri)
    _until(lambda: client.get_run(run_id).info.status in ("RUNNING", "FINISHED"))  # under way (or already done)

    studio = context.new_page()
    # The first preview of a cold worker, and one that must fit a quarter of a running full run's time,
    # take minutes on a loaded 2-core machine (a few seconds on a quiet one)
    studio.set_default_timeout(600_000)
    _studio_with_samples(studio, server, 64, 150)
    studio.get_by_text("Live preview", exact=True).click()  # off by default
    first = _preview_now(studio)
    # "size 64" when the 128-px preview of the defaults was done before the size was set (the runner's
    # page rendered those same settings already: a preview is not rendered twice), else "current settings"
    first.get_by_text(re.compile(rf"(current settings|size 64){DONE_CAPTION}")).wait_for()
    first_src = first.locator("img").get_attribute("src")
    first.scroll_into_view_if_needed()
    shot(studio, "preview-1-first")

    slider = studio.get_by_role("slider", name="λ relu3_1")
    slider.focus()
    for _ in range(30):
        slider.press("ArrowRight")  # 0.2 → 0.5, one rerun per key: each supersedes the last preview
    changed = _preview_now(studio)
    changed.get_by_text(re.compile(rf"λ relu3_1 0\.[3-9]{DONE_CAPTION}")).wait_for()
    assert changed.locator("img").get_attribute("src") != first_src
    assert studio.locator("[data-testid=stImage]").filter(has_text="1 before").count() == 1  # the earlier stays
    assert studio.locator("[data-testid=stException]").count() == 0
    changed.scroll_into_view_if_needed()
    shot(studio, "preview-2-after-slider")

    _until(lambda: client.get_run(run_id).info.status == "FINISHED")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["steps_done"] == 150
    assert run.data.params["params_version"] == "2" and "beta_effective" in run.data.params
    experiment = run.info.experiment_id
    assert [r.info.run_id for r in MlflowClient(uri).search_runs([experiment])] == [run_id]  # previews untracked
    runner.reload()
    runner.get_by_text("result G").wait_for()
    shot(runner, "preview-3-run-finished")
    context.close()
