"""Continuous-time processes of Song et al. 2021 (*Score-Based Generative Modeling through SDEs*, §3.4):
the variance-preserving (VP) SDE — continuous DDPM, lecture §6 — its sub-VP sibling, and the
variance-exploding (VE) SDE. Each gives α(t), σ(t) and their derivatives in closed form; drift,
diffusion, reverse SDE and probability-flow ODE are derived from them in ``Process`` and ``reverse``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import UserError, check_range
from .base import Process


class VPSDE(Process):
    """dx = −½ β(t) x dt + sqrt(β(t)) dW with β(t) = β_min + t (β_max − β_min) (lecture §6).

    log α(t) = −¼ t² (β_max − β_min) − ½ t β_min,  σ(t)² = 1 − α(t)².
    With the defaults (0.1, 20) it is the T → ∞ limit of DDPM's linear schedule 1e-4 → 0.02 at T = 1000
    (β_i = β((i − 1)/(T − 1))/T, i = 1 … T). Sampling stops at t_min = 1e-3, as in Song et al.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3):
        name = type(self).__name__
        self.beta_min = check_range(f"{name} beta_min", beta_min, 0.0, 1e6)
        self.beta_max = check_range(f"{name} beta_max", beta_max, 0.0, 1e6, open_low=True)
        self.t_min = check_range(f"{name} t_min", t_min, 0.0, 1.0, open_low=True)
        if self.beta_max < self.beta_min:
            raise UserError(f"{name} needs beta_min <= beta_max, got {self.beta_min:g} > {self.beta_max:g}")
        if self.t_min >= 1.0:
            raise UserError(f"{name} t_min must be below t_max = 1, got {self.t_min:g}")

    def config(self) -> dict:
        return {"process": "vp", "beta_min": self.beta_min, "beta_max": self.beta_max, "t_min": self.t_min}

    def beta(self, t: Tensor) -> Tensor:
        """β(t) = β_min + t (β_max − β_min)."""
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_alpha(self, t: Tensor) -> Tensor:
        """log α(t) = −½ ∫₀ᵗ β(s) ds."""
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(self.log_alpha(t))

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(2 * self.log_alpha(t)))

    def d_log_alpha(self, t: Tensor) -> Tensor:
        return -0.5 * self.beta(t)

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        """Closed-form inverse of λ(t): α² = sigmoid(λ), and ½Δβ t² + β_min t + log sigmoid(λ) = 0 (clamped to
        [0, t_max], like ``Process.t_from_log_snr``)."""
        log_a2 = torch.nn.functional.logsigmoid(torch.as_tensor(lam, dtype=torch.float64))
        delta = self.beta_max - self.beta_min
        if delta == 0:  # constant β: log α² = −β t
            t = -log_a2 / self.beta_min
        else:  # the root in the form without cancellation: t = −2 log α² / (β_min + sqrt(β_min² − 2Δβ log α²))
            t = -2 * log_a2 / (self.beta_min + torch.sqrt(self.beta_min**2 - 2 * delta * log_a2))
        return t.clamp(0.0, self.t_max)

    def d_sigma2(self, t: Tensor) -> Tensor:
        # σ² = 1 − α²  ⇒  dσ²/dt = −2 α² d log α/dt = α² β(t); then g² = β(t) as in the lecture.
        return torch.exp(2 * self.log_alpha(t)) * self.beta(t)


class SubVPSDE(VPSDE):
    """The sub-VP SDE: same α(t) as VP, σ(t) = 1 − α(t)² (Song et al. 2021, eq. 29).

    g(t)² = β(t) (1 − α(t)⁴), always below the VP diffusion — hence "sub".
    """

    t_from_log_snr = Process.t_from_log_snr  # λ(t) differs from VP's: back to bisection

    def config(self) -> dict:
        return {**super().config(), "process": "subvp"}

    def sigma(self, t: Tensor) -> Tensor:
        return -torch.expm1(2 * self.log_alpha(t))

    def d_sigma2(self, t: Tensor) -> Tensor:
        # σ = 1 − α²  ⇒  dσ/dt = α² β(t),  dσ²/dt = 2 σ α² β(t).
        return 2 * self.sigma(t) * torch.exp(2 * self.log_alpha(t)) * self.beta(t)


# σ(t) = σ_min (σ_max/σ_min)^t is computed in the state's dtype: a ratio beyond float32's range made σ(t_max)
# infinite in float32 (and beyond float64's, in the solver's float64 clock σ̃ too).
_MAX_SIGMA_RATIO = float(torch.finfo(torch.float32).max)
# σ_min below √(float32's smallest normal) made σ(t)² (and, further down, σ(t) itself) flush to 0 in float32.
_MIN_SIGMA = math.sqrt(float(torch.finfo(torch.float32).tiny))


class VESDE(Process):
    """dx = sqrt(dσ²/dt) dW with α = 1 and σ(t) = σ_min (σ_max/σ_min)^t (Song et al. 2021, eq. 30).

    g(t)² = 2 σ(t)² log(σ_max/σ_min); the prior is N(0, σ_max² I); sampling stops at t_min = 1e-5.
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, t_min: float = 1e-5):
        self.sigma_min = check_range("VESDE sigma_min", sigma_min, _MIN_SIGMA, 1e30)
        self.sigma_max = check_range("VESDE sigma_max", sigma_max, 0.0, 1e30, open_low=True)
        self.t_min = check_range("VESDE t_min", t_min, 0.0, 1.0, open_low=True)
        if self.sigma_max <= self.sigma_min:
            raise UserError(f"VESDE needs sigma_min < sigma_max, got {self.sigma_min:g} >= {self.sigma_max:g}")
        if self.sigma_max / self.sigma_min > _MAX_SIGMA_RATIO:
            raise UserError(f"VESDE needs sigma_max/sigma_min <= {_MAX_SIGMA_RATIO:.1e}, got {self.sigma_max:g}/"
                            f"{self.sigma_min:g}: raise sigma_min or lower sigma_max")
        if self.t_min >= 1.0:
            raise UserError(f"VESDE t_min must be below t_max = 1, got {self.t_min:g}")
        self.prior_std = self.sigma_max

    def config(self) -> dict:
        return {"process": "ve", "sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "t_min": self.t_min}

    def alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(torch.as_tensor(t))

    def sigma(self, t: Tensor) -> Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def d_log_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(torch.as_tensor(t))

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        """Closed-form inverse of λ(t) = −2 log σ(t), clamped to [0, t_max] like ``Process.t_from_log_snr``."""
        log_sigma = -0.5 * torch.as_tensor(lam, dtype=torch.float64)
        t = (log_sigma - math.log(self.sigma_min)) / math.log(self.sigma_max / self.sigma_min)
        return t.clamp(0.0, self.t_max)

    def d_sigma2(self, t: Tensor) -> Tensor:
        return 2 * self.sigma(t) ** 2 * math.log(self.sigma_max / self.sigma_min)
