"""The reverse-time SDE and the probability-flow ODE, derived once from any process and any score.

Forward:      dx = f(t) x dt + g(t) dW                                   (lecture §5–6)
Reverse:      dx = [f(t) x − g(t)² ∇log p_t(x)] dt + g(t) dW̄,  t: T → 0   (Anderson 1982; lecture §5)
PF ODE:       dx/dt = f(t) x − ½ g(t)² ∇log p_t(x)                        (Song et al. 2021, eq. 13)

The score comes from a ``Denoiser`` as ∇log p_t = −ε̂/σ(t). Nothing here depends on which process it is:
samplers and the likelihood code call these two functions only.
"""

from __future__ import annotations

from torch import Tensor

from ._tensor import as_time, bcast


def reverse_sde_drift(denoiser, process, x: Tensor, t) -> Tensor:
    """The reverse SDE's drift f(t) x − g(t)² ∇log p_t(x) (a velocity in forward time; integrate it with
    a negative step to go from T to 0)."""
    t = as_time(t, x.shape[0], like=x)
    score = -denoiser(x, t).eps / bcast(process.sigma(t), x)
    return bcast(process.f(t), x) * x - bcast(process.g2(t), x) * score


def probability_flow(denoiser, process, x: Tensor, t) -> Tensor:
    """dx/dt of the probability-flow ODE: f(t) x − ½ g(t)² ∇log p_t(x) = f(t) x + ½ g(t)² ε̂/σ(t).

    Its solutions carry p_T to p_0 with the same marginals as the SDE (Song et al. 2021, §4.3).
    """
    t = as_time(t, x.shape[0], like=x)
    eps = denoiser(x, t).eps
    return bcast(process.f(t), x) * x + bcast(0.5 * process.g2(t) / process.sigma(t), x) * eps
