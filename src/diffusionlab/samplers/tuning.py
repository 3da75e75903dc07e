"""Time grids fitted to a model: the K sampling times that make a given sampler follow the model's own
probability-flow ODE most closely (in the spirit of Sabour et al. 2024, "Align Your Steps", which fits the
grid to the model; here the criterion is the trajectory error itself, as in Xue et al. 2024's optimal
stepsizes, rather than a KL bound).

    result = optimize_grid(model, process, "unipc", steps=10, x_T=calibration_noise)
    x = sample(model, process, "unipc", x_T=fresh_noise, grid=result.grid)

The objective is E(grid) = sqrt(mean_i |x̂_i(grid) − x_i^ref|²) (``objective="rms"``) or mean_i |x̂_i(grid) −
x_i^ref| (``"mean"``): x̂ the sampler's output from the calibration noise x_T, x^ref the same noise carried by
the adaptive ODE solver (``ode_rk45``) to t_min and denoised, i.e. the exact answer every deterministic
sampler approximates. Candidate times live on a lattice: the
training steps i/T of a discrete process, else 1,001 times uniform in log-SNR. Coordinate descent moves one
interior time at a time (t_max stays): first over ``candidates`` positions uniform in log-SNR between its
neighbours, then by a halving pattern search in lattice steps; sweeps repeat until none improves. The last
time is free too, so the search also decides where the final jump to x̂₀ starts.

Cost: about sweeps·(K−1)·(candidates + 10) sampler runs of K evaluations on the calibration batch, plus the
reference. Fit on calibration noise and evaluate on fresh noise.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ..errors import UserError, check_count

DETERMINISTIC = ("ddim", "ode_euler", "ode_heun", "dpmpp_2m", "dpmpp_3m", "unipc", "edm_heun", "fitted_multistep")


class GridSearchResult(NamedTuple):
    grid: Tensor          # the fitted times, strictly decreasing, float64
    error: float          # E(grid) on the calibration noise
    start_error: float    # E of the starting grid
    runs: int             # sampler runs spent


def grid_lattice(process, size: int = 1001) -> Tensor:
    """Candidate times, decreasing from t_max to t_min: i/T for a discrete process, else ``size`` times uniform
    in log-SNR."""
    if process.discrete:
        return torch.arange(process.T, 0, -1, dtype=torch.float64) / process.T
    lam = process.log_snr(torch.tensor([process.t_max, process.t_min], dtype=torch.float64))
    t = process.t_from_log_snr(torch.linspace(float(lam[0]), float(lam[1]), size, dtype=torch.float64))
    t[0], t[-1] = process.t_max, process.t_min
    return t


OBJECTIVES = ("rms", "mean")


def check_objective(objective: str) -> str:
    if objective not in OBJECTIVES:
        raise UserError(f"unknown objective {objective!r}: use 'rms' (root mean squared distance) or 'mean' "
                        "(mean distance, robust to the few points whose exact trajectory changes mode)")
    return objective


def squared_distances(x: Tensor, ref: Tensor) -> Tensor:
    """d_i² = |x_i − x_i^ref|² per sample (Euclidean over all but the first dimension), shape (n,)."""
    return ((x - ref).reshape(len(x), -1) ** 2).sum(1)


def distances(d2: Tensor) -> Tensor:
    """d_i from d_i², with a finite gradient where d_i = 0."""
    return d2.clamp_min(torch.finfo(d2.dtype).tiny).sqrt()


def sampling_error(x: Tensor, ref: Tensor, objective: str = "rms") -> Tensor:
    """The distance of a sampler's outputs x to the exact ones, d_i = |x_i − x_i^ref| (Euclidean, per sample):
    ``"rms"`` sqrt(mean_i d_i²); ``"mean"`` mean_i d_i. A tensor, differentiable in x."""
    d2 = squared_distances(x, ref)
    return d2.mean().sqrt() if check_objective(objective) == "rms" else distances(d2).mean()


def rms_error(x: Tensor, ref: Tensor) -> float:
    """sqrt(mean over samples of the squared Euclidean distance)."""
    return float(sampling_error(x, ref, "rms"))


def exact_solution(model, process, x_T: Tensor, *, prediction: str = "eps", rtol: float = 1e-7) -> Tensor:
    """What every deterministic sampler approximates: the probability-flow ODE solved from x_T at t_max to
    t_min by ``ode_rk45`` (rtol = atol = ``rtol``), then x̂₀(x_{t_min}, t_min)."""
    from . import sample  # here to avoid an import cycle

    t_ends = torch.tensor([process.t_max, process.t_min], dtype=torch.float64)
    return sample(model, process, "ode_rk45", x_T=x_T, grid=t_ends, prediction=prediction, rtol=rtol, atol=rtol)


def check_reference(reference, x_T: Tensor) -> None:
    """The exact outputs given for ``x_T`` must match it draw for draw (broadcasting would fit to garbage)."""
    if not torch.is_tensor(reference) or reference.shape != x_T.shape:
        got = tuple(reference.shape) if torch.is_tensor(reference) else type(reference).__name__
        raise UserError(f"reference must be the exact outputs of x_T, shape {tuple(x_T.shape)}, got {got}")


def optimize_grid(model, process, sampler: str, steps: int, x_T: Tensor, *, prediction: str = "eps",
                  reference: Tensor | None = None, start="logsnr", sweeps: int = 4, candidates: int = 16,
                  rtol: float = 1e-7, objective: str = "rms", **options) -> GridSearchResult:
    """Fit the ``steps`` grid times of a deterministic ``sampler`` to ``model`` on calibration noise ``x_T``
    (see the module docstring). ``start`` is a grid kind, a tensor of times, or a list of these: the search
    runs from each and keeps the best. ``reference`` is the exact output for ``x_T`` if already known;
    ``options`` go to the sampler. ``objective``: the error minimised, ``sampling_error``'s ``"rms"`` or
    ``"mean"``; the mean distance is less swayed by the rare calibration points whose exact trajectory ends in
    another component than any short grid reaches."""
    check_objective(objective)
    if sampler not in DETERMINISTIC:
        raise UserError(f"optimize_grid fits deterministic samplers ({', '.join(DETERMINISTIC)}), not {sampler!r}")
    steps = check_count("optimize_grid steps", steps, 2)
    candidates = check_count("optimize_grid candidates", candidates, 1)
    if sampler == "ddim" and float(options.get("eta", 0.0)) != 0.0:
        raise UserError("optimize_grid fits deterministic samplers: ddim with eta > 0 is stochastic (drop eta)")
    if reference is None:
        reference = exact_solution(model, process, x_T, prediction=prediction, rtol=rtol)
    check_reference(reference, x_T)
    # one grid (a tensor, or a list of numbers) or a list of starts (kinds or grids)
    one = isinstance(start, str) or torch.is_tensor(start) or (
        isinstance(start, (list, tuple)) and all(isinstance(v, (int, float)) for v in start))
    starts = [start] if one else list(start)
    results = [_search(model, process, sampler, steps, x_T, prediction, reference, s, sweeps, candidates, objective,
                       options)
               for s in starts]
    best = min(results, key=lambda r: r.error)
    return best._replace(runs=sum(r.runs for r in results))


def _search(model, process, sampler, steps, x_T, prediction, reference, start, sweeps, candidates, objective,
            options):
    """Coordinate descent on the lattice from one starting grid (see the module docstring)."""
    from . import explicit_grid, sample, time_grid  # here to avoid an import cycle

    lattice = grid_lattice(process)
    if int(steps) > len(lattice):
        raise UserError(f"steps={steps} exceeds the {len(lattice)} candidate times")
    lam = process.log_snr(lattice)
    runs = 0

    def error(idx: list[int]) -> float:
        nonlocal runs
        runs += 1
        x = sample(model, process, sampler, x_T=x_T, grid=lattice[idx], prediction=prediction, **options)
        e = float(sampling_error(x, reference, objective))
        return e if math.isfinite(e) else math.inf

    # the starting grid, moved onto the lattice (strictly increasing indices)
    start_t = time_grid(process, steps, start) if isinstance(start, str) else explicit_grid(
        start, process, 2, "a starting grid of optimize_grid")
    if len(start_t) != int(steps):
        raise UserError(f"a starting grid must have steps={steps} times, got {len(start_t)}")
    idx = [int(torch.argmin((lattice - t).abs())) for t in start_t]
    for k in range(1, len(idx)):
        idx[k] = max(idx[k], idx[k - 1] + 1)
    if idx[-1] >= len(lattice):
        idx = list(range(len(idx)))
    best = start_error = error(idx)
    for _ in range(sweeps):
        improved = False
        for k in range(1, len(idx)):
            lo, hi = idx[k - 1] + 1, (idx[k + 1] - 1 if k + 1 < len(idx) else len(lattice) - 1)
            if hi <= lo:
                continue
            targets = torch.linspace(float(lam[lo]), float(lam[hi]), candidates + 1, dtype=torch.float64)
            tried = {idx[k]}
            for v in sorted({lo + int(torch.argmin((lam[lo:hi + 1] - x).abs())) for x in targets} - tried):
                tried.add(v)
                trial = idx[:k] + [v] + idx[k + 1:]
                e = error(trial)
                if e < best:
                    best, idx, improved = e, trial, True
            step = max(1, (hi - lo) // (2 * candidates))
            while step >= 1:
                moved = False
                for v in (idx[k] - step, idx[k] + step):
                    if lo <= v <= hi and v not in tried:
                        tried.add(v)
                        trial = idx[:k] + [v] + idx[k + 1:]
                        e = error(trial)
                        if e < best:
                            best, idx, improved, moved = e, trial, True, True
                if not moved:
                    step //= 2
        if not improved:
            break
    return GridSearchResult(grid=lattice[idx].clone(), error=best, start_error=start_error, runs=runs)
