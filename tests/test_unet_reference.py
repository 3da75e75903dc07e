"""The UNet's fast paths compute the plain network: the whole forward and every gradient against a reference
built from stock modules (nn.GroupNorm, broadcast FiLM, interpolate + 3×3 conv, convolutional attention), in
float64, for NCHW and channels_last inputs."""

import pytest
import torch
from torch.nn import functional as F

from diffusionlab.nets import UNet
from diffusionlab.nets.embeddings import broadcast_time
from diffusionlab.nets.unet import _Attention, _ResBlock, _Upsample, _group_norm_film

CL = torch.channels_last


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_group_norm_film_is_groupnorm_then_scale_shift(layout):
    """The one-call GroupNorm + per-sample FiLM (the batch viewed as one sample of n·C channels) against
    nn.GroupNorm · gain + shift, forward and gradients to 1e-12 (float64), on data with a large mean."""
    torch.manual_seed(0)
    n, c = 3, 12
    norm = torch.nn.GroupNorm(4, c).double()
    with torch.no_grad():
        norm.weight.normal_(), norm.bias.normal_()
    x = torch.randn(n, c, 5, 6, dtype=torch.float64) * 2 + 30
    x = (x.contiguous(memory_format=CL) if layout == "channels_last" else x).requires_grad_()
    gain, shift = (torch.randn(n, c, dtype=torch.float64, requires_grad=True) for _ in range(2))
    y = _group_norm_film(x, norm, gain, shift)
    ref = norm(x) * gain[:, :, None, None] + shift[:, :, None, None]
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-12)
    inputs = (x, gain, shift, norm.weight, norm.bias)
    cot = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(y, inputs, cot), torch.autograd.grad(ref, inputs, cot)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def _reference_attention(block: _Attention, x):
    """GroupNorm, 1×1 convolutions for q, k, v (heads = consecutive channel blocks), softmax(q kᵀ/√d) v, 1×1
    output convolution, residual."""
    n, c, h, w = x.shape
    heads, d = block.num_heads, c // block.num_heads
    q, k, v = block.qkv(block.norm(x)).reshape(n, 3, heads, d, h * w).transpose(-1, -2).unbind(1)
    attn = torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5, dim=-1)
    return x + block.proj((attn @ v).transpose(-1, -2).reshape(n, c, h, w))


def _reference_resblock(block: _ResBlock, x, emb):
    h = block.conv1(F.silu(block.norm1(x)))
    scale, shift = block.time(emb).chunk(2, dim=1)
    h = block.norm2(h) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
    return block.skip(x) + block.conv2(F.silu(h))


def _reference_forward(net: UNet, x, t):
    """The UNet from stock modules: nn.GroupNorm, broadcast FiLM, interpolate + 3×3 conv, convolutional
    attention."""
    def stage(layers, h, emb):
        for layer in layers:
            if isinstance(layer, _ResBlock):
                h = _reference_resblock(layer, h, emb)
            elif isinstance(layer, _Attention):
                h = _reference_attention(layer, h)
            else:
                h = layer(h)
        return h

    emb = net.time_embed(broadcast_time(t, x))
    h = net.conv_in(x)
    skips = [h]
    for layer in net.down:
        h = stage(layer, h, emb)
        skips.append(h)
    h = stage(net.middle, h, emb)
    for layer in net.up:
        if isinstance(layer, _Upsample):
            h = layer.conv(F.interpolate(h, size=skips[-1].shape[-2:], mode="nearest"))
        else:
            h = stage(layer, torch.cat([h, skips.pop()], dim=1), emb)
    return net.out(h)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("in_channels, size", [(1, 8), (3, 7)])
def test_unet_fast_paths_compute_the_reference_network(layout, in_channels, size):
    """Outputs and every parameter's gradient equal the reference forward's to 1e-10 (float64), for an NCHW and
    a channels_last input; sizes 8 (exact doublings: the sub-pixel upsampling) and 7 (7 → 4 → 2: one upsampling
    by interpolation to 7), two heads."""
    torch.manual_seed(0)
    net = UNet(in_channels=in_channels, image_size=size, base_channels=8, channel_mults=(1, 2, 2),
               num_res_blocks=1, attention_resolutions=(4,), num_groups=4, num_heads=2).double()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.3)  # also the zero-initialised output conv, and non-trivial norm affines
    x = torch.randn(3, in_channels, size, size, dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=CL)
    t = torch.rand(3, dtype=torch.float64)
    out, ref = net(x, t), _reference_forward(net, x, t)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
    params = list(net.parameters())
    cot = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, params, cot), torch.autograd.grad(ref, params, cot)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)
