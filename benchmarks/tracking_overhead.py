"""What MLflow tracking costs a run: wall time of the same transfer untracked and tracked.

    python benchmarks/tracking_overhead.py [--size 64] [--steps 40] [--repeats 2] [--tracking-uri URI]

The tracked run is what `tracked_transfer` does, timed in phases: creating the run (params, tags,
inputs as PNG), the optimisation with `RunTracker.on_step` (metrics batched every 25 steps, a
snapshot every `--snapshot-every` steps), and `finish` (result, thumbnail, waiting for the writer
thread). Default store: a fresh SQLite file in a temporary folder. Single scale, default layers.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch

from engine.core import images
from engine.core.config import TransferConfig
from engine.core.transfer import transfer
from engine.tracking import RunRecorder, check_reachable

SAMPLES = Path(__file__).resolve().parents[1] / "samples"  # shipped with the repo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--snapshot-every", type=int, default=2, help="20 snapshots in 40 steps, the default rate")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads; use 1 on a shared machine (OpenMP spin-waits make multi-thread timings erratic)",
    )
    parser.add_argument("--tracking-uri", default=None, help="default: a SQLite file in a temporary folder")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    content_bytes = (SAMPLES / "tubingen.jpg").read_bytes()
    style_bytes = (SAMPLES / "starry_night.jpg").read_bytes()
    content, style = images.load_image(content_bytes), images.load_image(style_bytes)
    config = TransferConfig(size=args.size, steps=args.steps)
    if "coarse_levels" in {f.name for f in dataclasses.fields(config)}:
        config = config.replace(coarse_levels=0)
    with tempfile.TemporaryDirectory() as tmp:
        uri = check_reachable(args.tracking_uri or f"sqlite:///{tmp}/mlflow.db")  # creates the db outside timing
        transfer(content, [style], config.replace(steps=2), device=args.device)  # load the weights once

        untracked, tracked, phases, cpu_untracked, cpu_tracked = [], [], [], [], []
        for i in range(args.repeats):
            for tracked_run in (False, True) if i % 2 == 0 else (True, False):  # alternate against drift
                t0, c0 = time.perf_counter(), time.process_time()
                if not tracked_run:
                    transfer(content, [style], config, device=args.device)
                    untracked.append(time.perf_counter() - t0)
                    cpu_untracked.append(time.process_time() - c0)
                    continue
                tracker = RunRecorder.create(
                    uri, "overhead", config, content_bytes, [style_bytes],
                    snapshot_every=args.snapshot_every, device=args.device, fallback_dir=tmp,
                )  # fmt: skip
                t1 = time.perf_counter()
                tracker.start()
                result = transfer(
                    tracker.inputs.content.image,
                    tracker.inputs.style_images,
                    config,
                    on_step=tracker.on_step,
                    device=args.device,
                )
                t2 = time.perf_counter()
                tracker.finish(result)
                t3 = time.perf_counter()
                tracked.append(t3 - t0)
                cpu_tracked.append(time.process_time() - c0)
                phases.append((t1 - t0, t2 - t1, t3 - t2, tracker._tracking_s, tracker.writer_cpu_s))
                assert tracker.warning is None, tracker.warning

    base, with_tracking = statistics.median(untracked), statistics.median(tracked)
    create, loop, finish, in_step, writer = (statistics.median(p[i] for p in phases) for i in range(5))
    print(f"store: {uri.split('://')[0]}, {args.size}px, {args.steps} steps, snapshot every {args.snapshot_every}")
    cpu_base, cpu_with = statistics.median(cpu_untracked), statistics.median(cpu_tracked)
    print(f"untracked: {base:.2f} s   tracked: {with_tracking:.2f} s   (wall, median of {args.repeats})")
    print(f"untracked: {cpu_base:.2f} s   tracked: {cpu_with:.2f} s   (CPU time of this process, all threads)")
    print(f"  create run + inputs {create:.2f} s, optimisation {loop:.2f} s, finish {finish:.2f} s")
    print(f"  time inside on_step (optimisation thread): {in_step * 1000:.0f} ms")
    print(f"  CPU time of the background writer thread: {writer * 1000:.0f} ms")
    direct = create + in_step + finish
    print(f"wall-time overhead: {(with_tracking - base) / base:+.1%} (noisy when other work shares the CPUs)")
    print(f"CPU-time overhead: {(cpu_with - cpu_base) / cpu_base:+.1%}")
    print(f"time the caller waits for tracking (create + on_step + finish): {direct:.2f} s = {direct / base:.1%}")
    total = direct + writer
    print(f"all CPU work of tracking (those + the writer thread): {total:.2f} s = {total / base:.1%}")


if __name__ == "__main__":
    main()
