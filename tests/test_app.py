"""Page logic with Streamlit's AppTest, against a real MLflow store and the real job queue.

The job queue and the tracking URI are `st.cache_resource` singletons shared by every AppTest in this
process, so all tests here use one store, set before the first page runs.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import sample_image
from streamlit.testing.v1 import AppTest

from engine import jobs, tracking
from engine.core import images
from engine.core.config import TransferConfig
from engine.core.samples import sample_path

ROOT = Path(__file__).resolve().parents[1]
CONTENT_BYTES = (sample_path("tubingen.jpg")).read_bytes()
STYLE_BYTES = (sample_path("starry_night.jpg")).read_bytes()
TINY = TransferConfig(size=32, steps=3, coarse_levels=0)


@pytest.fixture(scope="module")
def store(app_store) -> str:
    return app_store


@pytest.fixture(scope="module")
def finished_run(store):
    content, style = images.load_image(CONTENT_BYTES), images.load_image(STYLE_BYTES)
    tracker = jobs.tracked_transfer(content, [style], TINY, tracking_uri=store, source="cli", snapshot_every=1)
    return tracker.run_id


def app(**query) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    for key, value in query.items():
        at.query_params[key] = value
    return at


def tiny_studio() -> AppTest:
    """The studio with both images uploaded and a tiny size: 32 px, 2 steps, one scale."""
    at = app().run()
    at.file_uploader(key="content").set_value(("c.jpg", CONTENT_BYTES, "image/jpeg"))
    at.file_uploader(key="styles").set_value([("s.jpg", STYLE_BYTES, "image/jpeg")])
    at.run()
    next(n for n in at.number_input if n.label.startswith("Size")).set_value(32)
    next(n for n in at.number_input if n.label == "Steps").set_value(2)
    next(s for s in at.selectbox if s.label == "Coarse-to-fine levels").set_value(0)
    return at


def image_captions(at: AppTest) -> list[str]:
    """The captions of the input thumbnails (not of the live previews, which come and go with the worker)."""
    captions = [img.caption for image in at.get("image") for img in image.proto.imgs]
    return [c for c in captions if c.startswith(("content, ", "style "))]


def texts(at: AppTest) -> str:
    parts = [e.value for kind in ("markdown", "caption", "info", "error", "warning", "title", "subheader")
             for e in getattr(at, kind)]  # fmt: skip
    return "\n".join(str(p) for p in parts)


def test_studio_asks_for_images_first(store):
    at = app().run()
    assert not at.exception
    assert "Upload a content image and at least one style image" in texts(at)
    assert "Queue" in texts(at) and "local SQLite" in texts(at)  # the shared sidebar
    assert store not in texts(at)  # no server path for visitors (issue 17)


def test_studio_shows_settings_and_an_estimate_once_images_are_uploaded(store):
    at = app().run()
    at.file_uploader(key="content").set_value(("c.jpg", CONTENT_BYTES, "image/jpeg"))
    at.file_uploader(key="styles").set_value([("s.jpg", STYLE_BYTES, "image/jpeg")])
    at.run()
    assert not at.exception
    assert "Estimate on CPU" in texts(at)
    assert [s.label for s in at.slider if s.label.startswith("λ ")] == [f"λ relu{i}_1" for i in range(1, 6)]
    size = next(n for n in at.number_input if n.label.startswith("Size"))
    size.set_value(4096).run()
    assert "By tiles, with the whole image's exact gradient:" in texts(at) and "4096×3072 in tiles of" in texts(at)
    at.selectbox(key="tile_size").set_value("never").run()
    assert "or let the run go by tiles" in texts(at)
    assert next(b for b in at.button if b.label == "Run").disabled


def test_the_sample_images_fill_the_studio_and_an_upload_replaces_them(store):
    at = app().run()
    at.toggle(key="use_samples").set_value(True).run()
    assert not at.exception
    assert at.selectbox(key="sample_content").value.startswith("Tübingen")
    assert at.multiselect(key="sample_styles").value == ["The Starry Night (van Gogh)"]
    assert image_captions(at) == ["content, 512×384", "style 1, 512×320"]  # the shipped samples' sizes
    at.multiselect(key="sample_styles").set_value(["The Scream (Munch)", "The Shipwreck (Turner)"]).run()
    assert image_captions(at) == ["content, 512×384", "style 1, 402×512", "style 2, 512×353"]
    assert "Blend weight of style 2" in [n.label for n in at.number_input]
    scream = images.image_to_png_bytes(sample_image("the_scream.jpg", 64))
    at.file_uploader(key="content").set_value(("c.png", scream, "image/png")).run()
    assert image_captions(at)[0] == "content, 50×64"  # the upload, not the sample


def test_a_corrupt_upload_gets_a_clear_message_naming_the_image(store):
    at = app().run()
    at.file_uploader(key="content").set_value(("c.jpg", CONTENT_BYTES[:5000], "image/jpeg"))
    at.file_uploader(key="styles").set_value([("s.jpg", b"not an image at all", "image/jpeg")])
    at.run()
    assert not at.exception
    assert "content image" in "\n".join(e.value for e in at.error)


def test_run_button_submits_a_tracked_run_and_opens_its_page(store):
    at = tiny_studio()
    before = set(tracking.list_runs(store)["run_id"])
    next(b for b in at.button if b.label == "Run").click().run()
    assert not at.exception
    new = set(tracking.list_runs(store)["run_id"]) - before
    assert len(new) == 1
    run_id = new.pop()
    assert at.query_params["run"] == run_id
    deadline = time.time() + 120
    while tracking.load_run(store, run_id).status != "FINISHED" and time.time() < deadline:
        time.sleep(0.5)
    run = tracking.load_run(store, run_id)
    assert run.status == "FINISHED" and run.tags["source"] == "app"
    assert run.params["size"] == "32" and run.params["steps"] == "2"


def test_run_page_shows_result_settings_costs_and_clone_link(store, finished_run):
    at = app(run=finished_run)
    at.switch_page("views/runs.py").run()
    assert not at.exception
    page = texts(at)
    assert finished_run in page and "open in the MLflow UI" in page
    assert "Final costs" in page and "Evolution of G" in page and "Settings" in page
    settings = at.dataframe[-1].value
    assert dict(zip(settings["param"], settings["value"], strict=True))["size"] == "32"
    assert at.select_slider[0].options == ["1", "2", "3"]


def test_history_lists_runs_and_a_bad_permalink_is_explained(store, finished_run):
    at = app()
    at.switch_page("views/runs.py").run()
    assert not at.exception
    assert "Runs" in texts(at) and "32 px" in texts(at)
    bad = app(run="no-such-run")
    bad.switch_page("views/runs.py").run()
    assert not bad.exception
    assert "'no-such-run' is not a run id" in "\n".join(e.value for e in bad.error)


def test_a_failed_run_shows_why(store):
    content, style = images.load_image(CONTENT_BYTES), images.load_image(STYLE_BYTES)
    tracker = tracking.RunRecorder.create(store, tracking.DEFAULT_EXPERIMENT, TINY, content, [style], source="app")
    tracker.fail("Out of GPU memory at 2048 px on cuda:0. Choose a smaller size and run again.")
    at = app(run=tracker.run_id)
    at.switch_page("views/runs.py").run()
    assert not at.exception
    assert "Out of GPU memory at 2048 px" in "\n".join(e.value for e in at.error)


def test_clone_link_prefills_the_studio_with_the_runs_settings_and_inputs(store, finished_run):
    at = app(clone=finished_run).run()
    assert not at.exception
    assert f"Settings and inputs of run `{finished_run}`" in texts(at)
    assert next(n for n in at.number_input if n.label.startswith("Size")).value == 32


def test_studio_sweep_submits_a_parent_with_a_child_per_setting_and_opens_its_grid(store):
    at = tiny_studio()
    at.text_input(key="values0").set_value("0, 1")
    at.selectbox(key="axis1").set_value("beta")
    at.text_input(key="values1").set_value("1000, 100000")
    at.run()
    assert "4 runs, about" in texts(at)
    next(b for b in at.button if b.label == "Run sweep").click().run()
    assert not at.exception
    parent_id = at.query_params["run"]
    deadline = time.time() + 120
    while tracking.load_run(store, parent_id).status in ("RUNNING", "SCHEDULED") and time.time() < deadline:
        time.sleep(0.5)
    assert tracking.load_run(store, parent_id).status == "FINISHED"
    children = tracking.list_runs(store, filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    assert sorted(zip(children["params.lambda.relu3_1"], children["params.beta"], strict=True)) == [
        ("0.0", "1000.0"), ("0.0", "100000.0"), ("1.0", "1000.0"), ("1.0", "100000.0")
    ]

    page = app(run=parent_id)
    page.switch_page("views/sweep.py").run()
    assert not page.exception
    captions = [caption for image in page.get("image") for caption in image.captions]
    assert "contact sheet" in captions
    assert "lambda.relu3_1,beta" in texts(page)
