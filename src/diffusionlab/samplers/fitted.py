"""A linear multistep sampler whose coefficients are fitted to the model ("bespoke" solvers: Shaul et al. 2023,
"Bespoke Solvers for Generative Flow Models", arXiv:2310.19075, fit a solver's parameters to one model by
back-propagating through its sampling trajectory; Zhou et al. 2024's AMED and Frankel et al. 2025's S4S fit
solver coefficients the same way).

Every deterministic multistep sampler of this package (DDIM, DPM-Solver++(2M/3M), UniPC's predictor) takes
the state from grid time t_k to t_{k+1} as a *linear* combination of the current state and the denoised
estimates so far, m_j = x̂₀(x_j, t_j):

    x_{k+1} = a_k x_k + Σ_{j ≤ k} b_{kj} m_j,      k = 0 … K−2,

and differ only in the numbers a_k, b_{kj}, which they derive from a polynomial model of x̂₀ in λ. Here the
numbers are free: ``fit_multistep`` chooses them to minimise the RMS (or, with ``objective="mean"``, the mean)
distance between the output x̂₀(x_{K−1}, t_{K−1}) and the exact probability-flow solution of the same
calibration noise (``ode_rk45``, as in ``optimize_grid``), by L-BFGS with gradients through the model. They
start from DDIM's, DPM-Solver++(2M)'s and (3M)'s numbers, and the best is kept, so on the calibration noise the
fit is never worse than any of them on the same grid. The fitted solver keeps the sampler's cost — NFE = K, the
same model calls on the same grid — and needs no change to the model.

With no ``coefficients``, ``fitted_multistep`` uses 2M's, i.e. it *is* ``dpmpp_2m``; the tests check that
equivalence. Fit on calibration noise, evaluate on fresh noise; the fitted numbers belong to one model,
process, prediction and grid.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .._tensor import as_time
from ..errors import UserError
from ..grids import explicit_grid
from ..parametrization import Denoiser
from .dpm_solver import ORDERS, coefficients as _coefficients, dpmpp_step_order, dpmpp_update


class FittedMultistep(NamedTuple):
    grid: Tensor                 # the K times, strictly decreasing, float64
    coefficients: list[list[float]]  # K − 1 rows [a_k, b_k0, …, b_kk]
    error: float                 # the objective (RMS or mean error) on the calibration noise after the fit
    start_error: float           # the same for the first starting coefficients (DDIM's by default)
    iterations: int              # L-BFGS iterations spent


def multistep_coefficients(process, grid, order: int = 2, lower_order_final: bool = True) -> list[list[float]]:
    """The rows [a_k, b_k0 … b_kk] of ``x_{k+1} = a_k x_k + Σ_j b_kj m_j`` that DPM-Solver++ of ``order`` 1
    (DDIM), 2 (2M) or 3 (3M) uses on ``grid``, warm-up and ``lower_order_final`` included.

    They are read off the sampler's own update, ``dpm_solver.dpmpp_update``, which is linear in x_k and the m_j:
    applied to unit vectors (x_k = e₀, m_j = e_{1+j}) it returns the row. So ``fitted_multistep`` with these
    numbers *is* ``dpmpp`` of that order, with no second derivation of its formulas (order 1: a_k = σ_{k+1}/σ_k,
    b_kk = −α_{k+1}(e^{−h} − 1), h = λ_{k+1} − λ_k)."""
    if order not in ORDERS:
        raise UserError(f"multistep_coefficients: order must be 1, 2 or 3, got {order}")
    steps = len(grid)
    unit = torch.eye(steps, dtype=torch.float64)  # slot 0: x_k; slot 1 + j: m_j
    rows, lams = [], []
    for k in range(steps - 1):
        t_coef, s_coef = _coefficients(process, grid[k]), _coefficients(process, grid[k + 1])
        lams.append(t_coef[2])
        p = dpmpp_step_order(order, k, steps, lower_order_final)
        row = dpmpp_update(unit[0], list(unit[1:k + 2]), lams, t_coef, s_coef, p)
        rows.append(row[:k + 2].tolist())
    return rows


def _check_coefficients(coefficients, steps: int) -> list[list[float]]:
    rows = [list(map(float, r)) for r in coefficients]
    if len(rows) != steps - 1 or any(len(r) != k + 2 for k, r in enumerate(rows)):
        raise UserError(f"fitted_multistep needs {steps - 1} coefficient rows for a grid of {steps} times, "
                        "row k holding k + 2 numbers [a_k, b_k0, …, b_kk]; pass fit_multistep(...).coefficients "
                        "with the grid it was fitted on")
    return rows


def _run(denoiser, x, grid, rows, callback=None):
    """The multistep recursion; ``rows`` may be floats or (autograd) tensors."""
    ms = []
    for k in range(len(grid) - 1):
        ms.append(denoiser(x, grid[k]).x0)
        a, *b = rows[k]
        x = a * x + sum(bj * mj for bj, mj in zip(b, ms))
        if callback is not None:
            callback(k + 1, grid[k + 1], x)
    return x


def fitted_multistep(denoiser, process, x, grid, *, generator=None, callback=None, coefficients=None):
    """x_{k+1} = a_k x_k + Σ_{j≤k} b_kj x̂₀(x_j, t_j) with ``coefficients`` from ``fit_multistep`` (default:
    DPM-Solver++(2M)'s, ``multistep_coefficients``). NFE = steps − 1 (+1 for the final denoise)."""
    rows = multistep_coefficients(process, grid) if coefficients is None else _check_coefficients(coefficients, len(grid))
    return _run(denoiser, x, grid, rows, callback)


def fit_multistep(model, process, grid, x_T: Tensor, *, prediction: str = "eps", reference: Tensor | None = None,
                  steps: int | None = None, starts=ORDERS, rounds: int = 5, max_iter: int = 100,
                  batch_size: int | None = None, rtol: float = 1e-7, objective: str = "rms") -> FittedMultistep:
    """Fit the coefficients of ``fitted_multistep`` on ``grid`` (a tensor of times, e.g. ``optimize_grid(...)
    .grid``, or a grid kind with ``steps``) to ``model`` on the calibration noise ``x_T`` (see the module
    docstring). The loss is not convex: L-BFGS runs from each of ``starts`` (orders of
    ``multistep_coefficients``: 1 = DDIM, 2 = DPM-Solver++(2M), 3 = 3M) for ``rounds`` rounds of ``max_iter``
    iterations (a restart clears its curvature memory, which helps on this loss), and the best result on the
    calibration noise is kept. ``reference``: the exact output for ``x_T`` if already known. ``batch_size``
    splits the calibration batch for the gradient (memory); the result is the same. ``objective``: the error
    minimised and reported, ``"rms"`` or ``"mean"`` distance (``tuning.sampling_error``). Needs a model that is
    differentiable in x."""
    from . import time_grid  # here to avoid an import cycle
    from .tuning import check_objective, check_reference, distances, exact_solution, squared_distances

    check_objective(objective)
    starts = tuple(starts)
    if not starts or any(order not in ORDERS for order in starts):
        raise UserError(f"fit_multistep: starts must be a non-empty list of orders 1, 2 or 3 (1 = DDIM, 2 = "
                        f"DPM-Solver++(2M), 3 = 3M), got {list(starts)}")
    if isinstance(grid, str):
        if steps is None:
            raise UserError("fit_multistep with a grid kind needs steps=")
        grid = time_grid(process, steps, grid)
    grid = explicit_grid(grid, process, 2, "fit_multistep's grid")
    if reference is None:
        reference = exact_solution(model, process, x_T, prediction=prediction, rtol=rtol)
    check_reference(reference, x_T)
    denoiser = Denoiser(model, process, prediction)
    t_end = as_time(grid[-1], 1, like=x_T)
    shape = list(range(2, len(grid) + 1))  # row k has k + 2 numbers
    n = batch_size or len(x_T)
    chunks = list(zip(x_T.split(n), reference.split(n)))

    def summed_loss(flat, x, ref):
        """Σ_i d_i² ("rms") or Σ_i d_i ("mean") over a chunk, d_i the distance to the exact output."""
        out = denoiser(_run(denoiser, x, grid, flat.split(shape)), t_end.expand(len(x))).x0
        d2 = squared_distances(out, ref)
        return d2.sum() if objective == "rms" else distances(d2).sum()

    def error_of(flat) -> float:
        with torch.no_grad():
            e = sum(float(summed_loss(flat, x, ref)) for x, ref in chunks) / len(x_T)
        e = math.sqrt(e) if objective == "rms" else e
        return e if math.isfinite(e) else math.inf

    @torch.enable_grad()
    def fit_from(start):
        params = start.clone().requires_grad_(True)

        def closure():
            total = 0.0
            grad = torch.zeros_like(params)
            for x, ref in chunks:
                loss = summed_loss(params, x, ref) / len(x_T)
                # the gradient for the coefficients only: nothing accumulates in a network's own parameters
                grad += torch.autograd.grad(loss, params)[0]
                total += loss.item()
            params.grad = grad
            return torch.tensor(total)

        iterations = 0
        for _ in range(rounds):
            optimizer = torch.optim.LBFGS([params], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-12,
                                          tolerance_change=1e-14, line_search_fn="strong_wolfe")
            optimizer.step(closure)
            iterations += optimizer.state[params].get("n_iter", 0)
        return params.detach(), iterations

    first = None
    best, best_error, total_iterations = None, math.inf, 0
    for order in starts:
        start = torch.tensor(sum(multistep_coefficients(process, grid, order), []), dtype=x_T.dtype, device=x_T.device)
        start_error = error_of(start)
        first = start_error if first is None else first
        if best is None or start_error < best_error:
            best, best_error = start, start_error
        fitted, iters = fit_from(start)
        total_iterations += iters
        error = error_of(fitted)
        if error < best_error:
            best, best_error = fitted, error
    if best is None or not math.isfinite(best_error):
        raise UserError("fit_multistep: the sampler's output is not finite from any starting coefficients; the "
                        "model may be under-trained or diverged")
    return FittedMultistep(grid=grid.clone(), coefficients=[r.tolist() for r in best.cpu().split(shape)],
                           error=best_error, start_error=first, iterations=int(total_iterations))
