"""Issue 15's grid: the same content × style pairs under each style cost (gram, w2, sliced), at matched
content loss, with both fixed quality yardsticks and the wall time of each run.

    PYTHONPATH=. python benchmarks/style_cost_grid.py calibrate   # β of w2 and sliced for gram's content kept
    PYTHONPATH=. python benchmarks/style_cost_grid.py grid --beta-w2 X --beta-sliced Y

- `calibrate`: on Tübingen × The Starry Night at 128 px (60 iterations), a few β per cost, judged at the
  result's own size (`engine.core.judge`); prints the β of w2 and of sliced whose content kept is nearest
  gram's at the default β. β is size-aware, so the match carries to 256 px (checked in the grid).
- `grid`: every pair at 256 px with the default settings (150 iterations), gram at the default β and
  the others at their calibrated β. Each result gets the judge's figures on both yardsticks (style
  reduction in Gram units and in W2 units, content kept) and its wall time on this CPU. Writes
  benchmarks/results/style_cost_grid.jsonl, the images under benchmarks/results/style_cost_grid/ and
  docs/style-costs.jpg (rows: pairs; columns: content, style, gram, w2, sliced).

Pairs: the repo's samples, plus Golden Gate and the Hoover Tower from `../shared/images` when it is
there (benchmarks only; never the tests).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from PIL import Image, ImageDraw

from engine.core import images
from engine.core.config import TransferConfig
from engine.core.judge import judge
from engine.core.samples import sample_path
from engine.core.transfer import transfer

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "images"
RESULTS = ROOT / "benchmarks" / "results"
COSTS = ("gram", "w2", "sliced")


def _load(name: str) -> Image.Image:
    try:
        return images.load_image(sample_path(name))
    except FileNotFoundError:
        return images.load_image(next(SHARED.glob(f"*/{name}")))


def _pairs() -> list[tuple[str, str]]:
    pairs = [("tubingen.jpg", "starry_night.jpg"), ("tubingen.jpg", "the_scream.jpg")]
    pairs += [("tubingen.jpg", "shipwreck.jpg")]
    if SHARED.exists():
        pairs += [("golden_gate.jpg", "woman-with-hat-matisse.jpg"), ("hoovertowernight.jpg", "starry_night.jpg")]
    return pairs


def _run(content: Image.Image, style: Image.Image, config: TransferConfig) -> tuple[Image.Image, dict]:
    start = time.perf_counter()
    result = transfer(content, [style], config, device="cpu")
    seconds = time.perf_counter() - start
    j = judge(result.image, content, style, device="cpu")
    figures = {"style_reduction": j.style_reduction, "style_reduction_w2": j.style_reduction_w2,
               "content_kept": j.content_kept, "seconds": seconds}  # fmt: skip
    return result.image, {k: round(v, 3) for k, v in figures.items()}


def calibrate() -> None:
    content, style = _load("tubingen.jpg"), _load("starry_night.jpg")
    base = TransferConfig(size=128, steps=60)
    _, target = _run(content, style, base)
    print("gram", base.beta, target)
    for kind in COSTS[1:]:
        rows = []
        for beta in (2.5e5, 5e5, 1e6, 2e6):
            _, figures = _run(content, style, base.replace(style_cost=kind, beta=beta))
            rows.append((abs(figures["content_kept"] - target["content_kept"]), beta, figures))
            print(kind, beta, figures)
        print(f"{kind}: β = {min(rows)[1]:g} matches gram's content kept {target['content_kept']}")


def grid(betas: dict[str, float]) -> None:
    folder = RESULTS / "style_cost_grid"
    folder.mkdir(parents=True, exist_ok=True)
    log = RESULTS / "style_cost_grid.jsonl"
    done = {}  # results already measured are read back, not run again
    if log.exists():
        for line in log.read_text().splitlines():
            row = json.loads(line)
            done[row["content"], row["style"], row["style_cost"]] = row
    cell = 200
    pairs = _pairs()
    sheet = Image.new("RGB", (5 * (cell + 6), len(pairs) * (cell + 40)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (content_name, style_name) in enumerate(pairs):
        content, style = _load(content_name), _load(style_name)
        shown = [content, style]
        notes = [content_name.removesuffix(".jpg"), style_name.removesuffix(".jpg")]
        for kind in COSTS:
            saved = folder / f"{content_name[:-4]}-{style_name[:-4]}-{kind}.png"
            if (content_name, style_name, kind) in done and saved.exists():
                image, figures = Image.open(saved).convert("RGB"), done[content_name, style_name, kind]
            else:
                config = TransferConfig(style_cost=kind, beta=betas[kind])
                image, figures = _run(content, style, config)
                line = {"content": content_name, "style": style_name, "style_cost": kind, "beta": betas[kind]}
                print(json.dumps(line | figures))
                with log.open("a") as f:
                    f.write(json.dumps(line | figures) + "\n")
                image.save(saved)
            shown.append(image)
            notes.append(f"{kind} {figures['style_reduction']:.1f}x/{figures['style_reduction_w2']:.1f}x "
                         f"kept {figures['content_kept']:.2f}, {figures['seconds']:.0f}s")  # fmt: skip
        for col, (img, note) in enumerate(zip(shown, notes, strict=True)):
            small = img.copy()
            small.thumbnail((cell, cell))
            x, y = col * (cell + 6), row * (cell + 40)
            sheet.paste(small, (x, y))
            draw.text((x, y + cell + 4), note, fill="black")
    sheet.save(ROOT / "docs" / "style-costs.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["calibrate", "grid"])
    parser.add_argument("--beta-w2", type=float, default=TransferConfig().beta)
    parser.add_argument("--beta-sliced", type=float, default=TransferConfig().beta)
    args = parser.parse_args()
    if args.what == "calibrate":
        calibrate()
    else:
        grid({"gram": TransferConfig().beta, "w2": args.beta_w2, "sliced": args.beta_sliced})


if __name__ == "__main__":
    main()
