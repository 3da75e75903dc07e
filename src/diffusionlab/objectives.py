"""Training objectives and the terms of the ELBO (lecture §3 and §7).

* Gaussian densities and KL divergences in closed form, and the discretised Gaussian decoder of Ho et al.
  (§3.3) for integer-valued data;
* the reverse step p_θ(x_s|x_t) (``reverse_mean_var``), shared with ancestral sampling;
* the ELBO terms of any process on any time grid: the prior KL(q(x_T|x₀) ‖ p_T), the KL terms
  KL(q(x_s|x_t, x₀) ‖ p_θ(x_s|x_t)) between consecutive grid times, and the decoder −log p_θ(x₀|x_{t_min});
  on DDPM's full grid these are exactly L_T, L_{t−1} and L_0 of Ho et al. eq. 5;
* the same bound in its first (Jensen) form on one sampled chain: log q(x_{1:T}|x₀), log p_θ(x_{0:T}) and
  ``chain_elbo``;
* the ideal score-matching objective (``explicit_score_matching``, for data with a known score);
* ``DenoisingLoss`` — Ho's L_simple and denoising score matching (Vincent 2011) with a choice of weighting
  λ(t) and of the distribution of t; ``ELBOLoss`` — the full variational bound with t uniform or importance
  sampled on the loss history (Nichol & Dhariwal 2021, §3.3).

All per-example losses have shape (n,).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._tensor import as_time, bcast, randn_like, sum_except_batch
from .errors import UserError
from .grids import time_grid
from .parametrization import Denoiser, check_prediction, checked_prediction, from_x0_eps

# --------------------------------------------------------------------------------------------------
# Gaussian building blocks (elementwise)


def gaussian_kl(mean1: Tensor, var1, mean2: Tensor, var2) -> Tensor:
    """KL(N(m₁, v₁) ‖ N(m₂, v₂)) = ½ [log(v₂/v₁) + (v₁ + (m₁ − m₂)²)/v₂ − 1], elementwise."""
    var1, var2 = torch.as_tensor(var1, dtype=mean1.dtype), torch.as_tensor(var2, dtype=mean1.dtype)
    return 0.5 * (torch.log(var2) - torch.log(var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1)


def gaussian_log_prob(x: Tensor, mean: Tensor, var) -> Tensor:
    """log N(x; m, v) = −½ [log(2πv) + (x − m)²/v], elementwise."""
    var = torch.as_tensor(var, dtype=x.dtype)
    return -0.5 * (math.log(2 * math.pi) + torch.log(var) + (x - mean) ** 2 / var)


def _log_normal_mass(a: Tensor, b: Tensor) -> Tensor:
    """log(Φ(b) − Φ(a)) for a < b, stable in both tails (reflect when the interval lies above 0)."""
    upper = a > 0
    lo, hi = torch.where(upper, -b, a), torch.where(upper, -a, b)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    return log_hi + torch.log1p(-torch.exp((log_lo - log_hi).clamp(max=0)).clamp(max=1 - 1e-15))


def discretized_gaussian_log_prob(x: Tensor, mean: Tensor, var, levels: int) -> Tensor:
    """log P(x) of a Gaussian N(mean, var) integrated over x's bin (Ho et al. 2020, eq. 13), elementwise.

    ``x`` lies on the grid of ``levels`` values −1, −1 + δ, …, 1 with δ = 2/(levels − 1) (integer data
    0 … L − 1 scaled to [−1, 1]); the bin of x is [x − δ/2, x + δ/2], with the outer edges at ∓∞ for the
    extreme values so that the probabilities sum to one.
    """
    std = torch.as_tensor(var, dtype=x.dtype).sqrt()
    half = 1.0 / (levels - 1)
    lo = torch.where(x <= -1 + half / 2, torch.full_like(x, -math.inf), (x - half - mean) / std)
    hi = torch.where(x >= 1 - half / 2, torch.full_like(x, math.inf), (x + half - mean) / std)
    return _log_normal_mass(lo, hi)


# --------------------------------------------------------------------------------------------------
# ELBO terms of a process on a grid


def prior_kl(process, x0: Tensor, t_max=None) -> Tensor:
    """KL(q(x_T | x₀) ‖ p_T) summed over dimensions: the ELBO's prior term L_T (no parameters)."""
    t = as_time(process.t_max if t_max is None else t_max, x0.shape[0], like=x0)
    mean = bcast(process.alpha(t), x0) * x0
    return sum_except_batch(gaussian_kl(mean, bcast(process.sigma(t) ** 2, x0), torch.zeros_like(x0),
                                        process.prior_std**2))


VARIANCES = ("small", "large")


def reverse_variance(process, s: Tensor, t: Tensor, variance: str) -> Tensor:
    """The fixed variance Σ of p_θ(x_s | x_t): ``small`` = σ̃² (β̃_t), ``large`` = σ²_{t|s} (β_t)."""
    if variance == "small":
        return process.posterior_coefficients(s, t)[2]
    if variance == "large":
        return process.transition(s, t)[1]
    raise UserError(f"unknown variance {variance!r}: choose one of {', '.join(VARIANCES)}")


def reverse_mean_var(denoiser: Denoiser, x_t: Tensor, s, t, variance: str = "small",
                     x0_hat: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Mean and variance of the reverse step p_θ(x_s | x_t) = N(μ_θ(x_t, t), Σ I), s < t (lecture §2):

        μ_θ(x_t, t) = μ̃(x_t, x̂₀(x_t, t)) = c_x0 x̂₀ + c_xt x_t,   Σ = σ̃² (``small``) or σ²_{t|s} (``large``),

    the posterior mean of q(x_s | x_t, x₀) with the model's x̂₀ in place of x₀. On DDPM's full grid (s = t − 1/T)
    and an ε-model this is Ho et al.'s eq. 11, μ_θ = (x_t − β_t/sqrt(1 − ᾱ_t) ε_θ)/sqrt(α_t), with Σ = β̃_t or β_t.
    The variance has shape (n,) (or is 0-d); ancestral sampling draws from this, the ELBO's KL terms compare to it.
    ``x0_hat``: the denoiser's x̂₀(x_t, t) if already computed (then the model is not called).
    """
    process = denoiser.process
    x0_hat = denoiser(x_t, t).x0 if x0_hat is None else x0_hat
    mean, posterior_var = process.posterior(x_t, x0_hat, s, t)
    # σ̃² comes with the posterior; computing it again would double the cost of each ancestral step
    return mean, posterior_var if variance == "small" else reverse_variance(process, s, t, variance)


def reverse_log_prob(denoiser: Denoiser, x_s: Tensor, x_t: Tensor, s, t, variance: str = "small") -> Tensor:
    """log p_θ(x_s | x_t) = log N(x_s; μ_θ(x_t, t), Σ I), summed over dimensions: shape (n,)."""
    mean, var = reverse_mean_var(denoiser, x_t, s, t, variance)
    return sum_except_batch(gaussian_log_prob(x_s, mean, bcast(var, x_s)))


def diffusion_kl(denoiser: Denoiser, x0: Tensor, x_t: Tensor, s: Tensor, t: Tensor, variance: str = "small",
                 x0_hat: Tensor | None = None) -> Tensor:
    """KL(q(x_s | x_t, x₀) ‖ p_θ(x_s | x_t)) summed over dimensions (Ho et al. eq. 5, the L_{t−1} terms).

    p_θ(x_s | x_t) = N(μ_θ, Σ) of ``reverse_mean_var``. s, t are (n,) tensors (per-example times allowed).
    For an ε-model and Σ = σ̃² the KL is Ho et al.'s eq. 12, β_t²/(2 Σ α_t (1 − ᾱ_t)) ‖ε − ε_θ(x_t, t)‖² on DDPM's
    grid: "the KL becomes ‖ε − ε_θ‖² up to weights" (lecture §3; tested). ``x0_hat`` as in ``reverse_mean_var``.
    """
    q_mean, q_var = denoiser.process.posterior(x_t, x0, s, t)
    p_mean, p_var = reverse_mean_var(denoiser, x_t, s, t, variance, x0_hat)
    return sum_except_batch(gaussian_kl(q_mean, bcast(q_var, x0), p_mean, bcast(p_var, x0)))


def decoder_nll(denoiser: Denoiser, x0: Tensor, x_t: Tensor, t: Tensor, levels: int | None = None,
                x0_hat: Tensor | None = None) -> Tensor:
    """−log p_θ(x₀ | x_{t_min}) summed over dimensions (the ELBO's L_0).

    p_θ(x₀ | x_t) = N(x̂₀(x_t, t), σ_t²) with σ_t² the variance of q(x_t | x₀); for DDPM's first step σ_1² = β_1
    (Ho et al. §3.3). Not the transition variance from time 0, σ_t² − α_t² σ(0)²: that is the same where σ(0) = 0
    (DDPM, VP, sub-VP), but on VE σ(0) = σ_min, and at t_min it leaves ≈ 1e-8 of the 1e-4 of noise.
    Integer data (``levels``) use the discretised decoder (a probability); otherwise a density.
    ``x0_hat`` as in ``reverse_mean_var``.
    """
    process = denoiser.process
    var = bcast(process.sigma(t) ** 2, x0)
    mean = denoiser(x_t, t).x0 if x0_hat is None else x0_hat
    if levels is None:
        return -sum_except_batch(gaussian_log_prob(x0, mean, var))
    return -sum_except_batch(discretized_gaussian_log_prob(x0, mean, var, levels))


def _strata(n_terms: int, strata: int) -> list[tuple[int, int]]:
    """Split term indices 0 … n_terms − 1 (index 0 at t_max) into ``strata`` contiguous groups whose sizes
    grow geometrically from the t_min end: the terms near t = 0 are the largest and vary the most, so they get
    groups of one, which is what makes the stratified estimate's variance small."""
    strata = min(strata, n_terms)
    points = strata
    while True:  # smallest geometric grid with ``strata`` distinct integer edges
        from_end = torch.unique(torch.round(torch.logspace(0, math.log10(n_terms + 1), points + 1,
                                                           dtype=torch.float64)).long() - 1)
        if len(from_end) >= strata + 1 or points > 100 * n_terms:
            break
        points += 1
    edges = sorted({n_terms - int(r) for r in from_end} | {0, n_terms})
    return list(zip(edges[:-1], edges[1:]))


def negative_elbo(denoiser: Denoiser, x0: Tensor, *, steps: int | None = None, variance: str = "small",
                  levels: int | None = None, strata: int | None = None, generator=None) -> Tensor:
    """−ELBO per example (n,) in nats, on the process's uniform grid of ``steps`` times (lecture §3):

        −ELBO = KL(q(x_T|x₀) ‖ p_T) + Σ_k KL(q(x_{t_{k+1}}|x_{t_k}, x₀) ‖ p_θ) + (−log p_θ(x₀ | x_{t_min})).

    ``strata=None`` evaluates every KL term. Otherwise the K − 1 terms are split into ``strata`` contiguous
    groups and one term per group is drawn uniformly for each example, weighted by the group size: an
    unbiased stratified estimate of the same sum (its variance is the per-example spread of the result).
    """
    process = denoiser.process
    grid = time_grid(process, steps if steps is not None else process.default_steps()).to(x0.dtype)
    n = x0.shape[0]
    total = prior_kl(process, x0, grid[0])
    n_terms = len(grid) - 1
    groups = [(k, k + 1) for k in range(n_terms)] if strata is None or strata >= n_terms else _strata(n_terms, strata)
    for a, b in groups:
        if b - a == 1:
            k = torch.full((n,), a, dtype=torch.long)
        else:
            k = torch.randint(a, b, (n,), generator=generator, device=generator.device if generator else None).cpu()
        t, s = grid[k].to(x0.device), grid[k + 1].to(x0.device)
        x_t = process.marginal(x0, t, randn_like(x0, generator))
        total = total + (b - a) * diffusion_kl(denoiser, x0, x_t, s, t, variance)
    t_last = as_time(grid[-1], n, like=x0)
    x_last = process.marginal(x0, t_last, randn_like(x0, generator))
    return total + decoder_nll(denoiser, x0, x_last, t_last, levels)


# --------------------------------------------------------------------------------------------------
# The ELBO in its first (chain) form: log p_θ(x_{0:T}) − log q(x_{1:T} | x₀) on one sampled chain
#
# A chain lives on a grid t_max = t_0 > t_1 > … > t_{K−1} = t_min (``time_grid``; DDPM's full grid is T/T … 1/T)
# and is the list ``xs`` with xs[k] the state at grid[k]: xs[0] is x_T, xs[−1] is x_1 (the state next to x₀).


def forward_chain(process, x0: Tensor, grid: Tensor, generator=None) -> list[Tensor]:
    """x_{1:T} ~ q(x_{1:T} | x₀) = q(x_{t_min} | x₀) ∏_k q(x_{t_k} | x_{t_{k+1}}) (lecture §1), drawn step by step:
    x_{t_min} = α(t_min) x₀ + σ(t_min) ε, then x_t = α_{t|s} x_s + σ_{t|s} ε. On DDPM's grid every step is the
    lecture's q(x_t | x_{t−1}) = N(sqrt(1 − β_t) x_{t−1}, β_t I). Returns xs in grid order (xs[0] = x_T)."""
    n = x0.shape[0]
    xs = [process.marginal(x0, as_time(grid[-1], n, like=x0), randn_like(x0, generator))]
    for k in range(len(grid) - 2, -1, -1):
        a_ts, s2_ts = process.transition(as_time(grid[k + 1], n, like=x0), as_time(grid[k], n, like=x0))
        xs.append(bcast(a_ts, x0) * xs[-1] + bcast(s2_ts.sqrt(), x0) * randn_like(x0, generator))
    return xs[::-1]


def chain_log_prob(process, x0: Tensor, xs: list[Tensor], grid: Tensor) -> Tensor:
    """log q(x_{1:T} | x₀) = log q(x_{t_min} | x₀) + Σ_k log q(x_{t_k} | x_{t_{k+1}}), shape (n,) (lecture §1:
    q(x_{1:T} | x₀) = ∏_{t=1}^T q(x_t | x_{t−1}), with q(x_1 | x_0) the closed form at t_min)."""
    n = x0.shape[0]
    t_min = as_time(grid[-1], n, like=x0)
    total = sum_except_batch(gaussian_log_prob(xs[-1], bcast(process.alpha(t_min), x0) * x0,
                                               bcast(process.sigma(t_min) ** 2, x0)))
    for k in range(len(grid) - 1):
        a_ts, s2_ts = process.transition(as_time(grid[k + 1], n, like=x0), as_time(grid[k], n, like=x0))
        total = total + sum_except_batch(gaussian_log_prob(xs[k], bcast(a_ts, x0) * xs[k + 1], bcast(s2_ts, x0)))
    return total


def joint_log_prob(denoiser: Denoiser, x0: Tensor, xs: list[Tensor], grid: Tensor, variance: str = "small",
                   levels: int | None = None) -> Tensor:
    """log p_θ(x_{0:T}) = log p(x_T) + Σ_{t=T}^{2} log p_θ(x_{t−1} | x_t) + log p_θ(x₀ | x_1), shape (n,)
    (lecture §2), with p(x_T) the prior N(0, prior_std² I), p_θ(x_s | x_t) of ``reverse_mean_var`` and the
    decoder p_θ(x₀ | x_{t_min}) of ``decoder_nll`` (a probability for integer data on ``levels``)."""
    n = x0.shape[0]
    total = denoiser.process.prior_log_prob(xs[0])
    for k in range(len(grid) - 1):
        t, s = as_time(grid[k], n, like=x0), as_time(grid[k + 1], n, like=x0)
        total = total + reverse_log_prob(denoiser, xs[k + 1], xs[k], s, t, variance)
    return total - decoder_nll(denoiser, x0, xs[-1], as_time(grid[-1], n, like=x0), levels)


def chain_elbo(denoiser: Denoiser, x0: Tensor, *, steps: int | None = None, variance: str = "small",
               levels: int | None = None, generator=None) -> Tensor:
    """The ELBO in its first form (lecture §3, by Jensen's inequality), estimated on one chain per example:

        log p_θ(x₀) ≥ E_{q(x_{1:T}|x₀)}[log p_θ(x_{0:T}) − log q(x_{1:T} | x₀)],   x_{1:T} ~ q(x_{1:T} | x₀).

    Unbiased for the same bound as ``−negative_elbo`` (its KL form) on the same grid, but with the variance of
    the whole chain: the "naive training" of the lecture. Shape (n,), nats.
    """
    process = denoiser.process
    grid = time_grid(process, steps if steps is not None else process.default_steps()).to(x0.dtype)
    xs = forward_chain(process, x0, grid, generator)
    return joint_log_prob(denoiser, x0, xs, grid, variance, levels) - chain_log_prob(process, x0, xs, grid)


# --------------------------------------------------------------------------------------------------
# Training losses

WEIGHTINGS = ("eps", "x0", "v", "likelihood")


def eps_space_weight(process, t: Tensor, weighting: str) -> Tensor:
    """λ(t) multiplying ‖ε̂ − ε‖² (so that the loss equals a known objective):

    * ``eps``        — 1: Ho's L_simple; equal to denoising score matching with λ(t) = σ(t)² (lecture §7);
    * ``x0``         — σ²/α² = 1/SNR(t): the same as ‖x̂₀ − x₀‖² (x̂₀ − x₀ = (σ/α)(ε − ε̂));
    * ``v``          — ((α² + σ²)/α)²: the same as ‖v̂ − v‖²;
    * ``likelihood`` — ½ g(t)²/σ(t)² = −½ dλ/dt: score matching with λ(t) = g(t)², whose integral over t is
      the continuous-time −ELBO up to constants (Song, Durkan, Murray & Ermon 2021; Kingma et al. 2021).
    """
    a, s = process.alpha(t), process.sigma(t)
    if weighting == "eps":
        return torch.ones_like(t)
    if weighting == "x0":
        return s**2 / a**2
    if weighting == "v":
        return ((a**2 + s**2) / a) ** 2
    if weighting == "likelihood":
        return 0.5 * process.g2(t) / s**2
    raise UserError(f"unknown weighting {weighting!r}: choose one of {', '.join(WEIGHTINGS)}")


def _own_space_weight(process, t: Tensor, prediction: str) -> Tensor:
    """λ(t) that turns ‖ε̂ − ε‖² into the squared error of the prediction itself."""
    if prediction == "score":
        return 1 / process.sigma(t) ** 2
    return eps_space_weight(process, t, prediction)


TIME_SAMPLINGS = ("uniform", "logsnr")


def sample_times(process, n: int, generator, time_sampling: str = "uniform") -> tuple[Tensor, Tensor]:
    """Draw t for training and return (t, importance weight).

    * ``uniform`` — t ~ U{1/T, …, 1} for a discrete process, t ~ U[t_min, t_max] otherwise; weight 1.
    * ``logsnr``  — λ ~ U[λ(t_max), λ(t_min)], t = λ⁻¹(λ): density p(t) = −λ'(t)/Δλ, so with the likelihood
      weighting −½λ'(t) the importance-weighted integrand is the constant ½Δλ·‖ε̂ − ε‖² (Song et al. 2021b
      §5; Kingma et al. 2021). The weight is u(t)/p(t), u the uniform density on [t_min, t_max], so that
      E_p[weight·h(t)] = E_u[h(t)]: any weighting stays an unbiased estimate of the uniform-t objective.
    """
    device = generator.device if generator is not None else None
    if time_sampling == "uniform":
        if process.discrete:
            t = torch.randint(1, process.T + 1, (n,), generator=generator, device=device).double() / process.T
        else:
            t = process.t_min + (process.t_max - process.t_min) * torch.rand(n, generator=generator, device=device,
                                                                             dtype=torch.float64)
        return t, torch.ones_like(t)
    if time_sampling == "logsnr":
        if process.discrete:
            raise UserError("time_sampling='logsnr' needs a continuous process (vp, subvp, ve)")
        ends = torch.tensor([process.t_max, process.t_min], dtype=torch.float64)
        lam_lo, lam_hi = process.log_snr(ends)
        lam = lam_lo + (lam_hi - lam_lo) * torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        t = process.t_from_log_snr(lam)
        # p(t) = (−dλ/dt)/Δλ = (g²/σ²)/Δλ;  weight = u(t)/p(t) with u(t) = 1/(t_max − t_min)
        p = process.g2(t) / process.sigma(t) ** 2 / (lam_hi - lam_lo)
        return t, 1 / ((process.t_max - process.t_min) * p)
    raise UserError(f"unknown time sampling {time_sampling!r}: choose one of {', '.join(TIME_SAMPLINGS)}")


def explicit_score_matching(denoiser: Denoiser, score_fn, x_t: Tensor, t) -> Tensor:
    """‖s_θ(x_t, t) − ∇log p_t(x_t)‖² summed over dimensions, shape (n,): the ideal objective of lecture §7,
    ∫∫ p_t(x) ‖s_θ(x, t) − ∇log p_t(x)‖² dx dt, at samples x_t ~ p_t (Hyvärinen 2005).

    It needs the true score ``score_fn(x_t, t)``, known only for toy data (the exact Gaussian mixtures of
    ``data``); training uses its tractable twin, denoising score matching ‖s_θ − ∇log p_t(x_t | x₀)‖² with
    ∇log p_t(x_t | x₀) = −ε/σ (``DenoisingLoss``), which differs from it by a constant in θ (Vincent 2011; tested).
    """
    t = as_time(t, x_t.shape[0], like=x_t)
    return sum_except_batch((denoiser.score(x_t, t) - score_fn(x_t, t)) ** 2)


class DenoisingLoss:
    """E_t E_{x₀, ε} [ λ(t) ‖ε̂(x_t, t) − ε‖² ] averaged over dimensions, with x_t = α x₀ + σ ε.

    With ``weighting="eps"`` and t uniform this is Ho et al.'s L_simple (lecture §3) and, equivalently,
    denoising score matching σ(t)²‖s_θ(x_t, t) − ∇log q(x_t|x₀)‖² (Vincent 2011; lecture §7), since
    ∇log q(x_t|x₀) = −ε/σ. The error is computed in the network's own output space (ε, x₀, v or score)
    and reweighted, which avoids dividing by σ near t = 0.
    """

    def __init__(self, process, prediction: str = "eps", weighting: str = "eps", time_sampling: str = "uniform"):
        if weighting not in WEIGHTINGS:
            raise UserError(f"unknown weighting {weighting!r}: choose one of {', '.join(WEIGHTINGS)}")
        if time_sampling not in TIME_SAMPLINGS:
            raise UserError(f"unknown time sampling {time_sampling!r}: choose one of {', '.join(TIME_SAMPLINGS)}")
        self.process, self.prediction = process, check_prediction(prediction)
        self.weighting, self.time_sampling = weighting, time_sampling

    def __call__(self, model, x0: Tensor, generator=None) -> Tensor:
        t, w = sample_times(self.process, x0.shape[0], generator, self.time_sampling)
        t, w = t.to(device=x0.device), w.to(device=x0.device)
        eps = randn_like(x0, generator)
        x_t = self.process.marginal(x0, t, eps)
        a, s = self.process.alpha(t), self.process.sigma(t)
        target = from_x0_eps(x0, eps, self.prediction, a, s)
        err = (checked_prediction(model(x_t, t.to(x0.dtype)), x_t) - target).pow(2).reshape(x0.shape[0], -1).mean(dim=1)
        lam = eps_space_weight(self.process, t, self.weighting) / _own_space_weight(self.process, t, self.prediction)
        return (w * lam).to(x0.dtype) * err


class ELBOLoss:
    """The full −ELBO of a discrete process, one term per example (Ho et al. eq. 5; lecture §3):

        −ELBO = L_T + Σ_{i=2}^T L_{i−1} + L_0  ≈  L_T + T·L_i,  i ~ U{1 … T}  (L_i for i = 1 is the decoder),

    averaged over dimensions (nats/dim). ``time_sampling="importance"`` draws i ∝ sqrt(E[L_i²]) over the last
    ``history`` values of each term and divides by T·p(i) (Nichol & Dhariwal 2021, §3.3, eq. 18), after every
    term has a full history; until then i is uniform. The history is the loss's state: ``state_dict()`` /
    ``load_state_dict()``, which the trainer saves in every checkpoint so that a resumed run draws the same i.
    """

    def __init__(self, process, prediction: str = "eps", variance: str = "small", levels: int | None = None,
                 time_sampling: str = "uniform", history: int = 10):
        if not process.discrete:
            raise UserError("the ELBO loss needs a discrete process (ddpm); use weighting='likelihood' for SDEs")
        if time_sampling not in ("uniform", "importance"):
            raise UserError(f"unknown time sampling {time_sampling!r} for the ELBO: choose 'uniform' or 'importance'")
        reverse_variance(process, torch.tensor(0.5), torch.tensor(1.0), variance)  # validates the name
        self.process, self.prediction, self.variance, self.levels = process, check_prediction(prediction), variance, levels
        self.time_sampling = time_sampling
        self._history = torch.zeros(process.T, history, dtype=torch.float64)
        self._count = torch.zeros(process.T, dtype=torch.long)

    def state_dict(self) -> dict[str, Tensor]:
        """The loss history (T × history values) and the number of values seen per term."""
        return {"history": self._history.clone(), "count": self._count.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        expected = {"history": self._history, "count": self._count}
        for name, current in expected.items():
            value = state.get(name)
            if value is None or value.shape != current.shape:
                got = "missing" if value is None else f"shape {tuple(value.shape)}"
                raise UserError(f"the ELBO loss state {name!r} is {got}, this loss needs shape "
                                f"{tuple(current.shape)} (T={self.process.T}, history={self._history.shape[1]})")
        self._history = state["history"].to(dtype=torch.float64, device="cpu").clone()
        self._count = state["count"].to(dtype=torch.long, device="cpu").clone()

    def _probabilities(self) -> Tensor:
        T = self.process.T
        if self.time_sampling == "uniform" or bool((self._count < self._history.shape[1]).any()):
            return torch.full((T,), 1.0 / T, dtype=torch.float64)
        p = self._history.pow(2).mean(dim=1).sqrt()
        p = p / p.sum()
        return 0.999 * p + 0.001 / T  # keep every term reachable

    def _record(self, i: Tensor, losses: Tensor) -> None:
        """Append each term's new values to its history (the last ``history`` values are kept)."""
        losses = losses.detach().double().cpu()
        size = self._history.shape[1]
        for idx in torch.unique(i).tolist():
            values = torch.cat([self._history[idx - 1], losses[i == idx]])[-size:]
            self._history[idx - 1] = values
            self._count[idx - 1] += int((i == idx).sum())

    def __call__(self, model, x0: Tensor, generator=None) -> Tensor:
        process, T, n = self.process, self.process.T, x0.shape[0]
        probs = self._probabilities()
        u = torch.rand(n, generator=generator, dtype=torch.float64,
                       device=generator.device if generator is not None else None).cpu()
        i = torch.searchsorted(torch.cumsum(probs, 0), u).clamp(max=T - 1) + 1  # inverse-CDF draw of i
        t = (i.double() / T).to(x0.device)
        denoiser = Denoiser(model, process, self.prediction)
        x_t = process.marginal(x0, t, randn_like(x0, generator))
        # One model call for the whole batch (a DDP step, or a network with batch statistics, sees one forward).
        x0_hat = denoiser(x_t, t).x0
        # Each example gets its own term only: L_0 (the decoder) for i = 1, L_{i−1} (a KL) otherwise. The KL at
        # i = 1 (s = 0, σ̃² = 0) is infinite, and torch.where would send its NaN gradient through the masked branch.
        first = (i == 1).to(x0.device)
        term = torch.zeros(n, dtype=x0.dtype, device=x0.device)
        if bool(first.any()):
            term[first] = decoder_nll(denoiser, x0[first], x_t[first], t[first], self.levels, x0_hat[first])
        if bool((~first).any()):
            rest = ~first
            term[rest] = diffusion_kl(denoiser, x0[rest], x_t[rest], t[rest] - 1.0 / T, t[rest], self.variance,
                                      x0_hat[rest])
        self._record(i, term)
        weight = (1.0 / (T * probs[i - 1])).to(device=x0.device, dtype=x0.dtype)
        d = x0[0].numel()
        return (prior_kl(process, x0) + T * weight * term) / d
