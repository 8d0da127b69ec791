"""Command line: `python -m engine CONTENT STYLE [STYLE …] -o OUT.png [--knob value …]`.

One flag per `TransferConfig` field, built from the dataclass so nothing is listed twice; `--lambda
relu3_1=0.5` (repeatable) sets the style layers; `--mask FILE` with `--region COLOUR=STYLE` (repeatable)
gives regions their own styles. Each run is tracked in MLflow unless `--no-track`.
Errors a user can cause print one line and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import time
from pathlib import Path

from PIL import Image

from engine.core import images
from engine.core.config import PARAMS_VERSION, TransferConfig, knob_help
from engine.core.errors import InputError
from engine.core.regions import parse_region, regions_in_order
from engine.core.transfer import StepReport, TransferResult, transfer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m engine",
        description="Neural style transfer (Gatys et al.) on a pretrained VGG19; each run an MLflow run.",
    )
    parser.add_argument("content", help="content image C")
    parser.add_argument("styles", nargs="+", metavar="style", help="style image(s) S")
    parser.add_argument(
        "-o", "--output", default="result.png",
        help="where to write G: PNG (8 bits per channel), or .tif/.tiff for a 16-bit TIFF (for print)",
    )  # fmt: skip
    defaults = TransferConfig()
    for name, help_text in knob_help().items():
        if name in ("style_layers", "regions"):
            continue
        flag = "--" + name.replace("_", "-")
        default = getattr(defaults, name)
        if isinstance(default, bool):
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            parser.add_argument(flag, dest=name, default=None, metavar="X", help=f"{help_text} (default: {shown})")
    parser.add_argument(
        "--lambda", dest="lambdas", action="append", default=[], metavar="LAYER=WEIGHT",
        help="style layer weight λ, repeatable; replaces the default layers (relu1_1 … relu5_1)",
    )  # fmt: skip
    parser.add_argument(
        "--mask", metavar="FILE",
        help="a mask image over the content, one flat colour per region; without --region, its colours take "
             "the style images in order, largest region first",
    )  # fmt: skip
    parser.add_argument(
        "--region", dest="region_specs", action="append", default=[], metavar="COLOUR=STYLE",
        help="a region of the mask, repeatable: COLOUR=STYLE[,name=N][,alpha=A][,beta=B], STYLE a style image's "
             "number (1+2 blends two) or keep; e.g. red=1 blue=2,beta=3e6 '#00ff00=keep'",
    )  # fmt: skip
    parser.add_argument(
        "--style-mask", dest="style_masks", action="append", default=[], metavar="N=FILE",
        help="a mask over style image N in the --mask colours: each region takes its style from its own part of "
             "that image, repeatable",
    )  # fmt: skip
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--report", metavar="FILE.json", help="write the final costs per layer as JSON")
    parser.add_argument("--no-track", action="store_true", help="do not log the run to MLflow")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or ./mlflow.db)")
    parser.add_argument("--experiment", default="style-transfer", help="MLflow experiment name")
    parser.add_argument("--snapshot-every", type=int, metavar="K", help="log G every K steps (default: ~20 per run)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return parser


def config_from_args(args: argparse.Namespace) -> TransferConfig:
    """The flags as flat params, through the same parser that reads MLflow params back (the current params
    version unless `--params-version` says otherwise: params without one are read as an old run's)."""
    params = {"params_version": PARAMS_VERSION}
    params |= {f.name: str(getattr(args, f.name)).lower() if isinstance(getattr(args, f.name), bool)
               else getattr(args, f.name)
               for f in dataclasses.fields(TransferConfig) if getattr(args, f.name, None) is not None}  # fmt: skip
    for item in args.lambdas:
        layer, sep, weight = item.partition("=")
        if not sep:
            raise InputError(f"--lambda takes LAYER=WEIGHT, like relu3_1=0.5; got {item!r}.")
        params[f"lambda.{layer.strip()}"] = weight
    if args.region_specs and not args.mask:
        raise InputError("--region needs --mask: the mask image whose colours the regions are.")
    regions = tuple(parse_region(text, i + 1) for i, text in enumerate(args.region_specs))
    return TransferConfig.from_params(params).replace(regions=regions)


def style_mask_files(args: argparse.Namespace) -> list[str | None]:
    """`--style-mask N=FILE` flags as one entry per style image (None for one without a mask)."""
    files: list[str | None] = [None] * len(args.styles)
    for item in args.style_masks:
        number, sep, path = item.partition("=")
        if not sep or not number.strip().isdigit() or not 1 <= int(number) <= len(args.styles):
            raise InputError(
                f"--style-mask takes N=FILE with N a style image's number, 1 to {len(args.styles)}; got {item!r}."
            )
        files[int(number) - 1] = path
    return files if any(files) else []


def with_mask_regions(config: TransferConfig, mask: Image.Image | None, styles: list[str]) -> TransferConfig:
    """Without --region, the mask's colours take the style images in order, largest region first; the
    order taken is printed, so the user sees which colour took which style."""
    if mask is None or config.regions:
        return config
    config = config.replace(regions=regions_in_order(mask, len(styles)))
    for region in config.regions:
        print(f"region {region.name} ({region.hex}): style {region.styles[0]} ({styles[region.styles[0] - 1]})",
              file=sys.stderr)
    return config


class ProgressBar:
    """One line on stderr: bar, step, live costs, seconds per step, ETA."""

    def __init__(self, stream=sys.stderr, width: int = 24):
        self.stream, self.width = stream, width
        self.interactive = stream.isatty()

    def __call__(self, report: StepReport) -> None:
        done = report.step / report.total_steps
        if not self.interactive and report.step % max(report.total_steps // 10, 1) and done < 1:
            return
        per_step = report.elapsed_s / report.step
        eta = per_step * (report.total_steps - report.step)
        c = report.costs
        bar = "#" * round(done * self.width)
        line = (
            f"[{bar:<{self.width}}] {report.step}/{report.total_steps} {report.size[0]}x{report.size[1]} "
            f"total {c['total']:.4g} content {c['content']:.4g} style {c['style']:.4g} "
            f"{per_step:.2f}s/step ETA {eta:.0f}s"
        )
        self.stream.write(("\r" + line + "\033[K") if self.interactive else line + "\n")
        if self.interactive and done >= 1:
            self.stream.write("\n")
        self.stream.flush()


def write_report(path: str, result: TransferResult, config: TransferConfig, run_id: str | None) -> None:
    report = {
        "costs": result.costs,
        "style_layers": {key: result.costs[f"style/{key}"] for key in config.style_cost_keys},
        "steps_done": result.steps_done,
        "total_steps": result.total_steps,
        "seconds": round(result.elapsed_s, 3),
        "device": result.device,
        "stopped": result.stopped,
        "memory_plan": result.memory_plan,
        "run_id": run_id,
        "config": config.to_params(),
    }
    Path(path).write_text(json.dumps(report, indent=2))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        inputs = images.Inputs.decode(args.content, args.styles, args.mask, style_mask_files(args))  # once, here
        config = with_mask_regions(config, inputs.mask_image, args.styles)
        content, styles = inputs.content.image, inputs.style_images
        stop_requested = False

        def request_stop(*_):  # first Ctrl-C: finish cleanly with the best image so far
            nonlocal stop_requested
            stop_requested = True
            signal.signal(signal.SIGINT, signal.default_int_handler)

        signal.signal(signal.SIGINT, request_stop)
        progress = None if args.quiet else ProgressBar()
        run_id, warning = None, None
        start = time.perf_counter()
        if args.no_track:
            result = transfer(content, styles, config, on_step=progress, should_stop=lambda: stop_requested,
                              device=args.device, mask=inputs.mask_image,
                              style_masks=inputs.style_mask_images)  # fmt: skip
        else:
            from engine.jobs import tracked_transfer  # MLflow only here
            from engine.tracking import check_reachable, mark_orphaned_runs

            tracking_uri = check_reachable(args.tracking_uri)
            mark_orphaned_runs(tracking_uri, args.experiment)  # runs of CLI processes that were killed
            ended = tracked_transfer(
                inputs.content, inputs.styles, config, mask=inputs.mask, style_masks=inputs.style_masks,
                tracking_uri=tracking_uri,
                experiment=args.experiment,
                source="cli", on_step=progress, should_stop=lambda: stop_requested, device=args.device,
                snapshot_every=args.snapshot_every,
            )  # fmt: skip
            run_id, warning, result = ended.run_id, ended.warning, ended.result
            if result is None:
                raise InputError(f"Run {run_id} failed: {ended.error}")
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        if output.suffix.lower() in (".tif", ".tiff"):
            images.write_tiff16(result.pixels, output)
        else:
            result.image.save(output)
        if args.report:
            write_report(args.report, result, config, run_id)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    status = f" ({result.stopped})" if result.stopped else ""
    print(f"wrote {output} in {time.perf_counter() - start:.1f}s on {result.device}{status}", file=sys.stderr)
    if run_id:
        print(f"MLflow run {run_id}", file=sys.stderr)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
