"""optimize_grid: a grid fitted on calibration noise must beat the log-SNR grid on *fresh* noise."""

import pytest
import torch

import diffusionlab as dl
from diffusionlab.data import GaussianMixture, eps_predictor
from diffusionlab.errors import UserError
from diffusionlab.samplers.tuning import grid_lattice, rms_error

F64 = torch.float64


def _setup(process):
    mix = GaussianMixture.ring()
    model = eps_predictor(mix, process.alpha, process.sigma)
    calibration = process.prior_sample((256, 2), torch.Generator().manual_seed(1), dtype=F64)
    fresh = process.prior_sample((512, 2), torch.Generator().manual_seed(2), dtype=F64)
    return model, calibration, fresh


@pytest.mark.parametrize("process", [dl.DDPM(1000), dl.VPSDE(), dl.VESDE()], ids=["ddpm", "vp", "ve"])
def test_fitted_grid_beats_logsnr_grid_on_fresh_noise(process):
    model, calibration, fresh = _setup(process)
    fit = dl.optimize_grid(model, process, "unipc", 6, calibration)
    grid = fit.grid
    assert len(grid) == 6 and grid[0] == process.t_max and bool((grid[1:] < grid[:-1]).all())
    assert grid[-1] >= process.t_min - 1e-12
    if process.discrete:  # only the training steps i/T
        assert torch.allclose(grid * process.T, torch.round(grid * process.T), atol=1e-9)
    assert fit.error <= fit.start_error
    ref = dl.sample(model, process, "ode_rk45", 2, x_T=fresh, rtol=1e-8, atol=1e-8)
    logsnr = rms_error(dl.sample(model, process, "unipc", 6, x_T=fresh, grid="logsnr"), ref)
    fitted, nfe = dl.sample(model, process, "unipc", x_T=fresh, grid=grid, return_nfe=True)
    assert nfe == 6
    # Measured: ratios 0.10-0.12 on fresh noise for all three processes; 0.3 leaves room for seeds.
    assert rms_error(fitted, ref) < 0.3 * logsnr


def test_ode_rk45_in_noise_to_signal_matches_scipy_in_t():
    """ode_rk45 integrates in σ̃ = σ/α; scipy's DOP853 on the original dx/dt = f x − ½ g² ∇log p_t, restarted
    on every interval [(i−1)/T, i/T] where DDPM's β is constant (so each piece is smooth), lands on the same
    points; and ode_rk45's answers at two tolerances agree."""
    from scipy.integrate import solve_ivp

    process = dl.DDPM(50)  # 49 smooth pieces keep scipy's part short (each costs ~260 evaluations)
    model, calibration, _ = _setup(process)
    x = calibration[:16]
    a, nfe_a = dl.sample(model, process, "ode_rk45", 2, x_T=x, rtol=1e-8, atol=1e-8, return_nfe=True)
    b = dl.sample(model, process, "ode_rk45", 2, x_T=x, rtol=1e-10, atol=1e-10, denoise=False)
    assert rms_error(a, dl.sample(model, process, "ode_rk45", 2, x_T=x, rtol=1e-10, atol=1e-10)) < 1e-6
    assert nfe_a < 1000  # for T = 1000, RK45 in t took > 18,000 evaluations at this tolerance

    denoiser = dl.Denoiser(model, process, "eps")

    def rhs(t, y):
        return dl.probability_flow(denoiser, process, torch.from_numpy(y).reshape(x.shape), t).reshape(-1).numpy()

    y = x.reshape(-1).numpy()
    for i in range(process.T, 1, -1):
        y = solve_ivp(rhs, ((i - 1e-12) / process.T, (i - 1 + 1e-12) / process.T), y, method="DOP853",
                      rtol=1e-9, atol=1e-9).y[:, -1]
    assert rms_error(torch.from_numpy(y).reshape(x.shape), b) < 1e-6


def test_grid_lattice_and_errors():
    ddpm = dl.DDPM(50)
    lat = grid_lattice(ddpm)
    assert len(lat) == 50 and lat[0] == 1.0 and abs(float(lat[-1]) - 1 / 50) < 1e-15
    vp = dl.VPSDE()
    lam = vp.log_snr(grid_lattice(vp))
    assert torch.allclose(lam[1:] - lam[:-1], (lam[1] - lam[0]).expand(len(lam) - 1), rtol=1e-6)
    model, calibration, _ = _setup(ddpm)
    with pytest.raises(UserError, match="deterministic"):
        dl.optimize_grid(model, ddpm, "ancestral", 5, calibration)
    with pytest.raises(UserError, match="steps"):
        dl.optimize_grid(model, ddpm, "unipc", 1, calibration)


def test_several_starting_grids_keep_the_best_search():
    process = dl.DDPM(1000)
    model, calibration, _ = _setup(process)
    early = torch.linspace(1.0, 0.25, 4, dtype=F64)  # diffusers' "linspace" spacing for 4 steps
    ref = dl.sample(model, process, "ode_rk45", 2, x_T=calibration, rtol=1e-8, atol=1e-8)
    alone = [dl.optimize_grid(model, process, "dpmpp_2m", 4, calibration, reference=ref, start=s)
             for s in ("logsnr", early)]
    both = dl.optimize_grid(model, process, "dpmpp_2m", 4, calibration, reference=ref, start=["logsnr", early])
    assert both.error == min(r.error for r in alone)
    assert both.runs == sum(r.runs for r in alone)
    with pytest.raises(UserError, match="starting grid"):
        dl.optimize_grid(model, process, "dpmpp_2m", 4, calibration, reference=ref, start=early[:3])
