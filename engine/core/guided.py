"""J(G) with regions (a mask) and any of the style costs of `engine.core.style_costs`.

Scope: `GuidedObjective`, the objective of every run that `costs.Objective` (the seed's Gram cost over
the whole image, which tiling relies on) does not cover. It has the same interface: `content_layer`,
`cost_keys`, `layers_read(count, images)` and `forward(features, image, images) -> Costs`. Torch only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from engine.core.costs import Costs, _at_least_fp32, content_cost, tv_cost
from engine.core.regions import layer_maps
from engine.core.style_costs import Statistics, blend_statistics, style_layer_cost, style_statistics
from engine.core.vgg import LAYER_INDEX

Weight = float | Sequence[float]


@dataclass
class StyleTerm:
    """One region's style (or the whole image's, `name` ""): which style images, blended how, and its
    weights per image of the batch. `index` is the region's row of the maps (None: no mask)."""

    name: str
    index: int | None
    styles: Sequence[int]  # 0-based style images
    blend: Sequence[float]  # summing to 1
    beta: Weight  # effective β (size-aware) of this term
    lambdas: Mapping[str, Weight]  # λ[l] per style layer it may read (0 where an image does not)


class GuidedObjective(nn.Module):
    """J(G) = ½·Σ_ij α_ij·‖a_ij(C) − a_ij(G)‖² + Σ_r β_r·Σ_l λ_r[l]·w_r[l]·J_style,r[l] + tv_weight·TV(G)

    - α_ij = Σ_r α_r·m_r,ij: each region's content weight on its positions of the content layer (with every
      α_r = α this is the seed's α·J_content, since the maps sum to 1 at every position);
    - J_style,r[l]: the chosen cost (`style_costs.style_layer_cost`) over region r's positions, against
      the statistics of r's style images (guided Grams, Gatys et al. 2017, for the Gram cost);
    - w_r[l] = Σ_ij m_r[l]_ij / (n_H·n_W): the region's share of layer l. Each guided statistic is a mean
      over the region, so this share gives a region's pixels the pull they would have if the whole image
      took its style: a small region is not stylised harder than a large one.

    Without maps there is one term over the whole image (w = 1), and J(G) is `costs.Objective`'s with
    the chosen cost in place of the Gram cost. Costs reported: `content` is the seed's J_content over
    the whole image; `style` = Σ_r w_r·Σ_l λ_r[l]·J_style,r[l] (β left out, so that total = α·content +
    β·style + tv when every region has the run's weights); `style_layers` has `<layer>` = Σ_r w_r[l]·
    J_style,r[l] over the styled regions, and `<region>/<layer>` = J_style,r[l] itself.
    """

    def __init__(
        self,
        content_features: Mapping[str, torch.Tensor],
        style_features: Sequence[Mapping[str, torch.Tensor]],
        *,
        kind: str,
        content_layer: str,
        terms: Sequence[StyleTerm],
        alpha: Weight | Sequence[Weight],
        tv_weight: Weight = 0.0,
        maps: torch.Tensor | None = None,
        style_maps: Sequence[torch.Tensor | None] = (),
    ):
        """`alpha`: the run's α (one weight) without maps, else one weight per region row of `maps`
        ((R, 1, H, W) at G's size, summing to 1 at every pixel). `style_maps`: per style image, None or
        its own region maps at its size: a region's target is then taken over its part of that image."""
        super().__init__()
        self.kind, self.content_layer, self.terms = kind, content_layer, list(terms)
        device = content_features[content_layer].device
        self._weight = lambda value: torch.as_tensor(value, dtype=torch.float32, device=device)
        self.content_target = _at_least_fp32(content_features[content_layer].detach())
        self.tv_weight = self._weight(tv_weight)
        self.style_layers = tuple(
            sorted({layer for t in self.terms for layer in t.lambdas}, key=LAYER_INDEX.__getitem__)
        )
        if maps is None:
            self.alpha = self._weight(alpha)
        else:  # α per content-layer position and image: Σ_r α_r·m_r
            region_maps = layer_maps(maps.to(device), content_layer)  # (R, 1, h, w)
            alphas = torch.stack([self._weight(a).expand(self._batch(alpha)) for a in alpha])  # (R, B)
            self.alpha = torch.einsum("rb,rxhw->bxhw", alphas, region_maps)
        # weights as tensors once: a host-to-device copy per iteration would stall a GPU (and a CUDA graph)
        self.betas = {t.name: self._weight(t.beta) for t in self.terms}
        self.lambda_weights = {
            (t.name, layer): self._weight(lam) for t in self.terms for layer, lam in t.lambdas.items()
        }
        self.targets: dict[tuple[str, str], Statistics] = {}
        self.shares: dict[tuple[str, str], float] = {}
        self.masks: dict[tuple[str, str], torch.Tensor | None] = {}
        for term in self.terms:
            for layer in term.lambdas:
                mask = None if maps is None else layer_maps(maps[term.index : term.index + 1], layer).to(device)
                share = 1.0 if mask is None else float(mask.mean())
                self.masks[term.name, layer], self.shares[term.name, layer] = mask, share
                stats = [
                    style_statistics(kind, style_features[i][layer], self._style_weight(style_maps, i, term, layer))
                    for i in term.styles
                ]
                self.targets[term.name, layer] = blend_statistics(kind, stats, term.blend)

    @staticmethod
    def _style_weight(style_maps, image: int, term: StyleTerm, layer: str) -> torch.Tensor | None:
        """Region `term`'s map on style image `image` at `layer`, when that image has a mask."""
        maps = style_maps[image] if image < len(style_maps) else None
        return None if maps is None or term.index is None else layer_maps(maps[term.index : term.index + 1], layer)

    @staticmethod
    def _batch(alpha) -> int:
        sizes = [len(a) for a in alpha if not isinstance(a, float | int)]
        return max(sizes, default=1)

    @property
    def cost_keys(self) -> tuple[str, ...]:
        """Keys of `Costs.style_layers`, in order: every layer, then `<region>/<layer>` per region."""
        named = [f"{t.name}/{layer}" for t in self.terms if t.name for layer in t.lambdas]
        return (*self.style_layers, *named)

    def layers_read(self, count: int, images: slice = slice(None)) -> list[tuple[str, ...]]:
        return [(self.content_layer, *self.style_layers)] * count

    def forward(self, features: Mapping[str, torch.Tensor], image: torch.Tensor, images: slice = slice(None)) -> Costs:
        count = len(image)

        def pick(value: torch.Tensor) -> torch.Tensor:
            return value[images] if value.dim() else value

        content = content_cost(features[self.content_layer], self.content_target)
        if self.alpha.dim() == 4:  # ½·Σ α_ij·‖Δa_ij‖², per image
            diff = _at_least_fp32(features[self.content_layer]) - self.content_target
            weighted_content = 0.5 * (self.alpha[images] * diff.pow(2)).flatten(1).sum(1)
        else:
            weighted_content = pick(self.alpha) * content
        zero = content.new_zeros(count)
        per_layer = {layer: zero for layer in self.style_layers}
        named: dict[str, torch.Tensor] = {}
        style, weighted_style = zero, zero
        for term in self.terms:
            for layer in term.lambdas:
                share = self.shares[term.name, layer]
                if share == 0:  # a region too small to cover one position of this layer
                    cost = zero
                else:
                    mask = self.masks[term.name, layer]
                    cost = style_layer_cost(self.kind, features[layer], self.targets[term.name, layer], mask)
                lam = pick(self.lambda_weights[term.name, layer])
                per_layer[layer] = per_layer[layer] + share * cost
                style = style + lam * share * cost
                weighted_style = weighted_style + pick(self.betas[term.name]) * lam * share * cost
                if term.name:
                    named[f"{term.name}/{layer}"] = cost
        tv = tv_cost(image)
        total = weighted_content + weighted_style + pick(self.tv_weight) * tv
        return Costs(total=total, content=content, style=style, style_layers=per_layer | named, tv=tv)
