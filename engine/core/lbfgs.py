"""L-BFGS for a batch of independent problems, without host synchronisation.

Each image of the batch (one G per λ setting of a sweep, or just one) has its own history, its own
step scaling and its own best point; nothing is read back to the host, so on a GPU the next iteration
is queued while this one runs. Like `torch.optim.LBFGS(max_iter=1)` it takes one unit step along the
quasi-Newton direction per iteration (no line search); the first step after a (re)start is a gradient
step scaled by min(1, 1/‖g‖₁). Differences from torch's, each measured in benchmarks/fast.py:

- the direction comes from the compact representation (Byrd, Nocedal & Schnabel 1994) instead of the
  two-loop recursion: a fixed handful of batched matrix products instead of ~4·m small kernels. S and
  Y share one buffer, so a step reads the history twice (once for every inner product, once for the
  direction) where separate products read it seven times: the history is the largest state there is
  (B·2m·n floats) and on a GPU the step is bound by reading it;
- a step that raises an image's cost above `restart_factor`× its best goes back to the best point and
  empties that image's history (without a line search L-BFGS can step far uphill, even to inf).
"""

from __future__ import annotations

import math

import torch

CURVATURE_EPS = 1e-10  # torch's LBFGS skips a pair (s, y) with yᵀs at or below this


class BatchedLBFGS:
    """Minimise B independent costs over `x` (shape (B, …)), one iteration per `step(losses, grads)`.

    `step` takes the costs (B,) at the current `x` and their gradients, updates `x` in place, and
    keeps `best_x` / `best_loss`: the point with the lowest finite cost seen for each image.
    """

    def __init__(self, x: torch.Tensor, *, lr: float = 1.0, history: int = 20, restart_factor: float = 10.0):
        self.x, self.lr, self.m, self.restart_factor = x, float(lr), int(history), float(restart_factor)
        b, n, m = x.shape[0], x[0].numel(), self.m
        new = lambda *shape, **kw: torch.zeros(*shape, device=x.device, **kw)  # noqa: E731
        # history pairs: rows 0…m−1 hold S, rows m…2m−1 hold Y; slot k written at iteration ≡ k mod m
        self.history = new(b, 2 * m, n)
        self.s, self.y = self.history[:, :m], self.history[:, m:]
        self.sy, self.yy = new(b, m, m, dtype=torch.float64), new(b, m, m, dtype=torch.float64)  # sᵢᵀyⱼ, yᵢᵀyⱼ
        self.valid = new(b, m, dtype=torch.bool)
        self.gamma = torch.ones(b, device=x.device, dtype=torch.float64)  # H₀ = γI, γ = sᵀy / yᵀy of the newest pair
        self.fresh = torch.ones(b, device=x.device, dtype=torch.bool)  # no previous step to learn from
        self.prev_grad, self.prev_step = new(b, n), new(b, n)
        self.best_loss = torch.full((b,), math.inf, device=x.device)
        self.best_x = x.detach().clone()
        # The slot this iteration writes lives on the device, and every update below is in place, so
        # one iteration can be captured in a CUDA graph and replayed.
        self.slot = torch.zeros(1, dtype=torch.long, device=x.device)
        self._zero = torch.zeros((), device=x.device)
        self._slots = torch.arange(m, device=x.device)

    @torch.no_grad()
    def step(self, losses: torch.Tensor, grads: torch.Tensor) -> None:
        b = losses.shape[0]
        g = grads.reshape(b, -1).float()
        x = self.x.detach().view(b, -1)
        losses = losses.detach().float()

        # An overshoot (or a non-finite cost): back to the best point, with an empty history.
        rise = losses - self.best_loss
        overshot = ~(rise < (self.restart_factor - 1) * self.best_loss.abs()) & torch.isfinite(self.best_loss)
        overshot |= ~torch.isfinite(losses)
        improved = losses < self.best_loss
        self.best_loss.copy_(torch.where(improved, losses, self.best_loss))
        self.best_x.view(b, -1).copy_(torch.where(improved[:, None], x, self.best_x.view(b, -1)))

        # Learn from the step just taken: s = x_k − x_{k−1}, y = g_k − g_{k−1}, kept when yᵀs > ε.
        s, y = self.prev_step, g - self.prev_grad
        ys = (y * s).sum(1)
        keep = ~self.fresh & ~overshot & (ys > CURVATURE_EPS)
        s, y = torch.where(keep[:, None], s, self._zero), torch.where(keep[:, None], y, self._zero)
        self.s.index_copy_(1, self.slot, s[:, None])
        self.y.index_copy_(1, self.slot, y[:, None])
        self.valid.index_copy_(1, self.slot, keep[:, None])
        self.valid &= ~overshot[:, None]
        # Every inner product this step needs, in one pass over the history: [S; Y]·[s y g].
        products = torch.bmm(self.history, torch.stack([s, y, g], dim=1).transpose(1, 2)).double()  # (B, 2m, 3)
        y_s, s_y, y_y = products[:, self.m :, 0:1], products[:, : self.m, 1:2], products[:, self.m :, 1:2]
        self.sy.index_copy_(1, self.slot, y_s.transpose(1, 2))  # row: s_newᵀ y_j
        self.sy.index_copy_(2, self.slot, s_y)  # column: s_iᵀ y_new
        self.yy.index_copy_(1, self.slot, y_y.transpose(1, 2))
        self.yy.index_copy_(2, self.slot, y_y)
        yy_new = y_y.squeeze(2).index_select(1, self.slot).squeeze(1)  # yᵀy of the pair just written
        gamma = torch.where(keep, ys.double() / yy_new.clamp_min(1e-300), self.gamma)
        self.gamma.copy_(torch.where(overshot, torch.ones_like(gamma), gamma))

        order = (self._slots + self.slot + 1) % self.m  # slots oldest to newest
        history_g = products[:, :, 2]  # Sᵀg and Yᵀg, slots in storage order
        direction = -self._inverse_hessian_times(g, history_g, order, (self._slots - self.slot - 1) % self.m)
        # First step after a (re)start: a gradient step no longer than lr in ‖·‖₁ terms (as torch's LBFGS).
        first = self.fresh | overshot
        scale = torch.where(first, (1.0 / g.abs().sum(1)).clamp(max=1.0), torch.ones_like(losses)) * self.lr
        step = direction * scale[:, None]
        x.copy_(torch.where(overshot[:, None], self.best_x.view(b, -1), x + step))
        self.prev_step.copy_(torch.where(overshot[:, None], self._zero, step))
        self.prev_grad.copy_(g)
        self.fresh.copy_(overshot)
        self.slot.add_(1).remainder_(self.m)

    def _inverse_hessian_times(
        self, g: torch.Tensor, history_g: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor
    ) -> torch.Tensor:
        """H·g with the compact form H = γI + [S γY]·M·[Sᵀ; γYᵀ] (Byrd, Nocedal & Schnabel 1994, eq. 3.13):
        M = [[R⁻ᵀ(D + γYᵀY)R⁻¹, −R⁻ᵀ], [−R⁻¹, 0]], R the upper triangle of SᵀY in time order, D its diagonal.

        Empty slots have s = y = 0 and a unit diagonal in R, so they drop out of every product.
        """
        gamma = self.gamma
        a = history_g[:, : self.m][:, order]  # Sᵀg, oldest first
        yg = history_g[:, self.m :][:, order]  # Yᵀg
        valid = self.valid[:, order]
        sy = self.sy[:, order][:, :, order]
        yy = self.yy[:, order][:, :, order]
        r = torch.triu(sy) + torch.diag_embed((~valid).double())
        d = torch.diagonal(sy, dim1=1, dim2=2) * valid
        u = torch.linalg.solve_triangular(r, a[:, :, None], upper=True)  # R⁻¹Sᵀg
        rhs = d[:, :, None] * u + gamma[:, None, None] * (yy @ u) - gamma[:, None, None] * yg[:, :, None]
        w = torch.linalg.solve_triangular(r.transpose(1, 2), rhs, upper=False)  # R⁻ᵀ((D + γYᵀY)u − γYᵀg)
        w_s = w.squeeze(2)[:, inverse]
        w_y = (-gamma[:, None] * u.squeeze(2))[:, inverse]
        coefficients = torch.cat([w_s, w_y], dim=1).float()[:, None, :]  # (B, 1, 2m), rows as in the history
        return gamma.float()[:, None] * g + torch.bmm(coefficients, self.history).squeeze(1)  # one more pass
