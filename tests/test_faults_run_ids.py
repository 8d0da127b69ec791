"""Run ids from addresses (`/runs?run=…`, `/compare?runs=…`, `/studio?clone=…`, `/sweep?run=…`,
`/layers?strip=…`) are checked once, in engine.tracking, before they reach the store, an artifact or cache
path, a search filter or the folder a run is saved in while its store is down (issue 13, bad links)."""

from __future__ import annotations

import uuid

import pytest
from mlflow import MlflowClient

from engine import tracking
from engine.core.errors import InputError
from engine.studies import explore, sweep

BAD_IDS = [
    "",
    "nonexistent",
    "../../etc/passwd",
    "0" * 31,  # one short
    "0" * 33,  # one long
    "A" * 32,  # MLflow's ids are lowercase
    "0" * 30 + "/x",
    "0" * 32 + "\n",
    "x' OR tags.source != '",  # a search-filter injection
    "..",
]
# A store that is never reached: nothing listens on port 9 of loopback. A reader that got past the check
# would fail there with "No run … in the MLflow store", not with the check's message.
UNREACHED = "http://127.0.0.1:9"

READERS = {
    "load_run": lambda rid: tracking.load_run(UNREACHED, rid),
    "load_config": lambda rid: tracking.load_config(UNREACHED, rid),
    "load_inputs": lambda rid: tracking.load_inputs(UNREACHED, rid),
    "metric_history": lambda rid: tracking.metric_history(UNREACHED, rid),
    "image_steps": lambda rid: tracking.image_steps(UNREACHED, rid),
    "download_artifact": lambda rid: tracking.download_artifact(UNREACHED, rid, "result.png"),
    "sweep_children": lambda rid: sweep.sweep_children(UNREACHED, rid, experiment="style-transfer"),
    "strip_children": lambda rid: explore.strip_children(UNREACHED, rid),
}


def test_mlflow_run_ids_have_the_form_the_check_accepts(uri):
    run = MlflowClient(uri).create_run(MlflowClient(uri).create_experiment("ids"))
    assert tracking.is_run_id(run.info.run_id)
    assert tracking.check_run_id(run.info.run_id) == run.info.run_id
    assert tracking.is_run_id(uuid.uuid4().hex)


@pytest.mark.parametrize("bad", BAD_IDS)
def test_a_malformed_id_is_refused_with_what_a_run_id_looks_like(bad):
    assert not tracking.is_run_id(bad)
    with pytest.raises(InputError) as raised:
        tracking.check_run_id(bad)
    message = str(raised.value)
    assert "is not a run id" in message and "32 hexadecimal characters" in message
    assert "Check the link" in message  # what to do


@pytest.mark.parametrize("bad", [None, 123, b"0" * 32])
def test_a_non_string_is_not_a_run_id(bad):
    assert not tracking.is_run_id(bad)
    with pytest.raises(InputError, match="is not a run id"):
        tracking.check_run_id(bad)


@pytest.mark.parametrize("value", ["a" * 41, "../../etc/passwd", "/srv/secret", "<b>x</b>", "a b"])
def test_a_value_that_is_not_a_short_word_is_described_not_echoed(value):
    with pytest.raises(InputError) as raised:
        tracking.check_run_id(value)
    assert value not in str(raised.value) and str(raised.value).startswith("The run id in this address is not")


def test_a_short_word_is_quoted_so_the_visitor_sees_what_was_wrong():
    with pytest.raises(InputError, match=r"^'nonexistent' is not a run id"):
        tracking.check_run_id("nonexistent")


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("bad", ["../../etc/passwd", "nonexistent", "x' OR tags.source != '"])
def test_every_reader_checks_the_id_before_it_asks_the_store(reader, bad):
    with pytest.raises(InputError, match="is not a run id"):
        READERS[reader](bad)


def test_an_artifact_path_cannot_leave_the_runs_artifacts(uri, tmp_path):
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("paths")).info.run_id
    (tmp_path / "secret.txt").write_text("not yours")
    for path in ("../../../../secret.txt", "/etc/passwd", "", "inputs/../../x.png"):
        with pytest.raises(InputError, match="is not an artifact path"):
            tracking.download_artifact(uri, run_id, path)
    with pytest.raises(InputError, match="has no artifact"):  # a well-formed path is looked up as before
        tracking.download_artifact(uri, run_id, "result.png")


def test_the_saved_folder_of_a_run_is_inside_the_fallback_root(tmp_path):
    run_id = uuid.uuid4().hex
    assert tracking.saved_folder(tmp_path, run_id) == tmp_path / run_id
    for bad in ("..", "../../etc", "/etc", "a/b"):
        with pytest.raises(InputError, match="is not a run id"):
            tracking.saved_folder(tmp_path, bad)
