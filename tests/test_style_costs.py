"""The style costs of `engine.core.style_costs` (gram, w2, sliced) against hand-computed values and closed
forms, gradcheck, their blends, batches; and the judge's second style figure in W2 units."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from engine.core import images
from engine.core.costs import normalised_gram
from engine.core.judge import judge
from engine.core.samples import sample_path
from engine.core.style_costs import (
    SLICED_QUANTILES,
    STYLE_COSTS,
    blend_statistics,
    guided_gram,
    sliced_directions,
    style_layer_cost,
    style_statistics,
    w2_cost,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _mask(h: int, w: int, values: dict[tuple[int, int], float]) -> torch.Tensor:
    m = torch.zeros(1, 1, h, w, dtype=torch.float64)
    for (i, j), v in values.items():
        m[0, 0, i, j] = v
    return m


# --- gram ---------------------------------------------------------------------------------------------


def test_guided_gram_by_hand():
    # channel 0 = [[1, 2], [3, 4]], channel 1 = [[0, 1], [2, 0]]; the positions' vectors are
    # (1, 0) (2, 1) / (3, 2) (4, 0). The mask covers (0, 1) and (1, 0): (2, 1) and (3, 2).
    a = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [2.0, 0.0]]]])
    mask = _mask(2, 2, {(0, 1): 1.0, (1, 0): 1.0}).float()
    # Ĝ_00 = (2·2 + 3·3)/2 = 6.5, Ĝ_01 = (2·1 + 3·2)/2 = 4, Ĝ_11 = (1·1 + 2·2)/2 = 2.5
    assert guided_gram(a, mask).tolist() == [[[6.5, 4.0], [4.0, 2.5]]]
    # a soft mask, 1 on (0, 1) and ½ on (1, 0): mass 1.5;
    # Ĝ_00 = (4 + ½·9)/1.5, Ĝ_01 = (2 + ½·6)/1.5, Ĝ_11 = (1 + ½·4)/1.5
    soft = _mask(2, 2, {(0, 1): 1.0, (1, 0): 0.5}).float()
    expected = torch.tensor([[[8.5, 5.0], [5.0, 3.0]]]) / 1.5
    assert torch.allclose(guided_gram(a, soft), expected)


def test_guided_gram_without_a_mask_is_the_normalised_gram():
    a = torch.randn(2, 3, 4, 5)
    assert torch.equal(guided_gram(a), normalised_gram(a))
    ones = torch.ones(1, 1, 4, 5)
    assert torch.allclose(guided_gram(a, ones), normalised_gram(a), rtol=1e-6)


@pytest.mark.parametrize("kind", STYLE_COSTS)
@pytest.mark.parametrize("masked", [False, True])
def test_gradcheck(kind, masked):
    torch.manual_seed(0)
    s = torch.randn(1, 3, 3, 4, dtype=torch.float64).exp()
    g = torch.randn(2, 3, 3, 4, dtype=torch.float64).exp().requires_grad_()
    mask = None
    if masked:  # soft weights; sliced keeps the positions above ½
        mask = torch.rand(1, 1, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 0.9 + 0.1
    target = style_statistics(kind, s, mask)
    assert torch.autograd.gradcheck(lambda x: style_layer_cost(kind, x, target, mask), (g,))


def test_gradcheck_of_w2_by_newton_schulz():
    torch.manual_seed(0)
    s, g = torch.randn(1, 3, 3, 4, dtype=torch.float64), torch.randn(1, 3, 3, 4, dtype=torch.float64)
    target = style_statistics("w2", s)
    assert torch.autograd.gradcheck(lambda x: w2_cost(x, target, sqrt="newton_schulz"), (g.requires_grad_(),))


# --- w2 -----------------------------------------------------------------------------------------------

# Rows of a 4×4 Hadamard matrix but the first: mean 0, mean square 1, orthogonal. Channel k of
# μ_k + √σ_k·H_k over 4 positions has exactly mean μ_k, variance σ_k, and no covariance with the others.
HADAMARD = torch.tensor([[1.0, 1, -1, -1], [1, -1, 1, -1], [1, -1, -1, 1]], dtype=torch.float64)


def _exact_gaussian(mean, var, rotation=None):
    mean, var = torch.tensor(mean, dtype=torch.float64), torch.tensor(var, dtype=torch.float64)
    a = mean[:, None] + var.sqrt()[:, None] * HADAMARD
    if rotation is not None:
        a = rotation @ a
    return a.view(1, 3, 2, 2)


def _closed_form(m1, v1, m2, v2):
    """W2² of two Gaussians with diagonal covariances: ‖μ1 − μ2‖² + Σ_k (√σ1_k − √σ2_k)²."""
    m1, v1, m2, v2 = (torch.tensor(x, dtype=torch.float64) for x in (m1, v1, m2, v2))
    return float((m1 - m2).pow(2).sum() + (v1.sqrt() - v2.sqrt()).pow(2).sum())


def test_w2_is_the_closed_form_for_diagonal_covariances():
    m1, v1, m2, v2 = [0.0, 1.0, 2.0], [1.0, 4.0, 0.25], [1.0, 1.0, 0.0], [4.0, 1.0, 1.0]
    expected = _closed_form(m1, v1, m2, v2) / 3  # per channel; = 7.25 / 3
    assert expected == pytest.approx(7.25 / 3)
    target = style_statistics("w2", _exact_gaussian(m1, v1))
    for sqrt in ("eigh", "newton_schulz"):
        cost = w2_cost(_exact_gaussian(m2, v2), target, sqrt=sqrt)
        assert cost.item() == pytest.approx(expected, rel=1e-4)  # the ridge moves it by ~1e-5
    # both distributions turned by one rotation: non-diagonal covariances, the same distance
    rotation = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))[0]
    target = style_statistics("w2", _exact_gaussian(m1, v1, rotation))
    cost = style_layer_cost("w2", _exact_gaussian(m2, v2, rotation), target)
    assert cost.item() == pytest.approx(expected, rel=1e-4)


def test_w2_of_large_gaussian_samples_is_near_the_closed_form():
    gen = torch.Generator().manual_seed(0)
    m1, v1, m2, v2 = [0.0, 1.0, 2.0], [1.0, 4.0, 0.25], [1.0, 1.0, 0.0], [4.0, 1.0, 1.0]

    def sample(mean, var):
        z = torch.randn(1, 3, 128, 128, generator=gen)
        return torch.tensor(mean).view(1, 3, 1, 1) + torch.tensor(var).sqrt().view(1, 3, 1, 1) * z

    cost = style_layer_cost("w2", sample(m2, v2), style_statistics("w2", sample(m1, v1)))
    assert cost.item() == pytest.approx(_closed_form(m1, v1, m2, v2) / 3, rel=0.02)


def test_w2_is_zero_for_the_same_distribution():
    torch.manual_seed(0)
    tile = torch.randn(1, 6, 4, 4).relu()
    target = style_statistics("w2", tile)
    assert style_layer_cost("w2", tile, target).item() == pytest.approx(0.0, abs=1e-5)
    # and for the same texture at another size: the statistics are means over positions
    assert style_layer_cost("w2", tile.repeat(1, 1, 2, 3), target).item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("sqrt", ["eigh", "newton_schulz"])
def test_w2_gradient_is_finite_for_rank_deficient_covariances(sqrt):
    # 16 channels and 2×3 positions on both sides (relu5_1 at 256 px: 512 channels, 16×12 positions)
    torch.manual_seed(0)
    s = torch.randn(1, 16, 2, 3).relu()
    g = torch.randn(2, 16, 2, 3).relu().requires_grad_()
    g.data[1] = s[0]  # the second image is S itself: a zero distance, where √ is steepest
    cost = w2_cost(g, style_statistics("w2", s), sqrt=sqrt)
    cost.sum().backward()
    assert torch.isfinite(cost).all() and torch.isfinite(g.grad).all()
    assert cost[0] > 0 and cost[1].item() == pytest.approx(0.0, abs=1e-4)


def test_w2_weighted_statistics_are_the_masked_positions_statistics():
    torch.manual_seed(0)
    a = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    mask = (torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(3)) > 0.5).double()
    inside = a.flatten(2)[:, :, mask.flatten() > 0].unsqueeze(3)  # (1, 3, N, 1): only the covered positions
    masked, cropped = style_statistics("w2", a, mask), style_statistics("w2", inside)
    for key in ("mean", "cov", "cov_sqrt"):
        assert torch.allclose(masked[key], cropped[key])
    g = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    g_inside = g.flatten(2)[:, :, mask.flatten() > 0].unsqueeze(3)
    assert torch.allclose(style_layer_cost("w2", g, masked, mask), style_layer_cost("w2", g_inside, masked))


# --- sliced -------------------------------------------------------------------------------------------


def test_sliced_with_one_channel_is_the_exact_1d_w2():
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(1, 1, SLICED_QUANTILES, 1, generator=gen, dtype=torch.float64)
    g = 2 * torch.rand(1, 1, SLICED_QUANTILES, 1, generator=gen, dtype=torch.float64)
    expected = (g.flatten().sort().values - s.flatten().sort().values).pow(2).mean()  # 1-D W2² of the samples
    assert style_layer_cost("sliced", g, style_statistics("sliced", s)).item() == pytest.approx(expected.item())


def test_sliced_is_zero_for_identical_inputs_and_blind_to_the_order_of_positions():
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(1, 4, 32, 32, generator=gen).relu()  # 1024 positions = SLICED_QUANTILES: exact
    target = style_statistics("sliced", s)
    assert style_layer_cost("sliced", s, target).item() == pytest.approx(0.0, abs=1e-10)
    g = torch.randn(1, 4, 24, 20, generator=gen)
    shuffled = g.flatten(2)[:, :, torch.randperm(480, generator=gen)].view_as(g)
    assert torch.allclose(style_layer_cost("sliced", shuffled, target), style_layer_cost("sliced", g, target))
    s_shuffled = s.flatten(2)[:, :, torch.randperm(1024, generator=gen)].view_as(s)
    assert torch.equal(style_statistics("sliced", s_shuffled)["quantiles"], target["quantiles"])


def test_sliced_directions_are_fixed_unit_vectors():
    d = sliced_directions(8)
    assert d.shape == (8, 8) and torch.allclose(d.norm(dim=0), torch.ones(8))
    assert torch.equal(d, sliced_directions(8))  # the same at every call: a deterministic objective
    a = torch.randn(1, 8, 4, 4)
    assert torch.equal(style_statistics("sliced", a)["directions"], d)


def test_sliced_mask_keeps_the_positions_above_a_half():
    torch.manual_seed(0)
    s, g = torch.randn(1, 3, 4, 4), torch.randn(2, 3, 4, 4)
    mask = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    keep = mask.flatten() > 0.5
    target = style_statistics("sliced", s, mask)
    cropped = style_statistics("sliced", s.flatten(2)[:, :, keep].unsqueeze(3))
    assert torch.allclose(target["quantiles"], cropped["quantiles"])
    inside = g.flatten(2)[:, :, keep].unsqueeze(3)
    assert torch.allclose(style_layer_cost("sliced", g, target, mask), style_layer_cost("sliced", inside, target))


# --- blends -------------------------------------------------------------------------------------------


def _close(x: dict, y: dict) -> bool:
    return x.keys() == y.keys() and all(torch.allclose(x[k], y[k], rtol=1e-5, atol=1e-6) for k in x)


@pytest.mark.parametrize("kind", STYLE_COSTS)
def test_a_style_blended_with_itself_or_with_weight_zero_is_itself(kind):
    gen = torch.Generator().manual_seed(0)
    one, two = torch.randn(1, 4, 8, 8, generator=gen).relu(), 3 * torch.randn(1, 4, 6, 10, generator=gen).relu()
    s1, s2 = style_statistics(kind, one), style_statistics(kind, two)
    assert _close(blend_statistics(kind, [s1, s1], [0.5, 0.5]), s1)
    assert _close(blend_statistics(kind, [s1, s1, s1], [0.2, 0.3, 0.5]), s1)
    assert _close(blend_statistics(kind, [s1, s2], [1.0, 0.0]), s1)
    assert _close(blend_statistics(kind, [s1, s2], [0.0, 1.0]), s2)


def test_blends_are_the_statistics_of_the_mixture():
    # two styles of SLICED_QUANTILES positions each, weights ½/½: the mixture is the pooled samples
    gen = torch.Generator().manual_seed(0)
    one = torch.randn(1, 3, SLICED_QUANTILES, 1, generator=gen)
    two = 2 + torch.randn(1, 3, SLICED_QUANTILES, 1, generator=gen)
    pooled = torch.cat([one, two], dim=2)
    for kind, keys in (("w2", ("mean", "cov", "cov_sqrt")), ("sliced", ("quantiles",))):
        blend = blend_statistics(kind, [style_statistics(kind, one), style_statistics(kind, two)], [0.5, 0.5])
        mixture = style_statistics(kind, pooled)
        for key in keys:
            assert torch.allclose(blend[key], mixture[key], rtol=1e-5, atol=1e-5), (kind, key)
    # unequal weights: the mixture's quantile at level t is where ¼·F_1 + ¾·F_2 reaches t
    blend = blend_statistics("sliced", [style_statistics("sliced", one), style_statistics("sliced", two)], [0.25, 0.75])
    d = blend["directions"].double()
    p1, p2 = d.T @ one[0].flatten(1).double(), d.T @ two[0].flatten(1).double()  # (K, N) each
    q = blend["quantiles"][0].double()  # (K, Q)
    below = lambda p: (p[:, None, :] <= q[:, :, None]).double().mean(2)  # noqa: E731  (K, Q): F_s at each quantile
    cdf = 0.25 * below(p1) + 0.75 * below(p2)
    levels = (torch.arange(SLICED_QUANTILES, dtype=torch.float64) + 0.5) / SLICED_QUANTILES
    assert (cdf - levels).abs().max() <= 1 / SLICED_QUANTILES  # within one sample's mass of the level


# --- batches and names --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", STYLE_COSTS)
@pytest.mark.parametrize("masked", [False, True])
def test_costs_are_per_image_of_a_batch(kind, masked):
    gen = torch.Generator().manual_seed(0)
    s, g = torch.randn(1, 5, 6, 7, generator=gen).relu(), torch.randn(3, 5, 6, 7, generator=gen).relu()
    mask = torch.rand(1, 1, 6, 7, generator=gen) if masked else None
    target = style_statistics(kind, s, mask)
    batch = style_layer_cost(kind, g, target, mask)
    assert batch.shape == (3,) and batch.dtype == torch.float32
    alone = torch.cat([style_layer_cost(kind, g[i : i + 1], target, mask) for i in range(3)])
    assert torch.allclose(batch, alone, rtol=1e-5)


def test_unknown_kinds_raise():
    a = torch.randn(1, 2, 2, 2)
    with pytest.raises(ValueError):
        style_statistics("lap", a)
    with pytest.raises(ValueError):
        blend_statistics("lap", [{}], [1.0])
    with pytest.raises(ValueError):
        style_layer_cost("lap", a, {})


# --- the judge's second yardstick ---------------------------------------------------------------------


def test_the_judge_in_w2_units():
    content = images.load_image(sample_path("tubingen.jpg"))
    style = images.load_image(sample_path("starry_night.jpg"))
    photo = judge(images.resize_long_side(content, 64), content, style, device="cpu")
    assert photo.style_reduction_w2 == pytest.approx(1.0)
    assert photo.style_distance_w2 == photo.photo_style_distance_w2 > 0
    painting = judge(images.resize_long_side(style, 64), content, style, device="cpu")  # S itself, S's size
    assert painting.style_reduction_w2 > 1000
    squeezed = judge(style.resize((64, 48), Image.Resampling.LANCZOS), content, style, device="cpu")
    assert squeezed.style_reduction_w2 > 3  # squeezed to the photo's 4:3: measured 4.85 (Gram: 4.94)
