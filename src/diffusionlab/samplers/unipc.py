"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion
Models", arXiv:2302.04867), data-prediction form, B(h) = e^{h} − 1 (``bh2``) or B(h) = h (``bh1``).

With λ = log(α/σ), a step from grid time t to s < t has h = λ_s − λ_t > 0; m₀ = x̂₀(x_t, t) is the newest
evaluation and m_i = x̂₀ at the older grid times t_i, with r_i = (λ_{t_i} − λ_t)/h < 0 and
D_i = (m_i − m₀)/r_i. In the paper's notation (their eq. 3–5 and Algorithm 2, with hh = −h the step in −λ):

    UniP-p:  x_s = (σ_s/σ_t) x_t − α_s (e^{−h} − 1) m₀ − α_s B(−h) Σ_{i<p} a_i D_i
    UniC-p:  x_s^c = (σ_s/σ_t) x_t − α_s (e^{−h} − 1) m₀ − α_s B(−h) (Σ_{i<p} a_i^c D_i + a_p^c (m_s − m₀))

where m_s = x̂₀(x_s, s) is the model evaluation at the *predicted* x_s, which the next step needs anyway: the
corrector costs no model call, and m_s (not re-evaluated at x_s^c) is what later steps use. The weights solve
R_p(r) a = g_p(h) with R_p the Vandermonde rows (r_1^{k−1}, …, r_p^{k−1}) (r_p = 1 for the corrector) and
g_k = k! z φ_{k+1}(z)/B(z), z = −h, φ_1(z) = (e^z − 1)/z, φ_{k+1}(z) = (φ_k(z) − 1/k!)/z (paper §3.1,
Theorem 3.1); for UniP-2 a₁ = ½ and for UniC-1 a₁^c = ½ (the paper's choices).
The formulas follow the reference implementation (also diffusers' ``UniPCMultistepScheduler``).

The last step (to grid[−1]) is not corrected: the evaluation there is ``sample``'s final denoising x̂₀, which
then equals diffusers' output exactly. Warm-up: step k has order min(order, k + 1); with
``lower_order_final`` also at most steps − k (as diffusers does). NFE = steps − 1 (+1 for the final denoise).
``callback`` sees each predicted x_s; its corrected value is the start of the next step.
"""

from __future__ import annotations

import math

import torch

from ..errors import UserError, check_flag
from .dpm_solver import coefficients, step_order

VARIANTS = ("bh1", "bh2")


def _weights(lams, lam_t: float, h: float, order: int, variant: str, corrector: bool):
    """(r_i of the older points, the weights a, B(−h), e^{−h} − 1) for UniP (``corrector=False``) or UniC."""
    hh = -h
    phi1 = math.expm1(hh)  # e^{−h} − 1
    b_h = math.expm1(hh) if variant == "bh2" else hh
    rks = [(lams[-1 - i] - lam_t) / h for i in range(1, order)]
    if not corrector and order == 1:
        return rks, [], b_h, phi1
    if corrector and order == 1:
        return rks, [0.5], b_h, phi1
    if not corrector and order == 2:
        return rks, [0.5], b_h, phi1
    r = torch.tensor(rks + [1.0], dtype=torch.float64)
    rows, g = [], []
    h_phi_k, fact = phi1 / hh - 1, 1
    for i in range(1, order + 1):
        rows.append(r ** (i - 1))
        g.append(h_phi_k * fact / b_h)
        fact *= i + 1
        h_phi_k = h_phi_k / hh - 1 / fact
    big_r, g = torch.stack(rows), torch.tensor(g, dtype=torch.float64)
    a = torch.linalg.solve(big_r, g) if corrector else torch.linalg.solve(big_r[:-1, :-1], g[:-1])
    return rks, a.tolist(), b_h, phi1


def _update(x, x0s, lams, t_coef, s_coef, order, variant, m_s=None):
    """UniP (``m_s`` None) or UniC (``m_s`` = x̂₀ at the predicted x_s) from x_t; ``x0s`` newest last."""
    (_, sig_t, lam_t), (a_s, sig_s, lam_s) = t_coef, s_coef
    h = lam_s - lam_t
    rks, a, b_h, phi1 = _weights(lams, lam_t, h, order, variant, m_s is not None)
    m0 = x0s[-1]
    res = 0.0
    for i, rk in enumerate(rks, start=1):
        res = res + a[i - 1] * (x0s[-1 - i] - m0) / rk
    if m_s is not None:
        res = res + a[-1] * (m_s - m0)
    return (sig_s / sig_t) * x - (a_s * phi1) * m0 - (a_s * b_h) * res


def unipc(denoiser, process, x, grid, *, generator=None, callback=None, order: int = 2, variant: str = "bh2",
          corrector: bool = True, lower_order_final: bool = True):
    """UniPC-``order`` (1, 2 or 3): UniP predictor + UniC corrector (``corrector=False``: UniP only).
    ``variant`` ``bh2`` (B(h) = e^h − 1, recommended for few steps) or ``bh1`` (B(h) = h).
    NFE = steps − 1 (+1 for the final denoise)."""
    if isinstance(order, bool) or order not in (1, 2, 3):
        raise UserError(f"UniPC order must be 1, 2 or 3, got {order!r}")
    order = int(order)
    corrector = check_flag("UniPC corrector", corrector)
    lower_order_final = check_flag("UniPC lower_order_final", lower_order_final)
    if variant not in VARIANTS:
        raise UserError(f"unknown UniPC variant {variant!r}: choose one of {', '.join(VARIANTS)}")
    steps = len(grid)
    x0s, lams = [], []
    x_prev = prev_coef = None
    p = 0
    for k in range(steps - 1):
        t, s = grid[k], grid[k + 1]
        t_coef, s_coef = coefficients(process, t), coefficients(process, s)
        m = denoiser(x, t).x0
        if corrector and k > 0:
            x = _update(x_prev, x0s, lams, prev_coef, t_coef, p, variant, m_s=m)
        x0s.append(m)
        lams.append(t_coef[2])
        del x0s[:-order], lams[:-order]
        p = step_order(order, k, steps, lower_order_final)
        x_prev, prev_coef = x, t_coef
        x = _update(x, x0s, lams, t_coef, s_coef, p, variant)
        if callback is not None:
            callback(k + 1, s, x)
    return x
