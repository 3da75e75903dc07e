"""Small tensor helpers shared by every module (no diffusion logic here)."""

from __future__ import annotations

import torch
from torch import Tensor


def as_time(t, n: int | None = None, *, like: Tensor | None = None) -> Tensor:
    """Return the time ``t`` as a 1-D tensor of length ``n``.

    ``t`` may be a Python float, a 0-d tensor or a tensor of shape (n,). The dtype and device follow
    ``like`` when given (so a float64 batch gets float64 times), else float64 on the CPU.
    """
    dtype = like.dtype if like is not None else torch.float64
    device = like.device if like is not None else None
    t = torch.as_tensor(t, dtype=dtype, device=device)
    if n is not None and t.ndim == 0:
        t = t.expand(n)
    return t


def bcast(a: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample coefficient ``a`` of shape (n,) (or a 0-d tensor) to broadcast against ``x``."""
    a = torch.as_tensor(a, dtype=x.dtype, device=x.device)
    if a.ndim == 0:
        return a
    return a.reshape(a.shape[0], *([1] * (x.ndim - 1)))


def sum_except_batch(x: Tensor) -> Tensor:
    """Sum over every dimension but the first: (n, ...) -> (n,)."""
    return x.reshape(x.shape[0], -1).sum(dim=1)


def randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like ``x``, drawn from ``generator`` on its own device.

    Drawing on the generator's device and moving the result makes the noise identical on CPU and GPU when
    a CPU generator is passed (diffusers issue #1514: different noise on different hardware).
    """
    if generator is None:
        return torch.randn_like(x)
    z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=generator.device)
    return z.to(x.device)
