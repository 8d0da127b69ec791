"""The seed's costs against hand-computed values, independent loops, and gradcheck."""

import pytest
import torch

from engine.core.costs import Objective, content_cost, gram_matrix, normalised_gram, style_layer_cost, tv_cost


def test_content_cost_is_half_the_squared_distance():
    a_c = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    a_g = torch.tensor([[[[1.0, 0.0], [3.0, 7.0]]]])
    # ½ (0² + 2² + 0² + 3²) = 6.5
    assert content_cost(a_g, a_c).tolist() == [6.5]


def test_gram_matrix_by_hand():
    # two channels on a 1×2 grid: channel 0 = (1, 2), channel 1 = (3, 4)
    a = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])
    # G_00 = 1+4 = 5, G_01 = 3+8 = 11, G_11 = 9+16 = 25
    assert gram_matrix(a).tolist() == [[[5.0, 11.0], [11.0, 25.0]]]


def test_gram_matrix_matches_the_double_sum_of_the_seed():
    a = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    expected = torch.zeros(2, 4, 4, dtype=torch.float64)
    for b in range(2):
        for k in range(4):
            for k2 in range(4):
                expected[b, k, k2] = sum(a[b, k, i, j] * a[b, k2, i, j] for i in range(3) for j in range(5))
    assert torch.allclose(gram_matrix(a).double(), expected, rtol=1e-5)


def test_style_layer_cost_is_the_seeds_formula_with_the_square():
    torch.manual_seed(0)
    a_s, a_g = torch.randn(1, 3, 4, 5), torch.randn(1, 3, 4, 5)
    n_h, n_w, n_c = 4, 5, 3
    expected = (gram_matrix(a_s) - gram_matrix(a_g)).pow(2).sum() / (2 * n_h * n_w * n_c) ** 2
    assert style_layer_cost(a_g, normalised_gram(a_s)).item() == pytest.approx(expected.item(), rel=1e-5)


def test_style_layer_cost_by_hand():
    # one channel, one position: G(S) = 2² = 4, G(G) = 1; (4 − 1)² / (2·1·1·1)² = 9/4
    a_s, a_g = torch.full((1, 1, 1, 1), 2.0), torch.ones(1, 1, 1, 1)
    assert style_layer_cost(a_g, normalised_gram(a_s)).item() == pytest.approx(2.25)


def test_style_layer_cost_is_zero_for_the_style_itself_at_another_size():
    # A texture of repeated tiles has the same per-position Gram at any number of tiles.
    tile = torch.randn(1, 4, 2, 2)
    small, large = tile.repeat(1, 1, 2, 2), tile.repeat(1, 1, 4, 3)
    assert style_layer_cost(large, normalised_gram(small)).item() == pytest.approx(0.0, abs=1e-6)


def test_tv_cost_by_hand():
    x = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]])
    # vertical: (2−0)² + (4−1)² = 13; horizontal: (1−0)² + (4−2)² = 5
    assert tv_cost(x).tolist() == [18.0]


def test_costs_are_per_image_of_a_batch():
    a = torch.randn(3, 2, 4, 4)
    target = torch.randn(1, 2, 4, 4)
    per_image = content_cost(a, target)
    assert per_image.shape == (3,)
    assert per_image[1].item() == pytest.approx(content_cost(a[1:2], target).item())


@pytest.mark.parametrize("fn", ["content", "style", "tv"])
def test_gradients_match_finite_differences_in_float64(fn):
    torch.manual_seed(0)
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    target = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    cost = {
        "content": lambda t: content_cost(t, target),
        "style": lambda t: style_layer_cost(t, normalised_gram(target)),
        "tv": tv_cost,
    }[fn]
    assert torch.autograd.gradcheck(cost, (x,))


def test_costs_of_bf16_activations_are_computed_in_fp32():
    a = torch.randn(1, 2, 3, 3).bfloat16()
    assert gram_matrix(a).dtype == torch.float32
    assert content_cost(a, a).dtype == torch.float32


def test_objective_sums_the_weighted_terms():
    torch.manual_seed(2)
    feats = lambda: {"relu1_1": torch.randn(1, 2, 4, 4), "relu2_1": torch.randn(1, 3, 2, 2)}  # noqa: E731
    c, s, g = feats(), feats(), feats()
    image = torch.rand(1, 3, 4, 4)
    lambdas = {"relu1_1": 0.3, "relu2_1": 2.0}
    objective = Objective(c, [s], content_layer="relu2_1", lambdas=lambdas, alpha=2.0, beta=10.0, tv_weight=0.5)
    costs = objective(g, image)
    per_layer = {k: style_layer_cost(g[k], normalised_gram(s[k])) for k in lambdas}
    style = sum(lambdas[k] * per_layer[k] for k in lambdas)
    assert costs.style.item() == pytest.approx(style.item(), rel=1e-6)
    expected_total = 2.0 * content_cost(g["relu2_1"], c["relu2_1"]) + 10.0 * style + 0.5 * tv_cost(image)
    assert costs.total.item() == pytest.approx(expected_total.item(), rel=1e-6)
    floats = costs.as_floats()
    assert set(floats) == {"total", "content", "style", "tv", "style/relu1_1", "style/relu2_1"}


def test_objective_blends_style_grams_by_weight():
    a1, a2 = torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 3)
    objective = Objective(
        {"relu1_1": a1}, [{"relu1_1": a1}, {"relu1_1": a2}],
        content_layer="relu1_1", lambdas={"relu1_1": 1.0}, alpha=1.0, beta=1.0, style_blend=[3.0, 1.0],
    )  # fmt: skip
    expected = 0.75 * normalised_gram(a1) + 0.25 * normalised_gram(a2)
    assert torch.allclose(objective.gram_relu1_1, expected)


def test_gram_matrix_is_the_same_for_channels_last_activations():
    a = torch.randn(2, 5, 4, 3)
    assert torch.allclose(gram_matrix(a.contiguous(memory_format=torch.channels_last)), gram_matrix(a), atol=1e-5)


def test_gram_summed_in_row_bands_equals_the_whole_product():
    # the GPU path splits Σ_ij into row bands; same matrix up to fp32 summation order
    a = torch.randn(2, 16, 12, 10).contiguous(memory_format=torch.channels_last)
    whole = gram_matrix(a, bands=1)
    assert torch.allclose(gram_matrix(a, bands=4), whole, rtol=1e-5, atol=1e-4)
    assert torch.allclose(whole, gram_matrix(a.contiguous()), rtol=1e-5, atol=1e-4)


def test_a_narrowed_pass_gives_the_full_passes_costs_and_gradient():
    # Image 0 weighs both layers, image 1 only relu1_1 with relu2_1 reported at λ = 0, image 2 neither:
    # the narrowed pass computes relu2_1's Gram for image 0 and 1 only, and no gradient through image 1's.
    torch.manual_seed(3)
    feats = lambda b: {"relu1_1": torch.randn(b, 2, 4, 4), "relu2_1": torch.randn(b, 3, 2, 2)}  # noqa: E731
    c, s = feats(1), feats(1)
    lambdas = {"relu1_1": [0.5, 2.0, 0.0], "relu2_1": [1.0, 0.0, 0.0]}
    reported = {"relu1_1": [True, True, False], "relu2_1": [True, True, False]}
    objective = Objective(c, [s], content_layer="relu1_1", lambdas=lambdas, alpha=1.0, beta=3.0, reported=reported)
    assert objective.layers_read(3) == [
        ("relu1_1", "relu2_1"),
        ("relu1_1", "relu2_1"),
        ("relu1_1",),
    ]
    g = {k: v.requires_grad_(True) for k, v in feats(3).items()}
    image = torch.rand(3, 3, 4, 4)
    full = objective(g, image)
    narrowed = objective({"relu1_1": g["relu1_1"], "relu2_1": g["relu2_1"][:2]}, image)
    expected_relu2_1 = style_layer_cost(g["relu2_1"][:2], normalised_gram(s["relu2_1"]))
    assert torch.allclose(narrowed.style_layers["relu2_1"][:2], expected_relu2_1)
    assert narrowed.style_layers["relu2_1"][2] == 0  # not read by image 2
    assert narrowed.style_layers["relu1_1"][2] == 0
    assert torch.allclose(narrowed.total, full.total)
    (full_grad,) = torch.autograd.grad(full.total.sum(), g["relu2_1"])
    (narrow_grad,) = torch.autograd.grad(narrowed.total.sum(), g["relu2_1"])
    assert torch.allclose(narrow_grad, full_grad)
    assert narrow_grad[1:].abs().max() == 0 and narrow_grad[0].abs().max() > 0


def test_a_pass_over_part_of_the_batch_reads_that_parts_weights():
    torch.manual_seed(4)
    feats = lambda b: {"relu1_1": torch.randn(b, 2, 4, 4), "relu2_1": torch.randn(b, 3, 2, 2)}  # noqa: E731
    c, s = feats(1), feats(1)
    objective = Objective(
        c, [s], content_layer="relu1_1", lambdas={"relu2_1": [0.0, 1.0]}, alpha=[1.0, 2.0], beta=1.0,
        reported={"relu2_1": [False, True]},
    )  # fmt: skip
    second = feats(1)
    costs = objective(second, torch.rand(1, 3, 4, 4), images=slice(1, 2))
    assert objective.layers_read(1, slice(1, 2)) == [("relu1_1", "relu2_1")]
    assert objective.layers_read(1, slice(0, 1)) == [("relu1_1",)]
    assert costs.style.item() == pytest.approx(
        style_layer_cost(second["relu2_1"], normalised_gram(s["relu2_1"])).item()
    )
    assert costs.content.item() > 0 and costs.total.item() > 2 * costs.content.item()
