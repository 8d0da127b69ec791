"""What people watching a run cost the run: N real browsers on its page (`/runs?run=<id>`) while it goes.

One real `streamlit run app.py` (loopback, a free port, a fresh SQLite store, the default process
backend) and one headless Chromium with N browser contexts, all on this machine. Each round:

1. a blocker job (long) starts on the server's worker, so the measured job waits in the queue;
2. the measured job (fixed work, `CONFIG`) is submitted through a submit-only queue in this process;
3. N pages open on the measured job's permalink and wait until each shows its live view;
4. the blocker is cancelled, the measured job runs while the N pages watch, and its optimisation time
   is read from MLflow (`time/total_seconds`), with the Streamlit server's CPU seconds during the run
   (utime + stime from /proc/<pid>/stat; the worker is a child process and not counted) and the
   browsers' (every other process under this one).

Rounds go N = 0, 1, 4, 8, 20, then again (`--repeats`), so slow drifts of the machine fall on every N.
Prints a markdown table (slowdown against N = 0) and writes JSON to benchmarks/results/.

    .venv/bin/python benchmarks/watchers.py [--viewers 0,1,4,8,20] [--repeats 2] [--size 128] [--steps 60]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine import tracking  # noqa: E402
from engine.core import images  # noqa: E402
from engine.core.config import TransferConfig  # noqa: E402
from engine.jobs import JobQueue, JobSpec  # noqa: E402

SAMPLES = ROOT / "samples"  # shipped with the repo (samples/SOURCES.md)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
LIVE_TEXT = re.compile(r"step \d+ of|Waiting in the queue")
PROGRESS_TEXT = re.compile(r"step [1-9]\d* of")
TICK = os.sysconf("SC_CLK_TCK")


def png(path: Path, long_side: int) -> bytes:
    buffer = io.BytesIO()
    images.resize_long_side(images.load_image(path), long_side).save(buffer, format="PNG")
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (its own threads; not its children's)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def browsers_cpu(server_pid: int) -> float:
    """CPU seconds of the live processes under this one that are not the server's (Playwright, Chromium)."""
    skip = {server_pid, *descendants(server_pid)}
    total = 0.0
    for pid in descendants(os.getpid()):
        if pid not in skip:
            with contextlib.suppress(OSError):
                total += cpu_seconds(pid)
    return total


class App:
    """`streamlit run app.py` on a free loopback port against `uri`; its log in `log`."""

    def __init__(self, uri: str, log: Path, worker_threads: str | None, split: tuple[set, set] | None = None) -> None:
        self.port = free_port()
        env = os.environ | {"MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT), "STYLELAB_BACKEND": "process"}
        if worker_threads:
            env["STYLELAB_WORKER_THREADS"] = worker_threads
        if split:  # the worker on its own cores; the server (and, below, the browsers) on the others
            env["STYLELAB_WORKER_CPUS"] = ",".join(map(str, sorted(split[0])))
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(self.port),
             "--server.address", "127.0.0.1", "--server.headless", "true"],
            cwd=ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=(lambda: os.sched_setaffinity(0, split[1])) if split else None,
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=1).status == 200:
                    return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"streamlit did not start: {log.read_text()[-2000:]}")

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=60)

    def fragment_warnings(self) -> int:
        return self.log.read_text(errors="replace").count("does not exist anymore")


def wait_status(uri: str, run_id: str, wanted: set[str], timeout: float = 600, every: float = 0.2) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status = tracking.load_run(uri, run_id).status
        if status in wanted:
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} still {status} after {timeout} s")
        time.sleep(every)


def open_viewers(browser, url: str, n: int, timeout_ms: float = 120_000) -> list:
    """N browser contexts, each on `url`, returned once every one shows the live view."""
    contexts, pages = [], []
    for _ in range(n):
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.goto(url)
        contexts.append(context)
        pages.append(page)
    for page in pages:
        page.get_by_text(LIVE_TEXT).first.wait_for(timeout=timeout_ms)
    return contexts


def one_round(
    app: App, submitter: JobQueue, browser, spec: JobSpec, blocker: JobSpec, n: int, *, check_progress: bool = False
) -> dict:
    """One measured run watched by `n` pages. `check_progress` (the test) also waits, while the run goes,
    until every page shows a step of at least 1 (`progress_seen`: how many did)."""
    uri = submitter.tracking_uri
    blocking = submitter.submit(blocker)
    wait_status(uri, blocking, {"RUNNING"})
    run_id = submitter.submit(spec)
    started = time.monotonic()
    contexts = open_viewers(browser, f"{app.url}/runs?run={run_id}", n)
    opened_s = time.monotonic() - started
    warnings_before = app.fragment_warnings()
    submitter.cancel(blocking)
    wait_status(uri, run_id, {"RUNNING", "FINISHED", "FAILED", "KILLED"}, every=0.05)
    server0, browsers0, wall0 = cpu_seconds(app.proc.pid), browsers_cpu(app.proc.pid), time.monotonic()
    seen = 0
    for context in contexts if check_progress else ():
        with contextlib.suppress(Exception):
            context.pages[0].get_by_text(PROGRESS_TEXT).first.wait_for(timeout=60_000)
            seen += 1
    status = wait_status(uri, run_id, {"FINISHED", "FAILED", "KILLED"}, every=0.25)
    server1, browsers1, wall1 = cpu_seconds(app.proc.pid), browsers_cpu(app.proc.pid), time.monotonic()
    if status != "FINISHED":
        raise RuntimeError(f"measured run ended {status}: {app.log.read_text()[-2000:]}")
    shown = 0  # each page sees the end by itself and reruns into the finished view
    for context in contexts:
        with contextlib.suppress(Exception):
            context.pages[0].get_by_text("Final costs").first.wait_for(timeout=30_000)
            shown += 1
    for context in contexts:
        context.close()
    time.sleep(2.0)  # let the server settle (and any late fragment requests arrive)
    run = tracking.load_run(uri, run_id)
    return dict(
        viewers=n, run_id=run_id, optimisation_s=run.metrics["time/total_seconds"], running_wall_s=wall1 - wall0,
        server_cpu_s=server1 - server0, browsers_cpu_s=browsers1 - browsers0, open_pages_s=opened_s,
        finished_view_shown=shown, progress_seen=seen, fragment_warnings=app.fragment_warnings() - warnings_before,
    )  # fmt: skip


def table(rounds: list[dict]) -> str:
    by_n: dict[int, list[dict]] = {}
    for r in rounds:
        by_n.setdefault(r["viewers"], []).append(r)
    base = statistics.median(r["optimisation_s"] for r in by_n.get(0, rounds))
    lines = ["| viewers | optimisation s (each round) | median s | slowdown vs 0 | server CPU s during the run "
             "(median) | browsers' CPU s (median) | 'fragment does not exist' warnings |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for n in sorted(by_n):
        rs = by_n[n]
        med = statistics.median(r["optimisation_s"] for r in rs)
        each = ", ".join(f"{r['optimisation_s']:.2f}" for r in rs)
        lines.append(
            f"| {n} | {each} | {med:.2f} | {100 * (med / base - 1):+.0f} % "
            f"| {statistics.median(r['server_cpu_s'] for r in rs):.2f} "
            f"| {statistics.median(r['browsers_cpu_s'] for r in rs):.2f} | {sum(r['fragment_warnings'] for r in rs)} |"
        )  # fmt: skip
    return "\n".join(lines)


def measure(
    counts: list[int],
    repeats: int = 2,
    *,
    size: int = 128,
    steps: int = 60,
    worker_threads: str | None = None,
    split_cores: bool = False,
    check_progress: bool = False,
    folder: Path | None = None,
    report=print,
) -> list[dict]:
    """Every round (`counts` in order, `repeats` times) on one fresh server and store; see the docstring."""
    from playwright.sync_api import sync_playwright

    folder = folder or Path(tempfile.mkdtemp(prefix="stylelab-watchers-"))
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    content, style = png(SAMPLES / "tubingen.jpg", 256), png(SAMPLES / "starry_night.jpg", 256)
    config = TransferConfig(size=size, steps=steps, coarse_levels=0)
    spec = JobSpec(config=config, content=content, styles=(style,), run_name=f"watched {size}px")
    blocker = JobSpec(config=config.replace(steps=100_000), content=content, styles=(style,), run_name="blocker")
    submitter = JobQueue(uri, devices=[], backend="thread")
    cores = sorted(os.sched_getaffinity(0))
    # viewers sit at their own machines: on this one their browsers, like the server, get other cores
    # than the optimisation (without this, N headless Chromiums compete with it for 2 cores)
    split = ({cores[0]}, set(cores[1:])) if split_cores and len(cores) > 1 else None
    app = App(uri, folder / "app.log", worker_threads, split)
    own = os.sched_getaffinity(0)
    if split:
        os.sched_setaffinity(0, split[1])  # this process and the browsers it launches
    rounds: list[dict] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            warm = browser.new_page()  # the app's queue (and its worker process) starts with the first visit
            warm.goto(app.url)
            warm.get_by_text("Upload a content image").wait_for(timeout=120_000)
            warm.close()
            first = submitter.submit(spec)  # warm-up: the worker loads VGG19 once
            wait_status(uri, first, {"FINISHED", "FAILED", "KILLED"})
            for repeat in range(repeats):
                for n in counts:
                    r = one_round(app, submitter, browser, spec, blocker, n, check_progress=check_progress)
                    rounds.append(r | {"repeat": repeat})
                    report(f"N={n:2d} repeat {repeat}: {r['optimisation_s']:.2f} s optimisation, "
                           f"server CPU {r['server_cpu_s']:.2f} s, browsers {r['browsers_cpu_s']:.2f} s, "
                           f"{r['fragment_warnings']} fragment warnings")  # fmt: skip
            browser.close()
    finally:
        os.sched_setaffinity(0, own)
        app.stop()
        submitter.shutdown()
        report(f"server log {app.log}")
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--viewers", default="0,1,4,8,20")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--worker-threads", default=None, help="STYLELAB_WORKER_THREADS for the server's worker")
    parser.add_argument("--split-cores", action="store_true",
                        help="the worker on core 0, the server and the browsers on the others")
    parser.add_argument("--label", default="", help="a name for this measurement, e.g. before/after")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "watchers.json")
    args = parser.parse_args()
    counts = [int(n) for n in args.viewers.split(",")]
    rounds = measure(counts, args.repeats, size=args.size, steps=args.steps, worker_threads=args.worker_threads,
                     split_cores=args.split_cores, report=lambda line: print(line, flush=True))  # fmt: skip
    print()
    print(table(rounds))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = dict(label=args.label, size=args.size, steps=args.steps, worker_threads=args.worker_threads,
                  split_cores=args.split_cores,
                  cpus=os.cpu_count(), rounds=rounds, table=table(rounds))  # fmt: skip
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
