"""The seed's costs (Gatys et al.): content cost, style (Gram) matrix, per-layer style cost, total variation.

Scope: pure tensor maths, each function citing the formula it implements, plus `Objective`, which holds
the targets and sums the terms into J(G). Every cost is returned per image of the batch, shape (B,), so
a batch of G's (a λ sweep) gets one value each. Costs are computed in fp32 even when the network runs in
bf16: Gram entries are sums over n_H·n_W products and lose too much precision otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine.core.vgg import layer_channels, layer_stride

WEIGHT_REFERENCE_SIZE = 256  # β is given for an output this long on its long side (params version 2)


def _at_least_fp32(a: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 activations -> fp32; fp32 and fp64 stay as they are (fp64 for gradcheck)."""
    return a.to(torch.promote_types(a.dtype, torch.float32))


def content_cost(a_generated: torch.Tensor, a_content: torch.Tensor) -> torch.Tensor:
    """J_content(C, G) = ½ ‖a[l](C) − a[l](G)‖², summed over all n_H·n_W·n_C activations of layer l."""
    diff = _at_least_fp32(a_content) - _at_least_fp32(a_generated)
    return 0.5 * diff.pow(2).flatten(1).sum(1)


def content_activations(layer: str, height: int, width: int) -> int:
    """n_H·n_W·n_C of `layer` for a (height × width) input: the count J_content sums over (each pooling
    halves a side, rounding down)."""
    stride = layer_stride(layer)
    return layer_channels(layer) * max(height // stride, 1) * max(width // stride, 1)


def size_aware_beta(beta: float, content_layer: str, height: int, width: int) -> float:
    """β_eff = β · N_l(H, W) / N_l(H_ref, W_ref), with N_l = `content_activations` of the content layer and
    (H_ref, W_ref) the same aspect at a long side of `WEIGHT_REFERENCE_SIZE` px.

    J_content is a sum over N_l activations and grows with the pixel count, while every J_style[l] is
    normalised; scaling β by the same count keeps α·J_content and β·J_style in one ratio at every size.
    At 256 px β_eff = β, so β means what it meant before size-aware weights.
    """
    scale = WEIGHT_REFERENCE_SIZE / max(height, width)
    ref_h, ref_w = max(1, round(height * scale)), max(1, round(width * scale))
    return beta * content_activations(content_layer, height, width) / content_activations(content_layer, ref_h, ref_w)


def gram_matrix(a: torch.Tensor, bands: int | None = None) -> torch.Tensor:
    """Style matrix of a layer: G_kk' = Σ_i Σ_j a_ijk · a_ijk', shape (B, n_C, n_C).

    `a` has shape (B, n_C, n_H, n_W); i, j run over n_H and n_W. `bands` (a divisor of n_H) overrides
    how many row bands a channels-last `a` is summed in.
    """
    a = _at_least_fp32(a)
    if a.dim() == 4 and a.is_contiguous(memory_format=torch.channels_last):
        b, c, h, w = a.shape
        # (B·k, n_H·n_W / k, n_C), a view of channels-last memory. On a GPU the sum over i, j is split
        # into k row bands and their Grams added: one long product of (n_C × 49k)·(49k × n_C) keeps only a
        # few of its cores busy (0.49 ms of a 5 ms iteration on an H200, measured).
        k = bands or (_row_bands(h, w) if a.is_cuda else 1)
        x = a.permute(0, 2, 3, 1).reshape(b * k, h // k * w, c)
        return (x.transpose(1, 2) @ x).view(b, k, c, c).sum(1)
    f = a.flatten(2)  # (B, n_C, n_H·n_W)
    return f @ f.transpose(1, 2)


def _row_bands(height: int, width: int, rows_per_band: int = 4096) -> int:
    """The largest divisor k of `height` that leaves bands of at least `rows_per_band` positions."""
    return max(
        k for k in range(1, height + 1) if height % k == 0 and height // k * width >= min(rows_per_band, height * width)
    )


def normalised_gram(a: torch.Tensor) -> torch.Tensor:
    """G[l] / (n_H·n_W): the Gram matrix per spatial position, so images of different sizes compare."""
    return gram_matrix(a) / (a.shape[-2] * a.shape[-1])


def style_layer_cost(a_generated: torch.Tensor, target_normalised_gram: torch.Tensor) -> torch.Tensor:
    """J_style[l](S, G) = ‖G[l](S) − G[l](G)‖²_F / (2·n_H·n_W·n_C)².

    The seed writes the normaliser without the square; we keep Gatys et al.'s square (1/(4·N²·M²)).
    Computed as ‖G(S)/(n_H·n_W) − G(G)/(n_H·n_W)‖²_F / (2·n_C)², which is the same number when S and G
    have the same size at layer l, and stays meaningful when the style image is scaled differently
    (each Gram is divided by its own n_H·n_W).
    """
    return style_cost_of_grams(normalised_gram(a_generated), target_normalised_gram)


def style_cost_of_grams(generated_normalised_gram: torch.Tensor, target_normalised_gram: torch.Tensor) -> torch.Tensor:
    """J_style[l] = ‖Ĝ[l](S) − Ĝ[l](G)‖²_F / (2·n_C)², with Ĝ = G/(n_H·n_W) (see `style_layer_cost`)."""
    n_c = generated_normalised_gram.shape[-1]
    diff = target_normalised_gram - generated_normalised_gram
    return diff.pow(2).flatten(1).sum(1) / (2.0 * n_c) ** 2


def tv_cost(image: torch.Tensor) -> torch.Tensor:
    """Total variation (squared, so smooth): Σ_ij (x_i+1,j − x_ij)² + (x_i,j+1 − x_ij)², over channels too."""
    x = _at_least_fp32(image)
    dh = (x[..., 1:, :] - x[..., :-1, :]).pow(2).flatten(1).sum(1)
    dw = (x[..., :, 1:] - x[..., :, :-1]).pow(2).flatten(1).sum(1)
    return dh + dw


@dataclass(frozen=True)
class Costs:
    """Every term of J(G) for each image of the batch, each of shape (B,)."""

    total: torch.Tensor
    content: torch.Tensor
    style: torch.Tensor  # Σ_l λ[l]·J_style[l]
    style_layers: dict[str, torch.Tensor]  # J_style[l], unweighted
    tv: torch.Tensor

    def as_floats(self, index: int = 0) -> dict[str, float]:
        """Plain floats for image `index`, keyed as in the tracking contract (`style/<layer>` etc.)."""
        out = {"total": self.total, "content": self.content, "style": self.style, "tv": self.tv}
        out |= {f"style/{layer}": value for layer, value in self.style_layers.items()}
        return {k: float(v[index]) for k, v in out.items()}


Weight = float | Sequence[float]  # one value for every image of the batch, or one per image



def blend_weights(style_blend: Sequence[float] | None, count: int) -> list[float]:
    """The style images' shares of the style target, summing to 1: `style_blend` normalised, or equal
    shares of `count` images when none is given."""
    blend = list(style_blend or ()) or [1.0] * count
    return [w / sum(blend) for w in blend]

class Objective(nn.Module):
    """J(G) = α·J_content(C, G) + β·Σ_l λ[l]·J_style[l](S, G) + tv_weight·TV(G).

    Targets (C's activations at the content layer, S's normalised Grams) are buffers computed once.
    Several style images blend by a weighted mean of their normalised Grams (weights sum to 1).
    Each weight (α, β, tv_weight, every λ[l]) is one number, or one per image of the batch: a batched
    λ sweep optimises B images against the same targets, each with its own weights.
    `style_grams` gives each style image's normalised Grams Ĝ[l] directly (taken tile by tile for a
    large image) in place of its activations in `style_features`.
    """

    def __init__(
        self,
        content_features: Mapping[str, torch.Tensor],
        style_features: list[Mapping[str, torch.Tensor]],
        *,
        content_layer: str,
        lambdas: Mapping[str, Weight],
        alpha: Weight,
        beta: Weight,
        tv_weight: Weight = 0.0,
        style_blend: list[float] | None = None,
        reported: Mapping[str, Sequence[bool]] | None = None,
        style_grams: list[Mapping[str, torch.Tensor]] | None = None,
    ):
        super().__init__()
        self.content_layer = content_layer
        self.style_layers = tuple(lambdas)
        device = content_features[content_layer].device
        weight = lambda value: torch.as_tensor(value, dtype=torch.float32, device=device)  # noqa: E731
        self.register_buffer("alpha", weight(alpha))
        self.register_buffer("beta", weight(beta))
        self.register_buffer("tv_weight", weight(tv_weight))
        if style_grams is None:
            style_grams = [{layer: normalised_gram(f[layer].detach()) for layer in lambdas} for f in style_features]
        blend = blend_weights(style_blend, len(style_grams))
        self.register_buffer("content_target", content_features[content_layer].detach().float())
        # On the host too: which images weigh (or report) a layer decides what a pass computes, and
        # reading that from the device would stall it every iteration.
        self._lambdas = {
            layer: value if isinstance(value, float | int) else tuple(value) for layer, value in lambdas.items()
        }
        self._reported = {layer: tuple(flags) for layer, flags in (reported or {}).items()}
        for layer, value in lambdas.items():
            self.register_buffer(f"lambda_{layer}", weight(value))
            target = sum(w * grams[layer] for w, grams in zip(blend, style_grams, strict=True))
            self.register_buffer(f"gram_{layer}", target)

    @property
    def cost_keys(self) -> tuple[str, ...]:
        """Keys of `Costs.style_layers`: the style layers."""
        return self.style_layers

    def _images_reading(self, layer: str, count: int, images: slice) -> tuple[list[bool], list[bool]]:
        """For the `count` images `images` of the batch: (weighs `layer`, reads `layer`). An image reads
        a layer it weighs, or one it reports although its λ there is 0."""
        value = self._lambdas[layer]
        weighs = [v != 0 for v in value[images]] if isinstance(value, tuple) else [value != 0] * count
        reports = list(self._reported[layer][images]) if layer in self._reported else [True] * count
        return weighs, [w or r for w, r in zip(weighs, reports, strict=True)]

    def layers_read(self, count: int, images: slice = slice(None)) -> list[tuple[str, ...]]:
        """For each of the `count` images `images` of the batch, the layers its costs read."""
        reading = {layer: self._images_reading(layer, count, images)[1] for layer in self.style_layers}
        return [
            tuple(dict.fromkeys([self.content_layer, *(layer for layer, reads in reading.items() if reads[i])]))
            for i in range(count)
        ]

    def rows_reading(self, layer: str, count: int, images: slice = slice(None)) -> tuple[int, int, bool]:
        """(first, end, weighed): the run of the pass's `count` images, from the first to the last that
        reads `layer` (end = first when none does), and whether any of them weighs it."""
        weighs, reads = self._images_reading(layer, count, images)
        rows = [i for i, r in enumerate(reads) if r]
        if not rows:
            return 0, 0, False
        first, end = rows[0], rows[-1] + 1
        return first, end, any(weighs[first:end])

    def forward(self, features: Mapping[str, torch.Tensor], image: torch.Tensor, images: slice = slice(None)) -> Costs:
        """The costs of `image`, which holds the batch's images `images` (all by default).

        A style layer's activation may hold only the first images of the pass (see
        `VGGFeatures.forward`'s `reach`): its Grams are computed for the run of images that read the
        layer, and the others' costs there are 0, which their λ = 0 makes them count as anyway.
        """
        grams = {}
        for layer in self.style_layers:
            first, end, weighed = self.rows_reading(layer, len(image), images)
            if end == first:
                continue
            activation = features[layer]
            if (first, end) != (0, len(activation)):  # a slice costs a zero-filled copy in the backward
                activation = activation[first:end]
            grams[layer] = normalised_gram(activation if weighed else activation.detach())
        content = content_cost(features[self.content_layer], self.content_target)
        return self.costs_from_statistics(grams, content, tv_cost(image), images)

    def costs_from_statistics(
        self, grams: Mapping[str, torch.Tensor], content: torch.Tensor, tv: torch.Tensor, images: slice = slice(None)
    ) -> Costs:
        """J(G) from G's statistics: Ĝ[l] of the images reading each style layer (see `rows_reading`; a
        layer no image reads is absent), J_content and TV, each (B,) for the batch's images `images`."""
        count = len(content)

        def weight(name: str) -> torch.Tensor:
            value = getattr(self, name)
            return value[images] if value.dim() else value

        per_layer = {}
        for layer in self.style_layers:
            first, end, _ = self.rows_reading(layer, count, images)
            if layer not in grams:
                per_layer[layer] = content.new_zeros(count, dtype=torch.float32)
                continue
            cost = style_cost_of_grams(grams[layer], getattr(self, f"gram_{layer}"))
            per_layer[layer] = cost if (first, end) == (0, count) else F.pad(cost, (first, count - end))
        style = sum(weight(f"lambda_{layer}") * cost for layer, cost in per_layer.items())
        if not per_layer:
            style = torch.zeros_like(content)
        total = weight("alpha") * content + weight("beta") * style + weight("tv_weight") * tv
        return Costs(total=total, content=content, style=style, style_layers=per_layer, tv=tv)
