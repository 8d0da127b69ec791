"""Comparing runs: which settings differ, images brought to one size, A/B swipe, difference heat-map,
and the cost tables the compare page plots.

Scope: plain data in (param dicts, metric histories, PIL images), plain data out (DataFrames, PIL
images, floats). No Streamlit, no MLflow: `views/compare.py` reads the runs with `engine.tracking` and
draws what these functions return.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from engine.core.vgg import LAYER_INDEX

__all__ = [
    "MAGMA",
    "colorbar",
    "colormap",
    "cost_curves",
    "cost_keys",
    "difference_heatmap",
    "differing_params",
    "final_layer_costs",
    "flicker_gif",
    "heatmap_scale",
    "parse_run_ids",
    "pixel_differences",
    "quality_points",
    "run_colors",
    "run_labels",
    "same_inputs",
    "same_size",
    "swipe",
]

# A perceptual, monotonically brightening colormap: 9 anchors of matplotlib's "magma" (0 → near black,
# 1 → pale yellow), linearly interpolated. Its lightness grows with the value, so it reads in greyscale.
MAGMA: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (0.000, (0, 0, 4)),
    (0.125, (28, 16, 68)),
    (0.250, (79, 18, 123)),
    (0.375, (129, 37, 129)),
    (0.500, (181, 54, 122)),
    (0.625, (229, 80, 100)),
    (0.750, (251, 135, 97)),
    (0.875, (254, 194, 135)),
    (1.000, (252, 253, 191)),
)
# Tableau's 10 categorical colours (Vega's "category10"): one per run, the same in every chart and caption.
RUN_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
              "#17becf")  # fmt: skip
COST_ORDER = ("cost/total", "cost/content", "cost/style")  # then cost/style/<layer> in network order, cost/tv


def parse_run_ids(text: str | None) -> list[str]:
    """Run ids from a `?runs=a,b,c` query value: split on commas, blanks dropped, duplicates removed
    (first occurrence kept, so the order of the link is the order on the page)."""
    if not text:
        return []
    return list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))


def run_labels(names: Sequence[str], width: int = 28) -> list[str]:
    """Short unique labels for legends and table columns: "A · <name>", "B · <name>", … (names
    shortened to `width` characters; the letter keeps labels unique when names repeat)."""
    labels = []
    for i, name in enumerate(names):
        letter = chr(ord("A") + i) if i < 26 else f"R{i + 1}"
        short = name if len(name) <= width else name[: width - 1] + "…"
        labels.append(f"{letter} · {short}")
    return labels


def run_colors(labels: Sequence[str]) -> dict[str, str]:
    """A colour per run label, in order (cycling after 10 runs)."""
    return {label: RUN_COLORS[i % len(RUN_COLORS)] for i, label in enumerate(labels)}


# --------------------------------------------------------------------------------------------------
# Settings


def differing_params(params_by_run: Mapping[str, Mapping[str, str]]) -> pd.DataFrame:
    """The params whose values differ between runs, or that some runs lack.

    `params_by_run`: column label (run id or name) → that run's MLflow params. Returns one row per
    differing param (index `param`, sorted) and one column per run, in the given order; a missing
    value is None. Empty (no rows) when every run has the same settings."""
    labels = list(params_by_run)
    keys = sorted(set().union(*(params.keys() for params in params_by_run.values())))
    rows = {}
    for key in keys:
        values = [params_by_run[label].get(key) for label in labels]
        if len(set(values)) > 1:
            rows[key] = values
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=labels, dtype="object")
    frame.index.name = "param"
    return frame


def same_inputs(tags_by_run: Mapping[str, Mapping[str, str]]) -> bool:
    """Whether all runs used the same content and style images (their `sha256.*` tags agree)."""
    hashes = [
        tuple(sorted((k, v) for k, v in tags.items() if k.startswith("sha256."))) for tags in tags_by_run.values()
    ]
    return bool(hashes) and bool(hashes[0]) and len(set(hashes)) == 1


# --------------------------------------------------------------------------------------------------
# Images


def _rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")


def same_size(images: Sequence[Image.Image], long_side: int | None = None) -> list[Image.Image]:
    """All images at one common size, so they line up pixel for pixel (RGB).

    The common size is the smallest common box: the smallest width × the smallest height among the
    images (no image is enlarged beyond what all of them have), shrunk so its long side is at most
    `long_side` when given. Images of the target's aspect ratio (the usual case: runs of one content
    image) are just resized; others are scaled to cover the box and centre-cropped, never stretched."""
    if not images:
        return []
    rgb = [_rgb(img) for img in images]
    width, height = min(img.width for img in rgb), min(img.height for img in rgb)
    if long_side is not None and max(width, height) > long_side:
        scale = long_side / max(width, height)
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
    out = []
    for img in rgb:
        if img.size == (width, height):
            out.append(img.copy())
            continue
        scale = max(width / img.width, height / img.height)
        w, h = max(width, round(img.width * scale)), max(height, round(img.height * scale))
        resized = img.resize((w, h), Image.Resampling.LANCZOS)
        left, top = (w - width) // 2, (h - height) // 2
        out.append(resized.crop((left, top, left + width, top + height)))
    return out


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (clipped) → uint8 RGB through the magma-like LUT; shape (..., 3)."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64)), 0.0, 1.0)
    xs = [x for x, _ in MAGMA]
    channels = [np.interp(v, xs, [rgb[c] for _, rgb in MAGMA]) for c in range(3)]
    return np.rint(np.stack(channels, axis=-1)).astype(np.uint8)


def pixel_differences(a: Image.Image, b: Image.Image) -> np.ndarray:
    """Per-pixel difference of two images after `same_size`: the mean over R, G, B of |A − B|, on a
    [0, 1] scale (0: identical, 1: black against white); shape (height, width)."""
    a, b = same_size([a, b])
    return np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).mean(axis=-1) / 255.0


def heatmap_scale(differences: np.ndarray, percentile: float = 99.0) -> float:
    """The difference shown at the colormap's brightest colour: the `percentile` of `differences` (so a
    few outliers do not wash the map out), at least 1/255 (one grey level: identical images stay dark)."""
    return max(float(np.percentile(differences, percentile)) if differences.size else 0.0, 1 / 255)


def difference_heatmap(a: Image.Image, b: Image.Image, vmax: float | None = None) -> tuple[Image.Image, float]:
    """Where and how much two images differ: (heat-map, mean difference).

    Each pixel's difference is `pixel_differences` (mean over RGB of |A − B|, in [0, 1], after
    `same_size`); the heat-map maps 0 (identical) to the colormap's darkest colour and `vmax` or more to
    its brightest; `vmax` defaults to `heatmap_scale` of this pair. The mean difference is the average of
    the per-pixel differences over the image, in [0, 1] (0: identical, 1: black against white)."""
    diff = pixel_differences(a, b)
    vmax = heatmap_scale(diff) if vmax is None else vmax
    if vmax <= 0:
        raise ValueError(f"vmax must be positive, got {vmax}")
    return Image.fromarray(colormap(diff / vmax), mode="RGB"), float(diff.mean())


def colorbar(width: int = 256, height: int = 10) -> Image.Image:
    """The colormap from 0 (left) to 1 (right), a key to print beside a heat-map."""
    row = colormap(np.linspace(0.0, 1.0, width))
    return Image.fromarray(np.repeat(row[None], height, axis=0), mode="RGB")


def swipe(
    a: Image.Image, b: Image.Image, fraction: float, divider: tuple[int, int, int] = (255, 255, 255)
) -> Image.Image:
    """A/B swipe: the left `fraction` of the width from A, the rest from B (after `same_size`), with a
    thin divider line where they meet. `fraction` 0 gives B and 1 gives A exactly (no divider)."""
    a, b = same_size([a, b])
    fraction = min(1.0, max(0.0, float(fraction)))
    x = round(fraction * a.width)
    out = b.copy()
    if x > 0:
        out.paste(a.crop((0, 0, x, a.height)), (0, 0))
    if 0 < x < a.width:
        thickness = max(1, a.width // 256)
        left = min(max(0, x - thickness // 2), a.width - thickness)
        out.paste(Image.new("RGB", (thickness, a.height), divider), (left, 0))
    return out


def flicker_gif(a: Image.Image, b: Image.Image, period_ms: int = 700) -> bytes:
    """A looping GIF that alternates A and B (after `same_size`) every `period_ms`: the eye catches
    small changes in flicker that it misses side by side."""
    a, b = same_size([a, b])
    buffer = io.BytesIO()
    a.save(buffer, format="GIF", save_all=True, append_images=[b], duration=period_ms, loop=0)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------
# Costs


def _layer_order(layer: str) -> tuple[int, str]:
    return (LAYER_INDEX.get(layer, len(LAYER_INDEX)), layer)


def cost_keys(keys: Sequence[str] | set[str]) -> list[str]:
    """The per-step cost metrics among `keys`, in reading order: cost/total, cost/content, cost/style,
    then cost/style/<layer> in network order, then the rest (cost/tv)."""
    present = {k for k in keys if k.startswith("cost/")}
    head = [k for k in COST_ORDER if k in present]
    layers = sorted((k for k in present if k.startswith("cost/style/")), key=lambda k: _layer_order(k[11:]))
    rest = sorted(present - set(head) - set(layers))
    return head + layers + rest


def cost_curves(histories: Mapping[str, pd.DataFrame], *, tv: bool = True) -> pd.DataFrame:
    """Long table of every run's per-step costs: columns run, key, step, value (only positive, finite
    values, for log scales). `histories`: run label → `tracking.metric_history` frame (index step).
    `tv=False` leaves out `cost/tv` (logged even when tv_weight is 0, when it is no part of J)."""
    parts = []
    for label, history in histories.items():
        keys = [k for k in cost_keys(list(history.columns)) if tv or k != "cost/tv"]
        if history.empty or not keys:
            continue
        long = history[keys].reset_index(names="step").melt("step", var_name="key", value_name="value")
        long.insert(0, "run", label)
        parts.append(long)
    if not parts:
        return pd.DataFrame(columns=["run", "key", "step", "value"])
    frame = pd.concat(parts, ignore_index=True)
    frame = frame[np.isfinite(frame["value"]) & (frame["value"] > 0)]
    return frame.reset_index(drop=True)


def final_layer_costs(metrics_by_run: Mapping[str, Mapping[str, float]]) -> pd.DataFrame:
    """Each run's final style cost J_style[l] per layer: columns run, layer, cost (layers in network
    order). From `final/style/<layer>` (the returned image's costs), else the last `cost/style/<layer>`
    (a run that has not finished)."""
    rows = []
    for label, metrics in metrics_by_run.items():
        layers = {k.removeprefix("final/style/") for k in metrics if k.startswith("final/style/")}
        layers |= {k.removeprefix("cost/style/") for k in metrics if k.startswith("cost/style/")}
        for layer in sorted(layers, key=_layer_order):
            value = metrics.get(f"final/style/{layer}", metrics.get(f"cost/style/{layer}"))
            if value is not None and math.isfinite(value):
                rows.append({"run": label, "layer": layer, "cost": float(value)})
    return pd.DataFrame(rows, columns=["run", "layer", "cost"])


def quality_points(metrics_by_run: Mapping[str, Mapping[str, float]]) -> pd.DataFrame:
    """One point per run that has both `quality/content` and `quality/style` metrics: columns run,
    content, style. Empty when no run has them."""
    rows = [
        {"run": label, "content": float(m["quality/content"]), "style": float(m["quality/style"])}
        for label, m in metrics_by_run.items()
        if "quality/content" in m and "quality/style" in m
    ]
    return pd.DataFrame(rows, columns=["run", "content", "style"])
