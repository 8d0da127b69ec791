"""How the defaults were chosen: a few candidate settings on one content/style pair, as a labelled
picture grid and a markdown table (wall time, final costs).

    python benchmarks/defaults_grid.py --out docs/defaults [--size 256] [--device cpu]

Each row varies one thing from the defaults (`TransferConfig()`): the style weight β, and the start:
white noise at the output size, or white noise with a half-size scale first (the defaults before the
AdaIN init).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from PIL import Image, ImageDraw

from engine.core import images
from engine.core.config import TransferConfig
from engine.core.transfer import transfer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "images"


def candidates(base: TransferConfig) -> dict[str, TransferConfig]:
    noise = base.replace(init="noise")
    return {
        f"beta={base.beta / 4:g}": base.replace(beta=base.beta / 4),
        f"beta={base.beta:g} (default)": base,
        f"beta={base.beta * 4:g}": base.replace(beta=base.beta * 4),
        "noise init": noise,
        "noise init, coarse to fine": noise.replace(coarse_levels=1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/defaults")
    parser.add_argument("--size", type=int, default=TransferConfig().size)
    parser.add_argument("--device", default=None)
    parser.add_argument("--content", default=str(SHARED / "content/tubingen.jpg"))
    parser.add_argument("--style", default=str(SHARED / "style/starry_night.jpg"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    content, style = images.load_image(args.content), images.load_image(args.style)
    rows, tiles = [], []
    for label, config in candidates(TransferConfig(size=args.size)).items():
        start = time.perf_counter()
        result = transfer(content, [style], config, device=args.device)
        seconds = time.perf_counter() - start
        rows.append(
            f"| {label} | {config.schedule} | {seconds:.0f} s | {result.costs['content']:.3g} | "
            f"{result.costs['style']:.3g} | {result.device} |"
        )
        print(rows[-1], flush=True)
        tiles.append((label, result.image))
    table = "| setting | (size, steps) per scale | wall time | content cost | style cost Σλ·J | device |\n"
    table += "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    (out / "defaults.md").write_text(table)
    w, h = tiles[0][1].size
    sheet = Image.new("RGB", (w * len(tiles), h + 18), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (label, image) in enumerate(tiles):
        sheet.paste(image, (i * w, 18))
        draw.text((i * w + 4, 3), label, fill="black")
    sheet.save(out / "defaults.jpg", quality=88)
    print(table)


if __name__ == "__main__":
    main()
