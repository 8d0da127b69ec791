"""Decode and validate user images, resize them, convert to and from tensors, and colour helpers.

Everything a user can get wrong about an image file ends up as an ``InputError`` whose message
is fit to show in the UI; nothing here imports Streamlit or MLflow.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from engine.core.errors import InputError
from engine.core.limits import MAX_INPUT_BYTES, MAX_INPUT_PIXELS

# Only decode everyday raster formats: exotic decoders are extra attack surface for uploads,
# and EPS would even shell out to Ghostscript.
_ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "AVIF", "GIF", "BMP", "TIFF", "PPM")
_FORMATS_FOR_USERS = "PNG, JPEG, WebP, GIF, BMP or TIFF"

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


def _allowed_formats() -> list[str]:
    # Image.open raises KeyError for a format this Pillow build lacks (e.g. AVIF), so filter.
    Image.init()
    return [f for f in _ALLOWED_FORMATS if f in Image.OPEN]


def _too_many_pixels_message(name: str, size: tuple[int, int] | None) -> str:
    what = f"is {size[0]}x{size[1]} pixels, which is" if size else "is"
    return (
        f"The {name} {what} more than the limit of {MAX_INPUT_PIXELS:,} pixels "
        f"({MAX_INPUT_PIXELS / 1e6:g} megapixels). Shrink it and try again."
    )


def _read_source(source: str | os.PathLike[str] | bytes, name: str) -> bytes:
    """Return the file's bytes, refusing missing, unreadable, empty or oversized files."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        path = os.fspath(source)
        if not os.path.exists(path):
            raise InputError(f"The {name} file was not found: {path!s}. Check the path and try again.")
        if not os.path.isfile(path):
            raise InputError(f"The {name} path is not a file: {path!s}. Choose an image file instead.")
        try:
            # Check the size before reading so a huge file never lands in memory.
            if os.path.getsize(path) > MAX_INPUT_BYTES:
                raise InputError(_too_many_bytes_message(name))
            with open(path, "rb") as f:
                data = f.read(MAX_INPUT_BYTES + 1)
        except OSError as e:
            raise InputError(f"The {name} file could not be read ({e.strerror or e}). Check it and try again.") from e
    if len(data) > MAX_INPUT_BYTES:
        raise InputError(_too_many_bytes_message(name))
    if not data:
        raise InputError(f"The {name} file is empty. Choose a {_FORMATS_FOR_USERS} image.")
    return data


def _too_many_bytes_message(name: str) -> str:
    return (
        f"The {name} file is larger than {MAX_INPUT_BYTES // (1024 * 1024)} MB. "
        "Save it smaller (fewer pixels or stronger compression) and try again."
    )


def _scale_to_uint8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    scaled = (values.astype(np.float64) - lo) / (hi - lo) if hi > lo else np.zeros(values.shape)
    return np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def _high_depth_grey_to_l(img: Image.Image) -> Image.Image:
    """16/32-bit integer or float greyscale to 8-bit "L" by value range.

    Pillow's own convert("L") clips at 255, which turns most 16-bit images pure white.
    """
    arr = np.asarray(img)
    if img.mode == "F":
        arr = arr.astype(np.float64)
        finite = arr[np.isfinite(arr)]
        lo = float(finite.min()) if finite.size else 0.0
        hi = float(finite.max()) if finite.size else 1.0
        arr = np.nan_to_num(arr, nan=lo, posinf=hi, neginf=lo)
        if lo >= 0.0 and hi <= 1.0:
            lo, hi = 0.0, 1.0  # already a 0..1 intensity image
        elif lo >= 0.0:
            lo = 0.0  # positive data: scale by its maximum
        return Image.fromarray(_scale_to_uint8(arr, lo, hi))
    lo, hi = 0.0, 65535.0
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 65535):
        # 32-bit "I" data outside the 16-bit range: use its own range instead.
        lo, hi = float(arr.min()), float(arr.max())
    return Image.fromarray(_scale_to_uint8(arr, lo, hi))


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any decoded mode to 8-bit RGB; transparency is composited onto white."""
    if img.mode == "F" or img.mode == "I" or img.mode.startswith("I;16"):
        img = _high_depth_grey_to_l(img)
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode == "RGB":
        return img.copy()  # detach from the decoder and its file buffer
    return img.convert("RGB")


def load_image(source: str | os.PathLike[str] | bytes, *, name: str = "image") -> Image.Image:
    """Decode a user's image (a path or the file's bytes) into an upright 8-bit RGB image.

    ``name`` says which image this is in messages ("content image", "style image 2"). Any
    problem with the file raises ``InputError`` with a message fit for the UI. Animated images
    give their first frame; transparent areas become white; EXIF rotation is applied.
    """
    data = _read_source(source, name)
    try:
        with warnings.catch_warnings():
            # Local only: Pillow's bomb warning becomes an exception we can report.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                img = Image.open(io.BytesIO(data), formats=_allowed_formats())
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
                raise InputError(_too_many_pixels_message(name, None)) from e
            except UnidentifiedImageError as e:
                raise InputError(
                    f"The {name} is not an image this app can read. Choose a {_FORMATS_FOR_USERS} file."
                ) from e
            except Exception as e:  # any other decoder failure while reading the header
                raise InputError(
                    f"The {name} could not be read; the file looks damaged. Re-save or re-export it and try again."
                ) from e

            # The header's size is known before pixel data is decoded: refuse bombs here.
            width, height = img.size
            if width <= 0 or height <= 0:
                raise InputError(f"The {name} has no pixels ({width}x{height}). Choose a different image.")
            if width * height > MAX_INPUT_PIXELS:
                raise InputError(_too_many_pixels_message(name, (width, height)))

            try:
                img.load()  # decodes the first frame only, also for animated images
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
                raise InputError(_too_many_pixels_message(name, (width, height))) from e
            except Exception as e:  # OSError for truncation, SyntaxError, struct errors, ...
                raise InputError(
                    f"The {name} is damaged or incomplete (it could not be decoded). "
                    "Re-save or re-export it and try again."
                ) from e

            # Broken EXIF only loses the rotation; the pixels are still fine.
            with contextlib.suppress(Exception):
                img = ImageOps.exif_transpose(img)

            try:
                return _to_rgb(img)
            except Exception as e:
                raise InputError(
                    f"The {name} uses a colour format ({img.mode}) this app cannot convert. "
                    "Save it as an RGB PNG or JPEG and try again."
                ) from e
    except InputError:
        raise
    except Exception as e:  # last guard: users must never see a traceback
        raise InputError(f"The {name} could not be read ({type(e).__name__}). Try a different file.") from e


def long_side_size(size: tuple[int, int], long_side: int) -> tuple[int, int]:
    """(width, height) scaled so the longer side is ``long_side`` pixels, keeping the aspect ratio."""
    if long_side < 1:
        raise InputError(f"The image size must be at least 1 pixel, got {long_side}.")
    width, height = size
    scale = long_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize_long_side(img: Image.Image, long_side: int) -> Image.Image:
    """Scale so the longer side is ``long_side`` pixels, keeping the aspect ratio (Lanczos)."""
    size = long_side_size(img.size, long_side)
    if size == img.size:
        return img.copy()
    return img.resize(size, Image.Resampling.LANCZOS)


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """An image as a float32 tensor of shape (1, 3, H, W) with values in [0, 1]."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    arr = np.array(img, dtype=np.uint8)  # a writable copy, as torch.from_numpy wants
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).to(torch.float32).div_(255.0).contiguous()


def tensor_to_image(t: torch.Tensor) -> Image.Image:
    """A (1, 3, H, W) or (3, H, W) tensor in [0, 1] (any device/dtype) as an 8-bit RGB image.

    Values are clamped to [0, 1] and rounded; NaNs become 0.
    """
    t = t.detach()
    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 3 or t.shape[0] != 3:
        raise ValueError(f"expected a tensor of shape (1, 3, H, W) or (3, H, W), got {tuple(t.shape)}")
    t = torch.nan_to_num(t.to(device="cpu", dtype=torch.float32), nan=0.0)
    arr = t.clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    return Image.fromarray(arr)


def write_tiff16(t: torch.Tensor, path: str | os.PathLike[str]) -> None:
    """Write a (1, 3, H, W) or (3, H, W) tensor in [0, 1] as an uncompressed 16-bit RGB TIFF (baseline
    TIFF 6.0, little-endian, one strip): print workflows keep the optimiser's fp32 values to 1/65535,
    where an 8-bit PNG rounds them to 1/255. Pillow writes 16 bits for one channel only, hence our own."""
    t = t.detach()
    t = t[0] if t.dim() == 4 else t
    height, width = t.shape[-2:]
    pixels = t.float().cpu().nan_to_num(0.0).clamp(0, 1).mul(65535).round().to(torch.int32).permute(1, 2, 0)
    data = pixels.numpy().astype("<u2").tobytes()
    short, long = 3, 4  # TIFF field types
    entries = [  # (tag, type, count, value), in ascending tag order as TIFF asks
        (256, long, 1, width), (257, long, 1, height), (258, short, 3, None), (259, short, 1, 1),
        (262, short, 1, 2), (273, long, 1, None), (277, short, 1, 3), (278, long, 1, height),
        (279, long, 1, len(data)), (284, short, 1, 1),
    ]  # fmt: skip
    ifd_offset = 8
    bits_offset = ifd_offset + 2 + 12 * len(entries) + 4
    data_offset = bits_offset + 6
    out = bytearray(b"II*\x00" + struct.pack("<I", ifd_offset) + struct.pack("<H", len(entries)))
    for tag, kind, count, value in entries:
        value = {258: bits_offset, 273: data_offset}.get(tag, value)
        packed = struct.pack("<H", value) + b"\x00\x00" if kind == short and tag != 258 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, kind, count) + packed
    out += struct.pack("<I", 0) + struct.pack("<3H", 16, 16, 16)
    with open(path, "wb") as f:
        f.write(bytes(out))
        f.write(data)


def image_to_png_bytes(img: Image.Image) -> bytes:
    """The image encoded as PNG (lossless)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def sha256_of(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, eq=False)
class InputImage:
    """An input decoded once, at the edge (upload, CLI, the store): the RGB image, the PNG stored as the
    run's input artifact, and the sha256 of the bytes the user gave (of the PNG for a decoded image)."""

    image: Image.Image
    png: bytes
    sha256: str

    @classmethod
    def decode(cls, source: str | os.PathLike[str] | bytes | Image.Image, name: str = "image") -> InputImage:
        """InputError, naming `name`, when the file cannot be read as an image."""
        if isinstance(source, InputImage):
            return source
        if isinstance(source, Image.Image):
            img = source if source.mode == "RGB" else source.convert("RGB")
            png = fast_png(img)
            return cls(img, png, sha256_of(png))
        data = _read_source(source, name)
        img = load_image(data, name=name)
        return cls(img, fast_png(img), sha256_of(data))


@dataclass(frozen=True, eq=False)
class Inputs:
    """A run's content image, its style images, its region mask (`engine.core.regions`) if it has one,
    and its style images' masks (one per style image, None for none; or none at all), each decoded once
    (`InputImage`)."""

    content: InputImage
    styles: tuple[InputImage, ...]
    mask: InputImage | None = None
    style_masks: tuple[InputImage | None, ...] = ()

    @classmethod
    def decode(cls, content: object, styles: Sequence[object], mask: object = None,
               style_masks: Sequence[object] = ()) -> Inputs:  # fmt: skip
        if isinstance(styles, (bytes, str, Image.Image)):
            raise TypeError("styles must be a sequence of images")
        return cls(
            InputImage.decode(content, "content image"),
            tuple(InputImage.decode(s, f"style image {i + 1}") for i, s in enumerate(styles)),
            None if mask is None else InputImage.decode(mask, "mask image"),
            tuple(None if m is None else InputImage.decode(m, f"mask of style image {i + 1}")
                  for i, m in enumerate(style_masks)),
        )  # fmt: skip

    @property
    def style_mask_images(self) -> list[Image.Image | None]:
        return [None if m is None else m.image for m in self.style_masks]

    @property
    def style_images(self) -> list[Image.Image]:
        return [s.image for s in self.styles]

    @property
    def mask_image(self) -> Image.Image | None:
        return None if self.mask is None else self.mask.image

    @property
    def digests(self) -> tuple[str, ...]:
        """The sha256 of every input, the mask's last: equal digests, equal inputs."""
        masks = [self.mask.sha256] if self.mask else []
        masks += [f"style mask {i}:{m.sha256}" for i, m in enumerate(self.style_masks) if m is not None]
        return (self.content.sha256, *(s.sha256 for s in self.styles), *masks)


def fast_png(img: Image.Image) -> bytes:
    """Lossless PNG, fast: zlib level 1 encodes a 1024-px photo in ~0.1 s (level 6: ~0.25 s), ~3 % larger."""
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


# --- Colour helpers for colour preservation (Gatys et al. 2016, "Preserving colour in neural
# artistic style transfer", luminance-only transfer) -----------------------------------------

# NTSC RGB -> YIQ. The I and Q rows sum to zero, so greys have I = Q = 0.
_RGB_TO_YIQ = torch.tensor(
    [
        [0.299, 0.587, 0.114],
        [0.595716, -0.274453, -0.321263],
        [0.211456, -0.522591, 0.311135],
    ],
    dtype=torch.float64,
)
# The exact inverse (not the rounded published one), so RGB -> YIQ -> RGB round-trips.
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def _check_three_channels(t: torch.Tensor, what: str) -> None:
    if t.dim() < 3 or t.shape[-3] != 3:
        raise ValueError(f"{what} must have shape (..., 3, H, W), got {tuple(t.shape)}")


def _apply_colour_matrix(matrix: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    m = matrix.to(device=t.device, dtype=t.dtype)
    return torch.einsum("ij,...jhw->...ihw", m, t)


def rgb_to_yiq(t: torch.Tensor) -> torch.Tensor:
    """RGB (..., 3, H, W) to YIQ with the NTSC matrix.

    Y = 0.299 R + 0.587 G + 0.114 B; I = 0.595716 R - 0.274453 G - 0.321263 B;
    Q = 0.211456 R - 0.522591 G + 0.311135 B.
    """
    _check_three_channels(t, "rgb")
    return _apply_colour_matrix(_RGB_TO_YIQ, t)


def yiq_to_rgb(t: torch.Tensor) -> torch.Tensor:
    """YIQ (..., 3, H, W) back to RGB with the exact inverse of ``rgb_to_yiq``'s matrix (not clamped)."""
    _check_three_channels(t, "yiq")
    return _apply_colour_matrix(_YIQ_TO_RGB, t)


def luminance(t: torch.Tensor) -> torch.Tensor:
    """The YIQ luminance Y = 0.299 R + 0.587 G + 0.114 B of RGB (..., 3, H, W), shape (..., 1, H, W)."""
    return rgb_to_yiq(t)[..., :1, :, :]


def match_luminance(style_y: torch.Tensor, content_y: torch.Tensor) -> torch.Tensor:
    """Linear luminance matching of Gatys et al. 2016: Y_S' = (sigma_C / sigma_S)(Y_S - mu_S) + mu_C.

    mu and sigma are the mean and (population) standard deviation over each image's last three
    dimensions (1, H, W); the two images may differ in H and W. A flat style image (sigma_S = 0)
    gives a flat result at mu_C. The result is not clamped.
    """
    dims = (-3, -2, -1)
    content_y = content_y.to(device=style_y.device, dtype=style_y.dtype)
    mu_s = style_y.mean(dim=dims, keepdim=True)
    sigma_s = style_y.std(dim=dims, correction=0, keepdim=True)
    mu_c = content_y.mean(dim=dims, keepdim=True)
    sigma_c = content_y.std(dim=dims, correction=0, keepdim=True)
    # The epsilon only guards a flat style image, where Y_S - mu_S is 0 anyway.
    return (sigma_c / sigma_s.clamp_min(1e-8)) * (style_y - mu_s) + mu_c


def combine_luminance_with_colours(generated_rgb: torch.Tensor, content_rgb: torch.Tensor) -> torch.Tensor:
    """Keep the generated image's luminance and the content image's colours (Gatys et al. 2016).

    Output = yiq_to_rgb(Y_generated, I_content, Q_content), clamped to [0, 1]. The content is
    resized (bilinear) to the generated image's H, W if they differ.
    """
    _check_three_channels(generated_rgb, "generated_rgb")
    _check_three_channels(content_rgb, "content_rgb")
    content = content_rgb.to(device=generated_rgb.device, dtype=generated_rgb.dtype)
    height, width = generated_rgb.shape[-2:]
    if content.shape[-2:] != generated_rgb.shape[-2:]:
        lead = content.shape[:-3]
        flat = content.reshape(-1, 3, *content.shape[-2:])  # interpolate wants (N, C, H, W)
        flat = torch.nn.functional.interpolate(
            flat,
            size=(height, width),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
        content = flat.reshape(*lead, 3, height, width)
    y = luminance(generated_rgb)
    iq = rgb_to_yiq(content)[..., 1:, :, :]
    lead = torch.broadcast_shapes(y.shape[:-3], iq.shape[:-3])
    yiq = torch.cat([y.expand(*lead, 1, height, width), iq.expand(*lead, 2, height, width)], dim=-3)
    return yiq_to_rgb(yiq).clamp(0.0, 1.0)
