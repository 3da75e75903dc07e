"""Generic ODE solvers (lecture §4): explicit Euler, and adaptive Dormand–Prince 5(4) with error control.

They integrate dy/dt = fun(t, y) for a tensor state y from t0 to t1 (t1 < t0 is allowed: time runs
backwards). The adaptive solver follows Hairer, Nørsett & Wanner, *Solving ODEs I*, §II.4–5 (the same
tableau and error norm as scipy's ``solve_ivp(method="RK45")``, against which it is tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .errors import UserError

# Dormand–Prince 5(4) tableau (Dormand & Prince 1980).
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
# 5th-order minus embedded 4th-order weights: the local error estimate.
_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)


def euler_step(fun: Callable[[float, Tensor], Tensor], t: float, y: Tensor, h: float) -> Tensor:
    """One explicit Euler step y(t + h) ≈ y + h·fun(t, y) (lecture §4; local error O(h²))."""
    return y + h * fun(t, y)


@dataclass
class ODESolution:
    y: Tensor
    nfe: int
    steps: int
    rejected: int


def _rms(x: Tensor) -> Tensor:
    """Root mean square, accumulated in at least float32 (a float16 square overflows above 256)."""
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    return x.pow(2).mean().sqrt()


def _advance(t: float, h: float, direction: float, t1: float) -> float:
    """t + direction·h, or t1 itself for the step that reaches it: t + (t1 − t) need not round to t1, and where
    |t| ≫ |t1| (VE's σ̃ from 1e15 down to 0.01) it rounds to 0, a σ̃ whose log-SNR is infinite."""
    return t1 if h >= abs(t1 - t) else t + direction * h


def _min_step(t: float) -> float:
    """The shortest step that moves t: ten units in the last place, as in scipy's RK45; a step rejected below it
    means the tolerances ask for more than floating point can give."""
    return 10 * abs(math.nextafter(t, math.inf) - t)


def _min_rtol(dtype: torch.dtype) -> float:
    """The smallest rtol worth trying on a state of ``dtype``: a thousandth of its machine epsilon, and never below
    scipy's bound of 100 float64 epsilons (the solver's clock t is a float64). Below eps, round-off in the
    right-hand side dominates the error estimate and shrinks only in proportion to the step, so the step count
    grows like eps/rtol (float32, a small MLP on VP: 2,925 evaluations at rtol 1e-10, 26,757 at 1e-11, 267,735 at
    1e-12; at 1e-16 it ran for minutes). 100 eps of the state's own dtype would refuse float32's default 1e-5 (123
    evaluations) and exact_solution's 1e-7 (225)."""
    return max(1e-3 * torch.finfo(dtype).eps, 100 * torch.finfo(torch.float64).eps)


def _check_finite(t: float, y: Tensor, ks) -> None:
    """A one-line error where a right-hand side is not finite: no step size helps when the model returned
    NaN/inf (or a half-precision state overflowed)."""
    if all(bool(torch.isfinite(k).all()) for k in ks):
        return
    narrow = y.dtype in (torch.float16, torch.bfloat16)
    raise UserError(f"the ODE's right-hand side is not finite (at solver time {t:g}): "
                    + (f"{y.dtype} overflowed, use float32 or float64" if narrow
                       else "the model returned NaN/inf; check the model"))


def _usable(h: float, rtol: float, atol: float, dtype: torch.dtype) -> float:
    """``h`` if it is a positive finite step; else a one-line error. The error norm of a far too small atol
    overflows when squared (|f|/atol ≈ 1e300), or is 0/0 where atol rounds to 0 in the state's dtype: the step
    becomes 0 or NaN, and a NaN time reached the schedule lookup (DDPM: an IndexError)."""
    if not 0 < h < math.inf:
        raise UserError(f"dopri5: rtol={rtol:g}, atol={atol:g} give no usable first step on a {dtype} state (the "
                        "error norm over- or underflowed): loosen rtol/atol")
    return h


def _initial_step(fun, t0, t1, y0, f0, rtol, atol) -> float:
    """Starting step size of Hairer et al. (II.4, algorithm on p. 169), as in scipy; never longer than the
    interval to integrate, so that ``fun`` is only called inside it (a short interval near σ̃ = 0 would
    otherwise probe a negative σ̃)."""
    direction, interval = (1.0 if t1 >= t0 else -1.0), abs(t1 - t0)
    scale = atol + y0.abs() * rtol
    d0, d1 = _rms(y0 / scale), _rms(f0 / scale)
    h0 = _usable(1e-6 if d0 < 1e-5 or d1 < 1e-5 else float(0.01 * d0 / d1), rtol, atol, y0.dtype)
    h0 = min(h0, interval)
    y1 = y0 + direction * h0 * f0
    t_probe = _advance(t0, h0, direction, t1)
    f1 = fun(t_probe, y1)
    _check_finite(t_probe, y1, [f1])
    d2 = float(_rms((f1 - f0) / scale)) / h0
    h1 = max(1e-6, h0 * 1e-3) if max(float(d1), d2) <= 1e-15 else (0.01 / max(float(d1), d2)) ** (1 / 5)
    return _usable(min(100 * h0, h1, interval), rtol, atol, y0.dtype)


def dopri5(fun: Callable[[float, Tensor], Tensor], t0: float, t1: float, y0: Tensor, *, rtol: float = 1e-5,
           atol: float = 1e-5, max_steps: int = 100_000, on_step: Callable[[float, Tensor], None] | None = None
           ) -> ODESolution:
    """Integrate dy/dt = fun(t, y) from t0 to t1 with adaptive Dormand–Prince 5(4).

    A step is accepted when the RMS of err/(atol + rtol·max(|y|, |y_new|)) is ≤ 1; the next step is
    h·min(10, max(0.2, 0.9·err^(−1/5))). The first-same-as-last property makes each accepted step cost 6
    evaluations. ``on_step(t, y)`` is called after each accepted step. An rtol below ``_min_rtol`` of y's
    dtype, a right-hand side that is not finite, and a step rejected below the round-off of t are one-line
    UserErrors: no shorter step can fix them, and they used to run out max_steps (or reach a NaN time).
    """
    if rtol < _min_rtol(y0.dtype):
        raise UserError(f"rtol = {rtol:g} is finer than a {y0.dtype} state can resolve (round-off would swamp "
                        f"the error estimate and the steps multiply): use rtol >= {_min_rtol(y0.dtype):.1e}"
                        + ("" if y0.dtype == torch.float64 else ", or a float64 state"))
    direction = 1.0 if t1 >= t0 else -1.0
    t, y = float(t0), y0
    if abs(t1 - t) <= 1e-12 * max(1.0, abs(t1)):  # nothing to integrate (e.g. a one-point grid)
        return ODESolution(y=y, nfe=0, steps=0, rejected=0)
    f = fun(t, y)
    _check_finite(t, y, [f])
    nfe, steps, rejected = 1, 0, 0
    h = _initial_step(fun, t, t1, y, f, rtol, atol)
    nfe += 1
    while direction * (t1 - t) > 1e-12 * max(1.0, abs(t1)):
        if steps + rejected >= max_steps:
            raise UserError(f"dopri5: more than {max_steps} steps between t={t0:g} and t={t1:g} (now at t={t:g}); the "
                            "ODE is too stiff for these tolerances: loosen rtol/atol, or check the model")
        h = min(max(h, _min_step(t)), abs(t1 - t))
        dh = direction * h
        t_new = _advance(t, h, direction, t1)
        k, states = [f], [y]
        for i in range(1, 6):
            states.append(y + dh * sum(a * kj for a, kj in zip(_A[i], k) if a != 0.0))
            k.append(fun(t + dh * _C[i] if _C[i] < 1 else t_new, states[-1]))
        y_new = y + dh * sum(b * kj for b, kj in zip(_A[6], k) if b != 0.0)
        states.append(y_new)
        k.append(fun(t_new, y_new))  # first-same-as-last: this is f at the next step's start
        nfe += 6
        err = dh * sum(e * kj for e, kj in zip(_E, k) if e != 0.0)
        scale = atol + torch.maximum(y.abs(), y_new.abs()) * rtol
        err_norm = float(_rms(err / scale))
        if not math.isfinite(err_norm) and all(bool(torch.isfinite(s).all()) for s in states):
            _check_finite(t, y, k)  # finite states, non-finite slopes: no shorter step helps (an overflowed
            # stage state, as in a float32 state of VE's σ_max = 1e30 stepped at once to σ_min, is rejected)
        if err_norm <= 1.0:
            t, y, f = t_new, y_new, k[6]
            steps += 1
            if on_step is not None:
                on_step(t, y)
            factor = 10.0 if err_norm == 0 else min(10.0, max(0.2, 0.9 * err_norm ** -0.2))
        else:
            rejected += 1
            factor = max(0.2, 0.9 * err_norm ** -0.2)
            if h * factor < _min_step(t):
                raise UserError(f"dopri5: the step size fell below the round-off of t={t:g} (rtol={rtol:g}, "
                                f"atol={atol:g} on a {y.dtype} state ask for more than floating point gives): "
                                "loosen rtol/atol, or check the model")
        h *= factor
    return ODESolution(y=y, nfe=nfe, steps=steps, rejected=rejected)
