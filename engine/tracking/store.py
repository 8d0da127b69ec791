"""The tracking store: resolve one absolute location, check that it answers (quickly), and create the experiment."""

from __future__ import annotations

import os
import re
import urllib.parse
import urllib.request
from pathlib import Path

from mlflow import MlflowClient

from engine.core.errors import InputError
from engine.tracking.schema import DEFAULT_EXPERIMENT

# --------------------------------------------------------------------------------------------------
# The store


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The tracking URI to use: `uri`, else $MLFLOW_TRACKING_URI, else MLflow's own default
    (`sqlite:///<cwd>/mlflow.db`) made absolute, so the app, the CLI and `mlflow ui` started elsewhere
    agree. Relative SQLite and file-store paths are made absolute too."""
    uri = (uri or os.environ.get("MLFLOW_TRACKING_URI") or "").strip()
    if not uri:
        return f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////") and ":memory:" not in uri:
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    scheme = urllib.parse.urlparse(uri).scheme
    if scheme == "file":
        return Path(local_path(uri)).resolve().as_uri()
    if scheme == "" or (len(scheme) == 1 and os.name == "nt"):  # a bare path: a file store
        return Path(uri).resolve().as_uri()
    if scheme in ("http", "https"):
        return uri.rstrip("/")
    return uri


def _is_http(uri: str) -> bool:
    return urllib.parse.urlparse(uri).scheme in ("http", "https")


def default_artifact_root(tracking_uri: str, experiment: str = DEFAULT_EXPERIMENT) -> str | None:
    """Where a new experiment keeps its artifacts: for SQLite `<dir of the db>/mlruns/<experiment>`
    (MLflow's default `./mlruns` when the db is in the working directory, but absolute, and named
    after the experiment since its id is not known before it exists); None (the store or the server
    decides) otherwise. Runs then live in `<that>/<run_id>/artifacts`."""
    if tracking_uri.startswith("sqlite:///") and ":memory:" not in tracking_uri:
        folder = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment).strip("._") or "experiment"
        return (Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent / "mlruns" / folder).as_uri()
    return None


def get_or_create_experiment(
    client: MlflowClient, name: str = DEFAULT_EXPERIMENT, artifact_root: str | None = None
) -> str:
    """The id of experiment `name`, created (or restored, when deleted) if needed. SQLite stores get an
    explicit absolute artifact location (`artifact_root` or `default_artifact_root`); HTTP servers and
    file stores choose their own."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    uri = client.tracking_uri
    location = artifact_root if artifact_root is not None else default_artifact_root(uri, name)
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created meanwhile by another thread or process
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def check_reachable(uri: str | None = None, timeout_s: float = 5.0) -> str:
    """Raise InputError, within about `timeout_s`, when the tracking store cannot be used; return the
    resolved URI. HTTP servers get one request without retries (MLflow's default retries for minutes);
    other stores (SQLite, files) are opened, which creates a new SQLite database."""
    uri = resolve_tracking_uri(uri)
    hint = (
        "Start it with `mlflow server --host 127.0.0.1 --port 5000 --backend-store-uri "
        "sqlite:///mlflow.db`, or unset MLFLOW_TRACKING_URI to use a local store."
    )
    if _is_http(uri):
        from mlflow.utils.credentials import get_default_host_creds
        from mlflow.utils.rest_utils import http_request

        try:
            response = http_request(
                get_default_host_creds(uri),
                "/api/2.0/mlflow/experiments/search",
                "GET",
                params={"max_results": 1},
                max_retries=0,
                backoff_factor=0,
                backoff_jitter=0,
                timeout=timeout_s,
                raise_on_status=False,
            )
        except Exception as e:
            raise InputError(f"Cannot reach the MLflow tracking server at {uri}: {_why(e, timeout_s)}. {hint}") from e
        if response.status_code in (401, 403):
            raise InputError(
                f"The MLflow tracking server at {uri} refused access (HTTP {response.status_code}). Set "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)."
            )
        if response.status_code != 200:
            raise InputError(
                f"Cannot use the MLflow tracking server at {uri}: it answered HTTP {response.status_code} "
                f"({response.text[:200]!r}); is this URL an MLflow server? {hint}"
            )
        return uri
    if uri.startswith("sqlite:///") and ":memory:" not in uri:
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not folder.is_dir():
            raise InputError(f"Cannot open the MLflow store {uri}: the folder {folder} does not exist.")
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as e:
        raise InputError(f"Cannot open the MLflow tracking store {uri}: {short_error(e)}.") from e
    return uri


def _why(e: BaseException, timeout_s: float) -> str:
    """A connection failure in a few words, not urllib3's paragraph."""
    text = str(e)
    for needle, words in (
        ("Connection refused", "connection refused (is the server running?)"),
        ("Name or service not known", "unknown host name"),
        ("nodename nor servname", "unknown host name"),
        ("Temporary failure in name resolution", "the host name could not be resolved"),
        ("timed out", f"no answer within {timeout_s:g} s"),
        ("Timeout", f"no answer within {timeout_s:g} s"),
        ("SSLError", "TLS handshake failed"),
    ):
        if needle in text:
            return words
    return short_error(e, 200)


def short_error(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def local_path(uri: str) -> str:
    parsed = urllib.parse.urlparse(uri)
    return urllib.request.url2pathname(parsed.path) if parsed.scheme == "file" else uri
