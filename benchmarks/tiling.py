"""Tiled runs (engine.core.tiling): exactness per halo, time overhead, peak memory per size, seams.

    python benchmarks/tiling.py exact      [--size 512]           # gradient and cost error per halo
    python benchmarks/tiling.py overhead   [--size 1024 --tile 512 --rounds 5]
    python benchmarks/tiling.py memory     [--sizes 512 1024 2048 3072 4096] [--history 5]
    python benchmarks/tiling.py run        --size 2048 [--tile auto] [--steps 150 --coarse-steps 150] -o G.png
    python benchmarks/tiling.py seams      TILED.png UNTILED.png --tile 512
    STYLELAB_MEMORY_LIMIT_GIB=24 python benchmarks/tiling.py gpu [--sizes 3840 7680]   # on a CUDA GPU

Results append to benchmarks/results/tiling.jsonl (one JSON object per measurement); `memory` also draws
benchmarks/results/tiling-memory.png. Memory is the process's peak resident set (VmHWM), each size in a
fresh subprocess, with 2 iterations at the output size only (no coarse scales, G₀ = the content).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.core import images  # noqa: E402
from engine.core.config import GATYS_STYLE_LAYERS, TransferConfig  # noqa: E402
from engine.core.costs import Objective  # noqa: E402
from engine.core.samples import sample_path  # noqa: E402
from engine.core.tiling import seam_ratio, tile_grid, tiled_costs_and_gradient  # noqa: E402
from engine.core.vgg import VGGFeatures, deepest_layer, layer_stride  # noqa: E402

RESULTS = Path(os.environ.get("OUT") or ROOT / "benchmarks" / "results")  # gpu_check.sh sets OUT
LAYERS = list(GATYS_STYLE_LAYERS)


def peak_resident_bytes() -> int:
    """VmHWM, not ru_maxrss: the latter survives exec and would count a large parent's pages."""
    with open("/proc/self/status") as f:
        status = dict(line.split(":", 1) for line in f)
    return int(status["VmHWM"].split()[0]) * 1024


def record(entry: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    with (RESULTS / "tiling.jsonl").open("a") as f:
        f.write(json.dumps(entry | {"torch_threads": torch.get_num_threads()}) + "\n")
    print(json.dumps(entry))


def _problem(size: int):
    net = VGGFeatures([*LAYERS, "relu4_2"]).to(memory_format=torch.channels_last)
    load = lambda name: images.image_to_tensor(  # noqa: E731
        images.resize_long_side(images.load_image(sample_path(name)), size)
    )
    content, style = load("tubingen.jpg"), load("starry_night.jpg")
    with torch.no_grad():
        objective = Objective(net(content), [net(style)], content_layer="relu4_2",
                              lambdas=dict.fromkeys(LAYERS, 0.2), alpha=1.0, beta=1e6, tv_weight=1.0)  # fmt: skip
    x = 0.5 * content + 0.5 * torch.rand(content.shape, generator=torch.Generator().manual_seed(0))
    return net, objective, x


def _untiled(net, objective, x):
    x = x.detach().requires_grad_(True)
    costs = objective(net(x.contiguous(memory_format=torch.channels_last)), x)
    (grad,) = torch.autograd.grad(costs.total.sum(), x)
    return costs, grad


def _tiled(net, objective, x, tile, halo):
    tiles = tile_grid(*x.shape[-2:], tile, halo, 16)
    return tiled_costs_and_gradient(x, objective, net, tiles, slice(None), contextlib.nullcontext)


def exact(args) -> None:
    net, objective, x = _problem(args.size)
    costs, grad = _untiled(net, objective, x)
    for halo in (80, 64, 48, 32, 16, 0):
        start = time.perf_counter()
        tiled_costs, tiled_grad = _tiled(net, objective, x, args.tile, halo)
        seconds = time.perf_counter() - start
        cost_errors = [abs(getattr(tiled_costs, k) - getattr(costs, k)).item() / getattr(costs, k).item()
                       for k in ("total", "content", "style")]  # fmt: skip
        cost_errors += [
            abs(tiled_costs.style_layers[k] - costs.style_layers[k]).item() / costs.style_layers[k].item()
            for k in LAYERS
        ]
        record({"bench": "exact", "size": list(x.shape[-2:]), "tile": args.tile, "halo": halo,
                "grad_rel_error": ((tiled_grad - grad).norm() / grad.norm()).item(),
                "max_cost_rel_error": max(cost_errors), "seconds": round(seconds, 2)})  # fmt: skip


def overhead(args) -> None:
    """Time per iteration, untiled against tiled, alternating for `rounds` rounds after a warm-up each."""
    net, objective, x = _problem(args.size)
    _untiled(net, objective, x), _tiled(net, objective, x, args.tile, 80)
    times: dict[str, list[float]] = {"untiled": [], "tiled": []}
    for _ in range(args.rounds):
        for name, fn in (("untiled", lambda: _untiled(net, objective, x)),
                         ("tiled", lambda: _tiled(net, objective, x, args.tile, 80))):  # fmt: skip
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    medians = {k: float(np.median(v)) for k, v in times.items()}
    record({"bench": "overhead", "size": list(x.shape[-2:]), "tile": args.tile, "seconds": times,
            "median_untiled": medians["untiled"], "median_tiled": medians["tiled"],
            "ratio": medians["tiled"] / medians["untiled"]})  # fmt: skip


CHILD = """
import json, sys, time, torch
from engine.core import images
from engine.core.config import TransferConfig
from engine.core.samples import sample_path
from engine.core.transfer import transfer, run_plan
size, tile, history = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
content, style = (images.load_image(sample_path(n)) for n in ("tubingen.jpg", "starry_night.jpg"))
config = TransferConfig(size=size, steps=2, coarse_levels=0, init="content", tile_size=tile, history=history)
plan = run_plan([config], content.size, torch.device("cpu"))[-1]
times = []
start = time.perf_counter()
result = transfer(content, [style], config, device="cpu", on_step=lambda r: times.append(r.elapsed_s))
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(json.dumps({"peak": int(status["VmHWM"].split()[0]) * 1024, "estimate": plan.bytes, "plan": result.memory_plan,
                  "seconds_per_iteration": times[-1] - times[-2], "seconds": time.perf_counter() - start}))
"""


def memory(args) -> None:
    entries = []
    for size in args.sizes:
        for tile in ("0", str(args.tile)):
            if tile == "0" and size > args.untiled_up_to:
                continue
            out = subprocess.run([sys.executable, "-c", CHILD, str(size), tile, str(args.history)], cwd=ROOT,
                                 capture_output=True, text=True, env={"PYTHONPATH": str(ROOT)})  # fmt: skip
            if out.returncode:
                print(out.stderr[-2000:], file=sys.stderr)
                continue
            entry = {"bench": "memory", "size": size, "tile": int(tile), "history": args.history}
            entry |= json.loads(out.stdout.strip().splitlines()[-1])
            record(entry)
            entries.append(entry)
    _plot(entries)


def _plot(entries: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for tile, label in ((0, "untiled"), (None, "tiled")):
        rows = [e for e in entries if (e["tile"] == 0) == (tile == 0)]
        if rows:
            ax.plot([e["size"] for e in rows], [e["peak"] / 2**30 for e in rows], "o-", label=f"{label}, measured")
            ax.plot([e["size"] for e in rows], [e["estimate"] / 2**30 for e in rows], "x--", label=f"{label}, estimate")
    ax.axhline(6, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("output long side (px), 4:3")
    ax.set_ylabel("peak resident memory (GiB)")
    ax.set_title("Peak memory, CPU (VmHWM), 2 iterations at the output size")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "tiling-memory.png", dpi=100)


def run(args) -> None:
    """A whole run, as the CLI would make it, with the time of each scale."""
    content, style = (images.load_image(sample_path(n)) for n in ("tubingen.jpg", "starry_night.jpg"))
    config = TransferConfig(size=args.size, tile_size=args.tile, steps=args.steps, coarse_steps=args.coarse_steps,
                            history=args.history)  # fmt: skip
    from engine.core.transfer import transfer

    per_scale: dict[str, list[float]] = {}

    def on_step(report):
        per_scale.setdefault("x".join(map(str, report.size)), []).append(report.elapsed_s)
        if report.step % 10 == 0:
            print(report.step, report.size, f"{report.elapsed_s:.0f}s", flush=True)

    result = transfer(content, [style], config, device="cpu", on_step=on_step)
    result.image.save(args.output)
    record({"bench": "run", "size": args.size, "schedule": config.schedule, "plan": result.memory_plan,
            "seconds": round(result.elapsed_s, 1), "peak": peak_resident_bytes(),
            "scale_end_seconds": {k: round(v[-1], 1) for k, v in per_scale.items()},
            "costs": result.costs, "output": str(args.output), "tile_size": config.tile_size})  # fmt: skip


def seams(args) -> None:
    tiled, untiled = (np.asarray(images.load_image(p)) for p in (args.tiled, args.untiled))
    h, w = tiled.shape[:2]
    tiles = tile_grid(h, w, args.tile, 80, layer_stride(deepest_layer(LAYERS)))
    cuts_y = sorted({t.inner[0] for t in tiles} - {0})
    cuts_x = sorted({t.inner[2] for t in tiles} - {0})
    # "noise": the same statistic on rows and columns shifted off the borders by 8 px
    shifted = [seam_ratio(untiled, [c + d for c in cuts_y], [c + d for c in cuts_x]) for d in (-24, -8, 8, 24)]
    record({"bench": "seams", "size": [h, w], "tile": args.tile, "tiled": seam_ratio(tiled, cuts_y, cuts_x),
            "untiled": seam_ratio(untiled, cuts_y, cuts_x), "untiled_off_border": shifted,
            "mean_abs_pixel_difference": float(np.abs(tiled.astype(int) - untiled.astype(int)).mean())})  # fmt: skip


def gpu(args) -> None:
    """4K and 8K on a CUDA GPU within the memory budget STYLELAB_MEMORY_LIMIT_GIB (gpu_check.sh sets 24):
    peak torch.cuda.max_memory_allocated and seconds per iteration at the output size."""
    from engine.core.transfer import run_plan, transfer

    content, style = (images.load_image(sample_path(n)) for n in ("tubingen.jpg", "starry_night.jpg"))
    device = torch.device("cuda")
    for size in args.sizes:
        config = TransferConfig(size=size, steps=args.steps, coarse_levels=0, init="content")
        plan = run_plan([config], content.size, device)[-1]
        torch.cuda.reset_peak_memory_stats(device)
        times: list[float] = []
        on_step = lambda report, seen=times: seen.append(report.elapsed_s)  # noqa: E731
        result = transfer(content, [style], config, device=device, on_step=on_step)
        record({"bench": "gpu", "size": size, "device": torch.cuda.get_device_name(device), "plan": result.memory_plan,
                "estimate": plan.bytes, "peak_allocated": torch.cuda.max_memory_allocated(device),
                "seconds_per_iteration": (times[-1] - times[0]) / max(len(times) - 1, 1),
                "budget_gib": float(os.environ.get("STYLELAB_MEMORY_LIMIT_GIB", "nan"))})  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("exact")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--tile", type=int, default=256)
    p = sub.add_parser("overhead")
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--rounds", type=int, default=5)
    p = sub.add_parser("memory")
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 3072, 4096])
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--history", type=int, default=5)
    p.add_argument("--untiled-up-to", type=int, default=2048)
    p = sub.add_parser("run")
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--tile", default="auto")
    p.add_argument("--steps", type=int, default=TransferConfig().steps)
    p.add_argument("--coarse-steps", type=int, default=TransferConfig().coarse_steps)
    p.add_argument("--history", type=int, default=TransferConfig().history)
    p.add_argument("-o", "--output", required=True)
    p = sub.add_parser("seams")
    p.add_argument("tiled")
    p.add_argument("untiled")
    p.add_argument("--tile", type=int, default=512)
    p = sub.add_parser("gpu")
    p.add_argument("--sizes", type=int, nargs="+", default=[3840, 7680])
    p.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    commands = {"exact": exact, "overhead": overhead, "memory": memory, "run": run, "seams": seams, "gpu": gpu}
    commands[args.command](args)


if __name__ == "__main__":
    main()
