"""What a network predicts (ε, x₀, v, score) and the conversions between them, for every process.

With x_t = α x₀ + σ ε: ε = (x_t − α x₀)/σ, x₀ = (x_t − σ ε)/α, v = α ε − σ x₀ (Salimans & Ho 2022),
score = −ε/σ. All checks are float64 identities; tolerances are round-off bounds stated next to them.
"""

from __future__ import annotations

import pytest
import torch

import diffusionlab as dl
from diffusionlab.data import GaussianMixture, eps_predictor
from diffusionlab.errors import UserError

F64 = torch.float64
PROCESSES = {"vp": dl.VPSDE, "subvp": dl.SubVPSDE, "ve": dl.VESDE, "ddpm": dl.DDPM}
SHAPES = [(64, 2), (16, 3, 4, 4)]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_times(process, n: int, seed: int) -> torch.Tensor:
    """n times in [t_min, t_max], both ends included (where α or σ is smallest); DDPM: on its grid."""
    u = torch.rand(n, generator=gen(seed), dtype=F64)
    u[0], u[1] = 0.0, 1.0
    t = process.t_min + (process.t_max - process.t_min) * u
    return process.snap(t)


def bc(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return a.reshape(-1, *([1] * (x.ndim - 1)))


def setup(name, shape, seed=0):
    process = PROCESSES[name]()
    x0 = torch.randn(shape, generator=gen(seed + 1), dtype=F64)
    eps = torch.randn(shape, generator=gen(seed + 2), dtype=F64)
    t = random_times(process, shape[0], seed + 3)
    alpha, sigma = process.alpha(t), process.sigma(t)
    x_t = process.marginal(x0, t, eps)
    return process, x0, eps, t, alpha, sigma, x_t


# Round-off bound: each conversion divides by α or σ, at worst 1/α(1) ≈ 160 (VP, sub-VP, DDPM) or
# 1/σ(t_min) = 1e4 (sub-VP: σ = 1 − α² ≈ 1e-4 at t_min), applied to |x_t| ≤ ~5 (VE: ≤ ~250 with σ ≤ 50 and
# 1/σ ≤ 100); so errors stay below ~5e4 ulp ≈ 1e-11. Bound 1e-9.
ATOL = 1e-9


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("prediction", dl.PREDICTIONS)
@pytest.mark.parametrize("name", list(PROCESSES))
def test_round_trip_to_x0_eps_of_from_x0_eps(name, prediction, shape):
    process, x0, eps, t, alpha, sigma, x_t = setup(name, shape)
    pred = dl.from_x0_eps(x0, eps, prediction, alpha, sigma)
    assert pred.shape == x0.shape and pred.dtype == F64
    x0_hat, eps_hat = dl.to_x0_eps(pred, prediction, x_t, alpha, sigma)
    torch.testing.assert_close(x0_hat, x0, rtol=0, atol=ATOL)
    torch.testing.assert_close(eps_hat, eps, rtol=0, atol=ATOL)


@pytest.mark.parametrize("name", list(PROCESSES))
def test_from_x0_eps_is_the_published_definition(name):
    process, x0, eps, t, alpha, sigma, x_t = setup(name, SHAPES[1], seed=10)
    a, s = bc(alpha, x0), bc(sigma, x0)
    torch.testing.assert_close(dl.from_x0_eps(x0, eps, "eps", alpha, sigma), eps, rtol=0, atol=0)
    torch.testing.assert_close(dl.from_x0_eps(x0, eps, "x0", alpha, sigma), x0, rtol=0, atol=0)
    torch.testing.assert_close(dl.from_x0_eps(x0, eps, "v", alpha, sigma), a * eps - s * x0, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(dl.from_x0_eps(x0, eps, "score", alpha, sigma), -eps / s, rtol=1e-14, atol=0)
    # The score target is the conditional score ∇ log q(x_t | x₀) = −(x_t − α x₀)/σ² (Vincent 2011).
    torch.testing.assert_close(dl.from_x0_eps(x0, eps, "score", alpha, sigma), -(x_t - a * x0) / s**2,
                               rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("prediction", dl.PREDICTIONS)
@pytest.mark.parametrize("name", list(PROCESSES))
def test_to_x0_eps_returns_a_consistent_pair_for_any_output(name, prediction):
    """Whatever the network outputs (here: noise), the returned (x̂₀, ε̂) satisfy x_t = α x̂₀ + σ ε̂; the
    predicted quantity itself is passed through unchanged."""
    process, _, _, t, alpha, sigma, x_t = setup(name, SHAPES[0], seed=20)
    pred = 3 * torch.randn(x_t.shape, generator=gen(99), dtype=F64)
    x0_hat, eps_hat = dl.to_x0_eps(pred, prediction, x_t, alpha, sigma)
    a, s = bc(alpha, x_t), bc(sigma, x_t)
    # x̂₀ can be as large as |pred|·σ/α ≈ 3·50 (VE) or |x_t|/α ≈ 600 (VP at t = 1): round-off ~1e-13 there.
    torch.testing.assert_close(a * x0_hat + s * eps_hat, x_t, rtol=0, atol=ATOL)
    if prediction == "eps":
        assert torch.equal(eps_hat, pred)
    if prediction == "x0":
        assert torch.equal(x0_hat, pred)
    if prediction == "score":
        torch.testing.assert_close(-eps_hat / s, pred, rtol=1e-14, atol=0)
    if prediction == "v":
        torch.testing.assert_close(dl.from_x0_eps(x0_hat, eps_hat, "v", alpha, sigma), pred, rtol=0, atol=ATOL)


def test_scalar_alpha_sigma_broadcast():
    """0-d α, σ (one time for the whole batch) give the same conversions as per-sample ones."""
    x0 = torch.randn(8, 3, 2, generator=gen(1), dtype=F64)
    eps = torch.randn(8, 3, 2, generator=gen(2), dtype=F64)
    alpha, sigma = torch.tensor(0.6, dtype=F64), torch.tensor(0.8, dtype=F64)
    x_t = alpha * x0 + sigma * eps
    for prediction in dl.PREDICTIONS:
        pred = dl.from_x0_eps(x0, eps, prediction, alpha, sigma)
        pred_vec = dl.from_x0_eps(x0, eps, prediction, alpha.expand(8), sigma.expand(8))
        torch.testing.assert_close(pred, pred_vec, rtol=0, atol=0)
        x0_hat, eps_hat = dl.to_x0_eps(pred, prediction, x_t, alpha, sigma)
        torch.testing.assert_close(x0_hat, x0, rtol=0, atol=1e-13)
        torch.testing.assert_close(eps_hat, eps, rtol=0, atol=1e-13)


def test_unknown_prediction_is_a_user_error():
    x = torch.zeros(2, 2, dtype=F64)
    one = torch.ones(2, dtype=F64)
    with pytest.raises(UserError):
        dl.from_x0_eps(x, x, "noise", one, one)
    with pytest.raises(UserError):
        dl.to_x0_eps(x, "noise", x, one, one)
    with pytest.raises(UserError):
        dl.Denoiser(lambda x, t: x, dl.VPSDE(), "noise")


# ------------------------------------------------------------------------------------------------ Denoiser


@pytest.mark.parametrize("prediction", dl.PREDICTIONS)
@pytest.mark.parametrize("name", list(PROCESSES))
def test_denoiser_recovers_x0_eps_and_score(name, prediction):
    """A model that outputs the exact target of kind ``prediction`` for (x₀, ε): the Denoiser returns x₀ and ε,
    and its score is −ε/σ(t), whatever the parametrisation."""
    process, x0, eps, t, alpha, sigma, x_t = setup(name, SHAPES[1], seed=30)
    seen = []

    def model(x, tm):
        seen.append(tm)
        assert torch.equal(x, x_t)
        return dl.from_x0_eps(x0, eps, prediction, process.alpha(tm), process.sigma(tm))

    denoiser = dl.Denoiser(model, process, prediction)
    out = denoiser(x_t, t)
    torch.testing.assert_close(out.x0, x0, rtol=0, atol=ATOL)
    torch.testing.assert_close(out.eps, eps, rtol=0, atol=ATOL)
    score = denoiser.score(x_t, t)
    torch.testing.assert_close(score, -eps / bc(sigma, eps), rtol=1e-9, atol=ATOL)
    assert denoiser.nfe == 2
    assert all(tm.shape == (x_t.shape[0],) and tm.dtype == F64 for tm in seen)


@pytest.mark.parametrize("name", list(PROCESSES))
def test_denoiser_score_of_the_exact_eps_predictor_is_the_mixture_score(name):
    """For the optimal ε̂ = E[ε | x_t] of a Gaussian mixture, −ε̂/σ is ∇ log p_t (Tweedie): compare with the
    noised mixture's own closed-form score, at a scalar time given as a float, a 0-d and a (n,) tensor."""
    process = PROCESSES[name]()
    mixture = GaussianMixture.ring()
    denoiser = dl.Denoiser(eps_predictor(mixture, process.alpha, process.sigma), process, "eps")
    t_value = 0.37  # also a DDPM grid time (370/1000)
    t = torch.tensor(t_value, dtype=F64)
    noised = mixture.noised(process.alpha(t), process.sigma(t))
    x = noised.sample(50, gen(5))[0]
    expected = noised.score(x)
    for t_arg in (t_value, t, t.expand(50)):
        torch.testing.assert_close(denoiser.score(x, t_arg), expected, rtol=1e-9, atol=1e-9)
    # ... and x̂₀ is Tweedie's E[x₀ | x_t] = (x_t + σ² ∇log p_t)/α.
    a, s = process.alpha(t), process.sigma(t)
    torch.testing.assert_close(denoiser(x, t).x0, (x + s**2 * expected) / a, rtol=1e-9, atol=1e-9)


def test_denoiser_rejects_a_wrong_output_shape():
    denoiser = dl.Denoiser(lambda x, t: x[:, :1], dl.VPSDE(), "eps")
    with pytest.raises(UserError):
        denoiser(torch.zeros(4, 2, dtype=F64), 0.5)


def test_v_prediction_on_vp_is_the_rotation_of_salimans_and_ho():
    """On VP (α² + σ² = 1) with α = cos φ, σ = sin φ: v = cos φ ε − sin φ x₀ and x₀ = cos φ x_t − sin φ v."""
    process = dl.VPSDE()
    t = torch.tensor([0.05, 0.3, 0.7], dtype=F64)
    alpha, sigma = process.alpha(t), process.sigma(t)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones(3, dtype=F64), rtol=0, atol=1e-14)
    phi = torch.atan2(sigma, alpha)
    x0 = torch.randn(3, 2, generator=gen(1), dtype=F64)
    eps = torch.randn(3, 2, generator=gen(2), dtype=F64)
    x_t = process.marginal(x0, t, eps)
    v = dl.from_x0_eps(x0, eps, "v", alpha, sigma)
    c, s = torch.cos(phi)[:, None], torch.sin(phi)[:, None]
    torch.testing.assert_close(v, c * eps - s * x0, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(dl.to_x0_eps(v, "v", x_t, alpha, sigma)[0], c * x_t - s * v, rtol=1e-13, atol=1e-13)
