"""The layer explorer's engine (engine/explore.py): feature maps and Grams equal the engine's own, channels and
patches are ordered by strength, the reconstruction configs carry the right params, and a submitted strip
becomes finished MLflow runs with source=explorer. Tiny images and steps: this runs on a 2-core CPU."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import jobs, tracking
from engine.core import images
from engine.core.config import GATYS_STYLE_LAYERS
from engine.core.costs import normalised_gram
from engine.core.errors import InputError
from engine.core.samples import sample_path
from engine.core.vgg import VGGFeatures, layer_channels
from engine.jobs import JobQueue
from engine.studies import explore

ROOT = Path(__file__).resolve().parents[1]
CONTENT_BYTES = (sample_path("tubingen.jpg")).read_bytes()
STYLE_BYTES = (sample_path("starry_night.jpg")).read_bytes()


@pytest.fixture(scope="module")
def tiny():
    return images.resize_long_side(images.load_image(CONTENT_BYTES), 48)


def test_activations_and_strengths_equal_the_engines_vgg(tiny):
    x = images.image_to_tensor(tiny)
    own = VGGFeatures(["relu2_1"])(x)["relu2_1"][0]
    assert torch.allclose(explore.activations(tiny, "relu2_1"), own)
    strengths = explore.channel_strengths(tiny, "relu2_1")
    assert strengths.shape == (layer_channels("relu2_1"),)
    assert torch.allclose(strengths, own.mean(dim=(1, 2)))


def test_top_channels_are_sorted_by_strength(tiny):
    strengths = explore.channel_strengths(tiny, "relu3_1")
    top = explore.top_channels(tiny, "relu3_1", 8)
    assert len(top) == 8
    values = [float(strengths[c]) for c in top]
    assert values == sorted(values, reverse=True)
    assert values[0] == pytest.approx(float(strengths.max()))


def test_feature_map_grid_is_a_labelled_grid(tiny):
    grid = explore.feature_map_grid(tiny, "relu1_1", [0, 5, 7], tile=32, columns=2)
    assert grid.mode == "RGB" and grid.width > 2 * 32 and grid.height > 2 * 32
    with pytest.raises(InputError):
        explore.feature_map_grid(tiny, "relu1_1", [64])


def test_top_patch_scores_at_least_every_other_patch(tiny):
    acts = explore.activations(tiny, "relu2_1")
    channel = explore.top_channels(tiny, "relu2_1", 1)[0]
    found = explore.patches(tiny, "relu2_1", channel, k=4)
    assert [p.score for p in found] == sorted((p.score for p in found), reverse=True)
    assert found[0].score == pytest.approx(float(acts[channel].max()))
    side = explore.patch_size("relu2_1", tiny.size)
    assert side == 8 and all(p.image.size == (side, side) for p in found)
    assert all(p.box[0] >= 0 and p.box[2] <= tiny.width and p.box[3] <= tiny.height for p in found)
    assert len(explore.top_patches(tiny, "relu2_1", channel, 3)) == 3


def test_gram_heatmap_equals_normalised_gram_and_is_downsampled(tiny):
    own = normalised_gram(VGGFeatures(["relu1_1"])(images.image_to_tensor(tiny))["relu1_1"])[0].numpy()
    img, matrix = explore.gram_heatmap(tiny, "relu1_1", size=None)
    np.testing.assert_allclose(matrix, own, rtol=1e-5)
    assert img.size == (256, 256)
    big = np.arange(512 * 512, dtype=float).reshape(512, 512)
    small = explore.block_average(big)
    assert small.shape == (128, 128)
    assert small[0, 0] == pytest.approx(big[:4, :4].mean())
    _, diff, cost = explore.gram_difference(matrix, matrix * 0.5)
    np.testing.assert_allclose(diff, matrix * 0.5, rtol=1e-6)
    assert cost == pytest.approx(float(((matrix * 0.5) ** 2).sum() / (2 * 64) ** 2), rel=1e-6)


def test_reconstruction_configs_have_the_right_params():
    content = explore.content_reconstructions(96, 100)
    assert [label for label, _ in content] == list(GATYS_STYLE_LAYERS)
    for label, config in content:
        p = config.to_params()
        assert (p["alpha"], p["beta"], p["content_layer"], p["style_layers"]) == ("1.0", "0.0", label, "none")
        assert (p["init"], p["seed"], p["coarse_levels"], p["size"], p["steps"]) == ("noise", "0", "0", "96", "100")
    style = explore.style_reconstructions(64, 10)
    assert [label for label, _ in style] == ["relu1_1", "+relu2_1", "+relu3_1", "+relu4_1", "+relu5_1"]
    for n, (_, config) in enumerate(style, start=1):
        p = config.to_params()
        assert p["alpha"] == "0.0"
        assert {k for k in p if k.startswith("lambda.")} == {f"lambda.{layer}" for layer in GATYS_STYLE_LAYERS[:n]}
        assert all(float(p[f"lambda.{layer}"]) == pytest.approx(1 / n) for layer in GATYS_STYLE_LAYERS[:n])
    single = explore.single_layer_styles(64, 10)
    for label, config in single:
        p = config.to_params()
        assert p["alpha"] == "0.0" and p[f"lambda.{label}"] == "1.0"
        assert [k for k in p if k.startswith("lambda.")] == [f"lambda.{label}"]
    seeds = {c.seed for _, c in content + style + single}
    assert seeds == {0}


def test_strip_image_has_one_tile_per_label():
    from PIL import Image

    strip = explore.strip_image([Image.new("RGB", (40, 30), "red"), None], ["relu1_1", "relu2_1"], tile=30)
    assert strip.height == 30 + 14 + 8 and strip.width == 40 + 30 + 12


@pytest.mark.parametrize("kind", ["content", "style"])
def test_a_strip_is_logged_as_finished_explorer_runs_with_its_params(tmp_path, kind):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    queue = JobQueue(uri, devices=["cpu"], backend="thread", fallback_dir=tmp_path / "unsaved")
    expected = explore.strip_configs(kind, 32, 2)
    try:
        parent, children = explore.submit_strip(queue, kind, CONTENT_BYTES, STYLE_BYTES, size=32, steps=2)
        assert [label for label, _ in children] == [label for label, _ in expected]
        for _ in range(600):  # no page and no watcher: the queue ends the parent once the last layer ends
            if tracking.load_run(uri, parent).status != "RUNNING":
                break
            time.sleep(0.1)
        assert tracking.load_run(uri, parent).status == "FINISHED"
    finally:
        queue.shutdown(wait=True)
    parent_run = tracking.load_run(uri, parent)
    assert parent_run.tags["source"] == "explorer" and parent_run.status == "FINISHED"
    assert Path(tracking.download_artifact(uri, parent, "result.png")).is_file()  # the strip
    for (label, run_id), (_, config) in zip(children, expected, strict=True):
        run = tracking.load_run(uri, run_id)
        assert run.status == "FINISHED"
        assert run.tags["source"] == "explorer" and run.tags["explorer.label"] == label
        assert run.tags["mlflow.parentRunId"] == parent
        assert {k: run.params.get(k) for k in config.to_params()} == config.to_params()
        assert (run.params["size"], run.params["steps"], run.params["init"]) == ("32", "2", "noise")
        if kind == "content":
            assert (run.params["alpha"], run.params["beta"], run.params["content_layer"]) == ("1.0", "0.0", label)
        else:
            assert run.params["alpha"] == "0.0" and f"lambda.{label.lstrip('+')}" in run.params
    assert [(label, rid) for label, rid, _ in explore.strip_children(uri, parent)] == children


# --------------------------------------------------------------------------------------------------
# The page, with Streamlit's AppTest (the job queue and store are process-wide singletons: set the store first)


@pytest.fixture(scope="module")
def page_store(tmp_path_factory):
    import os

    from views import common

    folder = tmp_path_factory.mktemp("layers-store")
    uri = f"sqlite:///{folder}/mlflow.db"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    common.tracking_uri.clear()
    common.job_queue.clear()
    yield uri
    common.job_queue.clear()
    common.tracking_uri.clear()
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


def test_layers_page_shows_maps_grams_and_starts_a_strip(page_store):
    from streamlit.testing.v1 import AppTest

    small = images.image_to_png_bytes(images.resize_long_side(images.load_image(CONTENT_BYTES), 64))
    small_style = images.image_to_png_bytes(images.resize_long_side(images.load_image(STYLE_BYTES), 64))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.switch_page("views/layers.py").run()
    assert not at.exception
    assert any("Upload an image" in i.value for i in at.info)
    at.file_uploader(key="layers_content").set_value(("c.png", small, "image/png"))
    at.file_uploader(key="layers_style").set_value(("s.png", small_style, "image/png"))
    at.run()
    assert not at.exception
    at.number_input(key="layers_size").set_value(64)
    at.run()
    assert not at.exception
    captions = " ".join(str(c.value) for c in at.caption)
    assert "Mean activation per channel of relu3_1: the 64 strongest of its 256 channels" in captions
    assert "J_style[relu1_1] of content against S" in captions
    at.number_input(key="layers_strip_size").set_value(32)
    at.number_input(key="layers_strip_steps").set_value(2)
    at.button(key="layers_start_content").click().run()
    assert not at.exception
    parent = at.query_params["strip"][0] if isinstance(at.query_params["strip"], list) else at.query_params["strip"]
    run = tracking.load_run(page_store, parent)
    assert run.tags["source"] == "explorer" and run.tags["explorer.kind"] == "content"
    assert [label for label, _, _ in explore.strip_children(page_store, parent)] == list(GATYS_STYLE_LAYERS)
    from views import common

    queue = common.job_queue()
    children = [run_id for _, run_id, _ in explore.strip_children(page_store, parent)]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(queue.progress(r).done for r in children):
        time.sleep(0.2)
    at.run()
    assert not at.exception
    assert [link.label for link in at.get("page_link") if link.label in GATYS_STYLE_LAYERS] == list(GATYS_STYLE_LAYERS)
    assert all(tracking.load_run(page_store, r).status == "FINISHED" for r in children)

    runs_page = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    runs_page.switch_page("views/runs.py")
    runs_page.query_params["run"] = parent
    runs_page.run()
    assert not runs_page.exception  # the strip's parent opens like any run: its inputs and the strip as result


def test_layers_page_reads_a_recent_runs_inputs(page_store):
    from streamlit.testing.v1 import AppTest

    from engine.core.config import TransferConfig

    tiny = TransferConfig(size=32, steps=2, coarse_levels=0)
    content, style = images.load_image(CONTENT_BYTES), images.load_image(STYLE_BYTES)
    tracker = jobs.tracked_transfer(content, [style], tiny, tracking_uri=page_store, run_name="a recent run")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.switch_page("views/layers.py").run()
    box = at.selectbox(key="layers_source_run")
    box.set_value(tracker.run_id).run()
    assert not at.exception
    assert at.selectbox(key="layers_source_run").value == tracker.run_id
    assert any("Mean activation per channel of relu3_1" in str(c.value) for c in at.caption)
