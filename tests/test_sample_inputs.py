"""`dl.sample`'s inputs: every misuse is a one-line UserError (not a traceback, not a silently wrong result),
and the stochastic samplers' noise is the one their papers (and diffusers) add, checked draw for draw."""

import warnings

import pytest
import torch

import diffusionlab as dl
from diffusionlab.data import GaussianMixture, eps_predictor
from diffusionlab.errors import UserError
from diffusionlab.nets import build_network

MIX = GaussianMixture.ring()
DDPM = dl.DDPM(T=1000)
VP = dl.VPSDE()


def _model(process):
    return eps_predictor(MIX, process.alpha, process.sigma)


def _start(process, n=64, seed=0):
    return process.prior_sample((n, 2), torch.Generator().manual_seed(seed), dtype=torch.float64)


def _refused(fragments, **kwargs):
    process = kwargs.pop("process", DDPM)
    kwargs.setdefault("x_T", _start(process, n=8))
    with pytest.raises(UserError) as excinfo:
        dl.sample(_model(process), process, **kwargs)
    message = str(excinfo.value)
    assert "\n" not in message
    missing = [f for f in fragments if f not in message]
    assert not missing, f"the message does not name {missing}: {message}"


@pytest.mark.parametrize("grid, process, fragments", [
    ([1.0, 0.5, 0.1, 0.0], DDPM, ["(0, t_max = 1]", "down to 0"]),  # σ = 0: DPM-Solver's log-SNR is infinite
    ([2.0, 0.5, 0.1], DDPM, ["(0, t_max = 1]", "from 2"]),
    ([1.0, 0.5, -0.1], VP, ["(0, t_max = 1]", "-0.1"]),
    ([1.0, float("nan"), 0.1], VP, ["strictly decreasing"]),
])
def test_an_explicit_grid_outside_the_process_is_refused(grid, process, fragments):
    for sampler in ("dpmpp_2m", "unipc", "ddim"):
        _refused(fragments, process=process, sampler=sampler, grid=grid)


def test_fit_multistep_checks_its_grid_the_same_way():
    with pytest.raises(UserError, match=r"fit_multistep's grid must lie in \(0, t_max = 1\]"):
        dl.fit_multistep(_model(DDPM), DDPM, [1.0, 0.5, 0.0], _start(DDPM, 8))


def test_steps_must_agree_with_an_explicit_grid_and_be_a_whole_number():
    grid = dl.time_grid(DDPM, 5, "logsnr")
    _refused(["steps=10", "5 times"], sampler="dpmpp_2m", steps=10, grid=grid)
    x, nfe = dl.sample(_model(DDPM), DDPM, "dpmpp_2m", 5, x_T=_start(DDPM, 8), grid=grid, return_nfe=True)
    assert nfe == 5
    for steps in (2.5, 0, -3, True, "10"):
        _refused(["steps", "integer"], sampler="ddim", steps=steps)


@pytest.mark.parametrize("sampler, options, fragments", [
    ("ddim", {"eta": -1.0}, ["DDIM eta", "[0, 1]"]),
    ("ddim", {"eta": float("nan")}, ["DDIM eta", "nan"]),
    ("ddim", {"eta": 5.0}, ["DDIM eta", "5"]),
    ("edm_heun", {"S_churn": -5.0}, ["S_churn", "-5"]),
    ("edm_heun", {"S_churn": float("nan")}, ["S_churn"]),
    ("edm_heun", {"S_noise": -1.0}, ["S_noise"]),
    ("edm_heun", {"S_tmin": 2.0, "S_tmax": 1.0}, ["S_tmin = 2", "S_tmax = 1"]),
    ("predictor_corrector", {"snr": 0.0}, ["snr", "(0, 1e+06]"]),
    ("predictor_corrector", {"corrector_steps": 1.5}, ["corrector_steps", "integer"]),
    ("ode_rk45", {"rtol": -1e-3}, ["rtol"]),
    ("ddim", {"S_churn": 10.0}, ["ddim", "S_churn", "its options: eta"]),
    ("unipc", {"eta": 0.5}, ["unipc", "eta", "order"]),
    ("dpmpp_2m", {"order": 3}, ["dpmpp_2m", "order", "lower_order_final"]),
    ("ode_euler", {"rtol": 1e-3}, ["ode_euler", "rtol", "its options: none"]),
])
def test_a_bad_or_misplaced_sampler_option_is_refused(sampler, options, fragments):
    _refused(fragments, process=VP, sampler=sampler, steps=6, **options)


def test_bad_shapes_and_starting_noise_are_refused():
    _refused(["shape[0]", "0"], sampler="unipc", steps=10, shape=(0, 2), x_T=None)
    _refused(["shape"], sampler="unipc", steps=10, shape=(), x_T=None)
    _refused(["floating-point", "torch.int64"], sampler="unipc", steps=10, x_T=torch.zeros(4, 2, dtype=torch.long))
    _refused(["floating-point"], sampler="unipc", steps=10, x_T=[[0.0, 1.0]])


def test_a_one_point_grid_warns_that_it_returns_the_posterior_mean():
    x_T = _start(DDPM, n=256)
    with pytest.warns(UserWarning, match="makes no unipc step.*E\\[x0 \\| x_T\\]"):
        x = dl.sample(_model(DDPM), DDPM, "unipc", 1, x_T=x_T)
    # what the warning says: one call of the exact denoiser at t_max, which is close to the data mean
    den = dl.Denoiser(_model(DDPM), DDPM)(x_T, torch.ones(256, dtype=torch.float64)).x0
    torch.testing.assert_close(x, den, atol=0, rtol=0)
    assert float(x.std()) < 0.1 * float(MIX.sample(256, torch.Generator().manual_seed(1))[0].std())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dl.sample(_model(DDPM), DDPM, "unipc", 2, x_T=x_T)  # two points: a real step, no warning


# --- the noise of the stochastic samplers, draw for draw -------------------------------------------------------
def _diffusers_with_noise(scheduler, process, x_T, steps, seed, **step_kwargs):
    """Run a diffusers scheduler with our exact ε and the noise our samplers draw (one randn per step, in the
    generator's order), so that both sides add the same z."""
    scheduler.alphas_cumprod = process.alpha_bars[1:].clone().to(scheduler.alphas_cumprod.dtype)
    scheduler.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    model, x = _model(process), x_T.clone()
    for k in scheduler.timesteps:
        t = torch.full((x.shape[0],), (int(k) + 1) / process.T, dtype=torch.float64)
        z = torch.randn(x.shape, generator=g, dtype=x.dtype)
        x = scheduler.step(model(x, t), k, x, variance_noise=z, **step_kwargs).prev_sample
    return x.to(torch.float64), (scheduler.timesteps.to(torch.float64) + 1) / process.T


@pytest.mark.parametrize("eta", [0.3, 1.0])
def test_stochastic_ddim_matches_diffusers_draw_for_draw(eta):
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.DDIMScheduler(timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False)
    x_T = _start(DDPM)
    expected, grid = _diffusers_with_noise(scheduler, DDPM, x_T, 10, seed=7, eta=eta)
    x = dl.sample(_model(DDPM), DDPM, "ddim", x_T=x_T, grid=grid, eta=eta, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(x, expected, atol=5e-6, rtol=0)
    assert (x - dl.sample(_model(DDPM), DDPM, "ddim", x_T=x_T, grid=grid)).abs().max() > 1e-2  # the noise arrived


def test_ddim_with_eta_one_is_ancestral_sampling():
    x_T = _start(DDPM)
    for steps in (10, 50):
        a = dl.sample(_model(DDPM), DDPM, "ddim", steps, x_T=x_T, eta=1.0, generator=torch.Generator().manual_seed(3))
        b = dl.sample(_model(DDPM), DDPM, "ancestral", steps, x_T=x_T, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


@pytest.mark.parametrize("steps", [5, 10, 20])
def test_sde_dpm_solver_matches_diffusers_draw_for_draw(steps):
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_order=2)
    x_T = _start(DDPM)
    expected, grid = _diffusers_with_noise(scheduler, DDPM, x_T, steps, seed=5)
    x, nfe = dl.sample(_model(DDPM), DDPM, "dpmpp_2m_sde", x_T=x_T, grid=grid, return_nfe=True,
                       generator=torch.Generator().manual_seed(5))
    assert nfe == steps
    torch.testing.assert_close(x, expected, atol=1e-5, rtol=0)


def test_edm_churn_keeps_the_marginals_and_its_noise_scale_matters():
    """Algorithm 2's churn adds noise to go up from σ̃_i to σ̂ and the Heun step comes back down: with the exact
    score it samples the data (cross-entropy gap → 0 as steps grow), and scaling the added noise by S_noise ≠ 1
    visibly breaks that, so the test would see a wrong noise level."""
    model, n = _model(VP), 8000
    entropy = float(-MIX.log_prob(MIX.sample(200_000, torch.Generator().manual_seed(2))[0]).mean())

    def gap(**options):
        x = dl.sample(model, VP, "edm_heun", 200, shape=(n, 2), dtype=torch.float64, grid="karras",
                      generator=torch.Generator().manual_seed(1), **options)
        return float(-MIX.log_prob(x).mean()) - entropy

    assert abs(gap(S_churn=40.0)) < 0.06
    assert gap(S_churn=40.0, S_noise=0.9) < -0.1
    assert gap(S_churn=40.0, S_noise=1.1) > 0.1


# --- found by a review of the Python API --------------------------------------------------------------------


def test_a_nan_model_stops_the_adaptive_solver_at_once():
    calls = []

    def nan_model(x, t):
        calls.append(1)
        return x * float("nan")

    with pytest.raises(UserError, match="not finite"):
        dl.sample(nan_model, VP, "ode_rk45", steps=5, x_T=_start(VP, n=4))
    assert len(calls) < 20  # it used to shrink the step 600,000 times


@pytest.mark.parametrize("name", ["ddim", "euler_maruyama", "dpmpp_2m"])
def test_a_nan_model_is_refused_by_every_sampler(name):
    with pytest.raises(UserError, match="sampling produced NaN/inf"):
        dl.sample(lambda x, t: x * float("nan"), VP, name, steps=5, x_T=_start(VP, n=4),
                  generator=torch.Generator().manual_seed(0))
    with pytest.raises(UserError, match="NaN or inf"):  # and NaN noise is refused before it starts
        dl.sample(_model(VP), VP, name, steps=5, x_T=torch.full((2, 2), float("nan")))


def test_model_outputs_must_be_real_tensors_and_keep_the_states_dtype():
    base = _model(DDPM)
    for bad in (lambda x, t: (base(x, t),), lambda x, t: None, lambda x, t: base(x, t).to(torch.complex128)):
        with pytest.raises(UserError, match="the model returned"):
            dl.sample(bad, DDPM, "ddim", steps=5, x_T=_start(DDPM, n=4))
    x = dl.sample(lambda x, t: base(x.double(), t.double()), DDPM, "ddim", steps=5, x_T=_start(DDPM, n=4).float())
    assert x.dtype == torch.float32


@pytest.mark.parametrize("make, fragments", [
    (lambda: dl.VESDE(sigma_min=50, sigma_max=0.01), ["sigma_min < sigma_max"]),
    (lambda: dl.VESDE(sigma_min=-1), ["sigma_min"]),
    (lambda: dl.VPSDE(t_min=0), ["t_min", "(0, 1]"]),
    (lambda: dl.VPSDE(t_min=1), ["t_min must be below"]),
    (lambda: dl.VPSDE(beta_min=-1), ["beta_min"]),
    (lambda: dl.VPSDE(beta_min=5, beta_max=1), ["beta_min <= beta_max"]),
    (lambda: dl.DDPM(T=1), ["T", ">= 2"]),
    (lambda: dl.DDPM(T=2.7), ["T", "2.7"]),
    (lambda: dl.DDPM(foo=1), ["no such option", "beta_start"]),
    (lambda: dl.DDPM(beta_end="0.02"), ["beta_end", "number"]),
    (lambda: dl.time_grid("vp", 5), ["needs a process"]),
    (lambda: dl.time_grid(VP, 5, "karras", rho=0), ["rho"]),
])
def test_bad_process_and_grid_parameters_are_refused(make, fragments):
    with pytest.raises(UserError) as excinfo:
        make()
    assert all(f in str(excinfo.value) for f in fragments), str(excinfo.value)


def test_a_constant_beta_vp_process_has_a_valid_log_snr_grid():
    process = dl.VPSDE(beta_min=5, beta_max=5)
    for kind in ("logsnr", "karras"):
        grid = dl.time_grid(process, 6, kind)
        assert bool(torch.isfinite(grid).all()) and bool((grid[1:] < grid[:-1]).all()), (kind, grid)
    lam = torch.linspace(-4.9, 6.0, 9, dtype=torch.float64)  # λ(1) = log(e⁻⁵/(1 − e⁻⁵)) = −4.993
    torch.testing.assert_close(process.log_snr(process.t_from_log_snr(lam)), lam, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_ddpm_schedule_in_half_precision_uses_the_right_beta_interval(dtype):
    """bfloat16 holds only ~3 digits: the β interval of a half-precision time is looked up at float32 precision
    (with 8 ulps of bfloat16 as tolerance the lookup was off by up to 62 steps: β 0.100 instead of 1.077)."""
    t = torch.tensor([0.005, 0.05, 0.3, 0.7, 0.999], dtype=dtype)
    for fun in (DDPM.g2, DDPM.alpha, DDPM.sigma):
        got = fun(t)
        assert got.dtype == dtype
        torch.testing.assert_close(got.float(), fun(t.float()).to(dtype).float(), rtol=0, atol=0)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "ancestral"])
def test_half_precision_states_keep_the_model_contract(sampler):
    """The model gets t in x's dtype, also for a bfloat16 state, so that a custom half-precision model may combine
    t with x (here: concatenated into a bfloat16 Linear; handing it float32 times was a dtype error); the built-in
    UNet in bfloat16 samples too, and the state keeps its dtype. (For times at float32 precision, sample with a
    float32 state under autocast: ``precision="bf16"``.)"""
    seen = []
    layer = torch.nn.Linear(3, 2).to(torch.bfloat16)

    def model(x, t):
        seen.append(t.dtype)
        return layer(torch.cat([x, t[:, None]], dim=1))

    x_T = torch.randn(4, 2, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    out = dl.sample(model, DDPM, sampler, steps=10, x_T=x_T, generator=torch.Generator().manual_seed(1))
    assert out.dtype == torch.bfloat16 and set(seen) == {torch.bfloat16}
    net = build_network({"type": "unet", "in_channels": 1, "image_size": 8, "base_channels": 16,
                         "channel_mults": [1, 2], "attention_resolutions": [4]}).to(torch.bfloat16)
    x_img = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    assert dl.sample(net, DDPM, sampler, steps=4, x_T=x_img, generator=torch.Generator().manual_seed(3)).dtype == torch.bfloat16


def test_fitted_coefficients_need_their_grid_and_references_their_noise():
    x_T = _start(VP, n=16)
    with pytest.raises(UserError, match="grid=fit.grid"):
        dl.sample(_model(VP), VP, "fitted_multistep", steps=3, x_T=x_T, coefficients=[[1.0, 0.0], [1.0, 0.0, 0.0]])
    with pytest.raises(UserError, match="reference must be the exact outputs"):
        dl.optimize_grid(_model(VP), VP, "ddim", 3, x_T, reference=x_T[:, :1])
    with pytest.raises(UserError, match="reference must be the exact outputs"):
        dl.fit_multistep(_model(VP), VP, "logsnr", x_T, steps=3, reference=x_T[:4])
    with pytest.raises(UserError, match="stochastic"):
        dl.optimize_grid(_model(VP), VP, "ddim", 3, x_T, reference=x_T, eta=1.0)
    one = dl.optimize_grid(_model(VP), VP, "ddim", 3, x_T, reference=x_T, start=[1.0, 0.3, 0.01], sweeps=1)
    assert len(one.grid) == 3


def test_callback_steps_increase_for_the_adaptive_solver():
    ks = []
    dl.sample(_model(VP), VP, "ode_rk45", steps=10, x_T=_start(VP, n=4), callback=lambda k, t, x: ks.append(k))
    assert ks == sorted(ks) and len(set(ks)) == len(ks) and ks[0] == 0


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(shape=4), "shape must be a tuple"), (dict(shape=(4, -1)), "every size in shape"),
    (dict(shape=(4, 2), dtype=torch.int64), "floating torch dtype"), (dict(shape=(4, 2), dtype="float32"), "dtype"),
    (dict(shape=(4, 2), generator=0), "torch.Generator"), (dict(shape=(4, 2), callback=5), "callback"),
    (dict(shape=(4, 2), sampler="unipc", order=True), "order"), (dict(shape=(4, 2), sampler="unipc", order=2.5), "order"),
    (dict(shape=(4, 2), sampler="unipc", corrector="false"), "True or False"),
    (dict(shape=(4, 2), sampler="dpmpp_2m", lower_order_final="no"), "True or False"),
    (dict(shape=(4, 2), sampler="predictor_corrector", snr=float("inf")), "snr"),
    (dict(shape=(4, 2), sampler="ode_rk45", rtol=float("inf")), "rtol"),
])
def test_bad_sample_arguments_are_one_line_errors(kwargs, fragment):
    kwargs = {"sampler": "ddim", "steps": 5, **kwargs}
    with pytest.raises(UserError, match=fragment):
        dl.sample(_model(VP), VP, **kwargs)


def test_log_likelihood_and_load_dataset_check_their_arguments():
    import numpy as np

    from diffusionlab.data import load_dataset

    x = _start(VP, n=2)
    for kwargs, fragment in ((dict(probes=0, trace="hutchinson"), "probes"), (dict(probes=2.5), "probes"),
                             (dict(rtol="1e-3"), "rtol")):
        with pytest.raises(UserError, match=fragment):
            dl.log_likelihood(_model(VP), VP, x, **kwargs)
    with pytest.raises(UserError, match="floating-point tensor"):
        dl.log_likelihood(_model(VP), VP, x.long())
    assert load_dataset("moons", seed=np.int64(3)).train.shape == load_dataset("moons", seed=3).train.shape
    with pytest.raises(UserError, match="seed"):
        load_dataset("moons", seed=2**64 - 1)


# --- found by a review of the adaptive solver and the likelihood --------------------------------------------------


@pytest.mark.parametrize("process", [DDPM, VP, dl.SubVPSDE(), dl.VESDE()], ids=["ddpm", "vp", "subvp", "ve"])
def test_a_nan_model_is_one_error_for_the_adaptive_solver_on_every_process(process):
    """A NaN first derivative made the first step size NaN, and a NaN time reached DDPM's β lookup (IndexError)."""
    def nan_model(x, t):
        return torch.full_like(x, float("nan"))

    for run in (lambda: dl.sample(nan_model, process, "ode_rk45", steps=5, shape=(3, 2)),
                lambda: dl.exact_solution(nan_model, process, _start(process, n=3))):
        with pytest.raises(UserError, match="the model returned NaN/inf"):
            run()


def test_tolerances_finer_than_the_state_can_resolve_are_one_line_errors():
    """float32 at rtol 1e-16 crawled for minutes (round-off swamps the error estimate); rtol = atol = 1e-300 on
    DDPM reached its β lookup with a NaN time; a float64 atol of 1e-300 divided by a zero step. The defaults
    (float32 at 1e-5, exact_solution's 1e-7) still run."""
    x32 = _start(VP, n=3).float()
    for process, tol in ((VP, 1e-16), (DDPM, 1e-300)):
        with pytest.raises(UserError, match="rtol = .* is finer than a torch.float32 state can resolve"):
            dl.sample(_model(process), process, "ode_rk45", steps=5, x_T=x32, rtol=tol, atol=tol)
    with pytest.raises(UserError, match="finer than a torch.float32 state"):
        dl.log_likelihood(_model(VP), VP, x32, rtol=1e-16, atol=1e-16)
    with pytest.raises(UserError, match="loosen rtol/atol"):
        dl.log_likelihood(_model(VP), VP, _start(VP, n=3), atol=1e-300)
    assert bool(torch.isfinite(dl.sample(_model(VP), VP, "ode_rk45", steps=5, x_T=x32)).all())
    assert bool(torch.isfinite(dl.exact_solution(_model(VP), VP, x32)).all())


@pytest.mark.parametrize("sigma_max", [1e15, 1e30])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ve_samples_at_the_largest_sigma_max_it_accepts(sigma_max, dtype):
    """The last step from σ̃ = σ_max to σ_min ended at σ_max + (σ_min − σ_max), which rounds to 0 (a math domain
    error); in float32 a stage that overflowed was blamed on the model. Data N(0, I): E[ε | x] = σ x/(1 + σ²)."""
    process = dl.VESDE(sigma_max=sigma_max)

    def gaussian_eps(x, t):
        s = process.sigma(t.double())[:, None]
        return (x.double() * (s / (1 + s * s))).to(x.dtype)

    x_T = process.prior_sample((400, 2), torch.Generator().manual_seed(0), dtype=dtype)
    x = dl.sample(lambda x, t: torch.zeros_like(x), process, "ode_rk45", steps=5, x_T=x_T)
    assert torch.equal(x, x_T)  # ε̂ = 0: the state never moves
    x = dl.sample(gaussian_eps, process, "ode_rk45", steps=5, x_T=x_T)
    assert abs(float(x.double().std()) - 1) < 0.1


def test_ve_refuses_a_sigma_ratio_beyond_float32():
    """σ(t) = σ_min (σ_max/σ_min)^t: a ratio beyond float32's range made σ̃(t_max) infinite."""
    with pytest.raises(UserError, match="sigma_max/sigma_min <= 3.4e"):
        dl.VESDE(sigma_min=1e-10, sigma_max=1e30)
    dl.VESDE(sigma_min=1e30 / 3.4e38, sigma_max=1e30)


def test_ve_refuses_a_sigma_min_that_float32_flushes_to_zero():
    """σ_min = 1e-300 (with σ_max = 1e-290, a ratio float32 can hold) gave σ(t) = 0 at every t in float32."""
    with pytest.raises(UserError, match=r"sigma_min must be in \[1.0842e-19, "):
        dl.VESDE(sigma_min=1e-300, sigma_max=1e-290)
    process = dl.VESDE(sigma_min=1.1e-19, sigma_max=1e-10)
    sigma = process.sigma(torch.tensor([0.0, 1.0]))
    assert bool((sigma ** 2 > 0).all())


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_a_model_that_ignores_its_input_has_divergence_zero(trace):
    """ε̂ = 0: autograd refused the graph-less output. Then y = x/α never moves and log p(x) = log N(x_T) +
    D log(α(T)/α(t_min)) with x_T = x α(T)/α(t_min)."""
    x = _start(VP, n=3)
    ll = dl.log_likelihood(lambda x, t: torch.zeros_like(x), VP, x, trace=trace)
    t_lo, t_hi = (torch.tensor(t, dtype=torch.float64) for t in (VP.t_min, VP.t_max))
    ratio = VP.alpha(t_hi) / VP.alpha(t_lo)
    torch.testing.assert_close(ll, VP.prior_log_prob(x * ratio) + 2 * torch.log(ratio), rtol=0, atol=1e-4)


def test_nan_in_the_likelihoods_data_is_blamed_on_the_data():
    x = _start(VP, n=3)
    x[1, 0] = float("nan")
    with pytest.raises(UserError, match="x contains NaN or inf"):
        dl.log_likelihood(_model(VP), VP, x)


def test_a_shape_that_disagrees_with_x_T_is_refused():
    """Both given: the samples silently followed x_T."""
    x_T = _start(VP, n=4)
    with pytest.raises(UserError, match=r"shape=\(3, 2\) disagrees with x_T of shape \(4, 2\)"):
        dl.sample(_model(VP), VP, "ddim", steps=5, shape=(3, 2), x_T=x_T)
    assert dl.sample(_model(VP), VP, "ddim", steps=5, shape=[4, 2], x_T=x_T).shape == (4, 2)
