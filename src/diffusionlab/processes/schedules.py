"""β schedules of the discrete DDPM chain.

Each returns β_1 … β_T as a float64 tensor of length T. The chain's per-step coefficients follow:
α_t = 1 − β_t and ᾱ_t = ∏_{i≤t} α_i (lecture §1).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import UserError


def linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """β_t linear from ``beta_start`` to ``beta_end`` (Ho et al. 2020, §4: 1e-4 to 0.02 for T = 1000).

    The endpoints are taken as given for any T, as in diffusers' ``DDPMScheduler`` (no rescaling by 1000/T).
    """
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """The cosine schedule of Nichol & Dhariwal 2021, eq. 17.

    ᾱ(t) = f(t)/f(0) with f(t) = cos²(((t/T) + s)/(1 + s) · π/2), and β_t = min(1 − ᾱ_t/ᾱ_{t−1}, max_beta);
    the clip keeps β_T < 1 so that the reverse process stays defined near t = T.
    """
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


SCHEDULES = {"linear": linear_betas, "cosine": cosine_betas}


def make_betas(schedule: str, T: int, **kwargs) -> Tensor:
    """β_1 … β_T of a named schedule (``linear`` or ``cosine``)."""
    if schedule not in SCHEDULES:
        raise UserError(f"unknown beta schedule {schedule!r}: choose one of {', '.join(SCHEDULES)}")
    if T < 1:
        raise UserError(f"the number of diffusion steps T must be at least 1, got {T}")
    return SCHEDULES[schedule](T, **kwargs)
