"""The discrete DDPM chain (Ho et al. 2020; lecture §1–3), as a process on t ∈ [0, 1].

Step i of T lives at time t_i = i/T. On that grid α(t_i) = sqrt(ᾱ_i) and σ(t_i) = sqrt(1 − ᾱ_i). Between
grid points log ᾱ is interpolated linearly in t, which makes the chain *exactly* a variance-preserving SDE
with piecewise-constant β(t) = −T·log(1 − β_i) on ((i−1)/T, i/T] ≈ T·β_i (the continuous-time view of
lecture §6; the two differ by O(β_i²)). So continuous samplers run on a DDPM model without special cases,
and ancestral sampling on the full grid is exactly the lecture's algorithm.

The lecture's formulas, stated on the β schedule itself, are the functions ``forward_step``,
``forward_marginal`` and ``posterior_mean_var`` below; the generic process methods reproduce them (tested).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Process
from .schedules import make_betas


def forward_step(x_prev: Tensor, beta_t) -> tuple[Tensor, Tensor]:
    """q(x_t | x_{t−1}) = N(x_t; sqrt(1 − β_t) x_{t−1}, β_t I): (mean, variance). Lecture §1."""
    beta_t = torch.as_tensor(beta_t, dtype=x_prev.dtype)
    return torch.sqrt(1 - beta_t) * x_prev, beta_t


def forward_marginal(x0: Tensor, alpha_bar_t) -> tuple[Tensor, Tensor]:
    """q(x_t | x_0) = N(x_t; sqrt(ᾱ_t) x_0, (1 − ᾱ_t) I): (mean, variance). Lecture §1, closed form."""
    alpha_bar_t = torch.as_tensor(alpha_bar_t, dtype=x0.dtype)
    return torch.sqrt(alpha_bar_t) * x0, 1 - alpha_bar_t


def posterior_mean_var(x_t: Tensor, x0: Tensor, beta_t, alpha_bar_t, alpha_bar_prev) -> tuple[Tensor, Tensor]:
    """q(x_{t−1} | x_t, x_0) = N(μ̃_t, β̃_t I) (lecture §3; Ho et al. eq. 6–7):

        μ̃_t = sqrt(ᾱ_{t−1}) β_t/(1 − ᾱ_t) · x_0 + sqrt(α_t)(1 − ᾱ_{t−1})/(1 − ᾱ_t) · x_t,
        β̃_t = (1 − ᾱ_{t−1}) β_t / (1 − ᾱ_t),   with α_t = 1 − β_t.
    """
    beta_t, alpha_bar_t, alpha_bar_prev = (torch.as_tensor(v, dtype=x0.dtype)
                                           for v in (beta_t, alpha_bar_t, alpha_bar_prev))
    mean = (torch.sqrt(alpha_bar_prev) * beta_t / (1 - alpha_bar_t)) * x0 + (
        torch.sqrt(1 - beta_t) * (1 - alpha_bar_prev) / (1 - alpha_bar_t)) * x_t
    return mean, (1 - alpha_bar_prev) * beta_t / (1 - alpha_bar_t)


def _wide(t: Tensor) -> Tensor:
    """float16/bfloat16 times in float32: their 3–4 significant digits cannot locate a step of T = 1000
    (bfloat16 holds 999/1000 as 0.9961), so the schedule is looked up at float32 precision."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _like(value: Tensor, t: Tensor) -> Tensor:
    """``value`` in the dtype of the times it was computed for."""
    return value.to(t.dtype) if t.is_floating_point() else value


def step_roundoff(T: int, dtype: torch.dtype = torch.float32) -> float:
    """How far, in steps, round-off can move a time i/T stored in ``dtype``: 8 ulps of T (float32, T = 1000:
    1e-3 steps). Below it a time is read as the grid time i/T (:func:`~diffusionlab.grids.snap_near_grid`, the β
    interval lookup)."""
    return 8 * torch.finfo(dtype).eps * T


class DDPM(Process):
    """DDPM with T steps and a β schedule (``linear``: 1e-4 → 0.02, Ho et al.; ``cosine``: Nichol & Dhariwal).

    Attributes ``betas`` (β_1…β_T), ``alphas`` (α_t = 1 − β_t) and ``alpha_bars`` (ᾱ_0 = 1, ᾱ_1 … ᾱ_T) are
    float64 tensors; ``alpha_bars[i]`` belongs to time i/T.
    """

    discrete = True

    def __init__(self, T: int = 1000, schedule: str = "linear", **schedule_kwargs):
        self.betas = make_betas(schedule, T, **schedule_kwargs)
        self.T = len(self.betas)
        self.schedule = schedule
        self.schedule_kwargs = dict(schedule_kwargs)
        self.alphas = 1 - self.betas
        self._log_alpha_bar = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(torch.log(self.alphas), 0)])
        self.alpha_bars = torch.exp(self._log_alpha_bar)
        self.t_min = 1.0 / self.T
        self.t_max = 1.0
        self._table_cache: dict = {}

    def config(self) -> dict:
        return {"process": "ddpm", "T": self.T, "schedule": self.schedule, **self.schedule_kwargs}

    def _tables(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(log ᾱ_0…log ᾱ_T; the interval slopes T·log α_1…T·log α_T; the increments log ᾱ_{i+1} − log ᾱ_i
        for i = 0…T, the last one 0) in ``like``'s dtype and device, made once per (dtype, device): samplers
        evaluate the schedule several times per step, and for small batches the lookups cost more than the
        arithmetic."""
        key = (like.dtype, like.device)
        tables = self._table_cache.get(key)
        if tables is None:
            increments = torch.cat([torch.diff(self._log_alpha_bar), torch.zeros(1, dtype=torch.float64)])
            tables = tuple(v.to(device=like.device, dtype=like.dtype)
                           for v in (self._log_alpha_bar, self.T * torch.log(self.alphas), increments))
            self._table_cache[key] = tables
        return tables

    def _log_alpha_bar_at(self, t: Tensor) -> Tensor:
        """log ᾱ(t), linear in t between grid points: log ᾱ_i + (tT − i)(log ᾱ_{i+1} − log ᾱ_i), i = ⌊tT⌋.
        (In float32 for float16/bfloat16 times, see ``_wide``.)"""
        t = _wide(t)
        table, _, increments = self._tables(t)
        u = (t * self.T).clamp(0, self.T)
        i0 = u.floor()
        i = i0.long()
        return table[i] + (u - i0) * increments[i]

    def _interval_tolerance(self, t: Tensor) -> float:
        """How far (in steps) t·T may sit from a grid time i/T and still be read as it when an interval of β is
        looked up: 1e-6 steps, or 8 ulps of T in t's dtype when that is coarser (a float32 grid time 999/1000 is
        999.0000129 steps); 0 for integer times."""
        return max(1e-6, step_roundoff(self.T, t.dtype)) if t.is_floating_point() else 0.0

    def _interval_slope(self, t: Tensor) -> Tensor:
        """d log ᾱ/dt = T·log(1 − β_i) on the interval ((i−1)/T, i/T] that ends at or after t.

        A grid time i/T belongs to interval i, the one a reverse-time step from i/T crosses; the tolerance
        (``_interval_tolerance``) keeps round-off in t·T from selecting the next interval.
        """
        t = _wide(t)
        _, slopes, _ = self._tables(t)
        return slopes[torch.ceil(t * self.T - self._interval_tolerance(t)).clamp(1, self.T).long() - 1]

    def coefficient_time_above(self, t: Tensor) -> Tensor:
        """(i + ½)/T, the middle of the β interval (i/T, (i + 1)/T] just above t (i = ⌊tT⌋ within the same
        tolerance as ``_interval_slope``, so a grid time i/T gives interval i + 1, not its own interval i)."""
        tw = _wide(t)
        i = torch.floor(tw * self.T + self._interval_tolerance(tw)).clamp(0, self.T - 1)
        return _like((i + 0.5) / self.T, t)

    def alpha(self, t: Tensor) -> Tensor:
        return _like(torch.exp(0.5 * self._log_alpha_bar_at(t)), t)

    def sigma(self, t: Tensor) -> Tensor:
        return _like(torch.sqrt(-torch.expm1(self._log_alpha_bar_at(t))), t)

    def d_log_alpha(self, t: Tensor) -> Tensor:
        return _like(0.5 * self._interval_slope(t), t)

    def d_sigma2(self, t: Tensor) -> Tensor:
        return _like(-torch.exp(self._log_alpha_bar_at(t)) * self._interval_slope(t), t)

    def g2(self, t: Tensor) -> Tensor:
        """g(t)² = β(t) = −d log ᾱ/dt: the generic dσ²/dt − 2 f σ² with σ² = 1 − ᾱ, f = ½ d log ᾱ/dt,
        in one lookup (variance preserving: ᾱ cancels)."""
        return _like(-self._interval_slope(t), t)

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        """Closed-form inverse of λ(t) = log(ᾱ(t)/(1 − ᾱ(t))): log ᾱ = log sigmoid(λ), then the linear piece of
        log ᾱ(t) that holds this value is inverted (times outside [0, 1] are clamped to the ends)."""
        log_ab = torch.nn.functional.logsigmoid(torch.as_tensor(lam, dtype=torch.float64))
        table = -self._log_alpha_bar.to(log_ab.device)  # increasing in i
        i = torch.searchsorted(table, -log_ab).clamp(1, self.T) - 1  # table[i] ≤ −log ᾱ ≤ table[i + 1]
        frac = (-log_ab - table[i]) / (table[i + 1] - table[i])
        return ((i + frac.clamp(0, 1)) / self.T).clamp(0.0, 1.0)

    def snap(self, t: Tensor) -> Tensor:
        """Round to the grid i/T, i ∈ {1, …, T}: the times a DDPM model was trained on."""
        return torch.round(t * self.T).clamp(1, self.T) / self.T

    def default_steps(self) -> int:
        return self.T

    def index(self, t: Tensor) -> Tensor:
        """The integer step i = round(t·T) of grid times (for diffusers' integer timesteps)."""
        return torch.round(torch.as_tensor(t) * self.T).long()
