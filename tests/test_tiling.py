"""Tiled runs (engine.core.tiling): the grid, the exact gradient with the real VGG19, the memory plan, and
a tiled run without seams."""

import contextlib

import numpy as np
import pytest
import torch
from conftest import sample_image

from engine.core import images
from engine.core.config import TransferConfig, auto_coarse_levels
from engine.core.costs import Objective, normalised_gram
from engine.core.device import MIN_HISTORY, estimate_run_bytes, plan_scale
from engine.core.errors import InputError
from engine.core.samples import sample_path
from engine.core.tiling import seam_ratio, tile_grid, tiled_activation, tiled_costs_and_gradient, tiled_grams
from engine.core.transfer import transfer
from engine.core.vgg import VGGFeatures, exact_halo, receptive_margin

GATYS = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
CPU = torch.device("cpu")


def _sample(name: str, size: int) -> torch.Tensor:
    return images.image_to_tensor(sample_image(name, size))


def test_receptive_field_of_relu5_1_is_156_px_and_the_exact_halo_sits_on_its_pooling_grid():
    assert 16 + 2 * receptive_margin("relu5_1") == 156
    assert exact_halo("relu5_1") == 80 and exact_halo("relu4_2") == 40 and exact_halo("relu3_1") == 12


@pytest.mark.parametrize("shape", [(384, 512), (200, 333), (64, 1000)])
def test_tile_interiors_cover_the_image_once_on_the_pooling_grid(shape):
    height, width = shape
    tiles = tile_grid(height, width, 128, 70, 16)
    covered = np.zeros(shape, dtype=int)
    for tile in tiles:
        y0, y1, x0, x1 = tile.inner
        oy0, oy1, ox0, _ = tile.outer
        covered[y0:y1, x0:x1] += 1
        assert oy0 % 16 == 0 and ox0 % 16 == 0  # each tile pools the same 2×2 blocks as the whole image
        assert (y0 - oy0 in (0, 80) or oy0 == 0) and (oy1 - y1 == 80 or oy1 == height)  # halo rounded up to 80
        assert all(v % 16 == 0 or v in (height, width) for v in (y0, y1, x0, x1))
    assert (covered == 1).all()


@pytest.fixture(scope="module")
def gatys_512():
    net = VGGFeatures([*GATYS, "relu4_2"]).to(memory_format=torch.channels_last)
    content, style = _sample("tubingen.jpg", 512), _sample("starry_night.jpg", 512)
    with torch.no_grad():
        features, style_features = net(content), net(style)
    objective = Objective(
        features, [style_features], content_layer="relu4_2", lambdas=dict.fromkeys(GATYS, 0.2), alpha=1.0,
        beta=1e6, tv_weight=1.0,
    )  # fmt: skip
    x = (0.5 * content + 0.5 * torch.rand(content.shape, generator=torch.Generator().manual_seed(0))).requires_grad_()
    costs = objective(net(x.contiguous(memory_format=torch.channels_last)), x)
    (grad,) = torch.autograd.grad(costs.total.sum(), x)
    return net, objective, x.detach(), costs, grad, (content, style, features, style_features)


def _tiled(gatys_512, halo: int):
    net, objective, x, *_ = gatys_512
    tiles = tile_grid(*x.shape[-2:], 256, halo, 16)
    assert len(tiles) == 4
    return tiled_costs_and_gradient(x, objective, net, tiles, slice(None), contextlib.nullcontext)


@pytest.mark.slow
def test_tiled_gradient_at_512_px_is_the_whole_images_with_the_default_halo(gatys_512):
    # Measured: gradient 5.7e-7 relative, costs 1.1e-7 (fp32 summation order only).
    _, _, _, costs, grad, _ = gatys_512
    tiled_costs, tiled_grad = _tiled(gatys_512, exact_halo("relu5_1"))
    assert ((tiled_grad - grad).norm() / grad.norm()).item() <= 1e-3
    for name in ("total", "content", "style", "tv"):
        assert getattr(tiled_costs, name).item() == pytest.approx(getattr(costs, name).item(), rel=1e-4)
    for layer in GATYS:
        assert tiled_costs.style_layers[layer].item() == pytest.approx(costs.style_layers[layer].item(), rel=1e-4)


@pytest.mark.slow
def test_a_halo_short_of_the_receptive_field_gives_a_measurably_wrong_gradient(gatys_512):
    # Measured at 512 px, tiles of 256: halo 64 → 1.2e-4, 48 → 4.1e-3, 0 → 0.28 (README, "Any size").
    _, _, _, _, grad, _ = gatys_512
    errors = [((_tiled(gatys_512, halo)[1] - grad).norm() / grad.norm()).item() for halo in (48, 0)]
    assert 1e-3 < errors[0] < errors[1]


@pytest.mark.slow
def test_targets_taken_by_tiles_equal_the_whole_images(gatys_512):
    net, *_, (content, style, features, style_features) = gatys_512
    grams = tiled_grams(net, style, GATYS, tile_grid(*style.shape[-2:], 256, 80, 16))
    for layer in GATYS:
        whole = normalised_gram(style_features[layer])
        assert ((grams[layer] - whole).norm() / whole.norm()).item() < 1e-5
    target = tiled_activation(net, content, "relu4_2", tile_grid(*content.shape[-2:], 256, 80, 16))
    assert torch.allclose(target, features["relu4_2"], rtol=1e-5, atol=1e-5)


def test_a_run_tiles_only_where_the_untiled_one_would_not_fit():
    config = TransferConfig(size=2048, coarse_levels=0)
    untiled = estimate_run_bytes(config, 1536, 2048, CPU)
    assert plan_scale(config, 1536, 2048, CPU, budget=untiled).tile_size == 0
    plan = plan_scale(config, 1536, 2048, CPU, budget=untiled / 2)
    assert plan.tile_size and plan.bytes <= untiled / 2 and plan.history == config.history
    assert "in tiles of" in plan.describe(config)
    assert plan_scale(config.replace(tile_size="0"), 1536, 2048, CPU, budget=1).tile_size == 0  # never
    assert plan_scale(config.replace(tile_size="512"), 1536, 2048, CPU, budget=untiled).tile_size == 512


def test_a_tiled_run_that_still_does_not_fit_shortens_its_history_then_says_what_to_do():
    config = TransferConfig(size=4096, coarse_levels=0)
    full = plan_scale(config, 3072, 4096, CPU, budget=1e12)
    roomy = plan_scale(config.replace(tile_size="512"), 3072, 4096, CPU, budget=1e12)
    short = plan_scale(config.replace(tile_size="512"), 3072, 4096, CPU, budget=roomy.bytes * 0.6)
    assert full.tile_size == 0 and MIN_HISTORY <= short.history < config.history
    assert "history shortened from 20" in short.describe(config)
    with pytest.raises(InputError, match="Adam"):
        plan_scale(config.replace(tile_size="512"), 3072, 4096, CPU, budget=2**30)


def test_tile_knobs_are_checked_and_large_sizes_start_coarse():
    assert TransferConfig().tile_size == "auto" and TransferConfig(tile_size=512.0).tile_size == "512"
    assert TransferConfig(size=8192).size == 8192
    for bad in ("big", "32", "-1", "100.5"):
        with pytest.raises(InputError, match="tile_size must be auto"):
            TransferConfig(tile_size=bad)
    with pytest.raises(InputError, match="tile_halo"):
        TransferConfig(tile_halo="999")
    assert [auto_coarse_levels(s) for s in (256, 384, 512, 1024, 2048, 4096, 8192)] == [0, 0, 1, 2, 3, 4, 4]
    assert TransferConfig(size=4096).schedule[0] == (256, 150) and TransferConfig(size=512).schedule[0] == (256, 150)
    assert TransferConfig.from_params({"size": "2048", "coarse_levels": "0"}).coarse_levels == 0  # old runs


@pytest.mark.slow
def test_a_tiled_run_has_no_seams(one_torch_thread):
    # Shallow layers (relu1_1…relu3_1, exact halo 12 px) make a 256-px run in 64-px tiles cheap; the maths
    # is the one the deep layers use. Measured: seam ratio 1.030 untiled, 1.029 tiled, 1.25 without a halo.
    content, style = (images.load_image(sample_path(n)) for n in ("tubingen.jpg", "starry_night.jpg"))
    config = TransferConfig(size=256, steps=25, init="content", content_layer="relu3_1",
                            style_layers={"relu1_1": 0.3, "relu2_1": 0.3, "relu3_1": 0.4})  # fmt: skip
    untiled, tiled, naive = (
        np.asarray(transfer(content, [style], config.replace(tile_size=size, tile_halo=halo), device="cpu").image)
        for size, halo in (("0", "auto"), ("64", "auto"), ("64", "0"))
    )
    cuts_y, cuts_x = [64, 128], [64, 128, 192]  # 256×192: the interiors' borders (tile_grid, 64 px)
    ratios = [seam_ratio(r, cuts_y, cuts_x) for r in (untiled, tiled, naive)]
    print("seam ratios untiled, tiled, no halo:", ratios)
    assert abs(ratios[1] - ratios[0]) < 0.1 * ratios[0], ratios
    assert ratios[2] > ratios[0] + 0.1, ratios  # the statistic sees seams where there are some
    assert np.abs(untiled.astype(int) - tiled.astype(int)).mean() < 1.0  # the same run, up to rounding


def test_cancel_within_a_tiled_iteration_returns_the_best_image_so_far():
    content, style = (images.load_image(sample_path(n)) for n in ("tubingen.jpg", "starry_night.jpg"))
    config = TransferConfig(size=128, steps=5, tile_size="64", init="content", content_layer="relu2_1",
                            style_layers={"relu1_1": 1.0, "relu2_1": 1.0})  # fmt: skip
    asked = []

    def should_stop() -> bool:  # no after step 1; yes at the next question, the first tile of step 2
        asked.append(True)
        return len(asked) > 1

    result = transfer(content, [style], config, should_stop=should_stop, device="cpu")
    assert result.stopped == "cancelled" and result.steps_done == 1 and len(asked) == 2
    assert result.image.size == (128, 96) and "in tiles of 64 px" in result.memory_plan


@pytest.mark.slow
@pytest.mark.parametrize("images_per_pass", [1, 2])  # the CPU's image-at-a-time path and the GPU's one pass
def test_tiles_compose_with_batches_colour_preservation_blends_and_coarse_to_fine(monkeypatch, images_per_pass):
    from engine.core import transfer as transfer_module

    monkeypatch.setattr(transfer_module, "CPU_IMAGES_PER_PASS", images_per_pass)
    content = images.load_image(sample_path("tubingen.jpg"))
    styles = [images.load_image(sample_path(n)) for n in ("starry_night.jpg", "the_scream.jpg")]
    base = TransferConfig(size=192, steps=4, coarse_levels=1, coarse_steps=3, init="content", preserve_colors=True,
                          style_blend=(2.0, 1.0), content_layer="relu2_1", style_scale=0.75)  # fmt: skip
    configs = [base.replace(style_layers={"relu1_1": 1.0, "relu2_1": 0.5}),
               base.replace(style_layers={"relu1_1": 0.2, "relu3_1": 1.0}, seed=1)]  # fmt: skip
    untiled, tiled = (
        transfer_module.transfer_batch(content, styles, [c.replace(tile_size=t) for c in configs], device="cpu")
        for t in ("0", "64")
    )
    for plain, by_tiles in zip(untiled, tiled, strict=True):
        assert "in tiles of 64 px" in by_tiles.memory_plan and "untiled" in plain.memory_plan
        assert by_tiles.costs["total"] == pytest.approx(plain.costs["total"], rel=1e-3)
        difference = np.abs(np.asarray(plain.image, dtype=int) - np.asarray(by_tiles.image, dtype=int))
        assert difference.mean() < 0.5 and difference.max() <= 3
