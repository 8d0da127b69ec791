"""Per-layer style costs J_style[l] to choose from (`TransferConfig.style_cost`), each with its target
statistics, and guided (masked) statistics for spatial control.

Scope: pure tensor maths, torch only. Every cost has the same three entry points:

- `style_statistics(kind, a, weight)`: the target statistics of one style activation a (1, n_C, n_H, n_W);
- `blend_statistics(kind, stats, weights)`: the statistics of a weighted blend of several style images;
- `style_layer_cost(kind, a, target, weight)`: the cost of a batch of G activations (B, n_C, n_H, n_W), (B,).

`weight` is None (every position counts once) or a (1, 1, n_H, n_W) map in [0, 1]: a region's mask at
the layer's resolution (Gatys et al. 2017, "Controlling Perceptual Factors in Neural Style Transfer").
Statistics are averages over positions weighted by it, so a region's statistics compare with any other
image's or region's, whatever their sizes. Costs are fp32 (fp64 stays fp64 for gradcheck).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.core.costs import _at_least_fp32, gram_matrix, normalised_gram, style_cost_of_grams

STYLE_COSTS = ("gram", "w2", "sliced")

Statistics = dict[str, torch.Tensor]


def mask_mass(weight: torch.Tensor | None, a: torch.Tensor) -> torch.Tensor:
    """Σ_ij m_ij: how many positions of `a` a weight map covers (n_H·n_W when there is none)."""
    if weight is None:
        return torch.tensor(float(a.shape[-2] * a.shape[-1]), device=a.device)
    return _at_least_fp32(weight).sum()


def guided_gram(a: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Ĝ_r[l] = Σ_ij m_ij · a_ij a_ijᵀ / Σ_ij m_ij, shape (B, n_C, n_C).

    Gatys et al. 2017, eq. 6-7: the guided feature map F_r = T_r ∘ F and its Gram G_r = F_r F_rᵀ, here with
    the guidance channel T_r = √m (so each position counts with its mask value m, not m²) and divided by
    the mask's mass, so that Ĝ_r is the mean of a aᵀ over the region. With no mask it is
    `costs.normalised_gram`, G[l] / (n_H·n_W).
    """
    if weight is None:
        return normalised_gram(a)
    a = _at_least_fp32(a)
    guided = a * _at_least_fp32(weight).sqrt()
    return gram_matrix(guided.contiguous(memory_format=torch.channels_last)) / mask_mass(weight, a)


def style_statistics(kind: str, a: torch.Tensor, weight: torch.Tensor | None = None) -> Statistics:
    """The target statistics of style activation `a` (1, n_C, n_H, n_W), positions weighted by `weight`."""
    if kind == "gram":
        return {"gram": guided_gram(a.detach(), weight)}
    raise ValueError(f"unknown style cost {kind!r}")


def blend_statistics(kind: str, stats: Sequence[Statistics], weights: Sequence[float]) -> Statistics:
    """The statistics of several style images blended with `weights` (summing to 1)."""
    if kind == "gram":  # a weighted mean of the normalised Grams
        return {"gram": sum(w * s["gram"] for w, s in zip(weights, stats, strict=True))}
    raise ValueError(f"unknown style cost {kind!r}")


def style_layer_cost(
    kind: str, a: torch.Tensor, target: Statistics, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """J_style[l] of each G of the batch `a` (B, n_C, n_H, n_W) against `target`, shape (B,).

    gram: the seed's J_style[l] = ‖Ĝ[l](S) − Ĝ[l](G)‖²_F / (2·n_C)² (`costs.style_cost_of_grams`), over
    the region `weight` covers when one is given.
    """
    if kind == "gram":
        return style_cost_of_grams(guided_gram(a, weight), target["gram"])
    raise ValueError(f"unknown style cost {kind!r}")
