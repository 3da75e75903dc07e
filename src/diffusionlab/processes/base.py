"""The forward process: how data is noised.

Every process of the lecture has Gaussian marginals

    q(x_t | x_0) = N(x_t; α(t) x_0, σ(t)² I),   i.e.  x_t = α(t)·x_0 + σ(t)·ε,  ε ~ N(0, I).

A process is therefore fully described by the two scalar functions α(t) and σ(t) on t ∈ [0, t_max]
(and their time derivatives). Everything else is derived here, once, for all processes:

* the SDE dx = f(t) x dt + g(t) dW with f(t) = d log α/dt and g(t)² = dσ²/dt − 2 f(t) σ(t)²
  (Kingma et al. 2021, *Variational Diffusion Models*, appendix; Song et al. 2021, eq. 5);
* the transition between two times s < t: x_t | x_s ~ N(α_{t|s} x_s, σ²_{t|s} I) with
  α_{t|s} = α_t/α_s and σ²_{t|s} = σ_t² − α²_{t|s} σ_s²;
* the posterior q(x_s | x_t, x_0) = N(μ̃, σ̃² I), by Bayes' rule on the two Gaussians above;
  on DDPM's full grid it is exactly the lecture's q(x_{t−1} | x_t, x_0).

Subclasses implement ``alpha``, ``sigma``, ``d_log_alpha`` and ``d_sigma2``; the tests check the
derivatives against finite differences of α and σ for every process.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._tensor import bcast, randn_like, sum_except_batch


class Process:
    """Base class: x_t = α(t) x_0 + σ(t) ε. Times are tensors; every method works elementwise on them."""

    #: smallest time a sampler goes down to (σ(t_min) > 0 so that the score is defined there)
    t_min: float = 0.0
    #: largest time; the prior p_T is used there
    t_max: float = 1.0
    #: standard deviation of the prior N(0, prior_std² I)
    prior_std: float = 1.0
    #: True for a process defined on a finite grid of times (DDPM): models are trained on that grid only
    discrete: bool = False

    # --- what a subclass defines -------------------------------------------------------------------
    def alpha(self, t: Tensor) -> Tensor:
        """α(t), the signal coefficient."""
        raise NotImplementedError

    def sigma(self, t: Tensor) -> Tensor:
        """σ(t), the noise standard deviation."""
        raise NotImplementedError

    def d_log_alpha(self, t: Tensor) -> Tensor:
        """d log α(t) / dt."""
        raise NotImplementedError

    def d_sigma2(self, t: Tensor) -> Tensor:
        """d σ(t)² / dt."""
        raise NotImplementedError

    def config(self) -> dict:
        """The constructor arguments, so that a run directory records exactly how it was made."""
        raise NotImplementedError

    # --- derived quantities -------------------------------------------------------------------------
    def f(self, t: Tensor) -> Tensor:
        """Drift coefficient: the SDE's drift is f(x, t) = f(t)·x with f(t) = d log α/dt."""
        return self.d_log_alpha(t)

    def g2(self, t: Tensor) -> Tensor:
        """Squared diffusion coefficient g(t)² = dσ²/dt − 2 f(t) σ(t)², which makes the SDE's marginals
        match q(x_t | x_0) (variance ODE: dVar/dt = 2 f Var + g²)."""
        return self.d_sigma2(t) - 2 * self.f(t) * self.sigma(t) ** 2

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """The forward SDE's drift f(x, t) = f(t)·x (lecture §5–6)."""
        return bcast(self.f(t), x) * x

    def diffusion(self, t: Tensor) -> Tensor:
        """The forward SDE's diffusion coefficient g(t)."""
        return self.g2(t).clamp(min=0).sqrt()

    def coefficient_time_above(self, t: Tensor) -> Tensor:
        """A time whose f and g² are their limits from above at t: t itself, where they are continuous.
        (A process with jumps in β(t), DDPM, returns a time inside the piece just above t.)"""
        return t

    def log_snr(self, t: Tensor) -> Tensor:
        """λ(t) = log(α²/σ²), the log signal-to-noise ratio; decreasing in t."""
        return 2 * (torch.log(self.alpha(t)) - torch.log(self.sigma(t)))

    def t_from_log_snr(self, lam: Tensor, iters: int = 100) -> Tensor:
        """Inverse of λ(t) on the whole time domain [0, t_max] by bisection (λ is monotone); a λ beyond
        λ(t_max) or above every λ(t) gives t_max or 0. Subclasses may override with a closed form, clamped to the
        same domain; bisection to 100 halvings is exact to float64 precision."""
        lam = torch.as_tensor(lam, dtype=torch.float64)
        lo = torch.zeros_like(lam)
        hi = torch.full_like(lam, self.t_max)
        for _ in range(iters):
            mid = (lo + hi) / 2
            above = self.log_snr(mid) > lam  # λ too large ⇒ the time is later than mid
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return (lo + hi) / 2

    def marginal(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """A draw from q(x_t | x_0): x_t = α(t) x_0 + σ(t) ε (lecture §1, closed form)."""
        return bcast(self.alpha(t), x0) * x0 + bcast(self.sigma(t), x0) * eps

    def transition(self, s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(α_{t|s}, σ²_{t|s}) of q(x_t | x_s) = N(α_{t|s} x_s, σ²_{t|s} I) for s < t.

        α_{t|s} = α_t / α_s,  σ²_{t|s} = σ_t² − α²_{t|s} σ_s².
        On DDPM's grid with s = t − 1/T this is the lecture's one step: α_{t|s}² = 1 − β_t, σ²_{t|s} = β_t.
        """
        a_ts = self.alpha(t) / self.alpha(s)
        return a_ts, self.sigma(t) ** 2 - a_ts**2 * self.sigma(s) ** 2

    def posterior_coefficients(self, s: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Coefficients (c_x0, c_xt, σ̃²) of q(x_s | x_t, x_0) = N(c_x0·x_0 + c_xt·x_t, σ̃² I), s < t.

        By Bayes' rule (product of q(x_s|x_0) and q(x_t|x_s), normalised by q(x_t|x_0)):
            c_x0 = α_s σ²_{t|s} / σ_t²,   c_xt = α_{t|s} σ_s² / σ_t²,   σ̃² = σ²_{t|s} σ_s² / σ_t².
        On DDPM's full grid: c_x0 = sqrt(ᾱ_{t−1}) β_t/(1−ᾱ_t), c_xt = sqrt(α_t)(1−ᾱ_{t−1})/(1−ᾱ_t),
        σ̃² = β̃_t = (1−ᾱ_{t−1}) β_t/(1−ᾱ_t) (lecture §3; Ho et al. eq. 6–7).
        """
        a_ts, s2_ts = self.transition(s, t)
        sig2_s, sig2_t = self.sigma(s) ** 2, self.sigma(t) ** 2
        return self.alpha(s) * s2_ts / sig2_t, a_ts * sig2_s / sig2_t, s2_ts * sig2_s / sig2_t

    def posterior(self, x_t: Tensor, x0: Tensor, s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance of q(x_s | x_t, x_0); the variance has shape (n,) (or is 0-d)."""
        c0, ct, var = self.posterior_coefficients(s, t)
        return bcast(c0, x0) * x0 + bcast(ct, x_t) * x_t, var

    # --- the prior p_T -----------------------------------------------------------------------------
    def prior_sample(self, shape, generator: torch.Generator | None = None, dtype=torch.float32,
                     device=None) -> Tensor:
        """x_T ~ N(0, prior_std² I)."""
        z = randn_like(torch.empty(shape, dtype=dtype, device=device), generator)
        return self.prior_std * z

    def prior_log_prob(self, x: Tensor) -> Tensor:
        """log N(x; 0, prior_std² I), summed over all but the batch dimension: shape (n,)."""
        d = x[0].numel()
        return -0.5 * sum_except_batch(x**2) / self.prior_std**2 - d * (
            math.log(self.prior_std) + 0.5 * math.log(2 * math.pi))

    # --- times --------------------------------------------------------------------------------------
    def snap(self, t: Tensor) -> Tensor:
        """Round times to the ones the model was trained on (identity for continuous processes)."""
        return t

    def default_steps(self) -> int:
        """The number of grid points a sampler uses when none is given."""
        return 1000

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "process")
        return f"{type(self).__name__}({args})"


def forward_euler_maruyama_step(process: Process, x: Tensor, t, h, eps: Tensor) -> Tensor:
    """One Euler–Maruyama step of the forward SDE dx = f(x, t) dt + g(t) dW (lecture §5):

        x_{t+h} = x_t + h f(x_t, t) + sqrt(h) g(t) ε,   ε ~ N(0, I)  (given as ``eps``, shaped like x).

    ``t`` is a float, a 0-d or a (n,) tensor, ``h > 0`` the step. Iterated from t = 0 its states have the
    marginals q(x_t | x_0) up to O(h) (tested against the closed form for every process). The reverse-time
    counterpart is ``samplers.sde.euler_maruyama_step``.
    """
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return x + h * process.drift(x, t) + bcast(h**0.5 * process.diffusion(t), x) * eps
