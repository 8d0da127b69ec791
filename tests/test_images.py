"""Tests for engine.images: decoding user images safely, resizing, tensors and colour helpers."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.core.errors import InputError
from engine.core.images import (
    MAX_INPUT_BYTES,
    MAX_INPUT_PIXELS,
    combine_luminance_with_colours,
    image_to_png_bytes,
    image_to_tensor,
    load_image,
    luminance,
    match_luminance,
    resize_long_side,
    rgb_to_yiq,
    sha256_of,
    tensor_to_image,
    write_tiff16,
    yiq_to_rgb,
)
from engine.core.samples import sample_path

RED = (255, 0, 0)
WHITE = (255, 255, 255)


def encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def png_with_header_size(width: int, height: int) -> bytes:
    """A tiny 1x1 PNG whose IHDR claims another size (with a valid CRC), for bomb tests."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def assert_close_colour(
    actual: tuple[int, ...], expected: tuple[int, ...], tol: int = 40
) -> None:
    assert all(abs(a - e) <= tol for a, e in zip(actual, expected, strict=True)), (
        actual,
        expected,
    )


# --- load_image: images it must decode correctly -------------------------------------------


@pytest.mark.parametrize("path", ["tubingen.jpg", "starry_night.jpg"])
def test_load_image_reads_the_shipped_samples_as_rgb(path: str) -> None:
    img = load_image(sample_path(path), name="content image")
    assert img.mode == "RGB"
    assert img.width > 100
    assert img.height > 100


def test_load_image_accepts_bytes_and_str_path_equally(tmp_path: Path) -> None:
    data = encode(Image.new("RGB", (5, 3), (10, 20, 30)), "PNG")
    path = tmp_path / "a.png"
    path.write_bytes(data)
    from_bytes = load_image(data)
    from_path = load_image(str(path))
    assert from_bytes.size == from_path.size == (5, 3)
    assert from_bytes.tobytes() == from_path.tobytes()
    assert from_bytes.getpixel((0, 0)) == (10, 20, 30)


def test_load_image_applies_exif_orientation_so_result_is_upright() -> None:
    # Upright: 64 wide x 32 high, red top-left quadrant, blue elsewhere.
    upright = Image.new("RGB", (64, 32), (0, 0, 255))
    upright.paste(RED, (0, 0, 16, 16))
    # Orientation 6 means "rotate 90° clockwise to display", so store it rotated counter-clockwise.
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    assert stored.size == (32, 64)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(stored, "JPEG", exif=exif.tobytes(), quality=95)

    img = load_image(data)
    assert img.size == (64, 32)
    assert_close_colour(img.getpixel((4, 4)), RED)
    assert_close_colour(img.getpixel((60, 4)), (0, 0, 255))
    assert_close_colour(img.getpixel((4, 28)), (0, 0, 255))


def test_load_image_scales_16bit_greyscale_by_range_instead_of_clipping() -> None:
    gradient = np.linspace(0, 65535, 256).astype(np.uint16)[None, :].repeat(4, axis=0)
    src = Image.fromarray(gradient)
    assert src.mode == "I;16"
    img = load_image(encode(src, "PNG"))
    arr = np.asarray(img)
    assert img.mode == "RGB"
    assert arr.min() <= 1
    assert arr.max() >= 254
    assert (
        abs(int(arr[0, 128, 0]) - 128) <= 2
    )  # mid-grey stays mid-grey, not clipped to white
    assert np.all(np.diff(arr[0, :, 0].astype(int)) >= 0)


def test_load_image_scales_big_endian_16bit_tiff() -> None:
    gradient = np.linspace(0, 65535, 256).astype(">u2")[None, :].repeat(4, axis=0)
    src = Image.fromarray(gradient)
    assert src.mode == "I;16B"
    arr = np.asarray(load_image(encode(src, "TIFF")))
    assert arr.min() <= 1
    assert arr.max() >= 254
    assert abs(int(arr[0, 128, 0]) - 128) <= 2


@pytest.mark.parametrize("scale", [1.0, 1000.0])
def test_load_image_scales_float_greyscale_to_full_8bit_range(scale: float) -> None:
    gradient = (np.linspace(0, 1, 256, dtype=np.float32) * scale)[None, :].repeat(
        4, axis=0
    )
    src = Image.fromarray(gradient)
    assert src.mode == "F"
    arr = np.asarray(load_image(encode(src, "TIFF")))
    assert arr[0, 0, 0] == 0
    assert arr[0, -1, 0] == 255
    assert abs(int(arr[0, 128, 0]) - 128) <= 2


def test_load_image_converts_cmyk_jpeg_to_rgb() -> None:
    cmyk_red = Image.new("CMYK", (16, 16), (0, 255, 255, 0))
    img = load_image(encode(cmyk_red, "JPEG", quality=95))
    assert img.mode == "RGB"
    assert_close_colour(img.getpixel((8, 8)), RED)


def test_load_image_puts_transparent_rgba_pixels_on_white() -> None:
    src = Image.new("RGBA", (4, 4), (255, 0, 0, 255))
    src.putpixel((0, 0), (0, 0, 0, 0))
    src.putpixel((1, 0), (0, 0, 0, 128))
    img = load_image(encode(src, "PNG"))
    assert img.mode == "RGB"
    assert img.getpixel((0, 0)) == WHITE
    assert img.getpixel((2, 2)) == RED
    assert all(abs(c - 127) <= 1 for c in img.getpixel((1, 0)))  # half black over white


def test_load_image_puts_transparent_palette_entry_on_white() -> None:
    src = Image.new("P", (4, 4), 0)
    src.putpalette([0, 0, 0, 0, 255, 0])  # index 0 black (transparent), index 1 green
    src.putpixel((1, 1), 1)
    img = load_image(encode(src, "PNG", transparency=0))
    assert img.getpixel((0, 0)) == WHITE
    assert img.getpixel((1, 1)) == (0, 255, 0)


def test_load_image_reads_opaque_palette_image_colours() -> None:
    src = Image.new("P", (4, 4), 1)
    src.putpalette([0, 0, 0, 12, 34, 56])
    assert load_image(encode(src, "PNG")).getpixel((0, 0)) == (12, 34, 56)


def test_load_image_composites_grey_alpha_on_white() -> None:
    src = Image.new("LA", (4, 4), (0, 255))
    src.putpixel((0, 0), (0, 0))
    img = load_image(encode(src, "PNG"))
    assert img.getpixel((0, 0)) == WHITE
    assert img.getpixel((1, 1)) == (0, 0, 0)


@pytest.mark.parametrize(
    ("mode", "colour", "expected"),
    [
        ("1", 1, WHITE),
        ("1", 0, (0, 0, 0)),
        ("L", 77, (77, 77, 77)),
        ("RGB", (1, 2, 3), (1, 2, 3)),
    ],
)
def test_load_image_converts_simple_modes_to_rgb(
    mode: str, colour: object, expected: tuple[int, ...]
) -> None:
    img = load_image(encode(Image.new(mode, (3, 2), colour), "PNG"))
    assert img.mode == "RGB"
    assert img.size == (3, 2)
    assert img.getpixel((0, 0)) == expected


def test_load_image_uses_first_frame_of_animated_gif() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in (RED, (0, 0, 255), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(
        buf, format="GIF", save_all=True, append_images=frames[1:], duration=100
    )
    img = load_image(buf.getvalue())
    assert img.mode == "RGB"
    assert img.getpixel((4, 4)) == RED


def test_load_image_does_not_change_global_warning_filters() -> None:
    before = list(warnings.filters)
    load_image(encode(Image.new("RGB", (2, 2)), "PNG"))
    with pytest.raises(InputError):
        load_image(png_with_header_size(10_000, 10_000))
    assert warnings.filters == before
    assert Image.MAX_IMAGE_PIXELS is not None
    assert Image.MAX_IMAGE_PIXELS > MAX_INPUT_PIXELS


# --- load_image: bad input becomes InputError with a helpful message -----------------------


def test_load_image_reports_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"style image 2.*not found"):
        load_image(tmp_path / "nope.jpg", name="style image 2")


def test_load_image_reports_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"content image.*not a file"):
        load_image(tmp_path, name="content image")


def test_load_image_rejects_file_larger_than_byte_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    with path.open("wb") as f:
        f.truncate(MAX_INPUT_BYTES + 1)  # sparse: costs no disk space
    with pytest.raises(InputError, match=r"content image.*50 MB"):
        load_image(path, name="content image")


def test_load_image_rejects_random_bytes_as_not_an_image() -> None:
    data = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with pytest.raises(InputError, match=r"style image.*not an image"):
        load_image(data, name="style image")


def test_load_image_rejects_empty_bytes() -> None:
    with pytest.raises(InputError, match="empty"):
        load_image(b"", name="content image")


def test_load_image_reports_truncated_jpeg_with_its_name() -> None:
    noise = np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "JPEG", quality=90)
    with pytest.raises(InputError, match=r"content image.*damaged"):
        load_image(data[: len(data) // 2], name="content image")


def test_load_image_rejects_header_over_pixel_limit_before_decoding() -> None:
    # 7000 x 7000 = 49 MP: over our 40 MP limit but under Pillow's own bomb threshold.
    with pytest.raises(InputError) as excinfo:
        load_image(png_with_header_size(7000, 7000), name="content image")
    message = str(excinfo.value)
    assert f"{MAX_INPUT_PIXELS:,}" in message
    assert "content image" in message
    assert "7000x7000" in message


@pytest.mark.parametrize(
    "side", [10_000, 20_000]
)  # Pillow's bomb warning (100 MP), then its error (400 MP)
def test_load_image_turns_pillow_decompression_bomb_into_input_error(side: int) -> None:
    with pytest.raises(InputError, match="40,000,000 pixels"):
        load_image(png_with_header_size(side, side), name="style image")


def test_load_image_rejects_zero_size_header() -> None:
    with pytest.raises(InputError, match="content image"):
        load_image(png_with_header_size(0, 10), name="content image")


def test_load_image_rejects_formats_outside_the_allowed_list() -> None:
    data = encode(Image.new("RGB", (4, 4)), "PCX")
    assert Image.open(io.BytesIO(data)).format == "PCX"  # Pillow itself could read it
    with pytest.raises(InputError, match="not an image"):
        load_image(data)


# --- resizing, tensors, bytes -------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "long_side", "expected"),
    [
        ((400, 200), 100, (100, 50)),
        ((200, 400), 100, (50, 100)),
        ((30, 20), 60, (60, 40)),
        ((5000, 2), 100, (100, 1)),
    ],
)
def test_resize_long_side_keeps_aspect_ratio(
    size: tuple[int, int], long_side: int, expected: tuple[int, int]
) -> None:
    out = resize_long_side(Image.new("RGB", size, RED), long_side)
    assert out.size == expected
    assert out.mode == "RGB"


def test_resize_long_side_rejects_nonpositive_size() -> None:
    with pytest.raises(InputError):
        resize_long_side(Image.new("RGB", (4, 4)), 0)


def test_image_tensor_round_trip_is_exact_for_8bit() -> None:
    arr = np.random.default_rng(2).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    t = image_to_tensor(img)
    assert t.shape == (1, 3, 7, 5)
    assert t.dtype == torch.float32
    assert float(t.min()) >= 0.0
    assert float(t.max()) <= 1.0
    back = tensor_to_image(t)
    assert back.mode == "RGB"
    assert np.array_equal(np.asarray(back), arr)
    assert np.array_equal(
        np.asarray(tensor_to_image(t[0].double())), arr
    )  # (3, H, W), float64


def test_tensor_to_image_clamps_out_of_range_values() -> None:
    t = torch.tensor([-1.0, 0.5, 2.0]).view(3, 1, 1).expand(3, 2, 2)
    img = tensor_to_image(t.half())
    assert img.getpixel((0, 0)) == (0, 128, 255)


def test_tensor_to_image_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError, match="shape"):
        tensor_to_image(torch.zeros(2, 3, 4, 4))


def test_png_bytes_decode_back_to_same_pixels_and_hash_is_stable() -> None:
    img = Image.fromarray(
        np.random.default_rng(3).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    )
    data = image_to_png_bytes(img)
    assert data.startswith(b"\x89PNG")
    assert load_image(data).tobytes() == img.tobytes()
    assert sha256_of(data) == sha256_of(bytes(data))
    assert (
        sha256_of(b"")
        == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


# --- colour helpers ------------------------------------------------------------------------


def test_rgb_yiq_round_trip_within_1e_5() -> None:
    rgb = torch.rand(2, 3, 8, 9, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(yiq_to_rgb(rgb_to_yiq(rgb)), rgb, atol=1e-5)


def test_rgb_to_yiq_maps_grey_to_zero_chroma_and_white_to_unit_luminance() -> None:
    grey = torch.full((3, 2, 2), 0.4)
    yiq = rgb_to_yiq(grey)
    assert torch.allclose(yiq[0], torch.full((2, 2), 0.4), atol=1e-6)
    assert torch.allclose(yiq[1:], torch.zeros(2, 2, 2), atol=1e-6)
    assert torch.allclose(
        luminance(torch.ones(1, 3, 1, 1)), torch.ones(1, 1, 1, 1), atol=1e-6
    )


def test_luminance_uses_ntsc_weights_and_keeps_a_channel_dim() -> None:
    rgb = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 4, 5)
    y = luminance(rgb)
    assert y.shape == (1, 1, 4, 5)
    assert torch.allclose(y, torch.full_like(y, 0.299))


def test_match_luminance_gives_content_mean_and_std() -> None:
    gen = torch.Generator().manual_seed(1)
    style_y = torch.rand(1, 1, 10, 12, generator=gen) * 0.2 + 0.7
    content_y = torch.rand(1, 1, 6, 5, generator=gen) * 0.8 + 0.1
    matched = match_luminance(style_y, content_y)
    assert matched.shape == style_y.shape
    assert torch.isclose(matched.mean(), content_y.mean(), atol=1e-5)
    assert torch.isclose(
        matched.std(correction=0), content_y.std(correction=0), atol=1e-5
    )
    # It is linear in the style luminance, so the ordering of pixels is unchanged.
    assert torch.equal(matched.flatten().argsort(), style_y.flatten().argsort())


def test_match_luminance_of_flat_style_is_flat_content_mean() -> None:
    content_y = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    matched = match_luminance(torch.full((1, 1, 3, 3), 0.5), content_y)
    assert torch.isfinite(matched).all()
    assert torch.allclose(
        matched, torch.full_like(matched, float(content_y.mean())), atol=1e-6
    )


def test_combine_luminance_with_colours_keeps_content_iq_and_generated_y() -> None:
    gen = torch.Generator().manual_seed(3)
    # Mid-range values so no clamping interferes with the exact check.
    generated = torch.rand(1, 3, 8, 8, generator=gen) * 0.3 + 0.35
    content = torch.rand(1, 3, 8, 8, generator=gen) * 0.3 + 0.35
    out = combine_luminance_with_colours(generated, content)
    assert out.shape == generated.shape
    out_yiq, gen_yiq, content_yiq = (
        rgb_to_yiq(out),
        rgb_to_yiq(generated),
        rgb_to_yiq(content),
    )
    assert torch.allclose(out_yiq[:, :1], gen_yiq[:, :1], atol=1e-5)
    assert torch.allclose(out_yiq[:, 1:], content_yiq[:, 1:], atol=1e-5)


def test_combine_luminance_with_colours_resizes_content_and_clamps() -> None:
    generated = torch.ones(1, 3, 6, 10)  # white
    content = torch.zeros(3, 12, 20)
    content[0] = 1.0  # pure red, at twice the size and without a batch dim
    out = combine_luminance_with_colours(generated, content)
    assert out.shape == (1, 3, 6, 10)
    assert float(out.min()) >= 0.0
    assert float(out.max()) <= 1.0
    # Red chroma at white luminance: red saturates, green and blue drop below white.
    assert float(out[0, 0].mean()) == pytest.approx(1.0)
    assert float(out[0, 1].mean()) < 0.9
    assert float(out[0, 2].mean()) < 0.9


def test_a_16_bit_tiff_keeps_the_values_to_one_65535th(tmp_path):
    t = torch.rand(1, 3, 37, 53, generator=torch.Generator().manual_seed(0))
    write_tiff16(t, tmp_path / "g.tif")
    tiff = Image.open(tmp_path / "g.tif")
    assert tiff.size == (53, 37)
    decoder, _, offset, (raw_mode, *_) = tiff.tile[0]  # where Pillow's TIFF parser finds the pixels
    assert decoder == "raw" and raw_mode == "RGB;16L"
    data = (tmp_path / "g.tif").read_bytes()[offset : offset + 37 * 53 * 6]
    values = np.frombuffer(data, dtype="<u2").reshape(37, 53, 3) / 65535
    assert np.abs(values - t[0].permute(1, 2, 0).numpy()).max() <= 0.5 / 65535 + 1e-7
