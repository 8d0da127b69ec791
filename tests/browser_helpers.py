"""What the browser tests share besides fixtures: where Chromium and the screenshots are, the marks that
skip them without Chromium (or fail them in CI), and small page helpers."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip

# Slow, and skipped where Chromium is missing (failed instead under STYLELAB_REQUIRE_SERVERS=1, as in CI:
# conftest's `needs_chromium`).
BROWSER_TEST = [pytest.mark.slow, pytest.mark.usefixtures("needs_chromium")]


def shot(page, name: str) -> None:
    """Save a full-page screenshot as test-artifacts/screenshots/<name>.png, to look at after a run."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def set_number(page, label: str, value: int) -> None:
    """Type into a Streamlit number input and commit it (Enter), then let the app rerun."""
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")
    page.wait_for_timeout(400)


def put_from_page(page, url: str, size: int, xsrf_token: str | None) -> int:
    """PUT a multipart upload of `size` zero bytes to `url` from inside the page (fetch, the page's cookies,
    the X-Xsrftoken header when given), as Streamlit's uploader does; the HTTP status. The body is made in
    the browser: handing tens of MB to it through Playwright takes minutes on a busy machine."""
    return page.evaluate(
        """async ([url, size, token]) => {
            const form = new FormData();
            form.append("file", new Blob([new Uint8Array(size)], {type: "image/png"}), "huge.png");
            const headers = token ? {"X-Xsrftoken": token} : {};
            const answer = await fetch(url, {method: "PUT", body: form, headers, credentials: "same-origin"});
            return answer.status;
        }""",
        [url, size, xsrf_token],
    )


def upload_inputs(page, content: Path, styles: list[Path]) -> None:
    """Upload the content image, then (once the server has it, as the page asks) the style images, and wait
    for the last style's thumbnail caption. Uploading both at once lost an upload in CI (stop 20)."""
    page.get_by_text("Upload a content image").wait_for()
    uploads = page.locator("input[type=file]")
    uploads.nth(0).set_input_files(str(content))
    page.get_by_text("The server has your content image").wait_for()
    uploads.nth(1).set_input_files([str(s) for s in styles])
    page.get_by_text(f"style {len(styles)}, ").first.wait_for()
