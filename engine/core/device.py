"""Where a run executes: device choice, the GPU basics, and a memory estimate checked before starting."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from engine.core.errors import InputError

if TYPE_CHECKING:
    from engine.core.config import TransferConfig
from engine.core.vgg import LAYER_INDEX, LAYER_NAMES, deepest_layer, exact_halo, layer_channels, layer_stride

# Peak memory ≈ FIXED + BYTES_PER_ACTIVATION · Σ activation elements (see `activation_elements`) + the
# optimizer's state (`optimizer_bytes`), each a straight-line fit of measured peaks (benchmarks/fast.py,
# memory section), rounded up about 5 %:
# - CPU: peak resident set (VmHWM) of whole runs at 128-512 px: 750 MiB + 5.19 B per element;
# - CUDA: torch.cuda.max_memory_allocated at 256-2048 px on an H200, after cuDNN's first autotuning run
#   (that one briefly takes whatever workspace is free); fits 1395 MiB + 3.04 B (bf16) and 1369 MiB +
#   4.29 B (fp32) per element, within 0.1 % at every size. The CUDA context (~0.5 GiB) is not included.
BYTES_PER_ACTIVATION = {("cpu", "fp32"): 5.5, ("cuda", "fp32"): 4.5, ("cuda", "bf16"): 3.2}
FIXED_BYTES = {"cpu": 800 * 2**20, "cuda": 1450 * 2**20}
MEMORY_SHARE = 0.9  # of the free memory a run may plan to use: the estimates are ±20 %, allocators fragment


def pick_device(name: str | None = None) -> torch.device:
    """`name` if given ("cpu", "cuda", "cuda:1"), else CUDA when present, else the CPU."""
    if name:
        try:
            device = torch.device(name)
        except RuntimeError:
            raise InputError(f"Unknown device {name!r}; use 'cpu' or 'cuda'.") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InputError("No CUDA GPU is available here; use device 'cpu'.")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@functools.cache
def enable_gpu_basics() -> None:
    """TF32 matmuls and convolutions, and cuDNN autotuning (input sizes repeat every iteration)."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True


def device_name(device: torch.device) -> str:
    """A person's name for the device: the GPU's model, or "CPU (N threads)"."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def activation_elements(height: int, width: int, deepest_layer: str) -> int:
    """Σ over the VGG19 modules up to `deepest_layer` of their output's element count, for one image."""
    total = 0
    for name in LAYER_NAMES[: LAYER_INDEX[deepest_layer] + 1]:
        stride = layer_stride(name) * (2 if name.startswith("pool") else 1)
        total += layer_channels(name) * (height // stride) * (width // stride)
    return total


def flops_per_iteration(height: int, width: int, deepest_layer: str) -> float:
    """Convolution FLOPs of one iteration: VGG19 forward to `deepest_layer` plus the backward to the
    input (about as much again; no weight gradients). 2·C_in·C_out·9 per output position per conv."""
    forward = 0.0
    for name in LAYER_NAMES[: LAYER_INDEX[deepest_layer] + 1]:
        if name.startswith("conv"):
            c_out = layer_channels(name)
            c_in = 3 if name == "conv1_1" else layer_channels(LAYER_NAMES[LAYER_INDEX[name] - 2])
            stride = layer_stride(name)
            forward += 2 * c_in * c_out * 9 * (height // stride) * (width // stride)
    return 2 * forward


def optimizer_bytes(height: int, width: int, history: int) -> int:
    """Per image: L-BFGS keeps `history` pairs (s, y) of G-sized fp32 vectors plus ~8 more (G, its
    gradient, the previous step and gradient, the best G, the direction and temporaries)."""
    return (2 * history + 8) * 3 * height * width * 4


def uses_bf16(precision: str, device: torch.device) -> bool:
    """Whether the network runs in bf16: asked for, or `auto` on a CUDA GPU that has it."""
    if precision == "bf16":
        return True
    return precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()


def estimate_peak_bytes(
    height: int, width: int, deepest_layer: str, device: torch.device, batch: int = 1, *,
    history: int = 0, precision: str = "fp32", images_per_pass: int | None = None,
) -> int:  # fmt: skip
    """Peak memory of one optimisation at this size, from the activation count (fitted, ±20 %).

    A batch keeps every image's optimizer state, and the activations of the images of one network
    pass: all of them (the default), or `images_per_pass` when it goes through in parts (the CPU).
    """
    kind = "cuda" if device.type == "cuda" else "cpu"
    dtype = "bf16" if uses_bf16(precision, device) else "fp32"
    per_activation = BYTES_PER_ACTIVATION.get((kind, dtype), BYTES_PER_ACTIVATION[(kind, "fp32")])
    per_image = activation_elements(height, width, deepest_layer) * per_activation
    in_pass = batch if images_per_pass is None else min(batch, images_per_pass)
    return int(FIXED_BYTES[kind] + in_pass * per_image + batch * optimizer_bytes(height, width, history))


def estimate_run_bytes(
    config: TransferConfig, height: int, width: int, device: torch.device, batch: int = 1,
    images_per_pass: int | None = None,
) -> int:  # fmt: skip
    """`estimate_peak_bytes` for a run of `config` with a final G of height × width."""
    deepest = deepest_layer(config.layers)
    history = config.history if config.optimizer == "lbfgs" else 0
    return estimate_peak_bytes(
        height, width, deepest, device, batch, history=history, precision=config.precision,
        images_per_pass=images_per_pass,
    )  # fmt: skip


AUTO_TILE_SIZES = (1024, 768, 512, 384, 256)  # auto takes the largest that fits: the halo costs less on big tiles
MIN_HISTORY = 3  # the shortest L-BFGS history a tiled run shortens to before giving up on fitting


@dataclass(frozen=True)
class ScalePlan:
    """How one scale of a run goes: untiled (tile_size 0) or by tiles, with which L-BFGS history, and the
    estimated peak bytes."""

    height: int
    width: int
    tile_size: int
    halo: int
    history: int
    bytes: int

    def describe(self, config: TransferConfig) -> str:
        """One line for the estimate and the run's `memory_plan` tag."""
        if not self.tile_size:
            return f"{self.width}×{self.height} untiled"
        text = f"{self.width}×{self.height} in tiles of {self.tile_size} px with a halo of {self.halo} px"
        if config.optimizer == "lbfgs" and self.history < config.history:
            text += f", L-BFGS history shortened from {config.history} to {self.history} to fit"
        return text


def tile_halo(config: TransferConfig) -> int:
    """The halo `config` asks for: its own, or the exact one for the deepest layer it reads."""
    if config.tile_halo != "auto":
        return int(config.tile_halo)
    return exact_halo(deepest_layer(config.layers))


def estimate_tiled_bytes(
    config: TransferConfig, height: int, width: int, tile_size: int, history: int, device: torch.device,
    batch: int = 1, images_per_pass: int | None = None,
) -> int:  # fmt: skip
    """Peak memory of one scale by tiles: the network's activations for one tile with its halo (the same
    fit as `estimate_peak_bytes`), the optimizer state, and the whole-image buffers that tiling keeps (G's
    gradient, TV's, and C's activation at the content layer, the content target)."""
    halo = tile_halo(config)
    side = lambda length: min(length, tile_size + 2 * halo)  # noqa: E731
    one_tile = estimate_peak_bytes(
        side(height), side(width), deepest_layer(config.layers), device, batch,
        history=0, precision=config.precision, images_per_pass=images_per_pass,
    )  # fmt: skip
    stride = layer_stride(config.content_layer)
    content_target = layer_channels(config.content_layer) * (height // stride) * (width // stride) * 4
    gradients = 2 * batch * 3 * height * width * 4
    return one_tile + batch * optimizer_bytes(height, width, history) + content_target + gradients


def plan_scale(
    config: TransferConfig, height: int, width: int, device: torch.device, batch: int = 1,
    images_per_pass: int | None = None, budget: float | None = None,
) -> ScalePlan:  # fmt: skip
    """Untiled when `config.tile_size` is 0, or auto and the untiled run fits `budget` (default: the share
    `MEMORY_SHARE` of the device's free memory). Else by tiles: `config.tile_size`, or on auto the largest
    of `AUTO_TILE_SIZES` that fits; and when even that does not fit, a shorter L-BFGS history (down to
    `MIN_HISTORY`). Raises InputError when nothing fits."""
    budget = MEMORY_SHARE * available_bytes(device) if budget is None else budget
    history = config.history if config.optimizer == "lbfgs" else 0
    untiled = estimate_run_bytes(config, height, width, device, batch, images_per_pass)
    explicit = int(config.tile_size) if config.tile_size != "auto" else None
    if explicit == 0 or (explicit is None and untiled <= budget) or (explicit and explicit >= max(height, width)):
        return ScalePlan(height, width, 0, 0, history, untiled)
    candidates = [explicit] if explicit else [t for t in AUTO_TILE_SIZES if t < max(height, width)] or [256]
    shorter = range(history, min(MIN_HISTORY, history) - 1, -1) if history else [0]
    plans = [
        ScalePlan(height, width, tile, tile_halo(config), h,
                  estimate_tiled_bytes(config, height, width, tile, h, device, batch, images_per_pass))
        for h in shorter for tile in candidates
    ]  # fmt: skip
    fitting = next((plan for plan in plans if plan.bytes <= budget), None)
    if fitting is None:
        least = min(plans, key=lambda plan: plan.bytes)
        raise InputError(
            f"A {width}×{height} run needs about {least.bytes / 2**30:.1f} GiB even in tiles of {least.tile_size} px "
            f"with an L-BFGS history of {least.history}, but {device_name(device)} has "
            f"{budget / MEMORY_SHARE / 2**30:.1f} GiB free. Choose a smaller size, or the Adam optimizer "
            "(it keeps two image-sized buffers where L-BFGS keeps two per history step)."
        )
    return fitting


def available_bytes(device: torch.device) -> int:
    """Memory this run may use: free GPU memory, or the system's available memory for the CPU; at most
    `STYLELAB_MEMORY_LIMIT_GIB` when set (a share of a larger machine, or a smaller card's budget)."""
    limit = os.environ.get("STYLELAB_MEMORY_LIMIT_GIB")
    cap = int(float(limit) * 2**30) if limit else None
    return min(_free_bytes(device), cap) if cap else _free_bytes(device)


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device))  # our own cache is reusable
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def check_fits(need: int, height: int, width: int, device: torch.device, hint: str = "") -> int:
    """Raise InputError, before any compute, when a run needing `need` bytes (see `estimate_run_bytes`)
    at height × width would not fit the device's memory; `hint` ends the message."""
    have = available_bytes(device)
    if need > MEMORY_SHARE * have:
        fixed = FIXED_BYTES["cuda" if device.type == "cuda" else "cpu"]
        scale = (max(MEMORY_SHARE * have - fixed, 0) / (need - fixed)) ** 0.5  # activations grow with the pixels
        fits = int(max(height, width) * scale) // 16 * 16
        raise InputError(
            f"A {width}×{height} run needs about {need / 2**30:.1f} GiB but {device_name(device)} has "
            f"{have / 2**30:.1f} GiB free. Choose a smaller size (about {fits} px or less){hint}."
        )
    return need
