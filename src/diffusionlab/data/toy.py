"""Two-dimensional toy data sets, as pure functions of ``(n, generator)``.

Each function draws ``n`` i.i.d. points and returns a float64 tensor of shape ``(n, 2)``. All randomness
comes from the given :class:`torch.Generator`, so the same seed gives the same points on every machine
(the sets are written in torch rather than taken from scikit-learn for exactly that reason).

Geometry (raw data units; :func:`diffusionlab.data.load_dataset` standardises them afterwards):

* ``moons``: the two interleaving half circles of scikit-learn's ``make_moons``, upper
  ``(cos θ, sin θ)`` and lower ``(1 - cos θ, 1/2 - sin θ)``, θ ~ U[0, π], each point on either moon with
  probability 1/2, plus N(0, noise² I).
* ``swissroll``: the (x, z) plane of ``make_swiss_roll``, ``t (cos t, sin t) / 5`` with
  t ~ U[3π/2, 9π/2], plus N(0, noise² I); the division by 5 brings the roll into roughly [-2, 2]².
* ``checkerboard``: uniform on the 8 "black" unit cells of a 4×4 board over [-2, 2]², the cells where
  ``floor(x) + floor(y)`` is even.
* ``ring8``: an equal mixture of 8 Gaussians with std 0.1 centred on a circle of radius 2 at angles
  2πj/8; exactly the distribution of :meth:`GaussianMixture.ring` with its defaults, so its exact score
  is known.
"""

from __future__ import annotations

import math

import torch

from diffusionlab.errors import UserError
from diffusionlab.data.mixture import GaussianMixture

_F64 = torch.float64


def _check_n(n: int) -> None:
    # bool is an int subclass; reject it so that moons(True, g) is not silently one point.
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UserError(f"the number of points must be a positive integer, got {n!r}")


def _uniform(n: int, generator: torch.Generator, low: float, high: float) -> torch.Tensor:
    """n draws of U[low, high), float64."""
    return low + (high - low) * torch.rand(n, generator=generator, dtype=_F64)


def _gaussian_noise(n: int, generator: torch.Generator, std: float) -> torch.Tensor:
    """(n, 2) draws of N(0, std² I), float64."""
    return std * torch.randn(n, 2, generator=generator, dtype=_F64)


def moons(n: int, generator: torch.Generator, *, noise: float = 0.05) -> torch.Tensor:
    """Two interleaving half circles: upper ``(cos θ, sin θ)``, lower ``(1 - cos θ, 1/2 - sin θ)``.

    θ ~ U[0, π]; each point picks a moon with probability 1/2; N(0, noise² I) is added. Returns (n, 2).
    """
    _check_n(n)
    theta = _uniform(n, generator, 0.0, math.pi)
    lower = torch.randint(0, 2, (n,), generator=generator).to(_F64)
    # The lower moon is the upper one reflected through the point (1/2, 1/4):
    # (1 - cos θ, 1/2 - sin θ) = -(cos θ, sin θ) + (1, 1/2), so one formula serves both with a sign.
    sign = 1.0 - 2.0 * lower
    x = sign * torch.cos(theta) + lower
    y = sign * torch.sin(theta) + 0.5 * lower
    return torch.stack([x, y], dim=1) + _gaussian_noise(n, generator, noise)


def swissroll(n: int, generator: torch.Generator, *, noise: float = 0.1) -> torch.Tensor:
    """A 2-D Swiss roll: ``t (cos t, sin t) / 5`` with t ~ U[3π/2, 9π/2], plus N(0, noise² I). Returns (n, 2)."""
    _check_n(n)
    t = _uniform(n, generator, 1.5 * math.pi, 4.5 * math.pi)
    roll = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1) / 5.0
    return roll + _gaussian_noise(n, generator, noise)


def checkerboard(n: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform on the cells of the 4×4 board over [-2, 2]² where ``floor(x) + floor(y)`` is even. Returns (n, 2)."""
    _check_n(n)
    column = torch.randint(0, 4, (n,), generator=generator)
    # Of the 4 rows, the 2 with the column's parity are black: row = 2 * {0, 1} + column % 2.
    row = 2 * torch.randint(0, 2, (n,), generator=generator) + column % 2
    cell_corner = torch.stack([column, row], dim=1).to(_F64) - 2.0
    return cell_corner + torch.rand(n, 2, generator=generator, dtype=_F64)


def ring8(n: int, generator: torch.Generator) -> torch.Tensor:
    """8 Gaussians of std 0.1 on a circle of radius 2: samples of ``GaussianMixture.ring()``. Returns (n, 2)."""
    _check_n(n)
    x, _ = GaussianMixture.ring(k=8, radius=2.0, std=0.1).sample(n, generator)
    return x


TOY_DATASETS = {
    "moons": moons,
    "swissroll": swissroll,
    "checkerboard": checkerboard,
    "ring8": ring8,
}
