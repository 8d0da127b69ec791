"""Quick checks of the engine's CUDA paths, run first by benchmarks/gpu_check.sh (no MLflow needed).

Each check prints PASS or FAIL with its numbers; the exit status is 1 when any fails.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from engine.core import images
from engine.core import transfer as transfer_module
from engine.core.config import TransferConfig
from engine.core.lbfgs import BatchedLBFGS
from engine.core.transfer import transfer, transfer_batch

IMAGES = Path(os.environ.get("STYLELAB_IMAGES_DIR", Path(__file__).resolve().parents[2] / "shared" / "images"))
DEVICE = torch.device(sys.argv[1] if len(sys.argv) > 1 else "cuda")  # "cpu" for a dry run here
if DEVICE.type == "cpu":  # a dry run follows the GPU's path: a batch in one network pass
    transfer_module.CPU_IMAGES_PER_PASS = 64
failures = 0


def check(name: str, ok: bool, detail: str) -> None:
    global failures
    failures += not ok
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)


def lbfgs_matches_torch() -> None:
    torch.manual_seed(0)
    n = 64
    a = torch.randn(n, n, device=DEVICE)
    a = a @ a.T / n + 0.1 * torch.eye(n, device=DEVICE)
    b = torch.randn(n, device=DEVICE)
    cost = lambda x: 0.5 * (x @ a * x).sum(-1) - (x * b).sum(-1) + 0.1 * (x**4).sum(-1)  # noqa: E731
    x0 = torch.randn(n, device=DEVICE)
    theirs = x0.clone().requires_grad_(True)
    torch_lbfgs = torch.optim.LBFGS([theirs], max_iter=1, history_size=5, tolerance_grad=-1, tolerance_change=-1)
    ours = x0.clone()[None].requires_grad_(True)
    batched = BatchedLBFGS(ours, history=5, restart_factor=1e30)
    for _ in range(12):

        def closure():
            torch_lbfgs.zero_grad()
            loss = cost(theirs)
            loss.backward()
            return loss

        torch_lbfgs.step(closure)
        loss = cost(ours)
        (grad,) = torch.autograd.grad(loss.sum(), ours)
        batched.step(loss.detach(), grad)
    gap = float((theirs.detach() - ours[0].detach()).abs().max())
    check(
        "BatchedLBFGS follows torch.optim.LBFGS on CUDA", gap < 1e-3, f"max |x_torch − x_ours| after 12 steps {gap:.2e}"
    )


def _capture_warnings() -> list[str]:
    """A list that collects the engine's log messages from now on (a failed graph capture logs one)."""
    captured: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: captured.append(record.getMessage())
    logging.getLogger("engine.transfer").addHandler(handler)
    return captured


def runs() -> None:
    content = images.load_image(IMAGES / "content/tubingen.jpg")
    style = images.load_image(IMAGES / "style/starry_night.jpg")
    config = TransferConfig(size=96, steps=20, coarse_levels=0)
    start = time.perf_counter()
    result = transfer(content, [style], config, device=DEVICE)
    check(
        "transfer on CUDA (bf16 auto)",
        result.image.size == images.long_side_size(content.size, 96) and np.isfinite(result.costs["total"]),
        f"{time.perf_counter() - start:.1f} s, J {result.costs['total']:.4g}",
    )
    steps_seen: list[int] = []
    transfer(content, [style], config.replace(steps=5), device=DEVICE, on_step=lambda r: steps_seen.append(r.step))
    check("every step reported, in order (one-step lag on CUDA)", steps_seen == [1, 2, 3, 4, 5], str(steps_seen))
    # the relu2_1-only setting stops at relu4_2 (the content layer) and has one Gram: the batch narrows
    configs = [config.replace(style_layers={"relu2_1": 1.0}), config.replace(beta=1e5), config.replace(seed=4)]
    captured = _capture_warnings()
    batched = transfer_batch(content, [style], configs, device=DEVICE)
    check("narrowed batch captured as a CUDA graph", not captured, "; ".join(captured) or "no capture warning")
    alone = [transfer(content, [style], c, device=DEVICE) for c in configs]
    worst = max(
        abs(b.costs["total"] - a.costs["total"]) / a.costs["total"] for a, b in zip(alone, batched, strict=True)
    )
    check("batch of 3 against separate runs", worst < 0.1, f"worst relative cost difference {worst:.2%}")
    transfer_module.CUDA_GRAPHS = False
    eager = transfer_batch(content, [style], configs, device=DEVICE)
    transfer_module.CUDA_GRAPHS = True
    gap = max(abs(b.costs["total"] - e.costs["total"]) / e.costs["total"] for b, e in zip(batched, eager, strict=True))
    check(
        "narrowed batch: graph replay gives the eager result", gap < 1e-2, f"worst relative cost difference {gap:.2e}"
    )
    fp32 = transfer(content, [style], config.replace(precision="fp32"), device=DEVICE)
    gap = abs(fp32.costs["total"] - result.costs["total"]) / fp32.costs["total"]
    check("fp32 and bf16 runs end near each other", gap < 0.1, f"relative difference of final J {gap:.2%}")
    captured = _capture_warnings()
    graphed = transfer(content, [style], config.replace(steps=30), device=DEVICE)
    check("CUDA graph captured", not captured, "; ".join(captured) or "no capture warning")
    transfer_module.CUDA_GRAPHS = False
    eager = transfer(content, [style], config.replace(steps=30), device=DEVICE)
    transfer_module.CUDA_GRAPHS = True
    gap = abs(graphed.costs["total"] - eager.costs["total"]) / eager.costs["total"]
    pixels = np.abs(np.asarray(graphed.image, np.float32) - np.asarray(eager.image, np.float32)).mean()
    check("graph replay gives the eager result", gap < 1e-2, f"final J {graphed.costs['total']:.6g} against "
          f"{eager.costs['total']:.6g} ({gap:.2e}), mean pixel difference {pixels:.2f}")  # fmt: skip
    adain = transfer(content, [style], config.replace(init="noise", steps=3), device=DEVICE)
    check("noise init on CUDA", np.isfinite(adain.costs["total"]), f"J after 3 steps {adain.costs['total']:.4g}")


if __name__ == "__main__":
    for fn in (lbfgs_matches_torch, runs):
        try:
            fn()
        except Exception:
            failures += 1
            traceback.print_exc()
    sys.exit(1 if failures else 0)
