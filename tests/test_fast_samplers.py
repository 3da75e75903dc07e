"""Fast samplers (DPM-Solver++, UniPC, EDM Heun): agreement with diffusers, the DDIM equivalence, accuracy
against a tight PF-ODE reference on a Gaussian mixture with its exact ε, and the shared contract."""

import math

import pytest
import torch

import diffusionlab as dl
from diffusionlab.data import GaussianMixture, eps_predictor
from diffusionlab.parametrization import from_x0_eps, to_x0_eps
from diffusionlab.samplers.dpm_solver import dpmpp

NEW = ("dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "unipc", "edm_heun")
MIX = GaussianMixture.ring()


def _start(process, n=64, seed=0):
    return process.prior_sample((n, 2), torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- (a) diffusers ------------------------------------------------------------------------------------------
def _diffusers_run(scheduler, process, model, x_T, steps):
    # Give diffusers our float64 ᾱ (its own linspace of β is float32); it still casts its σ's (and, for
    # DPM-Solver, the sample) to float32, so agreement is to float32 round-off (~1e-7 of |x| ≈ 2).
    scheduler.alphas_cumprod = process.alpha_bars[1:].clone()
    scheduler.set_timesteps(steps)
    x = x_T.clone()
    for k in scheduler.timesteps:
        t = torch.full((x.shape[0],), (int(k) + 1) / process.T, dtype=torch.float64)  # timestep k ↔ t = (k+1)/T
        x = scheduler.step(model(x, t), k, x).prev_sample
    return x, (scheduler.timesteps.to(torch.float64) + 1) / process.T


@pytest.mark.parametrize("steps", [5, 10, 20])
@pytest.mark.parametrize("name, kind, order", [("dpmpp_2m", "dpm", 2), ("dpmpp_3m", "dpm", 3),
                                                ("unipc", "unipc", 2), ("unipc", "unipc", 3)])
def test_matches_diffusers(name, kind, order, steps):
    diffusers = pytest.importorskip("diffusers")
    process = dl.DDPM(T=1000)
    model = eps_predictor(MIX, process.alpha, process.sigma)
    if kind == "dpm":
        scheduler = diffusers.DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=order)
        options = {}
    else:
        scheduler = diffusers.UniPCMultistepScheduler(solver_order=order)
        options = {"order": order}
    x_T = _start(process)
    expected, grid = _diffusers_run(scheduler, process, model, x_T, steps)
    # diffusers' last step jumps to σ = 0, i.e. x̂₀ at the last timestep: sample's final denoise.
    x, nfe = dl.sample(model, process, name, x_T=x_T, grid=grid, return_nfe=True, **options)
    assert nfe == steps
    torch.testing.assert_close(x, expected, atol=2e-6, rtol=0)


@pytest.mark.parametrize("corrector", [True, False])
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_unipc_variants_follow_diffusers_step_by_step(order, variant, corrector):
    """Every UniPC option against diffusers' ``UniPCMultistepScheduler`` (``solver_type``, ``disable_corrector``),
    state by state over 8 steps. The comparison stops before the last step: diffusers' bh1 returns NaN when it
    steps to σ = 0 (a review measured all 24 combinations of 6/12 steps to ≤ 1.0e-6; its mutation of bh1's
    B(h) passed the other tests with errors of 0.18–0.46)."""
    diffusers = pytest.importorskip("diffusers")
    steps = 8
    process = dl.DDPM(T=1000)
    model = eps_predictor(MIX, process.alpha, process.sigma)
    scheduler = diffusers.UniPCMultistepScheduler(solver_order=order, solver_type=variant,
                                                  disable_corrector=[] if corrector else list(range(steps)))
    scheduler.alphas_cumprod = process.alpha_bars[1:].clone()
    scheduler.set_timesteps(steps)
    x_T = _start(process)
    x, theirs = x_T.clone(), []
    for k in scheduler.timesteps:
        t = torch.full((x.shape[0],), (int(k) + 1) / process.T, dtype=torch.float64)
        x = scheduler.step(model(x, t), k, x).prev_sample
        theirs.append(x)
    grid = (scheduler.timesteps.to(torch.float64) + 1) / process.T
    ours = {}
    dl.sample(model, process, "unipc", x_T=x_T, grid=grid, order=order, variant=variant, corrector=corrector,
              callback=lambda k, t, x: ours.__setitem__(k, x.clone()))
    torch.testing.assert_close(ours[0], x_T, atol=0, rtol=0)  # the callback's k counts the steps done
    for k in range(1, steps):
        torch.testing.assert_close(ours[k], theirs[k - 1], atol=2e-6, rtol=0, msg=f"step {k}")


# --- (b) LESSONS #3: DPM-Solver-1 = DDIM ----------------------------------------------------------------------
@pytest.mark.parametrize("process", [dl.DDPM(T=1000), dl.VPSDE(), dl.VESDE()], ids=["ddpm", "vp", "ve"])
def test_order_one_and_first_step_equal_ddim(process):
    model = eps_predictor(MIX, process.alpha, process.sigma)
    x_T = _start(process)
    ddim = dl.sample(model, process, "ddim", 12, x_T=x_T, denoise=False)
    den = dl.Denoiser(model, process)
    grid = dl.time_grid(process, 12)
    torch.testing.assert_close(dpmpp(den, process, x_T, grid, order=1), ddim, atol=1e-10, rtol=1e-10)
    # every multistep sampler's first step is the first-order (DDIM) step
    for name in ("dpmpp_2m", "dpmpp_3m", "unipc"):
        one = dl.sample(model, process, name, x_T=x_T, grid=grid[:2], denoise=False)
        ddim_one = dl.sample(model, process, "ddim", x_T=x_T, grid=grid[:2], denoise=False)
        torch.testing.assert_close(one, ddim_one, atol=1e-10, rtol=1e-10)


# --- (c) accuracy against the PF-ODE -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def vp_reference():
    process = dl.VPSDE()
    model = eps_predictor(MIX, process.alpha, process.sigma)
    x_T = _start(process, n=256)
    ref = dl.sample(model, process, "ode_rk45", 2, x_T=x_T, rtol=1e-8, atol=1e-8)
    return process, model, x_T, ref


def _rms(a, b):
    return float(((a - b) ** 2).sum(1).mean().sqrt())


@pytest.mark.parametrize("nfe", [10, 20])
@pytest.mark.parametrize("name", ["dpmpp_2m", "dpmpp_3m", "unipc"])
def test_multistep_beat_ddim_at_equal_nfe(vp_reference, name, nfe):
    # On the λ-uniform grid of Lu et al. §3.3; on a t-uniform VP grid the last step (t ≈ 0.1 → 10⁻³) spans most
    # of λ and multistep extrapolation loses to DDIM below ~40 NFE (measured, see the report).
    process, model, x_T, ref = vp_reference
    ddim = dl.sample(model, process, "ddim", nfe, x_T=x_T, grid="logsnr")
    x, used = dl.sample(model, process, name, nfe, x_T=x_T, grid="logsnr", return_nfe=True)
    assert used == nfe
    assert _rms(x, ref) < 0.8 * _rms(ddim, ref)


def test_edm_heun_beats_ddim(vp_reference):
    # Heun pays 2 NFE a step; on this sharp mixture (component std 0.1) it overtakes DDIM only at ~40 NFE.
    process, model, x_T, ref = vp_reference
    x, used = dl.sample(model, process, "edm_heun", 20, x_T=x_T, grid="karras", return_nfe=True)
    ddim = dl.sample(model, process, "ddim", used, x_T=x_T, grid="karras")
    assert used == 39
    assert _rms(x, ref) < 0.8 * _rms(ddim, ref)


# --- (d) contract: every process × prediction, NFE --------------------------------------------------------
def _model_for(process, prediction):
    eps_model = eps_predictor(MIX, process.alpha, process.sigma)

    def model(x, t):
        eps = eps_model(x, t)
        x0, _ = to_x0_eps(eps, "eps", x, process.alpha(t), process.sigma(t))
        return from_x0_eps(x0, eps, prediction, process.alpha(t), process.sigma(t))
    return model


EXPECTED_NFE = {"dpmpp_2m": lambda k: k, "dpmpp_3m": lambda k: k, "dpmpp_2m_sde": lambda k: k,
                "unipc": lambda k: k, "edm_heun": lambda k: 2 * k - 1}


@pytest.mark.parametrize("process", [dl.DDPM(T=100), dl.VPSDE(), dl.SubVPSDE(), dl.VESDE()],
                         ids=["ddpm", "vp", "subvp", "ve"])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "score"])
def test_every_process_and_prediction(process, prediction):
    model = _model_for(process, prediction)
    x_T = _start(process, n=16)
    for name in NEW:
        for steps in (2, 7):
            x, nfe = dl.sample(model, process, name, steps, x_T=x_T, prediction=prediction, return_nfe=True, grid="logsnr",
                               generator=torch.Generator().manual_seed(1), S_churn=5.0) if name == "edm_heun" \
                else dl.sample(model, process, name, steps, x_T=x_T, prediction=prediction, return_nfe=True, grid="logsnr",
                               generator=torch.Generator().manual_seed(1))
            assert nfe == EXPECTED_NFE[name](steps), (name, steps)
            assert x.shape == x_T.shape and bool(torch.isfinite(x).all()), name


# --- (e) randomness through the generator ---------------------------------------------------------------------
@pytest.mark.parametrize("name, options", [("edm_heun", {"S_churn": 10.0}), ("dpmpp_2m_sde", {})])
def test_stochastic_samplers_use_the_generator(name, options):
    process = dl.VPSDE()
    model = eps_predictor(MIX, process.alpha, process.sigma)
    x_T = _start(process, n=16)

    def run(seed):
        return dl.sample(model, process, name, 8, x_T=x_T, generator=torch.Generator().manual_seed(seed), **options)
    torch.testing.assert_close(run(3), run(3), atol=0, rtol=0)
    assert not torch.allclose(run(3), run(4))
    deterministic = dl.sample(model, process, "edm_heun", 8, x_T=x_T)
    if name == "edm_heun":
        assert not torch.allclose(run(3), deterministic)


def test_edm_heun_without_churn_is_deterministic_and_ve_is_algorithm_2():
    process = dl.VESDE()
    model = eps_predictor(MIX, process.alpha, process.sigma)
    x_T = _start(process, n=8)
    grid = dl.time_grid(process, 6, "karras")
    a = dl.sample(model, process, "edm_heun", x_T=x_T, grid=grid, denoise=False)
    # Karras et al. Algorithm 1 (S_churn = 0) written out for VE: σ = σ(t), D from the ε-model
    sig = process.sigma(grid)
    x = x_T.clone()
    for i in range(len(grid) - 1):
        d = model(x, grid[i].expand(8))
        x_next = x + (sig[i + 1] - sig[i]) * d
        x = x + (sig[i + 1] - sig[i]) * 0.5 * (d + model(x_next, grid[i + 1].expand(8)))
    torch.testing.assert_close(a, x, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("name", ["ode_euler", "euler_maruyama", "ddim", "dpmpp_2m"])
def test_a_float32_explicit_ddpm_grid_samples_as_its_float64_original(name):
    """A DDPM grid that went through float32 holds 999/1000 as 999.0000129 steps; ``explicit_grid`` snaps such
    times back to i/T, so the β interval (and every sample) is the float64 grid's. Unsnapped (float64 state),
    442 of the 1000 times picked the next β interval: ode_euler moved by 6e-4, euler_maruyama by 5e-3, and the
    samplers that use only α and σ by 1e-9."""
    process = dl.DDPM(T=1000)
    model = eps_predictor(MIX, process.alpha, process.sigma)
    grid = dl.time_grid(process, 1000 if name == "euler_maruyama" else 50)
    x_T = _start(process, n=16)
    run = lambda g: dl.sample(model, process, name, x_T=x_T, grid=g,  # noqa: E731
                              generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(run(grid.float()), run(grid), rtol=0, atol=1e-12)


def test_snap_near_grid_keeps_deliberate_off_grid_times():
    from diffusionlab.grids import snap_near_grid
    tol = 8 * torch.finfo(torch.float32).eps  # in t; 8 float32 ulps of T = 1000 in steps
    t = torch.tensor([0.999, 0.5005, 0.25 + 1e-4, 0.001], dtype=torch.float32).double()
    near = torch.tensor([0.7 + 0.9 * tol, 0.6 - 0.9 * tol, 0.4 + 1.2 * tol, 0.3 - 1.2 * tol, 5e-7], dtype=torch.float64)
    snapped = snap_near_grid(torch.cat([t, near]), 1000)
    assert snapped[0] == 0.999 and snapped[3] == 0.001
    assert snapped[1] == t[1] and snapped[2] == t[2]
    assert snapped[4] == 0.7 and snapped[5] == 0.6  # within the tolerance: snapped
    assert snapped[6] == near[2] and snapped[7] == near[3] and snapped[8] == 5e-7  # beyond it, or below step 1


def test_dpmpp_3m_with_the_authors_weights_converges_with_order_two():
    """The sampler table and ``dpmpp_update`` say that 3M, with the weights of the authors' code and diffusers
    (the quadratic term of x̂₀(λ) at half weight), is second order: checked on Gaussian data N(0, diag(¼, 1, 4))
    on VP, where the PF-ODE solution is x_T·sqrt(v(t_min)/v(1)), v = α² s² + σ² (a review measured local orders
    2.42, 2.15, 2.05, 2.02 between 20 and 320 steps; a third-order method would show ≈ 3)."""
    process = dl.VPSDE()
    s2 = torch.tensor([0.25, 1.0, 4.0], dtype=torch.float64)
    mix = GaussianMixture(torch.ones(1), torch.zeros(1, 3), torch.diag(s2)[None])
    model = eps_predictor(mix, process.alpha, process.sigma)
    x_T = process.prior_sample((16, 3), torch.Generator().manual_seed(0), dtype=torch.float64)
    v = lambda t: process.alpha(torch.tensor(t, dtype=torch.float64)) ** 2 * s2 + process.sigma(  # noqa: E731
        torch.tensor(t, dtype=torch.float64)) ** 2
    exact = x_T * (v(process.t_min) / v(process.t_max)).sqrt()
    counts = [40, 80, 160]
    errors = []
    for k in counts:
        x = dl.sample(model, process, "dpmpp_3m", k + 1, grid="logsnr", x_T=x_T, denoise=False)
        errors.append(float((x - exact).abs().max() / exact.abs().max()))
    local = [math.log(errors[i] / errors[i + 1]) / math.log(2) for i in range(2)]
    assert all(1.8 <= o <= 2.4 for o in local), (errors, local)
