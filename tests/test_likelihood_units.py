"""Bits/dim bookkeeping on cases with a known answer (LESSONS #6: no magic offsets)."""

import math

import torch

import diffusionlab as dl
from diffusionlab.commands import evaluate_bpd
from diffusionlab.data import Dataset
from diffusionlab.likelihood import bits_per_dim, dequantize, discrete_nll_from_density
from diffusionlab.run import Run


def test_uniform_density_over_the_dequantisation_support_gives_log2_levels():
    """A density uniform on the union of all bins [−1 − δ/2, 1 + δ/2]^D gives P(x) = 1/L^D for every x."""
    for levels in (2, 17, 256):
        delta = 2 / (levels - 1)
        dims = 5
        log_density = torch.full((3,), -dims * math.log(levels * delta), dtype=torch.float64)
        bpd = bits_per_dim(discrete_nll_from_density(log_density, dims, levels), dims)
        torch.testing.assert_close(bpd, torch.full_like(bpd, math.log2(levels)), rtol=1e-12, atol=0)


def test_dequantisation_stays_inside_the_bin():
    levels = 17
    x = (torch.randint(0, levels, (1000, 4)).double() / (levels - 1)) * 2 - 1
    y = dequantize(x, levels, torch.Generator().manual_seed(0))
    half = 1 / (levels - 1)
    assert bool(((y - x).abs() <= half).all()) and float((y - x).abs().max()) > 0.9 * half


def _gaussian_run(process, shift, scale):
    """A run whose model is the exact ε-predictor of N(0, I) in model units; data = shift + scale·y."""

    def model(x, t):
        a, s = process.alpha(t), process.sigma(t)
        return (s / (a**2 + s**2)).reshape(-1, 1) * x  # E[ε | x_t] for x₀ ~ N(0, I)

    dataset = Dataset(torch.empty(0, 2), torch.empty(0, 2), "vector", (2,), None,
                      torch.tensor(shift, dtype=torch.float32), torch.tensor(scale, dtype=torch.float32), "gauss")
    return Run(model, process, "eps", dataset, {}, 0)


def test_nats_per_dim_are_in_the_data_units():
    """For data = m + s·y with y ~ N(0, I), −log p_data(x)/D = −log N(y; 0, I)/D + Σ log s_d / D."""
    shift, scale = [3.0, -1.0], [10.0, 0.5]
    y = torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    true_nll = (0.5 * y**2 + 0.5 * math.log(2 * math.pi)).sum(1) + math.log(10.0) + math.log(0.5)
    process = dl.VPSDE()
    result = evaluate_bpd(_gaussian_run(process, shift, scale), y, method="ode")
    # log p_{t_min} of the exact model differs from log N(y; 0, I) by O(σ(t_min)²) ≈ 1e-4 per dimension
    assert abs(result["nats_per_dim"] - float(true_nll.mean()) / 2) < 2e-3
    assert abs(result["bpd"] - result["nats_per_dim"] / math.log(2)) < 1e-12
    # The ELBO bounds the NLL from above; with the exact model and Σ = β_t the gap is ≈ 1e-3 nats/dim (see
    # test_ddpm_math). Its per-example Monte-Carlo spread is large, so use many examples and compare within
    # three standard errors.
    y = torch.randn(1000, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    true_nll = (0.5 * y**2 + 0.5 * math.log(2 * math.pi)).sum(1) + math.log(10.0) + math.log(0.5)
    elbo = evaluate_bpd(_gaussian_run(dl.DDPM(T=1000), shift, scale), y, method="elbo", strata=100)
    gap = elbo["nats_per_dim"] - float(true_nll.mean()) / 2
    se = elbo["nats_per_dim_stderr"]
    assert -3 * se < gap < 0.02 + 3 * se, (gap, se)
