"""How long a new server takes to serve a usable studio, cold and warm, in a real browser.

Each round starts a real `streamlit run app.py` (loopback, a free port, a new SQLite store that does not
exist yet, so MLflow's migrations are part of the start, as on a new user's first start), then:

- **server up**: `streamlit run` started → `/_stcore/health` answers;
- **cold studio**: `streamlit run` started → the first browser's `/studio` shows its upload widgets (the
  first session runs `app.py`: imports, the job queue, the store);
- **warm studio**: a second browser context opens `/studio` on the same server → upload widgets shown;
- **first run page**: the sample images are chosen and Run pressed (32 px, 2 steps) → the run's page
  shows it finished (the worker process and VGG19 loaded on demand included).

    .venv/bin/python benchmarks/cold_start.py [--rounds 3]

Prints a markdown table of each round and the medians, and writes JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
STUDIO_READY = "Upload a content image"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def studio_ready(browser, url: str) -> tuple[float, object]:
    """Seconds from opening `url`/studio in a new context to its upload widgets; and the page."""
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.set_default_timeout(180_000)
    start = time.perf_counter()
    page.goto(f"{url}/studio")
    page.get_by_text(STUDIO_READY).wait_for()
    page.locator("input[type=file]").first.wait_for(state="attached")
    return time.perf_counter() - start, page


def first_run(page) -> float:
    """Seconds from pressing Run with the samples (tiny settings) to the run's page showing it finished."""
    page.get_by_text("Try the sample images", exact=True).click()
    page.get_by_text("Estimate on").wait_for()
    for label, value in (("Size (long side, px)", 32), ("Steps", 2)):
        box = page.get_by_label(label, exact=True)
        box.fill(str(value))
        box.press("Enter")
        page.wait_for_timeout(500)
    start = time.perf_counter()
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Download result.png").wait_for()
    return time.perf_counter() - start


def one_round(browser) -> dict[str, float]:
    folder = Path(tempfile.mkdtemp(prefix="stylelab-cold-"))
    port = free_port()
    env = os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}", "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.05)
        up = time.perf_counter() - start
        studio_ready(browser, url)
        cold = time.perf_counter() - start
        warm, warm_page = studio_ready(browser, url)
        run = first_run(warm_page)
        return {"server_up_s": up, "cold_studio_s": cold, "warm_studio_s": warm, "first_run_s": run}
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cold-start.json"))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    rounds = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for i in range(args.rounds):
            rounds.append(one_round(browser))
            print(f"round {i + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in rounds[-1].items()), flush=True)
        browser.close()
    keys = list(rounds[0])
    medians = {k: statistics.median(r[k] for r in rounds) for k in keys}
    print("| round | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for i, r in enumerate(rounds, 1):
        print(f"| {i} | " + " | ".join(f"{r[k]:.2f}" for k in keys) + " |")
    print("| median | " + " | ".join(f"{medians[k]:.2f}" for k in keys) + " |")
    load = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rounds": rounds, "medians": medians, "loadavg_at_end": load}, indent=2))


if __name__ == "__main__":
    main()
