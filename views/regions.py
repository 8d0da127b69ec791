"""The studio's regions: upload a mask whose flat colours split the content image, or paint one over it,
see the regions over it, and give each its own style image and weight, or keep it as it is
(engine.core.regions)."""

from collections.abc import Mapping

import numpy as np
import streamlit as st
from PIL import Image
from streamlit_drawable_canvas import st_canvas

from engine.core import images
from engine.core.config import TransferConfig
from engine.core.errors import InputError
from engine.core.regions import Region, check_mask_fits, color_name, hex_color, mask_colors, mask_overlay
from views.uploads import UPLOAD_LIMITS, UPLOAD_TYPES

KEEP = "keep as is"
KEEP_ALPHA_FACTOR = 10.0  # a kept region's content weight, times the run's α: it holds the photo firmly
BRUSHES = {"red": "#ff0000", "blue": "#0000ff", "green": "#00a000", "yellow": "#ffd700"}
SHAPES = {"brush": "freedraw", "rectangle": "rect", "polygon (click the corners, right-click to close)": "polygon"}
CANVAS_WIDTH = 640


@st.cache_data(max_entries=16, show_spinner=False)
def flat_colors(mask_sha: str, _mask: Image.Image) -> list[tuple[tuple[int, int, int], float]]:
    """`mask_colors`, cached by the mask's sha256: ~0.1-0.2 s for a 512-px mask, which every rerun of the
    studio (each widget change) would otherwise pay again."""
    return mask_colors(_mask)


def painted_mask(content: Image.Image) -> images.InputImage | None:
    """A canvas over the content image to paint regions on; what is left unpainted is one more region,
    white. The painted mask, or None before anything is painted."""
    brush_col, shape_col, width_col = st.columns(3)
    brush = BRUSHES[brush_col.selectbox("Colour", list(BRUSHES), key="paint_color")]
    shape = SHAPES[shape_col.selectbox("Draw", list(SHAPES), key="paint_shape")]
    stroke = width_col.slider("Brush size (px)", 4, 96, 40, key="paint_width")
    width = min(CANVAS_WIDTH, content.width)
    height = round(width * content.height / content.width)
    canvas = st_canvas(
        fill_color=brush, stroke_width=stroke, stroke_color=brush, background_image=content.resize((width, height)),
        width=width, height=height, drawing_mode=shape, return_image_data=True, key="paint_canvas",
    )  # fmt: skip
    drawn = canvas.image_data  # (h, w, 4): the strokes only, the content is the canvas's background
    if drawn is None or drawn[..., 3].max() == 0:
        st.caption("Paint a region over the content image; what stays unpainted is a region of its own (white).")
        return None
    alpha = drawn[..., 3:].astype(np.float32) / 255  # over white: an anti-aliased edge is a blend, not a region
    rgb = drawn[..., :3].astype(np.float32) * alpha + 255 * (1 - alpha)
    return images.InputImage.decode(Image.fromarray(rgb.round().astype(np.uint8)), "painted mask")


def regions_caption(params: Mapping[str, str]) -> str:
    """"sky (#ff0000): style 1 · town (#0000ff): kept as is" from a run's params; "" without regions."""
    names = [n for n in params.get("regions", "").split(",") if n and n != "none"]
    parts = []
    for name in names:
        styles = params.get(f"region.{name}.styles", "keep")
        taken = KEEP if styles == "keep" else "style " + " + ".join(styles.split(","))
        parts.append(f"{name} ({params.get(f'region.{name}.color', '?')}): {taken}")
    return " · ".join(parts)


def regions_ui(
    config: TransferConfig, content: Image.Image, n_styles: int, cloned_mask: images.InputImage | None
) -> tuple[TransferConfig, images.InputImage | None]:
    """The mask uploader and one row per region; returns `config` with its regions and the mask (None and
    no regions when no mask is given). Stops the page with a clear error for a mask that cannot work."""
    source = st.radio("Regions from", ["a mask image", "painting over the content"], horizontal=True,
                      key="mask_source")  # fmt: skip
    try:
        if source == "a mask image":
            mask_file = st.file_uploader(
                "Mask image: one flat colour per region, drawn over the content image", type=UPLOAD_TYPES,
                key="mask", help=f"Each region in one flat colour (PNG keeps them flat), at the content's shape. "
                f"{UPLOAD_LIMITS}",
            )  # fmt: skip
            mask = images.InputImage.decode(mask_file.getvalue(), "mask image") if mask_file else cloned_mask
        else:
            mask = painted_mask(content)
        if mask is None:
            st.caption("No mask: the whole image takes the style. A mask gives parts of it their own styles.")
            return config.replace(regions=()), None
        check_mask_fits(mask.image, content.size)
        colors = flat_colors(mask.sha256, mask.image)
    except InputError as exc:
        st.error(str(exc), icon="⚠️")
        st.stop()
    before = {r.color: r for r in config.regions}  # a cloned run's regions, by colour
    options = [f"style {i + 1}" for i in range(n_styles)] + [KEEP]
    left, right = st.columns([1, 1])
    regions = []
    with right:
        for i, (color, share) in enumerate(colors):
            hex_ = hex_color(color)
            old = before.get(color)
            default = options[min(i, n_styles - 1)]
            if old:  # a cloned run's choice, while that style image is still here
                default = KEEP if old.keeps_content else f"style {old.styles[0]}"
                default = default if default in options else options[0]
            name_col, style_col, weight_col = st.columns([2, 2, 2])
            name = name_col.text_input(
                f"Region {i + 1}", value=old.name if old else color_name(color, i + 1),
                key=f"region_name_{hex_}", help=f"{hex_}, {share:.0%} of the mask",
            )  # fmt: skip
            name_col.markdown(f"<span style='color:{hex_}'>■■■</span> {hex_}, {share:.0%}", unsafe_allow_html=True)
            taken = style_col.selectbox("takes", options, index=options.index(default), key=f"region_style_{hex_}")
            if taken == KEEP:
                alpha = weight_col.number_input(
                    "content weight α", min_value=0.0, format="%g", key=f"region_alpha_{hex_}",
                    value=old.alpha if old and old.alpha is not None else KEEP_ALPHA_FACTOR * config.alpha,
                )  # fmt: skip
                regions.append(Region(name.strip(), color, (), alpha=alpha))
            else:
                beta = weight_col.number_input(
                    "style weight β", min_value=0.0, format="%g", key=f"region_beta_{hex_}",
                    value=old.beta if old and old.beta is not None else config.beta,
                )  # fmt: skip
                own_beta = None if beta == config.beta else beta  # the run's β: a sweep of β moves it too
                regions.append(Region(name.strip(), color, (int(taken.split()[1]),), beta=own_beta))
    try:
        config = config.replace(regions=tuple(regions))
    except InputError as exc:
        st.error(str(exc), icon="⚠️")
        st.stop()
    left.image(
        images.resize_long_side(mask_overlay(content, mask.image), 384),
        caption="The regions over the content image: " + ", ".join(f"{r.name} {r.hex}" for r in config.regions),
    )
    return config, mask
