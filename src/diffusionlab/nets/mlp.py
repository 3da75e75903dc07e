"""A time-conditioned residual MLP for low-dimensional vector data (2-D toy distributions and the like)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from diffusionlab.errors import UserError, check_count
from diffusionlab.nets.embeddings import TimeEmbedding, broadcast_time

__all__ = ["MLP"]


class _ResidualBlock(nn.Module):
    """``h + W2 · SiLU(W1 · LayerNorm(h) + A · e)``: a pre-norm residual block with the time added."""

    def __init__(self, hidden: int, emb_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.time = nn.Linear(emb_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(F.silu(self.fc1(self.norm(h)) + self.time(emb)))


class MLP(nn.Module):
    """Residual MLP ``f(x, t)`` with the output shape of ``x``, for data of shape ``(n, dim)``.

    ``x`` is lifted to ``hidden`` features, passed through ``depth`` residual blocks that each add a
    projection of the time embedding (:class:`~diffusionlab.nets.embeddings.TimeEmbedding`), then
    normalised and projected back to ``dim``. The output layer starts at zero so the untrained network
    predicts 0 (no noise / zero score), which keeps the first training steps well-behaved.

    Args:
        dim: data dimension.
        hidden: width of the residual stream.
        depth: number of residual blocks.
        time_dim: number of sinusoidal time features.
    """

    def __init__(self, dim: int, hidden: int = 256, depth: int = 4, time_dim: int = 128):
        super().__init__()
        dim, hidden, depth, time_dim = (check_count(f"MLP {name}", value, low) for name, value, low in
                                        (("dim", dim, 1), ("hidden", hidden, 1), ("depth", depth, 0), ("time_dim", time_dim, 1)))
        self.config = {"type": "mlp", "dim": dim, "hidden": hidden, "depth": depth, "time_dim": time_dim}
        self.time_embed = TimeEmbedding(time_dim, hidden)
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_ResidualBlock(hidden, hidden) for _ in range(depth))
        self.out_norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """``x`` of shape ``(n, dim)``, ``t`` of shape ``(n,)`` or a scalar → shape ``(n, dim)``."""
        if x.dim() != 2 or x.shape[1] != self.config["dim"]:
            raise UserError(f"MLP expects x of shape (n, {self.config['dim']}), got {tuple(x.shape)}")
        # SiLU once here rather than in every block: each block's projection then sees the same features.
        emb = F.silu(self.time_embed(broadcast_time(t, x)))
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(F.silu(self.out_norm(h)))
