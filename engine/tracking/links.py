"""Links into the MLflow UI and the command that starts it on the same store."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from engine.tracking.store import _is_http, resolve_tracking_uri


class UILinks(NamedTuple):
    runs: dict[str, str]  # run id -> its page in the MLflow UI
    compare: str  # the UI's compare view of all of them


# MLflow 3.17's UI shows its GenAI view (traces, "Evaluation runs") unless the page's URL says otherwise: a
# switch kept per browser, GenAI by default, decides, whatever the experiment's `mlflow.experimentKind`
# tag says (seen in Chromium). This parameter opens the model-training view (runs, charts, Model metrics).
UI_VIEW = "workflowType=machine_learning"


def mlflow_ui_links(ui_base: str, experiment_id: str | Sequence[str], run_ids: Sequence[str]) -> UILinks:
    """Links into the MLflow UI at `ui_base` (e.g. http://127.0.0.1:5000), in its model-training view
    (`UI_VIEW`): each run's page `{ui}/#/experiments/{exp}/runs/{id}?workflowType=machine_learning` and
    `{ui}/#/compare-runs?runs=[…]&experiments=[…]&workflowType=machine_learning` (URL-encoded JSON lists).
    `experiment_id` may be one id or one per run."""
    ui = ui_base.rstrip("/")
    exps = [experiment_id] * len(run_ids) if isinstance(experiment_id, str) else list(experiment_id)
    if len(exps) != len(run_ids):
        raise ValueError("give one experiment id, or one per run")
    runs = {rid: f"{ui}/#/experiments/{exp}/runs/{rid}?{UI_VIEW}" for rid, exp in zip(run_ids, exps, strict=True)}

    def encoded(items: Iterable[str]) -> str:
        return urllib.parse.quote(json.dumps(list(items), separators=(",", ":")), safe="")

    compare = f"{ui}/#/compare-runs?runs={encoded(run_ids)}&experiments={encoded(dict.fromkeys(exps))}&{UI_VIEW}"
    return UILinks(runs, compare)


def mlflow_ui_command(tracking_uri: str | None = None, port: int = 5000) -> str:
    """The command that starts the MLflow UI on the same store (for the app's sidebar and the CLI)."""
    uri = resolve_tracking_uri(tracking_uri)
    if _is_http(uri):
        return f"open {uri}"
    return f"mlflow ui --backend-store-uri '{uri}' --port {port}"
