"""Tests for diffusionlab.nets: shapes, time conditioning, embeddings, gradients, configs, dtypes."""

import math

import pytest
import torch
from torch import nn

from diffusionlab.errors import UserError
from diffusionlab.nets import MLP, UNet, build_network, count_parameters, sinusoidal_embedding

# Small widths keep the whole file fast on CPU; the architecture is the same at any width.
SMALL_UNET = dict(base_channels=8, num_res_blocks=1, num_groups=4)


def small_unet(in_channels=1, image_size=8, **overrides):
    mults = (1, 2) if image_size <= 8 else (1, 2, 2)
    kwargs = dict(SMALL_UNET, channel_mults=mults, attention_resolutions=(image_size // 2,))
    kwargs.update(overrides)
    return UNet(in_channels=in_channels, image_size=image_size, **kwargs)


def perturb_zero_parameters(net: nn.Module) -> None:
    """Give the zero-initialised output layer random weights, so that the rest of the net is visible."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() > 1 and not p.any():
                p.normal_(0.0, 0.1)


def test_sinusoidal_embedding_matches_direct_formula():
    t = torch.tensor([0.0, 0.0137, 0.5, 1.0, 0.999], dtype=torch.float64)
    dim, scale = 10, 1000.0
    emb = sinusoidal_embedding(t, dim, scale)
    half = dim // 2
    expected = torch.tensor(
        [
            [math.sin(scale * s / 10000 ** (i / half)) for i in range(half)]
            + [math.cos(scale * s / 10000 ** (i / half)) for i in range(half)]
            for s in t.tolist()
        ],
        dtype=torch.float64,
    )
    assert emb.shape == (5, dim) and emb.dtype == torch.float64
    torch.testing.assert_close(emb, expected, rtol=1e-12, atol=1e-12)


def test_sinusoidal_embedding_odd_dim_and_distinct_times():
    emb = sinusoidal_embedding(torch.tensor([0.1, 0.1001]), 7)
    assert emb.shape == (2, 7)
    assert torch.all(emb[:, -1] == 0)
    assert not torch.allclose(emb[0], emb[1])  # nearby continuous times are told apart


@pytest.mark.parametrize("dim", [2, 5])
def test_mlp_shapes_and_scalar_time(dim):
    net = MLP(dim, hidden=32, depth=2, time_dim=16)
    x = torch.randn(6, dim)
    assert net(x, torch.rand(6)).shape == (6, dim)
    assert net(x, 0.3).shape == (6, dim)
    assert net(x, torch.tensor(0.3)).shape == (6, dim)


def test_networks_start_at_zero():
    assert not MLP(2, hidden=16, depth=1, time_dim=8)(torch.randn(3, 2), torch.rand(3)).any()
    assert not small_unet()(torch.randn(3, 1, 8, 8), torch.rand(3)).any()


@pytest.mark.parametrize("image_size", [8, 28, 32])
@pytest.mark.parametrize("channels", [1, 3])
def test_unet_shapes(image_size, channels):
    net = small_unet(channels, image_size)
    x = torch.randn(2, channels, image_size, image_size)
    assert net(x, torch.rand(2)).shape == x.shape
    assert net(x, 0.5).shape == x.shape
    assert net(x, torch.tensor(0.5)).shape == x.shape


def test_unet_handles_sizes_that_halve_to_odd_numbers():
    net = small_unet(image_size=28, channel_mults=(1, 1, 1, 1), attention_resolutions=(7, 4))
    x = torch.randn(2, 1, 28, 28)
    assert net(x, torch.rand(2)).shape == x.shape


@pytest.mark.parametrize(
    "make, x",
    [
        (lambda: MLP(2, hidden=32, depth=2, time_dim=16), torch.randn(4, 2)),
        (lambda: small_unet(), torch.randn(4, 1, 8, 8)),
    ],
)
def test_time_conditions_output(make, x):
    net = make()
    perturb_zero_parameters(net)
    out_a = net(x, torch.full((4,), 0.1))
    out_b = net(x, torch.full((4,), 0.7))
    assert (out_a - out_b).abs().max() > 1e-4
    torch.testing.assert_close(net(x, 0.1), out_a)  # scalar t broadcasts to the batch


@pytest.mark.parametrize(
    "make, x",
    [
        (lambda: MLP(2, hidden=32, depth=2, time_dim=16), torch.randn(4, 2)),
        (lambda: small_unet(dropout=0.1), torch.randn(4, 1, 8, 8)),
    ],
)
def test_gradients_reach_every_parameter(make, x):
    net = make()
    perturb_zero_parameters(net)
    net(x, torch.rand(4)).square().sum().backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


def test_attention_resolutions_honoured():
    with_attention = small_unet(attention_resolutions=(8, 4))
    middle_only = small_unet(attention_resolutions=())
    assert count_parameters(middle_only) < count_parameters(with_attention)
    with pytest.raises(UserError, match="valid sizes"):
        small_unet(attention_resolutions=(16,))


def test_float64():
    net = small_unet().double()
    perturb_zero_parameters(net)
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    out = net(x, torch.rand(2, dtype=torch.float64))
    assert out.dtype == torch.float64
    assert net(x, 0.25).dtype == torch.float64  # a float32/Python time follows x's dtype
    mlp = MLP(3, hidden=16, depth=1, time_dim=8).double()
    assert mlp(torch.randn(2, 3, dtype=torch.float64), torch.rand(2)).dtype == torch.float64


@pytest.mark.parametrize(
    "config",
    [
        {"type": "mlp", "dim": 2, "hidden": 32, "depth": 2, "time_dim": 16},
        {"type": "unet", "in_channels": 3, "image_size": 8, "base_channels": 8, "num_groups": 4, "num_res_blocks": 1},
    ],
)
def test_build_network_round_trips(config):
    net = build_network(config)
    assert {k: net.config[k] for k in config} == config
    rebuilt = build_network(net.config)
    assert type(rebuilt) is type(net) and rebuilt.config == net.config
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in net.parameters()]
    assert count_parameters(net) == sum(p.numel() for p in net.parameters()) > 0


@pytest.mark.parametrize(
    "config, message",
    [
        ({"type": "transformer"}, "valid types: mlp, unet"),
        ({"dim": 2}, "valid types"),
        ({"type": "mlp", "dim": 2, "width": 3}, "valid keys: type, dim, hidden"),
        ({"type": "unet", "channels": 3}, "'channels'"),
        ({"type": "mlp"}, "dim"),
        ({"type": "unet", "base_channels": 12, "num_groups": 8}, "divisible"),
        ("unet", "dict"),
    ],
)
def test_build_network_rejects_bad_configs(config, message):
    with pytest.raises(UserError, match=message) as info:
        build_network(config)
    assert "\n" not in str(info.value)


def test_numpy_integers_are_taken_and_other_types_refused():
    """Sizes computed with numpy are ints, stored as Python ints (a config must be JSON); strings, fractions and
    scalars where a list belongs are one-line errors (they were TypeErrors)."""
    import json

    import numpy as np

    unet = UNet(base_channels=np.int64(16), channel_mults=(1, np.int64(2)), attention_resolutions=[np.int64(4)])
    mlp = MLP(dim=np.int64(2), hidden=np.int32(8))
    for config in (unet.config, mlp.config):
        assert json.loads(json.dumps(config)) == config
    assert unet.config["base_channels"] == 16 and type(unet.config["channel_mults"][1]) is int
    for kwargs, message in [({"base_channels": 16.5}, "base_channels must be an integer"),
                            ({"num_res_blocks": "2"}, "num_res_blocks must be an integer"),
                            ({"channel_mults": 2}, "channel_mults must be a list"),
                            ({"attention_resolutions": [4.5]}, "attention_resolutions entries"),
                            ({"dropout": "0.1"}, "dropout must be a number")]:
        with pytest.raises(UserError, match=message) as info:
            UNet(**kwargs)
        assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="MLP depth must be an integer >= 0"):
        MLP(dim=2, depth=-1)


def test_wrong_input_shapes_raise_user_error():
    with pytest.raises(UserError):
        small_unet()(torch.randn(2, 3, 8, 8), torch.rand(2))
    with pytest.raises(UserError):
        small_unet()(torch.randn(2, 1, 8, 8), torch.rand(3))
    with pytest.raises(UserError):
        MLP(2, hidden=8, depth=1, time_dim=8)(torch.randn(2, 3), torch.rand(2))
