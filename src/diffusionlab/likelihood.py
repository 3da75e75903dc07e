"""Exact likelihoods through the probability-flow ODE, and the unit conversions to bits per dimension.

Instantaneous change of variables (Chen et al. 2018; Song et al. 2021, §4.3 and appendix D.2): along a
solution x_t of dx/dt = v(x, t),

    d log p_t(x_t)/dt = −∇·v(x_t, t)   ⇒   log p_{t_min}(x) = log p_T(x_T) + ∫_{t_min}^{T} ∇·v(x_t, t) dt,

with x_T the ODE solution started at x. It is integrated as the same ODE in the noise-to-signal ratio
σ̃ = σ/α for y = x/α, dy/dσ̃ = u(y, σ̃) = ε̂(α y, t(σ̃)) (see ``dynamics.scaled_probability_flow``), whose
right-hand side is smooth even where β(t) jumps. The density of y = x/α is α^D times that of x, so

    log p_{t_min}(x) = log p_T(x_T) + D log α(T) − D log α(t_min) + ∫_{σ̃(t_min)}^{σ̃(T)} ∇_y·u dσ̃,

x_T = α(T) y(σ̃(T)). For data of unit variance u is σ̃ y/(1 + σ̃²), whose divergence D σ̃/(1 + σ̃²) integrates to
½ D log(1 + σ̃²) ≈ D log σ̃(T) ≈ 5 D nats on VP: the solver integrates only ∇_y·u − D σ̃/(1 + σ̃²) (a control
variate) and the closed form is added back, so that the accumulated log-density stays small next to its
error tolerance in high dimension (on VP and DDPM the added term cancels the Jacobian: α² = 1/(1 + σ̃²)).

The divergence is exact (D vector–Jacobian products; for low dimension) or Hutchinson's estimate
E_z[zᵀ (∂u/∂y) z] with Rademacher or Gaussian probes z fixed along the solve (Grathwohl et al. 2019).
The result is the density of p_{t_min} (the data smoothed by σ(t_min)).

Bits/dim: for integer data on L levels scaled to [−1, 1] (bin width δ = 2/(L − 1)), uniform
dequantisation y = x + δ·(u − ½) gives the bound log P(x) ≥ E_u[log p(y)] + D log δ — no magic offsets:
the Jacobian of the scaling is the explicit D log δ (LESSONS #6).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._tensor import randn_like
from .dynamics import noise_to_signal, scaled_probability_flow
from .errors import UserError, check_count, check_range
from .parametrization import Denoiser
from .solvers import dopri5

PROBES = ("rademacher", "gaussian")


def _grad(out: Tensor, x: Tensor, retain_graph: bool = False) -> Tensor:
    """∂out/∂x by autograd, zeros where out does not depend on x: a model that ignores its input (a constant ε̂)
    has divergence 0, and autograd refuses an output without a graph."""
    if not out.requires_grad:
        return torch.zeros_like(x)
    (g,) = torch.autograd.grad(out, x, retain_graph=retain_graph, allow_unused=True)
    return torch.zeros_like(x) if g is None else g


def _divergence_exact(v_fn, x: Tensor) -> tuple[Tensor, Tensor]:
    """(v, ∇·v) with the trace of ∂v/∂x from one vector–Jacobian product per dimension."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        v = v_fn(x)
        flat_v = v.reshape(x.shape[0], -1)
        div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for d in range(flat_v.shape[1]):
            g = _grad(flat_v[:, d].sum(), x, retain_graph=d + 1 < flat_v.shape[1])
            div = div + g.reshape(x.shape[0], -1)[:, d]
    return v.detach(), div


def _divergence_hutchinson(v_fn, x: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    """(v, zᵀ(∂v/∂x)z): an unbiased estimate of ∇·v when E[zzᵀ] = I."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        v = v_fn(x)
        g = _grad((v * z).sum(), x)
    return v.detach(), (g * z).reshape(x.shape[0], -1).sum(dim=1)


def _probe(x: Tensor, kind: str, generator) -> Tensor:
    z = randn_like(x, generator)
    return z if kind == "gaussian" else torch.sign(z)


def log_likelihood(model, process, x: Tensor, prediction: str = "eps", *, trace: str = "auto", probes: int = 1,
                   probe: str = "rademacher", rtol: float = 1e-5, atol: float = 1e-5, generator=None,
                   return_info: bool = False):
    """log p(x) in nats per example, shape (n,), by the probability-flow ODE (see module docstring).

    trace   ``exact`` (autograd, D passes per evaluation), ``hutchinson``, or ``auto`` (exact for D ≤ 16)
    probes  number of Hutchinson probes per example; their mean is returned and, with ``return_info``, the
            standard error over probes (info also holds ``nfe``)
    """
    if trace not in ("auto", "exact", "hutchinson"):
        raise UserError(f"unknown trace {trace!r}: choose 'auto', 'exact' or 'hutchinson'")
    if probe not in PROBES:
        raise UserError(f"unknown probe {probe!r}: choose one of {', '.join(PROBES)}")
    if not (isinstance(x, Tensor) and x.is_floating_point() and x.ndim >= 1 and len(x) >= 1):
        raise UserError("log_likelihood needs x as a floating-point tensor of shape (n, ...) with n >= 1, got "
                        f"{type(x).__name__} {getattr(x, 'dtype', '')} {tuple(getattr(x, 'shape', ()))}")
    if not bool(torch.isfinite(x).all()):  # else the solver blames the model for the data's NaN
        raise UserError("log_likelihood: x contains NaN or inf; remove or fix those points of the data")
    probes = check_count("probes", probes, 1)
    rtol = check_range("rtol", rtol, 0.0, 1.0, open_low=True)
    atol = check_range("atol", atol, 0.0, 1.0, open_low=True)
    n, dims = x.shape[0], x[0].numel()
    exact = trace == "exact" or (trace == "auto" and dims <= 16)
    reps = 1 if exact else int(probes)
    xr = x.repeat(reps, *([1] * (x.ndim - 1)))
    z = None if exact else _probe(xr, probe, generator)
    denoiser = Denoiser(model, process, prediction)
    m = xr.shape[0]

    def fun(s: float, y: Tensor) -> Tensor:
        state = y[:, :dims].reshape(xr.shape)
        u_fn = lambda v: scaled_probability_flow(denoiser, process, v, s)  # noqa: E731
        u, div = _divergence_exact(u_fn, state) if exact else _divergence_hutchinson(u_fn, state, z)
        return torch.cat([u.reshape(m, -1), (div - dims * s / (1 + s * s))[:, None]], dim=1)

    t_lo, t_hi = (torch.tensor(float(v), dtype=torch.float64) for v in (process.t_min, process.t_max))
    a_lo, a_hi = float(process.alpha(t_lo)), float(process.alpha(t_hi))
    y0 = torch.cat([xr.reshape(m, -1) / a_lo, torch.zeros(m, 1, dtype=x.dtype, device=x.device)], dim=1)
    s_lo, s_hi = noise_to_signal(process, t_lo), noise_to_signal(process, t_hi)
    sol = dopri5(fun, s_lo, s_hi, y0, rtol=rtol, atol=atol)
    x_T = sol.y[:, :dims].reshape(xr.shape) * a_hi
    jacobian = dims * (math.log(a_hi) - math.log(a_lo))  # log-density of y = x/α is that of x plus D log α
    control = 0.5 * dims * (math.log1p(s_hi * s_hi) - math.log1p(s_lo * s_lo))  # ∫ D σ̃/(1 + σ̃²) dσ̃
    ll = (process.prior_log_prob(x_T) + (jacobian + control) + sol.y[:, dims]).reshape(reps, n)
    mean = ll.mean(dim=0)
    if not return_info:
        return mean
    stderr = ll.std(dim=0) / math.sqrt(reps) if reps > 1 else torch.zeros_like(mean)
    return mean, {"stderr": stderr, "nfe": denoiser.nfe, "exact_trace": exact}


def dequantize(y: Tensor, levels: int, generator=None) -> Tensor:
    """Uniform dequantisation of integer data already scaled to [−1, 1]: y + δ(u − ½), δ = 2/(levels − 1)."""
    delta = 2.0 / (levels - 1)
    u = torch.rand(y.shape, generator=generator, dtype=y.dtype, device=generator.device if generator else None)
    return y + delta * (u.to(y.device) - 0.5)


def discrete_nll_from_density(log_density: Tensor, dims: int, levels: int) -> Tensor:
    """−log P(x) ≤ −log p(y) − D log δ for y uniformly dequantised within x's bin of width δ = 2/(L − 1)."""
    return -(log_density + dims * math.log(2.0 / (levels - 1)))


def bits_per_dim(nll_nats: Tensor, dims: int) -> Tensor:
    """nats per example → bits per dimension: nll / (D ln 2)."""
    return nll_nats / (dims * math.log(2.0))
