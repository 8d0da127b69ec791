"""What each job backend costs per job (thread, process, Ray): N tiny jobs (size 32, 3 steps), run one
after the other through `JobQueue.submit`, on a fresh SQLite store.

- first step: submit to the timestamp of step 1's `cost/total` point in MLflow;
- overhead: submit to the run's end time in MLflow, minus its optimisation (`time/total_seconds`).

The Ray side starts its own local head (2 CPUs, 127.0.0.1 only, token auth), like tests/test_ray.py.
The first job of the process and Ray backends includes starting their worker (importing torch, loading
VGG19): shown apart as "cold". One torch thread everywhere (a Ray task with num_cpus=1 gets one).

    .venv/bin/python benchmarks/job_overhead.py [N]
"""

from __future__ import annotations

import os
import secrets

os.environ.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
                   "RAY_AUTH_TOKEN": os.environ.get("RAY_AUTH_TOKEN") or secrets.token_hex(32)})  # fmt: skip

import io
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from mlflow import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine import tracking  # noqa: E402
from engine.core import images  # noqa: E402
from engine.core.config import TransferConfig  # noqa: E402
from engine.jobs import JobQueue, JobSpec  # noqa: E402

CONFIG = TransferConfig(size=32, steps=3, coarse_levels=0)
SAMPLES = ROOT / "samples"  # shipped with the repo (samples/SOURCES.md)


def png(path: Path) -> bytes:
    buffer = io.BytesIO()
    images.resize_long_side(images.load_image(path), 64).save(buffer, format="PNG")
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_head(folder: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = folder / "head.log"
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
         "--port", str(port), "--num-cpus", "2", "--num-gpus", "0", "--include-dashboard", "false",
         "--ray-client-server-port", str(free_port()), "--disable-usage-stats"],
        cwd=ROOT, env=os.environ | {"PYTHONPATH": str(ROOT)}, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.time() + 60
    while "Ray runtime started" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.time() > deadline:
            raise SystemExit(f"Ray did not start: {log.read_text()[-2000:]}")
        time.sleep(0.5)
    return proc, f"127.0.0.1:{port}"


def measure(uri: str, backend: str, n: int, content: bytes, style: bytes) -> list[tuple[float, float]]:
    queue = JobQueue(uri, backend=backend, devices=["cpu"], fallback_dir=Path(uri.removeprefix("sqlite:///")).parent)
    client = MlflowClient(uri)
    figures = []
    try:
        for _ in range(n):
            t0 = time.time()
            run_id = queue.submit(JobSpec(CONFIG, content, (style,)))
            while tracking.load_run(uri, run_id).status not in tracking.TERMINAL:
                time.sleep(0.05)
            run = client.get_run(run_id)
            assert run.info.status == "FINISHED", run.data.tags
            first = min(client.get_metric_history(run_id, "cost/total"), key=lambda m: m.step).timestamp / 1000
            total = run.info.end_time / 1000 - t0
            figures.append((first - t0, total - run.data.metrics["time/total_seconds"]))
    finally:
        queue.shutdown(wait=True)
    return figures


def row(name: str, figures: list[tuple[float, float]]) -> str:
    if not figures:
        return f"| {name} | – | – | 0 |"
    first = statistics.median(f for f, _ in figures)
    over = statistics.median(o for _, o in figures)
    return f"| {name} | {first:.2f} | {over:.2f} | {len(figures)} |"


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    torch.set_num_threads(1)
    content, style = png(SAMPLES / "tubingen.jpg"), png(SAMPLES / "starry_night.jpg")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        results = {}
        os.environ["STYLELAB_WORKER_THREADS"] = "1"  # the process backend's child
        for backend in ("thread", "process", "ray"):
            (folder / backend).mkdir()
            uri = f"sqlite:///{folder / backend / 'mlflow.db'}"
            if backend == "ray":
                head, address = start_head(folder)
                os.environ["STYLELAB_RAY_ADDRESS"] = address
            try:
                measure(uri, backend, 1, content, style) if backend == "thread" else None  # warm VGG19 here
                results[backend] = measure(uri, backend, n, content, style)
            finally:
                if backend == "ray":
                    import ray

                    ray.shutdown()
                    os.killpg(head.pid, 15)
                    head.wait(timeout=60)
    print(f"\n{n} tiny jobs (size {CONFIG.size}, {CONFIG.steps} steps), one after the other; medians in seconds\n")
    print("| backend | submit → first step | overhead (submit → FINISHED − time/total_seconds) | jobs |")
    print("|---|---|---|---|")
    print(row("thread (warm)", results["thread"]))
    print(row("process, first job (cold worker)", results["process"][:1]))
    print(row("process, later jobs (warm worker)", results["process"][1:]))
    print(row("ray, first job (cold worker)", results["ray"][:1]))
    print(row("ray, later jobs (warm worker)", results["ray"][1:]))


if __name__ == "__main__":
    main()
