"""Sinusoidal embeddings of the diffusion time, shared by every network.

The networks see the time ``t`` in ``[0, 1]`` (continuous, as in score-based SDEs); it is multiplied by
``scale`` (1000 by default) so that the frequencies cover the same range as DDPM's integer steps 0..999.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from diffusionlab.errors import UserError

__all__ = ["sinusoidal_embedding", "TimeEmbedding", "broadcast_time"]


def sinusoidal_embedding(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    r"""Sinusoidal features of the diffusion time (Vaswani et al. 2017, "Attention Is All You Need", §3.5;
    used for the noise level by Ho et al. 2020, "Denoising Diffusion Probabilistic Models").

    With :math:`p = \text{scale}\cdot t`, :math:`h = \lfloor \text{dim}/2 \rfloor` and
    :math:`\omega_i = 10000^{-i/h}` for :math:`i = 0, \dots, h-1`:

    .. math::
        \text{emb}(t) = [\sin(p\,\omega_0), \dots, \sin(p\,\omega_{h-1}),
                         \cos(p\,\omega_0), \dots, \cos(p\,\omega_{h-1})]

    i.e. the transformer's :math:`\sin(pos / 10000^{2i/d})` / :math:`\cos(\cdot)` pair with the sines and
    cosines concatenated rather than interleaved, as in the DDPM code. An odd ``dim`` gets one extra
    zero column.

    Args:
        t: times, shape ``(n,)``; any float (it need not be an integer step). Integer tensors are cast
            to the default float dtype.
        dim: number of features.
        scale: multiplier applied to ``t`` before taking the sines.

    Returns:
        Tensor of shape ``(n, dim)`` in the dtype of ``t`` (or the default float dtype).
    """
    if t.dim() != 1:
        raise UserError(f"sinusoidal_embedding expects t of shape (n,), got {tuple(t.shape)}")
    if dim < 1:
        raise UserError(f"sinusoidal_embedding needs dim >= 1, got {dim}")
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) / max(half, 1) * torch.arange(half, dtype=t.dtype, device=t.device))
    angles = (scale * t)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2:
        emb = nn.functional.pad(emb, (0, 1))
    return emb


class TimeEmbedding(nn.Module):
    """``sinusoidal_embedding`` followed by Linear → SiLU → Linear (the DDPM time MLP).

    Args:
        dim: number of sinusoidal features.
        out_dim: width of the two linear layers; defaults to ``4 * dim`` as in DDPM.
        scale: passed to :func:`sinusoidal_embedding`.
    """

    def __init__(self, dim: int, out_dim: int | None = None, scale: float = 1000.0):
        super().__init__()
        out_dim = 4 * dim if out_dim is None else out_dim
        self.dim = dim
        self.scale = scale
        self.mlp = nn.Sequential(nn.Linear(dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` of shape ``(n,)`` → embedding of shape ``(n, out_dim)``."""
        return self.mlp(sinusoidal_embedding(t, self.dim, self.scale))


def broadcast_time(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Return ``t`` as a ``(n,)`` tensor with ``x``'s dtype and device, where ``n = x.shape[0]``.

    Accepts a Python number, a 0-d or one-element tensor (one time for the whole batch), or a tensor
    of shape ``(n,)``; samplers often pass a single time, so the networks accept it too.
    """
    n = x.shape[0]
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.numel() == 1:
        return t.reshape(1).expand(n)
    if t.shape != (n,):
        raise UserError(f"t must be a scalar or have shape ({n},) to match the batch, got {tuple(t.shape)}")
    return t
