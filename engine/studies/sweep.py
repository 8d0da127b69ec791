"""λ sweeps: vary one or two settings over a list or a grid, as one parent MLflow run with a child per setting.

Scope: sweep axes and their validation (`SweepAxis`, `expand`), submitting a sweep through the job queue
(`submit_sweep`, `SweepHandle`, `cancel_sweep`), the labelled grid read back from MLflow and the queue
(`sweep_grid`, `sweep_children`), the contact sheet image (`contact_sheet`) and ending the parent run
(`finalise_sweep`). No Streamlit; MLflow only through `engine.tracking`.

In MLflow a sweep is:
- the parent run: tags `source=sweep`, `sweep.role=parent`, `sweep.experiment`, `sha256.*` of the inputs;
  params the base config's params plus `sweep.axes` ("lambda.relu3_1,beta": row axis first),
  `sweep.size` ("2x2") and `sweep.values.<param>` (a JSON list of each axis's values, in order);
  when every child has ended, the artifact `contact_sheet.png` (also in the UI's image grid under key
  `contact_sheet`; reduced as `thumbnail.png`, for galleries) and tags `sweep.contact_sheet`,
  `sweep.finished`, `sweep.failed`, `sweep.killed`;
  ends FINISHED, FAILED (all children failed, `failure_reason` says why) or KILLED (cancelled: tag
  `sweep.cancelled`, or no child finished);
- one child run per setting, an ordinary run (same inputs and seed) with `mlflow.parentRunId`,
  `source=sweep`, run name = its label ("lambda.relu3_1=0.5 beta=1e5"), tags `sweep.<param>` = value
  per axis, `sweep.row`, `sweep.col` (its cell, 0-based) and `sweep.label`, and `batch.size` and
  `batch.index`: settings that differ only in cost weights, seed or init (`transfer.BATCH_KNOBS`, e.g. a
  λ or β/α sweep) run together as one batch of at most `MAX_BATCH` on one worker (`JobQueue.submit_batch`);
  `batch.size` is how many settings its batch had when submitted (1: a job of its own, e.g. when sweeping
  size or steps) and `batch.index` numbers the sweep's batches (0-based, in submit order), so children
  with the same `batch.index` ran together.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import itertools
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from engine import tracking
from engine.core import images
from engine.core.config import GATYS_STYLE_LAYERS, TransferConfig, check_style_images
from engine.core.device import pick_device
from engine.core.errors import InputError
from engine.core.transfer import check_batchable, largest_batch
from engine.core.vgg import LAYER_NAMES, check_layer
from engine.jobs import JobQueue, JobSpec

__all__ = [
    "MAX_BATCH",
    "MAX_SETTINGS",
    "RATIO",
    "SweepAxis",
    "SweepCell",
    "SweepChild",
    "SweepGrid",
    "SweepHandle",
    "cancel_sweep",
    "contact_sheet",
    "contact_sheet_size",
    "expand",
    "finalise_group",
    "finalise_sweep",
    "submit_sweep",
    "sweep_children",
    "sweep_grid",
    "sweepable_params",
]

log = logging.getLogger(__name__)

RATIO = "beta/alpha"  # the special axis: beta = ratio · alpha
MAX_SETTINGS = 64
MAX_BATCH = 8  # settings per batch: bounds a batch's memory and keeps other jobs from waiting behind a long one
MAX_AXES = 2
SHEET_ARTIFACT = "contact_sheet.png"
SHEET_KEY = "contact_sheet"
# every knob (with "style_layers"), except the regions: a region's weights are swept one by one
_PLAIN_PARAMS = tuple(f.name for f in dataclasses.fields(TransferConfig) if f.name != "regions")
_REGION_PARAM = re.compile(r"^region\.([a-z][a-z0-9_]*)\.(alpha|beta|lambda\.\w+)$")
_MAX_PARAM_LENGTH = 6000  # MLflow 3's limit on a param value
_TERMINAL = ("FINISHED", "FAILED", "KILLED")


# --------------------------------------------------------------------------------------------------
# Axes and settings


def sweepable_params(base: TransferConfig | None = None) -> list[str]:
    """Names a sweep axis can take, for a UI's select box: `beta/alpha`, `lambda.<layer>` for the Gatys
    layers and `base`'s style layers (any VGG19 layer is accepted), then every other knob, then the
    weights of `base`'s styled regions (`region.<name>.beta`, `region.<name>.lambda.<layer>`)."""
    layers = dict.fromkeys([*GATYS_STYLE_LAYERS, *(base.lambdas if base is not None else ())])
    regions = [
        param
        for region in (base.regions if base is not None else ())
        if not region.keeps_content
        for param in (f"region.{region.name}.beta", *(f"region.{region.name}.lambda.{layer}"
                                                      for layer in base.region_lambdas(region)))
    ]  # fmt: skip
    return [RATIO, *(f"lambda.{layer}" for layer in layers), *_PLAIN_PARAMS, *regions]


def _check_param(param: str) -> str:
    if param == RATIO or param in _PLAIN_PARAMS:
        return param
    if param.startswith("region."):
        match = _REGION_PARAM.match(param)
        if match is None:
            raise InputError(
                f"Unknown sweep parameter {param!r}: a region's setting is region.<name>.alpha, "
                "region.<name>.beta or region.<name>.lambda.<layer>."
            )
        if match[2].startswith("lambda."):
            check_layer(match[2].removeprefix("lambda."), what="style layer")
        return param
    if param.startswith("lambda."):
        try:
            check_layer(param.removeprefix("lambda."), what="style layer")
        except InputError as e:
            raise InputError(f"Unknown sweep parameter {param!r}: {e}") from None
        return param
    choices = [RATIO, *_PLAIN_PARAMS, *(f"lambda.{n}" for n in LAYER_NAMES if n.startswith("relu"))]
    close = difflib.get_close_matches(param, choices, n=1, cutoff=0.6)
    if not close and param.startswith(("lambda", "lamda", "λ")):
        close = ["lambda.relu3_1"]
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise InputError(
        f"Unknown sweep parameter {param!r}.{hint} Sweep a setting's param name (alpha, beta, size, steps, "
        f"tv_weight, seed, content_layer, init, optimizer, …), lambda.<layer> (e.g. lambda.relu3_1), "
        f"style_layers, or {RATIO} (sets beta = ratio·alpha)."
    )


@dataclass(frozen=True)
class SweepAxis:
    """One swept setting: `param` is a flat param of `TransferConfig.to_params()` (`alpha`, `beta`,
    `lambda.<layer>`, `size`, `steps`, `tv_weight`, `seed`, `content_layer`, `init`, `optimizer`, …),
    `style_layers` (a value lists layers, "relu1_1,relu3_1" with equal λ = 1/n, or "relu1_1=0.2,…"),
    or `beta/alpha` (the value is the ratio; beta = ratio·alpha). Values are strings as a user typed
    them; they become the labels."""

    param: str
    values: tuple[str, ...]

    def __post_init__(self) -> None:
        param = _check_param(str(self.param).strip())
        if isinstance(self.values, (str, bytes)):
            raise InputError(f"Give the values of sweep axis {param!r} as a list, not one string.")
        values = tuple(_value_text(v) for v in self.values)
        if not values:
            raise InputError(f"Sweep axis {param!r} has no values; give at least one.")
        for value in values:
            if not value:
                raise InputError(f"Sweep axis {param!r} has an empty value.")
        if len(set(values)) != len(values):
            twice = next(v for v in values if values.count(v) > 1)
            raise InputError(f"Sweep axis {param!r} lists the value {twice!r} twice.")
        object.__setattr__(self, "param", param)
        object.__setattr__(self, "values", values)

    def label(self, value: str) -> str:
        return f"{self.param}={value}"


def _value_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value).strip()


def _style_layers_params(value: str) -> dict[str, str]:
    """A `style_layers` axis value as `lambda.<layer>` params ("none" for no style layer)."""
    if value.lower() in ("none", ""):
        return {"style_layers": "none"}
    items = [item.strip() for item in re.split(r"[,\s]+", value) if item.strip()]
    out: dict[str, str] = {}
    for item in items:
        layer, sep, weight = item.partition("=") if "=" in item else item.partition(":")
        check_layer(layer.strip(), what="style layer")
        out[f"lambda.{layer.strip()}"] = weight.strip() if sep else repr(1 / len(items))
    return out


def _setting(base: TransferConfig, changes: Iterable[tuple[str, str]]) -> TransferConfig:
    """`base` with the axes' values applied, built through `TransferConfig.from_params`."""
    params = base.to_params()
    ratio: str | None = None
    for param, value in changes:
        if param == RATIO:
            ratio = value
        elif param == "style_layers":
            params = {k: v for k, v in params.items() if not k.startswith("lambda.") and k != "style_layers"}
            params |= _style_layers_params(value)
        elif param.startswith("lambda."):
            params.pop("style_layers", None)  # a base without style layers gains this one
            params[param] = value
        elif param.startswith("region."):
            name = param.split(".")[1]
            if name not in {r.name for r in base.regions}:
                known = ", ".join(r.name for r in base.regions) or "none: the settings have no mask"
                raise InputError(f"There is no region {name!r} to sweep; the regions are {known}.")
            if param.split(".")[2] == "lambda" and not any(k.startswith(f"region.{name}.lambda.") for k in params):
                # the region used the run's λ: it keeps them, and this layer's takes the swept value
                params |= {f"region.{name}.{k}": v for k, v in params.items() if k.startswith("lambda.")}
            params[param] = value
        else:
            params[param] = value
    if ratio is not None:
        try:
            r = float(ratio)
        except ValueError:
            raise InputError(f"{RATIO} must be a number, got {ratio!r}.") from None
        if not math.isfinite(r) or r < 0:
            raise InputError(f"{RATIO} must be a finite number, zero or positive, got {ratio!r}.")
        alpha = float(params["alpha"])
        params["beta"] = repr(r * alpha)
    return TransferConfig.from_params(params)


def expand(base: TransferConfig, axes: Sequence[SweepAxis]) -> list[tuple[dict[str, str], TransferConfig]]:
    """Every setting of the sweep, the grid product of one or two axes, row-major (the first axis
    varies slowest): (labels {param: value}, config). InputError, naming the axis and the value, for
    a value the config refuses; at most `MAX_SETTINGS` settings."""
    axes = list(axes)
    if not 1 <= len(axes) <= MAX_AXES:
        raise InputError(f"A sweep varies one or two settings; got {len(axes)} axes.")
    params = [axis.param for axis in axes]
    if len(set(params)) != len(params):
        raise InputError(f"Sweep axis {params[0]!r} appears twice; choose two different settings.")
    if RATIO in params and "beta" in params:
        raise InputError(f"Sweep either beta or {RATIO} (which sets beta), not both.")
    if "style_layers" in params and any(p.startswith("lambda.") for p in params):
        raise InputError("Sweep either style_layers or a layer's lambda, not both.")
    count = math.prod(len(axis.values) for axis in axes)
    if count > MAX_SETTINGS:
        shape = "x".join(str(len(axis.values)) for axis in axes)
        raise InputError(f"This sweep has {count} settings ({shape}); at most {MAX_SETTINGS} fit in one sweep.")
    for axis in axes:  # each value on its own first, so the message names the axis and value at fault
        seen: dict[TransferConfig, str] = {}
        for value in axis.values:
            try:
                config = _setting(base, [(axis.param, value)])
            except InputError as e:
                raise InputError(f"Sweep axis {axis.param!r}, value {value!r}: {e}") from None
            if config in seen:
                raise InputError(
                    f"Sweep axis {axis.param!r}: the values {seen[config]!r} and {value!r} give the same setting."
                )
            seen[config] = value
    settings = []
    for combo in itertools.product(*(axis.values for axis in axes)):
        labels = dict(zip(params, combo, strict=True))
        try:
            settings.append((labels, _setting(base, labels.items())))
        except InputError as e:
            raise InputError(f"The sweep setting {_label(labels)} is invalid: {e}") from None
    return settings


def _label(labels: dict[str, str]) -> str:
    return " ".join(f"{param}={value}" for param, value in labels.items())


def _batches(
    configs: Sequence[TransferConfig], fits: Callable[[list[TransferConfig]], bool] = lambda batch: True
) -> list[list[int]]:
    """The settings' indexes grouped into batches, in order: each setting joins the first batch with
    room whose settings it may share a batch with (`check_batchable`), else starts a new one. A batch
    has room while it holds fewer than `MAX_BATCH` and `fits(batch with the setting)`."""
    batches: list[list[int]] = []
    for index, config in enumerate(configs):
        for batch in batches:
            grown = [configs[i] for i in batch] + [config]
            if len(batch) < MAX_BATCH and _batchable(configs[batch[0]], config) and fits(grown):
                batch.append(index)
                break
        else:
            batches.append([index])
    return batches


def _fits(queue: JobQueue, content_size: tuple[int, int], batch: list[TransferConfig]) -> bool:
    """Whether `batch` fits in the memory of every device of `queue` (any of its workers may run it)."""
    width, height = images.long_side_size(content_size, batch[0].size)
    return all(largest_batch(batch, height, width, pick_device(d)) == len(batch) for d in queue.devices)


def _batchable(a: TransferConfig, b: TransferConfig) -> bool:
    try:
        check_batchable([a, b])  # "may share a batch" is equality outside BATCH_KNOBS: checking one member will do
    except InputError:
        return False
    return True


def _shape(axes: Sequence[SweepAxis]) -> tuple[int, int]:
    return (len(axes[0].values), len(axes[1].values)) if len(axes) == 2 else (1, len(axes[0].values))


# --------------------------------------------------------------------------------------------------
# Submitting and watching


@dataclass(frozen=True)
class SweepChild:
    """One setting of a submitted sweep: its run id, {param: value} labels and cell (0-based)."""

    run_id: str
    labels: dict[str, str] = dataclasses.field(hash=False)
    row: int
    col: int

    @property
    def label(self) -> str:
        return _label(self.labels)


class SweepHandle:
    """A submitted sweep. The job service ends its parent once every child has ended (`finalise_group`,
    registered with the queue at submit); `wait(timeout)` watches the parent's status in MLflow."""

    def __init__(
        self,
        queue: JobQueue,
        parent_run_id: str,
        experiment: str,
        axes: Sequence[SweepAxis],
        children: Sequence[SweepChild],
        *,
        poll_s: float = 0.25,
    ) -> None:
        self.queue = queue
        self.tracking_uri: str = queue.tracking_uri
        self.parent_run_id = parent_run_id
        self.experiment = experiment
        self.axes: tuple[SweepAxis, ...] = tuple(axes)
        self.children: tuple[SweepChild, ...] = tuple(children)
        self.shape: tuple[int, int] = _shape(self.axes)  # (rows, cols)
        self.row_param: str | None = self.axes[0].param if len(self.axes) == 2 else None
        self.col_param: str = self.axes[-1].param
        self.row_values: tuple[str, ...] = self.axes[0].values if len(self.axes) == 2 else ()
        self.col_values: tuple[str, ...] = self.axes[-1].values
        self.status: str | None = None  # the parent's final status, once it has ended
        self._poll_s = poll_s

    @property
    def run_ids(self) -> list[str]:
        """The children's run ids, row-major (the compare page's `?runs=`)."""
        return [child.run_id for child in self.children]

    @property
    def done(self) -> bool:
        if self.status is None:
            status = tracking.load_run(self.tracking_uri, self.parent_run_id).status
            self.status = status if status in _TERMINAL else None
        return self.status is not None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the parent has ended (True) or `timeout` seconds pass (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done:
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(self._poll_s)
        return True

    def cancel(self) -> None:
        """Cancel every child still queued or running; the parent then ends KILLED."""
        cancel_sweep(self.tracking_uri, self.parent_run_id, queue=self.queue, run_ids=self.run_ids)

    def grid(self, *, with_images: bool = True) -> SweepGrid:
        """The labelled grid now, live from the queue (see `sweep_grid`)."""
        return sweep_grid(self.tracking_uri, self.parent_run_id, queue=self.queue, with_images=with_images)


def submit_sweep(
    queue: JobQueue,
    base: TransferConfig,
    axes: Sequence[SweepAxis],
    content: images.InputImage | bytes,
    styles: Sequence[images.InputImage | bytes],
    *,
    name: str | None = None,
    experiment: str = tracking.DEFAULT_EXPERIMENT,
    poll_s: float = 0.25,
    owner: str | None = None,
    mask: images.InputImage | bytes | None = None,
    style_masks: Sequence[images.InputImage | bytes | None] = (),
) -> SweepHandle:
    """Submit one parent run and one child run per setting of `expand(base, axes)` (same inputs and
    seed, unless swept), in row-major order, and return at once. Settings that can share a batch run as
    batches of at most `MAX_BATCH` (tags `batch.size`, `batch.index`); the others as separate jobs.
    InputError, with nothing logged, when an axis, a value or an image is wrong or the store is
    unreachable. When the last child ends, the job service finalises the parent (contact sheet, status:
    `finalise_group`). `owner`: the signed-in user who starts it, owner of the parent and every child."""
    axes = list(axes)
    settings = expand(base, axes)
    inputs = images.Inputs.decode(content, styles, mask, style_masks)  # once, for every child
    content, styles = inputs.content, inputs.styles
    content_size = content.image.size
    for labels, config in settings:
        try:
            check_style_images(config.style_blend, len(styles), config.regions)
        except InputError as exc:
            raise InputError(f"Sweep setting {_label(labels)}: {exc}") from None
    uri = tracking.check_reachable(queue.tracking_uri)
    cols = _shape(axes)[1]
    params = base.to_params() | {
        "style_images": str(len(styles)),
        "sweep.axes": ",".join(axis.param for axis in axes),
        "sweep.size": "x".join(str(len(axis.values)) for axis in axes),
    }
    for axis in axes:
        values = json.dumps(list(axis.values))
        if len(values) > _MAX_PARAM_LENGTH:
            raise InputError(f"The values of sweep axis {axis.param!r} are too long to record; give fewer or shorter.")
        params[f"sweep.values.{axis.param}"] = values
    tags = {
        "sweep.role": "parent",
        "sweep.experiment": experiment,
        "sha256.content": content.sha256,
        **{f"sha256.style.{i}": s.sha256 for i, s in enumerate(styles)},
    }
    if name is None:
        name = f"sweep {' x '.join(axis.param for axis in axes)} ({'x'.join(str(len(a.values)) for a in axes)})"
    try:
        parent = tracking.create_parent_run(uri, experiment, name=name, params=params, source="sweep", tags=tags,
                                            size=len(settings), owner=owner)  # fmt: skip
    except Exception as e:
        raise InputError(f"Cannot create the sweep's run in the MLflow store {uri}: {e}") from e
    queue.add_group_finaliser(finalise_group)
    batches = _batches([config for _, config in settings], functools.partial(_fits, queue, content_size))
    batch_tags = {
        index: {"batch.size": str(len(batch)), "batch.index": str(number)}
        for number, batch in enumerate(batches)
        for index in batch
    }
    specs = []
    for index, (labels, config) in enumerate(settings):
        row, col = divmod(index, cols)
        label = _label(labels)
        child_tags = {f"sweep.{param}": value for param, value in labels.items()}
        child_tags |= {"sweep.row": str(row), "sweep.col": str(col), "sweep.label": label} | batch_tags[index]
        specs.append(
            JobSpec(
                config=config,
                content=content,
                styles=styles,
                source="sweep",
                experiment=experiment,
                run_name=label,
                parent_run_id=parent,
                tags=child_tags,
                owner=owner,
                mask=inputs.mask,
                style_masks=inputs.style_masks,
            )
        )
    run_ids: dict[int, str] = {}  # setting index -> run id
    try:
        for batch in batches:
            run_ids.update(zip(batch, queue.submit_batch([specs[index] for index in batch]), strict=True))
    except BaseException as e:
        for run_id in run_ids.values():
            queue.cancel(run_id)
        reason = f"submitting the settings failed after {len(run_ids)} of {len(settings)}: {e}"
        try:
            tracking.set_run_status(uri, parent, "FAILED", reason)
        except Exception:
            log.exception("Could not end sweep %s FAILED", parent)
        raise
    children = [SweepChild(run_ids[index], labels, *divmod(index, cols)) for index, (labels, _) in enumerate(settings)]
    return SweepHandle(queue, parent, experiment, axes, children, poll_s=poll_s)


def cancel_sweep(
    tracking_uri: str | None,
    parent_run_id: str,
    *,
    queue: JobQueue | None = None,
    run_ids: Sequence[str] | None = None,
    actor: tracking.Actor = tracking.SINGLE_USER,
) -> int:
    """Cancel a running sweep: tag the parent `sweep.cancelled` (so it ends KILLED) and cancel every child
    `queue` still has queued or running (`run_ids`, default: read from MLflow). Returns how many were
    cancelled. Without a queue (another process runs them) only the tag is set; a sweep that has
    already ended is left as it is (0). NotAllowed, with nothing changed, when `actor` may not change
    the sweep (the parent's owner owns the sweep)."""
    uri = tracking.resolve_tracking_uri(tracking_uri)
    parent = tracking.load_run(uri, tracking.check_run_id(parent_run_id))
    tracking.check_may_change(actor, tracking.run_owner(parent.tags), "cancel")
    if parent.status in _TERMINAL:
        return 0
    tracking.set_run_tags(uri, parent_run_id, {"sweep.cancelled": "true"})
    if queue is None:
        return 0
    if run_ids is None:
        run_ids = list(sweep_children(uri, parent_run_id)["run_id"])
    return sum(queue.cancel(run_id) for run_id in run_ids)


# --------------------------------------------------------------------------------------------------
# Reading a sweep back


def sweep_children(tracking_uri: str | None, parent_run_id: str, experiment: str | None = None) -> pd.DataFrame:
    """The sweep's child runs from ONE `list_runs` search (filter `tags.mlflow.parentRunId = '<id>'`), with
    the columns of `tracking.list_runs` plus `row`, `col` (the cell, -1 when unknown) and `label`, sorted
    by cell (newest first within one). `experiment` defaults to the parent's (tag `sweep.experiment`;
    one extra call)."""
    uri = tracking.resolve_tracking_uri(tracking_uri)
    tracking.check_run_id(parent_run_id)
    if experiment is None:
        parent = tracking.load_run(uri, parent_run_id)
        experiment = parent.tags.get("sweep.experiment", tracking.DEFAULT_EXPERIMENT)
    frame = tracking.list_runs(
        uri, experiment, f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=4 * MAX_SETTINGS
    )

    def tag(name: str, default: object) -> pd.Series:
        column = f"tags.{name}"
        return frame[column] if column in frame.columns else pd.Series(default, index=frame.index, dtype=object)

    frame = frame.assign(
        row=pd.to_numeric(tag("sweep.row", None), errors="coerce").fillna(-1).astype(int),
        col=pd.to_numeric(tag("sweep.col", None), errors="coerce").fillna(-1).astype(int),
        label=tag("sweep.label", None).fillna(frame["run_name"]),
    )
    return frame.sort_values(["row", "col"], kind="stable").reset_index(drop=True)


@dataclass
class SweepCell:
    """One cell of the grid: its setting, run (None if never submitted), state and the image to show."""

    row: int
    col: int
    labels: dict[str, str]
    run_id: str | None
    status: str  # SCHEDULED, RUNNING, FINISHED, FAILED, KILLED, or MISSING (no run)
    image: Image.Image | None  # the result when finished, else the latest G when there is one
    caption: str  # for the tile: quality figures when finished, else the state ("running 12/150", "failed")
    step: int | None = None  # live progress, when the queue knows the run
    total_steps: int | None = None
    quality: dict[str, float] = dataclasses.field(default_factory=dict)  # quality/* metrics when finished

    @property
    def done(self) -> bool:
        return self.status in _TERMINAL or self.status == "MISSING"


@dataclass
class SweepGrid:
    """A sweep as a labelled grid: `cells` row-major, `rows` × `cols` of them."""

    parent_run_id: str
    name: str
    status: str  # the parent's status
    row_param: str | None
    col_param: str
    row_values: tuple[str, ...]
    col_values: tuple[str, ...]
    cells: list[SweepCell]

    @property
    def rows(self) -> int:
        return max(len(self.row_values), 1)

    @property
    def cols(self) -> int:
        return len(self.col_values)

    @property
    def row_labels(self) -> list[str] | None:
        return [f"{self.row_param}={v}" for v in self.row_values] if self.row_param else None

    @property
    def col_labels(self) -> list[str]:
        return [f"{self.col_param}={v}" for v in self.col_values]

    @property
    def done(self) -> bool:
        """Every child has ended."""
        return all(cell.done for cell in self.cells)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for cell in self.cells:
            out[cell.status] = out.get(cell.status, 0) + 1
        return out

    def contact_sheet(self, tile: int = 192) -> Image.Image:
        return contact_sheet(
            [(cell.caption, cell.image) for cell in self.cells],
            self.rows,
            self.cols,
            row_labels=self.row_labels,
            col_labels=self.col_labels,
            tile=tile,
            title=self.name,
        )


def _caption(status: str, quality: dict[str, float], step: int | None, total: int | None) -> str:
    if status == "FINISHED":
        if "quality/content" in quality and "quality/style" in quality:
            return f"content {quality['quality/content']:.2g}  style {quality['quality/style']:.2g}"
        return "finished"
    if status == "RUNNING":
        return f"running {step}/{total}" if step and total else "running"
    return {"SCHEDULED": "queued", "FAILED": "failed", "KILLED": "cancelled", "MISSING": "not submitted"}.get(
        status, status.lower()
    )


def _open(path: str | Path) -> Image.Image | None:
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Exception:
        return None


def _finished_image(uri: str, row: pd.Series, tile: int) -> Image.Image | None:
    """The child's thumbnail (long side 256), or its result.png when the tile is larger."""
    name = "thumbnail.png" if tile <= tracking.THUMBNAIL_SIZE else "result.png"
    local = row.get("thumbnail_path") if name == "thumbnail.png" else None
    try:
        path = local if isinstance(local, str) else tracking.download_artifact(uri, row["run_id"], name)
    except InputError:
        return None
    return _open(path)


def _latest_snapshot(uri: str, run_id: str) -> Image.Image | None:
    try:
        steps = tracking.image_steps(uri, run_id, compressed=True)
    except InputError:
        return None
    return _open(steps[-1][1]) if steps else None


def sweep_grid(
    tracking_uri: str | None,
    parent_run_id: str,
    *,
    queue: JobQueue | None = None,
    with_images: bool = True,
    tile: int = 192,
) -> SweepGrid:
    """The sweep as a labelled grid, for a page to draw while it runs and after: axes and values from the
    parent's params, each cell's run from its `sweep.row`/`sweep.col` tags (one search). A child this
    `queue` knows shows its live state, step and latest G from memory; others are read from MLflow
    (status, quality metrics; with `with_images` the thumbnail of a finished run, the latest logged
    snapshot of a running one)."""
    uri = tracking.resolve_tracking_uri(tracking_uri)
    parent = tracking.load_run(uri, tracking.check_run_id(parent_run_id))
    axes_param = parent.params.get("sweep.axes")
    if not axes_param:
        raise InputError(f"Run {parent_run_id} is not a sweep (it has no sweep.axes param).")
    params = axes_param.split(",")
    values = [tuple(json.loads(parent.params.get(f"sweep.values.{p}", "[]"))) for p in params]
    row_param, col_param = (params[0], params[1]) if len(params) == 2 else (None, params[0])
    row_values, col_values = (values[0], values[1]) if len(params) == 2 else ((), values[0])
    children = sweep_children(uri, parent_run_id, parent.tags.get("sweep.experiment", tracking.DEFAULT_EXPERIMENT))
    by_cell: dict[tuple[int, int], pd.Series] = {}
    for _, row in children.iterrows():
        by_cell.setdefault((int(row["row"]), int(row["col"])), row)  # newest first within a cell
    cells = []
    for r, c in itertools.product(range(max(len(row_values), 1)), range(len(col_values))):
        labels = ({row_param: row_values[r]} if row_param else {}) | {col_param: col_values[c]}
        row = by_cell.get((r, c))
        if row is None:
            cells.append(SweepCell(r, c, labels, None, "MISSING", None, _caption("MISSING", {}, None, None)))
            continue
        run_id = str(row["run_id"])
        status, image, step, total = str(row["status"]), None, None, None
        progress = queue.progress(run_id) if queue is not None else None
        if progress is not None:
            status = progress.state if status not in _TERMINAL else status
            step, total, image = progress.step, progress.total_steps, progress.image
        quality = {
            k.removeprefix("metrics."): float(v)
            for k, v in row.items()
            if k.startswith("metrics.quality/") and isinstance(v, (int, float)) and not pd.isna(v)
        }
        if with_images and image is None:
            if status in ("FINISHED", "KILLED"):
                image = _finished_image(uri, row, tile)
            elif status == "RUNNING":
                image = _latest_snapshot(uri, run_id)
        if status == "FAILED":
            image = None  # a failed run's tile says so
        cells.append(SweepCell(r, c, labels, run_id, status, image, _caption(status, quality, step, total), step,
                               total, quality))  # fmt: skip
    return SweepGrid(parent_run_id, parent.name, parent.status, row_param, col_param, row_values, col_values, cells)


# --------------------------------------------------------------------------------------------------
# Ending a sweep

_finalise_lock = threading.Lock()


def finalise_group(tracking_uri: str, parent_run_id: str) -> None:
    """The job service's hook (`JobQueue.add_group_finaliser`): end a sweep's parent once its last child
    has ended; other groups are not ours."""
    if tracking.load_run(tracking_uri, parent_run_id).tags.get("sweep.role") == "parent":
        finalise_sweep(tracking_uri, parent_run_id, force=True)


def finalise_sweep(tracking_uri: str | None, parent_run_id: str, *, force: bool = False, tile: int = 192) -> str:
    """From MLflow alone: when every child has ended (or `force`), log the contact sheet on the parent
    (artifact `contact_sheet.png`, image key `contact_sheet`) and end it FINISHED, FAILED when every child
    failed, or KILLED when cancelled or no child finished. Returns the parent's status; "RUNNING" when
    children are still running and not `force`. Idempotent: a parent already ended with its sheet is left
    as it is. For a page or a restarted app to finish a sweep whose watcher died."""
    uri = tracking.resolve_tracking_uri(tracking_uri)
    with _finalise_lock:
        parent = tracking.load_run(uri, tracking.check_run_id(parent_run_id))
        if parent.status in _TERMINAL and parent.tags.get("sweep.contact_sheet"):
            return parent.status
        grid = sweep_grid(uri, parent_run_id, tile=tile)
        if not grid.done and not force:
            return parent.status
        sheet = grid.contact_sheet(tile)
        tracking.log_run_image(uri, parent_run_id, sheet, SHEET_ARTIFACT)
        thumbnail = sheet.copy()
        thumbnail.thumbnail((tracking.THUMBNAIL_SIZE, tracking.THUMBNAIL_SIZE), Image.Resampling.LANCZOS)
        tracking.log_run_image(uri, parent_run_id, thumbnail, "thumbnail.png")  # the runs gallery's picture
        if not tracking.image_steps(uri, parent_run_id, key=SHEET_KEY):
            tracking.log_run_image(uri, parent_run_id, sheet, key=SHEET_KEY, step=0)
        counts = grid.counts()
        finished, failed = counts.get("FINISHED", 0), counts.get("FAILED", 0)
        killed = counts.get("KILLED", 0)
        submitted = sum(cell.run_id is not None for cell in grid.cells)
        reason = None
        if parent.tags.get("sweep.cancelled") == "true":
            status, reason = "KILLED", "the sweep was cancelled"
        elif submitted and failed == submitted:
            first = next(c for c in grid.cells if c.status == "FAILED" and c.run_id)
            why = tracking.load_run(uri, first.run_id).tags.get("failure_reason", "")
            status, reason = "FAILED", f"all {submitted} runs of the sweep failed" + (f"; the first: {why}" * bool(why))
        elif finished:
            status = "FINISHED"
        elif not submitted:
            status, reason = "FAILED", "no run of the sweep was submitted"
        else:
            status, reason = "KILLED", "no run of the sweep finished (cancelled or failed)"
        tracking.set_run_tags(
            uri,
            parent_run_id,
            {
                "sweep.contact_sheet": SHEET_ARTIFACT,
                "sweep.finished": str(finished),
                "sweep.failed": str(failed),
                "sweep.killed": str(killed),
            },
        )
        tracking.set_run_status(uri, parent_run_id, status, reason)
        return status


# --------------------------------------------------------------------------------------------------
# The contact sheet

SHEET_PAD = 6
SHEET_TITLE_H = 24
SHEET_HEADER_H = 22  # column labels
SHEET_ROW_LABEL_W = 150
SHEET_CAPTION_H = 18
SHEET_FONT_SIZE = 12
_BACKGROUND = (255, 255, 255)
_TILE_BACKGROUND = (240, 240, 240)
_MISSING = (190, 190, 190)
_INK = (30, 30, 30)
_GREEK = {"α": "alpha", "β": "beta", "λ": "lambda", "×": "x", "·": "*", "…": "..."}


def _font(size: int = SHEET_FONT_SIZE) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the bitmap font
        return ImageFont.load_default()


def _ascii(text: str) -> str:
    """The default font lacks Greek letters: spell them out; anything else non-ASCII becomes '?'."""
    text = "".join(_GREEK.get(ch, ch) for ch in str(text))
    return text.encode("ascii", "replace").decode("ascii")


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> str:
    """`text` cut (with "..") to at most `width` pixels."""
    text = _ascii(text)
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "..", font=font) > width:
        text = text[:-1]
    return text + ".."


def contact_sheet_size(
    rows: int, cols: int, tile: int = 192, *, with_row_labels: bool = True, with_title: bool = False
) -> tuple[int, int]:
    """(width, height) of `contact_sheet` with these settings."""
    left = SHEET_ROW_LABEL_W if with_row_labels else SHEET_PAD
    top = (SHEET_TITLE_H if with_title else 0) + SHEET_HEADER_H
    return left + cols * (tile + SHEET_PAD), top + rows * (tile + SHEET_CAPTION_H + SHEET_PAD)


def contact_sheet(
    cells: Sequence[tuple[str, Image.Image | None]],
    rows: int,
    cols: int,
    *,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    tile: int = 192,
    title: str | None = None,
) -> Image.Image:
    """A labelled grid of images: `cells` row-major, each (caption, image or None). Each image is fitted
    into a `tile`×`tile` square with its caption below; a missing image is a grey tile with the caption
    in it ("failed", "running"). Row labels go on the left, column labels on top, `title` above; all
    ASCII (Pillow's default font; Greek letters are spelt out). Size: `contact_sheet_size`."""
    if rows < 1 or cols < 1 or len(cells) != rows * cols:
        raise ValueError(f"{len(cells)} cells do not fill a {rows}x{cols} grid")
    if row_labels is not None and len(row_labels) != rows:
        raise ValueError(f"{len(row_labels)} row labels for {rows} rows")
    if col_labels is not None and len(col_labels) != cols:
        raise ValueError(f"{len(col_labels)} column labels for {cols} columns")
    if tile < 16:
        raise ValueError(f"tile must be at least 16 px, got {tile}")
    width, height = contact_sheet_size(rows, cols, tile, with_row_labels=row_labels is not None, with_title=bool(title))
    sheet = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = _font()
    left = SHEET_ROW_LABEL_W if row_labels is not None else SHEET_PAD
    top = (SHEET_TITLE_H if title else 0) + SHEET_HEADER_H
    if title:
        draw.text((SHEET_PAD, SHEET_TITLE_H // 2), _fit(draw, title, font, width - 2 * SHEET_PAD), fill=_INK,
                  font=font, anchor="lm")  # fmt: skip
    for c, text in enumerate(col_labels or ()):
        x = left + c * (tile + SHEET_PAD) + tile // 2
        draw.text((x, top - SHEET_HEADER_H // 2), _fit(draw, text, font, tile), fill=_INK, font=font, anchor="mm")
    row_h = tile + SHEET_CAPTION_H + SHEET_PAD
    for r, text in enumerate(row_labels or ()):
        param, sep, value = _ascii(text).rpartition("=")
        lines = [param, f"= {value}"] if sep else [value]
        y = top + r * row_h + tile // 2 - (len(lines) - 1) * (SHEET_FONT_SIZE + 2) // 2
        for i, line in enumerate(lines):
            draw.text((SHEET_PAD, y + i * (SHEET_FONT_SIZE + 2)), _fit(draw, line, font, left - 2 * SHEET_PAD),
                      fill=_INK, font=font, anchor="lm")  # fmt: skip
    for index, (caption, image) in enumerate(cells):
        r, c = divmod(index, cols)
        x, y = left + c * (tile + SHEET_PAD), top + r * row_h
        if image is None:
            draw.rectangle((x, y, x + tile - 1, y + tile - 1), fill=_MISSING)
            draw.text((x + tile // 2, y + tile // 2), _fit(draw, caption or "missing", font, tile - 8), fill=_INK,
                      font=font, anchor="mm")  # fmt: skip
            continue
        draw.rectangle((x, y, x + tile - 1, y + tile - 1), fill=_TILE_BACKGROUND)
        thumb = image.convert("RGB")
        thumb.thumbnail((tile, tile), Image.Resampling.LANCZOS)
        if max(thumb.size) < tile:  # small results (tiny runs) are enlarged to fill the tile
            scale = tile / max(thumb.size)
            thumb = thumb.resize((max(1, round(thumb.width * scale)), max(1, round(thumb.height * scale))),
                                 Image.Resampling.NEAREST)  # fmt: skip
        sheet.paste(thumb, (x + (tile - thumb.width) // 2, y + (tile - thumb.height) // 2))
        if caption:
            draw.text((x + tile // 2, y + tile + SHEET_CAPTION_H // 2), _fit(draw, caption, font, tile), fill=_INK,
                      font=font, anchor="mm")  # fmt: skip
    return sheet
