"""Tests for diffusionlab.data.mixture: exact log-density, score, noised mixtures and the optimal ε predictor.

All math in float64. Monte Carlo checks use tolerances of several standard errors, with fixed seeds.
"""

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp, softmax
from scipy.stats import multivariate_normal

from diffusionlab.data import GaussianMixture, eps_predictor
from diffusionlab.errors import UserError

F64 = torch.float64


def assert_close(actual, expected, rtol=1e-7, atol=1e-7):
    """Like torch.testing.assert_close (same float64 defaults), without its seconds-long first-call import."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, (actual.shape, expected.shape)
    error = (actual - expected).abs().max().item()
    assert torch.allclose(actual, expected, rtol=rtol, atol=atol), f"max abs error {error:.3g}"


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def anisotropic(dim=16, k=4, seed=0):
    return GaussianMixture.random_anisotropic(dim=dim, k=k, generator=gen(seed))


def vp_alpha(t):
    return torch.cos(0.5 * math.pi * t)


def vp_sigma(t):
    return torch.sin(0.5 * math.pi * t)


def probe_points(mixture, n=64, seed=1):
    """Samples, points between components, and points far out (where naive exp() would underflow)."""
    g = gen(seed)
    samples, _ = mixture.sample(n, g)
    spread = 3.0 * torch.randn(n, mixture.dim, generator=g, dtype=F64)
    far = 50.0 * torch.randn(4, mixture.dim, generator=g, dtype=F64)
    return torch.cat([samples, spread, far])


def scipy_log_prob(mixture, x):
    terms = [
        np.log(w) + multivariate_normal(mu, cov).logpdf(x)
        for w, mu, cov in zip(mixture.weights.numpy(), mixture.means.numpy(), mixture.covariances.numpy())
    ]
    return logsumexp(np.stack(terms, axis=1), axis=1)


def unequal_mixture():
    """Components of very different sizes, so the log-determinant terms shape the responsibilities."""
    covariances = torch.stack([
        torch.tensor([[0.05, 0.0], [0.0, 0.05]]),
        torch.tensor([[2.0, 1.2], [1.2, 1.0]]),
        torch.tensor([[0.3, -0.1], [-0.1, 4.0]]),
    ])
    means = torch.tensor([[0.0, 0.0], [0.5, 0.3], [-1.0, 2.0]])
    return GaussianMixture(torch.tensor([0.2, 0.5, 0.3]), means, covariances)


MIXTURES = {
    "ring": lambda: GaussianMixture.ring(),
    "unequal": unequal_mixture,
    "anisotropic16": lambda: anisotropic(),
    "noised": lambda: anisotropic(dim=5, k=3, seed=2).noised(0.8, 0.3),
}


# --- density -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MIXTURES)
def test_log_prob_matches_scipy(name):
    mixture = MIXTURES[name]()
    x = probe_points(mixture)
    np.testing.assert_allclose(mixture.log_prob(x).numpy(), scipy_log_prob(mixture, x.numpy()), rtol=1e-10, atol=1e-9)


def test_log_prob_integrates_to_one_in_2d():
    mixture = anisotropic(dim=2, k=3, seed=3)
    # Means ~ N(0, 1) and variances <= 1: [-8, 8]² holds all the mass. The midpoint rule on a Gaussian of
    # std s with step h errs by about exp(-2π² s² / h²): negligible for s >= 0.1 and h = 0.04.
    step = 0.04
    axis = torch.arange(-8.0, 8.0, step, dtype=F64) + step / 2
    grid = torch.cartesian_prod(axis, axis)
    total = torch.exp(mixture.log_prob(grid)).sum() * step**2
    assert abs(total.item() - 1.0) < 1e-6


def test_log_prob_keeps_leading_shape():
    mixture = GaussianMixture.ring()
    x = torch.randn(3, 5, 2, generator=gen(), dtype=F64)
    assert mixture.log_prob(x).shape == (3, 5)
    assert_close(mixture.log_prob(x).reshape(-1), mixture.log_prob(x.reshape(-1, 2)))


def test_posterior_weights_are_bayes_responsibilities():
    mixture = anisotropic(dim=3, k=4, seed=4)
    x = probe_points(mixture)
    r = mixture.posterior_weights(x)
    log_terms = np.stack(
        [np.log(w) + multivariate_normal(mu, c).logpdf(x.numpy()) for w, mu, c in
         zip(mixture.weights.numpy(), mixture.means.numpy(), mixture.covariances.numpy())],
        axis=1,
    )
    np.testing.assert_allclose(r.numpy(), softmax(log_terms, axis=1), rtol=1e-9, atol=1e-12)
    assert_close(r.sum(dim=1), torch.ones(len(x), dtype=F64))


def test_posterior_weights_at_ring_centres_pick_their_component():
    mixture = GaussianMixture.ring(k=8, radius=2.0, std=0.1)
    r = mixture.posterior_weights(mixture.means)
    assert torch.equal(r.argmax(dim=1), torch.arange(8))
    assert (r.diagonal() > 1 - 1e-12).all()


# --- score ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MIXTURES)
def test_score_equals_autograd_of_log_prob(name):
    mixture = MIXTURES[name]()
    x = probe_points(mixture).requires_grad_(True)
    (autograd_score,) = torch.autograd.grad(mixture.log_prob(x).sum(), x)
    score = mixture.score(x.detach())
    assert torch.isfinite(score).all()
    assert_close(score, autograd_score, rtol=1e-9, atol=1e-9)


def test_score_of_single_gaussian_is_linear():
    cov = torch.tensor([[2.0, 0.6], [0.6, 0.5]], dtype=F64)
    mu = torch.tensor([1.0, -1.0], dtype=F64)
    gaussian = GaussianMixture(torch.ones(1), mu[None], cov[None])
    x = torch.randn(10, 2, generator=gen(), dtype=F64)
    assert_close(gaussian.score(x), -(x - mu) @ torch.linalg.inv(cov))


# --- sampling and noising ------------------------------------------------------------------------------


def assert_moments_match(x, mean, cov, n_sigma=5.0):
    """Empirical mean/cov of x within n_sigma standard errors of (mean, cov)."""
    n = len(x)
    var = torch.diagonal(cov)
    mean_tol = n_sigma * torch.sqrt(var / n)
    assert ((x.mean(dim=0) - mean).abs() < mean_tol).all()
    cov_tol = n_sigma * torch.sqrt((torch.outer(var, var) + cov**2) / n) * 2  # x2: mixtures have heavy-ish tails
    assert ((torch.cov(x.T) - cov).abs() < cov_tol).all()


def test_sample_frequencies_and_moments():
    mixture = anisotropic(dim=3, k=3, seed=5)
    n = 100_000
    x, components = mixture.sample(n, gen(6))
    assert x.shape == (n, 3) and x.dtype == F64 and components.shape == (n,)
    frequencies = torch.bincount(components, minlength=3).to(F64) / n
    w = mixture.weights
    assert ((frequencies - w).abs() < 5 * torch.sqrt(w * (1 - w) / n)).all()
    for k in range(3):
        chosen = x[components == k]
        assert_moments_match(chosen, mixture.means[k], mixture.covariances[k])
    assert_moments_match(x, mixture.mean(), mixture.covariance())


def test_sample_is_reproducible_from_generator():
    mixture = GaussianMixture.ring()
    a, ka = mixture.sample(100, gen(7))
    b, kb = mixture.sample(100, gen(7))
    c, _ = mixture.sample(100, gen(8))
    assert torch.equal(a, b) and torch.equal(ka, kb) and not torch.equal(a, c)


@pytest.mark.parametrize("alpha, sigma", [(0.6, 0.8), (1.0, 0.0), (0.0, 1.0), (torch.tensor(0.3), torch.tensor(2.0))])
def test_noised_matches_monte_carlo(alpha, sigma):
    mixture = anisotropic(dim=4, k=3, seed=9)
    n = 50_000
    x0, _ = mixture.sample(n, gen(10))
    xt = alpha * x0 + sigma * torch.randn(n, 4, generator=gen(11), dtype=F64)
    noised = mixture.noised(alpha, sigma)
    assert_moments_match(xt, noised.mean(), noised.covariance())
    assert_close(noised.weights, mixture.weights)


def test_noised_parameters():
    mixture = anisotropic(dim=3, k=2, seed=12)
    noised = mixture.noised(0.5, 2.0)
    assert_close(noised.means, 0.5 * mixture.means)
    assert_close(noised.covariances, 0.25 * mixture.covariances + 4.0 * torch.eye(3, dtype=F64))


def test_standardized_is_change_of_variables():
    mixture = anisotropic(dim=3, k=2, seed=13)
    shift = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    scale = torch.tensor([2.0, 0.5, 3.0], dtype=F64)
    standardized = mixture.standardized(shift, scale)
    y = torch.randn(20, 3, generator=gen(), dtype=F64)
    # y = (x - shift) / scale  =>  log p_y(y) = log p_x(shift + scale y) + Σ log scale
    expected = mixture.log_prob(shift + scale * y) + torch.log(scale).sum()
    assert_close(standardized.log_prob(y), expected)


# --- per-sample noised score and the ε predictor -------------------------------------------------------


def test_noised_score_with_scalars_equals_noised_mixture_score():
    mixture = anisotropic()
    x = probe_points(mixture)
    assert_close(mixture.noised_score(x, 0.7, 0.4), mixture.noised(0.7, 0.4).score(x), rtol=1e-9, atol=1e-9)
    assert_close(mixture.noised_score(x, 1.0, 0.0), mixture.score(x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", MIXTURES)
def test_noised_score_per_sample_equals_loop(name):
    mixture = MIXTURES[name]()
    x = probe_points(mixture, n=6)  # samples, spread-out and far-away points
    n = len(x)
    alpha = torch.linspace(0.05, 1.0, n, dtype=F64)
    sigma = torch.linspace(1.0, 0.01, n, dtype=F64)
    expected = torch.stack([mixture.noised(a, s).score(xi[None])[0] for xi, a, s in zip(x, alpha, sigma)])
    assert_close(mixture.noised_score(x, alpha, sigma), expected, rtol=1e-9, atol=1e-9)


def test_noised_score_rejects_zero_noise_and_zero_signal():
    with pytest.raises(UserError):
        GaussianMixture.ring().noised_score(torch.zeros(2, 2, dtype=F64), 0.0, 0.0)


@pytest.mark.parametrize("per_sample", [False, True])
def test_eps_predictor_equals_minus_sigma_noised_score(per_sample):
    mixture = anisotropic(dim=4, k=3, seed=15)
    model = eps_predictor(mixture, vp_alpha, vp_sigma)
    n = 16
    t = torch.rand(n, generator=gen(16), dtype=F64) if per_sample else torch.full((n,), 0.4, dtype=F64)
    alpha, sigma = vp_alpha(t), vp_sigma(t)
    eps = torch.randn(n, 4, generator=gen(18), dtype=F64)
    x = alpha[:, None] * mixture.sample(n, gen(17))[0] + sigma[:, None] * eps
    expected = torch.stack(
        [-s * mixture.noised(a, s).score(xi[None])[0] for xi, a, s in zip(x, alpha, sigma)]
    )
    assert_close(model(x, t), expected, rtol=1e-9, atol=1e-9)


def test_eps_predictor_accepts_scalar_t_images_and_keeps_dtype():
    mixture = anisotropic(dim=4, k=2, seed=19)
    model = eps_predictor(mixture, vp_alpha, vp_sigma)
    x = torch.randn(5, 1, 2, 2, generator=gen(), dtype=torch.float32)
    out = model(x, 0.3)
    assert out.shape == x.shape and out.dtype == torch.float32
    t = torch.tensor(0.3, dtype=F64)
    expected = -vp_sigma(t) * mixture.noised(vp_alpha(t), vp_sigma(t)).score(x.reshape(5, 4).double())
    assert_close(out, expected.reshape(x.shape).float(), rtol=1e-6, atol=1e-6)


def test_eps_predictor_rejects_wrong_number_of_times():
    model = eps_predictor(GaussianMixture.ring(), vp_alpha, vp_sigma)
    with pytest.raises(UserError):
        model(torch.zeros(4, 2, dtype=F64), torch.zeros(3, dtype=F64))


def test_eps_predictor_pure_noise_limit_returns_input():
    # α = 0, σ = 1: x_t = ε exactly, so E[ε | x_t] = x_t.
    model = eps_predictor(anisotropic(dim=3, k=2), lambda t: torch.zeros_like(t), lambda t: torch.ones_like(t))
    x = torch.randn(8, 3, generator=gen(), dtype=F64)
    assert_close(model(x, torch.ones(8, dtype=F64)), x)


def test_eps_predictor_minimises_denoising_error():
    # E[ε | x_t] minimises E|ε - f(x_t)|²; rescaling it by 0.8 or 1.2 must be measurably worse, which also
    # pins the sign and the σ factor of ε̂ = -σ ∇ log p_t.
    mixture = GaussianMixture.ring()
    model = eps_predictor(mixture, vp_alpha, vp_sigma)
    n = 20_000
    t = torch.rand(n, generator=gen(20), dtype=F64) * 0.9 + 0.05
    eps = torch.randn(n, 2, generator=gen(21), dtype=F64)
    xt = vp_alpha(t)[:, None] * mixture.sample(n, gen(22))[0] + vp_sigma(t)[:, None] * eps
    eps_hat = model(xt, t)

    def loss(pred):
        return ((eps - pred) ** 2).sum(dim=1).mean().item()

    best = loss(eps_hat)
    assert best < loss(0.8 * eps_hat) - 0.01 and best < loss(1.2 * eps_hat) - 0.01
    assert best < loss(torch.zeros_like(eps_hat)) - 0.1


# --- constructors and validation -----------------------------------------------------------------------


def test_ring_geometry():
    mixture = GaussianMixture.ring(k=6, radius=3.0, std=0.2)
    assert_close(mixture.means.norm(dim=1), torch.full((6,), 3.0, dtype=F64))
    assert_close(mixture.weights, torch.full((6,), 1 / 6, dtype=F64))
    assert_close(mixture.covariances, 0.04 * torch.eye(2, dtype=F64).expand(6, 2, 2))


def test_random_anisotropic_spectrum_and_reproducibility():
    mixture = anisotropic(dim=16, k=4, seed=23)
    eigenvalues = torch.linalg.eigvalsh(mixture.covariances)
    assert_close(eigenvalues[:, 0], torch.full((4,), 0.01, dtype=F64))
    assert_close(eigenvalues[:, -1], torch.full((4,), 1.0, dtype=F64))
    # Different spectra, hence different determinants, in each component.
    log_dets = torch.logdet(mixture.covariances)
    assert (log_dets.max() - log_dets.min()) > 0.5
    # Rotated: the covariances are not diagonal.
    off_diagonal = mixture.covariances - torch.diag_embed(torch.diagonal(mixture.covariances, dim1=1, dim2=2))
    assert off_diagonal.abs().max() > 0.05
    assert torch.equal(anisotropic(seed=23).covariances, mixture.covariances)
    assert not torch.equal(anisotropic(seed=24).means, mixture.means)


@pytest.mark.parametrize(
    "weights, means, covariances",
    [
        (torch.ones(2), torch.zeros(2, 2), torch.eye(2).expand(3, 2, 2)),  # K mismatch
        (torch.ones(3), torch.zeros(2, 2), torch.eye(2).expand(2, 2, 2)),  # weights mismatch
        (torch.ones(1), torch.zeros(1, 2), -torch.eye(2)[None]),  # not positive definite
        (torch.ones(1), torch.zeros(1, 2), torch.tensor([[[1.0, 0.5], [0.0, 1.0]]])),  # not symmetric
        (-torch.ones(1), torch.zeros(1, 2), torch.eye(2)[None]),  # negative weight
    ],
)
def test_invalid_mixture_raises_user_error(weights, means, covariances):
    with pytest.raises(UserError) as info:
        GaussianMixture(weights, means, covariances)
    assert "\n" not in str(info.value)


def test_points_of_wrong_dimension_raise_user_error():
    with pytest.raises(UserError):
        GaussianMixture.ring().log_prob(torch.zeros(4, 3, dtype=F64))


@pytest.mark.parametrize("make", [
    lambda: GaussianMixture.ring(k=0),
    lambda: GaussianMixture(torch.ones(1), torch.tensor([[float("nan"), 0.0]]), torch.eye(2)[None]),
    lambda: GaussianMixture(torch.ones(1), torch.zeros(1, 2), torch.eye(2)[None] * float("inf")),
    lambda: GaussianMixture(torch.ones(0), torch.zeros(0, 2), torch.zeros(0, 2, 2)),
])
def test_a_mixture_with_bad_parameters_is_refused(make):
    with pytest.raises(UserError):
        make()
