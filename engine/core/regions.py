"""Spatial control (Gatys et al. 2017, "Controlling Perceptual Factors in Neural Style Transfer"): a mask
image whose flat colours split the content image into regions, each with its own style images, weights
and λ, or kept as it is.

Scope: the `Region` knob (validation and flat params), reading a mask into per-region maps, and those
maps at a layer's resolution. Torch and Pillow only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageColor

from engine.core.errors import InputError
from engine.core.vgg import LAYER_INDEX, check_layer, layer_stride

MAX_REGIONS = 8
MIN_REGION_SHARE = 0.005  # a colour covering less of the mask than this is an edge's blend, not a region
_COLOR_STEP = 48  # colours this close on every channel are one region's (JPEG noise, anti-aliasing)
_BLEND_SHARE = 0.05  # a group smaller than this whose colour lies between two regions' is their border
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


@dataclass(frozen=True)
class Region:
    """One region of the mask: the pixels nearest `color`. `styles` are 1-based numbers of the run's style
    images (blended by `blend`, equal by default); none means the region keeps the content as it is (no
    style cost; it starts from the content photo). `alpha`, `beta` and `lambdas` are the region's own
    weights; None means the run's."""

    name: str
    color: tuple[int, int, int]
    styles: tuple[int, ...] = ()
    blend: tuple[float, ...] = ()
    alpha: float | None = None
    beta: float | None = None
    lambdas: tuple[tuple[str, float], ...] | None = None

    @property
    def keeps_content(self) -> bool:
        return not self.styles

    @property
    def hex(self) -> str:
        return hex_color(self.color)

    def checked(self, style_count: int | None = None) -> Region:
        """This region validated (InputError naming the region), its λ in network order."""
        what = f"Region {self.name!r}"
        if not _NAME.match(self.name):
            raise InputError(f"{what}: a region's name is lower-case letters, digits and _, starting with a letter.")
        color = parse_color(self.color, what)
        styles = tuple(int(s) for s in self.styles)
        if any(s < 1 for s in styles) or len(set(styles)) != len(styles):
            raise InputError(f"{what}: styles are the style images' numbers, from 1, each once; got {styles}.")
        if style_count is not None and any(s > style_count for s in styles):
            raise InputError(
                f"{what} asks for style image {max(styles)}, but the run has {style_count}. Add that style image "
                "or choose another for the region."
            )
        blend = tuple(float(w) for w in self.blend)
        if blend and (len(blend) != len(styles) or min(blend) < 0 or sum(blend) <= 0):
            raise InputError(f"{what}: give one blend weight per style image, zero or positive, or none.")
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            if value is not None and (not np.isfinite(float(value)) or float(value) < 0):
                raise InputError(f"{what}: {name} must be zero or positive, got {value}.")
        lambdas = None
        if self.lambdas is not None:
            pairs = self.lambdas.items() if isinstance(self.lambdas, Mapping) else self.lambdas
            checked = {check_layer(str(layer), what="style layer"): float(w) for layer, w in pairs}
            if any(w < 0 or not np.isfinite(w) for w in checked.values()):
                raise InputError(f"{what}: every λ must be zero or positive.")
            lambdas = tuple(sorted(checked.items(), key=lambda kv: LAYER_INDEX[kv[0]]))
        return Region(
            self.name, color, styles, blend,
            None if self.alpha is None else float(self.alpha), None if self.beta is None else float(self.beta), lambdas,
        )  # fmt: skip


def hex_color(color: tuple[int, int, int]) -> str:
    """"#rrggbb" of an (r, g, b) colour."""
    return "#{:02x}{:02x}{:02x}".format(*color)


def parse_color(value: object, what: str = "A region") -> tuple[int, int, int]:
    """(r, g, b) from a tuple, "#rrggbb" or a CSS colour name."""
    if isinstance(value, (tuple, list)) and len(value) == 3:
        rgb = tuple(int(v) for v in value)
        if all(0 <= v <= 255 for v in rgb):
            return rgb  # type: ignore[return-value]
    try:
        return ImageColor.getrgb(str(value))[:3]
    except ValueError:
        raise InputError(f"{what}: {value!r} is not a colour; write it as #rrggbb or a name such as red.") from None


def check_regions(regions: Sequence[Region]) -> tuple[Region, ...]:
    """Every region checked; names and colours unique; at most `MAX_REGIONS`; at least one styled."""
    regions = tuple(r.checked() for r in regions)
    if not regions:
        return ()
    if len(regions) > MAX_REGIONS:
        raise InputError(f"A mask may have at most {MAX_REGIONS} regions, got {len(regions)}.")
    for key, what in ((lambda r: r.name, "name"), (lambda r: r.color, "colour")):
        seen = [key(r) for r in regions]
        if len(set(seen)) != len(seen):
            raise InputError(f"Two regions have the same {what}; give each region its own.")
    if all(r.keeps_content for r in regions):
        raise InputError("Every region keeps the content as it is: give at least one region a style image.")
    return regions


def regions_to_params(regions: Sequence[Region]) -> dict[str, str]:
    """Flat params: `regions` (names in order), then `region.<name>.color|styles|blend|alpha|beta|lambda.<layer>`."""
    if not regions:
        return {}
    params = {"regions": ",".join(r.name for r in regions)}
    for r in regions:
        key = f"region.{r.name}."
        params[key + "color"] = r.hex
        params[key + "styles"] = ",".join(map(str, r.styles)) or "keep"
        if r.blend:
            params[key + "blend"] = ",".join(repr(w) for w in r.blend)
        for name in ("alpha", "beta"):
            if getattr(r, name) is not None:
                params[key + name] = repr(getattr(r, name))
        if r.lambdas is not None:
            params |= {f"{key}lambda.{layer}": repr(w) for layer, w in r.lambdas} or {key + "lambdas": "none"}
    return params


def regions_from_params(params: Mapping[str, str]) -> tuple[Region, ...]:
    """Inverse of `regions_to_params` (InputError on a malformed value)."""
    names = [n.strip() for n in params.get("regions", "").split(",") if n.strip() and n.strip() != "none"]
    regions = []
    for name in names:
        key = f"region.{name}."
        get = lambda field, key=key: params.get(key + field)  # noqa: E731
        if get("color") is None:
            raise InputError(f"Region {name!r} has no colour (param {key}color).")
        styles = get("styles") or "keep"
        lambdas = {k.removeprefix(key + "lambda."): v for k, v in params.items() if k.startswith(key + "lambda.")}
        regions.append(
            Region(
                name=name,
                color=parse_color(get("color"), f"Region {name!r}"),
                styles=() if styles == "keep" else tuple(_numbers(styles, int, key + "styles")),
                blend=tuple(_numbers(get("blend") or "", float, key + "blend")),
                alpha=None if get("alpha") is None else _numbers(get("alpha"), float, key + "alpha")[0],
                beta=None if get("beta") is None else _numbers(get("beta"), float, key + "beta")[0],
                lambdas=tuple((layer, _numbers(w, float, key + layer)[0]) for layer, w in lambdas.items())
                if lambdas or get("lambdas") == "none" else None,
            )
        )
    return check_regions(regions)


def _numbers(text: str, kind: type, name: str) -> list:
    try:
        return [kind(float(t)) if kind is int else kind(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise InputError(f"{name} must be a number or a comma-separated list of numbers, got {text!r}.") from None


def mask_colors(mask: Image.Image, limit: int = MAX_REGIONS) -> list[tuple[tuple[int, int, int], float]]:
    """The mask's flat colours and the share of pixels each covers, largest first. Pixels are grouped by
    colour to within `_COLOR_STEP` per channel, groups whose mean colours are that close are merged (JPEG
    noise, a colour on a group's edge), and groups covering less than `MIN_REGION_SHARE` are an edge's
    blend, not regions. InputError when more than `limit` remain."""
    rgb = np.asarray(mask.convert("RGB"), dtype=np.float64).reshape(-1, 3)
    buckets, inverse, counts = np.unique(
        (rgb // _COLOR_STEP).astype(np.int64), axis=0, return_inverse=True, return_counts=True
    )
    sums = np.zeros((len(buckets), 3))
    np.add.at(sums, inverse.ravel(), rgb)
    groups: list[list[float]] = []  # [r, g, b, count], merged
    for index in np.argsort(-counts):
        mean = sums[index] / counts[index]
        near = next((g for g in groups if np.abs(np.subtract(g[:3], mean)).max() < _COLOR_STEP), None)
        if near is None:
            groups.append([*mean, float(counts[index])])
        else:  # the larger group keeps its colour
            near[3] += counts[index]
    total = len(rgb)
    found: list[tuple[tuple[int, ...], float]] = []
    for group in sorted(groups, key=lambda g: -g[3]):
        color, share = np.array(group[:3]), group[3] / total
        if share < MIN_REGION_SHARE or (share < _BLEND_SHARE and _is_blend(color, [np.array(c) for c, _ in found])):
            continue
        found.append((tuple(round(v) for v in color), share))
    if len(found) > limit:
        raise InputError(
            f"The mask has {len(found)} colours that each cover at least {MIN_REGION_SHARE:.1%} of it; a region "
            f"mask has at most {limit} flat colours. Paint each region in one flat colour (no gradients or "
            "photos), and save it as PNG."
        )
    if not found:
        raise InputError("The mask has no flat colours. Paint each region in one flat colour, and save it as PNG.")
    return found  # type: ignore[return-value]


def _is_blend(color: np.ndarray, larger: list[np.ndarray]) -> bool:
    """Whether `color` lies between two larger regions' colours: the anti-aliased or JPEG-blurred border."""
    for i, a in enumerate(larger):
        for b in larger[i + 1 :]:
            t = np.clip(np.dot(color - a, b - a) / max(np.dot(b - a, b - a), 1e-9), 0, 1)
            if np.abs(a + t * (b - a) - color).max() < _COLOR_STEP:
                return True
    return False


def check_mask_fits(
    mask: Image.Image, image_size: tuple[int, int], what: str = "The mask", over: str = "the content image"
) -> None:
    """InputError unless the mask has the aspect ratio of the image it is drawn over (within 2 %)."""
    (mw, mh), (cw, ch) = mask.size, image_size
    if abs(mw / mh - cw / ch) > 0.02 * cw / ch:
        raise InputError(
            f"{what} is {mw}×{mh} but {over} is {cw}×{ch}: their shapes differ. Draw the mask over {over}, at its "
            "size or a scaled copy of it."
        )


def region_maps(mask: Image.Image, regions: Sequence[Region], height: int, width: int) -> torch.Tensor:
    """One map per region, (R, 1, height, width), in [0, 1] and summing to 1 at every pixel: each mask
    pixel goes to the region of the nearest colour, and the one-hot maps are area-resampled to the size."""
    colors = torch.tensor([r.color for r in regions], dtype=torch.float32)  # (R, 3)
    pixels = torch.from_numpy(np.asarray(mask.convert("RGB"), dtype=np.float32).copy())  # (h, w, 3)
    nearest = torch.cdist(pixels.reshape(-1, 3), colors).argmin(1).reshape(pixels.shape[:2])
    one_hot = F.one_hot(nearest, len(regions)).permute(2, 0, 1).unsqueeze(1).float()  # (R, 1, h, w)
    if one_hot.shape[-2:] == (height, width):
        return one_hot
    maps = F.interpolate(one_hot, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    maps = maps.clamp_min(0)
    return maps / maps.sum(0, keepdim=True).clamp_min(1e-8)


def layer_maps(maps: torch.Tensor, layer: str) -> torch.Tensor:
    """`region_maps` at `layer`'s resolution: the mean over each position's s×s pixels (s = the layer's
    stride), which is the block that position pools from, so the sizes match VGG19's floor pooling."""
    stride = layer_stride(layer)
    return maps if stride == 1 else F.avg_pool2d(maps, stride, stride)


def mask_overlay(content: Image.Image, mask: Image.Image, opacity: float = 0.45) -> Image.Image:
    """The content image with the mask's colours laid over it, to show the regions before a run."""
    base = content.convert("RGB")
    colors = mask.convert("RGB").resize(base.size, Image.Resampling.NEAREST)
    return Image.blend(base, colors, opacity)


def color_name(color: tuple[int, int, int], index: int) -> str:
    """A region's default name: the colour's CSS name when it has one (red, blue, …), else `region<index>`."""
    for name, value in ImageColor.colormap.items():
        if parse_color(value) == tuple(color) and _NAME.match(name):  # Pillow caches some values as tuples
            return name
    return f"region{index}"


def regions_in_order(mask: Image.Image, style_count: int) -> tuple[Region, ...]:
    """One region per flat colour of the mask, largest first, taking style image 1, 2, … in that order.
    InputError unless there are as many style images as colours."""
    colors = mask_colors(mask)
    if len(colors) != style_count:
        listed = ", ".join(f"{hex_color(c)} ({share:.0%})" for c, share in colors)
        raise InputError(
            f"The mask has {len(colors)} colours ({listed}) but {style_count} style images were given. Give one "
            "style image per colour, largest region first, or say which style each colour takes."
        )
    return check_regions([Region(color_name(c, i + 1), c, (i + 1,)) for i, (c, _) in enumerate(colors)])


def parse_region(text: str, index: int) -> Region:
    """A region from the command line: `COLOUR=STYLES[,name=N][,alpha=A][,beta=B]`, STYLES being a style
    image's number, several joined by + (an equal blend), or keep."""
    head, *options = [part.strip() for part in text.split(",")]
    color_text, sep, styles = head.partition("=")
    if not sep:
        raise InputError(f"--region takes COLOUR=STYLE, like red=1, blue=2,beta=3e6 or '#00ff00=keep'; got {text!r}.")
    color = parse_color(color_text.strip(), f"--region {text!r}")
    fields: dict = {"name": color_name(color, index)}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or key not in ("name", "alpha", "beta"):
            raise InputError(f"--region {text!r}: options are name=, alpha= and beta=; got {option!r}.")
        fields[key] = value if key == "name" else _numbers(value, float, f"--region {key}")[0]
    numbers = () if styles.strip() == "keep" else tuple(_numbers(styles.replace("+", ","), int, "--region style"))
    return Region(color=color, styles=numbers, **fields)
