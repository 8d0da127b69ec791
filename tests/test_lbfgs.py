"""BatchedLBFGS: the same iterates as torch.optim.LBFGS (one iteration per step, no line search), one
independent history per image, and a restart from the best point after an overshoot."""

from __future__ import annotations

import math

import pytest
import torch

from engine.core.lbfgs import BatchedLBFGS


def _problem(seed: int, n: int = 40):
    """A smooth, non-quadratic cost (convex quadratic plus a quartic) with its own minimum per seed."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    a = a @ a.T / n + 0.1 * torch.eye(n, dtype=torch.float64)
    b = torch.randn(n, generator=g, dtype=torch.float64)
    x0 = torch.randn(n, generator=g, dtype=torch.float64)
    return (lambda x: 0.5 * (x @ a * x).sum(-1) - (x * b).sum(-1) + 0.1 * (x**4).sum(-1)), x0


def _torch_iterates(cost, x0, history: int, steps: int) -> list[torch.Tensor]:
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([x], max_iter=1, history_size=history, tolerance_grad=-1, tolerance_change=-1)
    out = []
    for _ in range(steps):

        def closure():
            opt.zero_grad()
            loss = cost(x)
            loss.backward()
            return loss

        opt.step(closure)
        out.append(x.detach().clone())
    return out


def _our_iterates(costs, x0s, history: int, steps: int) -> list[torch.Tensor]:
    x = torch.stack(x0s).float().requires_grad_(True)
    opt = BatchedLBFGS(x, history=history, restart_factor=math.inf)
    out = []
    for _ in range(steps):
        losses = torch.stack([cost(x[i].double()) for i, cost in enumerate(costs)])
        (grad,) = torch.autograd.grad(losses.sum(), x)
        opt.step(losses.detach(), grad)
        out.append(x.detach().clone())
    return out


@pytest.mark.parametrize("history", [3, 100])  # 3: the ring buffer wraps many times in 25 steps
def test_follows_torch_lbfgs(history):
    cost, x0 = _problem(0)
    theirs = _torch_iterates(cost, x0, history, 25)
    ours = _our_iterates([cost], [x0], history, 25)
    gaps = [float((t - o[0].double()).abs().max()) for t, o in zip(theirs, ours, strict=True)]
    assert max(gaps) < 1e-3, gaps
    assert float(cost(theirs[-1])) < float(cost(x0)) - 1  # the iterates went somewhere


def test_each_image_of_a_batch_is_optimised_independently():
    (cost_a, x_a), (cost_b, x_b) = _problem(1), _problem(2)
    together = _our_iterates([cost_a, cost_b], [x_a, x_b], 10, 20)
    alone_a = _our_iterates([cost_a], [x_a], 10, 20)
    alone_b = _our_iterates([cost_b], [x_b], 10, 20)
    assert torch.allclose(together[-1][0], alone_a[-1][0], atol=1e-4)
    assert torch.allclose(together[-1][1], alone_b[-1][0], atol=1e-4)


def test_an_overshoot_goes_back_to_the_best_point_and_restarts_only_that_image():
    x = torch.zeros(2, 3, requires_grad=True)
    opt = BatchedLBFGS(x, history=5, restart_factor=10.0)
    grads = torch.ones(2, 3)
    opt.step(torch.tensor([1.0, 1.0]), grads)  # best: the origin, cost 1 for both
    assert opt.best_loss.tolist() == [1.0, 1.0]
    moved = x.detach().clone()
    assert (moved != 0).all()
    opt.step(torch.tensor([50.0, 0.5]), grads * 0.5)  # image 0 overshoots (50 > 10×1), image 1 improves
    assert torch.equal(x.detach()[0], torch.zeros(3))  # back to its best point
    assert opt.fresh.tolist() == [True, False]
    assert not opt.valid[0].any()  # its history emptied
    assert opt.best_loss.tolist() == [1.0, 0.5]
    assert torch.equal(opt.best_x[1], moved[1])


def test_a_non_finite_cost_counts_as_an_overshoot():
    x = torch.zeros(1, 2, requires_grad=True)
    opt = BatchedLBFGS(x, history=5)
    opt.step(torch.tensor([2.0]), torch.ones(1, 2))
    opt.step(torch.tensor([math.nan]), torch.full((1, 2), math.nan))
    assert torch.equal(x.detach(), torch.zeros(1, 2))
    assert torch.isfinite(x).all() and opt.best_loss.tolist() == [2.0]
