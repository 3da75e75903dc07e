"""The reverse-time SDE and the probability-flow ODE, derived once from any process and any score.

Forward:      dx = f(t) x dt + g(t) dW                                   (lecture §5–6)
Reverse:      dx = [f(t) x − g(t)² ∇log p_t(x)] dt + g(t) dW̄,  t: T → 0   (Anderson 1982; lecture §5)
PF ODE:       dx/dt = f(t) x − ½ g(t)² ∇log p_t(x)                        (Song et al. 2021, eq. 13)
  the same:   dy/dσ̃ = ε̂(α y, t(σ̃))  in  σ̃ = σ/α,  y = x/α               (DDIM eq. 14; EDM eq. 4)

The score comes from a ``Denoiser`` as ∇log p_t = −ε̂/σ(t). Nothing here depends on which process it is:
samplers and the likelihood code call these two functions only.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._tensor import as_time, bcast


def reverse_sde_drift(denoiser, process, x: Tensor, t) -> Tensor:
    """The reverse SDE's drift f(t) x − g(t)² ∇log p_t(x) (a velocity in forward time; integrate it with
    a negative step to go from T to 0)."""
    t = as_time(t, x.shape[0], like=x)
    score = -denoiser(x, t).eps / bcast(process.sigma(t), x)
    return bcast(process.f(t), x) * x - bcast(process.g2(t), x) * score


def probability_flow(denoiser, process, x: Tensor, t, *, from_above: bool = False) -> Tensor:
    """dx/dt of the probability-flow ODE: f(t) x − ½ g(t)² ∇log p_t(x) = f(t) x + ½ g(t)² ε̂/σ(t).

    Its solutions carry p_T to p_0 with the same marginals as the SDE (Song et al. 2021, §4.3).
    ``from_above=True`` takes f and g² as their limits from above at t (``process.coefficient_time_above``):
    the velocity at the *end* of a reverse-time step that arrives at t. It differs from the value at t only
    where β(t) jumps at t (DDPM's piecewise-constant β, whose value at a grid time is the interval below it).
    """
    t = as_time(t, x.shape[0], like=x)
    eps = denoiser(x, t).eps
    tc = process.coefficient_time_above(t) if from_above else t
    return bcast(process.f(tc), x) * x + bcast(0.5 * process.g2(tc) / process.sigma(t), x) * eps


def noise_to_signal(process, t) -> float:
    """σ̃(t) = σ(t)/α(t), the PF-ODE's natural clock: it increases with t for every process."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return float(process.sigma(t) / process.alpha(t))


def time_of_noise_to_signal(process, s: float) -> Tensor:
    """The time t (a float64 0-d tensor) with σ̃(t) = s, through the process's inverse of λ = −2 log σ̃."""
    return process.t_from_log_snr(torch.tensor(-2.0 * math.log(s), dtype=torch.float64))


def scaled_probability_flow(denoiser, process, y: Tensor, s: float) -> Tensor:
    """dy/dσ̃ = ε̂(α(t) y, t) at t = t(σ̃ = s): the probability-flow ODE for y = x/α in σ̃ = σ/α.

    The same solutions as dx/dt = f x − ½ g² ∇log p_t (with x = α y), but the right-hand side depends on the
    schedule only through σ̃, so it is smooth even where β(t) jumps (DDPM's piecewise-constant β), which an
    adaptive solver in t has to step through one kink at a time.
    """
    t = time_of_noise_to_signal(process, s)
    return denoiser(bcast(process.alpha(t), y) * y, t).eps
