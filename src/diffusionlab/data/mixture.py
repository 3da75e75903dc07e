"""Gaussian mixtures with exact densities, scores and noised versions: ground truth for diffusion models.

A mixture ``p(x) = Σ_k w_k N(x; μ_k, Σ_k)`` stays a Gaussian mixture under the forward process
``x_t = α x_0 + σ ε`` (ε ~ N(0, I)): ``p_t(x) = Σ_k w_k N(x; α μ_k, α² Σ_k + σ² I)``. So its score
``∇_x log p_t`` and the optimal noise predictor ``E[ε | x_t] = -σ ∇_x log p_t(x_t)`` are known in closed
form, and a trained model or a sampler can be checked against them.

Closed forms used (responsibilities ``r_k(x) = w_k N(x; μ_k, Σ_k) / p(x)``)::

    log p(x)   = logsumexp_k [ log w_k - ½ (x-μ_k)ᵀ Σ_k⁻¹ (x-μ_k) - ½ log det Σ_k - (D/2) log 2π ]
    ∇ log p(x) = -Σ_k r_k(x) Σ_k⁻¹ (x - μ_k)

Everything is computed in float64, on the device of the input.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from diffusionlab.errors import UserError, check_count

_F64 = torch.float64
_LOG_2PI = math.log(2.0 * math.pi)

Scalar = float | torch.Tensor


# ---------------------------------------------------------------------------------------------------------
# Small pure helpers
# ---------------------------------------------------------------------------------------------------------


def _flatten_points(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Size]:
    """(..., D) -> ((n, D) float64, leading shape), so every formula below is written for a flat batch."""
    x = torch.as_tensor(x)
    if x.dim() == 0 or x.shape[-1] != dim:
        raise UserError(f"points must have shape (..., {dim}) for this {dim}-D mixture, got {tuple(x.shape)}")
    return x.to(_F64).reshape(-1, dim), x.shape[:-1]


def _gaussian_log_density(mahalanobis_sq: torch.Tensor, half_log_det: torch.Tensor, dim: int) -> torch.Tensor:
    """log N = -½ (x-μ)ᵀ Σ⁻¹ (x-μ) - ½ log det Σ - (D/2) log 2π, from its two data-dependent pieces."""
    return -0.5 * mahalanobis_sq - half_log_det - 0.5 * dim * _LOG_2PI


def _per_sample(value: Scalar, n: int, name: str, device: torch.device) -> torch.Tensor:
    """A float, 0-d, (1,) or (n,) tensor as a float64 vector of length 1 or n (length 1 broadcasts)."""
    v = torch.as_tensor(value, dtype=_F64, device=device).reshape(-1)
    if v.numel() not in (1, n):
        raise UserError(f"{name} must be a scalar or have one entry per point ({n}), got {v.numel()} entries")
    return v


def _cholesky_or_error(covariances: torch.Tensor) -> torch.Tensor:
    """Lower Cholesky factors L_k with Σ_k = L_k L_kᵀ; a user error when some Σ_k is not positive definite."""
    factors, info = torch.linalg.cholesky_ex(covariances)
    bad = torch.nonzero(info).flatten().tolist()
    if bad:
        raise UserError(f"covariance(s) of component(s) {bad} are not positive definite; give SPD matrices")
    return factors


def _random_rotation(dim: int, generator: torch.Generator | None) -> torch.Tensor:
    """A Haar-distributed orthogonal matrix: QR of a Gaussian matrix, with R's diagonal signs moved into Q."""
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=_F64))
    # Without the sign fix QR's convention (diag R > 0 is not guaranteed) biases the distribution of Q.
    return q * torch.sign(torch.diagonal(r)).unsqueeze(0)


def _log_uniform_spectra(k: int, dim: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    """(k, dim) sorted eigenvalues ``low · (high/low)^u``, u ~ U[0, 1], with u = 0 and u = 1 forced at the ends.

    Forcing the extremes makes every spectrum span exactly high/low; drawing the rest makes the components'
    determinants differ, so that responsibilities depend on the log-determinant terms.
    """
    u = torch.rand(k, dim, generator=generator, dtype=_F64).sort(dim=1).values
    if dim >= 2:
        u[:, 0], u[:, -1] = 0.0, 1.0
    return low * (high / low) ** u


# ---------------------------------------------------------------------------------------------------------
# The mixture
# ---------------------------------------------------------------------------------------------------------


class GaussianMixture:
    """``p(x) = Σ_k w_k N(x; μ_k, Σ_k)`` in D dimensions, with K components, float64 throughout.

    State: ``weights`` (K,) (normalised to sum to 1), ``means`` (K, D), ``covariances`` (K, D, D) (symmetric
    positive definite). Methods take points of shape (..., D) and return float64 results.
    """

    def __init__(self, weights: torch.Tensor, means: torch.Tensor, covariances: torch.Tensor):
        weights = torch.as_tensor(weights, dtype=_F64).clone()
        means = torch.as_tensor(means, dtype=_F64).clone()
        covariances = torch.as_tensor(covariances, dtype=_F64).clone()
        if means.dim() != 2:
            raise UserError(f"means must have shape (K, D), got {tuple(means.shape)}")
        k, d = means.shape
        if weights.shape != (k,):
            raise UserError(f"weights must have shape ({k},) to match the means, got {tuple(weights.shape)}")
        if covariances.shape != (k, d, d):
            raise UserError(f"covariances must have shape ({k}, {d}, {d}), got {tuple(covariances.shape)}")
        if k == 0 or d == 0:
            raise UserError(f"a mixture needs at least one component in at least one dimension, got means {(k, d)}")
        if not (torch.isfinite(weights).all() and (weights >= 0).all() and weights.sum() > 0):
            raise UserError("mixture weights must be finite, non-negative and not all zero")
        if not (torch.isfinite(means).all() and torch.isfinite(covariances).all()):
            raise UserError("mixture means and covariances must be finite")
        asymmetry = (covariances - covariances.mT).abs().max()
        if asymmetry > 1e-8 * covariances.abs().max():
            raise UserError(f"covariances must be symmetric (max |Σ - Σᵀ| = {asymmetry:.3g})")
        self.weights = weights / weights.sum()
        self.means = means
        self.covariances = covariances
        self._cholesky = _cholesky_or_error(covariances)
        self._eigen: tuple[torch.Tensor, torch.Tensor] | None = None

    # -- constructors -------------------------------------------------------------------------------------

    @classmethod
    def ring(cls, k: int = 8, radius: float = 2.0, std: float = 0.1) -> "GaussianMixture":
        """k equal-weight isotropic 2-D Gaussians (std ``std``) centred at ``radius (cos 2πj/k, sin 2πj/k)``."""
        k = check_count("ring k", k, 1)
        angles = 2.0 * math.pi * torch.arange(k, dtype=_F64) / k
        means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
        covariances = (std**2) * torch.eye(2, dtype=_F64).expand(k, 2, 2)
        return cls(torch.full((k,), 1.0 / k, dtype=_F64), means, covariances)

    @classmethod
    def random_anisotropic(
        cls,
        dim: int = 16,
        k: int = 4,
        generator: torch.Generator | None = None,
        *,
        mean_std: float = 1.0,
        min_variance: float = 0.01,
        max_variance: float = 1.0,
    ) -> "GaussianMixture":
        """A random mixture with elongated components.

        ``μ_k ~ N(0, mean_std² I)``; ``Σ_k = Q_k diag(λ_k) Q_kᵀ`` with Q_k a random rotation and λ_k log-uniform
        in [``min_variance``, ``max_variance``], both extremes included (for dim >= 2), so every component spans
        max/min (two orders of magnitude by default) while their determinants differ; ``w_k ∝ U[0.5, 1.5]``.
        ``generator=None`` means a generator seeded with 0, so the result is reproducible.
        """
        if dim < 1 or k < 1 or not 0 < min_variance <= max_variance:
            raise UserError("random_anisotropic needs dim >= 1, k >= 1 and 0 < min_variance <= max_variance")
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        means = mean_std * torch.randn(k, dim, generator=g, dtype=_F64)
        spectra = _log_uniform_spectra(k, dim, min_variance, max_variance, g)
        rotations = torch.stack([_random_rotation(dim, g) for _ in range(k)])
        covariances = rotations @ torch.diag_embed(spectra) @ rotations.mT
        # Symmetrise: the product is symmetric only up to rounding.
        covariances = 0.5 * (covariances + covariances.mT)
        weights = 0.5 + torch.rand(k, generator=g, dtype=_F64)
        return cls(weights, means, covariances)

    # -- basic properties ---------------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    def __repr__(self) -> str:
        return f"GaussianMixture(n_components={self.n_components}, dim={self.dim})"

    def mean(self) -> torch.Tensor:
        """E[x] = Σ_k w_k μ_k, shape (D,)."""
        return self.weights @ self.means

    def covariance(self) -> torch.Tensor:
        """Cov[x] = Σ_k w_k (Σ_k + μ_k μ_kᵀ) - E[x] E[x]ᵀ, shape (D, D)."""
        second_moments = self.covariances + self.means.unsqueeze(2) * self.means.unsqueeze(1)
        m = self.mean()
        return torch.einsum("k,kij->ij", self.weights, second_moments) - torch.outer(m, m)

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(weights, means, Cholesky factors) on ``device``: the mixture is small, so moving it is cheap."""
        return self.weights.to(device), self.means.to(device), self._cholesky.to(device)

    def _eigendecomposition(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Σ_k = U_k diag(λ_k) U_kᵀ, computed once: every noised covariance α² Σ_k + σ² I shares U_k."""
        if self._eigen is None:
            self._eigen = torch.linalg.eigh(self.covariances)
        return self._eigen

    # -- sampling -----------------------------------------------------------------------------------------

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """n i.i.d. draws: ``k ~ Categorical(w)``, ``x = μ_k + L_k z`` with z ~ N(0, I) and Σ_k = L_k L_kᵀ.

        Returns ``(x, component_index)`` of shapes (n, D) float64 and (n,) int64.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise UserError(f"the number of samples must be a positive integer, got {n!r}")
        components = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=_F64)
        x = torch.empty_like(z)
        # One matrix product per component rather than gathering an (n, D, D) stack of factors.
        for k in range(self.n_components):
            rows = components == k
            x[rows] = self.means[k] + z[rows] @ self._cholesky[k].T
        return x, components

    # -- densities and scores (Cholesky) ------------------------------------------------------------------

    def _component_terms(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per component: the differences x - μ_k as (K, D, n), the logits (n, K) and the Cholesky factors.

        logits_k = log w_k + log N(x; μ_k, Σ_k), with the Mahalanobis term |L_k⁻¹ (x - μ_k)|² and
        ½ log det Σ_k = Σ_j log (L_k)_jj; then log p = logsumexp(logits) and r = softmax(logits).
        """
        weights, means, chol = self._on(flat.device)
        # Points in the last axis so one batched triangular solve per component covers the whole batch.
        diffs = (flat.unsqueeze(0) - means.unsqueeze(1)).mT  # (K, D, n)
        whitened = torch.linalg.solve_triangular(chol, diffs, upper=False)
        half_log_det = torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(dim=1)
        log_densities = _gaussian_log_density((whitened**2).sum(dim=1), half_log_det.unsqueeze(1), self.dim)
        return diffs, torch.log(weights) + log_densities.T, chol

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) = logsumexp_k [log w_k + log N(x; μ_k, Σ_k)], shape (...,) for x of shape (..., D)."""
        flat, lead = _flatten_points(x, self.dim)
        _, logits, _ = self._component_terms(flat)
        return torch.logsumexp(logits, dim=1).reshape(lead)

    def posterior_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Responsibilities r_k(x) = w_k N(x; μ_k, Σ_k) / p(x), shape (..., K); rows sum to 1."""
        flat, lead = _flatten_points(x, self.dim)
        _, logits, _ = self._component_terms(flat)
        return torch.softmax(logits, dim=1).reshape(*lead, self.n_components)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """∇_x log p(x) = -Σ_k r_k(x) Σ_k⁻¹ (x - μ_k), in closed form, shape (..., D)."""
        flat, lead = _flatten_points(x, self.dim)
        diffs, logits, chol = self._component_terms(flat)
        precision_times_diff = torch.cholesky_solve(diffs, chol)  # Σ_k⁻¹ (x - μ_k), (K, D, n)
        responsibilities = torch.softmax(logits, dim=1)  # (n, K)
        return -torch.einsum("nk,kdn->nd", responsibilities, precision_times_diff).reshape(*lead, self.dim)

    # -- transformed mixtures -----------------------------------------------------------------------------

    def noised(self, alpha: Scalar, sigma: Scalar) -> "GaussianMixture":
        """The law of ``α x_0 + σ ε`` (x_0 ~ p, ε ~ N(0, I)): weights w_k, means α μ_k, covariances α² Σ_k + σ² I.

        ``alpha`` and ``sigma`` are python floats or 0-d tensors.
        """
        alpha = torch.as_tensor(alpha, dtype=_F64)
        sigma = torch.as_tensor(sigma, dtype=_F64)
        if alpha.dim() != 0 or sigma.dim() != 0:
            raise UserError("noised() takes scalar alpha and sigma; use noised_score for per-sample values")
        identity = torch.eye(self.dim, dtype=_F64)
        return GaussianMixture(self.weights, alpha * self.means, alpha**2 * self.covariances + sigma**2 * identity)

    def standardized(self, shift: Scalar, scale: Scalar) -> "GaussianMixture":
        """The law of ``(x - shift) / scale`` (per-dimension shift, scale > 0, e.g. a Dataset's model units).

        Means (μ_k - shift) / scale, covariances Σ_k / (scale scaleᵀ).
        """
        shift = torch.as_tensor(shift, dtype=_F64).reshape(-1).expand(self.dim)
        scale = torch.as_tensor(scale, dtype=_F64).reshape(-1).expand(self.dim)
        if not (scale > 0).all():
            raise UserError("standardized() needs a positive scale")
        return GaussianMixture(self.weights, (self.means - shift) / scale, self.covariances / torch.outer(scale, scale))

    # -- per-sample noised score (eigendecomposition) -----------------------------------------------------

    def noised_score(self, x: torch.Tensor, alpha: Scalar, sigma: Scalar) -> torch.Tensor:
        """∇ log p_t at x_i for the mixture noised with per-point (α_i, σ_i); x (n, D), α and σ scalar or (n,).

        Component k at point i is N(α_i μ_k, α_i² Σ_k + σ_i² I). With Σ_k = U_k diag(λ_k) U_kᵀ (computed
        once) its inverse is U_k diag(1 / (α_i² λ_k + σ_i²)) U_kᵀ and its log-determinant
        Σ_j log(α_i² λ_kj + σ_i²), so the exact score costs O(n K D²) without one factorisation per point. Equals
        ``self.noised(α, σ).score(x)`` when α and σ are scalars.
        """
        flat, lead = _flatten_points(x, self.dim)
        n, device = flat.shape[0], flat.device
        alpha = _per_sample(alpha, n, "alpha", device)[:, None, None]  # (n or 1, 1, 1)
        sigma = _per_sample(sigma, n, "sigma", device)[:, None, None]
        eigenvalues, eigenvectors = (t.to(device) for t in self._eigendecomposition())
        weights, means, _ = self._on(device)
        variances = alpha**2 * eigenvalues.unsqueeze(0) + sigma**2  # (n or 1, K, D), eigenbasis of Σ_k
        if not (variances > 0).all():
            raise UserError("the noised covariance is singular: alpha and sigma must not both be zero")
        diffs = flat.unsqueeze(1) - alpha * means.unsqueeze(0)  # (n, K, D)
        rotated = torch.einsum("kdj,nkd->nkj", eigenvectors, diffs)  # U_kᵀ (x_i - α_i μ_k)
        scaled = rotated / variances  # diag(1/var) U_kᵀ (x - α μ_k)
        log_densities = _gaussian_log_density(
            (rotated * scaled).sum(dim=2), 0.5 * torch.log(variances).sum(dim=2), self.dim
        )
        responsibilities = torch.softmax(torch.log(weights) + log_densities, dim=1)  # (n, K)
        # Weight before rotating back, so the contraction never builds an (n, K, D, D) intermediate.
        weighted = responsibilities.unsqueeze(2) * scaled
        return -torch.einsum("kdj,nkj->nd", eigenvectors, weighted).reshape(*lead, self.dim)


# ---------------------------------------------------------------------------------------------------------
# The exact optimal noise predictor
# ---------------------------------------------------------------------------------------------------------


def eps_predictor(
    mixture: GaussianMixture,
    alpha_fn: Callable[[torch.Tensor], torch.Tensor],
    sigma_fn: Callable[[torch.Tensor], torch.Tensor],
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The exact optimal noise predictor ``model(x, t) = E[ε | x_t = x] = -σ(t) ∇ log p_t(x)`` for data ~ mixture.

    ``alpha_fn`` and ``sigma_fn`` map a (n,) time tensor to (n,) tensors (``x_t = α(t) x_0 + σ(t) ε``).
    ``model`` takes x of shape (n, ...) with ``prod(...) == mixture.dim`` (so images work too) and t of
    shape (n,) or a scalar; t may differ per sample. It returns ε̂ with the shape and dtype of x.
    """

    def model(x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        n = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(n) if t.dim() == 0 else t.reshape(-1)
        if t.numel() != n:
            raise UserError(f"t must be a scalar or have one entry per sample ({n}), got {t.numel()} entries")
        # Fast path: one time for the whole batch (the usual sampler call) evaluates the schedule once, and
        # the per-component variances are then shared by every point instead of built per point.
        if n > 0 and bool((t == t[0]).all()):
            t = t[:1]
        alpha = _per_sample(alpha_fn(t), t.numel(), "alpha_fn(t)", x.device)
        sigma = _per_sample(sigma_fn(t), t.numel(), "sigma_fn(t)", x.device)
        score = mixture.noised_score(x.reshape(n, -1), alpha, sigma)
        return (-sigma.unsqueeze(1) * score).reshape(x.shape).to(x.dtype)

    return model
