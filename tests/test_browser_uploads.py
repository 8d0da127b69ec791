"""Uploads from many browser sessions at once, in Chromium against a real `streamlit run app.py` (fixtures
in conftest.py): eight sessions each upload a content and a style image at the same moment, and every one
must get both thumbnails. Each page's upload requests (PUT /_stcore/upload_file/…) are counted, so a
failure says whether the browser sent the file at all (Streamlit's front end) or the server lost it.

Playwright's sync API is not thread-safe: the eight pages are opened first, then their files are set in
quick succession (each set_input_files returns once the browser has the file, before the upload ends).
"""

from __future__ import annotations

import re
import time
from collections import Counter

import pytest
from browser_helpers import BROWSER_TEST, shot

PlaywrightTimeout = pytest.importorskip("playwright.sync_api").TimeoutError

SESSIONS = 8
WAIT_S = 45

pytestmark = BROWSER_TEST


@pytest.fixture(scope="module")
def server(tmp_path_factory, new_store, start_streamlit) -> str:
    return start_streamlit(new_store(tmp_path_factory.mktemp("uploads-store")))


def upload(name: str, data: bytes) -> dict:
    return {"name": name, "mimeType": "image/png", "buffer": data}


def open_studio(browser, server: str):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    sent: Counter[str] = Counter()

    def count(request) -> None:
        if "/_stcore/upload_file/" in request.url and request.method == "PUT":
            sent["PUT"] += 1

    def answered(response) -> None:
        if "/_stcore/upload_file/" in response.url and response.request.method == "PUT":
            sent[f"HTTP {response.status}"] += 1

    page.on("request", count)
    page.on("response", answered)
    page.goto(f"{server}/studio")
    return context, page, sent


@pytest.mark.load
def test_eight_sessions_uploading_at_once_all_get_their_images(server, browser, content_png, style_png):
    opened = [open_studio(browser, server) for _ in range(SESSIONS)]
    try:
        for _, page, _ in opened:
            page.get_by_text("Upload a content image").wait_for()
        start = time.monotonic()
        for _, page, _ in opened:
            files = page.locator("input[type=file]")
            files.nth(0).set_input_files(upload("content.png", content_png))
            files.nth(1).set_input_files(upload("style.png", style_png))
        missing = []
        for i, (_, page, sent) in enumerate(opened):
            left_ms = max(1_000, (WAIT_S - (time.monotonic() - start)) * 1000)
            try:
                page.get_by_text("content, 64×48").wait_for(timeout=left_ms)
                page.get_by_text(re.compile(r"style 1, \d+×\d+")).wait_for(timeout=left_ms)
            except PlaywrightTimeout:
                shot(page, f"uploads-session-{i}")
                missing.append(f"session {i}: {dict(sent)}; page says {page.inner_text('body')[-400:]!r}")
        seconds = time.monotonic() - start
        print(f"{SESSIONS} sessions: both thumbnails in {seconds:.1f} s; PUTs {[dict(s) for _, _, s in opened]}")
        assert not missing, "uploads went missing:\n" + "\n".join(missing)
        for _, _, sent in opened:  # one request per file, each accepted (Streamlit answers 204)
            assert sent == Counter({"PUT": 2, "HTTP 204": 2})
    finally:
        for context, _, _ in opened:
            context.close()


def test_a_session_with_one_image_is_told_which_one_the_server_has(server, browser, content_png):
    context, page, sent = open_studio(browser, server)
    try:
        page.get_by_text("Upload a content image").wait_for()
        page.locator("input[type=file]").nth(0).set_input_files(upload("content.png", content_png))
        page.get_by_text("The server has your content image; now upload at least one style image.").wait_for()
        page.get_by_text("If a file you chose does not arrive").wait_for()
        assert sent["PUT"] == 1
    finally:
        context.close()

