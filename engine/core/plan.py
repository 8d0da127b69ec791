"""The run plan: what a run or a batch costs before it starts, in shapes, GFLOP and seconds.

Scope: G's shape at every scale of a schedule, GFLOP per iteration (`device.flops_per_iteration` up to the
deepest layer read), and the wall-time estimate from a measured or default rate. Memory estimates and
batch fitting stay beside the memory model in `device` and `transfer` (`estimate_run_bytes`,
`largest_batch`). Torch only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.core.config import TransferConfig
from engine.core.device import flops_per_iteration, plan_scale
from engine.core.tiling import TILED_PASSES, tile_grid
from engine.core.vgg import LAYER_INDEX, deepest_layer, layer_stride

__all__ = ["default_seconds_per_gflop", "estimate_seconds", "gflop_per_step", "scale_gflop", "scale_shapes"]

# Achieved convolution GFLOP/s before a device has run anything here (benchmarks/results/fast-*.json,
# 256 px): this project's 2-thread CPU 223; an H200 48 000 at 256 px and 106 000 at 512 px (bf16,
# CUDA graphs), so 50 000 is a fair first guess for a recent GPU.
CPU_GFLOPS = 220.0
CUDA_GFLOPS = 50_000.0


def default_seconds_per_gflop(device: str | torch.device) -> float:
    """Seconds per GFLOP of `flops_per_iteration` before any run on this device was measured."""
    return 1 / (CUDA_GFLOPS if torch.device(device).type == "cuda" else CPU_GFLOPS)


def scale_shapes(config: TransferConfig, aspect: float) -> list[tuple[int, int, int]]:
    """(height, width, iterations) of G per scale, for a content image of aspect `aspect` = height/width."""
    shapes = []
    for size, steps in config.schedule:
        if aspect <= 1:
            width, height = size, max(1, round(size * aspect))
        else:
            width, height = max(1, round(size / aspect)), size
        shapes.append((height, width, steps))
    return shapes


def _deepest(config: TransferConfig) -> str:
    return deepest_layer(config.layers)


def scale_gflop(
    config: TransferConfig, height: int, width: int, deepest: str, device: str | torch.device | None = None,
    batch: int = 1,
) -> float:  # fmt: skip
    """GFLOP of one iteration at height × width for one image. With a `device`, a scale that runs by tiles
    there (`device.plan_scale`) counts every tile with its halo, `TILED_PASSES` times."""
    plan = None
    if device is not None:
        try:
            plan = plan_scale(config, height, width, torch.device(device), batch)
        except Exception:  # a device this process cannot query, or a run that cannot fit: count it untiled
            plan = None
    if plan is None or not plan.tile_size:
        return flops_per_iteration(height, width, deepest) / 1e9
    tiles = tile_grid(height, width, plan.tile_size, plan.halo, layer_stride(deepest))
    outer = [(t.outer[1] - t.outer[0], t.outer[3] - t.outer[2]) for t in tiles]
    return TILED_PASSES * sum(flops_per_iteration(h, w, deepest) for h, w in outer) / 1e9


def gflop_per_step(
    configs: Sequence[TransferConfig], aspect: float, device: str | torch.device | None = None
) -> tuple[float, ...]:
    """GFLOP of each iteration of a batch of `configs` (one config: a single run), in order (coarse scales
    first), on `device` when given (see `scale_gflop`). Each image of a batch passes the network up to the
    deepest layer any of them reads, so a batch of B counts B× and its measured seconds per GFLOP stay
    comparable with single runs'."""
    deepest = max(map(_deepest, configs), key=LAYER_INDEX.__getitem__)
    batch = len(configs)
    per_scale = [
        (batch * scale_gflop(configs[0], h, w, deepest, device, batch), steps)
        for h, w, steps in scale_shapes(configs[0], aspect)  # a batch shares its schedule
    ]
    return tuple(gflop for gflop, steps in per_scale for _ in range(steps))


def estimate_seconds(
    config: TransferConfig,
    device: str | torch.device,
    seconds_per_gflop: float | None = None,
    *,
    aspect: float = 0.75,
) -> float:
    """Predicted wall time of the optimisation: Σ over `config.schedule` of iterations ×
    `scale_gflop(h, w, deepest layer, device)` (tiled scales count their tiles) × `seconds_per_gflop`
    (default: per device type, see `default_seconds_per_gflop`). `aspect` is the content's height/width
    (4:3 landscape if unknown). Start-up (weights, inputs) and tracking are not included."""
    if aspect <= 0:
        raise ValueError(f"aspect must be positive, got {aspect}")
    rate = default_seconds_per_gflop(device) if seconds_per_gflop is None else seconds_per_gflop
    deepest = _deepest(config)
    gflop = sum(steps * scale_gflop(config, h, w, deepest, device) for h, w, steps in scale_shapes(config, aspect))
    return gflop * rate
