"""Deployment (issue 13, security settings): the production config keeps Streamlit's XSRF protection on,
and the README's nginx example (deploy/nginx.conf, this very file with its ${STYLELAB_*} placeholders
filled in) serves the studio over TLS in Chromium: the page loads over the proxied WebSocket, a 3 MB
upload goes through (more than nginx's default limit), a tiny run finishes, and nginx itself refuses an
upload over the limit with 413. The XSRF refusal of a real server is in test_browser_faults.py.

Needs Debian's nginx (`apt-get install nginx`) and openssl; skipped without them (failed in CI).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import uuid
from pathlib import Path

import numpy as np
import pytest
from browser_helpers import BROWSER_TEST, put_from_page, set_number, shot
from conftest import free_port, missing_server
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
PLACEHOLDERS = ("STYLELAB_LISTEN", "STYLELAB_SERVER_NAME", "STYLELAB_APP", "STYLELAB_TLS_CERT", "STYLELAB_TLS_KEY")


def production_config() -> dict:
    return tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())


def test_production_config_keeps_xsrf_protection_on():
    config = production_config()
    assert config.get("server", {}).get("enableXsrfProtection", True) is True  # not turned off in the file
    # What `streamlit run app.py` started here uses: the repo's config.toml read by Streamlit itself
    options = ("enableXsrfProtection", "enableCORS", "maxUploadSize")
    read = ("from streamlit import config; config.get_config_options(force_reparse=True); "
            f"print([config.get_option(f'server.{{o}}') for o in {options}])")
    shown = subprocess.run([sys.executable, "-c", read], cwd=ROOT, capture_output=True, text=True, timeout=60,
                           check=True).stdout.strip()  # fmt: skip
    limit = config["server"]["maxUploadSize"]
    assert shown == f"[True, True, {limit}]", "XSRF or CORS protection off, or another upload limit"


def test_the_nginx_example_limits_bodies_to_the_apps_upload_limit():
    limit_mb = production_config()["server"]["maxUploadSize"]
    text = NGINX_CONF.read_text()
    assert re.search(rf"^\s*client_max_body_size {limit_mb}m;", text, re.M)
    assert set(re.findall(r"\$\{(\w+)\}", text)) == set(PLACEHOLDERS)


# --------------------------------------------------------------------------------------------------
# nginx in front of the real app


def render(folder: Path, listen: str, app: str) -> Path:
    """deploy/nginx.conf with its placeholders filled (as the README's envsubst does), included in a
    minimal main config that keeps nginx's pid, logs and temporary files in `folder`."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-keyout", str(folder / "tls.key"), "-out", str(folder / "tls.pem")],
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    values = {"STYLELAB_LISTEN": listen, "STYLELAB_SERVER_NAME": "127.0.0.1", "STYLELAB_APP": app,
              "STYLELAB_TLS_CERT": str(folder / "tls.pem"), "STYLELAB_TLS_KEY": str(folder / "tls.key")}  # fmt: skip
    site = re.sub(r"\$\{(STYLELAB_\w+)\}", lambda m: values[m[1]], NGINX_CONF.read_text())
    assert "${" not in site
    (folder / "stylelab.conf").write_text(site)
    temp = {name: folder / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir()
    main = folder / "nginx.conf"
    main.write_text(
        ("user root root;\n" if os.geteuid() == 0 else "")  # workers must reach the temporary folders
        + f"worker_processes 1;\npid {folder / 'nginx.pid'};\nerror_log {folder / 'error.log'} info;\n"
        + "events { worker_connections 256; }\nhttp {\n"
        + f"  access_log {folder / 'access.log'};\n"
        + "".join(f"  {name}_temp_path {path};\n" for name, path in
                  (("client_body", temp["body"]), *((n, temp[n]) for n in ("proxy", "fastcgi", "uwsgi", "scgi"))))
        + f"  include {folder / 'stylelab.conf'};\n}}\n"
    )  # fmt: skip
    return main


@pytest.fixture(scope="module")
def proxied(tmp_path_factory, new_store, start_streamlit):
    if not Path(NGINX).exists() or not shutil.which("openssl"):
        missing_server("nginx or openssl is not installed (apt-get install nginx openssl)")
    folder = tmp_path_factory.mktemp("nginx")
    app = start_streamlit(new_store(tmp_path_factory.mktemp("proxied-store")))
    port = free_port()
    main = render(folder, f"127.0.0.1:{port}", app.removeprefix("http://"))
    base = [NGINX, "-p", str(folder), "-c", str(main), "-e", str(folder / "error.log")]
    checked = subprocess.run([*base, "-t"], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    proc = subprocess.Popen([*base, "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, (folder / "error.log").read_text()[-2000:]
            time.sleep(0.2)
    yield f"https://127.0.0.1:{port}", folder
    os.killpg(proc.pid, signal.SIGQUIT)
    proc.wait(timeout=30)


def noise_png(side: int) -> bytes:
    """A photo-sized PNG that does not compress: about 3·side² bytes."""
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def upload(name: str, data: bytes) -> dict:
    return {"name": name, "mimeType": "image/png", "buffer": data}


def browser_test(test):
    """BROWSER_TEST's marks on one test, so the config tests above run without Chromium."""
    for mark in BROWSER_TEST:
        test = mark(test)
    return test


@browser_test
def test_the_studio_works_through_nginx_and_nginx_refuses_an_upload_over_the_limit(proxied, browser, style_png):
    url, folder = proxied
    context = browser.new_context(viewport={"width": 1300, "height": 950}, ignore_https_errors=True)
    page = context.new_page()
    page.set_default_timeout(60_000)
    sockets: list[str] = []
    uploads: list[int] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    page.on("response", lambda r: uploads.append(r.status) if "/_stcore/upload_file/" in r.url else None)
    try:
        page.goto(f"{url}/studio")
        page.get_by_text("Upload a content image").wait_for()  # drawn by the script, sent over the WebSocket
        assert sockets == [f"{url.replace('https', 'wss')}/_stcore/stream"]

        big = noise_png(1000)
        assert 2 * 2**20 < len(big) < 50 * 2**20  # over nginx's default 1m, under the app's limit
        files = page.locator("input[type=file]")
        files.nth(0).set_input_files(upload("photo.png", big))
        page.get_by_text("The server has your content image").wait_for()  # then the style (as upload_inputs)
        files.nth(1).set_input_files(upload("style.png", style_png))
        page.get_by_text("content, 1000×1000").wait_for()
        assert uploads == [204, 204]
        set_number(page, "Size (long side, px)", 32)
        set_number(page, "Steps", 2)
        page.get_by_role("button", name="Run", exact=True).click()
        page.wait_for_url(re.compile(r"/runs\?run=[0-9a-f]{32}$"))
        page.get_by_text("result G").wait_for(timeout=180_000)
        shot(page, "deploy-run-through-nginx")

        token = next(c["value"] for c in context.cookies() if c["name"] == "_streamlit_xsrf")
        before = (folder / "error.log").read_text().count("client intended to send too large body")
        target = f"{url}/_stcore/upload_file/{uuid.uuid4().hex}/{uuid.uuid4()}"
        assert put_from_page(page, target, 51 * 2**20, token) == 413
        after = (folder / "error.log").read_text().count("client intended to send too large body")
        assert after == before + 1, "refused by nginx, before any of it reached the app"
    finally:
        context.close()
