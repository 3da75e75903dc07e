"""The public sampler contract: the names ``dl.samplers()`` promises, and every sampler calling the model in the
dtype of x_T (float64 in, float64 out), on every process."""

from __future__ import annotations

import pytest
import torch

import diffusionlab as dl

F64 = torch.float64
REQUIRED = ("ancestral", "euler_maruyama", "predictor_corrector", "ode_euler", "ode_heun", "ode_rk45", "ddim",
            "dpmpp_2m", "dpmpp_3m", "unipc", "edm_heun")


def test_samplers_lists_every_documented_sampler():
    names = dl.samplers()
    missing = [name for name in REQUIRED if name not in names]
    assert not missing, f"dl.samplers() lacks {missing}"
    assert len(set(names)) == len(names)


class RecordingModel:
    """A fixed ε-model (shrinks x toward 0, depends on t) that records the dtypes and shapes it is called with."""

    def __init__(self):
        self.calls: list[tuple[torch.dtype, torch.dtype, tuple, tuple]] = []

    def __call__(self, x, t):
        self.calls.append((x.dtype, t.dtype, tuple(x.shape), tuple(t.shape)))
        return 0.5 * x * (1 + t.reshape(-1, *([1] * (x.ndim - 1))))


@pytest.mark.parametrize("process", [dl.DDPM(T=50), dl.VPSDE(), dl.VESDE()], ids=["ddpm", "vp", "ve"])
@pytest.mark.parametrize("sampler", dl.samplers())
def test_model_is_called_in_the_dtype_of_x_T(sampler, process):
    model = RecordingModel()
    x_T = process.prior_sample((5, 2), torch.Generator().manual_seed(0), dtype=F64)
    x, nfe = dl.sample(model, process, sampler, 6, x_T=x_T, generator=torch.Generator().manual_seed(1),
                       return_nfe=True)
    assert x.dtype == F64 and x.shape == (5, 2) and torch.isfinite(x).all()
    assert len(model.calls) == nfe > 0
    bad = [call for call in model.calls if call != (F64, F64, (5, 2), (5,))]
    assert not bad, f"{sampler}: model called with (x dtype, t dtype, x shape, t shape) = {bad[:3]}"
