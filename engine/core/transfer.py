"""The optimisation loop: minimise J(G) over the pixels of G by L-BFGS or Adam, optionally coarse to
fine, for one G or a batch of them (a λ sweep) with per-image weights and optimizer state.

Scope: inits, the per-step callback, cancellation and the best-image-so-far, and the GPU fast path
(bf16 convolutions, CUDA-graph replay, no host waits). Progress leaves the loop only through
`on_step(StepReport)`; logging and UI live with the callers. No Streamlit, no MLflow.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from PIL import Image

from engine.core import images
from engine.core.config import TransferConfig, check_style_images, dominant_style
from engine.core.costs import Costs, Objective, blend_weights
from engine.core.device import (
    MEMORY_SHARE,
    ScalePlan,
    available_bytes,
    check_fits,
    enable_gpu_basics,
    estimate_run_bytes,
    pick_device,
    plan_scale,
    uses_bf16,
)
from engine.core.errors import InputError
from engine.core.guided import GuidedObjective, StyleTerm
from engine.core.lbfgs import BatchedLBFGS
from engine.core.regions import check_mask_fits, region_maps
from engine.core.tiling import (
    Interrupted,
    Tile,
    tile_grid,
    tiled_activation,
    tiled_costs_and_gradient,
    tiled_grams,
)
from engine.core.vgg import LAYER_INDEX, VGGFeatures, deepest_layer, layer_stride

log = logging.getLogger(__name__)

CUDA_GRAPHS = True  # replay each L-BFGS iteration as a CUDA graph on GPUs (benchmarks switch it off to compare)
GRAPH_WARMUP = 3  # eager iterations before capture: cuDNN autotuning and the allocator settle in them
# On a GPU a batch goes through the network in one pass. On the CPU it goes one image at a time:
# batched passes were slower per image (2 threads, 256 px: 1/2/4/8 images per pass took 213/226/233/302
# ms per image and iteration), so there a batch shares only the set-up. (Tests raise this to run the
# GPU's one-pass path on the CPU.)
CPU_IMAGES_PER_PASS = 1
LBFGS_RESTART_FACTOR = 10.0  # a cost this many times the best so far means L-BFGS overshot
MAX_NON_FINITE_STEPS = 3  # non-finite costs in a row before a run counts as diverged
PREVIEW_MAX_SIDE = 1024  # snapshots and live previews of a large G are shrunk to this; the result is not
ADAIN_MAX_SIDE = 1024  # a larger G₀ from AdaIN is computed at this size and enlarged (its encoder is untiled)


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

    def preview(self, max_side: int = PREVIEW_MAX_SIDE) -> Image.Image:
        """`image()`, shrunk to at most `max_side` px on its long side: what snapshots and live pages show."""
        img = self.image()
        if max(img.size) <= max_side:
            return img
        img = img.copy()
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        return img


@dataclass
class TransferResult:
    image: Image.Image  # the best G seen (lowest total cost at the final scale)
    costs: dict[str, float]  # its costs
    steps_done: int
    total_steps: int
    elapsed_s: float
    device: str
    stopped: str | None = None  # None, "cancelled" or "diverged"
    memory_plan: str = ""  # how the output scale ran: untiled, or by tiles (`device.ScalePlan.describe`)
    pixels: torch.Tensor | None = field(default=None, repr=False)  # `image` in fp32 on the CPU, (1, 3, H, W)


@functools.lru_cache(maxsize=4)
def _feature_net(layers: tuple[str, ...], source: str, pooling: str, device: str) -> VGGFeatures:
    # channels-last suits cuDNN and oneDNN alike (measured on this CPU: 274 against 307-342 ms for a
    # forward and backward at 256×192)
    return VGGFeatures(layers, source=source, pooling=pooling).to(device, memory_format=torch.channels_last)


def feature_net(config: TransferConfig, device: torch.device) -> VGGFeatures:
    """VGG19 cut after the deepest layer `config` reads, cached per (layers, weights, pooling, device)."""
    return _feature_net(config.layers, config.weights, config.pooling, str(device))


def initial_image(
    config: TransferConfig,
    content: torch.Tensor,
    styles: Sequence[torch.Tensor] = (),
    maps: torch.Tensor | None = None,
) -> torch.Tensor:
    """G₀: white noise (the seed), the content image, `init_blend`·content + (1 − init_blend)·noise, or
    the AdaIN one-pass stylisation of the content after the (most weighted) style image.

    With regions (`maps`, one per `config.regions`), G₀ = Σ_r m_r·G₀,r: a styled region's start is the
    init after its own most weighted style, and a region that keeps the content starts as the content.
    Noise is uniform in [0, 1], drawn on the CPU from `config.seed`, so it is the same on every device.
    """
    if maps is not None:
        starts = []
        for region in config.regions:
            if region.keeps_content:
                starts.append(content)
            else:
                blend = region.blend or (1.0,) * len(region.styles)
                dominant = region.styles[dominant_style(blend, len(blend))] - 1
                starts.append(initial_image(config.replace(regions=(), style_blend=()), content, [styles[dominant]]))
        return sum(m.to(content.device) * start for m, start in zip(maps, starts, strict=True))
    if config.init == "adain":
        from engine.core.adain import adain_tensor  # its decoder weights load only when asked for

        style = styles[dominant_style(config.style_blend, len(styles))]
        height, width = content.shape[-2:]
        shrink = ADAIN_MAX_SIDE / max(height, width)
        if shrink >= 1:
            return adain_tensor(content, style)
        small = lambda t: F.interpolate(t, scale_factor=shrink, mode="bilinear", antialias=True)  # noqa: E731
        start = adain_tensor(small(content), small(style))
        return F.interpolate(start, size=(height, width), mode="bilinear", align_corners=False).clamp(0, 1)
    generator = torch.Generator().manual_seed(config.seed)
    noise = torch.rand(content.shape, generator=generator).to(content.device)
    if config.init == "noise":
        return noise
    if config.init == "content":
        return content.clone()
    return config.init_blend * content + (1 - config.init_blend) * noise


# Knobs a batch may vary image by image: they change only the costs' weights or G₀, so one network
# pass serves every image. Every other knob must be equal across a batch.
BATCH_KNOBS = frozenset({"alpha", "beta", "style_layers", "tv_weight", "seed", "init", "init_blend"})


def check_batchable(configs: Sequence[TransferConfig]) -> None:
    """Raise InputError unless `configs` differ only in `BATCH_KNOBS` (and there is at least one)."""
    if not configs:
        raise InputError("A batch needs at least one setting.")
    first = configs[0].to_params()
    for config in configs[1:]:
        params = config.to_params()
        differ = sorted(
            k for k in first.keys() | params.keys()
            if first.get(k) != params.get(k) and _knob_of(k) not in BATCH_KNOBS | {"lambda"}
        )  # fmt: skip
        if differ:
            raise InputError(
                f"These settings cannot share a batch: they differ in {', '.join(differ)}. "
                f"Only {', '.join(sorted(BATCH_KNOBS))} may differ; run the others separately."
            )


def _knob_of(param: str) -> str:
    """The knob a flat param sets: `lambda.relu1_1` → lambda; a region's weight `region.sky.beta` → beta
    (its λ `region.sky.lambda.relu1_1` → lambda), and its colour or styles → regions."""
    parts = param.split(".")
    if parts[0] == "region" and len(parts) > 2:
        return parts[2] if parts[2] in ("alpha", "beta", "lambda", "lambdas") else "regions"
    return parts[0]


def images_per_pass(device: torch.device, batch: int) -> int:
    """How many of a batch's images go through the network together (see CPU_IMAGES_PER_PASS)."""
    return batch if device.type == "cuda" else min(batch, CPU_IMAGES_PER_PASS)


def batch_bytes(configs: Sequence[TransferConfig], height: int, width: int, device: torch.device) -> int:
    """Estimated peak memory of `transfer_batch(configs)` with a final G of height × width."""
    per_pass = images_per_pass(device, len(configs))
    return max(estimate_run_bytes(c, height, width, device, len(configs), per_pass) for c in configs)


def largest_batch(configs: Sequence[TransferConfig], height: int, width: int, device: torch.device) -> int:
    """The most of `configs` (at least 1) that fit one batch on `device`, going by `batch_bytes`. The
    memory a batch needs grows with its size: a sweep whose batch would not fit runs as smaller ones."""
    budget = MEMORY_SHARE * available_bytes(device)
    for size in range(len(configs), 1, -1):
        if batch_bytes(configs[:size], height, width, device) <= budget:
            return size
    return 1


def transfer(
    content: Image.Image,
    styles: Sequence[Image.Image],
    config: TransferConfig,
    *,
    on_step: Callable[[StepReport], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    device: str | torch.device | None = None,
    mask: Image.Image | None = None,
    style_masks: Sequence[Image.Image | None] = (),
) -> TransferResult:
    """Style `content` after `styles` (decoded RGB images) with `config`; see `Objective` for J(G), and
    `GuidedObjective` for a run with regions of `mask` (`config.regions`) or another style cost. A style
    image's mask in `style_masks` (one per style image, None for none) says which of its parts each
    region takes its style from (the same colours as `mask`).

    `should_stop()` is polled every iteration; when it returns True the run ends cleanly and the best
    image so far is returned with `stopped="cancelled"`.
    """
    report = None if on_step is None else (lambda reports: on_step(reports[0]))
    return transfer_batch(
        content, styles, [config], on_step=report, should_stop=should_stop, device=device, mask=mask,
        style_masks=style_masks,
    )[0]  # fmt: skip


def transfer_batch(
    content: Image.Image,
    styles: Sequence[Image.Image],
    configs: Sequence[TransferConfig],
    *,
    on_step: Callable[[list[StepReport]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    device: str | torch.device | None = None,
    mask: Image.Image | None = None,
    style_masks: Sequence[Image.Image | None] = (),
) -> list[TransferResult]:
    """Optimise one G per config as one batch: the same network passes, per-image costs and per-image
    optimizer state, so each result is what its own `transfer` would give (up to floating-point order).

    `on_step` gets one StepReport per config after every iteration. On a GPU the reports trail the
    device by one iteration, so the host never waits for the iteration it has just queued.
    """
    check_batchable(configs)
    order = _batch_order(configs)
    configs = [configs[i] for i in order]
    config = configs[0]  # every knob outside BATCH_KNOBS is the same for all
    check_style_images(config.style_blend, len(styles), config.regions)
    check_mask(config, mask, content.size)
    check_style_masks(config, styles, style_masks)
    device = torch.device(device) if device is not None else pick_device()
    if device.type == "cuda":
        enable_gpu_basics()
    layers = tuple(dict.fromkeys(layer for c in configs for layer in c.layers))
    plans = run_plan(configs, content.size, device)  # before any compute: a run that cannot fit fails here
    net = _feature_net(layers, config.weights, config.pooling, str(device))
    bf16 = uses_bf16(config.precision, device)
    grid = layer_stride(deepest_layer(layers))

    run = _BatchRun(configs, order, time.perf_counter(), on_step, should_stop)
    content_rgb = None
    for scale, ((size, steps), plan) in enumerate(zip(config.schedule, plans, strict=True)):
        content_rgb = images.image_to_tensor(images.resize_long_side(content, size)).to(device)
        content_in, styles_in = _network_inputs(content_rgb, styles, config, device)
        maps = region_maps(mask, config.regions, *content_in.shape[-2:]).to(device) if config.regions else None
        style_maps = [
            None if m is None else region_maps(m, config.regions, *s.shape[-2:]).to(device)
            for m, s in zip(style_masks or [None] * len(styles_in), styles_in, strict=True)
        ]  # fmt: skip
        tiles = tile_grid(*content_in.shape[-2:], plan.tile_size, plan.halo, grid) if plan.tile_size else None
        with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            if tiles is None:
                content_features, style_features, style_grams = net(content_in), [net(s) for s in styles_in], None
            else:  # the targets too, tile by tile; the style image has its own grid
                target = tiled_activation(net, content_in, config.content_layer, tiles)
                content_features = {config.content_layer: target}
                style_layers = list(dict.fromkeys(layer for c in configs for layer in c.lambdas))
                style_features, style_grams = [], [
                    tiled_grams(net, s, style_layers, tile_grid(*s.shape[-2:], plan.tile_size, plan.halo, grid))
                    for s in styles_in
                ]
            objective = _batch_objective(
                configs, content_features, style_features, content_in.shape[-2:], style_grams=style_grams, maps=maps,
                style_maps=style_maps,
            )  # fmt: skip
        if scale == 0:
            starts: dict[tuple, torch.Tensor] = {}  # a λ sweep's images share one G₀ (one AdaIN pass)
            for c in configs:
                key = (c.init, c.seed, c.init_blend)
                if key not in starts:
                    starts[key] = initial_image(c, content_in, styles_in, maps)
            g = torch.cat([starts[(c.init, c.seed, c.init_blend)] for c in configs])
        else:  # coarse to fine: the previous scale's best, upsampled, starts this scale
            g = F.interpolate(run.best_points(), size=content_in.shape[-2:], mode="bilinear", align_corners=False)
        run.new_scale(content_rgb)
        _optimise(g, objective, net, config, steps, bf16, run, tiles, plan.history)
        if run.stopped:
            break
    return run.results(device, plans[-1].describe(config))


def check_mask(config: TransferConfig, mask: Image.Image | None, content_size: tuple[int, int]) -> None:
    """InputError unless a run has a mask exactly when its config has regions, of the content's shape."""
    if config.regions and mask is None:
        raise InputError("This run has regions but no mask image. Give the mask, or remove the regions.")
    if mask is not None and not config.regions:
        raise InputError("A mask image was given but no regions: say which style each of its colours takes.")
    if mask is not None:
        check_mask_fits(mask, content_size)


def check_style_masks(
    config: TransferConfig, styles: Sequence[Image.Image], style_masks: Sequence[Image.Image | None]
) -> None:
    """InputError unless style masks come with regions, one per style image (None for none), each of its
    style image's shape and holding the colour of every region that takes its style from that image."""
    if not any(m is not None for m in style_masks):
        return
    if not config.regions:
        raise InputError("A style image's mask was given but no regions: style masks go with a mask on the content.")
    if len(style_masks) != len(styles):
        raise InputError(f"Give one style mask per style image (none for an image without): got {len(style_masks)} "
                         f"for {len(styles)} style images.")  # fmt: skip
    for number, (style, style_mask) in enumerate(zip(styles, style_masks, strict=True), start=1):
        if style_mask is None:
            continue
        check_mask_fits(style_mask, style.size, what=f"The mask of style image {number}", over=f"style image {number}")
        maps = region_maps(style_mask, config.regions, 64, 64)
        for index, region in enumerate(config.regions):
            if number in region.styles and maps[index].sum() == 0:
                raise InputError(
                    f"Region {region.name!r} takes style image {number}, but that image's mask has none of the "
                    f"region's colour {region.hex}. Paint the part it should take in that colour."
                )


def run_plan(configs: Sequence[TransferConfig], content_size: tuple[int, int], device: torch.device) -> list[ScalePlan]:
    """How each scale of a batch of `configs` runs on `device` (`device.plan_scale`), coarse to fine, for a
    content image of `content_size` (width, height). Raises InputError when a scale cannot fit."""
    config, per_pass = configs[0], images_per_pass(device, len(configs))
    plans = []
    untiled = [c if c.tileable else c.replace(tile_size="0") for c in configs]  # only the Gram cost tiles
    for size, _ in config.schedule:
        width, height = images.long_side_size(content_size, size)
        # every config of a batch shares the layers that decide the memory, except their depth: the deepest
        plan = max((plan_scale(c, height, width, device, len(configs), per_pass) for c in untiled),
                   key=lambda p: p.bytes)  # fmt: skip
        if not plan.tile_size:  # only a run that may not tile can get here without fitting
            hint = (", or let the run go by tiles (tile size auto)" if config.tileable
                    else f" (a run with regions or the {config.style_cost} cost cannot go by tiles)")  # fmt: skip
            check_fits(plan.bytes, height, width, device, hint=hint)
        plans.append(plan)
    return plans


def _batch_order(configs: Sequence[TransferConfig]) -> list[int]:
    """Indices of `configs` in the order a batch runs them: the deepest first, so that where images
    stop, the network goes on with the first ones (a view of the batch); then by the style layers they
    read, so that the images sharing a layer's Gram sit side by side (a slice, not a gather)."""

    def key(i: int) -> tuple[int, int, int]:
        config = configs[i]
        style = [LAYER_INDEX[layer] for layer in config.lambdas] or [-1]
        return -LAYER_INDEX[deepest_layer(config.layers)], min(style), max(style)

    return sorted(range(len(configs)), key=key)


def _batch_objective(
    configs: Sequence[TransferConfig],
    content_features: dict,
    style_features: list[dict],
    shape: Sequence[int],
    style_grams: list[dict] | None = None,
    maps: torch.Tensor | None = None,
    style_maps: Sequence[torch.Tensor | None] = (),
) -> Objective | GuidedObjective:
    """One Objective for the batch at this scale's (height, width) `shape`: each weight a vector with one
    entry per config (λ = 0 where a config does not use a layer, whose cost it then neither computes nor
    reports), β the size-aware effective one (`TransferConfig.effective_beta`). A run with regions
    (`maps`) or a style cost other than the Gram gets a `GuidedObjective`."""
    config = configs[0]
    if not config.tileable:
        return _guided_objective(configs, content_features, style_features, shape, maps, style_maps)
    layers = tuple(dict.fromkeys(layer for c in configs for layer in c.lambdas))
    per_image = lambda get: [get(c) for c in configs]  # noqa: E731
    return Objective(
        content_features,
        style_features,
        content_layer=config.content_layer,
        lambdas={layer: per_image(lambda c, layer=layer: c.lambdas.get(layer, 0.0)) for layer in layers},
        alpha=per_image(lambda c: c.alpha),
        beta=per_image(lambda c: c.effective_beta(*shape)),
        tv_weight=per_image(lambda c: c.tv_weight),
        style_blend=list(config.style_blend) or None,
        reported={layer: per_image(lambda c, layer=layer: layer in c.lambdas) for layer in layers},
        style_grams=style_grams,
    )


def _guided_objective(
    configs: Sequence[TransferConfig], content_features: dict, style_features: list[dict], shape, maps, style_maps
) -> GuidedObjective:
    """`_batch_objective` for regions or another style cost: one style term per styled region (or one over
    the whole image), each weight one entry per config."""
    config = configs[0]
    per_image = lambda get: [get(c) for c in configs]  # noqa: E731

    def term(name, index, styles, blend, regional) -> StyleTerm:
        """`regional(c)`: (β, λ) of this term in config c."""
        layers = sorted({layer for c in configs for layer in regional(c)[1]}, key=LAYER_INDEX.__getitem__)
        return StyleTerm(
            name, index, styles, blend_weights(blend, len(styles)),
            beta=per_image(lambda c: c.effective_beta(*shape, regional(c)[0])),
            lambdas={layer: per_image(lambda c, layer=layer: regional(c)[1].get(layer, 0.0)) for layer in layers},
        )  # fmt: skip

    if not config.regions:
        terms = [term("", None, range(len(style_features)), config.style_blend, lambda c: (c.beta, c.lambdas))]
        alpha = per_image(lambda c: c.alpha)
    else:
        terms, alpha = [], []
        for index, region in enumerate(config.regions):
            own = lambda c, index=index: c.regions[index]  # noqa: E731 - the same region in every config
            alpha.append(per_image(lambda c, own=own: c.alpha if own(c).alpha is None else own(c).alpha))
            if region.keeps_content:
                continue
            regional = lambda c, own=own: (  # noqa: E731
                c.beta if own(c).beta is None else own(c).beta, c.region_lambdas(own(c))
            )
            terms.append(term(region.name, index, [s - 1 for s in region.styles], region.blend, regional))
    return GuidedObjective(
        content_features, style_features, kind=config.style_cost, content_layer=config.content_layer,
        terms=terms, alpha=alpha, tv_weight=per_image(lambda c: c.tv_weight), maps=maps, style_maps=style_maps,
    )  # fmt: skip


class _BatchRun:
    """Host-side bookkeeping of a batch: step counts, each image's best G and costs, reports, stopping."""

    def __init__(self, configs, order, start, on_step, should_stop):
        # configs in batch order; order[k] is the caller's index of configs[k], whose order reports
        # and results come back in
        self.configs, self.order, self.batch, self.start = configs, order, len(configs), start
        self.on_step, self.should_stop = on_step, should_stop
        self.step = 0
        self.stopped: str | None = None
        self.best: list[tuple[torch.Tensor, dict[str, float]] | None] = [None] * self.batch
        self.non_finite = [0] * self.batch
        self.content_rgb: torch.Tensor | None = None

    def new_scale(self, content_rgb: torch.Tensor) -> None:
        self.content_rgb = content_rgb
        self.best = [None] * self.batch  # the result is the best G at the final scale

    def may_stop_within_step(self) -> bool:
        """Whether to give up an iteration half done: asked to stop, with a best G at this scale to return."""
        return self.best[0] is not None and self.should_stop is not None and self.should_stop()

    def best_points(self) -> torch.Tensor:
        return torch.cat([best[0] for best in self.best])

    def take(self, point: torch.Tensor, costs: dict[str, list[float]]) -> None:
        """Record one finished iteration: `point` (B, 3, H, W) is the G it evaluated, `costs` its costs."""
        self.step += 1
        reports = []
        for i, config in enumerate(self.configs):
            keys = config.style_cost_keys
            floats = {k: v[i] for k, v in costs.items() if not k.startswith("style/") or k[6:] in keys}
            total = floats["total"]
            self.non_finite[i] = 0 if math.isfinite(total) else self.non_finite[i] + 1
            best = self.best[i]
            if best is None or not math.isfinite(best[1]["total"]) or total < best[1]["total"]:
                self.best[i] = (point[i : i + 1], floats)
            reports.append(
                StepReport(
                    step=self.step,
                    total_steps=config.total_steps,
                    size=(point.shape[-1], point.shape[-2]),
                    costs=floats,
                    elapsed_s=time.perf_counter() - self.start,
                    _image=functools.partial(_to_output, point[i : i + 1], self.content_rgb, config),
                )
            )
        if min(self.non_finite) >= MAX_NON_FINITE_STEPS:
            self.stopped = "diverged"
        if self.on_step is not None:
            self.on_step(self._in_callers_order(reports))
        if not self.stopped and self.should_stop is not None and self.should_stop():
            self.stopped = "cancelled"

    def results(self, device: torch.device, memory_plan: str = "") -> list[TransferResult]:
        if any(best is None or not math.isfinite(best[1]["total"]) for best in self.best):
            raise InputError("The optimisation diverged at once (non-finite cost). Lower lr or the weights.")
        elapsed = time.perf_counter() - self.start
        results = []
        for config, (point, costs) in zip(self.configs, self.best, strict=True):
            pixels = _output_pixels(point, self.content_rgb, config)
            results.append(
                TransferResult(
                    image=images.tensor_to_image(pixels),
                    costs=costs,
                    steps_done=self.step,
                    total_steps=config.total_steps,
                    elapsed_s=elapsed,
                    device=str(device),
                    stopped=self.stopped,
                    memory_plan=memory_plan,
                    pixels=pixels.float().cpu(),
                )
            )
        return self._in_callers_order(results)

    def _in_callers_order(self, items: list) -> list:
        out = [None] * self.batch
        for item, index in zip(items, self.order, strict=True):
            out[index] = item
        return out


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


def _optimise(
    g0: torch.Tensor,
    objective: Objective | GuidedObjective,
    net: VGGFeatures,
    config: TransferConfig,
    steps: int,
    bf16: bool,
    run: _BatchRun,
    tiles: Sequence[Tile] | None = None,
    history: int | None = None,
) -> None:
    """`steps` iterations from `g0` at one scale, each handed to `run.take`; by `tiles` when given
    (`tiling.tiled_costs_and_gradient`), with an L-BFGS `history` in place of the config's when given.

    Nothing here waits for the device: the costs of an iteration are copied to the host asynchronously
    and handed over one iteration later (on the CPU at once), while the next one is already queued.
    On a CUDA GPU, after `GRAPH_WARMUP` eager iterations an L-BFGS iteration is captured once as a CUDA
    graph and replayed: one launch instead of a few hundred kernel launches per iteration.
    """
    g = g0.detach().contiguous()  # plain layout, so the optimizer sees one flat vector per image
    g.requires_grad_(True)
    if config.optimizer == "lbfgs":
        lbfgs = BatchedLBFGS(g, lr=config.lr, history=history or config.history, restart_factor=LBFGS_RESTART_FACTOR)
        update = lbfgs.step
    else:
        adam = torch.optim.Adam([g], lr=config.lr)

        def update(_: torch.Tensor, grad: torch.Tensor) -> None:
            g.grad = grad
            adam.step()
            g.clamp_(0, 1)

    autocast = functools.partial(torch.autocast, g.device.type, torch.bfloat16, enabled=bf16, cache_enabled=False)

    def costs_and_gradient(x: torch.Tensor, images: slice = slice(None)) -> tuple[Costs, torch.Tensor]:
        if tiles is not None:
            return tiled_costs_and_gradient(x, objective, net, tiles, images, autocast, run.may_stop_within_step)
        # Each image goes only as deep, and has only the Grams, that its costs read (see _batch_order).
        reach = [deepest_layer(layers) for layers in objective.layers_read(len(x), images)]
        with autocast():
            features = net(x.contiguous(memory_format=torch.channels_last), reach)
        costs = objective(features, x, images)
        (grad,) = torch.autograd.grad(costs.total.sum(), x)
        return costs, grad

    def iterate() -> tuple[torch.Tensor, torch.Tensor]:
        """One iteration: (G as evaluated, its costs packed as in `_cost_names`); G is updated in place."""
        per_pass = images_per_pass(g.device, len(g))
        if per_pass == len(g):
            costs, grad = costs_and_gradient(g)
            packed = _pack(costs)
        else:
            parts = [slice(i, i + per_pass) for i in range(0, len(g), per_pass)]
            results = [costs_and_gradient(g[part].detach().requires_grad_(True), part) for part in parts]
            packed = torch.cat([_pack(costs) for costs, _ in results], dim=1)
            grad = torch.cat([grad for _, grad in results])
        point = g.detach().clone()
        with torch.no_grad():
            update(packed[0], grad)  # row 0: the total
        return point, packed

    names = _cost_names(objective)
    graphs = CUDA_GRAPHS and g.device.type == "cuda" and config.optimizer == "lbfgs" and steps > GRAPH_WARMUP
    graphs = graphs and tiles is None  # a tiled iteration is long enough that launches do not matter
    stream = torch.cuda.Stream(g.device) if graphs else None
    graph: tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor] | None = None
    pending: list[tuple[torch.Tensor, torch.Tensor, torch.cuda.Event | None]] = []
    for i in range(steps):
        if graph is not None:
            graph[0].replay()
            point, packed = graph[1].clone(), graph[2]
        elif stream is not None:  # eager warm-up iterations run on a side stream, as graph capture asks
            stream.wait_stream(torch.cuda.current_stream(g.device))
            with torch.cuda.stream(stream):
                point, packed = iterate()
            torch.cuda.current_stream(g.device).wait_stream(stream)
        else:
            try:
                point, packed = iterate()
            except Interrupted:  # cancelled within a tiled iteration: the best G so far stands
                run.stopped = "cancelled"
                return
        pending.append((point, _to_host(packed), _event(g.device)))
        if g.device.type != "cuda" or len(pending) > 1:
            _hand_over(pending.pop(0), names, run)
        if run.stopped:
            return
        if stream is not None and graph is None and i + 1 == GRAPH_WARMUP:
            graph = _capture(iterate, g.device)
            stream = None if graph is None else stream
    while pending and not run.stopped:
        _hand_over(pending.pop(0), names, run)


def _capture(iterate: Callable[[], tuple[torch.Tensor, torch.Tensor]], device: torch.device):
    """`iterate` as a CUDA graph with its static outputs, or None (eager from here) if capture fails."""
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            point, packed = iterate()
    except Exception as e:  # an op that cannot be captured: eager iterations still give the same result
        log.warning("CUDA graph capture failed, continuing without: %s", e)
        return None
    return graph, point, packed


def _cost_names(objective: Objective | GuidedObjective) -> list[str]:
    return ["total", "content", "style", "tv", *(f"style/{key}" for key in objective.cost_keys)]


def _pack(costs: Costs) -> torch.Tensor:
    """Every cost of every image as one (terms, B) tensor, rows in `_cost_names` order."""
    terms = [costs.total, costs.content, costs.style, costs.tv, *costs.style_layers.values()]
    return torch.stack([v.detach().float() for v in terms])


def _to_host(packed: torch.Tensor) -> torch.Tensor:
    if packed.device.type != "cuda":
        return packed
    host = torch.empty(packed.shape, dtype=packed.dtype, pin_memory=True)
    return host.copy_(packed, non_blocking=True)


def _event(device: torch.device) -> torch.cuda.Event | None:
    if device.type != "cuda":
        return None
    event = torch.cuda.Event()
    event.record()
    return event


def _hand_over(item, names: list[str], run: _BatchRun) -> None:
    point, host, event = item
    if event is not None:
        event.synchronize()  # this iteration only; the next one stays queued on the device
    run.take(point, dict(zip(names, host.tolist(), strict=True)))


def _output_pixels(g: torch.Tensor, content_rgb: torch.Tensor, config: TransferConfig) -> torch.Tensor:
    """G as the user sees it: with the content's colours put back when preserving colours."""
    if config.preserve_colors:
        g = images.combine_luminance_with_colours(g.expand(-1, 3, -1, -1), content_rgb)
    return g.detach().clamp(0, 1)


def _to_output(g: torch.Tensor, content_rgb: torch.Tensor, config: TransferConfig) -> Image.Image:
    return images.tensor_to_image(_output_pixels(g, content_rgb, config))
