"""Training objectives: the weightings are what they claim, the time samplers are unbiased, and the ELBO loss
is an unbiased one-term estimate of the full −ELBO."""

import math

import pytest
import torch

import diffusionlab as dl
from diffusionlab.objectives import (DenoisingLoss, ELBOLoss, decoder_nll, diffusion_kl, eps_space_weight,
                                    explicit_score_matching, negative_elbo, prior_kl, sample_times)
from diffusionlab.parametrization import Denoiser, from_x0_eps, to_x0_eps

PROCESSES = [dl.DDPM(T=50), dl.VPSDE(), dl.SubVPSDE(), dl.VESDE()]


def linear_model(x, t):
    """A fixed, non-optimal predictor (depends on x and t) so that losses are not trivially zero."""
    return 0.3 * x + 0.1 * t.reshape(-1, *([1] * (x.ndim - 1))) - 0.05


@pytest.mark.parametrize("process", PROCESSES, ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("prediction", ["x0", "v", "score"])
def test_own_space_error_equals_weighted_eps_error(process, prediction):
    """‖pred − target‖² in the prediction's space = λ_pred(t)·‖ε̂ − ε‖², with λ from ``eps_space_weight``."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(64, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(64, 3, generator=g, dtype=torch.float64)
    t = process.t_min + (process.t_max - process.t_min) * torch.rand(64, generator=g, dtype=torch.float64)
    a, s = process.alpha(t), process.sigma(t)
    x_t = process.marginal(x0, t, eps)
    pred = torch.randn(64, 3, generator=g, dtype=torch.float64)
    _, eps_hat = to_x0_eps(pred, prediction, x_t, a, s)
    own = (pred - from_x0_eps(x0, eps, prediction, a, s)).pow(2).sum(1)
    lam = 1 / s**2 if prediction == "score" else eps_space_weight(process, t, prediction)
    torch.testing.assert_close(own, lam * (eps_hat - eps).pow(2).sum(1), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("process", [dl.VPSDE(), dl.SubVPSDE(), dl.VESDE()], ids=lambda p: type(p).__name__)
def test_likelihood_weighting_is_minus_half_dlogsnr(process):
    t = torch.linspace(0.05, 0.95, 7, dtype=torch.float64)
    h = 1e-6
    dlam = (process.log_snr(t + h) - process.log_snr(t - h)) / (2 * h)
    torch.testing.assert_close(eps_space_weight(process, t, "likelihood"), -0.5 * dlam, rtol=1e-6, atol=0)


@pytest.mark.parametrize("process", [dl.VPSDE(), dl.VESDE()], ids=lambda p: type(p).__name__)
def test_logsnr_importance_sampling_is_unbiased(process):
    """E_p[w(t) h(t)] = E_uniform[h(t)] for the λ-uniform proposal and its weights."""
    g = torch.Generator().manual_seed(1)
    h = lambda t: torch.cos(3 * t) + t**2  # noqa: E731
    t, w = sample_times(process, 100_000, g, "logsnr")
    assert bool(((t >= process.t_min - 1e-9) & (t <= process.t_max + 1e-9)).all())
    est = (w * h(t)).mean()
    u = torch.linspace(process.t_min, process.t_max, 200_001, dtype=torch.float64)
    exact = torch.trapezoid(h(u), u) / (process.t_max - process.t_min)
    se = (w * h(t)).std() / math.sqrt(len(t))
    assert abs(float(est - exact)) < 5 * float(se)


@pytest.mark.parametrize("process", [dl.VPSDE(), dl.SubVPSDE(), dl.VESDE(), dl.DDPM()], ids=lambda p: type(p).__name__)
def test_t_from_log_snr_inverts_log_snr(process):
    t = torch.linspace(process.t_min, process.t_max, 101, dtype=torch.float64)
    torch.testing.assert_close(process.t_from_log_snr(process.log_snr(t)), t, rtol=0, atol=1e-9)


@pytest.mark.parametrize("process", [dl.VPSDE(), dl.SubVPSDE(), dl.VESDE(), dl.DDPM()], ids=lambda p: type(p).__name__)
def test_t_from_log_snr_is_the_inverse_on_all_of_0_t_max_and_clamps_beyond(process):
    # below t_min too (t_min is where samplers stop, not where the process ends), and the same clamping for the
    # closed forms (VP, VE, DDPM) as for bisection (sub-VP): VP and VE used to extrapolate to t > 1 and t < 0
    t = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64) * process.t_min
    torch.testing.assert_close(process.t_from_log_snr(process.log_snr(t)), t, rtol=1e-9, atol=0)
    lam_end, lam_start = (float(v) for v in process.log_snr(torch.tensor([process.t_max, process.t_min / 4],
                                                                        dtype=torch.float64)))
    beyond = torch.tensor([lam_end - 20.0, lam_end - 1e-3, 1e3], dtype=torch.float64)
    assert lam_start < 1e3
    out = process.t_from_log_snr(beyond)
    assert out[0] == process.t_max and out[1] == process.t_max, out
    assert 0.0 <= float(out[2]) < process.t_min / 4, out


def test_uniform_time_sampling_on_ddpm_is_on_the_grid():
    g = torch.Generator().manual_seed(2)
    process = dl.DDPM(T=20)
    t, w = sample_times(process, 20_000, g)
    i = t * 20
    assert torch.allclose(i, i.round()) and int(i.min()) == 1 and int(i.max()) == 20
    assert bool((w == 1).all())
    counts = torch.bincount(i.round().long(), minlength=21)[1:].double()
    assert float((counts / 1000 - 1).abs().max()) < 0.2  # 1000 expected per step; 5 sd ≈ 0.16


def test_denoising_loss_eps_weighting_is_ho_simple_loss():
    """With eps prediction and eps weighting the loss is exactly the per-example MSE ‖ε − ε_θ(x_t, t)‖²/D."""
    process = dl.DDPM(T=100)
    x0 = torch.randn(32, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    loss = DenoisingLoss(process)(linear_model, x0, torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)  # replay the same draws: t first, then ε
    t, _ = sample_times(process, 32, g)
    eps = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    expected = (eps - linear_model(process.marginal(x0, t, eps), t)).pow(2).mean(1)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)


def _alpha_sigma_derivatives(process, t, rel=1e-5):
    """α, σ and central differences of log α and log σ² at t (float64, step ±rel·t: σ² ∝ t near t = 0 on VP,
    so the step must shrink with t): no formula of the library."""
    h = rel * t
    lo, hi = t - h, t + h
    dlog_a = (process.alpha(hi).log() - process.alpha(lo).log()) / (2 * h)
    dlog_s2 = (process.sigma(hi).pow(2).log() - process.sigma(lo).pow(2).log()) / (2 * h)
    return process.alpha(t), process.sigma(t), dlog_a, dlog_s2


@pytest.mark.parametrize("process", [dl.VPSDE(), dl.VESDE(), dl.SubVPSDE()], ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("time_sampling", ["uniform", "logsnr"])
@pytest.mark.parametrize("weighting", ["eps", "x0", "v", "likelihood"])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "score"])
def test_denoising_loss_combines_prediction_weighting_and_time_sampling(process, prediction, weighting,
                                                                        time_sampling):
    """The whole loss, per example: w(t)·λ(t)·‖ε̂ − ε‖²/D, everything rebuilt here from what the model saw.

    The model records its (x_t, t); ε = (x_t − α x₀)/σ, and its raw output is turned into ε̂ by inverting
    x_t = α x₀ + σ ε (x₀: ε̂ = (x_t − α x̂₀)/σ; v = α ε − σ x₀: ε̂ = (σ x_t + α v̂)/(α² + σ²); score: ε̂ = −σ ŝ).
    λ: 1, σ²/α², ((α² + σ²)/α)², or ½ g²/σ² with g² = dσ²/dt − 2 (d log α/dt) σ²; w = 1 for uniform t and, for
    t drawn uniformly in λ = log(α²/σ²), w = u(t)/p(t) = Δλ / ((t_max − t_min)·|dλ/dt|), both derivatives by
    central differences."""
    seen = {}

    def model(x, t):
        seen["x"], seen["t"] = x, t
        return torch.tanh(x) * (1 + t[:, None]) - 0.2

    x0 = torch.randn(64, 3, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    loss = DenoisingLoss(process, prediction, weighting, time_sampling)(model, x0, torch.Generator().manual_seed(9))
    x_t, t = seen["x"], seen["t"]
    a, s, dlog_a, dlog_s2 = _alpha_sigma_derivatives(process, t)
    a_, s_ = a[:, None], s[:, None]
    eps = (x_t - a_ * x0) / s_
    out = model(x_t, t)
    eps_hat = {"eps": out, "x0": (x_t - a_ * out) / s_, "v": (s_ * x_t + a_ * out) / (a_**2 + s_**2),
               "score": -s_ * out}[prediction]
    g2 = s**2 * dlog_s2 - 2 * dlog_a * s**2
    lam = {"eps": torch.ones_like(t), "x0": s**2 / a**2, "v": ((a**2 + s**2) / a) ** 2,
           "likelihood": 0.5 * g2 / s**2}[weighting]
    if time_sampling == "uniform":
        w = torch.ones_like(t)
    else:
        ends = torch.tensor([process.t_min, process.t_max], dtype=torch.float64)
        log_snr = lambda u: (process.alpha(u) ** 2 / process.sigma(u) ** 2).log()  # noqa: E731
        span = float(log_snr(ends[:1]) - log_snr(ends[1:]))
        dlam = 2 * dlog_a - dlog_s2
        w = span / ((process.t_max - process.t_min) * dlam.abs())
    expected = w * lam * (eps_hat - eps).pow(2).mean(1)
    torch.testing.assert_close(loss, expected, rtol=1e-8, atol=0)


def test_elbo_loss_is_unbiased_for_the_full_negative_elbo():
    """E_i[ELBOLoss] (one random term, weighted by T) = the full −ELBO per dimension."""
    process = dl.DDPM(T=10, beta_start=0.05, beta_end=0.5)
    x0 = torch.tensor([[0.3, -0.7]], dtype=torch.float64).repeat(20_000, 1)
    loss = ELBOLoss(process, "eps")(linear_model, x0, torch.Generator().manual_seed(5))
    full = negative_elbo(Denoiser(linear_model, process, "eps"), x0[:2000],
                         generator=torch.Generator().manual_seed(6)) / 2
    se = loss.std() / math.sqrt(len(loss)) + full.std() / math.sqrt(len(full))
    assert abs(float(loss.mean() - full.mean())) < 5 * float(se)


def test_elbo_importance_sampling_stays_unbiased():
    """After the loss history fills, t is drawn ∝ sqrt(E[L_t²]) and reweighted: the mean is unchanged."""
    process = dl.DDPM(T=10, beta_start=0.05, beta_end=0.5)
    x0 = torch.tensor([[0.3, -0.7]], dtype=torch.float64)
    loss_fn = ELBOLoss(process, "eps", time_sampling="importance")
    g = torch.Generator().manual_seed(7)
    for _ in range(30):  # fill the history of every term
        loss_fn(linear_model, x0.repeat(64, 1), g)
    probs = loss_fn._probabilities()
    assert float(probs.max() / probs.min()) > 1.5  # really non-uniform now
    loss = loss_fn(linear_model, x0.repeat(20_000, 1), g)
    full = negative_elbo(Denoiser(linear_model, process, "eps"), x0.repeat(2000, 1), generator=g) / 2
    se = loss.std() / math.sqrt(len(loss)) + full.std() / math.sqrt(len(full))
    assert abs(float(loss.mean() - full.mean())) < 5 * float(se)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_elbo_loss_gradients_are_finite_when_the_decoder_term_is_drawn(dtype):
    """A batch that draws i = 1 (the decoder L_0) next to KL terms: the loss and its gradient are finite. (The KL at
    i = 1 has σ̃² = 0; computing it for every example and masking with torch.where gave NaN gradients.)"""
    process = dl.DDPM(T=10, beta_start=0.05, beta_end=0.5)
    torch.manual_seed(3)  # the net's initialisation, independent of the tests run before in this process
    net = torch.nn.Linear(3, 2).to(dtype)
    model = lambda x, t: net(torch.cat([x, t[:, None].to(x.dtype)], 1))  # noqa: E731
    x0 = torch.randn(200, 2, dtype=dtype, generator=torch.Generator().manual_seed(8))
    loss_fn = ELBOLoss(process, "eps")
    calls = []
    counted = lambda x, t: calls.append(len(x)) or model(x, t)  # noqa: E731
    loss = loss_fn(counted, x0, torch.Generator().manual_seed(9))
    assert int(loss_fn._count[0]) > 0 and int(loss_fn._count[1:].sum()) > 0  # both kinds of term were drawn
    assert calls == [200]  # one model call on the whole batch (DDP sees one forward per step)
    loss.mean().backward()
    assert torch.isfinite(loss).all() and loss.dtype == dtype
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())
    # the same loss as calling the model on each part: the decoder for i = 1, a KL otherwise (uniform i at first)
    u = torch.rand(200, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    i = torch.searchsorted(torch.cumsum(torch.full((10,), 0.1, dtype=torch.float64), 0), u).clamp(max=9) + 1
    t = i.double() / 10  # float64 times, as the loss makes them
    g = torch.Generator().manual_seed(9)
    torch.rand(200, generator=g, dtype=torch.float64)  # the draw of i, then the noise, as the loss does
    x_t = process.marginal(x0, t, torch.randn(x0.shape, generator=g, dtype=dtype))
    den = Denoiser(model, process, "eps")
    first = i == 1
    term = torch.zeros(200, dtype=dtype)
    term[first] = decoder_nll(den, x0[first], x_t[first], t[first])
    term[~first] = diffusion_kl(den, x0[~first], x_t[~first], t[~first] - 0.1, t[~first])
    expected = (prior_kl(process, x0) + 10 * term) / 2
    torch.testing.assert_close(loss.detach(), expected.detach(), rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=0)


@pytest.mark.parametrize("t", [0.05, 0.3, 0.8])
def test_explicit_and_denoising_score_matching_differ_by_a_constant(t):
    """Vincent 2011 (lecture §7): E‖s_θ − ∇log p_t(x_t)‖² = E‖s_θ − ∇log p_t(x_t|x_0)‖² + C with C independent of
    θ. Data N(m, v₀ I) in 3-D on VP, so p_t = N(α m, v_t I), v_t = α² v₀ + σ², and the identity gives
    C = E‖∇log p_t‖² − E‖∇log p_t(x_t|x_0)‖² = d (1/v_t − 1/σ²). For two different models, ideal − denoising
    (the library's explicit_score_matching minus σ⁻²‖ε − ε̂‖², from the same (x_0, ε)) must equal C within 5 SE,
    while the two models' ideal losses differ by far more than that."""
    process, n, d, m, v0 = dl.VPSDE(), 200_000, 3, 0.7, 0.4
    g = torch.Generator().manual_seed(11)
    x0 = m + v0**0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)
    eps = torch.randn(n, d, generator=g, dtype=torch.float64)
    tt = torch.full((n,), t, dtype=torch.float64)
    a, s = float(process.alpha(tt[0])), float(process.sigma(tt[0]))
    x_t = a * x0 + s * eps
    v_t = a**2 * v0 + s**2
    true_score = lambda x, _t: -(x - a * m) / v_t  # noqa: E731
    constant = d * (1 / v_t - 1 / s**2)
    ideal_means = []
    for model in (linear_model, lambda x, t_: -0.2 * x + 0.4):
        denoiser = Denoiser(model, process, "eps")
        ideal = explicit_score_matching(denoiser, true_score, x_t, tt)
        denoising = (denoiser.score(x_t, tt) + eps / s).pow(2).sum(1)  # ∇log p_t(x_t|x_0) = −ε/σ
        diff = ideal - denoising
        se = float(diff.std()) / math.sqrt(n)
        assert abs(float(diff.mean()) - constant) <= 5 * se, (float(diff.mean()), constant, se)
        ideal_means.append((float(ideal.mean()), float(ideal.std()) / math.sqrt(n)))
    (i1, se1), (i2, se2) = ideal_means
    assert abs(i1 - i2) > 50 * (se1 + se2)


def test_bad_names_are_user_errors():
    with pytest.raises(dl.UserError):
        DenoisingLoss(dl.DDPM(), weighting="snr2")
    with pytest.raises(dl.UserError):
        DenoisingLoss(dl.DDPM(), time_sampling="cosine")
    with pytest.raises(dl.UserError):
        ELBOLoss(dl.VPSDE())
    with pytest.raises(dl.UserError):
        DenoisingLoss(dl.DDPM(), prediction="noise")
