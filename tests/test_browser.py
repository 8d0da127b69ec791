"""End to end in a real browser: `streamlit run app.py` on a free loopback port with a temporary MLflow
store, driven by Debian's Chromium through Playwright.

Screenshots land in test-artifacts/screenshots/ (look at them after a run).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

playwright = pytest.importorskip("playwright.sync_api")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "images"
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Chromium is not installed (apt-get install chromium)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser-store")
    port = free_port()
    env = os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).status == 200:
                break
        except OSError:
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail(f"streamlit did not start: {proc.stdout.read().decode()[-2000:]}")
    yield url
    os.killpg(proc.pid, 15)
    proc.wait(timeout=20)


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def set_number(page, label: str, value: int) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")
    page.wait_for_timeout(400)


def test_upload_run_watch_progress_and_reopen_the_permalink(server, browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(server)
    page.get_by_text("Upload a content image").wait_for()
    uploads = page.locator("input[type=file]")
    uploads.nth(0).set_input_files(str(SHARED / "content/tubingen.jpg"))
    uploads.nth(1).set_input_files(str(SHARED / "style/starry_night.jpg"))
    page.get_by_text("content, 1024×768").wait_for()  # thumbnails, captioned with the decoded size
    page.get_by_text("Estimate on").wait_for()
    set_number(page, "Size (long side, px)", 128)
    set_number(page, "Steps", 40)
    set_number(page, "Steps per coarse level", 20)
    shot(page, "1-studio")

    page.get_by_role("button", name="Run").click()
    page.wait_for_url(re.compile(r"/runs\?run=\w+"))
    run_id = page.url.split("run=")[1]
    page.get_by_text(re.compile(r"step [1-9]\d* of 60")).wait_for()  # live progress
    page.get_by_text(re.compile(r"G at step [1-9]")).wait_for()  # the current G
    page.locator(".vega-embed").first.wait_for()  # live cost curves
    shot(page, "2-progress")
    page.get_by_text("result G").wait_for(timeout=240_000)
    page.get_by_text("Evolution of G").wait_for()
    assert page.get_by_text(run_id).count() >= 1
    shot(page, "3-finished")

    other = browser.new_context(viewport={"width": 1400, "height": 1000})
    again = other.new_page()
    again.goto(f"{server}/runs?run={run_id}")
    again.get_by_text("result G").wait_for(timeout=60_000)
    assert again.get_by_text(run_id).count() >= 1
    assert again.get_by_text("finished", exact=False).count() >= 1
    result_images = again.locator("img[alt='result G'], [data-testid=stImage] img")
    assert result_images.count() >= 3  # content, style, result
    shot(again, "4-permalink")
    other.close()
    context.close()
