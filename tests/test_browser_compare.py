"""The compare page end to end in a real browser: two tiny finished runs in a temporary MLflow store, the
app served by `streamlit run app.py` against it (fixtures in conftest.py), Chromium opening the Runs page's
compare link and the `/compare?runs=a,b` permalink.

Screenshots land in test-artifacts/screenshots/compare-*.png (look at them after a run).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

import pytest
from browser_helpers import BROWSER_TEST, SCREENSHOTS, shot

from engine import jobs
from engine.core import images
from engine.core.config import TransferConfig
from engine.core.samples import sample_path

pytest.importorskip("playwright.sync_api")

ROOT = Path(__file__).resolve().parents[1]
TINY = TransferConfig(size=64, steps=4, coarse_levels=0, init="content")  # from C: results that look like something

pytestmark = BROWSER_TEST


class Served(NamedTuple):
    ids: list[str]  # two finished runs
    url: str  # the app, serving their store
    uri: str  # the store


@pytest.fixture(scope="module")
def runs_and_server(tmp_path_factory, start_streamlit):
    """Two finished runs that differ in β and λ[relu3_1], then the app on the same store."""
    folder = tmp_path_factory.mktemp("browser-compare-store")
    uri = f"sqlite:///{folder}/mlflow.db"
    content = images.load_image((sample_path("tubingen.jpg")).read_bytes())
    style = images.load_image((sample_path("starry_night.jpg")).read_bytes())
    configs = {"gatys": TINY, "more relu3_1": TINY.replace(beta=1e6, style_layers={**TINY.lambdas, "relu3_1": 1.0})}
    ids = []
    for name, config in configs.items():
        tracker = jobs.tracked_transfer(content, [style], config, tracking_uri=uri, run_name=name)
        ids.append(tracker.run_id)
    return Served(ids, start_streamlit(uri), uri)


def loaded(page, selector: str) -> int:
    """How many images matching `selector` have finished loading with real pixels."""
    return page.eval_on_selector_all(selector, "els => els.filter(e => e.complete && e.naturalWidth > 0).length")


def new_page(browser, server: str, height: int = 1000):
    """A fresh browser context whose first stop is the app's root, so the server has run app.py (its
    st.navigation) before any deep link: see `test_a_permalink_opened_first_after_a_start_runs_inside_the_app`."""
    context = browser.new_context(viewport={"width": 1400, "height": height})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(server)
    page.get_by_text("Queue").first.wait_for()  # the shared sidebar: app.py ran
    return context, page


def check_compare_page(page, ids: list[str]) -> None:
    page.get_by_role("heading", name="Compare runs").wait_for()
    page.get_by_role("heading", name="Settings that differ").wait_for()
    page.get_by_role("heading", name="Final costs per layer").wait_for()
    page.wait_for_function("document.querySelectorAll('.vega-embed canvas, .vega-embed svg').length >= 9")
    results = "img[alt^='result of run']"
    page.wait_for_function(f'document.querySelectorAll("{results}").length >= 2')
    assert page.locator(results).count() == 2
    page.locator("img[alt='difference heat-map']").wait_for()
    page.locator("img[alt='swipe A/B']").wait_for()
    page.wait_for_function(
        "[...document.querySelectorAll(\"img[alt^='result of run'], img[alt='difference heat-map'], "
        "img[alt='swipe A/B']\")].every(e => e.complete && e.naturalWidth > 0)"
    )
    assert loaded(page, results) == 2
    table = page.locator("[data-testid=stDataFrame]").first
    table.wait_for()
    assert table.is_visible()
    assert page.get_by_text("Mean difference").is_visible()
    assert page.get_by_role("slider").count() == 1  # the swipe
    for run_id in ids:
        assert page.get_by_text(run_id[:8]).count() >= 1
    assert page.locator(".vega-embed").count() >= 9  # 8 cost curves, the grouped bars (+ quality scatter)
    assert page.locator("[data-testid=stException]").count() == 0


def test_runs_page_opens_the_compare_page_for_the_ticked_runs(runs_and_server, browser):
    ids, server, _ = runs_and_server
    context, page = new_page(browser, server)
    page.goto(f"{server}/runs")
    boxes = page.locator("[data-testid=stCheckbox]").filter(has_text="compare")
    boxes.first.wait_for()
    assert boxes.count() == 2
    boxes.nth(0).click()
    boxes.nth(1).click()
    link = page.get_by_role("link", name="Compare 2 runs")
    link.wait_for()
    shot(page, "1-runs")
    link.click()
    page.wait_for_url(re.compile(r"/compare\?runs=\w+"))
    assert sorted(re.search(r"runs=([^&]+)", page.url)[1].replace("%2C", ",").split(",")) == sorted(ids)
    check_compare_page(page, ids)
    context.close()


def test_compare_permalink_shows_images_differing_settings_and_charts(runs_and_server, browser):
    ids, server, _ = runs_and_server
    context, page = new_page(browser, server, height=3400)  # tall: Streamlit scrolls inside its own container
    page.goto(f"{server}/compare?runs={','.join(ids)}")
    check_compare_page(page, ids)
    shot(page, "2-permalink")

    slider = page.get_by_role("slider")
    slider.focus()
    for _ in range(3):
        slider.press("ArrowLeft")
    page.wait_for_function("document.querySelector('input[type=range][aria-label=Swipe]').value === '47'")
    page.wait_for_timeout(1500)  # the fragment reruns and swaps the swipe image
    assert page.locator("[data-testid=stException]").count() == 0
    page.locator("img[alt='swipe A/B']").scroll_into_view_if_needed()
    page.screenshot(path=str(SCREENSHOTS / "compare-3-swipe.png"))

    bad = context.new_page()
    bad.goto(f"{server}/compare?runs={ids[0]},no-such-run,{ids[1]}")
    bad.get_by_text("no-such-run").first.wait_for(timeout=60_000)
    bad.get_by_role("heading", name="Settings that differ").wait_for(timeout=60_000)
    bad.locator("img[alt^='result of run']").nth(1).wait_for(timeout=60_000)
    assert bad.locator("img[alt^='result of run']").count() == 2
    shot(bad, "4-unknown-id")
    context.close()


def test_a_permalink_opened_first_after_a_start_runs_inside_the_app(
    # Streamlit runs a folder named pages/ beside app.py as old-style pages for deep links opened before
    # anyone visits the root; the views live in views/ so a first visitor still gets app.py's layout.
    runs_and_server, browser, start_streamlit):
    ids = runs_and_server.ids
    fresh = start_streamlit(runs_and_server.uri)  # a server nobody has visited yet
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(f"{fresh}/compare?runs={','.join(ids)}")
    page.get_by_role("heading", name="Settings that differ").wait_for()
    shot(page, "0-first-visitor")
    try:
        assert page.get_by_text("Queue").count() >= 1, "the shared sidebar (app.py) is missing"
    finally:
        context.close()
