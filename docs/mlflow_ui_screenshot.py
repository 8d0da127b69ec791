"""Regenerate docs/mlflow-ui-sweep.png: the MLflow UI comparing the children of a λ sweep, tracked the way
the README's team set-up tracks (an `mlflow server` on PostgreSQL with served artifacts).

It starts a throwaway PostgreSQL cluster (Debian's binaries, loopback; see tests/servers.py) and an
`mlflow server` on it, runs a λ sweep through the app's engine (`engine.studies.sweep.submit_sweep` with
a `JobQueue`: λ relu3_1 ∈ {0, 0.5, 1, 2}, tubingen × starry_night), opens the app's link to the UI's
compare view of the children in Debian's Chromium, sets its parallel-coordinates plot to λ relu3_1,
final/style/relu3_1, quality/style and quality/content, and saves it. Everything it starts is stopped
at the end. The sweep took 44 min on the shared 2-core machine (other test suites running):

    .venv/bin/python docs/mlflow_ui_screenshot.py [--out docs/mlflow-ui-sweep.png] [--size 128 --steps 100]

`--serve` keeps the servers up after the sweep until Ctrl-C or SIGTERM; `--ui http://127.0.0.1:<port>` only takes
the picture, of the newest sweep on a server that is already running.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from browser_helpers import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from PIL import Image  # noqa: E402
from servers import MlflowServer, PostgresCluster  # noqa: E402

from engine.core.config import TransferConfig  # noqa: E402
from engine.core.samples import sample_path  # noqa: E402
from engine.jobs import JobQueue  # noqa: E402
from engine.studies.sweep import SweepAxis, submit_sweep, sweep_children  # noqa: E402
from engine.tracking import list_runs, mlflow_ui_links  # noqa: E402

LAMBDAS = ("0", "0.5", "1", "2")


def run_sweep(uri: str, folder: Path, size: int, steps: int) -> tuple[str, str, list[str]]:
    """(experiment id, parent run id, child run ids) of a finished λ relu3_1 sweep."""
    queue = JobQueue(uri, devices=["cpu"], backend="thread", queue_db=folder / "queue.db",
                     fallback_dir=folder / "unsaved")  # fmt: skip
    try:
        base = TransferConfig(size=size, steps=steps, seed=0)
        content = sample_path("tubingen.jpg").read_bytes()
        style = sample_path("starry_night.jpg").read_bytes()
        handle = submit_sweep(queue, base, [SweepAxis("lambda.relu3_1", LAMBDAS)], content, (style,),
                              name="sweep of λ relu3_1")  # fmt: skip
        if not handle.wait(3600):
            raise SystemExit("the sweep did not end within an hour")
    finally:
        queue.shutdown(wait=True)
    client = MlflowClient(uri)
    parent = client.get_run(handle.parent_run_id)
    return parent.info.experiment_id, handle.parent_run_id, [c.run_id for c in handle.children]


METRICS = ("final/style/relu3_1", "quality/style", "quality/content")  # the parallel-coordinates axes after λ


def screenshot(ui: str, experiment_id: str, children: list[str], out: Path) -> None:
    """The UI's compare view of `children`, in its model-training view (the app's own link), with a
    parallel-coordinates plot of λ relu3_1 against the costs it trades: J_style at relu3_1 (unweighted),
    and the reference scores quality/style and quality/content."""
    from playwright.sync_api import sync_playwright

    link = mlflow_ui_links(ui, experiment_id, children).compare
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(link)
        page.get_by_text("Parallel Coordinates Plot").first.wait_for()
        page.get_by_text("Model training").first.wait_for()
        page.get_by_role("button", name="Close").click()  # the MLflow Assistant's panel, open on a first visit
        params, metrics = (page.locator("[class*=select-selector]").nth(i) for i in (0, 1))
        assert params.inner_text().strip() == "lambda.relu3_1", params.inner_text()  # the one param that differs
        page.get_by_role("button", name="Clear All").click()
        params.click()
        page.keyboard.type("lambda.relu3_1")
        page.keyboard.press("Enter")
        metrics.click()
        for name in METRICS:
            page.keyboard.type(name)
            page.wait_for_timeout(300)
            page.keyboard.press("Enter")
        page.keyboard.press("Escape")  # close the dropdown
        title = page.get_by_text(f"Comparing {len(children)} Runs")
        title.click()
        title.scroll_into_view_if_needed()
        for name in ("lambda.relu3_1", *METRICS):  # the axes' titles
            page.locator("svg text", has_text=name).first.wait_for()
        page.wait_for_timeout(1500)
        names = page.get_by_text("Run Name:").bounding_box()  # down to the row that names the lines' runs
        png = page.screenshot(clip={"x": 0, "y": 0, "width": 1600, "height": names["y"] + names["height"] + 14})
        browser.close()
    Image.open(io.BytesIO(png)).convert("RGB").save(out, optimize=True)


def latest_sweep(ui: str) -> tuple[str, str, list[str]]:
    """(experiment id, parent run id, child run ids by λ) of the newest sweep on the server at `ui`."""
    parents = list_runs(ui, filter_string="tags.`sweep.role` = 'parent'")
    if parents.empty:
        raise SystemExit(f"no sweep on {ui}")
    parent = parents.iloc[0]["run_id"]
    experiment_id = MlflowClient(ui).get_run(parent).info.experiment_id
    return experiment_id, parent, list(sweep_children(ui, parent)["run_id"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "mlflow-ui-sweep.png")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--serve", action="store_true",
                        help="keep the servers up after the sweep, until Ctrl-C or SIGTERM")
    parser.add_argument("--ui", help="only take the screenshot, of the newest sweep on this running server")
    args = parser.parse_args()
    if args.ui:
        experiment_id, _, children = latest_sweep(args.ui)
        screenshot(args.ui, experiment_id, children, args.out)
        print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")
        return
    cluster = PostgresCluster().start()
    server = None
    try:
        with tempfile.TemporaryDirectory(prefix="stylelab-shot-") as tmp:
            folder = Path(tmp)
            os.environ["XDG_CACHE_HOME"] = str(folder / "cache")  # the readers' artifact cache, not ~/.cache
            cluster.create_mlflow_database("mlflow")
            server = MlflowServer(cluster.uri("mlflow"), folder / "server").start(timeout_s=300)
            print(f"mlflow server on PostgreSQL at {server.uri}", flush=True)
            experiment_id, parent, children = run_sweep(server.uri, folder, args.size, args.steps)
            print(f"experiment {experiment_id}, parent {parent}, children {' '.join(children)}", flush=True)
            if args.serve:
                # Ctrl-C or SIGTERM goes on to the picture and the clean-up (a background job ignores SIGINT)
                signal.signal(signal.SIGTERM, signal.default_int_handler)
                try:
                    while True:
                        time.sleep(1)
                except KeyboardInterrupt:
                    pass
            screenshot(server.uri, experiment_id, children, args.out)
            print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")
    finally:
        if server is not None:
            server.kill()
        cluster.stop()


if __name__ == "__main__":
    main()
