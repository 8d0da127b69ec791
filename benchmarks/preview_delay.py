"""What live previews cost a full run, and how fast one appears (issue 16).

    PYTHONPATH=. python benchmarks/preview_delay.py [--size 256] [--steps 60] [--threads 2]

One thread-backend queue on a throwaway store, the sample images. Measures: an idle worker's preview
(submit → done, at 128 px and 30 iterations, warm), a full run alone, and the same run while a preview
with another λ is asked for every `--every` seconds (a user moving a slider the whole time; a newer
preview abandons an older one still running): its wall time, and how
many previews were rendered during it. Prints one JSON line; the machine's load average is in it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from engine.core.config import TransferConfig
from engine.core.images import Inputs
from engine.core.samples import sample_path
from engine.jobs import JobQueue, JobSpec


def wait(condition, every_s: float = 0.05):
    while not (value := condition()):
        time.sleep(every_s)
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--every", type=float, default=2.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    inputs = Inputs.decode(sample_path("tubingen.jpg").read_bytes(), [sample_path("starry_night.jpg").read_bytes()])
    folder = Path(tempfile.mkdtemp(prefix="preview-delay-"))
    queue = JobQueue(f"sqlite:///{folder}/mlflow.db", devices=["cpu"], backend="thread")
    try:
        base = TransferConfig(size=args.size, steps=args.steps)
        warm = queue.submit_preview("bench", base.replace(seed=1), inputs)  # loads the networks
        wait(lambda: queue.preview(warm).state == "done")
        start = time.perf_counter()
        idle = queue.submit_preview("bench", base.replace(seed=2), inputs)
        wait(lambda: queue.preview(idle).state == "done")
        idle_s = time.perf_counter() - start

        def full_run(dragging: bool) -> tuple[float, int]:
            start = time.perf_counter()
            run_id = queue.submit(JobSpec(config=base, content=inputs.content, styles=inputs.styles))
            asked, next_ask = [], start
            # polled every 50 ms (not every `every` s, which would round the run's time up to a multiple of it)
            while not (p := queue.progress(run_id)) or not p.done:
                if dragging and time.perf_counter() >= next_ask:
                    next_ask += args.every
                    setting = base.replace(style_layers={"relu3_1": 0.01 * (len(asked) + 1)})  # a λ slider moved
                    asked.append(queue.submit_preview("bench", setting, inputs))
                time.sleep(0.05)
            seconds = time.perf_counter() - start
            rendered = sum(queue.preview(i).state == "done" for i in asked)
            return seconds, rendered

        alone_s, _ = full_run(False)
        dragged_s, rendered = full_run(True)
        row = {"size": args.size, "steps": args.steps, "threads": args.threads, "every_s": args.every,
               "preview_idle_s": idle_s,
               "full_alone_s": alone_s, "full_with_previews_s": dragged_s, "slowdown": dragged_s / alone_s - 1,
               "previews_rendered_during_run": rendered,
               "load": Path("/proc/loadavg").read_text().split()[0]}  # fmt: skip
        print(json.dumps(row), flush=True)
    finally:
        queue.shutdown(wait=True)


if __name__ == "__main__":
    main()
