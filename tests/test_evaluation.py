"""Tests for diffusionlab.evaluation: distribution metrics and image/plot writers."""

import math

import matplotlib
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from diffusionlab.errors import UserError
from diffusionlab.evaluation import (
    component_weight_tv,
    nearest_neighbour_distances,
    save_image_grid,
    save_scatter,
    save_trajectory,
    save_trajectory_2d,
    sliced_wasserstein,
    sliced_wasserstein_floor,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------ sliced Wasserstein


def test_sw_is_zero_for_identical_clouds():
    x = torch.randn(300, 3, generator=gen(1))
    assert sliced_wasserstein(x, x.clone(), generator=gen(2)) < 1e-12
    # Point order must not matter: SW compares distributions, not paired points.
    assert sliced_wasserstein(x, x[torch.randperm(300, generator=gen(3))], generator=gen(2)) < 1e-12


@pytest.mark.parametrize("p", [1, 2])
def test_sw_of_a_1d_shift_is_the_shift(p):
    x = torch.randn(400, 1, generator=gen(1), dtype=torch.float64)
    # In 1-D every direction is ±1 and W_p between a cloud and its translate is exactly |shift|.
    assert sliced_wasserstein(x, x + 0.7, n_projections=8, generator=gen(2), p=p) == pytest.approx(0.7, abs=1e-9)
    assert sliced_wasserstein(x - 1.3, x, n_projections=8, generator=gen(2), p=p) == pytest.approx(1.3, abs=1e-9)


def test_sw2_of_a_shift_in_d_dims_is_norm_over_sqrt_d():
    dim = 4
    x = torch.randn(200, dim, generator=gen(1))
    shift = torch.tensor([1.0, -2.0, 0.5, 2.0])
    sw = sliced_wasserstein(x, x + shift, n_projections=20_000, generator=gen(2))
    # E_θ (θ·δ)² = |δ|²/D for θ uniform on the sphere; with 20k directions the estimate is within ~1 %.
    assert sw**2 == pytest.approx(shift.pow(2).sum().item() / dim, rel=0.03)


def test_sw_is_symmetric_and_seeded():
    x = torch.randn(150, 2, generator=gen(1))
    y = torch.randn(250, 2, generator=gen(2)) * 2 + 1
    forward = sliced_wasserstein(x, y, generator=gen(3))
    assert forward > 0.5
    assert sliced_wasserstein(y, x, generator=gen(3)) == pytest.approx(forward, rel=1e-12)
    assert sliced_wasserstein(x, y, generator=gen(4)) != forward  # the directions do come from the generator


def test_sw_handles_different_sample_sizes():
    n, m, shift = 100, 300, 0.25
    # x and y - shift are the U(0, 1) quantiles at the mid-point levels of n and m bins. Interpolated
    # linearly, x's quantile function is the identity on [1/2n, 1 - 1/2n] and flat outside, so on the
    # m mid-point levels it differs from y's by the shift, except ∓2/2m at the first and last level:
    # SW_2² = shift² + 2 (1/m)² / m.
    x = ((torch.arange(n, dtype=torch.float64) + 0.5) / n).unsqueeze(1)
    y = ((torch.arange(m, dtype=torch.float64) + 0.5) / m).unsqueeze(1) + shift
    expected = math.sqrt(shift**2 + 2 / m**3)
    assert sliced_wasserstein(x, y, n_projections=4, generator=gen()) == pytest.approx(expected, abs=1e-12)
    same = sliced_wasserstein(torch.randn(300, 2, generator=gen(1)), torch.randn(700, 2, generator=gen(2)))
    different = sliced_wasserstein(torch.randn(300, 2, generator=gen(1)), torch.randn(700, 2, generator=gen(2)) + 1)
    assert same < 0.2 < different


def test_sw_matches_scipy_w1_in_1d_for_unequal_sizes():
    stats = pytest.importorskip("scipy.stats")
    x = torch.randn(300, generator=gen(1))
    y = torch.rand(500, generator=gen(2)) * 3
    expected = stats.wasserstein_distance(x.numpy(), y.numpy())
    assert sliced_wasserstein(x, y, n_projections=4, generator=gen(), p=1) == pytest.approx(expected, rel=0.02)


def test_sw_rejects_mismatched_dimensions():
    with pytest.raises(UserError):
        sliced_wasserstein(torch.zeros(5, 2), torch.zeros(5, 3))


def test_sw_floor_is_small_positive_and_shrinks_with_n():
    def sampler(n, generator):
        return torch.randn(n, 2, generator=generator)

    small_mean, small_std = sliced_wasserstein_floor(sampler, 200, 64, gen(1))
    large_mean, _ = sliced_wasserstein_floor(sampler, 3200, 64, gen(2))
    assert 0 < small_mean < 0.3
    assert 0 < small_std < small_mean
    assert large_mean < small_mean / 2  # ~n^{-1/2}: 16x the samples, ~4x smaller
    assert sliced_wasserstein_floor(sampler, 50, 16, gen(3), repeats=1)[1] == 0.0


# --------------------------------------------------------------------------------- component weights


def one_hot_responsibilities(labels):
    return torch.nn.functional.one_hot(labels, num_classes=3).float()


def test_component_tv_is_zero_when_assignments_match_weights():
    labels = torch.tensor([0] * 5 + [1] * 3 + [2] * 2)
    assert component_weight_tv(labels, one_hot_responsibilities, [0.5, 0.3, 0.2]) == pytest.approx(0.0, abs=1e-12)


def test_component_tv_on_a_constructed_example():
    # 1-D mixture with well separated means; points placed near means 0 and 1 only (component 2 dropped).
    means, weights = torch.tensor([-5.0, 0.0, 5.0]), torch.tensor([0.5, 0.3, 0.2])

    def posterior(x):
        return torch.softmax(-0.5 * (x.unsqueeze(1) - means) ** 2 + weights.log(), dim=1)

    x = torch.cat([torch.full((6,), -4.8), torch.full((4,), 0.3)])
    # ŵ = (0.6, 0.4, 0): TV = ½ (0.1 + 0.1 + 0.2) = 0.2.
    assert component_weight_tv(x, posterior, weights) == pytest.approx(0.2, abs=1e-6)  # float32 weights
    with pytest.raises(UserError):
        component_weight_tv(x, posterior, [0.5, 0.5])


# ---------------------------------------------------------------------------------- nearest neighbours


def test_nearest_neighbour_distances_match_brute_force():
    # Offset data (like unnormalised pixels) makes the fast |a|² - 2ab + |b|² form of cdist cancel badly.
    train = torch.rand(300, 1, 4, 4, generator=gen(1)) * 4 + 10
    samples = torch.rand(50, 1, 4, 4, generator=gen(2)) * 4 + 10
    samples[7] = train[123]  # a memorised sample
    samples[8] = train[5] + 1e-3  # a near copy, at distance 1e-3 * sqrt(16)
    distances = nearest_neighbour_distances(samples, train, batch=7)
    brute = torch.cdist(samples.flatten(1), train.flatten(1), compute_mode="donot_use_mm_for_euclid_dist")
    assert distances.shape == (50,)
    torch.testing.assert_close(distances, brute.min(dim=1).values, rtol=1e-5, atol=1e-5)
    assert distances[7] == 0.0
    assert distances[8].item() == pytest.approx(4e-3, rel=1e-2)


# ---------------------------------------------------------------------------------------------- plots


def ramp_frames(count, n=3, channels=1, size=8):
    """Frame t is constant with value t / (count - 1): the strip's columns then reveal which frames were shown."""
    return [torch.full((n, channels, size, size), t / (count - 1)) for t in range(count)]


def test_save_image_grid_default_layout_and_upscaling(tmp_path):
    images = torch.rand(10, 1, 8, 8, generator=gen())
    images[0] = 0.0
    save_image_grid(images, tmp_path / "grid.png")
    with Image.open(tmp_path / "grid.png") as image:
        # 4 columns x 3 rows of 8 px + 1 px padding = 37 x 28 px, enlarged 14x to reach 512 px.
        assert image.size == (37 * 14, 28 * 14)
        assert image.mode == "L"
        assert image.getpixel((0, 0)) == 255  # padding
        assert image.getpixel((14, 14)) == 0  # first pixel of the black first image


def test_save_image_grid_rgb_with_explicit_layout_and_no_upscaling_of_large_images(tmp_path):
    save_image_grid(torch.rand(4, 3, 8, 8, generator=gen()), tmp_path / "rgb.png", nrow=2, padding=2, scale=3)
    with Image.open(tmp_path / "rgb.png") as image:
        assert image.size == ((2 * 10 + 2) * 3,) * 2
        assert image.mode == "RGB"
    save_image_grid(torch.rand(1, 3, 600, 600, generator=gen()), tmp_path / "big.png")
    with Image.open(tmp_path / "big.png") as image:
        assert image.size == (602, 602)


def test_save_trajectory_png_strip_shows_ten_frames_including_first_and_last(tmp_path):
    save_trajectory(ramp_frames(25), tmp_path / "strip.png")
    with Image.open(tmp_path / "strip.png") as image:
        # 10 columns x 3 sample rows of 8 px + padding = 91 x 28 px, enlarged 6x (to reach 512 px).
        assert image.size == (91 * 6, 28 * 6)
        centres = [image.getpixel(((1 + 9 * col + 4) * 6, (1 + 4) * 6)) for col in range(10)]
    assert centres[0] == 0 and centres[-1] == 255
    assert centres == sorted(set(centres))  # ten distinct frames, in time order


def test_save_trajectory_gif_has_one_frame_per_step_and_holds_the_last(tmp_path):
    frames = [torch.rand(4, 1, 8, 8, generator=gen(t)) for t in range(5)]
    save_trajectory(frames, tmp_path / "anim.gif")
    with Image.open(tmp_path / "anim.gif") as image:
        assert image.n_frames == 5
        assert image.size == (19 * 27, 19 * 27)  # 2 x 2 grid of 8 px + padding, enlarged 27x (≥ 512 px)
        first_duration = image.info["duration"]
        image.seek(4)
        assert image.info["duration"] > first_duration


def test_save_scatter_has_fixed_size_and_titles_high_dimensional_data(tmp_path):
    points = torch.randn(200, 2, generator=gen(1))
    save_scatter(points, tmp_path / "scatter.png", reference=torch.randn(500, 2, generator=gen(2)), title="2-D")
    save_scatter(points * 100, tmp_path / "wide.png")
    for name in ("scatter.png", "wide.png"):
        with Image.open(tmp_path / name) as image:
            assert image.size == (500, 500)
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # keep text as text so it can be searched
        save_scatter(torch.randn(50, 5, generator=gen(3)), tmp_path / "high.svg", title="samples")
    assert "samples (first 2 of 5 coordinates)" in (tmp_path / "high.svg").read_text()


@pytest.mark.parametrize("count, panels", [(20, 6), (3, 3)])
def test_save_trajectory_2d_draws_up_to_six_panels(tmp_path, count, panels):
    frames = [torch.randn(100, 2, generator=gen(t)) * (1 - t / count) for t in range(count)]
    save_trajectory_2d(frames, tmp_path / "traj.png")
    with Image.open(tmp_path / "traj.png") as image:
        assert image.size == (250 * panels, 250)


WRITERS = {
    "grid": lambda path: save_image_grid(torch.rand(2, 1, 8, 8), path),
    "trajectory": lambda path: save_trajectory(ramp_frames(3), path),
    "scatter": lambda path: save_scatter(torch.randn(10, 2), path),
    "trajectory_2d": lambda path: save_trajectory_2d([torch.randn(10, 2)] * 2, path),
}


@pytest.mark.parametrize("name", WRITERS)
def test_writers_reject_missing_folder_and_bad_extension(tmp_path, name):
    with pytest.raises(UserError, match="does not exist"):
        WRITERS[name](tmp_path / "missing" / "out.png")
    with pytest.raises(UserError, match="extension"):
        WRITERS[name](tmp_path / "out.jpg")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name, suffix", [("grid", ".png"), ("trajectory", ".gif"), ("scatter", ".png")])
def test_writes_are_atomic_and_leave_no_temp_files(tmp_path, monkeypatch, name, suffix):
    target = tmp_path / f"out{suffix}"
    WRITERS[name](target)
    before = target.read_bytes()
    assert [path.name for path in tmp_path.iterdir()] == [target.name]

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Image.Image, "save", crash)
    monkeypatch.setattr(Figure, "savefig", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        WRITERS[name](target)
    assert [path.name for path in tmp_path.iterdir()] == [target.name]
    assert target.read_bytes() == before  # the old file survives a crash mid-write


def test_image_writers_reject_bad_shapes(tmp_path):
    with pytest.raises(UserError):
        save_image_grid(torch.rand(2, 2, 8, 8), tmp_path / "x.png")  # C = 2
    with pytest.raises(UserError):
        save_trajectory([torch.rand(2, 1, 8, 8), torch.rand(3, 1, 8, 8)], tmp_path / "x.gif")
    with pytest.raises(UserError):
        save_scatter(torch.randn(10, 1), tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []
