"""The one loop every fixed-grid sampler shares: step between consecutive grid times."""

from __future__ import annotations

from typing import Callable

from torch import Tensor


def integrate(step: Callable[[Tensor, Tensor, Tensor], Tensor], x: Tensor, grid: Tensor,
              callback: Callable | None = None) -> Tensor:
    """Apply ``x ← step(x, t_k, t_{k+1})`` for k = 0 … K−2; ``callback(k + 1, t_{k+1}, x)`` after each."""
    for k in range(len(grid) - 1):
        x = step(x, grid[k], grid[k + 1])
        if callback is not None:
            callback(k + 1, grid[k + 1], x)
    return x
