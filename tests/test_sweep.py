"""λ sweeps (`engine.sweep`): axes and their validation, the contact sheet, and whole sweeps through a real
JobQueue into a real SQLite MLflow store with the real VGG19; the 2×2 sweep (its parent, children and
contact sheet, read back) also into a real `mlflow server` on PostgreSQL (conftest's `tracking_store`).
Every run is tiny (32 px, 2 steps, one scale); runs meant to be cancelled are long and never get far."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from engine import jobs
from engine.core.config import TransferConfig
from engine.core.errors import InputError
from engine.jobs import JobQueue
from engine.studies import sweep
from engine.studies.sweep import (
    MAX_SETTINGS,
    SweepAxis,
    cancel_sweep,
    contact_sheet,
    contact_sheet_size,
    expand,
    finalise_sweep,
    submit_sweep,
    sweep_children,
    sweep_grid,
    sweepable_params,
)
from engine.tracking import download_artifact, image_steps, list_runs, load_run

BASE = TransferConfig(size=32, steps=2, coarse_levels=0, seed=7)
BUSY = BASE.replace(steps=2000)  # keeps the worker busy until cancelled
AXES = [SweepAxis("lambda.relu3_1", ("0.5", "2")), SweepAxis("beta", ("1e4", "1e5"))]
TIMEOUT_S = 120


# --------------------------------------------------------------------------------------------------
# Fixtures


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Done:
    """The 2×2 sweep of tiny runs, run once for the module."""

    def __init__(self, uri: str, handle: sweep.SweepHandle, seconds: float):
        self.uri, self.handle, self.seconds = uri, handle, seconds
        self.parent = load_run(uri, handle.parent_run_id)
        self.children = sweep_children(uri, handle.parent_run_id)


@pytest.fixture(scope="module")
def done(store_uri, tmp_path_factory, content_png, style_png) -> Iterator[Done]:
    uri, folder = store_uri, tmp_path_factory.mktemp("sweep")
    queue = JobQueue(uri, devices=["cpu"], backend="thread", preview_every=1, fallback_dir=folder / "unsaved",
                     queue_db=folder / "queue.db")  # fmt: skip
    try:
        start = time.monotonic()
        handle = submit_sweep(queue, BASE, AXES, content_png, (style_png,), name="tiny sweep")
        assert handle.wait(TIMEOUT_S), "the sweep did not end in time"
        yield Done(uri, handle, time.monotonic() - start)
    finally:
        queue.shutdown(wait=True)


# --------------------------------------------------------------------------------------------------
# Axes and expand()


def test_expand_is_the_row_major_grid_product_with_labels():
    settings = expand(BASE, [SweepAxis("lambda.relu3_1", ("0.5", "1", "2")), SweepAxis("beta", ("1e4", "1e5"))])
    assert [labels for labels, _ in settings] == [
        {"lambda.relu3_1": a, "beta": b} for a in ("0.5", "1", "2") for b in ("1e4", "1e5")
    ]
    for labels, config in settings:
        assert config.lambdas["relu3_1"] == float(labels["lambda.relu3_1"])
        assert config.beta == float(labels["beta"])
        assert config.replace(style_layers=BASE.style_layers, beta=BASE.beta) == BASE  # nothing else changed


def test_expand_with_one_axis_gives_one_setting_per_value():
    settings = expand(BASE, [SweepAxis("size", ("32", "48", "64"))])
    assert [(labels, config.size) for labels, config in settings] == [
        ({"size": "32"}, 32),
        ({"size": "48"}, 48),
        ({"size": "64"}, 64),
    ]


def test_expand_sweeps_the_other_knobs_by_their_param_names():
    for param, values, read in [
        ("alpha", ("0.5", "2"), lambda c: c.alpha),
        ("steps", ("3", "5"), lambda c: c.steps),
        ("tv_weight", ("0", "1.5"), lambda c: c.tv_weight),
        ("seed", ("1", "2"), lambda c: c.seed),
        ("content_layer", ("relu3_2", "relu5_2"), lambda c: c.content_layer),
        ("init", ("content", "blend"), lambda c: c.init),
        ("optimizer", ("adam", "lbfgs"), lambda c: c.optimizer),
        ("pooling", ("avg", "max"), lambda c: c.pooling),
    ]:
        got = [read(config) for _, config in expand(BASE, [SweepAxis(param, values)])]
        assert [str(v) for v in got] == [str(type(got[0])(v)) for v in values], param


def test_a_lambda_axis_can_add_a_style_layer_the_base_lacks():
    (_, config), _ = expand(BASE, [SweepAxis("lambda.relu3_2", ("0.3", "0.6"))])
    assert config.lambdas["relu3_2"] == 0.3
    assert set(BASE.lambdas) < set(config.lambdas)


def test_a_style_layers_axis_replaces_the_layers_with_equal_or_given_lambdas():
    settings = expand(BASE, [SweepAxis("style_layers", ("relu1_1,relu2_1", "relu3_1=0.7"))])
    assert [config.lambdas for _, config in settings] == [{"relu1_1": 0.5, "relu2_1": 0.5}, {"relu3_1": 0.7}]


def test_beta_over_alpha_axis_sets_beta_to_ratio_times_alpha():
    base = BASE.replace(alpha=2.0)
    settings = expand(base, [SweepAxis("beta/alpha", ("1e3", "1e5"))])
    assert [config.beta for _, config in settings] == [2e3, 2e5]
    assert all(config.alpha == 2.0 for _, config in settings)
    assert [labels for labels, _ in settings] == [{"beta/alpha": "1e3"}, {"beta/alpha": "1e5"}]
    grid = expand(base, [SweepAxis("alpha", ("1", "10")), SweepAxis("beta/alpha", ("100",))])
    assert [(c.alpha, c.beta) for _, c in grid] == [(1.0, 100.0), (10.0, 1000.0)]


def test_unknown_params_say_what_was_meant():
    with pytest.raises(InputError, match=r"Unknown sweep parameter 'lamda.relu3_1'.*Did you mean 'lambda.relu3_1'"):
        SweepAxis("lamda.relu3_1", ("1",))
    with pytest.raises(InputError, match=r"Did you mean 'beta'"):
        SweepAxis("betta", ("1",))
    with pytest.raises(InputError, match=r"relu9_1.*Did you mean"):
        SweepAxis("lambda.relu9_1", ("1",))
    assert "beta/alpha" in sweepable_params() and "lambda.relu3_1" in sweepable_params()


def test_bad_values_name_the_axis_and_the_value():
    with pytest.raises(InputError, match=r"Sweep axis 'beta', value 'lots':.*number"):
        expand(BASE, [SweepAxis("beta", ("1e5", "lots"))])
    with pytest.raises(InputError, match=r"Sweep axis 'lambda.relu3_1', value '-1':.*zero or positive"):
        expand(BASE, [SweepAxis("lambda.relu3_1", ("-1",))])
    with pytest.raises(InputError, match=r"Sweep axis 'size', value '99999'"):
        expand(BASE, [SweepAxis("size", ("99999",))])
    with pytest.raises(InputError, match=r"Sweep axis 'optimizer', value 'sgd'.*Did you mean|choose one of"):
        expand(BASE, [SweepAxis("optimizer", ("sgd",))])
    with pytest.raises(InputError, match=r"'beta/alpha', value 'x'"):
        expand(BASE, [SweepAxis("beta/alpha", ("x",))])


def test_a_combination_the_config_refuses_names_the_setting():
    with pytest.raises(InputError, match=r"The sweep setting alpha=0 beta=0 is invalid: alpha and beta are both 0"):
        expand(BASE, [SweepAxis("alpha", ("0", "1")), SweepAxis("beta", ("0", "1"))])


def test_axes_are_checked_as_a_whole():
    with pytest.raises(InputError, match="one or two"):
        expand(BASE, [SweepAxis("alpha", ("1",)), SweepAxis("beta", ("1",)), SweepAxis("seed", ("1",))])
    with pytest.raises(InputError, match="one or two"):
        expand(BASE, [])
    with pytest.raises(InputError, match="twice"):
        expand(BASE, [SweepAxis("beta", ("1",)), SweepAxis("beta", ("2",))])
    with pytest.raises(InputError, match="not both"):
        expand(BASE, [SweepAxis("beta", ("1",)), SweepAxis("beta/alpha", ("2",))])
    with pytest.raises(InputError, match=f"at most {MAX_SETTINGS}"):
        expand(BASE, [SweepAxis("seed", tuple(map(str, range(13)))), SweepAxis("steps", tuple("12345"))])
    with pytest.raises(InputError, match="same setting"):
        expand(BASE, [SweepAxis("beta", ("1e5", "100000"))])
    with pytest.raises(InputError, match="twice"):
        SweepAxis("beta", ("1", "1"))
    with pytest.raises(InputError, match="no values"):
        SweepAxis("beta", ())


# --------------------------------------------------------------------------------------------------
# The contact sheet


def test_contact_sheet_is_a_labelled_grid_with_grey_tiles_for_missing_results():
    red = Image.new("RGB", (64, 48), (255, 0, 0))
    cells = [("content 1e6  style 2", red), ("failed", None), ("running", None), ("x", red)]
    sheet = contact_sheet(
        cells, 2, 2, row_labels=["lambda.relu3_1=0.5", "lambda.relu3_1=2"], col_labels=["β=1e4", "β=1e5"], tile=96
    )
    assert sheet.size == contact_sheet_size(2, 2, 96)
    assert 2 * 96 < sheet.width < 3 * 96 + sweep.SHEET_ROW_LABEL_W
    left, top = sweep.SHEET_ROW_LABEL_W, sweep.SHEET_HEADER_H
    row_h = 96 + sweep.SHEET_CAPTION_H + sweep.SHEET_PAD
    assert sheet.getpixel((left + 48, top + 48)) == (255, 0, 0)  # first cell: the image, centred
    assert sheet.getpixel((left + 96 + sweep.SHEET_PAD + 2, top + 2)) == sweep._MISSING  # "failed": grey
    assert sheet.getpixel((left + 2, top + row_h + 2)) == sweep._MISSING  # "running": grey
    with pytest.raises(ValueError, match="do not fill"):
        contact_sheet(cells[:3], 2, 2, row_labels=None, col_labels=None)


def test_contact_sheet_of_one_row_has_no_row_label_band_and_a_title():
    sheet = contact_sheet([("a", None)] * 3, 1, 3, row_labels=None, col_labels=["a", "b", "c"], tile=64, title="t")
    assert sheet.size == contact_sheet_size(1, 3, 64, with_row_labels=False, with_title=True)


# --------------------------------------------------------------------------------------------------
# A 2×2 sweep of tiny runs


def test_sweep_ends_with_a_finished_parent_carrying_the_sweep_params(done):
    parent = done.parent
    assert parent.status == "FINISHED" and done.handle.status == "FINISHED"
    assert parent.name == "tiny sweep"
    assert parent.tags["source"] == "sweep" and parent.tags["sweep.role"] == "parent"
    assert "mlflow.parentRunId" not in parent.tags
    assert parent.params["sweep.axes"] == "lambda.relu3_1,beta"
    assert parent.params["sweep.size"] == "2x2"
    assert json.loads(parent.params["sweep.values.beta"]) == ["1e4", "1e5"]
    assert TransferConfig.from_params(parent.params) == BASE  # the base config's params
    assert (parent.tags["sweep.finished"], parent.tags["sweep.failed"]) == ("4", "0")


def test_sweep_has_four_finished_children_with_the_right_params(done):
    children = done.children
    assert len(children) == 4
    assert list(children["status"]) == ["FINISHED"] * 4
    assert list(zip(children["row"], children["col"], strict=True)) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    expected = [(a, b) for a in ("0.5", "2") for b in ("1e4", "1e5")]
    for (lam, beta), (_, child) in zip(expected, children.iterrows(), strict=True):
        assert float(child["params.lambda.relu3_1"]) == float(lam)
        assert float(child["params.beta"]) == float(beta)
        assert (child["tags.sweep.lambda.relu3_1"], child["tags.sweep.beta"]) == (lam, beta)
        assert child["run_name"] == child["label"] == f"lambda.relu3_1={lam} beta={beta}"
        assert child["parent_run_id"] == done.handle.parent_run_id
        assert child["source"] == "sweep"
        assert "metrics.quality/style" in child and child["metrics.quality/style"] > 0
        assert (child["tags.batch.size"], child["tags.batch.index"]) == ("4", "0")  # one batch: only weights vary
    assert set(children["params.seed"]) == {"7"}
    assert set(children["params.size"]) == {"32"} and set(children["params.steps"]) == {"2"}
    for column in ("tags.sha256.content", "tags.sha256.style.0"):
        assert children[column].nunique() == 1
        assert children[column].iloc[0] == done.parent.tags[column.removeprefix("tags.")]
    assert [c.run_id for c in done.handle.children] == list(children["run_id"])
    assert done.handle.shape == (2, 2)
    assert (done.handle.row_values, done.handle.col_values) == (("0.5", "2"), ("1e4", "1e5"))


def test_sweep_logs_a_contact_sheet_of_two_by_two_tiles_on_the_parent(done):
    path = download_artifact(done.uri, done.handle.parent_run_id, "contact_sheet.png")
    with Image.open(path) as sheet:
        assert sheet.size == contact_sheet_size(2, 2, 192, with_row_labels=True, with_title=True)
    assert len(image_steps(done.uri, done.handle.parent_run_id, key="contact_sheet")) == 1
    assert done.parent.tags["sweep.contact_sheet"] == "contact_sheet.png"
    with Image.open(download_artifact(done.uri, done.handle.parent_run_id, "thumbnail.png")) as thumbnail:
        assert max(thumbnail.size) == 256  # the runs gallery shows the sheet


def test_finalise_sweep_is_idempotent(done):
    run_id = done.handle.parent_run_id
    path = Path(download_artifact(done.uri, run_id, "contact_sheet.png"))
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    assert finalise_sweep(done.uri, run_id) == "FINISHED"
    assert finalise_sweep(done.uri, run_id, force=True) == "FINISHED"
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    assert len(image_steps(done.uri, run_id, key="contact_sheet")) == 1
    assert load_run(done.uri, run_id).status == "FINISHED"


def test_sweep_grid_reads_the_finished_sweep_back_from_mlflow(done):
    grid = sweep_grid(done.uri, done.handle.parent_run_id)
    assert (grid.rows, grid.cols, grid.done) == (2, 2, True)
    assert grid.row_labels == ["lambda.relu3_1=0.5", "lambda.relu3_1=2"]
    assert grid.col_labels == ["beta=1e4", "beta=1e5"]
    assert [c.status for c in grid.cells] == ["FINISHED"] * 4
    assert all(c.image is not None and c.caption.startswith("content ") for c in grid.cells)


def test_sweep_of_tiny_runs_takes_seconds(done):
    assert done.seconds < 60, f"{done.seconds:.1f} s"


# --------------------------------------------------------------------------------------------------
# Ends other than FINISHED, and recovering a sweep from MLflow


def test_bad_input_submits_nothing(uri, make_queue, content_png):
    queue = make_queue(uri, preview_every=1)
    with pytest.raises(InputError, match="style image 1"):
        submit_sweep(queue, BASE, AXES, content_png, (b"not an image",))
    with pytest.raises(InputError, match="Unknown sweep parameter"):
        submit_sweep(queue, BASE, [SweepAxis("lamda.relu3_1", ("1",))], content_png, (content_png,))
    assert list_runs(uri).empty


def test_a_sweep_whose_last_child_ended_with_no_service_watching_is_ended_by_the_next_start(
    uri, make_queue, content_png, style_png
):
    submitter = make_queue(uri, devices=[])  # the app that accepted the sweep runs no worker
    handle = submit_sweep(submitter, BASE, [SweepAxis("seed", ("1", "2"))], content_png, (style_png,))
    runner = make_queue(uri, preview_every=1)  # a worker that knows nothing of sweeps
    deadline = time.monotonic() + TIMEOUT_S
    while set(sweep_children(uri, handle.parent_run_id)["status"]) != {"FINISHED"}:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    runner.shutdown(wait=True)
    assert load_run(uri, handle.parent_run_id).status == "RUNNING"  # nobody has ended it yet
    with pytest.raises(InputError):
        download_artifact(uri, handle.parent_run_id, "contact_sheet.png")

    make_queue(uri, devices=[], group_finalisers=(sweep.finalise_group,))  # the app starts again
    assert handle.wait(5) and handle.status == "FINISHED"
    assert finalise_sweep(uri, handle.parent_run_id) == "FINISHED"  # idempotent
    path = download_artifact(uri, handle.parent_run_id, "contact_sheet.png")
    with Image.open(path) as sheet:
        assert sheet.size == contact_sheet_size(1, 2, 192, with_row_labels=False, with_title=True)
    assert len(image_steps(uri, handle.parent_run_id, key="contact_sheet")) == 1


def test_a_cancelled_sweep_ends_killed_and_its_grid_shows_it_live(uri, make_queue, content_png, style_png):
    queue = make_queue(uri, preview_every=1)
    axes = [SweepAxis("steps", ("2000", "1999")), SweepAxis("beta", ("1e4", "1e5"))]  # a batch per row
    handle = submit_sweep(queue, BUSY, axes, content_png, (style_png,))
    deadline = time.monotonic() + TIMEOUT_S
    while min(queue.progress(run_id).step for run_id in handle.run_ids[:2]) < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    live = handle.grid()
    assert [c.status for c in live.cells] == ["RUNNING", "RUNNING", "SCHEDULED", "SCHEDULED"]
    assert all(c.caption.startswith("running ") and c.image is not None for c in live.cells[:2])
    assert [c.caption for c in live.cells[2:]] == ["queued", "queued"]
    handle.cancel()
    assert handle.wait(TIMEOUT_S)
    assert handle.status == "KILLED"
    parent = load_run(uri, handle.parent_run_id)
    assert parent.status == "KILLED" and parent.tags["sweep.cancelled"] == "true"
    assert set(sweep_children(uri, handle.parent_run_id)["status"]) == {"KILLED"}
    grid = sweep_grid(uri, handle.parent_run_id)
    assert [c.caption for c in grid.cells] == ["cancelled"] * 4
    download_artifact(uri, handle.parent_run_id, "contact_sheet.png")
    assert cancel_sweep(uri, handle.parent_run_id, queue=queue) == 0  # over already: nothing to do


def test_a_sweep_whose_runs_all_fail_ends_failed_with_the_reason(uri, make_queue, content_png, style_png, monkeypatch):
    def broken(*args, **kwargs):
        raise InputError("the optimisation diverged at once")

    monkeypatch.setattr(jobs.worker, "transfer_batch", broken)
    queue = make_queue(uri, preview_every=1)
    handle = submit_sweep(queue, BASE, [SweepAxis("beta", ("1e4", "1e5"))], content_png, (style_png,))
    assert handle.wait(TIMEOUT_S)
    parent = load_run(uri, handle.parent_run_id)
    assert parent.status == "FAILED" == handle.status
    assert "all 2 runs of the sweep failed" in parent.tags["failure_reason"]
    assert "diverged at once" in parent.tags["failure_reason"]
    grid = sweep_grid(uri, handle.parent_run_id)
    assert [(c.status, c.caption, c.image) for c in grid.cells] == [("FAILED", "failed", None)] * 2


# --------------------------------------------------------------------------------------------------
# Batches


def test_settings_that_differ_only_in_weights_seed_or_init_share_batches_of_at_most_max_batch():
    seeds = [config for _, config in expand(BASE, [SweepAxis("seed", tuple(map(str, range(10))))])]
    assert sweep._batches(seeds) == [list(range(sweep.MAX_BATCH)), [8, 9]]
    grid = expand(BASE, [SweepAxis("size", ("32", "40")), SweepAxis("beta/alpha", ("1e3", "1e5"))])
    assert sweep._batches([config for _, config in grid]) == [[0, 1], [2, 3]]  # one batch per size
    mixed = expand(BASE, [SweepAxis("init", ("noise", "content")), SweepAxis("steps", ("2", "3"))])
    assert sweep._batches([config for _, config in mixed]) == [[0, 2], [1, 3]]  # batches by steps
    # where memory has room for 3 at a time, batches of at most 3
    assert sweep._batches(seeds, fits=lambda batch: len(batch) <= 3) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]


def test_a_sweep_over_size_runs_each_size_as_its_own_job(uri, make_queue, content_png, style_png):
    queue = make_queue(uri, preview_every=1)
    handle = submit_sweep(queue, BASE, [SweepAxis("size", ("32", "40"))], content_png, (style_png,))
    assert handle.wait(TIMEOUT_S) and handle.status == "FINISHED"
    children = sweep_children(uri, handle.parent_run_id)
    assert list(children["status"]) == ["FINISHED"] * 2
    assert list(children["tags.batch.size"]) == ["1", "1"] and list(children["tags.batch.index"]) == ["0", "1"]
    assert list(children["params.size"]) == ["32", "40"]
    download_artifact(uri, handle.parent_run_id, "contact_sheet.png")
