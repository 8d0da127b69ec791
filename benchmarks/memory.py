"""Peak memory of a run per size, measured, against the estimate the engine checks before starting.

    python benchmarks/memory.py [--sizes 128 256 384] [--device cpu]

Each size runs in a fresh subprocess (3 L-BFGS steps, default layers); CPU peak is the process's
peak resident set (VmHWM), GPU peak is torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONTENT = ROOT / "samples" / "tubingen.jpg"
STYLE = ROOT / "samples" / "starry_night.jpg"

CHILD = """
import json, sys, torch
from engine.core import images
from engine.core.config import TransferConfig
from engine.core.device import estimate_run_bytes
from engine.core.transfer import transfer
size, device = int(sys.argv[1]), torch.device(sys.argv[2])
content, style = images.load_image(sys.argv[3]), images.load_image(sys.argv[4])
config = TransferConfig(size=size, steps=3, coarse_levels=0)
w, h = images.long_side_size(content.size, size)
transfer(content, [style], config, device=device)
if device.type == "cuda":
    peak = torch.cuda.max_memory_allocated(device)
else:
    # VmHWM, not ru_maxrss: the latter survives exec and would count a large parent's pages
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    peak = int(status["VmHWM"].split()[0]) * 1024
print(json.dumps({"size": size, "width": w, "height": h, "peak": peak,
                  "estimate": estimate_run_bytes(config, h, w, device)}))
"""


def measure(size: int, device: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(size), device, str(CONTENT), str(STYLE)],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 384, 512])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print("| size | W×H | measured peak | estimate | estimate / measured |")
    print("|---|---|---|---|---|")
    for size in args.sizes:
        r = measure(size, args.device)
        print(
            f"| {size} | {r['width']}×{r['height']} | {r['peak'] / 2**20:.0f} MiB | "
            f"{r['estimate'] / 2**20:.0f} MiB | {r['estimate'] / r['peak']:.2f} |"
        )


if __name__ == "__main__":
    main()
