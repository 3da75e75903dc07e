"""Samplers: every one is a function ``sampler(denoiser, process, x_T, grid, *, generator, callback, **options)``
that takes the state from grid[0] to grid[−1]; ``sample`` is the one entry point users call.

| name                  | method                                                  | NFE for ``steps=K``        |
|-----------------------|---------------------------------------------------------|----------------------------|
| ``ancestral``         | posterior q(x_s|x_t, x̂₀) sampling (Ho et al. Alg. 2)    | K                          |
| ``ddim``              | DDIM, η = 0 deterministic / η > 0 stochastic            | K                          |
| ``euler_maruyama``    | reverse SDE, Euler–Maruyama (lecture §5)                | K                          |
| ``predictor_corrector`` | EM predictor + Langevin corrector (Song et al. Alg. 1) | (K − 1)(1 + corrector_steps) + 1 |
| ``ode_euler``         | probability-flow ODE, Euler                             | K                          |
| ``ode_heun``          | probability-flow ODE, Heun (2nd order)                  | 2K − 1                     |
| ``ode_rk45``          | probability-flow ODE, adaptive Dormand–Prince 5(4)      | adaptive (``rtol``/``atol``) |
| ``dpmpp_2m``          | DPM-Solver++(2M), x̂₀ form in λ (Lu et al. 2022b Alg. 2) | K                          |
| ``dpmpp_3m``          | DPM-Solver++(3M), 3-step multistep (authors' weights*)  | K                          |
| ``dpmpp_2m_sde``      | SDE-DPM-Solver++(2M), midpoint form                     | K                          |
| ``unipc``             | UniPC-2 (bh2) predictor + free corrector (Zhao et al.)  | K                          |
| ``edm_heun``          | EDM Alg. 2 (Heun + S_churn) in σ̃ = σ/α (Karras et al.)  | 2K − 1                     |
| ``fitted_multistep``  | linear multistep, coefficients fitted to the model      | K                          |

The counts include the final denoising call x̂₀(x_{t_min}, t_min) that ``sample`` makes by default.
(*) ``dpmpp_3m`` keeps the coefficients of the authors' code and diffusers, which weight the quadratic term of
x̂₀(λ) by half: it converges with order 2, not 3 (see ``dpm_solver.dpmpp_update``).
``optimize_grid`` (``tuning.py``) fits the K times of a deterministic sampler to a model; pass its ``.grid``.
``fit_multistep`` (``fitted.py``) fits the coefficients of ``fitted_multistep`` on a grid; pass its ``.grid`` and
``coefficients=`` its ``.coefficients``.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Callable

import torch
from torch import Tensor

from .._tensor import as_time
from ..errors import UserError, check_count
from ..grids import explicit_grid, time_grid
from ..parametrization import Denoiser
from .ancestral import ancestral, ddim
from .dpm_solver import dpmpp_2m, dpmpp_2m_sde, dpmpp_3m
from .edm import edm_heun
from .fitted import FittedMultistep, fit_multistep, fitted_multistep
from .ode import ode_euler, ode_heun, ode_rk45
from .sde import euler_maruyama, predictor_corrector
from .tuning import GridSearchResult, exact_solution, optimize_grid
from .unipc import unipc

SAMPLERS: dict[str, Callable] = {
    "ancestral": ancestral,
    "ddim": ddim,
    "euler_maruyama": euler_maruyama,
    "predictor_corrector": predictor_corrector,
    "ode_euler": ode_euler,
    "ode_heun": ode_heun,
    "ode_rk45": ode_rk45,
    "dpmpp_2m": dpmpp_2m,
    "dpmpp_3m": dpmpp_3m,
    "dpmpp_2m_sde": dpmpp_2m_sde,
    "unipc": unipc,
    "edm_heun": edm_heun,
    "fitted_multistep": fitted_multistep,
}


def samplers() -> list[str]:
    """The names ``sample`` accepts."""
    return list(SAMPLERS)


def get_sampler(name: str) -> Callable:
    if name not in SAMPLERS:
        raise UserError(f"unknown sampler {name!r}: choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def sampler_options(name: str) -> list[str]:
    """The keyword options the sampler ``name`` takes, besides ``generator`` and ``callback``."""
    return [option for option, p in inspect.signature(get_sampler(name)).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and option not in ("generator", "callback")]


@torch.no_grad()
def sample(model, process, sampler: str = "ancestral", steps: int | None = None, shape=None, *,
           prediction: str = "eps", generator: torch.Generator | None = None, x_T: Tensor | None = None,
           callback: Callable | None = None, grid: Tensor | str = "uniform", denoise: bool = True,
           dtype=torch.float32, device=None, return_nfe: bool = False, **options):
    """Draw samples at t = 0 (the data) from ``model`` on ``process``.

    model       any callable ``model(x, t) -> prediction`` (t of shape (n,)); it is called in x_T's dtype
    sampler     a name from ``samplers()``; ``options`` go to it (``variance``, ``eta``, ``snr``, ``rtol`` …)
    steps       number of grid points K (default: the process's, T for DDPM)
    shape       (n, …) of the samples, when ``x_T`` is not given
    prediction  what the model predicts: ``eps``, ``x0``, ``v`` or ``score``
    x_T         the starting noise (else drawn from the prior with ``generator``)
    callback    ``callback(k, t, x)`` with k = 0 at x_T, after every step, and at the end with t = 0
    grid        a grid kind (``uniform``, ``quadratic``, ``logsnr``, ``karras``) or an explicit decreasing
                tensor of times
    denoise     finish with x̂₀ = E[x₀ | x_{t_min}] (one model call), as the t = 1 step of DDPM does
    return_nfe  also return the number of model evaluations
    """
    step_fn = get_sampler(sampler)
    accepted = sampler_options(sampler)
    unknown = [name for name in options if name not in accepted]
    if unknown:
        raise UserError(f"the {sampler} sampler takes no option {', '.join(unknown)} "
                        f"(its options: {', '.join(accepted) or 'none'})")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise UserError(f"generator must be a torch.Generator (or None), got {type(generator).__name__}")
    if callback is not None and not callable(callback):
        raise UserError(f"callback must be a function callback(k, t, x), got {type(callback).__name__}")
    if x_T is None:
        if shape is None:
            raise UserError("give either shape=(n, ...) or the starting noise x_T")
        if not isinstance(shape, (tuple, list, torch.Size)) or not shape:
            raise UserError(f"shape must be a tuple (n, ...) with n >= 1 samples, got {shape!r}")
        shape = (check_count("the number of samples n = shape[0]", shape[0], 1),
                 *(check_count("every size in shape", s, 1) for s in shape[1:]))
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise UserError(f"dtype must be a floating torch dtype such as torch.float32, got {dtype!r}")
        x_T = process.prior_sample(shape, generator, dtype=dtype, device=device)
    elif not (isinstance(x_T, Tensor) and x_T.is_floating_point() and x_T.ndim >= 1 and len(x_T) >= 1):
        raise UserError("x_T must be a floating-point tensor of shape (n, ...) with n >= 1 "
                        f"(got {type(x_T).__name__} {getattr(x_T, 'dtype', '')} {tuple(getattr(x_T, 'shape', ()))})")
    elif not bool(torch.isfinite(x_T).all()):
        raise UserError("x_T contains NaN or inf; start from finite noise")
    elif shape is not None and not (isinstance(shape, (tuple, list, torch.Size)) and tuple(shape) == x_T.shape):
        raise UserError(f"shape={shape!r} disagrees with x_T of shape {tuple(x_T.shape)}: give only one of them")
    grid_kind = grid
    if isinstance(grid, str):
        grid = time_grid(process, steps if steps is not None else process.default_steps(), grid)
    else:
        grid = explicit_grid(grid, process)
        if steps is not None and check_count("steps", steps, 1) != len(grid):
            raise UserError(f"steps={steps} disagrees with the explicit grid of {len(grid)} times: give one of them")
    if len(grid) == 1:
        warnings.warn(f"a grid of 1 time makes no {sampler} step: the result is "
                      + ("the model's one-call estimate E[x0 | x_T], close to the data mean, not a sample"
                         if denoise else "x_T itself") + "; use steps >= 2", stacklevel=3)
    if options.get("coefficients") is not None and isinstance(grid_kind, str):
        raise UserError("fitted coefficients belong to the grid they were fitted on: pass grid=fit.grid with them")
    denoiser = Denoiser(model, process, prediction)
    last = [0]  # the callback's k: 0 at x_T, then every step (adaptive solvers may take more than the grid's)
    if callback is not None:
        user_callback = callback

        def callback(k, t, x):
            last[0] = k
            user_callback(k, t, x)

        callback(0, grid[0], x_T)
    x = step_fn(denoiser, process, x_T, grid, generator=generator, callback=callback, **options)
    if denoise:
        x = denoiser(x, as_time(grid[-1], x.shape[0], like=x)).x0
        if callback is not None:
            callback(max(last[0] + 1, len(grid)), torch.zeros((), dtype=torch.float64), x)
    if not bool(torch.isfinite(x).all()):
        raise UserError("sampling produced NaN/inf: the model returned non-finite values or the sampler diverged; "
                        "check the model (an under-trained or diverged one), or try another sampler or grid")
    return (x, denoiser.nfe) if return_nfe else x


__all__ = ["sample", "samplers", "get_sampler", "sampler_options", "SAMPLERS", "optimize_grid", "GridSearchResult",
           "exact_solution", "fit_multistep", "FittedMultistep", "fitted_multistep", "ancestral", "ddim",
           "euler_maruyama", "predictor_corrector", "ode_euler", "ode_heun", "ode_rk45", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde",
           "unipc", "edm_heun"]
