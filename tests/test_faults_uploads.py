"""Bad uploads through the studio (issue 13, fault suite), with Streamlit's AppTest against a real store and
the real job queue: each file is either accepted correctly (its thumbnail and the settings show, and the
run it starts stores the image as it should be seen) or refused with a message that names the image and
says what to do, and the page keeps working. The decoder's own cases are unit-tested in test_images.py; a
file over the upload limit, which only the real server refuses, is in test_browser_faults.py."""

from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from engine import tracking
from engine.core.samples import sample_path

ROOT = Path(__file__).resolve().parents[1]
W, H = 48, 32


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def png_16_bit() -> bytes:
    """A 16-bit greyscale ramp, 0 … 65535 from left to right."""
    ramp = np.tile(np.linspace(0, 65535, W).astype(np.uint16), (H, 1))
    data = encode(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    return data


def cmyk_jpeg() -> bytes:
    """Pure cyan in CMYK."""
    data = encode(Image.new("CMYK", (W, H), (255, 0, 0, 0)), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    return data


def animated_gif() -> bytes:
    """Two frames: red, then blue."""
    frames = [Image.new("RGB", (W, H), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    return data


def png_with_alpha() -> bytes:
    """Left half opaque red; right half fully transparent (its hidden colour green)."""
    rgba = np.zeros((H, W, 4), dtype=np.uint8)
    rgba[:, : W // 2] = (255, 0, 0, 255)
    rgba[:, W // 2 :] = (0, 255, 0, 0)
    return encode(Image.fromarray(rgba, "RGBA"), "PNG")


def png_bomb(side: int = 30_000) -> bytes:
    """A real, decodable 1-bit PNG of side × side black pixels (900 megapixels at 30000) in about a
    hundred kilobytes: every row compresses to almost nothing."""
    row = b"\x00" + b"\x00" * ((side + 7) // 8)  # filter type 0, then the packed bits
    compressor = zlib.compressobj(9)
    rows = row * 1000
    body = b"".join(compressor.compress(rows) for _ in range(side // 1000)) + compressor.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1 bit, greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def truncated_jpeg() -> bytes:
    data = sample_path("tubingen.jpg").read_bytes()
    return data[: len(data) // 2]


def app() -> AppTest:
    return AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)


def texts(at: AppTest) -> str:
    kinds = ("markdown", "caption", "info", "error", "warning", "subheader")
    return "\n".join(str(e.value) for kind in kinds for e in getattr(at, kind))


def captions(at: AppTest) -> list[str]:
    return [img.caption for image in at.get("image") for img in image.proto.imgs]


def studio_with(content: tuple[str, bytes, str], style_png: bytes) -> AppTest:
    at = app().run()
    at.file_uploader(key="content").set_value(content)
    at.file_uploader(key="styles").set_value([("style.png", style_png, "image/png")])
    return at.run()


def run_button(at: AppTest):
    return next((b for b in at.button if b.label == "Run"), None)


@pytest.fixture(scope="module")
def store(app_store) -> str:
    return app_store


REFUSED = {
    # file, then words the message must hold: what is wrong, and what to do
    "text named .png": (("photo.png", b"this is a text file, not a picture\n", "image/png"),
                        ("content image is not an image", "Choose a")),
    "truncated JPEG": (("photo.jpg", truncated_jpeg(), "image/jpeg"), ("content image is damaged", "try again")),
    "30000 × 30000 px bomb": (("bomb.png", png_bomb(), "image/png"),
                              ("content image", "40,000,000 pixels", "Shrink it and try again")),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_an_unreadable_upload_is_refused_with_what_to_do_and_the_page_recovers(store, case, style_png, content_png):
    upload, words = REFUSED[case]
    at = studio_with(upload, style_png)
    assert not at.exception
    errors = "\n".join(e.value for e in at.error)
    for word in words:
        assert word in errors, f"{case}: {errors!r}"
    assert run_button(at) is None and "Settings" not in texts(at)  # nothing to start from a bad file
    at.file_uploader(key="content").set_value(("good.png", content_png, "image/png")).run()
    assert not at.exception and not at.error
    assert captions(at)[0] == "content, 64×48" and run_button(at) is not None


def test_the_bomb_is_a_small_file_that_inflates_to_nine_hundred_megapixels():
    data = png_bomb()
    assert len(data) < 200_000
    width, height = struct.unpack(">II", data[16:24])  # IHDR
    assert (width, height) == (30_000, 30_000)
    idat_length = struct.unpack(">I", data[33:37])[0]
    assert data[37:41] == b"IDAT"
    inflated = zlib.decompress(data[41 : 41 + idat_length])
    assert len(inflated) == 30_000 * (1 + 30_000 // 8)  # every row's bits are there: a real, whole image
    with pytest.raises(Image.DecompressionBombError):  # Pillow's own guard refuses to open it
        Image.open(io.BytesIO(data))


ACCEPTED = {
    "16-bit PNG": ("ramp.png", png_16_bit(), "image/png"),
    "CMYK JPEG": ("cyan.jpg", cmyk_jpeg(), "image/jpeg"),
    "animated GIF": ("anim.gif", animated_gif(), "image/gif"),
    "PNG with alpha": ("alpha.png", png_with_alpha(), "image/png"),
}


def check_stored_content(case: str, pixels: np.ndarray) -> None:
    """What the run stored as its content image: the upload as a viewer sees it, in 8-bit RGB."""
    assert pixels.shape == (H, W, 3)
    if case == "16-bit PNG":  # the ramp scaled to 0 … 255, not clipped at 255
        grey = pixels[..., 0].astype(int)
        assert (pixels[..., 0] == pixels[..., 1]).all() and grey[:, 0].max() <= 2 and grey[:, -1].min() >= 253
        assert (np.diff(grey[0]) >= 0).all()
    elif case == "CMYK JPEG":  # cyan
        assert np.abs(pixels.reshape(-1, 3).mean(0) - (0, 255, 255)).max() < 12
    elif case == "animated GIF":  # the first frame, red
        assert np.abs(pixels.reshape(-1, 3).mean(0) - (255, 0, 0)).max() < 12
    elif case == "PNG with alpha":  # transparent is white, not the hidden green
        assert (pixels[:, : W // 2] == (255, 0, 0)).all() and (pixels[:, W // 2 :] == 255).all()


@pytest.mark.slow  # a tiny real run each
@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_an_unusual_but_valid_upload_is_accepted_as_it_looks(store, case, style_png):
    at = studio_with(ACCEPTED[case], style_png)
    assert not at.exception and not at.error
    assert captions(at)[0] == f"content, {W}×{H}"
    assert "Settings" in texts(at) and "Estimate on" in texts(at)
    next(n for n in at.number_input if n.label.startswith("Size")).set_value(32)
    next(n for n in at.number_input if n.label == "Steps").set_value(1)
    before = set(tracking.list_runs(store)["run_id"])
    run_button(at).click().run()
    assert not at.exception
    (run_id,) = set(tracking.list_runs(store)["run_id"]) - before
    with Image.open(tracking.download_artifact(store, run_id, "inputs/content.png")) as stored:
        check_stored_content(case, np.asarray(stored.convert("RGB")))
    deadline = time.monotonic() + 120
    while tracking.load_run(store, run_id).status not in tracking.TERMINAL and time.monotonic() < deadline:
        time.sleep(0.3)
    assert tracking.load_run(store, run_id).status == "FINISHED"
