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
# Short timeouts: MLflow's HTTP client waits 120 s per request and retries 7 times with backoff, minutes
# in all, before it gives up on a dead server; every page and worker of this app would hang that long.
# These defaults apply to this process and its children unless the user set the variables.

HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",  # seconds per request (connect, or silence while reading)
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",  # one immediate retry (urllib3 waits 0 s before the first)
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
}
for _name, _value in HTTP_DEFAULTS.items():
    os.environ.setdefault(_name, _value)
# Marks the experiment as model training for MLflow. MLflow 3.17's UI, though, picks its view from a switch
# kept per browser (GenAI by default) unless the URL says `workflowType=machine_learning`: links.UI_VIEW.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
CHECK_TIMEOUT_S = 3.0  # how long a page waits for the store to answer before it says it is down


def http_timeout_s() -> float:
    """Seconds MLflow's HTTP client waits per request here (MLFLOW_HTTP_REQUEST_TIMEOUT)."""
    try:
        return float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", HTTP_DEFAULTS["MLFLOW_HTTP_REQUEST_TIMEOUT"]))
    except ValueError:
        return float(HTTP_DEFAULTS["MLFLOW_HTTP_REQUEST_TIMEOUT"])


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


def default_fallback_root(fallback_dir: str | Path | None = None) -> Path:
    """Where a run whose store failed saves what it could not log (`<this>/<run id>/`): `fallback_dir`,
    else $STYLELAB_UNSAVED_DIR, else `./stylelab-unsaved`, made absolute."""
    return Path(fallback_dir or os.environ.get("STYLELAB_UNSAVED_DIR") or Path.cwd() / "stylelab-unsaved").resolve()


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
        if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # made before the tag existed
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return experiment.experiment_id
    uri = client.tracking_uri
    location = artifact_root if artifact_root is not None else default_artifact_root(uri, name)
    try:
        return client.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except Exception:  # created meanwhile by another thread or process
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


class StoreUnavailable(InputError):
    """The tracking store does not answer (refused, timed out, unknown host): `uri`, `reason` in a few
    words, and `timeout_s`, how long the check waited."""

    def __init__(self, message: str, uri: str, reason: str, timeout_s: float) -> None:
        super().__init__(message)
        self.uri, self.reason, self.timeout_s = uri, reason, timeout_s


def check_reachable(uri: str | None = None, timeout_s: float = 5.0, *, shallow: bool = False) -> str:
    """Raise InputError (`StoreUnavailable` when it does not answer), within about `timeout_s`, when the
    tracking store cannot be used; return the resolved URI. HTTP servers get one request without
    retries (MLflow's default retries for minutes); other stores (SQLite, files) are opened, which
    creates a new SQLite database, unless `shallow`: then only their folder is checked (opening a new
    SQLite store runs MLflow's migrations, seconds)."""
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
            why = _why(e, timeout_s)
            raise StoreUnavailable(
                f"Cannot reach the MLflow tracking server at {uri}: {why}. {hint}", uri, why, timeout_s
            ) from e
        if response.status_code == 403 and "Invalid Host header" in response.text:  # MLflow's DNS-rebinding guard
            address = urllib.parse.urlparse(uri).netloc
            raise InputError(
                f"The MLflow tracking server at {uri} does not answer to the name {address}: start it with "
                f"`--allowed-hosts {address}` (a list, with every name and port the team uses), or use an "
                "address it allows."
            )
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
    if shallow:
        return uri
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


def store_error_reason(e: BaseException | None) -> str:
    """Why a store call failed, in a few words ("connection refused (is the server running?)", "no
    answer within 5 s") when it is a connection failure, else the error shortened."""
    if e is None:
        return "no error"
    words = _why(e, http_timeout_s())
    return words if words != short_error(e, 200) else short_error(e)


def short_error(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def local_path(uri: str) -> str:
    parsed = urllib.parse.urlparse(uri)
    return urllib.request.url2pathname(parsed.path) if parsed.scheme == "file" else uri
