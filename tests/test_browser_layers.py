"""The layer explorer end to end in a real browser: `streamlit run app.py` against a temporary MLflow store
(fixtures in conftest.py), Chromium opening /layers, uploading C and S, seeing the feature-map grid, then
starting a content-reconstruction strip at a tiny size and watching its labelled strip fill in.

Screenshots land in test-artifacts/screenshots/layers-*.png (look at them after a run).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from browser_helpers import BROWSER_TEST, set_number, shot
from conftest import sample_image

pytest.importorskip("playwright.sync_api")

ROOT = Path(__file__).resolve().parents[1]

pytestmark = BROWSER_TEST


@pytest.fixture(scope="module")
def server(tmp_path_factory, start_streamlit):
    folder = tmp_path_factory.mktemp("browser-layers-store")
    return start_streamlit(f"sqlite:///{folder}/mlflow.db")


@pytest.fixture(scope="module")
def small_inputs(tmp_path_factory):
    """C and S at 96 px, so the page's VGG19 passes stay quick on a CPU."""
    folder = tmp_path_factory.mktemp("layers-inputs")
    paths = []
    for name, source in (("content.png", "tubingen.jpg"), ("style.png", "starry_night.jpg")):
        path = folder / name
        sample_image(source, 96).save(path)
        paths.append(path)
    return paths


def test_layers_page_shows_feature_maps_and_a_reconstruction_strip(server, browser, small_inputs):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(f"{server}/layers")
    page.get_by_text("Upload an image (or pick a recent run)").wait_for()
    uploads = page.locator("input[type=file]")
    uploads.nth(0).set_input_files(str(small_inputs[0]))
    page.get_by_text("Strongest 16 channels of relu3_1").wait_for()  # the server has C: only now S (as upload_inputs)
    uploads.nth(1).set_input_files(str(small_inputs[1]))
    page.get_by_text("that excite ch").wait_for()
    page.get_by_text("J_style[relu1_1] of content against S").wait_for(timeout=120_000)  # slow on a busy CI
    shot(page, "1-activations")

    set_number(page, "Strip size (px)", 32)
    set_number(page, "Steps per layer", 3)
    page.get_by_role("button", name="Content reconstructions").click()
    page.get_by_text("Content reconstructions (32 px, 3 steps)").wait_for()
    for layer in ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"):
        page.get_by_role("link", name=layer, exact=True).wait_for()
    page.get_by_text("· finished").wait_for(timeout=120_000)  # the parent ends once every layer has
    strip = page.get_by_text("relu1_1 | relu2_1 | relu3_1 | relu4_1 | relu5_1")
    for attempt in range(5):  # the page reruns once more when the service has ended the parent
        strip.wait_for()
        try:
            strip.scroll_into_view_if_needed()
            break
        except Exception:
            if attempt == 4:
                raise
            page.wait_for_timeout(500)
    page.wait_for_timeout(500)
    shot(page, "2-strip")
    page.get_by_text("finished", exact=True).nth(4).wait_for()  # each layer's caption
    context.close()
