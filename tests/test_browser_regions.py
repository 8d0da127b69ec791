"""Regions in a real browser: upload a mask in the studio, see the regions over the content, give each a
style, run, and find the mask beside the result on the run's page and the compare page."""

from __future__ import annotations

import re

import pytest
from browser_helpers import BROWSER_TEST, set_number, shot, upload_inputs
from mlflow import MlflowClient
from PIL import Image, ImageDraw

from engine.core.config import TransferConfig
from engine.core.samples import sample_path
from engine.jobs import tracked_transfer

playwright = pytest.importorskip("playwright.sync_api")

pytestmark = BROWSER_TEST


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('regions-store')}/mlflow.db"


@pytest.fixture(scope="module")
def server(store, start_streamlit):
    return start_streamlit(store)


def open_regions(browser, server: str, size: int, steps: int, height: int):
    """A new page of the studio with Tübingen and two styles (The Starry Night, The Scream) at `size` px and
    `steps` iterations, its Regions expander open: (context, page)."""
    context = browser.new_context(viewport={"width": 1400, "height": height})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(server)
    upload_inputs(page, sample_path("tubingen.jpg"), [sample_path("starry_night.jpg"), sample_path("the_scream.jpg")])
    set_number(page, "Size (long side, px)", size)
    set_number(page, "Steps", steps)
    page.get_by_text("Regions: give parts of the content their own styles").click()
    return context, page


def test_upload_a_mask_give_each_region_a_style_run_and_compare(server, store, browser, tmp_path):
    mask_path = tmp_path / "mask.png"
    mask = Image.new("RGB", (512, 384), (255, 0, 0))  # the sky red, the town and river blue
    ImageDraw.Draw(mask).rectangle([0, 200, 512, 384], fill=(0, 0, 255))
    mask.save(mask_path)

    context, page = open_regions(browser, server, size=96, steps=20, height=1000)
    page.get_by_text("No mask: the whole image takes the style").wait_for()
    page.locator("[data-testid=stExpander] input[type=file]").set_input_files(str(mask_path))
    overlay = page.get_by_text(re.compile(r"The regions over the content image: red #ff0000, blue #0000ff"))
    overlay.wait_for()
    assert page.get_by_text("#ff0000, 48%").count() == 0  # 200 of 384 rows: 52 % red
    page.get_by_text("#ff0000, 52%").wait_for()
    overlay.scroll_into_view_if_needed()
    shot(page, "regions-1-studio")

    page.get_by_role("button", name="Run").click()
    page.wait_for_url(re.compile(r"/runs\?run=\w+"))
    run_id = page.url.split("run=")[1]
    page.get_by_text("result G").wait_for(timeout=240_000)
    page.get_by_text("mask: red (#ff0000): style 1 · blue (#0000ff): style 2").wait_for()
    shot(page, "regions-2-finished")

    run = MlflowClient(store).get_run(run_id)
    assert run.data.params["region.red.styles"] == "1" and run.data.params["region.blue.styles"] == "2"
    assert {"cost/style/red/relu1_1", "cost/style/blue/relu5_1"} <= set(run.data.metrics)
    assert "inputs/mask.png" in [a.path for a in MlflowClient(store).list_artifacts(run_id, "inputs")]

    # Beside the same content without a mask, on the compare page: the masked run shows its mask.
    plain = tracked_transfer(sample_path("tubingen.jpg"), [sample_path("starry_night.jpg")],
                             TransferConfig(size=64, steps=3), tracking_uri=store, quality=False)  # fmt: skip
    page.goto(f"{server}/compare?runs={run_id},{plain.run_id}")
    page.locator(f"img[alt='mask of run {run_id}']").wait_for()
    assert page.locator(f"img[alt='mask of run {plain.run_id}']").count() == 0
    shot(page, "regions-3-compare")
    context.close()


def test_paint_a_region_over_the_content_and_run_it(server, store, browser):
    context, page = open_regions(browser, server, size=64, steps=5, height=1200)
    page.get_by_text("painting over the content").click()
    page.get_by_text("Paint a region over the content image").wait_for()
    canvas = page.locator("canvas.upper-canvas").first  # Fabric.js's event layer, over the content
    overlay = page.get_by_text(re.compile(r"The regions over the content image: white #ffffff, red #ff0000"))
    for _ in range(3):  # the component sets up its canvas after it shows it: a stroke before that is lost
        canvas.scroll_into_view_if_needed()
        box = canvas.bounding_box()
        page.mouse.move(box["x"] + 20, box["y"] + 40)  # one red brush stroke, 40 px wide, across the sky
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] - 20, box["y"] + 40, steps=12)
        page.mouse.up()
        try:
            overlay.wait_for(timeout=15_000)
            break
        except playwright.TimeoutError:
            continue
    overlay.wait_for()
    page.get_by_text(re.compile(r"#ff0000, \d+%")).wait_for()
    overlay.scroll_into_view_if_needed()
    shot(page, "regions-4-painted")

    page.get_by_role("button", name="Run").click()
    page.wait_for_url(re.compile(r"/runs\?run=\w+"))
    page.get_by_text("result G").wait_for(timeout=240_000)
    page.get_by_text(re.compile(r"mask: white \(#ffffff\): style 1 · red \(#ff0000\): style 2")).wait_for()
    context.close()
