"""Per-layer style costs J_style[l] to choose from (`TransferConfig.style_cost`), each with its target
statistics, and guided (masked) statistics for spatial control.

Scope: pure tensor maths, torch only. Every cost has the same three entry points:

- `style_statistics(kind, a, weight)`: the target statistics of one style activation a (1, n_C, n_H, n_W);
- `blend_statistics(kind, stats, weights)`: the statistics of a weighted blend of several style images;
- `style_layer_cost(kind, a, target, weight)`: the cost of a batch of G activations (B, n_C, n_H, n_W), (B,).

The kinds (`STYLE_COSTS`), each a distance between the distributions of the n_C-vectors a_ij, one per
position, of S and of G at layer l:

- `"gram"`: the seed's, Gatys et al. 2016: the Frobenius distance of the mean outer products E[a aᵀ];
- `"w2"`: the Wasserstein-2 distance between Gaussian fits N(μ, Σ) of the two (closed form);
- `"sliced"`: the sliced Wasserstein distance (Heitz et al. 2021): exact 1-D optimal transport of the
  projections on fixed directions.

Statistics are dicts of tensors only, so that an `nn.Module` can register them as buffers.

`weight` is None (every position counts once) or a (1, 1, n_H, n_W) map in [0, 1]: a region's mask at
the layer's resolution (Gatys et al. 2017, "Controlling Perceptual Factors in Neural Style Transfer").
Statistics are averages over positions weighted by it, so a region's statistics compare with any other
image's or region's, whatever their sizes (sliced: the positions where it is above ½, see
`sliced_cost`). Costs are fp32 (fp64 stays fp64 for gradcheck); target statistics are computed in fp64
and stored in the activation's precision (at least fp32).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from engine.core.costs import _at_least_fp32, gram_matrix, normalised_gram, style_cost_of_grams

STYLE_COSTS = ("gram", "w2", "sliced")

Statistics = dict[str, torch.Tensor]

W2_RIDGE = 1e-5  # δ = W2_RIDGE · tr(Σ_S)/n_C, the variance of the isotropic noise both sides get (`w2_cost`)
NEWTON_SCHULZ_ITERATIONS = 20  # for `trace_sqrt_newton_schulz` (benchmarks/style_costs.py compares it)
SLICED_QUANTILES = 1024  # Q: how many quantiles of each projection a sliced target keeps
MASK_THRESHOLD = 0.5  # sliced: a position belongs to a weighted region when its weight is above this


def mask_mass(weight: torch.Tensor | None, a: torch.Tensor) -> torch.Tensor:
    """Σ_ij m_ij: how many positions of `a` a weight map covers (n_H·n_W when there is none)."""
    if weight is None:
        return torch.tensor(float(a.shape[-2] * a.shape[-1]), device=a.device)
    return _at_least_fp32(weight).sum()


def guided_gram(a: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Ĝ_r[l] = Σ_ij m_ij · a_ij a_ijᵀ / Σ_ij m_ij, shape (B, n_C, n_C).

    Gatys et al. 2017, eq. 6-7: the guided feature map F_r = T_r ∘ F and its Gram G_r = F_r F_rᵀ, here with
    the guidance channel T_r = √m (so each position counts with its mask value m, not m²) and divided by
    the mask's mass, so that Ĝ_r is the mean of a aᵀ over the region. With no mask it is
    `costs.normalised_gram`, G[l] / (n_H·n_W).
    """
    if weight is None:
        return normalised_gram(a)
    a = _at_least_fp32(a)
    guided = a * _at_least_fp32(weight).sqrt()
    return gram_matrix(guided.contiguous(memory_format=torch.channels_last)) / mask_mass(weight, a)


# --- w2: Wasserstein-2 between Gaussian fits ------------------------------------------------------------


def gaussian_fit(a: torch.Tensor, weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(μ, Σ) of the positions' n_C-vectors, shapes (B, n_C) and (B, n_C, n_C), weighted by `weight`:

    μ = Σ_ij m_ij a_ij / Σ_ij m_ij,   Σ = Σ_ij m_ij (a_ij − μ)(a_ij − μ)ᵀ / Σ_ij m_ij

    (m = 1 with no mask; normalised by the mass, not mass − 1). Centred before the product, not
    E[a aᵀ] − μμᵀ, which loses digits in fp32 where the mean is large against the spread.
    """
    f = _at_least_fp32(a).flatten(2)  # (B, n_C, N)
    if weight is None:
        mean = f.mean(2)
        centred = f - mean.unsqueeze(2)
        return mean, centred @ centred.transpose(1, 2) / f.shape[2]
    m = _at_least_fp32(weight).flatten().to(f.dtype)  # (N,)
    mass = m.sum()
    mean = (f * m).sum(2) / mass
    centred = (f - mean.unsqueeze(2)) * m.sqrt()
    return mean, centred @ centred.transpose(1, 2) / mass


def _w2_target(mean: torch.Tensor, second: torch.Tensor, dtype: torch.dtype) -> Statistics:
    """w2 statistics from μ (1, n_C) and E[a aᵀ] (1, n_C, n_C), both fp64: Σ = E[a aᵀ] − μμᵀ, the ridge
    δ and (Σ + δI)^½ (a symmetric eigendecomposition, eigenvalues clamped at 0)."""
    cov = second - mean.unsqueeze(2) * mean.unsqueeze(1)
    cov = (cov + cov.transpose(1, 2)) / 2
    ridge = W2_RIDGE * cov.diagonal(dim1=1, dim2=2).sum() / cov.shape[-1]
    values, vectors = torch.linalg.eigh(cov)
    root = (vectors * (values.clamp_min(0) + ridge).sqrt().unsqueeze(1)) @ vectors.transpose(1, 2)
    stats = {"mean": mean, "second": second, "cov": cov, "cov_sqrt": (root + root.transpose(1, 2)) / 2, "ridge": ridge}
    return {k: v.to(dtype) for k, v in stats.items()}


def trace_sqrt_eigh(m: torch.Tensor, floor: torch.Tensor | float) -> torch.Tensor:
    """tr(M^½) = Σ_k √λ_k for symmetric PSD M (B, n, n), λ = `torch.linalg.eigvalsh(M)`, shape (B,).

    Only the eigenvalues are used, so the backward is V diag(1/(2√λ)) Vᵀ, with no 1/(λ_k − λ_k') terms:
    repeated eigenvalues are harmless. λ is clamped at `floor` > 0 (the smallest eigenvalue M can have,
    see `w2_cost`), so round-off below it (or below 0) neither gives a NaN nor a gradient above
    1/(2√floor).
    """
    values = torch.linalg.eigvalsh(m)
    return values.clamp_min(floor).sqrt().sum(-1)


def trace_sqrt_newton_schulz(m: torch.Tensor, iterations: int = NEWTON_SCHULZ_ITERATIONS) -> torch.Tensor:
    """tr(M^½) by the coupled Newton–Schulz iteration (Higham, "Functions of Matrices", 2008, eq. 6.35),
    shape (B,):

    Y₀ = M/‖M‖_F, Z₀ = I;  T = ½(3I − Z_k Y_k),  Y_{k+1} = Y_k T,  Z_{k+1} = T Z_k;  M^½ ≈ √‖M‖_F · Y_k.

    Dividing by the Frobenius norm puts every eigenvalue in (0, 1], where it converges; matrix products
    only, a fixed number of them, so autograd differentiates through it. An eigenvalue x·‖M‖_F converges
    slowly while x is small (Y_k ≈ √x·√p_k with p_{k+1} = p_k(3 − p_k)²/4, p₀ = x), so small eigenvalues
    come out short after few iterations; and an eigenvalue that round-off puts below 0 diverges (|p_k|
    grows ×9/4 an iteration): on the sample pair's M in fp32, 40 iterations gave NaN at three layers of
    five (see benchmarks/style_costs.py).
    """
    n = m.shape[-1]
    norm = m.flatten(1).norm(dim=1).clamp_min(torch.finfo(m.dtype).tiny)  # (B,)
    eye = torch.eye(n, dtype=m.dtype, device=m.device).expand_as(m)
    y, z = m / norm.view(-1, 1, 1), eye
    for _ in range(iterations):
        t = 0.5 * (3.0 * eye - z @ y)
        y, z = y @ t, t @ z
    return y.diagonal(dim1=1, dim2=2).sum(-1) * norm.sqrt()


def w2_cost(
    a: torch.Tensor,
    target: Statistics,
    weight: torch.Tensor | None = None,
    sqrt: str = "eigh",
    iterations: int = NEWTON_SCHULZ_ITERATIONS,
    precision: torch.dtype = torch.float64,
) -> torch.Tensor:
    """J_style[l] = W2²(N(μ_S, Σ_S), N(μ_G, Σ_G)) / n_C for each G of the batch `a`, shape (B,):

    W2² = ‖μ_S − μ_G‖² + tr(Σ_S) + tr(Σ_G) − 2·tr((Σ_S^½ Σ_G Σ_S^½)^½)

    (Dowson & Landau 1982; Givens & Shortt 1984), the closed-form optimal-transport cost between the
    Gaussian fits of the two feature distributions (`gaussian_fit`), divided by n_C: a mean squared
    displacement per channel, in activation² units (the gram cost is in activation⁴).

    Ridge: both covariances get δI, δ = W2_RIDGE · tr(Σ_S)/n_C (the exact W2 between the two
    distributions each blurred by the same isotropic Gaussian noise of variance δ). Deep layers have
    fewer positions than channels (relu5_1 at 256 px: 16×12 = 192 against 512), so Σ_G and Σ_S are
    rank-deficient, M = Σ_S^½ Σ_G Σ_S^½ has zero eigenvalues and d√λ/dλ = 1/(2√λ) is infinite there.
    With the ridge every eigenvalue of M is at least δ², so the gradient stays below 1/(2δ), while the
    value is still 0 for G = S; it moves W2² by O(δ) where both variances are ≫ δ and by at most
    ~2√(δ·σ²) along a direction of variance σ² that the other side lacks (1e-5 to 1e-4 of W2² on the
    sample pair at 256 px).

    Precision: Σ_G (the O(n_C²·n_H·n_W) part) is taken in the activation's precision (at least fp32);
    the n_C×n_C stage (M, tr(M^½), the traces) in `precision`, fp64 by default. In fp32, M's round-off
    (~1e-7 of its largest eigenvalue) swamps its small eigenvalues, which weigh most in the gradient
    (1/(2√λ)): the gradient came out 0.3–4% off the fp64 one on the sample pair, against 3e-6 to 6e-5
    with this stage in fp64, for a few ms per layer at n_C ≤ 512 (benchmarks/style_costs.py).

    `sqrt` is how tr(M^½) is taken: "eigh" (`trace_sqrt_eigh`, the default: faster, accurate, and
    finite on rank-deficient M) or "newton_schulz" (`trace_sqrt_newton_schulz`, `iterations`), which
    benchmarks/style_costs.py compares with it.
    """
    mean, cov = gaussian_fit(a, weight)
    out = cov.dtype
    dtype = torch.promote_types(out, precision)
    mean, cov = mean.to(dtype), cov.to(dtype)
    root, ridge = target["cov_sqrt"].to(dtype), target["ridge"].to(dtype)
    n = cov.shape[-1]
    eye = torch.eye(n, dtype=dtype, device=cov.device)
    m = root @ (cov + ridge * eye) @ root
    m = (m + m.transpose(1, 2)) / 2
    if sqrt == "eigh":
        traced = trace_sqrt_eigh(m, ridge * ridge)
    elif sqrt == "newton_schulz":
        traced = trace_sqrt_newton_schulz(m, iterations)
    else:
        raise ValueError(f"unknown square-root method {sqrt!r}")
    tr_s = target["cov"].to(dtype).diagonal(dim1=1, dim2=2).sum(-1) + n * ridge
    tr_g = cov.diagonal(dim1=1, dim2=2).sum(-1) + n * ridge
    w2 = (target["mean"].to(dtype) - mean).pow(2).sum(-1) + tr_s + tr_g - 2.0 * traced
    return (w2.clamp_min(0) / n).to(out)  # round-off can leave −0.0…; a distance is not negative


# --- sliced: sliced Wasserstein with fixed directions -------------------------------------------------


def sliced_directions(n_c: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """K = n_C unit directions (the columns, shape (n_C, K)), drawn once from a torch.Generator seeded with
    n_C: the same for every image, call and iteration, and for any two layers with as many channels."""
    draws = torch.randn(n_c, n_c, generator=torch.Generator().manual_seed(n_c), dtype=torch.float64)
    return (draws / draws.norm(dim=0, keepdim=True)).to(dtype=dtype, device=device)


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation per row, like numpy.interp: x (T,), xp (K, N) increasing, fp (K, N),
    shape (K, T); constant beyond the ends."""
    index = torch.searchsorted(xp, x.expand(xp.shape[0], -1).contiguous(), right=True)
    lo, hi = (index - 1).clamp(0, xp.shape[1] - 1), index.clamp(0, xp.shape[1] - 1)
    x0, x1, f0, f1 = xp.gather(1, lo), xp.gather(1, hi), fp.gather(1, lo), fp.gather(1, hi)
    span = x1 - x0
    t = torch.where(span > 0, (x - x0) / span.where(span > 0, 1), 0).clamp(0, 1)
    return f0 + t * (f1 - f0)


def weighted_quantiles(samples: torch.Tensor, weights: torch.Tensor | None = None, count: int = SLICED_QUANTILES):
    """The quantile function of each row of `samples` (K, N), sample n with mass `weights[n]` (N,) (equal
    when None; normalised here), at the `count` levels t_q = (q + ½)/count, shape (K, count).

    Sorted, each sample sits at the middle of its mass, c_n − w_n/2 with c the cumulative mass (for equal
    masses (n + ½)/N), and the quantile function is the linear interpolation between those points. So
    `count` = N gives the sorted samples back exactly, and samples pooled from several distributions
    with masses w_s/N_s give the quantile function of their mixture Σ_s w_s P_s.
    """
    samples = samples.double()
    if weights is not None:
        keep = weights > 0
        samples, weights = samples[:, keep], weights[keep].double()
        weights = weights / weights.sum()
    ordered, order = samples.sort(dim=1)
    if weights is None:
        mid = (torch.arange(ordered.shape[1], dtype=torch.float64, device=ordered.device) + 0.5) / ordered.shape[1]
        mid = mid.expand_as(ordered).contiguous()
    else:
        mass = weights[order]  # (K, N)
        mid = mass.cumsum(1) - mass / 2
    levels = (torch.arange(count, dtype=torch.float64, device=ordered.device) + 0.5) / count
    return _interp(levels, mid, ordered)


def _positions(a: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """a's n_C-vectors as (B, n_C, N), only those where `weight` > MASK_THRESHOLD when there is one."""
    f = a.flatten(2)
    if weight is None:
        return f
    return f[:, :, weight.flatten() > MASK_THRESHOLD]


def sliced_cost(a: torch.Tensor, target: Statistics, weight: torch.Tensor | None = None) -> torch.Tensor:
    """J_style[l] = SW²(S, G) = (1/K) Σ_k (1/N) Σ_n (sort(Gθ_k)_n − Q_{S,k}((n + ½)/N))² for each G of
    the batch `a`, shape (B,).

    Heitz et al. 2021, "A Sliced Wasserstein Loss for Neural Texture Synthesis", eq. 5-8: project each
    position's n_C-vector on K unit directions θ_k; in 1-D optimal transport pairs the sorted samples,
    so W2² of the projections is the mean squared difference between G's sorted projections
    sort(Gθ_k) (N = G's count of positions) and S's quantile function Q_{S,k} at the same levels: the
    target's SLICED_QUANTILES stored quantiles, linearly interpolated to N. Averaged over the
    directions, it is the sliced W2² in activation² units, on the scale of the w2 cost's W2²/n_C (for
    directions uniform on the sphere E_θ[(θᵀΔμ)²] = ‖Δμ‖²/n_C).

    Unlike Heitz et al., the directions are FIXED (`sliced_directions`, K = n_C seeded by n_C, stored
    in the target), not redrawn every iteration: L-BFGS needs one deterministic objective across its
    line search and history. With a `weight` map only the positions where it is above ½ count (sorting
    needs whole samples; a soft mask is cut, not weighed).
    """
    a = _at_least_fp32(a)
    f = _positions(a, weight)  # (B, n_C, N)
    if f.shape[2] == 0:
        return a.new_zeros(a.shape[0])
    directions = target["directions"].to(a.dtype)  # (n_C, K)
    projected = (directions.T @ f).sort(dim=2).values  # (B, K, N)
    quantiles = F.interpolate(target["quantiles"].to(a.dtype), size=f.shape[2], mode="linear", align_corners=False)
    return (projected - quantiles).pow(2).mean((1, 2))


# --- the three entry points -----------------------------------------------------------------------------


def style_statistics(kind: str, a: torch.Tensor, weight: torch.Tensor | None = None) -> Statistics:
    """The target statistics of style activation `a` (1, n_C, n_H, n_W), positions weighted by `weight`.

    gram: {"gram": Ĝ} (1, n_C, n_C). w2: {"mean": μ (1, n_C), "second": E[a aᵀ], "cov": Σ, "cov_sqrt":
    (Σ + δI)^½ (each (1, n_C, n_C)), "ridge": δ ()}. sliced: {"directions": (n_C, K), "quantiles": the
    quantile function of each projection at SLICED_QUANTILES levels (1, K, Q)}.
    """
    if kind == "gram":
        return {"gram": guided_gram(a.detach(), weight)}
    dtype = _at_least_fp32(a).dtype
    if kind == "w2":
        mean, cov = gaussian_fit(a.detach().double(), None if weight is None else weight.double())
        return _w2_target(mean, cov + mean.unsqueeze(2) * mean.unsqueeze(1), dtype)
    if kind == "sliced":
        f = _positions(a.detach().double(), weight)[0]  # (n_C, N)
        directions = sliced_directions(f.shape[0], torch.float64, f.device)
        quantiles = weighted_quantiles(directions.T @ f).unsqueeze(0)
        return {"directions": directions.to(dtype), "quantiles": quantiles.to(dtype)}
    raise ValueError(f"unknown style cost {kind!r}")


def blend_statistics(kind: str, stats: Sequence[Statistics], weights: Sequence[float]) -> Statistics:
    """The statistics of several style images blended with `weights` (summing to 1).

    gram: the weighted mean of the normalised Grams. w2: the Gaussian fit of the mixture Σ_s w_s P_s:
    μ = Σ_s w_s μ_s, E[a aᵀ] = Σ_s w_s E_s[a aᵀ], Σ = E[a aᵀ] − μμᵀ (which holds the spread between the
    styles' means too), then its square root. sliced: the quantile function of each projection of the
    mixture, from all styles' stored quantiles pooled, style s's each with mass w_s/Q
    (`weighted_quantiles`).
    """
    if kind == "gram":  # a weighted mean of the normalised Grams
        return {"gram": sum(w * s["gram"] for w, s in zip(weights, stats, strict=True))}
    if kind == "w2":
        dtype = stats[0]["mean"].dtype
        mean = sum(w * s["mean"].double() for w, s in zip(weights, stats, strict=True))
        second = sum(w * s["second"].double() for w, s in zip(weights, stats, strict=True))
        return _w2_target(mean, second, dtype)
    if kind == "sliced":
        directions = stats[0]["directions"]
        if any(not torch.equal(s["directions"], directions) for s in stats):
            raise ValueError("sliced statistics to blend must share their directions (one layer)")
        pooled = torch.cat([s["quantiles"][0].double() for s in stats], dim=1)  # (K, Σ_s Q_s)
        counts = [s["quantiles"].shape[2] for s in stats]
        mass = torch.cat([torch.full((q,), w / q, dtype=torch.float64) for w, q in zip(weights, counts, strict=True)])
        quantiles = weighted_quantiles(pooled, mass.to(pooled.device)).unsqueeze(0)
        return {"directions": directions, "quantiles": quantiles.to(stats[0]["quantiles"].dtype)}
    raise ValueError(f"unknown style cost {kind!r}")


def style_layer_cost(
    kind: str, a: torch.Tensor, target: Statistics, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """J_style[l] of each G of the batch `a` (B, n_C, n_H, n_W) against `target`, shape (B,).

    gram: the seed's J_style[l] = ‖Ĝ[l](S) − Ĝ[l](G)‖²_F / (2·n_C)² (`costs.style_cost_of_grams`), over
    the region `weight` covers when one is given (activation⁴ units).

    w2: W2²(N(μ_S, Σ_S), N(μ_G, Σ_G)) / n_C = [‖μ_S − μ_G‖² + tr(Σ_S) + tr(Σ_G) −
    2·tr((Σ_S^½ Σ_G Σ_S^½)^½)] / n_C, the Wasserstein-2 distance between Gaussian fits, per channel,
    positions weighted by `weight` (`w2_cost`: the ridge δI, the square root by eigendecomposition, the
    n_C×n_C stage in fp64).

    sliced: SW² = mean over K fixed directions θ_k and over G's N positions of (sort(Gθ_k)_n −
    Q_{S,k}((n + ½)/N))², Q_{S,k} the style's quantile function along θ_k; only positions where
    `weight` > ½ (`sliced_cost`).
    """
    if kind == "gram":
        return style_cost_of_grams(guided_gram(a, weight), target["gram"])
    if kind == "w2":
        return w2_cost(a, target, weight)
    if kind == "sliced":
        return sliced_cost(a, target, weight)
    raise ValueError(f"unknown style cost {kind!r}")
