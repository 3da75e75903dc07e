"""fitted_multistep / fit_multistep: the linear multistep sampler with coefficients fitted to the model."""

import math

import pytest
import torch

import diffusionlab as dl
from diffusionlab.data import GaussianMixture, eps_predictor
from diffusionlab.errors import UserError
from diffusionlab.samplers.fitted import multistep_coefficients
from diffusionlab.samplers.tuning import rms_error

F64 = torch.float64
PROCESSES = [dl.DDPM(1000), dl.VPSDE(), dl.SubVPSDE(), dl.VESDE()]
IDS = ["ddpm", "vp", "subvp", "ve"]


def _bed(process, dim=2):
    mix = GaussianMixture.ring() if dim == 2 else GaussianMixture.random_anisotropic(
        dim=dim, k=3, generator=torch.Generator().manual_seed(0))
    model = eps_predictor(mix, process.alpha, process.sigma)
    calibration = process.prior_sample((512, dim), torch.Generator().manual_seed(1), dtype=F64)
    fresh = process.prior_sample((1024, dim), torch.Generator().manual_seed(2), dtype=F64)
    return model, calibration, fresh


@pytest.mark.parametrize("process", PROCESSES, ids=IDS)
def test_default_coefficients_are_dpmpp_2m_and_orders_1_and_3_are_ddim_and_3m(process):
    model, _, fresh = _bed(process)
    # the last step of 2M/3M is lowered (lower_order_final) below 15 points only: 7 and 14 lowered, 15 and 16 not
    for steps in (2, 3, 7, 14, 15, 16):
        grid = dl.time_grid(process, steps, "logsnr")
        ours, nfe = dl.sample(model, process, "fitted_multistep", x_T=fresh, grid=grid, return_nfe=True)
        assert nfe == steps
        assert (ours - dl.sample(model, process, "dpmpp_2m", x_T=fresh, grid=grid)).abs().max() < 1e-10
        for order, name in ((1, "ddim"), (3, "dpmpp_3m")):
            rows = multistep_coefficients(process, grid, order=order)
            assert [len(r) for r in rows] == list(range(2, steps + 1))
            x = dl.sample(model, process, "fitted_multistep", x_T=fresh, grid=grid, coefficients=rows)
            assert (x - dl.sample(model, process, name, x_T=fresh, grid=grid)).abs().max() < 1e-10, (order, steps)
        grid = dl.time_grid(process, steps, "quadratic")
        for order in (2, 3):  # and without lowering the last step
            rows = multistep_coefficients(process, grid, order=order, lower_order_final=False)
            x = dl.sample(model, process, "fitted_multistep", x_T=fresh, grid=grid, coefficients=rows)
            y = dl.sample(model, process, f"dpmpp_{order}m", x_T=fresh, grid=grid, lower_order_final=False)
            assert (x - y).abs().max() < 1e-10, (order, steps)
    with pytest.raises(UserError, match="order"):
        multistep_coefficients(process, grid, order=4)


def test_order_1_coefficients_are_the_ddim_formula():
    """a_k = σ_{k+1}/σ_k, b_kk = −α_{k+1}(e^{−h} − 1), every other b zero (independent of dpmpp_update)."""
    process = dl.DDPM(1000)
    grid = dl.time_grid(process, 6, "quadratic")
    a, s = process.alpha(grid), process.sigma(grid)
    lam = torch.log(a / s)
    for k, row in enumerate(multistep_coefficients(process, grid, order=1)):
        h = float(lam[k + 1] - lam[k])
        assert row[0] == pytest.approx(float(s[k + 1] / s[k]), rel=1e-12)
        assert row[-1] == pytest.approx(-float(a[k + 1]) * math.expm1(-h), rel=1e-12)
        assert all(b == 0.0 for b in row[1:-1])


def test_mean_objective_is_the_mean_distance_and_unknown_objectives_are_user_errors():
    process = dl.DDPM(1000)
    model, calibration, _ = _bed(process)
    x_cal = calibration[:128]
    ref = dl.exact_solution(model, process, x_cal)
    grid = dl.time_grid(process, 4, "logsnr")
    fit = dl.fit_multistep(model, process, grid, x_cal, reference=ref, rounds=0, starts=(2,), objective="mean")
    x = dl.sample(model, process, "dpmpp_2m", x_T=x_cal, grid=grid)
    assert fit.error == pytest.approx(float((x - ref).norm(dim=1).mean()), rel=1e-9)
    g = dl.optimize_grid(model, process, "ddim", 3, x_cal, reference=ref, objective="mean", sweeps=1, candidates=4)
    xg = dl.sample(model, process, "ddim", x_T=x_cal, grid=g.grid)
    assert g.error == pytest.approx(float((xg - ref).norm(dim=1).mean()), rel=1e-9)
    for call, match in ((lambda: dl.fit_multistep(model, process, grid, x_cal, reference=ref, starts=(4,)), "starts"),
                        (lambda: dl.fit_multistep(model, process, grid, x_cal, reference=ref, starts=()), "starts")):
        with pytest.raises(UserError, match=match):
            call()
    for call in (lambda: dl.fit_multistep(model, process, grid, x_cal, reference=ref, objective="median"),
                 lambda: dl.optimize_grid(model, process, "ddim", 3, x_cal, reference=ref, objective="l3")):
        with pytest.raises(UserError, match="objective"):
            call()


@pytest.mark.parametrize("process", [dl.DDPM(1000), dl.VPSDE(), dl.VESDE()], ids=["ddpm", "vp", "ve"])
def test_fitted_coefficients_beat_every_multistep_solver_on_fresh_noise(process):
    model, calibration, fresh = _bed(process, dim=6)
    grid = dl.time_grid(process, 5, "logsnr")
    fit = dl.fit_multistep(model, process, grid, calibration, rounds=2, max_iter=50)
    assert torch.equal(fit.grid, grid) and len(fit.coefficients) == 4
    assert fit.error < fit.start_error and fit.iterations > 0
    ref = dl.exact_solution(model, process, fresh, rtol=1e-8)
    x, nfe = dl.sample(model, process, "fitted_multistep", x_T=fresh, grid=grid, coefficients=fit.coefficients,
                       return_nfe=True)
    assert nfe == 5
    best_other = min(rms_error(dl.sample(model, process, s, x_T=fresh, grid=grid), ref)
                     for s in ("ddim", "dpmpp_2m", "dpmpp_3m", "unipc"))
    # Measured: 0.35-0.6 of the best of DDIM / DPM-Solver++(2M, 3M) / UniPC on the same grid, fresh noise.
    assert rms_error(x, ref) < 0.8 * best_other


def test_fit_is_the_same_in_chunks_and_keeps_the_start_when_it_cannot_improve():
    process = dl.DDPM(1000)
    model, calibration, _ = _bed(process)
    ref = dl.exact_solution(model, process, calibration[:128])
    whole = dl.fit_multistep(model, process, "logsnr", calibration[:128], steps=4, reference=ref, rounds=1,
                             max_iter=20, starts=(2,))
    chunked = dl.fit_multistep(model, process, "logsnr", calibration[:128], steps=4, reference=ref, rounds=1,
                               max_iter=20, starts=(2,), batch_size=50)
    assert whole.error == pytest.approx(chunked.error, rel=1e-6)
    for a, b in zip(whole.coefficients, chunked.coefficients):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-8)
    # With no iterations the best is the best start: DDIM, DPM-Solver++(2M) or (3M), whichever is closest.
    none = dl.fit_multistep(model, process, "logsnr", calibration[:128], steps=4, reference=ref, rounds=0)
    grid = dl.time_grid(process, 4, "logsnr")
    errors = [rms_error(dl.sample(model, process, s, x_T=calibration[:128], grid=grid), ref)
              for s in ("ddim", "dpmpp_2m", "dpmpp_3m")]
    assert none.error == pytest.approx(min(errors), rel=1e-9) and none.start_error == pytest.approx(errors[0], rel=1e-9)


def test_bad_coefficients_and_grids_are_user_errors():
    process = dl.DDPM(1000)
    model, calibration, fresh = _bed(process)
    grid = dl.time_grid(process, 4, "logsnr")
    with pytest.raises(UserError, match="coefficient rows"):
        dl.sample(model, process, "fitted_multistep", x_T=fresh, grid=grid, coefficients=[[1.0, 0.5]])
    with pytest.raises(UserError, match="steps="):
        dl.fit_multistep(model, process, "logsnr", calibration)
    with pytest.raises(UserError, match="decreasing"):
        dl.fit_multistep(model, process, torch.tensor([0.5, 0.9], dtype=F64), calibration)


def test_dopri5_never_steps_outside_its_interval():
    """dopri5's first trial step is never longer than the interval: ode_rk45's right-hand side takes
    log σ̃, so a segment ending near σ̃ = 0 raised a math domain error before."""
    import math

    from diffusionlab.solvers import dopri5

    def fun(t, y):  # defined for t >= 0.995 only
        return -y * math.sqrt(t - 0.995)

    y0 = torch.ones(3, dtype=F64)
    sol = dopri5(fun, 1.0, 0.996, y0, rtol=1e-9, atol=1e-9)
    exact = math.exp((2 / 3) * (0.005 ** 1.5 - 0.001 ** 1.5))  # y' = −y sqrt(t − c), integrated from 1 down
    assert torch.allclose(sol.y, torch.full((3,), exact, dtype=F64), rtol=1e-8)


def test_dopri5_on_an_empty_interval_returns_the_start():
    from diffusionlab.solvers import dopri5

    y0 = torch.ones(2, dtype=F64)
    sol = dopri5(lambda t, y: -y, 0.5, 0.5, y0)
    assert torch.equal(sol.y, y0) and sol.nfe == 0
    process = dl.VPSDE()
    model, _, fresh = _bed(process)
    x = dl.sample(model, process, "ode_rk45", 1, x_T=fresh[:8], denoise=False)  # a one-point grid: nothing to do
    assert torch.allclose(x, fresh[:8], rtol=1e-14, atol=0)  # x/α·α: round-off only


def test_fit_of_a_model_with_non_finite_output_is_a_user_error():
    process = dl.DDPM(1000)
    _, calibration, _ = _bed(process)

    def broken(x, t):
        return torch.full_like(x, float("nan"))

    with pytest.raises(UserError, match="not finite"):
        dl.fit_multistep(broken, process, "logsnr", calibration[:16], steps=3, reference=calibration[:16],
                         rounds=1, max_iter=2)


@pytest.mark.parametrize("grid", [[0.5, 0.9], [[0.9, 0.5]], [0.9, 0.9]], ids=["increasing", "2-d", "repeated"])
def test_sample_refuses_a_grid_that_is_not_strictly_decreasing(grid):
    process = dl.VPSDE()
    model, _, fresh = _bed(process)
    with pytest.raises(UserError, match="strictly decreasing"):
        dl.sample(model, process, "ddim", x_T=fresh[:4], grid=torch.tensor(grid, dtype=F64))
    assert dl.sample(model, process, "ddim", x_T=fresh[:4], grid=torch.tensor([0.9], dtype=F64)).shape == (4, 2)


def test_dopri5_stops_where_the_step_falls_below_round_off():
    """Through the pole of y' = 1/(t − ½) the step shrinks towards 0: it gave up only after max_steps."""
    from diffusionlab.solvers import dopri5

    calls = []

    def fun(t, y):
        calls.append(t)
        return torch.full_like(y, 1 / (t - 0.5))

    with pytest.raises(UserError, match="below the round-off of t=0.5"):
        dopri5(fun, 1.0, 0.0, torch.zeros(1, dtype=F64), max_steps=100_000)
    assert len(calls) < 3000
