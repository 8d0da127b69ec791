"""Every address the README gives, opened in Chromium against a real `streamlit run app.py` (fixtures in
conftest.py): each renders its page, with no "Page not found" dialog, no traceback and no path of this
server in the page. Plus the production settings a visitor depends on: the server listens on loopback
only unless told otherwise, and uncaught errors show no details.

Screenshots land in test-artifacts/screenshots/links-*.png.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import tomllib
import urllib.parse
import urllib.request
from pathlib import Path
from typing import NamedTuple

import pytest
from browser_helpers import BROWSER_TEST, shot
from conftest import free_port

from engine import jobs
from engine.core import images
from engine.core.config import TransferConfig
from engine.jobs import JobQueue
from engine.studies import sweep

pytest.importorskip("playwright.sync_api")

ROOT = Path(__file__).resolve().parents[1]
TINY = TransferConfig(size=64, steps=4, coarse_levels=0, init="content")
SWEEP_BASE = TransferConfig(size=32, steps=2, coarse_levels=0, seed=7)

pytestmark = BROWSER_TEST


class Served(NamedTuple):
    url: str
    store: Path  # the store's folder, a path of this server that no page may show
    runs: list[str]  # two finished single runs
    sweep: str  # a finished sweep's parent run


@pytest.fixture(scope="module")
def served(tmp_path_factory, new_store, start_streamlit, content_png, style_png) -> Served:
    folder = tmp_path_factory.mktemp("links-store")
    uri = new_store(folder)
    content, style = images.load_image(content_png), images.load_image(style_png)
    runs = []
    for name, config in {"a": TINY, "b": TINY.replace(beta=1e6)}.items():
        tracker = jobs.tracked_transfer(content, [style], config, tracking_uri=uri, run_name=name)
        runs.append(tracker.run_id)
    queue = JobQueue(uri, devices=["cpu"], preview_every=1, fallback_dir=folder / "unsaved")
    try:
        handle = sweep.submit_sweep(queue, SWEEP_BASE, [sweep.SweepAxis("seed", ("1", "2"))], content_png,
                                    (style_png,), name="tiny sweep")  # fmt: skip
        assert handle.wait(120), "the sweep did not end in time"
    finally:
        queue.shutdown(wait=True)
    return Served(start_streamlit(uri), folder, runs, handle.parent_run_id)


def readme_addresses() -> list[str]:
    """The app's addresses as the README writes them, e.g. `/runs?run=<run id>`."""
    return sorted(set(re.findall(r"`(/[a-z]*(?:\?[^`]*)?)`", (ROOT / "README.md").read_text())))


# What each page shows once it has run (a heading or a line of its own), by the README's address.
EXPECTED = {
    "/": "Content image C",
    "/studio": "Content image C",
    "/studio?clone=<run id>": "Settings and inputs of run",
    "/runs": "Name contains",
    "/runs?run=<run id>": "result G",
    "/compare?runs=<id>,<id>,…": "Settings that differ",
    "/sweep?run=<parent id>": "contact sheet",
    "/layers": "What each VGG19 layer sees",
}


def concrete(address: str, served: Served) -> str:
    return (address.replace("<id>,<id>,…", ",".join(served.runs)).replace("<run id>", served.runs[0])
            .replace("<parent id>", served.sweep))  # fmt: skip


def open_page(browser, url: str):
    """A fresh context (no earlier visit to the root) at `url`."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(url)
    return context, page


def assert_no_leaks(page, served: Served) -> None:
    text = page.inner_text("body")
    assert "Page not found" not in text
    assert "Traceback" not in text
    for leak in (str(served.store), str(ROOT), "site-packages", "sqlite:"):
        assert leak not in text, f"{leak!r} is shown to visitors"


def test_the_readme_lists_every_page_address():
    assert set(readme_addresses()) == set(EXPECTED), "README and this test disagree on the app's addresses"


@pytest.mark.parametrize("address", sorted(EXPECTED))
def test_every_readme_address_opens_its_page(served, browser, address):
    context, page = open_page(browser, served.url + concrete(address, served))
    try:
        page.get_by_text(EXPECTED[address]).first.wait_for()
        page.get_by_text("Queue").first.wait_for()  # the shared sidebar: app.py ran
        page.wait_for_timeout(1000)  # a "Page not found" dialog comes with the same script run
        shot(page, "links-" + re.sub(r"\W+", "-", address).strip("-") or "root")
        assert page.get_by_text("Page not found").count() == 0
        assert_no_leaks(page, served)
        path = urllib.parse.urlparse(page.url).path
        assert path == urllib.parse.urlparse(concrete(address, served)).path, "the address changed"
    finally:
        context.close()


def test_the_sweep_page_of_a_single_run_says_so_without_a_traceback(served, browser):
    context, page = open_page(browser, f"{served.url}/sweep?run={served.runs[0]}")
    try:
        page.get_by_text("is not a sweep").wait_for()
        page.get_by_role("link", name="Open the run's page").wait_for()
        shot(page, "links-sweep-of-a-single-run")
        assert_no_leaks(page, served)
    finally:
        context.close()


def test_an_unknown_run_id_names_no_server_path(served, browser):
    context, page = open_page(browser, f"{served.url}/sweep?run=0123456789abcdef0123456789abcdef")
    try:
        page.get_by_text("No run").first.wait_for()
        page.get_by_text("local SQLite").first.wait_for()  # the store, named for visitors
        assert_no_leaks(page, served)
    finally:
        context.close()


def test_production_config_listens_on_loopback_and_hides_error_details():
    config = tomllib.loads((ROOT / ".streamlit/config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1"
    assert config["client"]["showErrorDetails"] == "none"  # false would still show the stack trace
    shown = subprocess.run([sys.executable, "-m", "streamlit", "config", "show"], cwd=ROOT, capture_output=True,
                           text=True, timeout=60, check=True).stdout  # fmt: skip
    assert re.search(r'^address = "127\.0\.0\.1"$', shown, re.M)
    assert re.search(r'^showErrorDetails = "none"$', shown, re.M)


def listening_addresses(port: int) -> set[str]:
    """The local addresses of the sockets listening on `port`, read from the kernel's tables (no traffic)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, local_port = local.split(":")
            if state == "0A" and int(local_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def test_a_server_started_like_the_readme_listens_on_127_0_0_1_only(new_store, tmp_path):
    """`streamlit run app.py` with no --server.address (the README's command) takes it from config.toml."""
    port = free_port()
    env = os.environ | {"MLFLOW_TRACKING_URI": new_store(tmp_path / "store"), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + 60
        while True:
            try:
                assert urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1).status == 200
                break
            except OSError:
                assert time.time() < deadline and proc.poll() is None, "streamlit did not start"
                time.sleep(0.3)
        assert listening_addresses(port) == {"0100007F"}, "listens beyond 127.0.0.1"  # 127.0.0.1, little-endian
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=20)
