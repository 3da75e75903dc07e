"""Samplers of the reverse-time SDE (lecture §5; Song et al. 2021, §4.2 and Algorithms 2–5)."""

from __future__ import annotations


from torch import Tensor

from .._tensor import bcast, randn_like
from ..dynamics import reverse_sde_drift
from ..errors import check_count, check_range
from ._loop import integrate


def euler_maruyama_step(denoiser, process, x, t, s, generator):
    """One step of the lecture's discretised reverse SDE from t to s = t − h:

        x_{t−h} = x_t − h f(x_t, t) + h g(t)² ∇log p_t(x_t) + sqrt(h) g(t) z.
    """
    h = t - s
    noise = bcast((h * process.g2(t)).clamp(min=0).sqrt(), x) * randn_like(x, generator)
    return x - h * reverse_sde_drift(denoiser, process, x, t) + noise


def euler_maruyama(denoiser, process, x, grid, *, generator=None, callback=None):
    """Euler–Maruyama on the reverse SDE. NFE = steps − 1 (+1 for the final denoising step)."""
    return integrate(lambda x, t, s: euler_maruyama_step(denoiser, process, x, t, s, generator), x, grid, callback)


def langevin_step_size(score: Tensor, z: Tensor, snr: float, alpha=1.0) -> Tensor:
    """The Langevin step size of Song et al. 2021, Algorithm 5:

        ε = 2 α (r ‖z‖ / ‖∇log p_t‖)²,   r = ``snr``,

    with the norms averaged over the batch as in Song et al.'s code (a per-sample ratio blows up in low
    dimension wherever the score vanishes). α is α_i = 1 − β_i for VP-type processes, 1 for VE."""
    mean_norm = lambda v: v.reshape(v.shape[0], -1).norm(dim=1).mean()  # noqa: E731
    return 2 * alpha * (snr * mean_norm(z) / mean_norm(score).clamp(min=1e-12)) ** 2


def langevin_corrector_step(denoiser, process, x, t, generator, snr: float, alpha=1.0):
    """One step of Langevin MCMC targeting p_t (Song et al. 2021, Algorithm 5):

        x ← x + ε ∇log p_t(x) + sqrt(2ε) z,   z ~ N(0, I),   ε = ``langevin_step_size(∇log p_t, z, snr, alpha)``.
    """
    score = denoiser.score(x, t)
    z = randn_like(x, generator)
    step = langevin_step_size(score, z, snr, alpha)
    return x + step * score + (2 * step).sqrt() * z


def predictor_corrector(denoiser, process, x, grid, *, generator=None, callback=None, snr: float = 0.16,
                        corrector_steps: int = 1):
    """Predictor–corrector (Song et al. 2021, Algorithm 1): at each grid time, ``corrector_steps`` Langevin
    steps at t, then an Euler–Maruyama predictor step to the next time s. The corrector's α is
    α²_{t|s} = α_t²/α_s²: exactly 1 − β_i on DDPM's grid (Song et al.'s α_i for VP and sub-VP), 1 for VE.
    NFE = (steps − 1)(1 + corrector_steps) (+1 for the final denoising step)."""
    snr = check_range("predictor_corrector snr", snr, 0.0, 1e6, open_low=True)
    corrector_steps = check_count("predictor_corrector corrector_steps", corrector_steps, 0)

    def step(x, t, s):
        alpha = process.transition(s, t)[0] ** 2
        for _ in range(corrector_steps):
            x = langevin_corrector_step(denoiser, process, x, t, generator, snr, alpha)
        return euler_maruyama_step(denoiser, process, x, t, s, generator)

    return integrate(step, x, grid, callback)
