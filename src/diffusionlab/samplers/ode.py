"""Solvers of the probability-flow ODE dx/dt = f(t) x − ½ g(t)² ∇log p_t(x) (Song et al. 2021, §4.3),
integrated from t_max down to t_min: Euler (lecture §4), Heun (2nd order) and adaptive Dormand–Prince."""

from __future__ import annotations

from ..dynamics import probability_flow
from ..solvers import dopri5
from ._loop import integrate


def ode_euler(denoiser, process, x, grid, *, generator=None, callback=None):
    """x_s = x_t + (s − t)·v(x_t, t) (lecture §4, h = s − t < 0). NFE = steps − 1 (+1 final denoise)."""
    return integrate(lambda x, t, s: x + (s - t) * probability_flow(denoiser, process, x, t), x, grid, callback)


def ode_heun(denoiser, process, x, grid, *, generator=None, callback=None):
    """Heun's method (explicit trapezoidal rule), 2nd order:
    x' = x_t + h v(x_t, t);  x_s = x_t + h/2 (v(x_t, t) + v(x', s)),  h = s − t. NFE = 2(steps − 1) (+1)."""

    def step(x, t, s):
        h = s - t
        v = probability_flow(denoiser, process, x, t)
        x_pred = x + h * v
        return x + 0.5 * h * (v + probability_flow(denoiser, process, x_pred, s))

    return integrate(step, x, grid, callback)


def ode_rk45(denoiser, process, x, grid, *, generator=None, callback=None, rtol: float = 1e-5, atol: float = 1e-5):
    """Adaptive Dormand–Prince 5(4) from grid[0] to grid[−1]; interior grid points are ignored and the
    solver chooses its own steps (``steps`` only sets the endpoints). NFE is adaptive: read ``denoiser.nfe``.
    ``callback(k, t, x)`` is called after each accepted step."""
    counter = iter(range(1, 10**9))
    on_step = None if callback is None else (lambda t, y: callback(next(counter), t, y))
    fun = lambda t, y: probability_flow(denoiser, process, y, t)  # noqa: E731
    return dopri5(fun, float(grid[0]), float(grid[-1]), x, rtol=rtol, atol=atol, on_step=on_step).y
