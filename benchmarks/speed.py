"""Milliseconds per iteration of the engine at several sizes, and the achieved GFLOP/s against the
device's measured matmul peak.

    python benchmarks/speed.py [--sizes 128 256 512] [--steps 20] [--device cpu] [--json out.json]

An iteration is one L-BFGS step with the default layers (one VGG19 forward to relu5_1 and the backward
to the pixels). The first steps of each size (weights, cuDNN autotune) are excluded from the timing.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from engine import images
from engine.config import TransferConfig
from engine.device import device_name, flops_per_iteration, pick_device
from engine.transfer import transfer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "images"
WARMUP_STEPS = 3


def matmul_peak_gflops(device: torch.device, n: int = 2048, repeats: int = 30) -> float:
    """Best fp32 (TF32 on CUDA when enabled) matmul throughput of n×n products, in GFLOP/s."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(3):  # warm-up: thread pools, clocks, cuBLAS handles
        a @ b
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ms_per_iteration(size: int, steps: int, device: torch.device) -> tuple[float, tuple[int, int]]:
    content = images.load_image(SHARED / "content/tubingen.jpg")
    style = images.load_image(SHARED / "style/starry_night.jpg")
    stamps: list[float] = []
    config = TransferConfig(size=size, steps=steps + WARMUP_STEPS, coarse_levels=0)
    result = transfer(content, [style], config, device=device, on_step=lambda r: stamps.append(time.perf_counter()))
    return (stamps[-1] - stamps[WARMUP_STEPS - 1]) / steps * 1e3, result.image.size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", help="also write the rows as JSON")
    args = parser.parse_args()
    device = pick_device(args.device)
    peak = matmul_peak_gflops(device)
    print(f"{device_name(device)}, torch {torch.__version__}: matmul peak {peak:.0f} GFLOP/s\n")
    print("| size | W×H | ms / iteration | GFLOP / iteration | GFLOP/s | of matmul peak |")
    print("|---|---|---|---|---|---|")
    rows = []
    for size in args.sizes:
        ms, (w, h) = ms_per_iteration(size, args.steps, device)
        gflop = flops_per_iteration(h, w, "relu5_1") / 1e9
        rate = gflop / (ms / 1e3)
        rows.append({"size": size, "width": w, "height": h, "ms_per_iteration": ms, "gflop": gflop,
                     "gflops": rate, "peak_gflops": peak, "device": device_name(device)})  # fmt: skip
        print(f"| {size} | {w}×{h} | {ms:.0f} | {gflop:.2f} | {rate:.0f} | {rate / peak:.0%} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
