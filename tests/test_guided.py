"""Runs with another style cost than the seed's Gram (`style_cost` w2 or sliced), end to end with the real
VGG19: they stylise, batch, sweep and compose with regions."""

import pytest
from conftest import sample_image
from PIL import Image, ImageDraw

from engine.core.config import TransferConfig
from engine.core.regions import Region
from engine.core.transfer import transfer, transfer_batch
from engine.studies.sweep import SweepAxis, expand

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def content() -> Image.Image:
    return sample_image("tubingen.jpg", 64)


@pytest.fixture(scope="module")
def style() -> Image.Image:
    return sample_image("starry_night.jpg", 64)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["w2", "sliced"])
def test_each_style_cost_falls_a_long_way_and_is_logged_per_layer_in_its_own_units(content, style, kind):
    config = TransferConfig(size=64, steps=30, style_cost=kind, init="content")
    reports = []
    result = transfer(content, [style], config, on_step=reports.append, device="cpu")
    first, last = reports[0].costs, result.costs
    assert last["style"] < first["style"] / 3, (first["style"], last["style"])
    assert {f"style/{layer}" for layer in config.lambdas} <= set(last)
    assert TransferConfig.from_params(config.to_params()).style_cost == kind


@pytest.mark.slow
def test_a_batch_of_w2_settings_gives_each_its_own_run_and_style_cost_is_a_sweep_axis(content, style):
    base = TransferConfig(size=48, steps=6, style_cost="w2", init="noise")
    configs = [base.replace(beta=2e5), base.replace(style_layers={"relu2_1": 1.0, "relu4_1": 0.5})]
    batched = transfer_batch(content, [style], configs, device="cpu")
    for config, many in zip(configs, batched, strict=True):
        one = transfer(content, [style], config, device="cpu")
        assert many.costs["total"] == pytest.approx(one.costs["total"], rel=0.01)
        assert set(many.costs) == set(one.costs)
    settings = expand(TransferConfig(size=48, steps=2), [SweepAxis("style_cost", ("gram", "w2", "sliced"))])
    assert [c.style_cost for _, c in settings] == ["gram", "w2", "sliced"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["w2", "sliced"])
def test_regions_take_their_own_styles_under_each_cost(content, style, kind):
    mask = Image.new("RGB", content.size, (255, 0, 0))
    ImageDraw.Draw(mask).rectangle([0, content.size[1] // 2, content.size[0], content.size[1]], fill=(0, 0, 255))
    scream = sample_image("the_scream.jpg", 64)
    regions = (Region("sky", (255, 0, 0), (1,)), Region("town", (0, 0, 255), (2,)))
    config = TransferConfig(size=64, steps=10, style_cost=kind, regions=regions)
    result = transfer(content, [style, scream], config, mask=mask, device="cpu")
    assert {"style/sky/relu1_1", "style/town/relu5_1"} <= set(result.costs)
    assert all(result.costs[f"style/{r}/relu3_1"] > 0 for r in ("sky", "town"))
