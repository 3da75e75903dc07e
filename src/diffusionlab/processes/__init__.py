"""Forward processes: DDPM (discrete), VP, sub-VP and VE SDEs — all x_t = α(t) x_0 + σ(t) ε."""

from __future__ import annotations

from ..errors import UserError
from .base import Process, forward_euler_maruyama_step
from .ddpm import DDPM, forward_marginal, forward_step, posterior_mean_var
from .schedules import cosine_betas, linear_betas, make_betas
from .sde import VESDE, SubVPSDE, VPSDE

PROCESSES = {"ddpm": DDPM, "vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}


def make_process(config: dict | str) -> Process:
    """Build a process from its name or its ``config()`` dict (as stored in a run directory)."""
    config = {"process": config} if isinstance(config, str) else dict(config)
    name = config.pop("process", None)
    if name not in PROCESSES:
        raise UserError(f"unknown process {name!r}: choose one of {', '.join(PROCESSES)}")
    try:
        return PROCESSES[name](**config)
    except TypeError as e:
        raise UserError(f"bad options for process {name!r}: {e}") from None


__all__ = ["Process", "DDPM", "VPSDE", "SubVPSDE", "VESDE", "PROCESSES", "make_process", "forward_step",
           "forward_marginal", "forward_euler_maruyama_step", "posterior_mean_var", "linear_betas",
           "cosine_betas", "make_betas"]
