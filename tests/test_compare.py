"""The compare page: engine/compare.py's pure logic on tiny synthetic images and param dicts, and the page
itself with Streamlit's AppTest against two real finished runs in a temporary MLflow store, on each kind
of store (a SQLite file; an mlflow server on PostgreSQL: conftest's `tracking_store`).

The tracking URI and job queue are `st.cache_resource` singletons shared by every AppTest in this process
(see tests/test_app.py): the store fixture sets MLFLOW_TRACKING_URI and clears them before the first page
runs, and again afterwards.
"""

from __future__ import annotations

import io
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import app_serving
from PIL import Image
from streamlit.testing.v1 import AppTest

from engine import jobs, tracking
from engine.core import images
from engine.core.config import TransferConfig
from engine.core.samples import sample_path
from engine.studies import compare

ROOT = Path(__file__).resolve().parents[1]
TINY = TransferConfig(size=32, steps=3, coarse_levels=0)
OTHER = TINY.replace(beta=1e5, style_layers={**TINY.lambdas, "relu1_1": 0.5})


def solid(color: tuple[int, int, int], size: tuple[int, int] = (8, 6)) -> Image.Image:
    return Image.new("RGB", size, color)


def gradient(size: tuple[int, int] = (16, 12)) -> Image.Image:
    w, h = size
    x = np.linspace(0, 255, w, dtype=np.float64)[None, :, None].repeat(h, 0).repeat(3, 2)
    return Image.fromarray(x.astype(np.uint8), mode="RGB")


def colours(img: Image.Image) -> set[tuple[int, int, int]]:
    return {tuple(int(c) for c in px) for px in np.asarray(img).reshape(-1, 3)}


# --------------------------------------------------------------------------------------------------
# engine/compare.py


class TestDifferingParams:
    def test_keeps_only_the_keys_whose_values_differ(self):
        frame = compare.differing_params(
            {
                "A": {"alpha": "1", "beta": "200000", "lambda.relu1_1": "0.2", "size": "32"},
                "B": {"alpha": "1", "beta": "100000", "lambda.relu1_1": "0.5", "size": "32"},
            }
        )
        assert list(frame.index) == ["beta", "lambda.relu1_1"]
        assert list(frame.columns) == ["A", "B"]
        assert frame.loc["beta"].tolist() == ["200000", "100000"]

    def test_a_param_missing_in_some_run_counts_as_differing(self):
        frame = compare.differing_params({"A": {"x": "1", "y": "2"}, "B": {"x": "1"}, "C": {"x": "1", "y": "2"}})
        assert list(frame.index) == ["y"]
        assert frame.loc["y"].tolist() == ["2", None, "2"]

    def test_identical_settings_give_an_empty_table(self):
        frame = compare.differing_params({"A": {"x": "1"}, "B": {"x": "1"}})
        assert frame.empty and list(frame.columns) == ["A", "B"]


def test_parse_run_ids_splits_strips_and_drops_duplicates_and_blanks():
    assert compare.parse_run_ids(" a, b,,a ,c,") == ["a", "b", "c"]
    assert compare.parse_run_ids(None) == [] and compare.parse_run_ids("") == []


def test_run_labels_are_unique_even_for_equal_names_and_short():
    labels = compare.run_labels(["same", "same", "x" * 50])
    assert len(set(labels)) == 3 and labels[0] == "A · same" and labels[1] == "B · same"
    assert len(labels[2]) <= 4 + 28


def test_same_inputs_compares_the_sha256_tags():
    a = {"sha256.content": "c1", "sha256.style.0": "s1", "device": "cpu"}
    assert compare.same_inputs({"A": a, "B": {**a, "device": "cuda:0"}})
    assert not compare.same_inputs({"A": a, "B": {**a, "sha256.style.0": "s2"}})
    assert not compare.same_inputs({"A": {}, "B": {}})


class TestSameSize:
    def test_all_images_get_the_smallest_common_box(self):
        out = compare.same_size([solid((1, 2, 3), (64, 48)), solid((4, 5, 6), (32, 24)), solid((0, 0, 0), (40, 30))])
        assert [img.size for img in out] == [(32, 24)] * 3
        assert out[0].getpixel((5, 5)) == (1, 2, 3)  # resized, not padded

    def test_long_side_caps_the_size_keeping_the_aspect(self):
        out = compare.same_size([solid((9, 9, 9), (400, 300)), solid((9, 9, 9), (800, 600))], long_side=100)
        assert [img.size for img in out] == [(100, 75), (100, 75)]

    def test_another_aspect_is_cropped_not_stretched(self):
        wide = Image.new("RGB", (40, 10), (255, 0, 0))
        wide.paste((0, 0, 255), (15, 0, 25, 10))  # a blue band in the middle third
        out = compare.same_size([solid((0, 0, 0), (10, 10)), wide])
        assert out[1].size == (10, 10)
        assert out[1].getpixel((5, 5)) == (0, 0, 255)  # the centre survives

    def test_modes_become_rgb(self):
        out = compare.same_size([Image.new("L", (4, 4), 100), Image.new("RGBA", (4, 4), (1, 2, 3, 4))])
        assert [img.mode for img in out] == ["RGB", "RGB"]


class TestDifferenceHeatmap:
    def test_identical_images_give_the_colormaps_zero_colour_and_mean_zero(self):
        heat, mean = compare.difference_heatmap(gradient(), gradient())
        assert mean == 0.0
        zero = tuple(int(c) for c in compare.colormap(np.zeros(1))[0])
        assert zero == compare.MAGMA[0][1]
        assert colours(heat) == {zero}

    def test_black_against_white_is_the_brightest_colour_and_mean_one(self):
        heat, mean = compare.difference_heatmap(solid((0, 0, 0)), solid((255, 255, 255)))
        assert mean == pytest.approx(1.0)
        assert colours(heat) == {compare.MAGMA[-1][1]}

    def test_mean_is_the_mean_absolute_difference_over_rgb(self):
        a, b = solid((0, 0, 0), (4, 4)), Image.new("RGB", (4, 4), (51, 0, 0))
        b.paste((0, 0, 0), (0, 0, 2, 4))  # half the pixels identical
        _, mean = compare.difference_heatmap(a, b)
        assert mean == pytest.approx((51 / 255 / 3) / 2)

    def test_images_of_different_sizes_are_compared_at_one_size(self):
        heat, mean = compare.difference_heatmap(solid((10, 10, 10), (64, 48)), solid((10, 10, 10), (32, 24)))
        assert heat.size == (32, 24) and mean == 0.0

    def test_the_scale_follows_the_pairs_differences_but_never_below_one_grey_level(self):
        diff = np.linspace(0, 0.2, 1001)
        assert compare.heatmap_scale(diff) == pytest.approx(0.198)
        assert compare.heatmap_scale(np.zeros((4, 4))) == pytest.approx(1 / 255)
        a, b = solid((0, 0, 0), (4, 4)), Image.new("RGB", (4, 4), (30, 30, 30))
        assert colours(compare.difference_heatmap(a, b)[0]) == {compare.MAGMA[-1][1]}  # auto: uniform → brightest
        assert colours(compare.difference_heatmap(a, b, vmax=1.0)[0]) != {compare.MAGMA[-1][1]}

    def test_colorbar_runs_from_the_zero_to_the_brightest_colour(self):
        bar = np.asarray(compare.colorbar(64, 3))
        assert bar.shape == (3, 64, 3)
        assert tuple(bar[0, 0]) == compare.MAGMA[0][1] and tuple(bar[2, -1]) == compare.MAGMA[-1][1]

    def test_colormap_gets_brighter_with_the_value(self):
        lut = compare.colormap(np.linspace(0, 1, 50)).astype(float)
        lightness = lut @ np.array([0.299, 0.587, 0.114])
        assert np.all(np.diff(lightness) > 0)


class TestSwipe:
    def test_fraction_zero_is_b_and_one_is_a_exactly(self):
        a, b = gradient(), solid((200, 30, 40), (16, 12))
        assert compare.swipe(a, b, 0.0).tobytes() == b.tobytes()
        assert compare.swipe(a, b, 1.0).tobytes() == a.tobytes()

    def test_half_is_a_on_the_left_b_on_the_right_with_a_divider(self):
        a, b = solid((255, 0, 0), (40, 10)), solid((0, 0, 255), (40, 10))
        out = compare.swipe(a, b, 0.5)
        assert out.getpixel((5, 5)) == (255, 0, 0) and out.getpixel((35, 5)) == (0, 0, 255)
        assert (255, 255, 255) in {out.getpixel((x, 5)) for x in range(18, 22)}

    def test_flicker_is_a_two_frame_gif(self):
        gif = Image.open(io.BytesIO(compare.flicker_gif(solid((255, 0, 0)), solid((0, 0, 255)))))
        assert gif.format == "GIF" and gif.n_frames == 2


class TestCostTables:
    def test_cost_keys_in_reading_order(self):
        keys = ["cost/style/relu5_1", "cost/tv", "cost/style", "time/step_seconds", "cost/style/relu1_1",
                "cost/total", "cost/content", "final/total"]  # fmt: skip
        assert compare.cost_keys(keys) == [
            "cost/total", "cost/content", "cost/style", "cost/style/relu1_1", "cost/style/relu5_1", "cost/tv",
        ]  # fmt: skip

    def test_cost_curves_are_long_and_drop_non_positive_values(self):
        h = pd.DataFrame({"cost/total": [3.0, 2.0], "cost/tv": [0.0, 0.0], "final/total": [None, 2.0]},
                         index=pd.Index([1, 2], name="step"))  # fmt: skip
        curves = compare.cost_curves({"A": h, "B": h * 2})
        assert set(curves["key"]) == {"cost/total"}
        assert set(compare.cost_curves({"A": h + 1})["key"]) == {"cost/total", "cost/tv"}
        assert set(compare.cost_curves({"A": h + 1}, tv=False)["key"]) == {"cost/total"}
        assert curves[curves["run"] == "B"]["value"].tolist() == [6.0, 4.0]

    def test_final_layer_costs_prefer_final_over_the_last_step(self):
        finals = compare.final_layer_costs(
            {
                "A": {"final/style/relu2_1": 1.0, "cost/style/relu2_1": 9.0, "final/style/relu1_1": 2.0},
                "B": {"cost/style/relu1_1": 3.0},  # still running: no final/*
            }
        )
        assert finals.values.tolist() == [["A", "relu1_1", 2.0], ["A", "relu2_1", 1.0], ["B", "relu1_1", 3.0]]

    def test_quality_points_only_for_runs_with_both_metrics(self):
        points = compare.quality_points(
            {"A": {"quality/content": 0.5, "quality/style": 0.7}, "B": {"quality/content": 0.1}}
        )
        assert points.values.tolist() == [["A", 0.5, 0.7]]
        assert compare.quality_points({"A": {}}).empty


# --------------------------------------------------------------------------------------------------
# The page, with AppTest


@pytest.fixture(scope="module")
def store(store_uri, tmp_path_factory) -> Iterator[str]:
    """The pages read a SQLite store, then the README's team store (an mlflow server on PostgreSQL)."""
    with app_serving(store_uri, tmp_path_factory.mktemp("compare-app")) as uri:
        yield uri


@pytest.fixture(scope="module")
def two_runs(store):
    content = images.load_image((sample_path("tubingen.jpg")).read_bytes())
    style = images.load_image((sample_path("starry_night.jpg")).read_bytes())
    ids = []
    for name, config in (("compare A", TINY), ("compare B", OTHER)):
        tracker = jobs.tracked_transfer(content, [style], config, tracking_uri=store, run_name=name)
        ids.append(tracker.run_id)
    return ids


def compare_page(runs: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.query_params["runs"] = runs
    at.switch_page("views/compare.py")
    return at.run()


def texts(at: AppTest) -> str:
    parts = [e.value for kind in ("markdown", "caption", "info", "error", "warning", "success", "title", "subheader")
             for e in getattr(at, kind)]  # fmt: skip
    return "\n".join(str(p) for p in parts)


def charts(at: AppTest) -> list:
    return at.get("vega_lite_chart")


def test_two_runs_show_the_differing_settings_charts_and_the_swipe(store, two_runs):
    a, b = two_runs
    at = compare_page(f"{a},{b}")
    assert not at.exception
    assert not at.error
    differ = at.dataframe[0].value
    assert sorted(differ.index) == ["beta", "beta_effective", "lambda.relu1_1"]  # the user's β and the size-aware one
    assert differ.loc["beta"].tolist() == [TINY.to_params()["beta"], OTHER.to_params()["beta"]]
    assert list(differ.columns) == ["A · compare A", "B · compare B"]
    page = texts(at)
    assert "Costs per step" in page and "Final costs per layer" in page
    # one chart per cost (total, content, style, 5 style layers; no tv: tv_weight is 0), the grouped bars
    assert [s.label for s in at.slider] == ["Swipe"]
    assert "Mean difference" in page and a[:8] in page and b[:8] in page
    has_quality = "quality/content" in tracking.load_run(store, a).metrics
    assert ("Quality: content vs style" in page) == has_quality  # the scatter only where runs have quality/*
    assert len(charts(at)) == 3 + 5 + 1 + has_quality


def test_the_swipe_slider_reruns_without_errors(store, two_runs):
    at = compare_page(",".join(two_runs))
    at.slider(key="swipe").set_value(10).run()
    assert not at.exception and at.slider(key="swipe").value == 10


def test_all_settings_can_be_shown(store, two_runs):
    at = compare_page(",".join(two_runs))
    at.toggle(key="all_settings").set_value(True).run()
    assert not at.exception
    assert len(at.dataframe) == 2 and "size" in at.dataframe[1].value.index


def test_one_run_explains_how_to_pick_runs(store, two_runs):
    at = compare_page(two_runs[0])
    assert not at.exception
    assert "Pick two or more runs" in texts(at)
    assert not at.slider and not charts(at)


def test_no_runs_param_explains_how_to_pick_runs(store):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.switch_page("views/compare.py").run()
    assert not at.exception and "Pick two or more runs" in texts(at)


def test_an_unknown_id_is_named_and_the_two_good_runs_still_show(store, two_runs):
    a, b = two_runs
    at = compare_page(f"{a},no-such-run,{b}")
    assert not at.exception
    errors = "\n".join(e.value for e in at.error)
    assert "no-such-run" in errors and "showing the others" in errors
    assert sorted(at.dataframe[0].value.index) == ["beta", "beta_effective", "lambda.relu1_1"]
    assert at.slider and charts(at)


def test_an_unknown_id_with_one_good_run_shows_the_error_and_the_help(store, two_runs):
    at = compare_page(f"{two_runs[0]},no-such-run")
    assert not at.exception
    assert "no-such-run" in "\n".join(e.value for e in at.error)
    assert "Pick two or more runs" in texts(at)


def test_three_runs_have_no_ab_views_but_a_compare_link(store, two_runs):
    a, b = two_runs
    third = compare_page(f"{a},{b},{a}")  # a duplicate counts once: still two runs
    assert [s.label for s in third.slider] == ["Swipe"]
    at = compare_page(f"{a},{b},{_third_run(store)}")
    assert not at.exception and not at.slider
    assert len(at.dataframe[0].value.columns) == 3
    buttons = at.get("link_button")
    assert buttons and "compare-runs" in buttons[0].proto.url


def _third_run(store) -> str:
    content = images.load_image((sample_path("tubingen.jpg")).read_bytes())
    style = images.load_image((sample_path("starry_night.jpg")).read_bytes())
    tracker = jobs.tracked_transfer(content, [style], TINY.replace(seed=1), tracking_uri=store)
    return tracker.run_id


def test_the_runs_page_links_selected_runs_to_the_compare_page(store, two_runs):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.switch_page("views/runs.py").run()
    for run_id in two_runs:
        at.checkbox(key=f"compare_{run_id}").check()
    at.run()
    assert not at.exception
    links = [link for link in at.get("page_link") if "Compare 2 runs" in link.proto.label]
    assert links and links[0].proto.page == "compare"
    query = urllib.parse.parse_qs(links[0].proto.query_string)
    assert sorted(query["runs"][0].split(",")) == sorted(two_runs)
    assert any("compare-runs" in b.proto.url for b in at.get("link_button"))


def test_a_run_without_any_image_still_compares_without_ab_views(store, two_runs):
    content = images.load_image((sample_path("tubingen.jpg")).read_bytes())
    style = images.load_image((sample_path("starry_night.jpg")).read_bytes())
    tracker = tracking.RunRecorder.create(store, tracking.DEFAULT_EXPERIMENT, TINY, content, [style], source="app")
    tracker.fail("Out of GPU memory at 2048 px on cuda:0.")
    at = compare_page(f"{two_runs[0]},{tracker.run_id}")
    assert not at.exception
    page = texts(at)
    assert "No image yet." in page and "The A/B views need an image of both runs." in page
    assert "failed" in page and not at.slider
    assert "Settings that differ" in page and charts(at)
