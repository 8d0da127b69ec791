"""Exact tiled evaluation of J(G) and its gradient, so memory does not grow with the output size.

Scope: the tile grid, the receptive-field halo, the whole image's Grams and content activations taken tile
by tile, and the two-pass iteration whose gradient equals the whole image's. Torch only.

Why it is exact. Every Gram is a sum over positions, G[l] = Σ_t F_tᵀF_t, where F_t holds the activations
at the positions a tile t owns (its *interior*). A tile is fed to the network with a *halo* of
surrounding pixels at least as wide as the receptive field of the deepest layer read, so its interior
activations equal the whole image's. One iteration then goes:

1. no gradient, tile by tile: Ĝ[l] = Σ_t F_tᵀF_t / (n_H·n_W) and J_content = Σ_t ½‖a_t(C) − a_t(G)‖²;
2. J(G) from those statistics, and M[l] = ∂J/∂Ĝ[l] and w = ∂J/∂J_content by autograd on them (no network);
3. per tile, back-propagate the surrogate s_t = Σ_l ⟨M[l], F_tᵀF_t / (n_H·n_W)⟩ + w·J_content,t, with M[l]
   and w held fixed. Its gradient is ∂s_t/∂F_t = F_t(M[l] + M[l]ᵀ)/(n_H·n_W) = ∂J/∂F_t, the whole image's
   chain rule through Ĝ[l]; the pixel gradients of overlapping halos are added together.

Tiles start on the pooling grid of the deepest layer (a multiple of its stride), so each tile pools the
same 2×2 blocks as the whole image does.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from engine.core.costs import Costs, Objective, content_cost, gram_matrix, tv_cost
from engine.core.vgg import VGGFeatures, deepest_layer, layer_stride

CHANNELS_LAST = torch.channels_last  # the network's layout; `costs.gram_matrix` reads it without a copy
MIN_TILE = 64  # below this a tile is mostly halo
# Network work of a tiled iteration, in untiled iterations (a forward and a backward) per tile: pass 1 is
# one forward, pass 2 a forward and a backward, and a backward costs about twice a forward.
TILED_PASSES = 4 / 3


@dataclass(frozen=True)
class Tile:
    """One tile, in whole-image pixels: it owns rows y0…y1 and columns x0…x1 (`inner`) and is fed to the
    network with its halo (`outer`, clipped at the image's borders)."""

    inner: tuple[int, int, int, int]  # y0, y1, x0, x1
    outer: tuple[int, int, int, int]

    def pixels(self, image: torch.Tensor) -> torch.Tensor:
        y0, y1, x0, x1 = self.outer
        return image[..., y0:y1, x0:x1]

    def owned(self, activation: torch.Tensor, layer: str) -> torch.Tensor:
        """The positions of `activation` (this tile's, at `layer`) that the tile owns."""
        stride = layer_stride(layer)
        (y0, y1, x0, x1), (oy, _, ox, _) = self.inner, self.outer
        return activation[..., (y0 - oy) // stride : (y1 - oy) // stride, (x0 - ox) // stride : (x1 - ox) // stride]

    def owned_of_whole(self, activation: torch.Tensor, layer: str) -> torch.Tensor:
        """The same positions in the whole image's `activation` at `layer`."""
        stride = layer_stride(layer)
        y0, y1, x0, x1 = self.inner
        return activation[..., y0 // stride : y1 // stride, x0 // stride : x1 // stride]


def tile_grid(height: int, width: int, tile_size: int, halo: int, grid: int) -> list[Tile]:
    """Tiles of about `tile_size` px covering height × width, their borders on multiples of `grid` (the
    deepest layer's stride), each with `halo` px (rounded up to `grid`) on every side inside the image."""
    halo = math.ceil(halo / grid) * grid

    def cuts(length: int) -> list[int]:
        count = max(1, math.ceil(length / max(tile_size, MIN_TILE)))
        inner = [round(i * length / count / grid) * grid for i in range(count)] + [length]
        return sorted(set(inner))

    rows, cols = cuts(height), cuts(width)
    return [
        Tile((y0, y1, x0, x1), (max(0, y0 - halo), min(height, y1 + halo), max(0, x0 - halo), min(width, x1 + halo)))
        for y0, y1 in itertools.pairwise(rows)
        for x0, x1 in itertools.pairwise(cols)
    ]


def positions(layer: str, height: int, width: int) -> int:
    """n_H·n_W of `layer` for a height × width input."""
    stride = layer_stride(layer)
    return (height // stride) * (width // stride)


@torch.no_grad()
def tiled_grams(net: VGGFeatures, image: torch.Tensor, layers: Sequence[str], tiles: Sequence[Tile]) -> dict:
    """Ĝ[l] = Σ_t F_tᵀF_t / (n_H·n_W) of the whole `image` for each of `layers`, tile by tile: the
    normalised Grams (`costs.normalised_gram`) the untiled pass would give."""
    sums: dict[str, torch.Tensor] = {}
    for tile in tiles:
        features = net(tile.pixels(image).contiguous(memory_format=CHANNELS_LAST))
        for layer in layers:
            gram = gram_matrix(tile.owned(features[layer], layer).contiguous(memory_format=CHANNELS_LAST))
            sums[layer] = gram if layer not in sums else sums[layer] + gram
    h, w = image.shape[-2:]
    return {layer: gram / positions(layer, h, w) for layer, gram in sums.items()}


@torch.no_grad()
def tiled_activation(net: VGGFeatures, image: torch.Tensor, layer: str, tiles: Sequence[Tile]) -> torch.Tensor:
    """The whole `image`'s activation at `layer`, assembled from the tiles' interiors."""
    h, w = image.shape[-2:]
    stride = layer_stride(layer)
    out: torch.Tensor | None = None
    for tile in tiles:
        owned = tile.owned(net(tile.pixels(image).contiguous(memory_format=CHANNELS_LAST))[layer], layer)
        if out is None:
            out = owned.new_zeros(*owned.shape[:2], h // stride, w // stride)
        tile.owned_of_whole(out, layer).copy_(owned)
    return out


def seam_ratio(image: np.ndarray, cuts_y: Sequence[int], cuts_x: Sequence[int]) -> float:
    """How visible tile borders are in an (H, W, C) image: the mean squared difference between neighbouring
    pixels across the rows `cuts_y` and columns `cuts_x` where tiles meet, over the same across every other
    row and column. 1 means the borders look like anywhere else."""
    img = image.astype(np.float64)
    dy = ((img[1:] - img[:-1]) ** 2).mean(axis=(1, 2))  # dy[i]: between rows i and i+1
    dx = ((img[:, 1:] - img[:, :-1]) ** 2).mean(axis=(0, 2))
    border_y, border_x = [c - 1 for c in cuts_y], [c - 1 for c in cuts_x]
    on = np.concatenate([dy[border_y], dx[border_x]])
    off = np.concatenate([np.delete(dy, border_y), np.delete(dx, border_x)])
    return float(on.mean() / off.mean())


class Interrupted(Exception):
    """`should_stop` said yes between two tiles: the iteration was left unfinished."""


def tiled_costs_and_gradient(
    x: torch.Tensor,
    objective: Objective,
    net: VGGFeatures,
    tiles: Sequence[Tile],
    images: slice,
    autocast: Callable[[], object],
    should_stop: Callable[[], bool] | None = None,
) -> tuple[Costs, torch.Tensor]:
    """J(G) of the batch `x` (the batch's images `images`) and ∂J/∂x, tile by tile (module docstring).

    `autocast()` gives the context each network pass runs in (bf16 convolutions on a GPU). `should_stop()`
    is asked before each tile, so a large iteration (minutes) can be cancelled within a tile's time; it
    raises `Interrupted`.
    """

    def check() -> None:
        if should_stop is not None and should_stop():
            raise Interrupted

    count, (h, w) = len(x), x.shape[-2:]
    reach = [deepest_layer(layers) for layers in objective.layers_read(count, images)]
    reading = {layer: objective.rows_reading(layer, count, images) for layer in objective.style_layers}
    rows = {layer: (first, end) for layer, (first, end, _) in reading.items() if end > first}
    weighed = {layer for layer, (_, _, weighs) in reading.items() if weighs}
    content_layer = objective.content_layer

    def tile_statistics(
        tile: Tile, pixels: torch.Tensor, layers: Collection[str]
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """This tile's unnormalised Grams F_tᵀF_t for `layers` (the rows reading each) and its content cost."""
        with autocast():
            features = net(pixels.contiguous(memory_format=CHANNELS_LAST), reach)
        grams = {
            layer: gram_matrix(tile.owned(features[layer][first:end], layer).contiguous(memory_format=CHANNELS_LAST))
            for layer, (first, end) in rows.items()
            if layer in layers
        }
        target = tile.owned_of_whole(objective.content_target, content_layer)
        return grams, content_cost(tile.owned(features[content_layer], content_layer), target)

    # Pass 1: the whole image's statistics.
    sums: dict[str, torch.Tensor] = {}
    content = x.new_zeros(count, dtype=torch.float32)
    with torch.no_grad():
        for tile in tiles:
            check()
            grams, tile_content = tile_statistics(tile, tile.pixels(x), rows)
            for layer, gram in grams.items():
                sums[layer] = gram if layer not in sums else sums[layer] + gram
            content += tile_content

    # J(G) from the statistics; autograd gives M[l] = ∂J/∂Ĝ[l], w = ∂J/∂J_content and TV's pixel gradient.
    grams = {layer: (gram / positions(layer, h, w)).requires_grad_(True) for layer, gram in sums.items()}
    content.requires_grad_(True)
    whole = x.detach().requires_grad_(True)
    costs = objective.costs_from_statistics(grams, content, tv_cost(whole), images)
    leaves = [*grams.values(), content, whole]
    *gram_weights, content_weight, grad = torch.autograd.grad(costs.total.sum(), leaves, materialize_grads=True)
    weights = dict(zip(grams, gram_weights, strict=True))

    # Pass 2: per tile, the surrogate Σ_l ⟨M[l], F_tᵀF_t/(n_H·n_W)⟩ + w·J_content,t, M and w fixed.
    for tile in tiles:
        check()
        pixels = tile.pixels(x).detach().requires_grad_(True)
        tile_grams, tile_content = tile_statistics(tile, pixels, weighed)  # a layer only reported has M[l] = 0
        surrogate = (content_weight * tile_content).sum()
        for layer, gram in tile_grams.items():
            surrogate = surrogate + (weights[layer] * gram).sum() / positions(layer, h, w)
        (tile_grad,) = torch.autograd.grad(surrogate, pixels)
        tile.pixels(grad).add_(tile_grad)
    return _detached(costs), grad


def _detached(costs: Costs) -> Costs:
    return Costs(
        total=costs.total.detach(),
        content=costs.content.detach(),
        style=costs.style.detach(),
        style_layers={layer: value.detach() for layer, value in costs.style_layers.items()},
        tv=costs.tv.detach(),
    )

