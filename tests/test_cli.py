"""`python -m engine` as a user runs it: a real subprocess, real weights, tiny sizes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from engine.core.samples import sample_path

ROOT = Path(__file__).resolve().parents[1]
CONTENT, STYLE = sample_path("tubingen.jpg"), sample_path("starry_night.jpg")


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine", *map(str, args)],
        cwd=cwd, capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip


def test_cli_writes_the_image_and_a_report_of_every_layers_cost(tmp_path):
    out, report = tmp_path / "g.png", tmp_path / "costs.json"
    proc = run_cli(CONTENT, STYLE, "-o", out, "--size", "32", "--steps", "3", "--seed", "1",
                   "--lambda", "relu1_1=1", "--lambda", "relu3_1=0.5", "--no-track", "--report", report,
                   cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert Image.open(out).size == (32, 24)
    data = json.loads(report.read_text())
    assert set(data["style_layers"]) == {"relu1_1", "relu3_1"}
    assert data["costs"]["style"] == pytest.approx(
        data["style_layers"]["relu1_1"] + 0.5 * data["style_layers"]["relu3_1"], rel=1e-5
    )
    assert data["steps_done"] == 3 and data["config"]["seed"] == "1"
    assert "3/3" in proc.stderr  # the progress line reached the end


def test_cli_writes_a_16_bit_tiff_of_a_tiled_run(tmp_path):
    out, report = tmp_path / "g.tif", tmp_path / "costs.json"
    proc = run_cli(CONTENT, STYLE, "-o", out, "--size", "160", "--steps", "2", "--tile-size", "64",
                   "--lambda", "relu1_1=1", "--lambda", "relu2_1=1", "--content-layer", "relu2_1", "--no-track",
                   "--report", report, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    tiff = Image.open(out)
    assert tiff.size == (160, 120) and tiff.tile[0][3][0] == "RGB;16L"  # 16 bits per channel, as Pillow reads it
    assert "in tiles of 64 px with a halo of 4 px" in json.loads(report.read_text())["memory_plan"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lambda", "relu9_1=1"], "Unknown style layer 'relu9_1'"),
        (["--lambda", "relu3_1"], "--lambda takes LAYER=WEIGHT"),
        (["--steps", "0"], "steps must be between 1"),
        (["--beta", "-2"], "beta must be zero or positive"),
        (["--alpha", "inf"], "alpha must be a finite number"),
        (["--optimizer", "sgd"], "Unknown optimizer 'sgd'"),
        (["--size", "4096", "--tile-size", "0"], "or let the run go by tiles"),
        (["--tile-size", "20"], "tile_size must be auto, 0 or a whole number from 64"),
    ],
)
def test_bad_settings_print_one_clear_line_and_exit_2(tmp_path, args, message):
    proc = run_cli(CONTENT, STYLE, "-o", tmp_path / "g.png", "--no-track", *args, cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "g.png").exists()


def test_a_file_that_is_not_an_image_is_refused_by_name(tmp_path):
    fake = tmp_path / "notes.jpg"
    fake.write_text("this is text, not a picture")
    proc = run_cli(CONTENT, fake, "-o", tmp_path / "g.png", "--no-track", cwd=tmp_path)
    assert proc.returncode == 2
    assert "style image 1" in proc.stderr and "Traceback" not in proc.stderr


def test_a_cli_run_is_an_mlflow_run_in_the_given_store(tmp_path):
    from engine.tracking import list_runs, metric_history

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = run_cli(CONTENT, STYLE, "-o", tmp_path / "g.png", "--size", "32", "--steps", "4", "--coarse-levels", "0",
                   "--tracking-uri", uri, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    runs = list_runs(uri, "style-transfer")
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["status"] == "FINISHED" and run["tags.source"] == "cli"
    assert run["run_id"] in proc.stderr
    assert list(metric_history(uri, run["run_id"])["cost/total"].index) == [1, 2, 3, 4]


def test_an_unreachable_tracking_server_is_a_clear_error_before_any_compute(tmp_path):
    proc = run_cli(CONTENT, STYLE, "-o", tmp_path / "g.png", "--tracking-uri", "http://127.0.0.1:9", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Cannot reach the MLflow tracking server" in proc.stderr and "Traceback" not in proc.stderr
    assert "1/" not in proc.stderr  # no optimisation step ran
