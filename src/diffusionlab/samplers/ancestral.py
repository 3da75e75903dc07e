"""Ancestral sampling (Ho et al. 2020, Algorithm 2; lecture §2) and DDIM (Song, Meng & Ermon 2021).

Both use the posterior q(x_s | x_t, x₀) of the process between consecutive grid times s < t with the model's
x̂₀ in place of x₀. On DDPM's full grid, ``ancestral`` is exactly the lecture's loop
x_{t−1} ~ p_θ(x_{t−1} | x_t) = N(μ̃_t(x_t, x̂₀), Σ_t) for t = T … 2, and ``sample``'s final denoising step is
the t = 1 step (its mean, as in Ho et al.). On a coarser grid it is ancestral sampling with skipped steps.
"""

from __future__ import annotations


from .._tensor import bcast, randn_like
from ..errors import UserError, check_range
from ..objectives import VARIANCES, reverse_mean_var
from ._loop import integrate


def ancestral(denoiser, process, x, grid, *, generator=None, callback=None, variance: str = "small"):
    """x_s ~ p_θ(x_s | x_t): x_s = μ_θ(x_t, t) + sqrt(Σ) z (``objectives.reverse_mean_var``) with Σ = σ̃²
    (``small``: β̃_t, the posterior variance) or Σ = σ²_{t|s} (``large``: β_t on the full grid). Ho et al. §3.2
    found both similar for samples.
    NFE = steps − 1 (+1 for the final denoising step of ``sample``)."""
    if variance not in VARIANCES:
        raise UserError(f"unknown variance {variance!r}: choose one of {', '.join(VARIANCES)}")

    def step(x, t, s):
        mean, var = reverse_mean_var(denoiser, x, s, t, variance)
        return mean + bcast(var.sqrt(), x) * randn_like(x, generator)

    return integrate(step, x, grid, callback)


def ddim(denoiser, process, x, grid, *, generator=None, callback=None, eta: float = 0.0):
    """DDIM (Song, Meng & Ermon 2021, eq. 12), in terms of the process's α, σ:

        x_s = α_s x̂₀ + sqrt(σ_s² − c²) ε̂ + c z,   c² = η² σ̃²(s, t)  (σ̃² the posterior variance).

    η = 0 is deterministic (a first-order solver of the probability-flow ODE in λ); η = 1 is ancestral
    sampling with the posterior variance; η ∈ [0, 1] (beyond 1, c² would exceed σ_s² on fine grids).
    NFE = steps − 1 (+1 for the final denoising step)."""
    eta = check_range("DDIM eta", eta, 0.0, 1.0)

    def step(x, t, s):
        d = denoiser(x, t)
        c2 = eta**2 * process.posterior_coefficients(s, t)[2]
        x_s = bcast(process.alpha(s), x) * d.x0 + bcast((process.sigma(s) ** 2 - c2).clamp(min=0).sqrt(), x) * d.eps
        if eta > 0:
            x_s = x_s + bcast(c2.sqrt(), x) * randn_like(x, generator)
        return x_s

    return integrate(step, x, grid, callback)
