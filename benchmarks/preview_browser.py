"""How soon the studio's live preview shows a moved λ slider, in a real browser (issue 16: about 3 s on this
2-core CPU).

One real `streamlit run app.py` (loopback, a fresh SQLite store, the default process backend, as in
`benchmarks/watchers.py`) and one headless Chromium. The studio takes the sample images at 256 px, the
live preview is switched on, and after its first preview the λ relu3_1 slider is moved one step at a
time (the arrow key), `--moves` times. Each time: seconds from the key press until the preview strip
shows the new setting's first look (its image so far, "iteration …"; None when the strip went straight
to the end) and its finished image (a caption that names the new λ and ends with the worker's seconds),
the worker's own seconds for it, and the CPU seconds the Streamlit server, its worker process and the
browser used meanwhile. Prints one JSON line with the load average.

    PYTHONPATH=. .venv/bin/python benchmarks/preview_browser.py [--moves 5] [--shot docs/preview.png]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.watchers import CHROMIUM, CHROMIUM_ARGS, App, browsers_cpu, cpu_seconds, descendants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moves", type=int, default=5)
    parser.add_argument("--shot", type=Path, help="save the last move's first look and end")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    folder = Path(tempfile.mkdtemp(prefix="stylelab-preview-browser-"))
    app = App(f"sqlite:///{folder / 'mlflow.db'}", folder / "app.log", worker_threads=None)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 2000})
            page.set_default_timeout(180_000)
            page.goto(f"{app.url}/studio")
            page.get_by_text("Upload a content image").wait_for()
            switch = page.get_by_role("switch", name="Try the sample images")
            while not switch.is_checked():  # a click while the page still connects can be lost
                page.get_by_text("Try the sample images", exact=True).click()
                page.wait_for_timeout(1000)
            page.get_by_text("content, 512×384").wait_for()
            page.get_by_text("Live preview", exact=True).click()
            now = page.locator("[data-testid=stImage]").filter(has_text="now:")
            now.get_by_text("current settings").wait_for()  # the first preview (a cold worker)
            slider = page.get_by_role("slider", name="λ relu3_1")
            seen, first_looks, worker, server_cpu, worker_cpu, browser_cpu = [], [], [], [], [], []
            server = app.proc.pid

            def cpu() -> tuple[float, float, float]:  # the server, its worker process(es), the browser
                return (cpu_seconds(server), sum(cpu_seconds(c) for c in descendants(server)),
                        browsers_cpu(server))  # fmt: skip

            for _ in range(args.moves):
                page.wait_for_timeout(1500)  # the page settles: polling stopped
                before = now.inner_text()
                slider.focus()
                start, cpu_before = time.perf_counter(), cpu()
                slider.press("ArrowRight")
                # the strip shows the new setting's image: a first look ("iteration"), then the finished
                # preview, whose caption names a new λ and ends with its seconds
                first_look = None
                while True:
                    text = now.inner_text(timeout=180_000)
                    if text and text != before and "λ relu3_1" in text:
                        if "iteration" not in text:
                            break
                        if first_look is None:
                            first_look = time.perf_counter() - start
                            if args.shot:
                                now.screenshot(path=args.shot.with_name(f"{args.shot.stem}-first-look.png"))
                    time.sleep(0.02)
                seen.append(time.perf_counter() - start)
                if args.shot:
                    now.screenshot(path=args.shot.with_name(f"{args.shot.stem}-finished.png"))
                first_looks.append(None if first_look is None else round(first_look, 2))
                used = [after - was for after, was in zip(cpu(), cpu_before, strict=True)]
                for figures, value in zip((server_cpu, worker_cpu, browser_cpu), used, strict=True):
                    figures.append(round(value, 2))
                worker.append(float(re.search(r"\(([\d.]+) s\)", text).group(1)))
            browser.close()
    finally:
        app.stop()
    row = {"moves": args.moves, "key_to_first_look_s": first_looks, "key_to_image_s": [round(s, 2) for s in seen],
           "median_key_to_image_s": round(statistics.median(seen), 2),
           "worker_s": worker, "cpu_s_server": server_cpu, "cpu_s_worker": worker_cpu,
           "cpu_s_browser": browser_cpu, "load": Path("/proc/loadavg").read_text().split()[0]}  # fmt: skip
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
