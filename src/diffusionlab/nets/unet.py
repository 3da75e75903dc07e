"""A small time-conditioned U-Net for images, after Ho et al. 2020 (DDPM) and Dhariwal & Nichol 2021 (ADM).

Layout (``L = len(channel_mults)`` levels, resolution halved between levels)::

    conv_in → [ResBlock (+Attention)] × num_res_blocks, Downsample   (levels 0 .. L-2)
            → [ResBlock (+Attention)] × num_res_blocks               (level L-1)
            → middle: ResBlock, Attention, ResBlock
            → [ResBlock on concat(h, skip) (+Attention)] × (num_res_blocks + 1), Upsample   (levels L-1 .. 1)
            → [ResBlock on concat(h, skip) (+Attention)] × (num_res_blocks + 1)             (level 0)
            → GroupNorm, SiLU, conv_out (zero-initialised)

Downsampling is a stride-2 convolution (``H → ceil(H/2)``) and upsampling is nearest-neighbour
interpolation *to the size of the matching skip*, so odd sizes such as MNIST's 28 → 14 → 7 → 4 need
no padding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from diffusionlab.errors import UserError, check_count, check_range
from diffusionlab.nets.embeddings import TimeEmbedding, broadcast_time

__all__ = ["UNet"]


class _ResBlock(nn.Module):
    """GroupNorm → SiLU → conv, then GroupNorm modulated by the time, SiLU, dropout, conv; plus a skip.

    The time enters as a scale-shift (FiLM, ADM's ``use_scale_shift_norm``):
    ``h = GroupNorm(h) · (1 + s(e)) + b(e)``.
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, num_groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(num_groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(num_groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.time(emb).chunk(2, dim=1)  # each (n, out_ch)
        h = _group_norm_film(h, self.norm2, 1 + scale, shift)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


def _group_norm_film(h: torch.Tensor, norm: nn.GroupNorm, gain: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``norm(h) · gain + shift`` with a per-sample, per-channel ``gain`` and ``shift`` of shape ``(n, C)``.

    The same numbers in one GroupNorm call instead of a GroupNorm and two broadcast passes (forward and
    backward): viewing the batch as a single sample with ``n·C`` channels and ``n·G`` groups leaves every
    group as it was (a group never straddles two samples), and its per-channel affine then can be
    ``γ·gain`` and ``β·gain + shift``. Falls back to the plain formula for non-contiguous ``h`` (e.g.
    channels_last), where the reshape would copy.
    """
    n, c = h.shape[:2]
    if not h.is_contiguous():
        return norm(h) * gain[:, :, None, None] + shift[:, :, None, None]
    weight = (norm.weight * gain).reshape(n * c)
    bias = (norm.bias * gain + shift).reshape(n * c)
    out = F.group_norm(h.reshape(1, n * c, *h.shape[2:]), n * norm.num_groups, weight, bias, norm.eps)
    return out.view(h.shape)


class _Attention(nn.Module):
    """Multi-head self-attention over the ``H·W`` positions, with a residual connection.

    The q/k/v and output projections are 1×1 convolutions (their parameters), applied as matrix products
    on the ``(n, H·W, C)`` token matrix, which is cheaper than a 1×1 convolution's forward and backward and
    hands ``scaled_dot_product_attention`` q, k, v whose last dimension is contiguous (its fast kernels).
    """

    def __init__(self, channels: int, num_heads: int, num_groups: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(num_groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        heads = self.num_heads
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(n, h * w, c)
        qkv = F.linear(tokens, self.qkv.weight.view(3 * c, c), self.qkv.bias)  # (n, h·w, 3c): q | k | v, heads
        # (n, heads, h·w, c / heads) each
        q, k, v = qkv.view(n, h * w, 3, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, h * w, c)
        out = F.linear(out, self.proj.weight.view(c, c), self.proj.bias)
        return x + out.view(n, h, w, c).permute(0, 3, 1, 2)  # the sum takes x's memory format


class _Upsample(nn.Module):
    """Nearest-neighbour upsampling to an explicit size (so it undoes ``ceil(H/2)`` exactly), then a conv.

    For an exact doubling the two are computed together as four 2×2 convolutions of the small input,
    one per output parity ("sub-pixel" form, see :func:`_upsample2x_conv3x3`): the same function and
    parameters at 16 instead of 36 multiply-adds per input pixel and channel pair, and no
    ``interpolate`` backward.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        size = tuple(size)
        if size == (2 * x.shape[-2], 2 * x.shape[-1]):
            return _upsample2x_conv3x3(x, self.conv.weight, self.conv.bias)
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


def _upsample2x_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``conv2d(interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)`` for a 3×3 ``weight``.

    Output row ``2i + a`` of the 3×3 conv sees upsampled rows ``2i + a - 1 .. 2i + a + 1``, i.e. input rows
    ``i - 1, i, i`` (``a = 0``) or ``i, i, i + 1`` (``a = 1``): a 2-tap kernel ``[w0, w1 + w2]`` on rows
    ``(i - 1, i)`` or ``[w0 + w1, w2]`` on rows ``(i, i + 1)``; likewise for columns. One conv with a 2×2 kernel
    and padding 1 gives all four parities at ``(H + 1) × (W + 1)`` positions; parity ``a`` takes positions
    ``i + a``. Ordering the four kernels so that ``pixel_shuffle`` puts parity 1 first, the shuffled
    ``(2H + 2) × (2W + 2)`` map without its border is exactly the output. Zero padding maps to zero padding.
    """
    w0, w1, w2 = weight.unbind(2)  # rows of the kernel, each (out, in, 3)
    rows = (torch.stack([w0 + w1, w2], 2), torch.stack([w0, w1 + w2], 2))  # parity 1, parity 0: (out, in, 2, 3)
    kernels = []
    for r in rows:
        c0, c1, c2 = r.unbind(3)
        kernels += [torch.stack([c0 + c1, c2], 3), torch.stack([c0, c1 + c2], 3)]  # column parity 1, then 0
    out_ch = weight.shape[0]
    # (out, 4, in, 2, 2) → (out·4, in, 2, 2): channel o·4 + 2·(row slot) + (column slot), as pixel_shuffle wants.
    k = torch.stack(kernels, 1).reshape(4 * out_ch, *kernels[0].shape[1:])
    y = F.conv2d(x, k, bias.repeat_interleave(4), padding=1)  # (n, 4·out, H + 1, W + 1)
    return F.pixel_shuffle(y, 2)[:, :, 1:-1, 1:-1]


class _Stage(nn.ModuleList):
    """A sequence of layers where only the residual blocks take the time embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, _ResBlock) else layer(x)
        return x


class UNet(nn.Module):
    """Time-conditioned U-Net ``f(x, t)`` with the output shape of ``x``, for ``(n, C, H, W)`` images.

    Args:
        in_channels: image channels ``C`` (1 for grey, 3 for RGB); also the output channels.
        image_size: height and width ``H = W`` of the inputs.
        base_channels: channels at the first level; level ``i`` has ``base_channels * channel_mults[i]``.
            The time embedding has ``4 * base_channels`` features (DDPM's choice).
        channel_mults: one multiplier per resolution level.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attention_resolutions: feature-map sizes at which a self-attention block follows each residual
            block; each must be one of the sizes the network passes through (``image_size``,
            ``ceil(image_size/2)``, ...). The middle block always has attention.
        dropout: dropout probability inside the residual blocks.
        num_groups: groups of every GroupNorm; must divide ``base_channels * m`` for each multiplier ``m``.
        num_heads: attention heads; must divide the channels at every attention block.

    The output convolution starts at zero, so the untrained network predicts 0.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 8,
        base_channels: int = 64,
        channel_mults: Sequence[int] = (1, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (4,),
        dropout: float = 0.0,
        num_groups: int = 8,
        num_heads: int = 1,
    ):
        super().__init__()
        in_channels, image_size, base_channels, num_res_blocks, num_groups, num_heads = (
            check_count(f"UNet {name}", value, 1) for name, value in (
                ("in_channels", in_channels), ("image_size", image_size), ("base_channels", base_channels),
                ("num_res_blocks", num_res_blocks), ("num_groups", num_groups), ("num_heads", num_heads)))
        channel_mults = _counts("channel_mults", channel_mults)
        attention_resolutions = _counts("attention_resolutions", attention_resolutions)
        dropout = check_range("UNet dropout", dropout, 0.0, 1.0)
        widths = [base_channels * m for m in channel_mults]
        _check_config(widths, dropout, num_groups, num_heads)
        # Sizes of the feature maps at each level: a stride-2, padding-1, 3x3 conv maps H to ceil(H/2).
        sizes = [image_size]
        for _ in channel_mults[1:]:
            sizes.append(math.ceil(sizes[-1] / 2))
        unused = sorted(set(attention_resolutions) - set(sizes))
        if unused:
            raise UserError(
                f"attention_resolutions {unused} are not feature-map sizes of this UNet; valid sizes: {sizes}"
            )
        self.config = {
            "type": "unet",
            "in_channels": in_channels,
            "image_size": image_size,
            "base_channels": base_channels,
            "channel_mults": list(channel_mults),
            "num_res_blocks": num_res_blocks,
            "attention_resolutions": list(attention_resolutions),
            "dropout": dropout,
            "num_groups": num_groups,
            "num_heads": num_heads,
        }

        emb_dim = 4 * base_channels
        self.time_embed = TimeEmbedding(base_channels, emb_dim)

        def stage(in_ch: int, out_ch: int, size: int) -> _Stage:
            layers = [_ResBlock(in_ch, out_ch, emb_dim, dropout, num_groups)]
            if size in attention_resolutions:
                layers.append(_Attention(out_ch, num_heads, num_groups))
            return _Stage(layers)

        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        self.down = nn.ModuleList()
        skip_channels = [base_channels]  # channels of every tensor the down path hands to the up path
        ch = base_channels
        for level, (width, size) in enumerate(zip(widths, sizes)):
            for _ in range(num_res_blocks):
                self.down.append(stage(ch, width, size))
                ch = width
                skip_channels.append(ch)
            if level < len(widths) - 1:
                self.down.append(_Stage([nn.Conv2d(ch, ch, 3, stride=2, padding=1)]))
                skip_channels.append(ch)

        self.middle = _Stage(
            [
                _ResBlock(ch, ch, emb_dim, dropout, num_groups),
                _Attention(ch, num_heads, num_groups),
                _ResBlock(ch, ch, emb_dim, dropout, num_groups),
            ]
        )

        self.up = nn.ModuleList()
        for level in reversed(range(len(widths))):
            for _ in range(num_res_blocks + 1):
                self.up.append(stage(ch + skip_channels.pop(), widths[level], sizes[level]))
                ch = widths[level]
            if level > 0:
                self.up.append(_Upsample(ch))

        self.out = nn.Sequential(nn.GroupNorm(num_groups, ch), nn.SiLU(), nn.Conv2d(ch, in_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """``x`` of shape ``(n, C, H, W)``, ``t`` of shape ``(n,)`` or a scalar → shape ``(n, C, H, W)``."""
        c, size = self.config["in_channels"], self.config["image_size"]
        if x.dim() != 4 or tuple(x.shape[1:]) != (c, size, size):
            raise UserError(f"UNet expects x of shape (n, {c}, {size}, {size}), got {tuple(x.shape)}")
        emb = self.time_embed(broadcast_time(t, x))
        h = self.conv_in(x)
        skips = [h]
        for layer in self.down:
            h = layer(h, emb)
            skips.append(h)
        h = self.middle(h, emb)
        for layer in self.up:
            if isinstance(layer, _Upsample):
                h = layer(h, skips[-1].shape[-2:])
            else:
                h = layer(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)


def _counts(name: str, values) -> tuple[int, ...]:
    """A list of integers ≥ 1 (numpy integers included) as a tuple of Python ints."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise UserError(f"UNet {name} must be a list of integers >= 1, got {values!r}")
    return tuple(check_count(f"UNet {name} entries", v, 1) for v in values)


def _check_config(widths: list[int], dropout: float, num_groups: int, num_heads: int) -> None:
    """Raise :class:`UserError` for a UNet configuration that cannot be built (the counts are checked already)."""
    if not widths:
        raise UserError("UNet channel_mults must be a non-empty list of positive integers, got []")
    if not 0.0 <= dropout < 1.0:
        raise UserError(f"UNet dropout must be in [0, 1), got {dropout}")
    # Concatenated skip inputs are sums of these widths, so checking each width covers them too.
    bad = [w for w in widths if w % num_groups or w % num_heads]
    if bad:
        raise UserError(
            f"UNet channel widths {bad} (base_channels * channel_mults) must be divisible by "
            f"num_groups={num_groups} and num_heads={num_heads}"
        )
