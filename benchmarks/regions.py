"""Issue 15's regions picture and figures: Tübingen with its sky after The Starry Night and its town and
river after The Scream (samples/tubingen_sky_mask.png), beside the same settings without a mask, one
style over the whole image.

    PYTHONPATH=. python benchmarks/regions.py [--size 256] [--steps 150]

Each region of each result is measured against both styles: D_r(S) = Σ_l ‖Ĝ_r(G) − Ĝ(S)‖²_F / (2·n_C)²
over relu1_1 … relu5_1, Ĝ_r the guided Gram over the region (engine.core.style_costs.guided_gram) and
Ĝ(S) the style image's Gram. A region that took its own style is nearer it than to the other. Writes
docs/regions.jpg (content with the regions over it | masked | Starry Night only | The Scream only) and
one JSON line per result to benchmarks/results/regions.jsonl.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from engine.core import images
from engine.core.config import GATYS_STYLE_LAYERS, TransferConfig
from engine.core.regions import Region, layer_maps, mask_overlay, region_maps
from engine.core.samples import sample_path
from engine.core.style_costs import guided_gram
from engine.core.transfer import transfer
from engine.core.vgg import VGGFeatures

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "regions.jsonl"
REGIONS = (Region("sky", (255, 0, 0), (1,)), Region("town", (0, 0, 255), (2,)))


def region_distances(result: Image.Image, styles: list[Image.Image], mask: Image.Image) -> dict[str, list[float]]:
    """{region: [D_r(S_1), D_r(S_2)]} for `result`."""
    net = VGGFeatures(GATYS_STYLE_LAYERS)
    g = images.image_to_tensor(result)
    maps = region_maps(mask, REGIONS, *g.shape[-2:])
    with torch.no_grad():
        fg = net(g)
        fs = [net(images.image_to_tensor(images.resize_long_side(s, max(result.size)))) for s in styles]
        out = {}
        for index, region in enumerate(REGIONS):
            weight = maps[index : index + 1]
            out[region.name] = [
                sum(
                    float((guided_gram(fg[layer], layer_maps(weight, layer)) - guided_gram(f[layer])).pow(2).sum())
                    / (2 * fg[layer].shape[1]) ** 2
                    for layer in GATYS_STYLE_LAYERS
                )
                for f in fs
            ]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    content = images.load_image(sample_path("tubingen.jpg"))
    styles = [images.load_image(sample_path(n)) for n in ("starry_night.jpg", "the_scream.jpg")]
    mask = images.load_image(sample_path("tubingen_sky_mask.png"))
    base = TransferConfig(size=args.size, steps=args.steps)
    runs = {
        "regions": (base.replace(regions=REGIONS), styles, mask),
        "starry night only": (base, styles[:1], None),
        "the scream only": (base, styles[1:], None),
    }
    shown = [images.resize_long_side(mask_overlay(content, mask), args.size)]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    for label, (config, run_styles, run_mask) in runs.items():
        start = time.perf_counter()
        result = transfer(content, run_styles, config, mask=run_mask, device="cpu")
        seconds = time.perf_counter() - start
        distances = region_distances(result.image, styles, mask)
        row = {"run": label, "size": args.size, "steps": args.steps, "seconds": round(seconds, 1),
               "distances": {k: [round(v, 3) for v in d] for k, d in distances.items()}}  # fmt: skip
        print(json.dumps(row))
        with RESULTS.open("a") as f:
            f.write(json.dumps(row) + "\n")
        shown.append(result.image)
    width, height = shown[1].size
    strip = Image.new("RGB", (len(shown) * (width + 8) - 8, height + 24), "white")
    draw = ImageDraw.Draw(strip)
    for i, (img, label) in enumerate(zip(shown, ["content, regions", *runs], strict=True)):
        strip.paste(img.resize((width, height)), (i * (width + 8), 0))
        draw.text((i * (width + 8) + 4, height + 6), label, fill="black")
    strip.save(ROOT / "docs" / "regions.jpg", quality=90)


if __name__ == "__main__":
    main()
