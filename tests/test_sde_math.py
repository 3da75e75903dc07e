"""The mathematics of the forward processes, the reverse SDE / probability-flow ODE, the samplers, the ODE
solvers and the likelihood, checked against closed forms (lecture §4–7; Song et al. 2021; Ho et al. 2020).

Ground truth is a Gaussian mixture: it stays a mixture under x_t = α(t) x_0 + σ(t) ε, so its noised density,
its score and the optimal noise predictor ``eps_predictor`` are exact. Everything runs in float64 with fixed
seeds; every statistical bound below is a stated number of Monte-Carlo standard errors plus, where a
discretisation is involved, an allowance derived (or computed) in the comment next to it.

Runtime: the tensors here are tiny, where intra-op threads only cost synchronisation (on a busy 2-core machine a
64k-element op took 12 ms with 2 threads and 0.5 ms with 1), so the module runs single-threaded.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import diffusionlab as dl
from diffusionlab.data import GaussianMixture, eps_predictor
from diffusionlab.evaluation import component_weight_tv, sliced_wasserstein, sliced_wasserstein_floor
from diffusionlab.processes import forward_euler_maruyama_step, posterior_mean_var
from diffusionlab.samplers.sde import euler_maruyama_step, langevin_corrector_step, langevin_step_size
from diffusionlab.solvers import dopri5

F64 = torch.float64
PROCESS_NAMES = ("vp", "subvp", "ve", "ddpm")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make(name: str) -> dl.Process:
    """A fresh process with the library defaults (DDPM: T = 1000, linear β 1e-4 → 0.02)."""
    return {"vp": dl.VPSDE, "subvp": dl.SubVPSDE, "ve": dl.VESDE, "ddpm": dl.DDPM}[name]()


def tt(values) -> torch.Tensor:
    return torch.as_tensor(values, dtype=F64)


def off_grid_times(process: dl.Process) -> torch.Tensor:
    """Times in (0, 1]; for DDPM strictly inside intervals ((i−1)/T, i/T), where log ᾱ(t) is linear."""
    if isinstance(process, dl.DDPM):
        i = torch.tensor([0, 3, 17, 120, 333, 500, 777, 998, 999], dtype=F64)
        frac = torch.tensor([0.5, 0.3, 0.7, 0.25, 0.6, 0.45, 0.35, 0.8, 0.55], dtype=F64)
        return (i + frac) / process.T
    return tt([0.002, 0.013, 0.1234, 0.377, 0.5551, 0.8123, 0.9871, 1.0])


# ================================================================================================
# 1. Derivatives, g², transition and posterior


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_derivatives_match_central_finite_differences(name):
    process = make(name)
    t = off_grid_times(process)
    # Central differences with h = 1e-6: truncation h²/6·|f'''/f'| ≤ (17 h)²/6 ≈ 5e-11 relative (the fastest
    # rate is VE's d log σ²/dt = 2 log(σ_max/σ_min) ≈ 17), round-off ≈ 1e-16/h = 1e-10 relative; so 1e-6
    # relative is a bound with four orders of margin. For DDPM h = 1e-6 ≪ the 2.5e-4 distance from t to the
    # nearest grid point, so the difference never straddles a kink of the piecewise-linear log ᾱ.
    h = 1e-6

    def fd(fun):
        return (fun(t + h) - fun(t - h)) / (2 * h)

    log_alpha_fd = fd(lambda s: torch.log(process.alpha(s)))
    sigma2_fd = fd(lambda s: process.sigma(s) ** 2)
    torch.testing.assert_close(process.d_log_alpha(t), log_alpha_fd, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(process.d_sigma2(t), sigma2_fd, rtol=1e-6, atol=1e-9)
    # The drift coefficient is d log α/dt (base-class contract).
    torch.testing.assert_close(process.f(t), log_alpha_fd, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_g2_is_nonnegative_everywhere(name):
    process = make(name)
    t = torch.linspace(0.0, 1.0, 4001, dtype=F64)  # includes t = 0, t = 1 and every DDPM grid point i/T
    g2 = process.g2(t)
    assert torch.isfinite(g2).all()
    assert (g2 >= 0).all(), f"g² < 0 at t = {t[g2 < 0][:5].tolist()} (min {g2.min().item():.3g})"
    # ... and strictly positive for t > 0: every process injects noise (sub-VP's g² = β(1 − α⁴) is 0 at t = 0).
    assert (g2[1:] > 0).all()
    torch.testing.assert_close(process.diffusion(t), g2.sqrt())


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_g2_equals_the_generic_formula(name):
    """Processes may give g² in closed form (DDPM: g² = β(t) = −d log ᾱ/dt, one lookup); it must equal the
    base class's dσ²/dt − 2 f σ² at every time, on and off DDPM's grid."""
    process = make(name)
    t = torch.cat([off_grid_times(process), torch.linspace(0.0, 1.0, 2001, dtype=F64)])
    torch.testing.assert_close(process.g2(t), dl.Process.g2(process, t), rtol=1e-12, atol=1e-12)


def test_ddpm_g2_at_grid_times_is_the_beta_of_the_step_that_ends_there():
    """On DDPM's grid the reverse step from t_i = i/T to t_{i−1} crosses interval ((i−1)/T, i/T], whose β is β_i
    (Ho et al.'s linear β_i = 1e-4 + (i − 1)(0.02 − 1e-4)/(T − 1), built here): g²(i/T) = −T·log(1 − β_i) and
    f(i/T) = ½ T·log(1 − β_i) exactly, for float64 times and for the float32 grid that samplers use (whose
    i/T are off by up to ~1e-5 steps); inside the interval, at (i − ½)/T, the same β_i. A review's mutation
    to β_{i+1} at grid times (g² 20 % off at t = 1/T) passed every other test."""
    T = 1000
    process = dl.DDPM(T=T)
    i = torch.arange(1, T + 1, dtype=F64)
    beta = 1e-4 + (i - 1) * (0.02 - 1e-4) / (T - 1)
    expected_g2 = -T * torch.log1p(-beta)
    for t in (i / T, dl.time_grid(process, T).flip(0).to(F64), (i / T).float(), (i - 0.5) / T):
        assert len(t) == T
        torch.testing.assert_close(process.g2(t).double(), expected_g2, rtol=1e-6 if t.dtype == torch.float32
                                   else 1e-12, atol=0)
        torch.testing.assert_close(process.f(t).double(), -0.5 * expected_g2, rtol=1e-6 if t.dtype == torch.float32
                                   else 1e-12, atol=0)


def test_ddpm_schedule_lookups_agree_across_dtypes():
    """DDPM converts its float64 tables once per dtype; float32 times give float32 values of the same
    function (up to float32 rounding of t and of the tables), and the float64 values stay exact on the grid."""
    process = dl.DDPM()
    t64 = torch.cat([off_grid_times(process), torch.arange(1, process.T + 1, dtype=F64) / process.T])
    for fun in (process.alpha, process.sigma, process.f, process.g2):
        got = fun(t64.float())
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), fun(t64), rtol=2e-4, atol=1e-6)
    grid = torch.arange(0, process.T + 1, dtype=F64) / process.T
    torch.testing.assert_close(process.alpha(grid) ** 2, process.alpha_bars, rtol=1e-14, atol=0)


def _time_pairs(process):
    """(s, t) with s < t: random continuous pairs, and for DDPM adjacent and skipped grid pairs."""
    g = gen(11)
    if isinstance(process, dl.DDPM):
        i = torch.randint(2, process.T + 1, (64,), generator=g)
        skip = torch.randint(1, 40, (64,), generator=g)
        j = torch.clamp(i - skip, min=1)
        j = torch.where(j == i, i - 1, j)
        return j.to(F64) / process.T, i.to(F64) / process.T
    a = process.t_min + (1 - process.t_min) * torch.rand(64, generator=g, dtype=F64)
    b = process.t_min + (1 - process.t_min) * torch.rand(64, generator=g, dtype=F64)
    return torch.minimum(a, b), torch.maximum(a, b) + 1e-9


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_transition_and_posterior_are_consistent_with_the_marginals(name):
    process = make(name)
    s, t = _time_pairs(process)
    a_s, sig_s, a_t, sig_t = process.alpha(s), process.sigma(s), process.alpha(t), process.sigma(t)

    # Transition: x_s ~ q(x_s|x_0) then x_t ~ q(x_t|x_s) must give q(x_t|x_0) = N(α_t x_0, σ_t²):
    # mean α_{t|s} α_s = α_t and variance α_{t|s}² σ_s² + σ²_{t|s} = σ_t² (algebraic identities: round-off only).
    a_ts, var_ts = process.transition(s, t)
    torch.testing.assert_close(a_ts * a_s, a_t, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(a_ts**2 * sig_s**2 + var_ts, sig_t**2, rtol=1e-12, atol=1e-14)
    assert (var_ts >= 0).all()

    # Posterior: x_t ~ q(x_t|x_0) then x_s ~ q(x_s|x_t, x_0) must give back q(x_s|x_0) = N(α_s x_0, σ_s²):
    # mean c_x0 + c_xt α_t = α_s, variance c_xt² σ_t² + σ̃² = σ_s²; and c_xt = Cov(x_s, x_t)/Var(x_t) with
    # Cov(x_s, x_t | x_0) = α_{t|s} σ_s² (Gaussian conditioning, independent of how the code writes it).
    c0, ct, var = process.posterior_coefficients(s, t)
    torch.testing.assert_close(c0 + ct * a_t, a_s, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ct**2 * sig_t**2 + var, sig_s**2, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ct, a_ts * sig_s**2 / sig_t**2, rtol=1e-12, atol=1e-14)
    assert (var >= 0).all() and (var <= sig_s**2 + 1e-15).all()

    # posterior(...) applies these coefficients to tensors (per-sample times broadcast over (n, C, H, W)).
    x0 = torch.randn(len(s), 2, 3, 3, generator=gen(1), dtype=F64)
    xt = torch.randn(len(s), 2, 3, 3, generator=gen(2), dtype=F64)
    mean, v = process.posterior(xt, x0, s, t)
    torch.testing.assert_close(mean, c0[:, None, None, None] * x0 + ct[:, None, None, None] * xt)
    torch.testing.assert_close(v, var)


def test_ddpm_grid_transition_and_posterior_are_the_lecture_formulas():
    """On DDPM's grid the generic formulas must be exactly lecture §1 and §3 (Ho et al. eq. 6–7)."""
    process = dl.DDPM()
    i = torch.tensor([2, 3, 10, 250, 500, 999, 1000])
    t, s = i.to(F64) / process.T, (i - 1).to(F64) / process.T
    beta, abar, abar_prev = process.betas[i - 1], process.alpha_bars[i], process.alpha_bars[i - 1]
    torch.testing.assert_close(process.alpha(t) ** 2, abar, rtol=1e-12, atol=0)
    torch.testing.assert_close(process.sigma(t) ** 2, 1 - abar, rtol=1e-12, atol=0)
    a_ts, var_ts = process.transition(s, t)
    torch.testing.assert_close(a_ts**2, 1 - beta, rtol=1e-12, atol=0)
    torch.testing.assert_close(var_ts, beta, rtol=1e-9, atol=0)  # β ≥ 1e-4: cancellation costs ≤ 1e4 ulp
    x0 = torch.randn(len(i), 3, generator=gen(3), dtype=F64)
    xt = torch.randn(len(i), 3, generator=gen(4), dtype=F64)
    mean, var = process.posterior(xt, x0, s, t)
    ref_mean, ref_var = posterior_mean_var(xt, x0, beta[:, None], abar[:, None], abar_prev[:, None])
    torch.testing.assert_close(mean, ref_mean, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(var, ref_var[:, 0], rtol=1e-9, atol=1e-15)


# ================================================================================================
# 2. Euler–Maruyama simulation of the forward SDE reproduces the closed-form marginals


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_forward_euler_maruyama_matches_closed_form_marginals(name):
    """dx = f(t) x dt + g(t) dW from t = 0 (DDPM viewed as its piecewise-constant-β VP SDE), simulated with the
    library's ``forward_euler_maruyama_step`` x_{t+h} = x_t + h f(x_t, t) + sqrt(h) g(t) ε (lecture §5).

    Column 0 starts from a fixed x_0 = 1.5, column 1 from x_0 ~ N(−0.7, 0.5); the state at t = 0 is
    α(0) x_0 + σ(0) ε (only VE has σ(0) = σ_min > 0). The marginal at t is N(α x_0, σ²), resp.
    N(α m, α² v + σ²). The EM state is exactly Gaussian (a linear recursion of Gaussians), with moments given
    by the deterministic recursion m ← (1 + h f) m, V ← (1 + h f)² V + h g²: its gap to the closed form is
    the discretisation bias, computed here and checked to be O(h); the Monte-Carlo mean/variance must then
    lie within |bias| + 4.5 standard errors (mean: sqrt(V/N); variance: V sqrt(2/N) for a Gaussian).
    """
    process = make(name)
    n_paths, n_steps = 20_000, 500
    x0_fixed, m0, v0 = 1.5, -0.7, 0.5
    h = 1.0 / n_steps
    grid = torch.linspace(0.0, 1.0, n_steps + 1, dtype=F64)
    f_all, g2_all = process.f(grid).tolist(), process.g2(grid).tolist()
    a0, s0 = float(process.alpha(grid[0])), float(process.sigma(grid[0]))

    g = gen(0)
    x = torch.empty(n_paths, 2, dtype=F64)
    x[:, 0] = a0 * x0_fixed + s0 * torch.randn(n_paths, generator=g, dtype=F64)
    x[:, 1] = a0 * (m0 + math.sqrt(v0) * torch.randn(n_paths, generator=g, dtype=F64)) + s0 * torch.randn(
        n_paths, generator=g, dtype=F64)
    mean_rec = np.array([a0 * x0_fixed, a0 * m0])
    var_rec = np.array([s0**2, a0**2 * v0 + s0**2])
    checks = {int(round(c * n_steps)) for c in (0.1, 0.3, 0.6, 1.0)}
    for k in range(n_steps):
        f, g2 = f_all[k], max(g2_all[k], 0.0)
        x = forward_euler_maruyama_step(process, x, grid[k], h, torch.randn(n_paths, 2, generator=g, dtype=F64))
        mean_rec, var_rec = (1 + h * f) * mean_rec, (1 + h * f) ** 2 * var_rec + h * g2
        if k + 1 not in checks:
            continue
        t = grid[k + 1]
        a, s = float(process.alpha(t)), float(process.sigma(t))
        mean_true = np.array([a * x0_fixed, a * m0])
        var_true = np.array([s**2, a**2 * v0 + s**2])
        # Discretisation bias of EM: relative O(h·rate) with rate ≤ 17 (VE) ⇒ ≲ 2 % at h = 2e-3; 5 % bound.
        bias_mean, bias_var = mean_rec - mean_true, var_rec - var_true
        assert np.all(np.abs(bias_mean) <= 0.05 * np.sqrt(var_true)), (float(t), bias_mean)
        assert np.all(np.abs(bias_var) <= 0.05 * var_true), (float(t), bias_var / var_true)
        emp_mean, emp_var = x.mean(0).numpy(), x.var(0).numpy()
        se_mean, se_var = np.sqrt(var_true / n_paths), var_true * math.sqrt(2 / n_paths)
        assert np.all(np.abs(emp_mean - mean_true) <= np.abs(bias_mean) + 4.5 * se_mean), (
            f"t={float(t)}: mean {emp_mean} vs {mean_true} (se {se_mean})")
        assert np.all(np.abs(emp_var - var_true) <= np.abs(bias_var) + 4.5 * se_var), (
            f"t={float(t)}: var {emp_var} vs {var_true} (se {se_var})")


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_em_moment_recursion_converges_to_closed_form(name):
    """Without Monte-Carlo noise: the EM moment recursion with h = 5e-5 matches α(t), σ(t)² to O(h) — i.e.
    f and g² integrate to the marginals (dm/dt = f m, dV/dt = 2 f V + g²). Bias ≈ h·rate/2 ≤ 5e-5·17/2 ≈ 4e-4
    relative; bound 2e-3 (DDPM adds the one-interval lag of its left-point slope, O(1/T·β) ≈ 2e-5)."""
    process = make(name)
    n_steps = 20_000
    h = 1.0 / n_steps
    grid = torch.linspace(0.0, 1.0, n_steps + 1, dtype=F64)
    f_all, g2_all = process.f(grid).tolist(), process.g2(grid).tolist()
    a0, s0 = float(process.alpha(grid[0])), float(process.sigma(grid[0]))
    m, v = a0, s0**2  # x_0 = 1 (mean) and its variance
    checks = {n_steps // 10, n_steps // 2, n_steps}
    for k in range(n_steps):
        m, v = (1 + h * f_all[k]) * m, (1 + h * f_all[k]) ** 2 * v + h * g2_all[k]
        if k + 1 in checks:
            t = grid[k + 1]
            a, s = float(process.alpha(t)), float(process.sigma(t))
            assert abs(m - a) <= 2e-3 * max(a, s), (float(t), m, a)
            assert abs(v - s**2) <= 2e-3 * s**2, (float(t), v, s**2)


# ================================================================================================
# 3. Reverse SDE and probability-flow ODE


def hand_coefficients(process, t: float) -> tuple[float, float, float, float]:
    """(α, σ, f, g²) at a scalar time, from the papers' closed forms, written independently of the library."""
    if isinstance(process, dl.DDPM):
        betas = np.linspace(1e-4, 0.02, 1000)
        i = math.ceil(t * 1000)  # t strictly inside ((i−1)/T, i/T)
        log_abar = np.concatenate([[0.0], np.cumsum(np.log1p(-betas))])
        la = log_abar[i - 1] + (t * 1000 - (i - 1)) * math.log1p(-betas[i - 1])
        slope = 1000 * math.log1p(-betas[i - 1])  # d log ᾱ/dt
        return math.exp(la / 2), math.sqrt(-math.expm1(la)), slope / 2, -slope
    if isinstance(process, dl.VESDE):
        sig = 0.01 * 5000.0**t
        return 1.0, sig, 0.0, 2 * sig**2 * math.log(5000.0)
    beta = 0.1 + t * 19.9
    alpha = math.exp(-0.25 * t**2 * 19.9 - 0.5 * t * 0.1)
    if isinstance(process, dl.SubVPSDE):  # Song et al. eq. 29: σ = 1 − α², g² = β (1 − α⁴)
        return alpha, 1 - alpha**2, -0.5 * beta, beta * (1 - alpha**4)
    return alpha, math.sqrt(1 - alpha**2), -0.5 * beta, beta  # VP: lecture §6


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_reverse_sde_drift_and_probability_flow_by_hand(name):
    process = make(name)
    mixture = GaussianMixture.random_anisotropic(dim=3, k=3, generator=gen(5))
    denoiser = dl.Denoiser(eps_predictor(mixture, process.alpha, process.sigma), process, "eps")
    times = [0.0031, 0.0457, 0.2113, 0.5006, 0.8765] if name == "ddpm" else [1e-3, 0.05, 0.2, 0.5, 0.9, 1.0]
    xs, ts, rev_hand, pf_hand = [], [], [], []
    for j, t in enumerate(times):
        alpha, sigma, f, g2 = hand_coefficients(process, t)
        # the process's α, σ, f, g² are the published ones
        for got, want in zip((process.alpha(tt(t)), process.sigma(tt(t)), process.f(tt(t)), process.g2(tt(t))),
                             (alpha, sigma, f, g2)):
            assert math.isclose(float(got), want, rel_tol=1e-9, abs_tol=1e-12), (t, float(got), want)
        noised = mixture.noised(alpha, sigma)
        x = noised.sample(40, gen(100 + j))[0]
        score = noised.score(x)  # Cholesky path of the mixture, not the eigen path eps_predictor uses
        rev = f * x - g2 * score  # Anderson 1982 / lecture §5
        pf = f * x - 0.5 * g2 * score  # Song et al. 2021 eq. 13
        torch.testing.assert_close(dl.reverse_sde_drift(denoiser, process, x, t), rev, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(dl.probability_flow(denoiser, process, x, t), pf, rtol=1e-9, atol=1e-9)
        xs.append(x), ts.append(torch.full((40,), t, dtype=F64)), rev_hand.append(rev), pf_hand.append(pf)
    # Per-sample times in one batch give the same answers.
    x, t = torch.cat(xs), torch.cat(ts)
    torch.testing.assert_close(dl.reverse_sde_drift(denoiser, process, x, t), torch.cat(rev_hand), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(dl.probability_flow(denoiser, process, x, t), torch.cat(pf_hand), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_forward_euler_maruyama_step_is_the_lecture_formula(name):
    """One step x_{t+h} = x_t + h f(x_t, t) + sqrt(h) g(t) ε (lecture §5) with f, g² from the papers' closed
    forms (``hand_coefficients``), for a fixed ε: exact to round-off."""
    process = make(name)
    x = torch.randn(7, 3, generator=gen(12), dtype=F64)
    eps = torch.randn(7, 3, generator=gen(13), dtype=F64)
    for t in (0.0031, 0.2113, 0.8765):
        _, _, f, g2 = hand_coefficients(process, t)
        for h in (1e-3, 0.05):
            got = forward_euler_maruyama_step(process, x, t, h, eps)
            torch.testing.assert_close(got, x + h * f * x + math.sqrt(h * g2) * eps, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_reverse_euler_maruyama_step_is_the_lecture_formula(name):
    """One reverse step x_{t−h} = x_t − h f(x_t, t) + h g(t)² ∇log p_t(x_t) + sqrt(h) g(t) z (lecture §5) with f, g²
    from ``hand_coefficients`` and the exact score −x/v_t of Gaussian data N(0, 0.6 I), replayed with the same z."""
    process, v0 = make(name), 0.6
    denoiser = dl.Denoiser(_gaussian_eps_model(process, v0), process, "eps")
    x = torch.randn(7, 3, generator=gen(14), dtype=F64)
    for t, h in ((0.2113, 1e-3), (0.8765, 0.05)):
        alpha, sigma, f, g2 = hand_coefficients(process, t)
        score = -x / (alpha**2 * v0 + sigma**2)
        z = torch.randn(x.shape, generator=gen(15), dtype=F64)
        got = euler_maruyama_step(denoiser, process, x, tt(t), tt(t - h), gen(15))
        torch.testing.assert_close(got, x - h * f * x + h * g2 * score + math.sqrt(h * g2) * z, rtol=1e-9, atol=1e-12)


# ================================================================================================
# 4 and 8. Every sampler reproduces a Gaussian mixture when driven by the exact noise predictor

RING = GaussianMixture.ring()  # 8 modes of std 0.1 on a circle of radius 2: per-coordinate std ≈ 1.4
RING_STD = 0.1
N_PROJ = 256
# Step counts (grid points). The grid is ``quadratic`` (t = t_min + (1 − t_min)(1 − u)²): the modes' width is
# resolved where σ(t) ≈ 0.1, i.e. t ≈ 0.03 on VP, which a uniform grid crosses in ~1.5 % of its steps
# (measured: ancestral with 500 uniform steps gives a 10 % too narrow mode; quadratic 500 steps: 1.5 %).
STEPS_MAIN = {"ancestral": 500, "ddim": 100, "euler_maruyama": 500, "predictor_corrector": 200,
              "ode_euler": 250, "ode_heun": 50, "ode_rk45": 2}
# VE needs the most Heun steps: its σ spans 0.01 … 50, and with 30 quadratic steps the modes came out 40 %
# too wide (50 steps: 5 %, 100: −3 %) — a discretisation error that shrinks with K, not a bias.
STEPS_SMALL = {"ancestral": 300, "ddim": 80, "euler_maruyama": 300, "predictor_corrector": 120,
               "ode_euler": 150, "ode_heun": 50, "ode_rk45": 2}
N_MAIN, N_SMALL = 4000, 1000


@functools.lru_cache(maxsize=None)
def sw_floor(n: int) -> tuple[float, float]:
    """(mean, std) of SW₂ between two independent n-samples of the ring: what a perfect sampler scores."""
    return sliced_wasserstein_floor(lambda m, g: RING.sample(m, g)[0], n, N_PROJ, gen(7), repeats=10)


@functools.lru_cache(maxsize=None)
def run_sampler(process_name: str, sampler: str, n: int) -> tuple[torch.Tensor, int]:
    process = make(process_name)
    steps = (STEPS_MAIN if n == N_MAIN else STEPS_SMALL).get(sampler, 500)
    model = eps_predictor(RING, process.alpha, process.sigma)
    x, nfe = dl.sample(model, process, sampler, steps, shape=(n, 2), generator=gen(1), dtype=F64,
                       grid="quadratic", return_nfe=True)
    return x, nfe


def check_reproduces_ring(process_name: str, sampler: str, n: int):
    x, _ = run_sampler(process_name, sampler, n)
    assert x.shape == (n, 2) and x.dtype == F64 and torch.isfinite(x).all()
    process = make(process_name)

    # (a) Sliced W₂ to a fresh n-sample of the mixture, against the floor of two exact n-samples (mean and
    # std over 10 repeats). Allowance 0.01: a systematic error of the within-mode std of 10 % (0.01 on a std of
    # 0.1, the size of the first-order samplers' bias at these step counts) moves each projected quantile by
    # at most ~0.01, so SW₂ by at most ~0.01.
    reference = RING.sample(n, gen(2))[0]
    sw = sliced_wasserstein(x, reference, N_PROJ, gen(3))
    floor_mean, floor_std = sw_floor(n)
    bound = floor_mean + 3 * floor_std + 0.01
    assert sw <= bound, f"{process_name}/{sampler}: SW₂ {sw:.4f} > {bound:.4f} (floor {floor_mean:.4f} ± {floor_std:.4f})"

    # (b) Component weights: for exact samples E[TV] = ½ Σ_k E|ŵ_k − w_k| ≈ ½ Σ_k sqrt(2 w_k (1 − w_k)/(π n))
    # (0.017 at n = 4000, 0.033 at n = 1000); 3× that is ≈ 6 standard deviations of TV, while losing one mode
    # alone costs 0.125.
    tv = component_weight_tv(x, RING.posterior_weights, RING.weights)
    w = RING.weights
    expected_tv = 0.5 * float(torch.sqrt(2 * w * (1 - w) / (math.pi * n)).sum())
    assert tv <= 3 * expected_tv, f"{process_name}/{sampler}: component TV {tv:.4f} > {3 * expected_tv:.4f}"

    # (c) Width of the modes (what SW barely sees): mean |x − μ_k̂|² / (2·0.1²). After the final Tweedie
    # step x̂₀ = E[x₀ | x_{t_min}] the exact value is 1/(1 + σ²/(α² 0.1²)) at t_min (≈ 0.99). |x − μ|²/0.01 is
    # χ²₂ (variance 4), so the ratio's standard error is 2/sqrt(n) (3 % at n = 4000, 6 % at 1000); bound:
    # 4 standard errors + 10 % for the first-order samplers' O(1/K) bias (measured ≤ 9 % at these K).
    tmin = tt(process.t_min)
    shrink = 1.0 / (1.0 + float(process.sigma(tmin) ** 2 / (process.alpha(tmin) ** 2 * RING_STD**2)))
    k_hat = RING.posterior_weights(x).argmax(1)
    spread = float(((x - RING.means[k_hat]) ** 2).sum(1).mean()) / (2 * RING_STD**2)
    tol = 4 * 2 / math.sqrt(n) + 0.10
    assert abs(spread - shrink) <= tol, f"{process_name}/{sampler}: mode width ratio {spread:.3f} vs {shrink:.3f} ± {tol:.3f}"
    return sw, tv, spread


@pytest.mark.parametrize("sampler", dl.samplers())
def test_sampler_reproduces_mixture_on_vp(sampler):
    check_reproduces_ring("vp", sampler, N_MAIN)


@pytest.mark.parametrize("sampler", dl.samplers())
@pytest.mark.parametrize("name", ["subvp", "ve", "ddpm"])
def test_sampler_reproduces_mixture_on_other_processes(name, sampler):
    check_reproduces_ring(name, sampler, N_SMALL)


def test_sampler_nfe_counts():
    """The NFE table of ``diffusionlab.samplers`` (final denoising call included), on the runs above."""
    k = STEPS_MAIN
    expected = {"ancestral": k["ancestral"], "ddim": k["ddim"], "euler_maruyama": k["euler_maruyama"],
                "predictor_corrector": (k["predictor_corrector"] - 1) * 2 + 1, "ode_euler": k["ode_euler"],
                "ode_heun": 2 * k["ode_heun"] - 1}
    for sampler, nfe in expected.items():
        assert run_sampler("vp", sampler, N_MAIN)[1] == nfe, sampler


# --- 8. discrete ↔ continuous


def test_vpsde_defaults_are_the_continuum_limit_of_ddpm_linear():
    """ᾱ_i = ∏_{j≤i}(1 − β_j) vs α(i/T)² = exp(−∫₀^{i/T} β(s) ds) of VPSDE(0.1, 20).

    log ᾱ_i − log α(i/T)² = −Σ_j [−log(1 − β_j) − β_j] − [Σ_j β_j − ∫ β]: the first bracket is the O(β²) term,
    0 ≤ −log(1 − β) − β ≤ β²/(2(1 − β)); the second is the Riemann-sum error of the linspace endpoints
    (β_j = β((j−1)/(T−1))/T vs the integral over ((j−1)/T, j/T]). Their sum bounds the difference exactly
    (measured: 0.068 at i = T, 8e-4 at i = 100, 1e-4 at i = 10)."""
    ddpm, vp = dl.DDPM(T=1000, schedule="linear"), dl.VPSDE()
    i = torch.arange(1, 1001)
    t = i.to(F64) / 1000
    log_abar = torch.log(ddpm.alpha_bars[1:])
    log_a2 = 2 * torch.log(vp.alpha(t))
    beta = ddpm.betas
    second_order = torch.cumsum(beta**2 / (2 * (1 - beta)), 0)
    integral = 0.1 * t + 0.5 * 19.9 * t**2  # ∫₀ᵗ β(s) ds
    riemann = (torch.cumsum(beta, 0) - integral).abs()
    diff = (log_abar - log_a2).abs()
    assert (diff <= second_order + riemann + 1e-12).all(), float((diff - second_order - riemann).max())
    # Concretely: ᾱ_i and α(i/T)² agree to < 0.1 % of their value over the first 10 % of the chain and
    # within 7 % (relative; ᾱ_T ≈ 4e-5) at the end; absolutely within 1e-3 everywhere (measured 8e-4).
    assert float(diff[:100].max()) < 1e-3 and float(diff.max()) < 0.07
    assert float((ddpm.alpha_bars[1:] - vp.alpha(t) ** 2).abs().max()) < 1e-3
    # Per step, β_i ≈ β(t)·Δt as the VPSDE docstring says, to O(1/T): the endpoint convention only.
    torch.testing.assert_close(beta, vp.beta(t) / 1000, rtol=0, atol=0.0199 / 1000 + 1e-15)


@pytest.mark.parametrize(("name", "sampler"), [("ddpm", "euler_maruyama"), ("ddpm", "ode_heun"), ("vp", "ancestral")])
def test_discrete_and_continuous_samplers_are_interchangeable(name, sampler):
    """A DDPM model (eps predictor built from DDPM's α, σ) run with the continuous samplers, and a VP model run
    with ancestral sampling, both reproduce the data (same criteria as above; runs shared with them)."""
    check_reproduces_ring(name, sampler, N_SMALL if name == "ddpm" else N_MAIN)


# ================================================================================================
# 4b. The predictor–corrector's Langevin corrector (Song et al. 2021, Algorithm 5)


def _gaussian_eps_model(process, v0: float):
    """The exact ε-predictor of data N(0, v0 I): p_t = N(0, v_t I), v_t = α² v0 + σ², ε̂ = σ x / v_t."""
    def model(x, t):
        a, s = process.alpha(t)[:, None], process.sigma(t)[:, None]
        return s * x / (a**2 * v0 + s**2)
    return model


def test_langevin_corrector_step_size_is_song_algorithm_5():
    """x ← x + ε s + sqrt(2ε) z with ε = 2 α (snr ‖z‖/‖s‖)² (norms averaged over the batch), replayed with the same
    noise; and predictor_corrector passes α_i = α²_{t|s} = exp(−∫_s^t β) on VP (1 − β_i of Song et al.)."""
    process, v0, t, s_time = dl.VPSDE(), 0.7, 0.4, 0.38
    denoiser = dl.Denoiser(_gaussian_eps_model(process, v0), process, "eps")
    x = torch.randn(500, 3, generator=gen(20), dtype=F64)
    a, sig = hand_coefficients(process, t)[:2]
    score = -x / (a**2 * v0 + sig**2)  # ∇ log N(0, v_t I)
    for snr, alpha in ((0.16, 1.0), (0.05, 0.9)):
        z = torch.randn(x.shape, generator=gen(21), dtype=F64)
        ratio = z.norm(dim=1).mean() / score.norm(dim=1).mean()
        eps = 2 * alpha * (snr * ratio) ** 2
        got = langevin_corrector_step(denoiser, process, x, tt(t), gen(21), snr, alpha)
        torch.testing.assert_close(got, x + eps * score + (2 * eps).sqrt() * z, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(langevin_step_size(score, z, snr, alpha), eps, rtol=1e-12, atol=0)
    # the sampler: one corrector step with α = exp(−∫_s^t β(u) du) at t, then the Euler–Maruyama step to s
    alpha_i = math.exp(-(0.1 * (t - s_time) + 0.5 * 19.9 * (t**2 - s_time**2)))
    g = gen(22)
    expected = euler_maruyama_step(denoiser, process,
                                   langevin_corrector_step(denoiser, process, x, tt(t), g, 0.16, alpha_i),
                                   tt(t), tt(s_time), g)
    got = dl.sample(denoiser.model, process, "predictor_corrector", grid=tt([t, s_time]), x_T=x, denoise=False,
                    generator=gen(22))
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("snr", [0.16, 0.05])
def test_corrector_only_langevin_keeps_the_gaussian_variance(snr):
    """Langevin steps alone with the exact score of p_t = N(0, v_t) (1-D, VP at t = 0.3) leave p_t invariant up to
    the step's O(ε) bias: with ε = 2 r² v_t (the batch-averaged ratio ‖z‖/‖s‖ → sqrt(v_t) in 1-D) the linear
    recursion V ← (1 − ε/v_t)² V + 2ε has the fixed point v_t/(1 − r²), r = snr (2.6 % above v_t at r = 0.16,
    0.25 % at 0.05). Started from exact samples (at r = 0.16 n = 400,000, so 5 SE = 1.1 % resolves the 2.6 % bias
    and a doubled step's 5.4 %; at r = 0.05, which needs ~900 steps to mix, n = 40,000), the variance after K steps
    must be within 5 SE (v sqrt(2/n)) of that fixed point, and the chain must have mixed: correlation with its start (1 − 2r²)^K < 0.05."""
    process, v0, n = dl.VPSDE(), 0.5, 400_000 if snr > 0.1 else 40_000
    t = tt(0.3)
    v_t = float(process.alpha(t) ** 2 * v0 + process.sigma(t) ** 2)
    denoiser = dl.Denoiser(_gaussian_eps_model(process, v0), process, "eps")
    x_start = math.sqrt(v_t) * torch.randn(n, 1, generator=gen(30), dtype=F64)
    steps = int(math.ceil(math.log(0.01) / math.log(1 - 2 * snr**2)))  # correlation 0.01 in expectation
    x, g = x_start, gen(31)
    for _ in range(steps):
        x = langevin_corrector_step(denoiser, process, x, t, g, snr)
    var, fixed_point = float(x.var()), v_t / (1 - snr**2)
    se = fixed_point * math.sqrt(2 / n)
    assert abs(var - fixed_point) <= 5 * se, (var, fixed_point, se)
    assert abs(var / v_t - 1) <= snr**2 + 5 * se / v_t
    assert abs(float(x.mean())) <= 5 * math.sqrt(fixed_point / n)
    corr = float(torch.corrcoef(torch.cat([x, x_start], 1).T)[0, 1])
    assert abs(corr) < 0.05, corr


# ================================================================================================
# 5. Order of convergence of the PF-ODE solvers


def test_pf_ode_solvers_converge_with_their_order():
    """Error at t = 0.05 from the same x_T at t = 1 on VPSDE (explicit uniform grids, no denoising step, away
    from the stiff end t → 0), against ode_rk45 at rtol = atol = 1e-10 (its own error ≈ 3e-7 by comparison
    with 5000 Heun steps, ≪ the smallest error measured here, 1e-5). Data: the ring scaled to unit size
    (radius 1, std 0.2), so the velocity field is smooth on the step sizes used; its pre-asymptotic local
    orders were 1.06 → 1.01 (Euler) and 1.91 → 1.98 (Heun) between 20 and 320 steps."""
    process = dl.VPSDE()
    mixture = GaussianMixture.ring(radius=1.0, std=0.2)
    model = eps_predictor(mixture, process.alpha, process.sigma)
    x_T = process.prior_sample((256, 2), gen(0), dtype=F64)
    t_end = 0.05
    ref = dl.sample(model, process, "ode_rk45", grid=tt([1.0, t_end]), x_T=x_T, denoise=False,
                    rtol=1e-10, atol=1e-10)
    counts = [30, 60, 120, 240]
    slopes = {}
    for sampler in ("ode_euler", "ode_heun"):
        errors = []
        for k in counts:
            grid = torch.linspace(1.0, t_end, k + 1, dtype=F64)
            x = dl.sample(model, process, sampler, grid=grid, x_T=x_T, denoise=False)
            errors.append(float((x - ref).pow(2).sum(1).mean().sqrt()))
        slopes[sampler] = -np.polyfit(np.log(counts), np.log(errors), 1)[0]
        assert errors[-1] < errors[0]
    assert 0.85 <= slopes["ode_euler"] <= 1.15, slopes
    assert 1.8 <= slopes["ode_heun"] <= 2.2, slopes


def test_ode_heun_is_second_order_on_ddpm_whose_beta_jumps_at_every_grid_time():
    """DDPM's β(t) is piecewise constant, and its value at a grid time i/T is the interval below it; Heun's
    corrector at the end s of a step must use the interval above s, the one the step crossed (it used the
    value at s, and the error stalled near 1.5e-3 from ~100 steps on: order ≈ 0). Grids on the DDPM times from
    1 down to 0.05 (steps of 50, 25, 10 and 5 intervals); reference: ode_rk45 in σ̃, where the ODE is smooth."""
    process = dl.DDPM(T=1000)
    mixture = GaussianMixture.ring(radius=1.0, std=0.2)
    model = eps_predictor(mixture, process.alpha, process.sigma)
    x_T = process.prior_sample((256, 2), gen(0), dtype=F64)
    ref = dl.sample(model, process, "ode_rk45", grid=tt([1.0, 0.05]), x_T=x_T, denoise=False,
                    rtol=1e-10, atol=1e-10)
    counts = [19, 38, 95, 190]
    errors = []
    for k in counts:
        grid = torch.linspace(1000, 50, k + 1, dtype=F64).round() / 1000
        x = dl.sample(model, process, "ode_heun", grid=grid, x_T=x_T, denoise=False)
        errors.append(float((x - ref).pow(2).sum(1).mean().sqrt()))
    local = -np.diff(np.log(errors)) / np.diff(np.log(counts))
    assert bool((local >= 1.8).all()), (errors, local)


# ================================================================================================
# 6. dopri5 against scipy's RK45


def _riccati(t, y):
    return -2 * t * y**2


def _lotka_volterra_np(t, y):
    return np.array([1.5 * y[0] - y[0] * y[1], -3 * y[1] + y[0] * y[1]])


def _lotka_volterra_torch(t, y):
    return torch.stack([1.5 * y[0] - y[0] * y[1], -3 * y[1] + y[0] * y[1]])


def _van_der_pol_np(t, y):  # a batch of 3 oscillators (μ = 1), flattened as scipy sees it
    y = y.reshape(3, 2)
    return np.stack([y[:, 1], (1 - y[:, 0] ** 2) * y[:, 1] - y[:, 0]], 1).reshape(-1)


def _van_der_pol_torch(t, y):
    return torch.stack([y[:, 1], (1 - y[:, 0] ** 2) * y[:, 1] - y[:, 0]], 1)


def _pendulum_np(t, y):  # a batch of 3 pendulums; conservative, so well-posed in both time directions
    y = y.reshape(3, 2)
    return np.stack([y[:, 1], -np.sin(y[:, 0])], 1).reshape(-1)


def _pendulum_torch(t, y):
    return torch.stack([y[:, 1], -torch.sin(y[:, 0])], 1)


ODES = {
    # name: (numpy fun, torch fun, t0, t1, y0)
    "riccati_forward": (_riccati, _riccati, 0.0, 3.0, [1.0]),  # y = 1/(1 + t²)
    "riccati_backward": (_riccati, _riccati, 3.0, 0.0, [0.1]),
    "lotka_volterra_forward": (_lotka_volterra_np, _lotka_volterra_torch, 0.0, 5.0, [2.0, 1.0]),
    "lotka_volterra_backward": (_lotka_volterra_np, _lotka_volterra_torch, 5.0, 0.0, [2.0, 1.0]),
    "van_der_pol_forward": (_van_der_pol_np, _van_der_pol_torch, 0.0, 6.0, [[2.0, 0.0], [0.5, 1.0], [-1.0, 2.0]]),
    # (Van der Pol's limit cycle repels in reverse time: its backward problem blows up, so not used backwards.)
    "pendulum_forward": (_pendulum_np, _pendulum_torch, 0.0, 8.0, [[1.0, 0.0], [2.5, 0.5], [-0.3, 1.2]]),
    "pendulum_backward": (_pendulum_np, _pendulum_torch, 8.0, 0.0, [[1.0, 0.0], [2.5, 0.5], [-0.3, 1.2]]),
}


@pytest.mark.parametrize("tols", [(1e-5, 1e-5), (1e-8, 1e-10)])
@pytest.mark.parametrize("ode", list(ODES))
def test_dopri5_matches_scipy_rk45(ode, tols):
    fun_np, fun_t, t0, t1, y0 = ODES[ode]
    rtol, atol = tols
    y0_np = np.asarray(y0, dtype=np.float64).reshape(-1)
    scipy_sol = solve_ivp(fun_np, (t0, t1), y0_np, method="RK45", rtol=rtol, atol=atol)
    truth = solve_ivp(fun_np, (t0, t1), y0_np, method="DOP853", rtol=1e-13, atol=1e-13).y[:, -1]
    if ode == "riccati_forward":
        np.testing.assert_allclose(truth, [1 / (1 + t1**2)], rtol=1e-11)
    ours = dopri5(fun_t, t0, t1, torch.tensor(y0, dtype=F64), rtol=rtol, atol=atol)
    y = ours.y.reshape(-1).numpy()
    assert ours.y.shape == torch.tensor(y0).shape
    scale = atol + rtol * np.abs(truth)
    err_ours, err_scipy = np.abs(y - truth), np.abs(scipy_sol.y[:, -1] - truth)
    # Same method, same error control: our global error is scipy's, give or take one tolerance unit (scipy
    # additionally caps the step growth after a rejection, so the step sequences may differ slightly).
    assert np.all(err_ours <= 1.5 * err_scipy + scale), (err_ours, err_scipy)
    assert np.all(np.abs(y - scipy_sol.y[:, -1]) <= 10 * scale)
    # Comparable work: measured identical NFE in most cases and within 7 % in the others.
    assert abs(ours.nfe - scipy_sol.nfev) <= 0.15 * scipy_sol.nfev + 6, (ours.nfe, scipy_sol.nfev)
    assert ours.nfe == 2 + 6 * (ours.steps + ours.rejected)


# ================================================================================================
# 7. Likelihood through the probability-flow ODE


def _gaussian(mean, cov) -> GaussianMixture:
    mean, cov = tt(mean), tt(cov)
    return GaussianMixture(torch.ones(1, dtype=F64), mean[None], cov[None])


def _exact_and_points(mixture, process, n, seed):
    """Points from p_{t_min} (the data noised to t_min) and the exact log p_{t_min} there."""
    tmin = tt(process.t_min)
    noised = mixture.noised(process.alpha(tmin), process.sigma(tmin))
    x = noised.sample(n, gen(seed))[0]
    return x, noised.log_prob(x)


def test_likelihood_exact_trace_matches_noised_mixture_on_vp():
    """Exact divergence: the only errors are the ODE tolerance (rtol = atol = 1e-5) and the prior: p_1 is the
    ring shrunk by α(1) ≈ 0.0066 with variance 1 − 4e-5, against N(0, I): a log-ratio of O(α²) ≈ 1e-4. Bound
    0.01 nats per dimension on the mean absolute error (measured 6e-5) and 0.05 nats on each point."""
    process = dl.VPSDE()
    model = eps_predictor(RING, process.alpha, process.sigma)
    x, exact = _exact_and_points(RING, process, 64, seed=1)
    ll, info = dl.log_likelihood(model, process, x, "eps", trace="exact", return_info=True)
    err = ll - exact
    assert info["exact_trace"] and float(err.abs().mean()) / 2 < 0.01, float(err.abs().mean())
    assert float(err.abs().max()) < 0.05


def test_likelihood_hutchinson_errors_are_within_their_standard_errors():
    """16 Rademacher probes per point; ``stderr`` is the standard error over probes. In 2-D a Rademacher probe
    gives tr J + z₁z₂(J₁₂ + J₂₁), so each probe's estimate takes one of two values and z = err/stderr is a
    t-statistic of 16 fair coin flips: |z| > 3 iff ≥ 13 of 16 agree, probability 2·697/65536 ≈ 2.1 %. Of 64
    points ≈ 1.4 are expected beyond 3; ≥ 7 has Poisson probability < 1e-3. The ODE error (≤ 6e-3 nats) is
    small against the standard errors (≈ 0.2 nats). The mean z must be within 3 standard errors of 0."""
    process = dl.VPSDE()
    model = eps_predictor(RING, process.alpha, process.sigma)
    x, exact = _exact_and_points(RING, process, 64, seed=1)
    ll, info = dl.log_likelihood(model, process, x, "eps", trace="hutchinson", probes=16, generator=gen(5),
                                 return_info=True)
    assert not info["exact_trace"]
    stderr = info["stderr"]
    assert (stderr > 0).all() or int((stderr == 0).sum()) <= 1  # all 16 probes alike: prob 3e-5 per point
    ok = stderr > 0
    z = (ll - exact)[ok] / stderr[ok]
    assert int((z.abs() > 3).sum()) <= 6, z
    assert abs(float(z.mean())) <= 3 * float(z.std()) / math.sqrt(len(z)), float(z.mean())


def test_likelihood_gaussian_probes_are_within_their_standard_errors():
    """The Rademacher test above with ``probe="gaussian"``: 16 Gaussian probes per point. In 2-D each probe's
    estimate is the quadratic form zᵀAz (A = ∫ ∂v/∂x dt along the solve), a weighted sum of χ²₁ terms: skewed, so
    the t-statistic z = err/stderr of 16 probes has heavier tails than Student's t (measured over seeds 5–9:
    std(z) 1.1–1.6, 1–3 of 64 points beyond 3). Bound: ≤ 6 beyond 3, as for Rademacher probes, and the mean z
    within 3 standard errors of 0. Gaussian probes have the larger variance, 2‖A_sym‖²_F against Rademacher's
    2 Σ_{i≠j} (A_sym)²_ij (Hutchinson 1990), so their standard errors must be the larger: the probe kind is used."""
    process = dl.VPSDE()
    model = eps_predictor(RING, process.alpha, process.sigma)
    x, exact = _exact_and_points(RING, process, 64, seed=1)
    ll, info = dl.log_likelihood(model, process, x, "eps", trace="hutchinson", probes=16, probe="gaussian",
                                 generator=gen(5), return_info=True)
    assert not info["exact_trace"] and (info["stderr"] > 0).all()  # continuous probes: never all alike
    z = (ll - exact) / info["stderr"]
    assert int((z.abs() > 3).sum()) <= 6, z
    assert abs(float(z.mean())) <= 3 * float(z.std()) / math.sqrt(len(z)), float(z.mean())
    _, rademacher = dl.log_likelihood(model, process, x, "eps", trace="hutchinson", probes=16, generator=gen(5),
                                      return_info=True)
    assert float(info["stderr"].mean()) > 1.5 * float(rademacher["stderr"].mean())


@pytest.mark.parametrize("name", ["vp", "ddpm"])
def test_likelihood_is_as_accurate_on_ddpm_as_on_vp(name):
    """The likelihood ODE runs in σ̃ = σ/α, where DDPM's piecewise-constant β leaves no kinks: on the ring, with the
    default tolerances (rtol = atol = 1e-5), DDPM is as accurate as VP (measured: mean |error| 7.8e-5 nats on
    both, 158 model evaluations). Integrated in t, DDPM's 1000 kinks made it 7.6e-3 with 416 evaluations (and
    1.9e-3 with 9,200 at rtol 1e-7). Bound: 5e-4 nats mean, 0.01 nats on each point, fewer than 300 evaluations."""
    process = make(name)
    model = eps_predictor(RING, process.alpha, process.sigma)
    x, exact = _exact_and_points(RING, process, 64, seed=1)
    ll, info = dl.log_likelihood(model, process, x, "eps", trace="exact", return_info=True)
    err = ll - exact
    assert float(err.abs().mean()) < 5e-4 and float(err.abs().max()) < 0.01, (float(err.abs().mean()), float(err.abs().max()))
    assert info["nfe"] < 300, info["nfe"]


@pytest.mark.parametrize("name", ["vp", "ddpm", "ve"])
def test_likelihood_stays_accurate_in_high_dimension(name):
    """D = 3072 (a CIFAR image), a diagonal Gaussian with variances 0.05 … 2: a Rademacher probe is exact for a
    diagonal Jacobian, so the error is the solver's (and the prior's). The log-density accumulates ≈ D log σ̃(T) ≈ 5 D nats
    in σ̃; without the control variate (integrating ∇·u − D σ̃/(1 + σ̃²)) the mean error was +0.32 nats on VP and
    DDPM and +0.12 on VE; measured with it: +0.011 on VP and DDPM; on VE the four points' errors (0.012, 0.017,
    −0.030, −0.005) are the solver's +0.011 plus the prior's mismatch (p_1 = N(0, diag(v) + σ_max² I) against
    N(0, σ_max² I): 0.001, 0.006, −0.042, −0.016, computed by a review). Bound: 0.05 nats (2e-5 bits/dim)."""
    process = make(name)
    dims = 3072
    var = torch.linspace(0.05, 2.0, dims, dtype=F64)

    def model(x, t):  # the exact ε̂ of N(0, diag(var)) noised to t: E[ε | x_t] = σ x_t / (α² var + σ²)
        a, s = process.alpha(t)[:, None], process.sigma(t)[:, None]
        return s * x / (a * a * var + s * s)

    tmin = tt(process.t_min)
    var_min = process.alpha(tmin) ** 2 * var + process.sigma(tmin) ** 2
    x = torch.randn(4, dims, generator=gen(0), dtype=F64) * var_min.sqrt()
    exact = (-0.5 * (x * x / var_min + torch.log(2 * math.pi * var_min))).sum(1)
    ll = dl.log_likelihood(model, process, x, "eps", trace="hutchinson", generator=gen(1))
    assert float((ll - exact).abs().max()) < 0.05, (ll - exact)


@pytest.mark.parametrize("name", ["ve", "ddpm"])
def test_likelihood_of_a_gaussian_on_ve_and_ddpm(name):
    """A zero-mean Gaussian (so the prior mismatch is only its variance: VE p_1 = N(0, Σ + 2500 I) against
    N(0, 2500 I), a log-ratio ≈ λ/2500 ≈ 5e-4; DDPM p_1 has α(1)² ≈ 4e-5: ≈ 1e-4). A rotated covariance in
    2-D for VE, 1-D for DDPM (whose PF-ODE has a kink at each of its 1000 grid times). Bound: 0.01 nats per
    dimension on the mean absolute error, 0.05 nats on each point."""
    process = make(name)
    if name == "ve":
        c, s = math.cos(0.6), math.sin(0.6)
        rot = tt([[c, -s], [s, c]])
        mixture = _gaussian([0.0, 0.0], rot @ torch.diag(tt([0.3, 2.0])) @ rot.T)
    else:
        mixture = _gaussian([0.0], [[0.5]])
    model = eps_predictor(mixture, process.alpha, process.sigma)
    x, exact = _exact_and_points(mixture, process, 48, seed=2)
    ll = dl.log_likelihood(model, process, x, "eps", trace="exact")
    err = ll - exact
    assert float(err.abs().mean()) / mixture.dim < 0.01, float(err.abs().mean())
    assert float(err.abs().max()) < 0.05


# ================================================================================================
# 9. The same model expressed as eps, x0, v or score samples identically


def _as_prediction(eps_model, process, prediction):
    def model(x, t):
        eps = eps_model(x, t)
        alpha, sigma = process.alpha(t), process.sigma(t)
        x0 = (x - sigma[:, None] * eps) / alpha[:, None]
        return dl.from_x0_eps(x0, eps, prediction, alpha, sigma)

    return model


@pytest.mark.parametrize("sampler", ["ode_heun", "ancestral"])
@pytest.mark.parametrize("name", ["vp", "ve", "ddpm"])
def test_predictions_give_identical_samples(name, sampler):
    """Only round-off separates the four parametrisations: each conversion is a few flops with condition
    number ≤ 1/α(1) ≈ 150 (VP; VE σ ≤ 50), i.e. ~1e-13 per step; 40 steps of a contracting map keep it
    below 1e-10 — the bound, far below any modelling difference (SW floor ≈ 0.1)."""
    process = make(name)
    eps_model = eps_predictor(RING, process.alpha, process.sigma)
    x_T = process.prior_sample((256, 2), gen(9), dtype=F64)
    outputs = {}
    for prediction in dl.PREDICTIONS:
        model = eps_model if prediction == "eps" else _as_prediction(eps_model, process, prediction)
        outputs[prediction] = dl.sample(model, process, sampler, 40, x_T=x_T, prediction=prediction,
                                        generator=gen(10), grid="quadratic")
    scale = float(outputs["eps"].abs().max())
    for prediction, x in outputs.items():
        torch.testing.assert_close(x, outputs["eps"], rtol=0, atol=1e-10 * max(1.0, scale), msg=prediction)
