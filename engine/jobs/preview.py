"""Live previews: a small, cheap, untracked stylisation of the studio's current settings, run by the same
workers as full runs, through the same ledger, at a priority that bounds what it costs a full run.

- **What a preview is**: the settings at `PREVIEW_SIZE` px (or less) and `PREVIEW_STEPS` iterations at
  one scale (`preview_config`). Thanks to the size-aware β (params version 2) it has the balance the full
  run will have. It is not an MLflow run: its settings, images and result live in the ledger's
  `previews` table for an hour, and nothing else records it.
- **Debounced, superseded**: a preview is claimable `DEBOUNCE_S` after it was asked for, and a newer one
  of the same slot (a browser session) abandons it, queued or running (the run stops at its next
  iteration). Asking again for settings already previewed returns that result at once. An idle worker
  waits out a preview's debounce rather than its whole poll interval. Every `FIRST_LOOK_EVERY`
  iterations the image so far goes to the ledger, so the page shows a first look before the end.
- **Priority, and what it costs a full run** (`PreviewRunner`): a worker that is idle runs a waiting
  preview at once. Between two full batches it runs at most one preview before the next waiting batch,
  so a queued full run waits for at most one preview. While a full batch runs, a preview runs between
  two of its iterations only while the previews run during that batch, the one about to start counted
  (its length estimated from the last one's), stay within `SHARE_OF_A_RUN` of the batch's own time so
  far: a full run takes at most about a quarter longer, however fast the sliders move.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable

from engine.core import images
from engine.core.config import TransferConfig
from engine.core.errors import InputError
from engine.core.images import Inputs
from engine.core.transfer import StepReport, transfer
from engine.jobs.ledger import Ledger, PreviewClaim

__all__ = [
    "DEBOUNCE_S",
    "PREVIEW_SIZE",
    "PREVIEW_STEPS",
    "SHARE_OF_A_RUN",
    "PreviewRunner",
    "preview_config",
    "preview_key",
    "render_preview",
]

log = logging.getLogger(__name__)

PREVIEW_SIZE = 128  # px, long side
PREVIEW_STEPS = 30  # iterations: 2.7-2.9 s from asking to the result at 128 px on this quiet 2-core CPU (README)
DEBOUNCE_S = 0.3  # a slider moved again within this time supersedes the preview before it starts
SHARE_OF_A_RUN = 0.25  # the most of a running full batch's time that previews may take
FIRST_ESTIMATE_S = 3.0  # a preview's length before one has been measured on this worker
LOOK_EVERY_S = 0.25  # inside a batch, how often a worker asks the ledger for a waiting preview
FIRST_LOOK_EVERY = 10  # iterations: the page shows the image so far, before the preview ends (README)


def preview_config(config: TransferConfig) -> TransferConfig:
    """The preview of `config`: the same weights, layers and start at `PREVIEW_SIZE` px (or the run's size
    when smaller) and `PREVIEW_STEPS` iterations at one scale, in the run's params version."""
    return config.replace(size=min(config.size, PREVIEW_SIZE), steps=min(config.steps, PREVIEW_STEPS), coarse_levels=0)


def preview_key(config: TransferConfig, inputs: Inputs) -> str:
    """Digest of a preview's settings and images: the same key, the same preview."""
    parts = [config.to_json(), *inputs.digests]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def preview_images(inputs: Inputs) -> list[tuple[str, bytes]]:
    """(sha256, PNG) of a preview's images as the ledger keeps them: the content, the styles, then the
    mask when there is one (the runner takes it back off by the config's regions)."""
    return [(i.sha256, i.png) for i in (inputs.content, *inputs.styles, *([inputs.mask] if inputs.mask else []))]


def render_preview(
    claim: PreviewClaim,
    device: str,
    abandoned: Callable[[], bool],
    show_step: Callable[[bytes, int], None] | None = None,
) -> tuple[bytes | None, str | None]:
    """Render a claimed preview on `device`: (PNG bytes, None), or (None, why it failed); (None, None) when
    `abandoned()` turned true first. `show_step(png, step)` gets the image every `FIRST_LOOK_EVERY`
    iterations before the last."""

    def on_step(report: StepReport) -> None:
        if show_step is not None and report.step % FIRST_LOOK_EVERY == 0 and report.step < report.total_steps:
            show_step(images.image_to_png_bytes(report.image()), report.step)

    try:
        config = TransferConfig.from_json(claim.config)
        styles, mask = (claim.styles[:-1], claim.styles[-1]) if config.regions else (claim.styles, None)
        inputs = Inputs.decode(claim.content, styles, mask)
        out = transfer(inputs.content.image, inputs.style_images, config, on_step=on_step, should_stop=abandoned,
                       device=device, mask=inputs.mask_image)  # fmt: skip
        return (None if out.stopped == "cancelled" else images.image_to_png_bytes(out.image)), None
    except InputError as e:
        return None, str(e)
    except Exception as e:  # a preview's failure is shown on it, and the worker goes on
        log.exception("Preview %s failed", claim.id)
        return None, f"the preview failed ({type(e).__name__})"


# (claim, abandoned, show_step) -> (PNG bytes or None, error or None), as `render_preview`
Render = Callable[[PreviewClaim, Callable[[], bool], Callable[[bytes, int], None]], tuple[bytes | None, str | None]]


class PreviewRunner:
    """A worker's previews: claims them from the ledger by the rule of the module's docstring and renders
    them on the worker's device (or by `render`). `idle()` runs between batches, `between_steps(elapsed_s)`
    inside one."""

    def __init__(
        self,
        ledger: Ledger,
        device: str,
        owner: str,
        stop: Callable[[], bool] = lambda: False,
        render: Render | None = None,
    ) -> None:
        self.ledger, self.owner, self.stop = ledger, owner, stop
        # where a preview renders: on this worker's device, or elsewhere (a Ray task, `engine.jobs.ray_backend`)
        self.render = render or (
            lambda claim, abandoned, show_step: render_preview(claim, device, abandoned, show_step)
        )
        self.estimate_s = FIRST_ESTIMATE_S  # the last preview's length
        self.ran_since_batch = False  # a preview ran since the last full batch started
        self.spent_in_batch = 0.0  # seconds of previews during the running batch
        self.next_look = 0.0  # time.monotonic() from which `between_steps` reads the ledger again

    def idle(self, batch_waiting: Callable[[], bool]) -> bool:
        """Between batches: run one waiting preview unless a full batch waits and a preview already ran
        since the last batch. True when a preview ran."""
        if self.ran_since_batch and batch_waiting():
            return False
        due_in = self._due_in()
        if due_in and due_in <= DEBOUNCE_S and not batch_waiting():  # in its debounce: wait it out, not a poll
            time.sleep(due_in)
        ran = self._run_one()
        self.ran_since_batch |= ran
        return ran

    def batch_started(self) -> None:
        self.ran_since_batch, self.spent_in_batch = False, 0.0

    def between_steps(self, batch_elapsed_s: float) -> None:
        """Inside a full batch, after one of its iterations: run a waiting preview if the batch's budget
        (`SHARE_OF_A_RUN` of its own time so far, this preview counted) allows."""
        own = batch_elapsed_s - self.spent_in_batch  # the batch's own time: its elapsed time counts the previews
        if self.spent_in_batch + self.estimate_s > SHARE_OF_A_RUN * own:
            return
        now = time.monotonic()
        if now < self.next_look:  # the ledger is read at most every LOOK_EVERY_S, not every (1.5-ms GPU) step
            return
        self.next_look = now + LOOK_EVERY_S
        start = time.perf_counter()
        if self._run_one():
            self.spent_in_batch += time.perf_counter() - start

    def _due_in(self) -> float | None:
        try:
            return self.ledger.preview_due_in()
        except Exception as e:  # the ledger busy or gone: previews wait, runs go on
            log.warning("Could not read the previews of %s: %s", self.ledger.path, e)
            return None

    def _run_one(self) -> bool:
        try:
            if not self.ledger.preview_waiting():
                return False
            claim = self.ledger.claim_preview(self.owner)
        except Exception as e:  # the ledger busy or gone: previews wait, runs go on
            log.warning("Could not read the previews of %s: %s", self.ledger.path, e)
            return False
        if claim is None:
            return False
        self._run(claim)
        return True

    def _run(self, claim: PreviewClaim) -> None:
        start = time.perf_counter()
        checked = [start]

        def abandoned() -> bool:  # asked at most every 0.1 s: the ledger read costs ~1 ms
            if self.stop():
                return True
            now = time.perf_counter()
            if now - checked[0] < 0.1:
                return False
            checked[0] = now
            return self.ledger.preview_abandoned(claim.id)

        def show_step(image: bytes, step: int) -> None:
            try:
                self.ledger.show_preview_step(claim.id, image, step)
            except Exception as e:  # a first look is a nicety: the preview goes on
                log.warning("Could not show preview %s at iteration %d: %s", claim.id, step, e)

        result, error = self.render(claim, abandoned, show_step)
        seconds = time.perf_counter() - start
        try:
            if self.stop() and result is None and error is None:
                self.ledger.release_preview(claim.id)
            else:
                self.ledger.end_preview(claim.id, result=result, seconds=seconds, error=error)
        except Exception as e:
            log.warning("Could not record preview %s: %s", claim.id, e)
        if result is not None:
            self.estimate_s = seconds
