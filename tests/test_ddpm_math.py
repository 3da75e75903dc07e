"""The DDPM mathematics of the lecture (shared/seed/lecture-notes.md §1–3), checked independently.

Every check recomputes the quantity another way — Monte Carlo with a tolerance from its standard error,
brute-force Bayes on a fine grid, closed forms written here from the papers, or diffusers' DDPMScheduler —
in float64. Monte Carlo checks use 5 standard errors ("5 SE"): with fixed seeds they are deterministic, and
a real error of the size being tested would sit far outside them.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from diffusionlab import DDPM, VESDE, VPSDE, Denoiser, SubVPSDE, negative_elbo, sample, time_grid
from diffusionlab.errors import UserError
from diffusionlab.objectives import (chain_elbo, chain_log_prob, diffusion_kl, discretized_gaussian_log_prob,
                                    forward_chain, gaussian_kl, joint_log_prob)
from diffusionlab.processes import forward_marginal, forward_step, posterior_mean_var

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def log_normal(x, mean, var):
    """log N(x; mean, var), elementwise — written here, independent of objectives.gaussian_log_prob."""
    var = torch.as_tensor(var, dtype=F64)
    return -0.5 * (math.log(2 * math.pi) + torch.log(var) + (x - mean) ** 2 / var)


def mean_and_se(values: torch.Tensor, dim: int = 0):
    """Monte Carlo mean and its standard error along ``dim``."""
    return values.mean(dim), values.std(dim) / math.sqrt(values.shape[dim])


def eps_model(x, t):
    """A fixed, deliberately non-optimal ε-model: linear in x and t (t has shape (n,), x's dtype)."""
    t = t.reshape(-1, *([1] * (x.ndim - 1)))
    return (0.3 + 0.5 * t) * x - 0.4 * t + 0.1


# ------------------------------------------------------------------------------------ 1. forward process


def test_iterated_forward_steps_have_the_closed_form_marginal():
    """q(x_t|x_0) = ∏ q(x_i|x_{i−1}) integrated out: N(sqrt(ᾱ_t) x_0, (1 − ᾱ_t) I) (lecture §1)."""
    process, n = DDPM(), 20_000
    x0 = torch.tensor([1.5, -2.0], dtype=F64)
    g, x, worst = gen(0), x0.expand(n, 2).clone(), 0.0
    for i in range(1, process.T + 1):
        mean, var = forward_step(x, process.betas[i - 1])
        x = mean + var.sqrt() * torch.randn(x.shape, generator=g, dtype=F64)
        if i not in (1, 10, 250, 1000):
            continue
        m_true, v_true = forward_marginal(x0, process.alpha_bars[i])
        cov = torch.cov(x.T)
        # SE of a sample mean sqrt(v/n); of a sample variance v·sqrt(2/n); of a covariance (independent) v/sqrt(n)
        z = torch.cat([(x.mean(0) - m_true) / (v_true / n) ** 0.5,
                       (cov.diagonal() - v_true) / (v_true * (2 / n) ** 0.5),
                       cov[0, 1:] / (v_true / n**0.5)])
        worst = max(worst, float(z.abs().max()))
        assert z.abs().max() <= 5, (i, z)
    print(f"MEASURED forward chain vs closed form: max |deviation| = {worst:.2f} SE")


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_process_alpha_sigma_on_the_grid_are_sqrt_alpha_bar(schedule):
    process = DDPM(1000, schedule)
    ab = torch.cumprod(torch.cat([torch.ones(1, dtype=F64), 1 - process.betas]), 0)  # ᾱ_0 = 1, ᾱ_i = ∏ α
    torch.testing.assert_close(process.alpha_bars, ab, rtol=1e-12, atol=0)
    torch.testing.assert_close(process.alphas, 1 - process.betas, rtol=0, atol=0)
    t = torch.arange(process.T + 1, dtype=F64) / process.T
    torch.testing.assert_close(process.alpha(t), ab.sqrt(), rtol=1e-12, atol=0)
    torch.testing.assert_close(process.sigma(t), (1 - ab).sqrt(), rtol=1e-9, atol=0)
    x0 = torch.tensor([0.7, -1.1], dtype=F64)
    for i in (1, 2, 500, 1000):
        mean, var = forward_marginal(x0, ab[i])
        torch.testing.assert_close(mean, ab[i].sqrt() * x0, rtol=1e-15, atol=0)
        torch.testing.assert_close(var, 1 - ab[i], rtol=1e-15, atol=0)
        # one step of the generic transition is the lecture's q(x_i | x_{i−1}) = N(sqrt(1 − β_i) x, β_i)
        a_ts, s2_ts = process.transition(t[i - 1], t[i])
        torch.testing.assert_close(a_ts, (1 - process.betas[i - 1]).sqrt(), rtol=1e-12, atol=0)
        torch.testing.assert_close(s2_ts, process.betas[i - 1], rtol=1e-9, atol=0)
    if schedule == "linear":  # Ho et al. §4: 1e-4 → 0.02
        assert process.betas[0] == pytest.approx(1e-4, rel=1e-12)
        assert process.betas[-1] == pytest.approx(0.02, rel=1e-12)


# ------------------------------------------------------------------------------------ 2. the posterior


def grid_moments(log_density, lo: float = -15.0, hi: float = 15.0, n: int = 300_001):
    """Mean and variance of the density ∝ exp(log_density(y)) by a Riemann sum on a fine 1-D grid.

    The spacing (1e-4) gives ≥ 70 points per standard deviation for every posterior tested here (the
    narrowest, β̃_2, has std 7e-3); for a smooth density with negligible mass at ±15 the Riemann sum then
    converges spectrally, i.e. it is exact to round-off (nothing below assumes the result is Gaussian)."""
    y = torch.linspace(lo, hi, n, dtype=F64)
    w = torch.softmax(log_density(y), 0)
    mean = (w * y).sum()
    return mean, (w * (y - mean) ** 2).sum()


PAIRS = [(0.3, 0.7), (2.5, -1.2), (-1.0, 0.0)]  # (x_t, x_0)


@pytest.mark.parametrize("i", [2, 10, 500, 1000])
def test_one_step_posterior_is_bayes_rule(i):
    """q(x_{i−1}|x_i, x_0) ∝ q(x_{i−1}|x_0) q(x_i|x_{i−1}) (lecture §3).

    The lecture's formula = the generic two-time posterior = brute force."""
    process = DDPM()
    beta, ab, ab_prev = process.betas[i - 1], process.alpha_bars[i], process.alpha_bars[i - 1]
    x_t = torch.tensor([p[0] for p in PAIRS], dtype=F64)
    x0 = torch.tensor([p[1] for p in PAIRS], dtype=F64)
    mean, var = posterior_mean_var(x_t, x0, beta, ab, ab_prev)
    g_mean, g_var = process.posterior(x_t, x0, torch.tensor((i - 1) / process.T, dtype=F64),
                                      torch.tensor(i / process.T, dtype=F64))
    torch.testing.assert_close(g_mean, mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_var, var, rtol=1e-9, atol=0)
    for k in range(len(PAIRS)):
        def log_joint(y):
            m_prev, v_prev = forward_marginal(x0[k], ab_prev)
            m_step, v_step = forward_step(y, beta)
            return log_normal(y, m_prev, v_prev) + log_normal(x_t[k], m_step, v_step)

        bf_mean, bf_var = grid_moments(log_joint)
        assert float(mean[k]) == pytest.approx(float(bf_mean), rel=1e-8, abs=1e-10)
        assert float(var) == pytest.approx(float(bf_var), rel=1e-7)


def test_first_step_posterior_is_the_data_point():
    """At i = 1, x_0 is known: μ̃_1 = x_0 and β̃_1 = 0 (ᾱ_0 = 1)."""
    process = DDPM()
    x_t, x0 = torch.tensor([0.4, -2.0], dtype=F64), torch.tensor([1.0, 0.5], dtype=F64)
    mean, var = posterior_mean_var(x_t, x0, process.betas[0], process.alpha_bars[1], process.alpha_bars[0])
    torch.testing.assert_close(mean, x0, rtol=1e-12, atol=1e-12)
    assert float(var) == 0.0


@pytest.mark.parametrize("process, s, t", [(DDPM(), 0.2, 0.5), (VPSDE(), 0.3, 0.7), (SubVPSDE(), 0.3, 0.7),
                                           (VESDE(), 0.3, 0.7)], ids=["ddpm-200-500", "vp", "subvp", "ve"])
def test_two_time_posterior_is_bayes_rule(process, s, t):
    """q(x_s|x_t, x_0) ∝ q(x_s|x_0) q(x_t|x_s) for non-adjacent s < t, against brute-force Bayes."""
    s, t = torch.tensor(s, dtype=F64), torch.tensor(t, dtype=F64)
    a_ts, s2_ts = process.transition(s, t)
    if isinstance(process, DDPM):  # ∏_{j=201}^{500} α_j, independently of the interpolated α(t)
        prod = torch.prod(process.alphas[200:500])
        torch.testing.assert_close(a_ts, prod.sqrt(), rtol=1e-12, atol=0)
        torch.testing.assert_close(s2_ts, 1 - prod, rtol=1e-10, atol=0)
    elif type(process) is VPSDE:  # α_{t|s} = exp(−½ ∫_s^t β), σ²_{t|s} = 1 − α²_{t|s}
        a = math.exp(-0.25 * (0.7**2 - 0.3**2) * (20 - 0.1) - 0.5 * 0.4 * 0.1)
        assert float(a_ts) == pytest.approx(a, rel=1e-12)
        assert float(s2_ts) == pytest.approx(1 - a * a, rel=1e-12)
    elif isinstance(process, VESDE):
        assert float(a_ts) == 1.0
        assert float(s2_ts) == pytest.approx(float(process.sigma(t) ** 2 - process.sigma(s) ** 2), rel=1e-12)
    x_t = torch.tensor([p[0] for p in PAIRS], dtype=F64)
    x0 = torch.tensor([p[1] for p in PAIRS], dtype=F64)
    mean, var = process.posterior(x_t, x0, s, t)
    for k in range(len(PAIRS)):
        def log_joint(y):
            return (log_normal(y, process.alpha(s) * x0[k], process.sigma(s) ** 2)
                    + log_normal(x_t[k], a_ts * y, s2_ts))

        bf_mean, bf_var = grid_moments(log_joint)
        assert float(mean[k]) == pytest.approx(float(bf_mean), rel=1e-8, abs=1e-10)
        assert float(var) == pytest.approx(float(bf_var), rel=1e-7)


# ------------------------------------------------------------------------------------ 3. Gaussian blocks


KL_CASES = [(0.0, 1.0, 0.0, 2.0), (1.0, 0.25, -0.5, 1.0), (-2.0, 4.0, -1.0, 3.0), (0.3, 1e-2, 0.35, 2e-2)]


def test_gaussian_kl_matches_monte_carlo_and_quadrature():
    m1, v1, m2, v2 = (torch.tensor(c, dtype=F64) for c in zip(*KL_CASES))
    kl = gaussian_kl(m1, v1, m2, v2)
    n = 400_000
    x = m1 + v1.sqrt() * torch.randn(n, len(KL_CASES), generator=gen(1), dtype=F64)
    est, se = mean_and_se(log_normal(x, m1, v1) - log_normal(x, m2, v2))
    z = (est - kl) / se
    print(f"MEASURED gaussian_kl vs Monte Carlo: max |deviation| = {float(z.abs().max()):.2f} SE")
    assert z.abs().max() <= 5, z
    for k, (a, va, b, vb) in enumerate(KL_CASES):  # and to 1e-9 against numerical integration
        p, q = stats.norm(a, va**0.5), stats.norm(b, vb**0.5)
        exact = integrate.quad(lambda y: p.pdf(y) * (p.logpdf(y) - q.logpdf(y)), -np.inf, np.inf,
                               epsabs=1e-13, epsrel=1e-12)[0]
        assert float(kl[k]) == pytest.approx(exact, rel=1e-9, abs=1e-12)


def test_gaussian_kl_of_identical_gaussians_is_zero():
    m = torch.randn(50, generator=gen(2), dtype=F64) * 3
    v = torch.rand(50, generator=gen(3), dtype=F64) * 5 + 1e-6
    torch.testing.assert_close(gaussian_kl(m, v, m, v), torch.zeros_like(m), rtol=0, atol=1e-15)


@pytest.mark.parametrize("levels", [2, 5, 256])
@pytest.mark.parametrize("mean", [0.0, 0.3, -0.99, 1.0, 3.0, -3.0, 1 / 255])
@pytest.mark.parametrize("std", [1e-3, 0.05, 1.0, 10.0])
def test_discretized_gaussian_is_a_probability_over_levels(levels, mean, std):
    """Ho et al. eq. 13: bins [x − δ/2, x + δ/2], outer bins to ±∞; P sums to 1 and is a cdf difference."""
    x = torch.linspace(-1, 1, levels, dtype=F64)
    lp = discretized_gaussian_log_prob(x, torch.full_like(x, mean), std**2, levels)
    assert not torch.isnan(lp).any() and (lp <= 0).all()
    assert float(torch.logsumexp(lp, 0).exp()) == pytest.approx(1.0, abs=1e-12)
    half = 1.0 / (levels - 1)
    xs = x.numpy()
    a = np.where(np.arange(levels) == 0, -np.inf, (xs - half - mean) / std)
    b = np.where(np.arange(levels) == levels - 1, np.inf, (xs + half - mean) / std)
    np.testing.assert_allclose(lp.exp().numpy(), stats.norm.cdf(b) - stats.norm.cdf(a), rtol=1e-9, atol=1e-15)
    # far tails, in log space: the same mass without cancellation (survival function above the mean)
    mass = np.where(a > 0, stats.norm.sf(a) - stats.norm.sf(b), stats.norm.cdf(b) - stats.norm.cdf(a))
    ok = mass > 1e-290
    np.testing.assert_allclose(lp.numpy()[ok], np.log(mass[ok]), rtol=0, atol=1e-8)


# ------------------------------------------------------------------------------------ 4. ELBO decomposition


def lecture_chain_log_densities(process: DDPM, model, chain: list[torch.Tensor], variance: str):
    """(log q(x_{1:T}|x_0), log p_θ(x_{0:T})) of a given chain [x_0, x_1, …, x_T] (lecture §1–3), written from the
    lecture's DDPM formulas on the β schedule (forward_step, posterior_mean_var), independently of the library's
    generic process code.

    p_θ(x_{i−1}|x_i) = N(μ̃_i(x_i, x̂_0), β̃_i or β_i); decoder p_θ(x_0|x_1) = N(x̂_0(x_1), β_1) — the
    convention of objectives.decoder_nll (σ²_{1|0} = β_1, for both variances; the lecture leaves it open).
    OpenAI's improved/guided-diffusion code uses β̃_2 there instead ("fixed large": append(β̃_2, β_2…β_T)),
    which changes L_0 only — sampling is unaffected since the last step adds no noise. p(x_T) = N(0, I)."""
    T, betas, ab, n = process.T, process.betas, process.alpha_bars, chain[0].shape[0]
    log_q = sum(log_normal(chain[i], *forward_step(chain[i - 1], betas[i - 1])).sum(1) for i in range(1, T + 1))
    log_p = log_normal(chain[T], 0.0, 1.0).sum(1)
    for i in range(T, 0, -1):
        eps = model(chain[i], torch.full((n,), i / T, dtype=F64))
        x0_hat = (chain[i] - (1 - ab[i]).sqrt() * eps) / ab[i].sqrt()
        if i == 1:
            log_p += log_normal(chain[0], x0_hat, betas[0]).sum(1)
        else:
            mean, small = posterior_mean_var(chain[i], x0_hat, betas[i - 1], ab[i], ab[i - 1])
            log_p += log_normal(chain[i - 1], mean, small if variance == "small" else betas[i - 1]).sum(1)
    return log_q, log_p


X0_POINTS = torch.tensor([[0.5, -1.0], [2.0, 0.0], [-1.5, 1.0], [0.0, 0.3]], dtype=F64)
SMALL_DDPM = dict(T=8, schedule="linear", beta_start=0.05, beta_end=0.5)


@pytest.mark.parametrize("variance", ["small", "large"])
def test_chain_and_joint_log_densities_are_the_lecture_formulas(variance):
    """objectives.chain_log_prob = log q(x_{1:T}|x_0) = Σ log q(x_t|x_{t−1}) and objectives.joint_log_prob =
    log p_θ(x_{0:T}) = log p(x_T) + Σ log p_θ(x_{t−1}|x_t), on a fixed chain drawn with the lecture's one-step
    q(x_t|x_{t−1}): equal to round-off to the same densities written from the lecture's DDPM formulas."""
    process, g = DDPM(**SMALL_DDPM), gen(12)
    chain = [X0_POINTS.repeat(8, 1)]
    for i in range(1, process.T + 1):
        mean, var = forward_step(chain[-1], process.betas[i - 1])
        chain.append(mean + var.sqrt() * torch.randn(chain[0].shape, generator=g, dtype=F64))
    ref_q, ref_p = lecture_chain_log_densities(process, eps_model, chain, variance)
    grid, xs = time_grid(process, process.T), chain[:0:-1]  # library order: xs[0] = x_T … xs[−1] = x_1
    log_q = chain_log_prob(process, chain[0], xs, grid)
    log_p = joint_log_prob(Denoiser(eps_model, process, "eps"), chain[0], xs, grid, variance)
    torch.testing.assert_close(log_q, ref_q, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(log_p, ref_p, rtol=1e-10, atol=1e-10)


def test_forward_chain_has_the_closed_form_marginals():
    """objectives.forward_chain draws x_{1:T} ~ q(x_{1:T}|x_0): each state has q(x_t|x_0) = N(sqrt(ᾱ_t) x_0,
    (1 − ᾱ_t) I) (5 SE), and consecutive states have the one-step correlation of q(x_t|x_{t−1})."""
    process, n = DDPM(**SMALL_DDPM), 100_000
    x0 = torch.tensor([[1.5, -2.0]], dtype=F64).expand(n, 2)
    grid = time_grid(process, process.T)
    xs = forward_chain(process, x0, grid, gen(13))
    assert len(xs) == process.T
    for k, x in enumerate(xs):
        i = process.T - k
        m_true, v_true = forward_marginal(x0[0], process.alpha_bars[i])
        z_mean = (x.mean(0) - m_true) / (v_true / n) ** 0.5
        z_var = (x.var(0) - v_true) / (v_true * (2 / n) ** 0.5)
        assert z_mean.abs().max() <= 5 and z_var.abs().max() <= 5, (i, z_mean, z_var)
        if i > 1:  # Cov(x_i, x_{i−1} | x_0) = sqrt(1 − β_i)(1 − ᾱ_{i−1})
            cov = ((x - x.mean(0)) * (xs[k + 1] - xs[k + 1].mean(0))).mean(0)
            expected = (1 - process.betas[i - 1]).sqrt() * (1 - process.alpha_bars[i - 1])
            assert (cov - expected).abs().max() <= 5 * (v_true / n) ** 0.5, (i, cov, expected)


@pytest.mark.parametrize("variance", ["small", "large"])
def test_kl_form_of_the_elbo_equals_the_chain_form(variance):
    """E_q[log p_θ(x_{0:T}) − log q(x_{1:T}|x_0)] (objectives.chain_elbo, Jensen's form) = −negative_elbo (the KL
    form, closed-form KLs): two independent estimates of the same bound agree within 5 SE."""
    process, reps = DDPM(**SMALL_DDPM), 50_000
    x0 = X0_POINTS.repeat(reps, 1)  # row r is point r % 4
    chain = -chain_elbo(Denoiser(eps_model, process, "eps"), x0, variance=variance,
                        generator=gen(10)).reshape(reps, 4)
    kl_form = negative_elbo(Denoiser(eps_model, process, "eps"), x0, variance=variance,
                            generator=gen(11)).reshape(reps, 4)
    (m1, se1), (m2, se2) = mean_and_se(chain), mean_and_se(kl_form)
    z = (m1 - m2) / (se1**2 + se2**2).sqrt()
    print(f"MEASURED −ELBO {variance}: chain {[round(v, 4) for v in m1.tolist()]} vs KL form "
          f"{[round(v, 4) for v in m2.tolist()]}; max |dev| {z.abs().max():.2f} SE")
    assert z.abs().max() <= 5, z


@pytest.mark.parametrize("variance", ["small", "large"])
@pytest.mark.parametrize("i", [2, 10, 500, 1000])
def test_kl_term_is_the_weighted_eps_error(i, variance):
    """L_{t−1} = KL(q(x_{t−1}|x_t, x_0) ‖ p_θ(x_{t−1}|x_t)) with the ε-parametrised mean
    μ_θ = (x_t − β_t/sqrt(1 − ᾱ_t) ε_θ)/sqrt(α_t) is β_t²/(2 σ_t² α_t (1 − ᾱ_t)) ‖ε − ε_θ(x_t, t)‖² (Ho et al.
    eq. 12; lecture §3: "the KL becomes ‖ε − ε_θ‖² up to weights"), with σ_t² = β̃_t. For σ_t² = β_t the two
    variances differ and each dimension adds the constant ½ [log(β_t/β̃_t) + β̃_t/β_t − 1]. Weights from β, ᾱ."""
    process, n, d = DDPM(), 16, 3
    beta, ab, ab_prev = process.betas[i - 1], process.alpha_bars[i], process.alpha_bars[i - 1]
    x0 = torch.randn(n, d, generator=gen(80 + i), dtype=F64)
    eps = torch.randn(n, d, generator=gen(90 + i), dtype=F64)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    t = torch.full((n,), i / process.T, dtype=F64)
    kl = diffusion_kl(Denoiser(eps_model, process, "eps"), x0, x_t, t - 1 / process.T, t, variance)
    beta_tilde = (1 - ab_prev) * beta / (1 - ab)
    sigma2 = beta_tilde if variance == "small" else beta
    weight = beta**2 / (2 * sigma2 * (1 - beta) * (1 - ab))
    expected = weight * (eps - eps_model(x_t, t)).pow(2).sum(1)
    if variance == "large":
        expected = expected + d * 0.5 * (torch.log(beta / beta_tilde) + beta_tilde / beta - 1)
    assert (expected > 0).all()
    torch.testing.assert_close(kl, expected, rtol=1e-10, atol=0)  # measured ≤ 1.4e-12 relative


def test_stratified_elbo_is_unbiased():
    process, reps = DDPM(**SMALL_DDPM), 50_000
    denoiser = Denoiser(eps_model, process, "eps")
    x0 = X0_POINTS.repeat(reps, 1)
    full = negative_elbo(denoiser, x0, generator=gen(20)).reshape(reps, 4)
    strat = negative_elbo(denoiser, x0, strata=3, generator=gen(21)).reshape(reps, 4)
    (m1, se1), (m2, se2) = mean_and_se(full), mean_and_se(strat)
    z = (m1 - m2) / (se1**2 + se2**2).sqrt()
    print(f"MEASURED stratified −ELBO: max |dev| from the full sum {z.abs().max():.2f} SE")
    assert z.abs().max() <= 5, z
    assert (strat.std(0) > full.std(0)).all()  # it did sample terms (7 terms in 3 strata), not sum them


# ------------------------------------------------------------------------------------ 5. Gaussian data

M, S = 1.5, 0.5  # x_0 ~ N(M, S²) per dimension, 2 independent dimensions


def optimal_eps(process):
    """E[ε | x_t] = σ (x_t − α M)/(α² S² + σ²) for Gaussian data: the exact minimiser of L_simple."""
    def model(x, t):
        a, s = process.alpha(t)[:, None], process.sigma(t)[:, None]
        return s * (x - a * M) / (a**2 * S**2 + s**2)
    return model


def ancestral_output_law(process: DDPM, variance: str):
    """Exact mean and std of Algorithm 2's output with the optimal model: every step is the linear map
    x_{i−1} = (c0·A_i + ct) x_i + c0·B_i + sqrt(v_i) z with x̂_0 = A_i x_i + B_i, so Gaussian moments propagate
    exactly from x_T ~ N(0, 1); the last step returns x̂_0(x_1). Written from the lecture's formulas."""
    ab, b = process.alpha_bars, process.betas
    mu, var = 0.0, 1.0
    for i in range(process.T, 0, -1):
        s2 = 1 - ab[i]
        A, B = ab[i].sqrt() * S**2 / (ab[i] * S**2 + s2), s2 * M / (ab[i] * S**2 + s2)
        if i == 1:
            return float(A * mu + B), float(A**2 * var) ** 0.5
        c0, ct = ab[i - 1].sqrt() * b[i - 1] / s2, (1 - b[i - 1]).sqrt() * (1 - ab[i - 1]) / s2
        v = (1 - ab[i - 1]) * b[i - 1] / s2 if variance == "small" else b[i - 1]
        mu, var = (c0 * A + ct) * mu + c0 * B, (c0 * A + ct) ** 2 * var + v


# T = 100 uses β 1e-3 → 0.2 (Ho's endpoints × 1000/T): with the unscaled 1e-4 → 0.02, ᾱ_100 = 0.36 and the
# chain never reaches the N(0, I) prior. ``bias`` bounds |law − N(M, S²)| of the *exact* sampler output
# (ancestral_output_law): the fixed variance β̃ (small) misses c0² Var(x_0|x_i) per step and β (large)
# overshoots it, so ancestral sampling is exact only as T → ∞. Measured std errors: T=1000 small −0.0039,
# large +0.0008; T=100 small −0.032, large +0.008; means within 2e-5.
SAMPLER_CASES = [(dict(T=1000), "small", 0.005), (dict(T=1000), "large", 0.002),
                 (dict(T=100, beta_start=1e-3, beta_end=0.2), "small", 0.035),
                 (dict(T=100, beta_start=1e-3, beta_end=0.2), "large", 0.01)]


@pytest.mark.parametrize("kwargs, variance, bias", SAMPLER_CASES, ids=["1000-small", "1000-large", "100-small",
                                                                        "100-large"])
def test_ancestral_sampling_reproduces_gaussian_data(kwargs, variance, bias):
    process, n = DDPM(**kwargs), 20_000
    x = sample(optimal_eps(process), process, "ancestral", shape=(n, 2), dtype=F64, generator=gen(30),
               variance=variance).flatten()
    law_mean, law_std = ancestral_output_law(process, variance)
    assert abs(law_mean - M) <= bias and abs(law_std - S) <= bias
    se_mean, se_std = law_std / math.sqrt(x.numel()), law_std / math.sqrt(2 * x.numel())
    z_mean, z_std = (float(x.mean()) - law_mean) / se_mean, (float(x.std()) - law_std) / se_std
    print(f"MEASURED ancestral T={process.T} {variance}: mean {float(x.mean()):.4f} std {float(x.std()):.4f}; "
          f"exact law ({law_mean:.5f}, {law_std:.5f}); deviations {z_mean:.2f}, {z_std:.2f} SE")
    assert abs(z_mean) <= 5 and abs(z_std) <= 5
    # hence, against the data distribution itself: within 5 SE plus the exact discretisation bias
    assert abs(float(x.mean()) - M) <= 5 * se_mean + bias and abs(float(x.std()) - S) <= 5 * se_std + bias


def expected_elbo_gap_per_dim(process: DDPM, variance: str) -> float:
    """E_{x_0}[−ELBO(x_0)] − H(N(M, S²)) per dimension, in closed form, for the optimal model:
    prior KL + Σ_i E KL(N(μ̃, β̃) ‖ N(μ̃ + c0 (x̂_0 − x_0), v_i)) + E[−log N(x_0; x̂_0(x_1), β_1)]
    − entropy,
    with E[(x_0 − x̂_0)²] = Var(x_0|x_i) = S² σ_i²/(ᾱ_i S² + σ_i²)."""
    ab, b, T = process.alpha_bars, process.betas, process.T
    post_var = lambda i: S**2 * (1 - ab[i]) / (ab[i] * S**2 + 1 - ab[i])  # noqa: E731
    total = 0.5 * (ab[T] * (M**2 + S**2) + (1 - ab[T]) - 1 - torch.log(1 - ab[T]))
    for i in range(2, T + 1):
        c0 = ab[i - 1].sqrt() * b[i - 1] / (1 - ab[i])
        small = (1 - ab[i - 1]) * b[i - 1] / (1 - ab[i])
        v = small if variance == "small" else b[i - 1]
        total += 0.5 * (torch.log(v / small) + (small + c0**2 * post_var(i)) / v - 1)
    total += 0.5 * torch.log(2 * math.pi * b[0]) + 0.5 * post_var(1) / b[0]
    return float(total) - 0.5 * math.log(2 * math.pi * math.e * S**2)


@pytest.mark.parametrize("variance", ["small", "large"])
def test_elbo_of_the_optimal_model_bounds_the_true_likelihood(variance):
    """E[−ELBO] ≥ E[−log p(x_0)] (Jensen, lecture §3), with equality up to the discretisation gap.

    Closed-form gap at T = 1000 (expected_elbo_gap_per_dim): 0.0011 nats/dim with variance β ("large", the
    optimal fixed variance for non-degenerate data, Ho et al. §3.2) but 0.456 nats/dim with β̃ ("small"):
    β̃ is the reverse variance only for a point mass x_0, so every KL term pays ½ c0² Var(x_0|x_i)/β̃_i.
    The Monte Carlo −ELBO of the library must match the closed form within 5 SE (≈ 0.02 nats/dim here)."""
    process, n = DDPM(1000), 4_000
    x0 = M + S * torch.randn(n, 2, generator=gen(40), dtype=F64)
    nelbo = negative_elbo(Denoiser(optimal_eps(process), process, "eps"), x0, variance=variance, generator=gen(41))
    gap, se = mean_and_se((nelbo + log_normal(x0, M, S**2).sum(1)) / 2)
    expected = expected_elbo_gap_per_dim(process, variance)
    print(f"MEASURED ELBO gap T=1000 {variance}: {float(gap):.4f} ± {float(se):.4f} nats/dim "
          f"(closed form {expected:.4f})")
    assert expected >= 0 and gap >= -5 * se  # the ELBO is a lower bound, on average over the data
    assert abs(float(gap) - expected) <= 5 * float(se)
    assert expected <= (0.002 if variance == "large" else 0.5)
    if variance == "large":
        assert float(gap) < 0.05


def expected_elbo_gap_on_grid(process, grid: torch.Tensor, variance: str) -> float:
    """``expected_elbo_gap_per_dim`` for any process x_t = α_t x_0 + σ_t ε on a decreasing grid t_0 > … > t_K,
    from the two-time Gaussian formulas alone: α_{t|s} = α_t/α_s, σ²_{t|s} = σ_t² − α²_{t|s} σ_s², posterior
    q(x_s | x_t, x_0) with variance σ²_{t|s} σ_s²/σ_t² and x_0-coefficient c0 = α_s σ²_{t|s}/σ_t², reverse
    variance that (small) or σ²_{t|s} (large), decoder N(x̂_0, σ²_{t_K}), prior N(0, prior_std²)."""
    a = [float(process.alpha(t)) for t in grid]
    v = [float(process.sigma(t)) ** 2 for t in grid]
    post_var = lambda k: S**2 * v[k] / (a[k] ** 2 * S**2 + v[k])  # Var(x_0 | x_{t_k})  # noqa: E731
    p2 = float(process.prior_std) ** 2
    total = 0.5 * ((a[0] ** 2 * (M**2 + S**2) + v[0]) / p2 - 1 - math.log(v[0] / p2))
    for k in range(len(grid) - 1):  # the step from t = t_k down to s = t_{k+1}
        ats = a[k] / a[k + 1]
        trans = v[k] - ats**2 * v[k + 1]
        small = trans * v[k + 1] / v[k]
        c0 = a[k + 1] * trans / v[k]
        var = small if variance == "small" else trans
        total += 0.5 * (math.log(var / small) + (small + c0**2 * post_var(k)) / var - 1)
    total += 0.5 * math.log(2 * math.pi * v[-1]) + 0.5 * post_var(len(grid) - 1) / v[-1]
    return total - 0.5 * math.log(2 * math.pi * math.e * S**2)


def test_the_grid_gap_formula_is_the_ddpm_one_on_ddpms_grid():
    """The two closed forms are written differently (β tables vs two-time formulas): on DDPM's own grid they agree."""
    process = DDPM(1000)
    for variance in ("small", "large"):
        assert expected_elbo_gap_on_grid(process, time_grid(process, 1000), variance) == pytest.approx(
            expected_elbo_gap_per_dim(process, variance), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("variance", ["small", "large"])
@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_elbo_of_the_optimal_model_matches_its_closed_form_on_the_sde_processes(name, variance):
    """The Monte Carlo −ELBO of the exact ε̂ on the continuous processes' 1000-step grid must
    match ``expected_elbo_gap_on_grid`` within 5 SE (SE ≈ 0.01 nats/dim). With variance "large" the gap is small
    but not 0 (VE: ≈ 0.035 nats/dim, measured 0.0336 ± 0.0037 with 20,000 points); with "small" 0.03 (VE), 0.44 (VP)
    and 2.2 (sub-VP), measured alike. A review found VE at +2799 nats/dim: the decoder took
    the transition variance from t = 0, which VE's σ(0) = σ_min shrinks to 1.7e-8 instead of σ(t_min)² ≈ 1e-4."""
    process = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}[name]()
    n = 4_000
    x0 = M + S * torch.randn(n, 2, generator=gen(42), dtype=F64)
    nelbo = negative_elbo(Denoiser(optimal_eps(process), process, "eps"), x0, steps=1000, variance=variance,
                          generator=gen(43))
    gap, se = mean_and_se((nelbo + log_normal(x0, M, S**2).sum(1)) / 2)
    expected = expected_elbo_gap_on_grid(process, time_grid(process, 1000).to(F64), variance)
    print(f"MEASURED ELBO gap {name} 1000 steps {variance}: {float(gap):.4f} ± {float(se):.4f} nats/dim "
          f"(closed form {expected:.4f})")
    assert expected >= 0 and (variance == "small" or expected < 0.05)
    assert abs(float(gap) - expected) <= 5 * float(se), (float(gap), float(se), expected)


# ------------------------------------------------------------------------------------ 6. diffusers parity

T_DIFF = 1000


def diffusers_scheduler(variance_type: str, dtype):
    """diffusers' DDPMScheduler; for float64 its float32 tables are rebuilt in float64 from its own definition
    (betas = linspace(beta_start, beta_end, T), alphas_cumprod = cumprod(1 − betas))."""
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDPMScheduler(num_train_timesteps=T_DIFF, beta_schedule="linear", clip_sample=False,
                                    variance_type=variance_type)
    if dtype == F64:
        betas = torch.linspace(sched.config.beta_start, sched.config.beta_end, T_DIFF, dtype=F64)
        sched.alphas_cumprod, sched.one = torch.cumprod(1 - betas, 0), torch.tensor(1.0, dtype=F64)
    return sched


VARIANCE_TYPES = [("fixed_small", "small"), ("fixed_large", "large")]
X_SHAPE = (4, 3, 5)


def ours_one_step(x, k, variance, generator):
    """Our sampler over diffusers' step k: an ancestral step (k + 1)/T → k/T, or for k = 0 the final x̂_0."""
    grid = torch.tensor([(k + 1) / T_DIFF] + ([k / T_DIFF] if k > 0 else []), dtype=F64)
    return sample(eps_model, DDPM(), x_T=x, grid=grid, denoise=k == 0, generator=generator, variance=variance)


def model_output(x, k):
    return eps_model(x, torch.full((X_SHAPE[0],), (k + 1) / T_DIFF, dtype=x.dtype))


@pytest.mark.parametrize("variance_type, variance", VARIANCE_TYPES)
@pytest.mark.parametrize("k", [999, 500, 37, 1, 0])
def test_one_ancestral_step_matches_diffusers(k, variance_type, variance):
    """diffusers timestep k ↔ our time (k + 1)/T; its step at k = 0 (no noise) is our final x̂_0 at t = 1/T.
    diffusers 0.42 has no ``variance_noise`` argument: both draw torch.randn(shape) from equally seeded CPU
    generators, so the noise is the same. In float64 the two agree to round-off."""
    sched = diffusers_scheduler(variance_type, F64)
    x = torch.randn(X_SHAPE, generator=gen(50 + k), dtype=F64)
    ref = sched.step(model_output(x, k), k, x, generator=gen(7)).prev_sample
    torch.testing.assert_close(ours_one_step(x, k, variance, gen(7)), ref, rtol=0, atol=1e-12)
    if k > 0:  # the step is stochastic: with other noise it would differ
        assert (ours_one_step(x, k, variance, gen(8)) - ref).abs().max() > 1e-4


@pytest.mark.parametrize("variance_type, variance", VARIANCE_TYPES)
@pytest.mark.parametrize("k", [999, 500, 37, 1, 0])
def test_one_float32_step_matches_diffusers(k, variance_type, variance):
    """float32, unmodified diffusers. Reference: diffusers' float64 step (float64 tables) with the float32 noise
    swapped in. Ours stays within 1e-6 of it; diffusers' own float32 step is off by up to ~2e-4 at small k
    (measured 2.1e-4 at k = 2): it forms 1 − ᾱ_k from a float32 ᾱ_k ≈ 1 − 2e-4, losing 3–4 digits, where
    we compute σ² with expm1 in float64. So ours ↔ diffusers-float32 agree to 5e-4, not 1e-5."""
    x32 = torch.randn(X_SHAPE, generator=gen(50 + k), dtype=torch.float32)
    x, sched = x32.double(), diffusers_scheduler(variance_type, F64)
    ref = sched.step(model_output(x, k), k, x, generator=gen(7)).prev_sample
    if k > 0:  # replace diffusers' float64 noise by the float32 draw that the float32 runs make
        std = sched._get_variance(k).sqrt()
        ref = ref + std * (torch.randn(X_SHAPE, generator=gen(7), dtype=torch.float32).double()
                           - torch.randn(X_SHAPE, generator=gen(7), dtype=F64))
    ours = ours_one_step(x32, k, variance, gen(7))
    theirs = diffusers_scheduler(variance_type, torch.float32).step(model_output(x32, k), k, x32,
                                                                    generator=gen(7)).prev_sample
    assert ours.dtype == torch.float32
    print(f"MEASURED float32 step k={k} {variance_type}: ours {float((ours.double() - ref).abs().max()):.1e}, "
          f"diffusers {float((theirs.double() - ref).abs().max()):.1e} from the float64 reference")
    torch.testing.assert_close(ours.double(), ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(theirs.double(), ref, rtol=0, atol=5e-4)


@pytest.mark.parametrize("dtype, tol", [(F64, 1e-10), (torch.float32, 1e-3)], ids=["f64", "f32"])
@pytest.mark.parametrize("variance_type, variance", VARIANCE_TYPES)
def test_full_trajectory_matches_diffusers(variance_type, variance, dtype, tol):
    """The whole 1000-step chain from the same x_T with the same noise sequence, state by state. In float32 the
    tolerance is diffusers' own float32 error near t = 0 (see the single-step test), not ours."""
    sched, process = diffusers_scheduler(variance_type, dtype), DDPM()
    sched.set_timesteps(T_DIFF)
    x_T = torch.randn(X_SHAPE, generator=gen(60), dtype=dtype)
    ours = {}
    sample(eps_model, process, x_T=x_T, generator=gen(61), variance=variance,
           callback=lambda k, t, x: ours.__setitem__(k, x.clone()))
    assert sorted(ours) == list(range(T_DIFF + 1))  # x_T, 999 ancestral steps, final x̂_0
    x, g, worst = x_T.clone(), gen(61), 0.0
    for step, k in enumerate(sched.timesteps.tolist(), start=1):  # k = 999 … 0
        x = sched.step(model_output(x, k), k, x, generator=g).prev_sample
        worst = max(worst, float((ours[step] - x).abs().max()))
    print(f"MEASURED diffusers trajectory {variance_type} {dtype}: max abs diff {worst:.2e}")
    assert worst <= tol


@pytest.mark.parametrize("beta_schedule, schedule", [("linear", "linear"), ("squaredcos_cap_v2", "cosine")])
def test_alphas_cumprod_match_diffusers(beta_schedule, schedule):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDPMScheduler(num_train_timesteps=T_DIFF, beta_schedule=beta_schedule)
    process = DDPM(T_DIFF, schedule)
    # diffusers keeps float32 tables: agreement to float32 accuracy (measured: ≤ 2e-6 relative)
    torch.testing.assert_close(sched.betas.double(), process.betas, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(sched.alphas_cumprod.double(), process.alpha_bars[1:], rtol=2e-5, atol=1e-9)


# ------------------------------------------------------------------------------------ 7. every step count


@pytest.mark.parametrize("T, steps", [(1000, s) for s in (1, 2, 3, 7, 13, 97, 999, 1000)]
                         + [(10, s) for s in range(1, 11)])
def test_every_ddpm_step_count_gives_a_valid_grid_and_sample(T, steps):
    process = DDPM(T)
    grid = time_grid(process, steps)
    idx = grid * T
    assert grid.dtype == F64 and len(grid) == steps and float(grid[0]) == 1.0
    torch.testing.assert_close(idx, idx.round(), rtol=0, atol=1e-9)  # on the integer grid i/T
    if steps == 1:
        assert grid.tolist() == [1.0]  # a single point is t_max; sample() then denoises from t = 1
    else:
        assert (grid[1:] < grid[:-1]).all() and float(grid[-1]) == pytest.approx(1 / T, abs=1e-15)
        # "uniform" = trailing spacing: each i is a rounding of linspace(T, 1, K) (either way at exact .5 ties,
        # e.g. 167.5 for K = 97); no moves were needed since the spacing (T − 1)/(K − 1) ≥ 1
        assert (idx - torch.linspace(T, 1, steps, dtype=F64)).abs().max() <= 0.5 + 1e-9
    x, nfe = sample(eps_model, process, steps=steps, shape=(3, 2), dtype=F64, generator=gen(70), return_nfe=True)
    assert torch.isfinite(x).all() and x.shape == (3, 2) and nfe == steps


def test_more_steps_than_the_chain_has_raise_user_error():
    with pytest.raises(UserError):
        time_grid(DDPM(), 1001)
    with pytest.raises(UserError):
        sample(eps_model, DDPM(10), steps=11, shape=(2, 2), dtype=F64)
