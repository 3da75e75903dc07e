"""EDM's stochastic sampler (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative
Models", Algorithm 2), for every process.

EDM works with x = x₀ + σ ε (α = 1). Any process x_t = α_t x₀ + σ_t ε becomes that form after scaling:
x̃ = x/α_t = x₀ + σ̃ ε with σ̃ = σ_t/α_t = e^{−λ} (λ = log(α/σ)), and the denoiser in those variables is
D(x̃; σ̃) = x̂₀(α_t x̃, t). The probability-flow ODE is dx̃/dσ̃ = (x̃ − D(x̃; σ̃))/σ̃ = ε̂ (Karras et al. eq. 4
with s = 1, σ(t) = t), so this sampler runs Algorithm 2 in (x̃, σ̃) on the σ̃ of the grid times; for VE
(α = 1) it is Algorithm 2 exactly. For each step i = 0 … K−2 (K = len(grid), σ̃_i = σ̃(grid[i])):

    γ_i = min(S_churn/K, √2 − 1) if S_tmin ≤ σ̃_i ≤ S_tmax else 0
    σ̂ = σ̃_i (1 + γ_i),   x̂ = x̃_i + sqrt(σ̂² − σ̃_i²) S_noise z,  z ~ N(0, I)
    d = (x̂ − D(x̂; σ̂))/σ̂,   x̃_{i+1} = x̂ + (σ̃_{i+1} − σ̂) d
    if σ̃_{i+1} ≠ 0:  d' = (x̃_{i+1} − D(x̃_{i+1}; σ̃_{i+1}))/σ̃_{i+1},  x̃_{i+1} = x̂ + (σ̃_{i+1} − σ̂)(d + d')/2

σ̂ is mapped back to a time by ``process.t_from_log_snr`` (then ``snap``ped for DDPM, whose model knows only
its training times, and kept within [t_i, t_max]); σ̂ is recomputed from that time, so the added noise is
exact for the time the model sees. S_tmin, S_tmax are in σ̃ units. Departure from Algorithm 2: EDM's grid
ends with σ = 0 (a final Euler step x₀ = D(x̂; σ̂)); here the grid ends at σ̃(t_min) > 0 with a Heun step and
``sample``'s final denoising x̂₀(x_{t_min}, t_min) replaces that last jump (without churn at t_min).
With S_churn = 0 it is deterministic Heun (Karras et al. Algorithm 1) for the PF-ODE in σ̃ — unlike
``ode_heun``, which steps the PF-ODE in t.

NFE = 2(K − 1) − [σ̃(grid[−1]) = 0] (+1 for the final denoise), i.e. 2K − 1 with ``sample``'s grids.
"""

from __future__ import annotations

import math

import torch

from .._tensor import randn_like
from ..errors import UserError, check_range


def edm_heun(denoiser, process, x, grid, *, generator=None, callback=None, S_churn: float = 0.0,
             S_tmin: float = 0.0, S_tmax: float = float("inf"), S_noise: float = 1.0):
    """Karras et al. 2022 Algorithm 2 in x̃ = x/α, σ̃ = σ/α (see the module docstring). ``S_churn`` = 0:
    deterministic. NFE = 2(steps − 1) (+1 for the final denoise)."""
    S_churn = check_range("edm_heun S_churn", S_churn, 0.0)
    S_noise = check_range("edm_heun S_noise", S_noise, 0.0)
    S_tmin = check_range("edm_heun S_tmin", S_tmin, 0.0)
    S_tmax = check_range("edm_heun S_tmax", S_tmax, 0.0)
    if S_tmin > S_tmax:
        raise UserError(f"edm_heun S_tmin = {S_tmin:g} exceeds S_tmax = {S_tmax:g}: churn would apply nowhere")
    steps = len(grid)
    t_max = float(process.t_max)
    gamma_max = min(S_churn / steps, math.sqrt(2) - 1) if steps > 0 else 0.0

    def alpha(t):
        return float(process.alpha(torch.as_tensor(t, dtype=torch.float64)))

    def sigma_tilde(t):
        t = torch.as_tensor(t, dtype=torch.float64)
        return float(process.sigma(t) / process.alpha(t))

    def eps(x_tilde, t):  # d = (x̃ − D(x̃; σ̃))/σ̃ = ε̂(α x̃, t)
        return denoiser(alpha(t) * x_tilde, t).eps

    x_tilde = x / alpha(grid[0])
    for i in range(steps - 1):
        t, s = grid[i], grid[i + 1]
        sig_i, sig_next = sigma_tilde(t), sigma_tilde(s)
        gamma = gamma_max if S_tmin <= sig_i <= S_tmax else 0.0
        t_hat, sig_hat = t, sig_i
        if gamma > 0:
            lam_hat = torch.tensor(-2 * math.log(sig_i * (1 + gamma)), dtype=torch.float64)  # log-SNR of σ̂
            t_hat = process.snap(process.t_from_log_snr(lam_hat)).clamp(min=float(t), max=t_max)
            sig_hat = sigma_tilde(t_hat)
            x_tilde = x_tilde + math.sqrt(max(sig_hat**2 - sig_i**2, 0.0)) * S_noise * randn_like(x_tilde, generator)
        d = eps(x_tilde, t_hat)
        x_next = x_tilde + (sig_next - sig_hat) * d
        if sig_next > 0:
            x_next = x_tilde + (sig_next - sig_hat) * 0.5 * (d + eps(x_next, s))
        x_tilde = x_next
        if callback is not None:
            callback(i + 1, s, alpha(s) * x_tilde)
    return alpha(grid[-1]) * x_tilde
