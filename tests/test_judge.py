"""The independent judge (`engine.core.judge`): its two figures on images whose answer is known, and the
size-invariance of the default settings judged at each result's own size (real VGG19, sample images)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from engine.core import images
from engine.core.config import TransferConfig
from engine.core.judge import NOISE_SEED, judge
from engine.core.samples import sample_path
from engine.core.transfer import transfer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def content() -> Image.Image:
    return images.load_image(sample_path("tubingen.jpg"))


@pytest.fixture(scope="module")
def style() -> Image.Image:
    return images.load_image(sample_path("starry_night.jpg"))


def test_the_content_photo_keeps_all_its_content_and_is_not_stylised(content, style):
    photo = images.resize_long_side(content, 64)
    verdict = judge(photo, content, style, device="cpu")
    assert verdict.content_kept == 1.0 and verdict.content_distance == 0.0
    assert verdict.style_reduction == pytest.approx(1.0)
    assert verdict.size == (64, 48)


def test_white_noise_keeps_no_content(content, style):
    noise = torch.rand((1, 3, 48, 64), generator=torch.Generator().manual_seed(NOISE_SEED))
    verdict = judge(images.tensor_to_image(noise), content, style, device="cpu")
    assert verdict.content_kept == pytest.approx(0.0, abs=0.01)  # the judge's own noise, up to 8-bit rounding
    other = torch.rand((1, 3, 48, 64), generator=torch.Generator().manual_seed(NOISE_SEED + 1))
    assert judge(images.tensor_to_image(other), content, style, device="cpu").content_kept == pytest.approx(0, abs=0.05)


def test_the_style_painting_is_far_more_stylised_than_the_photo_and_keeps_little_content(content, style):
    painting = style.resize((64, 48), Image.Resampling.LANCZOS)  # squeezed to the photo's 4:3
    verdict = judge(painting, content, style, device="cpu")
    assert verdict.style_reduction > 3  # measured 4.9 (the squeeze costs it some of the style's statistics)
    assert verdict.content_kept < 0.2  # measured 0.08


def test_each_result_is_judged_at_its_own_size(content, style):
    small, large = (judge(images.resize_long_side(style, side), content, style, device="cpu") for side in (48, 96))
    assert (small.size, large.size) == ((48, 30), (96, 60))  # the 512×320 painting's own aspect
    assert small.photo_style_distance != large.photo_style_distance  # the photo's own distance at each size


@pytest.mark.slow
@pytest.mark.load
def test_the_default_settings_give_one_balance_at_96_and_192_px(content, style):
    """Issue 16's size-invariance figure at small sizes: with the default (size-aware) β, the style figure
    at 192 px is within 0.8–1.25× of the 96-px one and content kept within 0.1 (the issue's band for 128
    against 384 px). Measured on this pair at 100 steps: 8.68× and 0.64 at 96 px, 7.97× and 0.70 at
    192 px (ratio 0.92). The same settings with β as given at every size (params version 1) drift out
    of the band: 18.96× and 0.29 against 10.37× and 0.60 (ratio 0.55). It took 19 minutes on this
    2-core machine while other helpers loaded it heavily (four runs of 100 steps at 96 and 192 px)."""
    verdicts = {}
    for version in (2, 1):
        for size in (96, 192):
            config = TransferConfig(size=size, steps=100, params_version=version)
            verdicts[version, size] = judge(transfer(content, [style], config, device="cpu").image, content, style,
                                            device="cpu")  # fmt: skip
    aware = verdicts[2, 192].style_reduction / verdicts[2, 96].style_reduction
    assert 0.8 <= aware <= 1.25
    assert abs(verdicts[2, 192].content_kept - verdicts[2, 96].content_kept) <= 0.1
    fixed = verdicts[1, 192].style_reduction / verdicts[1, 96].style_reduction
    assert not (0.8 <= fixed <= 1.25 and abs(verdicts[1, 192].content_kept - verdicts[1, 96].content_kept) <= 0.1)
