"""Solvers of the probability-flow ODE dx/dt = f(t) x − ½ g(t)² ∇log p_t(x) (Song et al. 2021, §4.3),
integrated from t_max down to t_min: Euler (lecture §4), Heun (2nd order) and adaptive Dormand–Prince."""

from __future__ import annotations

import torch

from .._tensor import bcast
from ..dynamics import noise_to_signal, probability_flow, scaled_probability_flow, time_of_noise_to_signal
from ..errors import check_range
from ..solvers import dopri5
from ._loop import integrate


def ode_euler(denoiser, process, x, grid, *, generator=None, callback=None):
    """x_s = x_t + (s − t)·v(x_t, t) (lecture §4, h = s − t < 0). NFE = steps − 1 (+1 final denoise)."""
    return integrate(lambda x, t, s: x + (s - t) * probability_flow(denoiser, process, x, t), x, grid, callback)


def ode_heun(denoiser, process, x, grid, *, generator=None, callback=None):
    """Heun's method (explicit trapezoidal rule), 2nd order:
    x' = x_t + h v(x_t, t);  x_s = x_t + h/2 (v(x_t, t) + v(x', s)),  h = s − t. NFE = 2(steps − 1) (+1).

    v(x', s) takes the drift and diffusion coefficients of the side of s that the step crossed (their limit
    from above): on DDPM, whose β(t) jumps at every grid time, the value at s belongs to the interval below s,
    and using it stalled the error at ~1.5e-3 from ~100 steps on, however many more were taken."""

    def step(x, t, s):
        h = s - t
        v = probability_flow(denoiser, process, x, t)
        x_pred = x + h * v
        return x + 0.5 * h * (v + probability_flow(denoiser, process, x_pred, s, from_above=True))

    return integrate(step, x, grid, callback)


def ode_rk45(denoiser, process, x, grid, *, generator=None, callback=None, rtol: float = 1e-5, atol: float = 1e-5):
    """Adaptive Dormand–Prince 5(4) from grid[0] to grid[−1]; interior grid points are ignored and the
    solver chooses its own steps (``steps`` only sets the endpoints). NFE is adaptive: read ``denoiser.nfe``.

    The PF-ODE is integrated in the noise-to-signal ratio σ̃ = σ/α with y = x/α, where it reads

        dy/dσ̃ = ε̂(α(t) y, t),   t = t(σ̃)

    (Song et al. 2020, DDIM eq. 14; Karras et al. 2022, eq. 4 with s = α). It is the same ODE as
    dx/dt = f x − ½ g² ∇log p_t, but its right-hand side depends on the schedule only through σ̃, so it is
    smooth even where β(t) jumps (DDPM's piecewise-constant β made RK45 in t take ~30× more steps and still
    miss the solution by ~1e-3). Tolerances apply to y. ``callback(k, t, x)`` after each accepted step."""
    rtol = check_range("ode_rk45 rtol", rtol, 0.0, 1.0, open_low=True)
    atol = check_range("ode_rk45 atol", atol, 0.0, 1.0, open_low=True)
    t_hi, t_lo = (torch.as_tensor(float(v), dtype=torch.float64) for v in (grid[0], grid[-1]))

    def fun(s, y):
        return scaled_probability_flow(denoiser, process, y, s)

    counter = iter(range(1, 10**9))

    def report(s, y):  # callback(k, t, x) with x = α(t) y
        t = time_of_noise_to_signal(process, s)
        callback(next(counter), t, y * float(process.alpha(t)))

    on_step = None if callback is None else report
    a_hi, a_lo = float(process.alpha(t_hi)), float(process.alpha(t_lo))
    sol = dopri5(fun, noise_to_signal(process, t_hi), noise_to_signal(process, t_lo), x / a_hi, rtol=rtol,
                 atol=atol, on_step=on_step)
    return sol.y * a_lo
