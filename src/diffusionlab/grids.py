"""Time grids, in one place (LESSONS #1: off-by-one grids broke respaced sampling elsewhere).

A grid is a strictly decreasing float64 tensor t_0 = t_max > t_1 > … > t_{K−1} = t_min with K = ``steps``
points. A sampler steps between consecutive entries only, then ``sample`` optionally maps the last state to
x̂₀ (one more model call at t_min: Tweedie's E[x₀ | x_{t_min}]). For a discrete process (DDPM) the times are
rounded to the training grid i/T and kept strictly decreasing; ``steps`` may then be at most T.

Kinds (all run from t_max down to t_min):
* ``uniform``   — equal steps in t (DDPM: i = round(linspace(T, 1, K)), the "trailing" spacing of
  Lin et al. 2024 that always starts at t = T);
* ``quadratic`` — t = t_min + (t_max − t_min)·u², u uniform (Song et al. 2020, DDIM §D.2);
* ``logsnr``    — equal steps in λ = log(α²/σ²) (Lu et al. 2022, DPM-Solver §3.3);
* ``karras``    — σ̃ = σ/α spaced as (σ̃_max^{1/ρ} + u(σ̃_min^{1/ρ} − σ̃_max^{1/ρ}))^ρ, ρ = 7 (Karras et al. 2022, eq. 5).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .errors import UserError, check_count, check_range
from .processes.base import Process
from .processes.ddpm import step_roundoff

GRIDS = ("uniform", "quadratic", "logsnr", "karras")


def _unit(steps: int) -> Tensor:
    """u_k = k/(K−1) for k = 0 … K−1 (u = 0 at t_max)."""
    return torch.linspace(0.0, 1.0, steps, dtype=torch.float64)


def _strictly_decreasing(idx: Tensor, top: int) -> Tensor:
    """Make integer steps strictly decreasing within [1, top] with as few moves as possible."""
    idx = idx.clone()
    idx[-1] = max(int(idx[-1]), 1)
    for k in range(len(idx) - 2, -1, -1):
        idx[k] = max(int(idx[k]), int(idx[k + 1]) + 1)
    idx[0] = min(int(idx[0]), top)
    for k in range(1, len(idx)):
        idx[k] = min(int(idx[k]), int(idx[k - 1]) - 1)
    return idx


def snap_near_grid(t: Tensor, T: int, tol: float | None = None) -> Tensor:
    """Times within ``tol`` steps of a grid time i/T replaced by i/T exactly (others kept).

    A DDPM grid that passed through float32 (``time_grid(...).float()``) holds 999/1000 as 999.0000129 steps:
    left as it is, the interval lookup of β(t) would pick the next interval for such times. The default
    ``tol`` is 8 ulps of T in float32 (~1e-3 steps at T = 1000), far below any deliberate off-grid time; times
    below step 1 are left alone (t = 0 is no grid time).
    """
    tol = step_roundoff(T) if tol is None else tol
    steps = t * T
    nearest = torch.round(steps)
    return torch.where(((steps - nearest).abs() <= tol) & (nearest >= 1), nearest / T, t)


def explicit_grid(grid, process, min_points: int = 1, who: str = "an explicit grid") -> Tensor:
    """``grid`` as a float64 tensor, checked: 1-D, at least ``min_points`` times, strictly decreasing, and
    within (0, t_max] of ``process``: every sampler divides by σ(t) somewhere, so a grid ends at t > 0
    (``sample``'s final denoising step takes t_min to t = 0), and the process is not defined past t_max."""
    try:
        grid = torch.as_tensor(grid, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        raise UserError(f"{who} must be a 1-D tensor of times, got {type(grid).__name__}") from None
    if process.discrete and grid.ndim == 1:
        grid = snap_near_grid(grid, process.T)
    if grid.ndim != 1 or len(grid) < min_points or not bool(torch.isfinite(grid).all()) or (
            len(grid) > 1 and not bool((grid[1:] < grid[:-1]).all())):
        raise UserError(f"{who} must be a 1-D tensor of at least {min_points} strictly decreasing times")
    t_max = float(process.t_max)
    if float(grid[-1]) <= 0 or float(grid[0]) > t_max * (1 + 1e-12):
        raise UserError(f"{who} must lie in (0, t_max = {t_max:g}] (it ends at t > 0: the final denoising step "
                        f"goes to t = 0), got times from {float(grid[0]):g} down to {float(grid[-1]):g}")
    return grid


def time_grid(process, steps: int, kind: str = "uniform", rho: float = 7.0) -> Tensor:
    """The K = ``steps`` sampling times of ``process`` from t_max down to t_min (see module docstring)."""
    if kind not in GRIDS:
        raise UserError(f"unknown time grid {kind!r}: choose one of {', '.join(GRIDS)}")
    steps = check_count("steps", steps, 1)
    if not isinstance(process, Process):
        raise UserError(f"time_grid needs a process (dl.DDPM(), dl.VPSDE(), …), got {type(process).__name__}")
    rho = check_range("karras rho", rho, 0.0, 1e3, open_low=True)
    if process.discrete and steps > process.T:
        raise UserError(f"steps={steps} exceeds the {process.T} steps this DDPM was trained with")
    t_min, t_max = float(process.t_min), float(process.t_max)
    if steps == 1:
        return torch.tensor([t_max], dtype=torch.float64)
    u = _unit(steps)
    if kind == "uniform":
        t = t_max + u * (t_min - t_max)
    elif kind == "quadratic":
        t = t_min + (t_max - t_min) * (1 - u) ** 2
    else:
        ends = torch.tensor([t_max, t_min], dtype=torch.float64)
        lam_max_t, lam_min_t = process.log_snr(ends)  # λ(t_max) < λ(t_min)
        if kind == "logsnr":
            lam = lam_max_t + u * (lam_min_t - lam_max_t)
        else:  # karras, in σ̃ = exp(−λ/2)
            s_hi, s_lo = torch.exp(-lam_max_t / 2) ** (1 / rho), torch.exp(-lam_min_t / 2) ** (1 / rho)
            lam = -2 * rho * torch.log(s_hi + u * (s_lo - s_hi))
        t = process.t_from_log_snr(lam)
        t[0], t[-1] = t_max, t_min  # exact endpoints despite bisection round-off
    if process.discrete:
        idx = _strictly_decreasing(torch.round(t * process.T).long(), process.T)
        return idx.to(torch.float64) / process.T
    return t
