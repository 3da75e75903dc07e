"""diffusionlab — diffusion generative models (DDPM and score-based SDEs) to train, sample and evaluate.

    import diffusionlab as dl
    process = dl.VPSDE()                       # or dl.DDPM(T=1000), dl.SubVPSDE(), dl.VESDE()
    x = dl.sample(model, process, sampler="euler_maruyama", steps=100, shape=(n, d), prediction="eps")
    ll = dl.log_likelihood(model, process, x, prediction="eps")   # nats per sample, shape (n,)
"""

from .dynamics import probability_flow, reverse_sde_drift
from .errors import UserError
from .grids import GRIDS, time_grid
from .likelihood import bits_per_dim, dequantize, discrete_nll_from_density, log_likelihood
from .objectives import DenoisingLoss, ELBOLoss, negative_elbo
from .parametrization import PREDICTIONS, Denoiser, from_x0_eps, to_x0_eps
from .processes import DDPM, PROCESSES, VESDE, VPSDE, Process, SubVPSDE, make_process
from .samplers import exact_solution, fit_multistep, optimize_grid, sample, sampler_options, samplers

__version__ = "0.1.0"

__all__ = [
    "DDPM", "VPSDE", "SubVPSDE", "VESDE", "Process", "PROCESSES", "make_process",
    "sample", "samplers", "sampler_options", "optimize_grid", "fit_multistep", "exact_solution", "log_likelihood",
    "negative_elbo",
    "DenoisingLoss", "ELBOLoss",
    "Denoiser", "PREDICTIONS", "to_x0_eps", "from_x0_eps", "time_grid", "GRIDS",
    "probability_flow", "reverse_sde_drift", "bits_per_dim", "dequantize", "discrete_nll_from_density",
    "UserError", "__version__",
]
