"""The optimisation loop: minimise J(G) over the pixels of G by L-BFGS or Adam, coarse to fine.

Scope: inits, the per-step callback, cancellation and the best-image-so-far. Progress leaves the loop
only through `on_step(StepReport)`; logging and UI live with the callers. No Streamlit, no MLflow.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from PIL import Image

from engine import images
from engine.config import TransferConfig, check_style_images
from engine.costs import Costs, Objective
from engine.device import check_fits, enable_gpu_basics, pick_device
from engine.errors import InputError
from engine.vgg import LAYER_INDEX, VGGFeatures

LBFGS_RESTART_FACTOR = 10.0  # a cost this many times the best so far means L-BFGS overshot
MAX_NON_FINITE_STEPS = 3  # non-finite costs in a row before a run counts as diverged


@dataclass
class StepReport:
    """What the loop tells its caller after each iteration. `costs` are the costs of the G evaluated at
    this step (keys `total`, `content`, `style`, `style/<layer>`, `tv`), as plain floats."""

    step: int  # 1 … total_steps, across all scales
    total_steps: int
    size: tuple[int, int]  # (width, height) of G at this scale
    costs: dict[str, float]
    elapsed_s: float
    _image: Callable[[], Image.Image] = field(repr=False)

    def image(self) -> Image.Image:
        """The current G as an 8-bit RGB image (computed only when asked for)."""
        return self._image()


@dataclass
class TransferResult:
    image: Image.Image  # the best G seen (lowest total cost at the final scale)
    costs: dict[str, float]  # its costs
    steps_done: int
    total_steps: int
    elapsed_s: float
    device: str
    stopped: str | None = None  # None, "cancelled" or "diverged"


@functools.lru_cache(maxsize=4)
def _feature_net(layers: tuple[str, ...], source: str, pooling: str, device: str) -> VGGFeatures:
    # channels-last suits cuDNN and oneDNN alike (measured on this CPU: 274 against 307-342 ms for a
    # forward and backward at 256×192)
    return VGGFeatures(layers, source=source, pooling=pooling).to(device, memory_format=torch.channels_last)


def feature_net(config: TransferConfig, device: torch.device) -> VGGFeatures:
    """VGG19 cut after the deepest layer `config` reads, cached per (layers, weights, pooling, device)."""
    return _feature_net(config.layers, config.weights, config.pooling, str(device))


def initial_image(config: TransferConfig, content: torch.Tensor) -> torch.Tensor:
    """G₀: white noise (the seed), the content image, or `init_blend`·content + (1 − init_blend)·noise.

    Noise is uniform in [0, 1], drawn on the CPU from `config.seed`, so it is the same on every device.
    """
    generator = torch.Generator().manual_seed(config.seed)
    noise = torch.rand(content.shape, generator=generator).to(content.device)
    if config.init == "noise":
        return noise
    if config.init == "content":
        return content.clone()
    return config.init_blend * content + (1 - config.init_blend) * noise


def transfer(
    content: Image.Image,
    styles: Sequence[Image.Image],
    config: TransferConfig,
    *,
    on_step: Callable[[StepReport], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    device: str | torch.device | None = None,
) -> TransferResult:
    """Style `content` after `styles` (decoded RGB images) with `config`; see `Objective` for J(G).

    `should_stop()` is polled every iteration; when it returns True the run ends cleanly and the best
    image so far is returned with `stopped="cancelled"`.
    """
    check_style_images(config.style_blend, len(styles))
    device = torch.device(device) if device is not None else pick_device()
    if device.type == "cuda":
        enable_gpu_basics()
    deepest = max(config.layers, key=LAYER_INDEX.__getitem__)
    final_w, final_h = images.resize_long_side(content, config.size).size
    check_fits(final_h, final_w, deepest, device)
    net = feature_net(config, device)

    start = time.perf_counter()
    step = 0
    g: torch.Tensor | None = None
    best: tuple[torch.Tensor, Costs] | None = None
    stopped: str | None = None
    content_rgb = None
    for size, steps in config.schedule:
        content_rgb = images.image_to_tensor(images.resize_long_side(content, size)).to(device)
        content_in, styles_in = _network_inputs(content_rgb, styles, config, device)
        with torch.no_grad():
            objective = Objective(
                net(content_in),
                [net(s) for s in styles_in],
                content_layer=config.content_layer,
                lambdas=config.lambdas,
                alpha=config.alpha,
                beta=config.beta,
                tv_weight=config.tv_weight,
                style_blend=list(config.style_blend) or None,
            )
        if g is None:
            g = initial_image(config, content_in)
        else:  # coarse to fine: the previous scale's result, upsampled, starts this scale
            g = F.interpolate(best[0], size=content_in.shape[-2:], mode="bilinear", align_corners=False)
        non_finite_in_a_row = 0
        for point, costs in _iterations(g, objective, net, config, steps):
            step += 1
            floats = costs.as_floats()
            non_finite_in_a_row = 0 if math.isfinite(floats["total"]) else non_finite_in_a_row + 1
            if non_finite_in_a_row >= MAX_NON_FINITE_STEPS:
                stopped = "diverged"
                break
            if best is None or best[0].shape != point.shape or floats["total"] <= float(best[1].total[0]):
                best = (point, costs)
            if on_step is not None:
                on_step(
                    StepReport(
                        step=step,
                        total_steps=config.total_steps,
                        size=(point.shape[-1], point.shape[-2]),
                        costs=floats,
                        elapsed_s=time.perf_counter() - start,
                        _image=functools.partial(_to_output, point, content_rgb, config),
                    )
                )
            if should_stop is not None and should_stop():
                stopped = "cancelled"
                break
        if stopped:
            break

    if best is None:  # diverged on the very first step
        raise InputError("The optimisation diverged at once (non-finite cost). Lower lr or the weights.")
    return TransferResult(
        image=_to_output(best[0], content_rgb, config),
        costs=best[1].as_floats(),
        steps_done=step,
        total_steps=config.total_steps,
        elapsed_s=time.perf_counter() - start,
        device=str(device),
        stopped=stopped,
    )


def _network_inputs(
    content_rgb: torch.Tensor, styles: Sequence[Image.Image], config: TransferConfig, device: torch.device
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Content and style tensors as the network sees them; luminance only when preserving colours."""
    style_size = max(round(max(content_rgb.shape[-2:]) * config.style_scale), 16)
    styles_rgb = [images.image_to_tensor(images.resize_long_side(s, style_size)).to(device) for s in styles]
    if not config.preserve_colors:
        return content_rgb, styles_rgb
    # Gatys et al. 2016 (colour preservation): transfer on luminance, style's luminance matched to C's.
    content_y = images.luminance(content_rgb)
    styles_y = [images.match_luminance(images.luminance(s), content_y) for s in styles_rgb]
    return content_y.expand(-1, 3, -1, -1).contiguous(), [y.expand(-1, 3, -1, -1).contiguous() for y in styles_y]


def _iterations(
    g0: torch.Tensor, objective: Objective, net: VGGFeatures, config: TransferConfig, steps: int
) -> Iterator[tuple[torch.Tensor, Costs]]:
    """Optimise G from `g0`, yielding (the G evaluated at this iteration, its costs) once per iteration."""
    g = g0.contiguous()  # plain layout: torch's L-BFGS flattens the gradient with .view(-1)
    g.requires_grad_(True)
    optimizer = _make_optimizer(config, g)
    evaluated: list[tuple[torch.Tensor, Costs]] = []

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        costs = objective(net(g.contiguous(memory_format=torch.channels_last)), g)
        costs.total.sum().backward()
        evaluated.append((g.detach().clone(), _detach(costs)))
        return costs.total.sum()

    best_total, best_point = math.inf, None
    for _ in range(steps):
        optimizer.step(closure)  # L-BFGS and Adam both evaluate the closure once per iteration here
        if config.optimizer == "adam":
            with torch.no_grad():
                g.clamp_(0, 1)
        point, costs = evaluated.pop()
        total = float(costs.total.sum())
        if total < best_total:
            best_total, best_point = total, point
        elif config.optimizer == "lbfgs" and not total < LBFGS_RESTART_FACTOR * best_total:
            # Without a line search, L-BFGS can step far uphill (even to inf): go back to the best G and
            # restart with an empty history, whose first step is a short gradient step.
            with torch.no_grad():
                g.copy_(best_point)
            optimizer = _make_optimizer(config, g)
        yield point, costs


def _make_optimizer(config: TransferConfig, g: torch.Tensor) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam([g], lr=config.lr)
    # One iteration per `step()` call, so the callback and the cancel check run between iterations;
    # negative tolerances keep L-BFGS from stopping early on its own.
    return torch.optim.LBFGS(
        [g], lr=config.lr, max_iter=1, history_size=100, tolerance_grad=-1, tolerance_change=-1
    )


def _detach(costs: Costs) -> Costs:
    return Costs(
        total=costs.total.detach(),
        content=costs.content.detach(),
        style=costs.style.detach(),
        style_layers={k: v.detach() for k, v in costs.style_layers.items()},
        tv=costs.tv.detach(),
    )


def _to_output(g: torch.Tensor, content_rgb: torch.Tensor, config: TransferConfig) -> Image.Image:
    """G as the user sees it: with the content's colours put back when preserving colours."""
    if config.preserve_colors:
        g = images.combine_luminance_with_colours(g.expand(-1, 3, -1, -1), content_rgb)
    return images.tensor_to_image(g)
