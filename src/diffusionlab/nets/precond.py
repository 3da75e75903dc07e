"""Input scaling that makes one network work on every process (Karras et al. 2022, EDM, Table 1 c_in)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._tensor import as_time, bcast


class ScaledInput(nn.Module):
    """``model(x, t) = net(x / sqrt(α(t)² + σ(t)²), t)``.

    For unit-variance data x_t has variance α² + σ², so the network always sees inputs of about unit scale:
    a no-op for VP and DDPM (α² + σ² = 1), essential for VE where σ reaches 50. The output is left as is —
    it is the prediction (ε, x₀, v) that the run declares.
    """

    def __init__(self, net: nn.Module, process):
        super().__init__()
        self.net, self.process = net, process

    def forward(self, x: Tensor, t) -> Tensor:
        t = as_time(t, x.shape[0], like=x)
        c_in = torch.rsqrt(self.process.alpha(t) ** 2 + self.process.sigma(t) ** 2)
        return self.net(bcast(c_in, x) * x, t)
