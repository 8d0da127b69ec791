"""Live previews (`engine.jobs.preview`, the ledger's `previews` table, `JobQueue.submit_preview`): debounced,
superseded within a slot, untracked, and run by the queue's own worker at a priority that leaves full runs
their place. Real VGG19, a real SQLite ledger and MLflow store, tiny images (32-64 px)."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from PIL import Image, ImageDraw

from engine.core.config import TransferConfig
from engine.core.images import InputImage, Inputs
from engine.core.regions import Region
from engine.jobs import JobSpec
from engine.jobs.ledger import Ledger, owner_id
from engine.jobs.preview import (
    FIRST_LOOK_EVERY,
    PREVIEW_SIZE,
    PREVIEW_STEPS,
    PreviewRunner,
    preview_config,
    preview_images,
    preview_key,
    render_preview,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = TransferConfig(size=32, steps=150, coarse_levels=2)


@pytest.fixture(scope="module")
def inputs(content_png, style_png) -> Inputs:
    return Inputs.decode(content_png, [style_png])


def _queue_preview(ledger: Ledger, slot: str, config: TransferConfig, inputs: Inputs, debounce_s: float = 0.0) -> str:
    small = preview_config(config)
    return ledger.add_preview(slot, preview_key(small, inputs), small.to_json(), preview_images(inputs), debounce_s)


def _wait(condition, timeout_s: float = 120.0, every_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(every_s)
    raise AssertionError("timed out")


def test_a_preview_is_the_settings_small_short_and_at_one_scale():
    small = preview_config(TransferConfig(size=1024, steps=500, coarse_levels=2, beta=7e5))
    assert (small.size, small.steps, small.coarse_levels) == (PREVIEW_SIZE, PREVIEW_STEPS, 0)
    assert small.replace(size=1024, steps=500, coarse_levels=2) == TransferConfig(size=1024, steps=500, coarse_levels=2,
                                                                                  beta=7e5)  # fmt: skip
    assert preview_config(SMALL).size == 32  # never larger than the run


def test_a_newer_preview_of_a_slot_abandons_the_older_and_waits_out_its_debounce(tmp_path, inputs):
    ledger = Ledger(tmp_path / "queue.db")
    first = _queue_preview(ledger, "a", SMALL, inputs, debounce_s=0.3)
    other_slot = _queue_preview(ledger, "b", SMALL.replace(beta=1e5), inputs, debounce_s=0.3)
    second = _queue_preview(ledger, "a", SMALL.replace(beta=3e5), inputs, debounce_s=0.3)
    assert ledger.preview(first).state == "abandoned"
    assert ledger.preview(second).state == ledger.preview(other_slot).state == "queued"
    assert ledger.claim_preview("me") is None  # debounced: not claimable for 0.3 s
    time.sleep(0.35)
    claim = ledger.claim_preview("me")
    assert claim.id == other_slot and (claim.content, claim.styles) == (inputs.content.png, (inputs.styles[0].png,))
    assert TransferConfig.from_json(claim.config) == preview_config(SMALL.replace(beta=1e5))
    assert ledger.claim_preview("me").id == second and ledger.claim_preview("me") is None


def test_a_runner_renders_a_preview_and_the_same_settings_are_not_rendered_twice(tmp_path, inputs):
    ledger = Ledger(tmp_path / "queue.db")
    runner = PreviewRunner(ledger, "cpu", owner_id())
    preview_id = _queue_preview(ledger, "a", SMALL, inputs)
    assert runner.idle(batch_waiting=lambda: False)
    row = ledger.preview(preview_id)
    assert row.state == "done" and row.seconds > 0
    assert Image.open(io.BytesIO(row.result)).size == (32, 24)
    assert _queue_preview(ledger, "b", SMALL, inputs) == preview_id  # already rendered: returned as it is
    assert not runner.idle(batch_waiting=lambda: False)  # nothing waits


def test_a_running_preview_shows_its_image_so_far_every_few_iterations(tmp_path, inputs):
    ledger = Ledger(tmp_path / "queue.db")
    seen = []  # what a page reads of the row at each first look: (state, step, image size)
    last_look = []

    def render(claim, abandoned, show_step):
        def show_and_read(image: bytes, step: int) -> None:
            show_step(image, step)
            row = ledger.preview(claim.id)
            seen.append((row.state, row.step, Image.open(io.BytesIO(row.result)).size))
            last_look[:] = [row.result]

        return render_preview(claim, "cpu", abandoned, show_and_read)

    preview_id = _queue_preview(ledger, "a", SMALL, inputs)  # 30 iterations at 32 px
    assert PreviewRunner(ledger, "cpu", owner_id(), render=render).idle(batch_waiting=lambda: False)
    looks = list(range(FIRST_LOOK_EVERY, PREVIEW_STEPS, FIRST_LOOK_EVERY))
    assert seen == [("running", step, (32, 24)) for step in looks] and looks
    done = ledger.preview(preview_id)
    assert done.state == "done" and Image.open(io.BytesIO(done.result)).size == (32, 24)
    assert done.result != last_look[0]  # the end replaced the first look


def test_a_released_preview_forgets_its_first_look(tmp_path, inputs):
    ledger = Ledger(tmp_path / "queue.db")
    preview_id = _queue_preview(ledger, "a", SMALL, inputs)
    claim = ledger.claim_preview("me")
    ledger.show_preview_step(claim.id, inputs.content.png, FIRST_LOOK_EVERY)
    assert ledger.preview(preview_id).result == inputs.content.png
    ledger.release_preview(claim.id)  # its worker stopped: queued again, from the start
    row = ledger.preview(preview_id)
    assert (row.state, row.result, row.step) == ("queued", None, None)
    ledger.show_preview_step(preview_id, inputs.content.png, FIRST_LOOK_EVERY)  # not running: nothing shown
    assert ledger.preview(preview_id).result is None


def test_an_idle_runner_waits_out_a_fresh_previews_debounce_and_renders_it(tmp_path, inputs):
    ledger = Ledger(tmp_path / "queue.db")
    runner = PreviewRunner(ledger, "cpu", owner_id())
    preview_id = _queue_preview(ledger, "a", SMALL.replace(steps=2, coarse_levels=0), inputs, debounce_s=0.2)
    assert 0 < ledger.preview_due_in() <= 0.2 and not ledger.preview_waiting()
    asked = time.monotonic()
    assert runner.idle(batch_waiting=lambda: False)  # not "nothing to do" until the next poll
    assert ledger.preview(preview_id).state == "done"
    assert time.monotonic() - asked >= 0.15  # it did wait for the debounce
    assert ledger.preview_due_in() is None


def test_a_preview_with_regions_takes_its_mask_along(tmp_path, inputs):
    mask = Image.new("RGB", inputs.content.image.size, (255, 0, 0))
    ImageDraw.Draw(mask).rectangle([0, 0, 20, 48], fill=(0, 0, 255))
    masked = Inputs(inputs.content, (*inputs.styles, inputs.styles[0]), InputImage.decode(mask))
    regions = (Region("red", (255, 0, 0), (1,)), Region("blue", (0, 0, 255), ()))
    config = SMALL.replace(regions=regions, steps=5, coarse_levels=0)
    assert preview_key(config, masked) != preview_key(config, Inputs(masked.content, masked.styles))
    ledger = Ledger(tmp_path / "queue.db")
    preview_id = _queue_preview(ledger, "a", config, masked)
    assert PreviewRunner(ledger, "cpu", owner_id()).idle(batch_waiting=lambda: False)
    row = ledger.preview(preview_id)
    assert row.state == "done", row.error
    assert Image.open(io.BytesIO(row.result)).size == (32, 24)


def test_between_batches_a_waiting_full_batch_lets_at_most_one_preview_go_first(tmp_path, inputs):
    ledger = Ledger(tmp_path / "queue.db")
    runner = PreviewRunner(ledger, "cpu", owner_id())
    runner.batch_started()
    previews = [_queue_preview(ledger, slot, SMALL.replace(beta=b), inputs) for slot, b in [("a", 1e5), ("b", 2e5)]]
    assert runner.idle(batch_waiting=lambda: True)  # the first since the last batch may go first
    assert not runner.idle(batch_waiting=lambda: True)  # then the batch
    assert [ledger.preview(p).state for p in previews] == ["done", "queued"]
    assert runner.idle(batch_waiting=lambda: False)  # with no batch waiting, previews run on
    runner.batch_started()
    _queue_preview(ledger, "c", SMALL.replace(beta=4e5), inputs)
    runner.estimate_s = 1.0
    runner.between_steps(3.0)  # inside a batch: 1 s of preview would be a third of its 3 s
    assert ledger.preview_waiting()
    runner.between_steps(4.0)  # a quarter of 4 s: allowed
    assert not ledger.preview_waiting() and runner.spent_in_batch > 0


@pytest.mark.slow
def test_a_preview_runs_between_the_steps_of_a_full_run_which_finishes_untouched(uri, make_queue, inputs):
    queue = make_queue(uri)
    first = queue.submit_preview("session", SMALL, inputs)  # idle worker: at once; measures its length
    assert _wait(lambda: queue.preview(first).state == "done")
    full = TransferConfig(size=64, steps=150)
    run_id = queue.submit(JobSpec(config=full, content=inputs.content, styles=inputs.styles))
    _wait(lambda: (p := queue.progress(run_id)) and p.step >= 5)
    during = queue.submit_preview("session", SMALL.replace(style_layers={"relu3_1": 1.0}), inputs)
    assert _wait(lambda: queue.preview(during).state == "done")
    assert queue.progress(run_id).state == "RUNNING"  # rendered between the full run's steps
    assert _wait(lambda: (p := queue.progress(run_id)).done and p).state == "FINISHED"
    assert queue.progress(run_id).step == 150
    runs = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("style-transfer").experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]  # previews are not tracked


@pytest.mark.slow
def test_the_studio_previews_each_setting_side_by_side_without_a_run(app_store):
    from streamlit.testing.v1 import AppTest

    from engine import tracking
    from engine.core.samples import sample_path
    from views.common import job_queue

    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=60).run()
    at.file_uploader(key="content").set_value(("c.jpg", sample_path("tubingen.jpg").read_bytes(), "image/jpeg"))
    at.file_uploader(key="styles").set_value([("s.jpg", sample_path("starry_night.jpg").read_bytes(), "image/jpeg")])
    at.run()
    next(n for n in at.number_input if n.label.startswith("Size")).set_value(32).run()
    assert "previews" not in at.session_state  # off until the visitor turns it on
    at.toggle(key="live_preview").set_value(True).run()

    def rendered() -> list[str]:
        _wait(lambda: all(job_queue().preview(e["id"]).state == "done" for e in at.session_state["previews"]))
        at.run()
        captions = [img.caption for image in at.get("image") for img in image.proto.imgs]
        return [c for c in captions if c.startswith(("now:", "1 before:"))]

    assert [c.split(" (")[0] for c in rendered()] == ["now: current settings"]
    at.slider(key="lambda_relu3_1").set_value(0.5).run()
    assert [c.split(" (")[0] for c in rendered()] == ["now: λ relu3_1 0.5", "1 before: current settings"]
    assert not at.exception
    assert tracking.list_runs(app_store).empty  # previews are not runs
