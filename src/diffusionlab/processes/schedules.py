"""β schedules of the discrete DDPM chain.

Each returns β_1 … β_T as a float64 tensor of length T. The chain's per-step coefficients follow:
α_t = 1 − β_t and ᾱ_t = ∏_{i≤t} α_i (lecture §1).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import UserError, check_count, check_range


def linear_betas(T: int, beta_start: float | None = None, beta_end: float | None = None) -> Tensor:
    """β_t linear from ``beta_start`` to ``beta_end`` (Ho et al. 2020, §4: 1e-4 to 0.02 for T = 1000).

    Endpoints that are not given default to 1e-4·(1000/T) and 0.02·(1000/T), as in Nichol & Dhariwal's
    code: the same continuous-time schedule β(t) for every T, so that the chain reaches the N(0, I) prior for
    any T (ᾱ_T = 4.0e-5 at T = 1000, 2.0e-5 at T = 100, 7.7e-6 at T = 50; diffusers keeps 1e-4 → 0.02 for every
    T instead, which with T = 100 leaves ᾱ_T = 0.36). Endpoints that are given are taken as they are. Defaults
    are capped at 0.999 (which bites for T ≤ 20: β_end = 0.02·1000/T > 0.999).
    """
    scale = 1000.0 / T
    beta_start = min(1e-4 * scale, 0.999) if beta_start is None else beta_start
    beta_end = min(0.02 * scale, 0.999) if beta_end is None else beta_end
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
SCHEDULE_OPTIONS = {"linear": ("beta_start", "beta_end"), "cosine": ("s", "max_beta")}


def make_betas(schedule: str, T: int, **kwargs) -> Tensor:
    """β_1 … β_T of a named schedule (``linear`` or ``cosine``)."""
    if schedule not in SCHEDULES:
        raise UserError(f"unknown beta schedule {schedule!r}: choose one of {', '.join(SCHEDULES)}")
    T = check_count("the number of diffusion steps T", T, 2)  # one step cannot reach the prior and denoise too
    try:
        betas = SCHEDULES[schedule](T, **{k: v if v is None else check_range(f"{schedule} schedule {k}", v)
                                          for k, v in kwargs.items()})
    except TypeError as error:
        raise UserError(f"the {schedule} schedule takes no such option ({error}); its options: "
                        f"{', '.join(SCHEDULE_OPTIONS[schedule])}") from None
    if not bool(((betas > 0) & (betas < 1)).all()):
        raise UserError(f"every β_t must lie in (0, 1); the {schedule} schedule with {kwargs or 'defaults'} "
                        f"gives values from {float(betas.min()):.3g} to {float(betas.max()):.3g}")
    return betas
