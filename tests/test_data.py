"""Tests for diffusionlab.data: toy sets, load_dataset for every kind of spec, scaling, splits and errors."""

import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from diffusionlab.data import (
    BUILTIN_DATASETS,
    Dataset,
    GaussianMixture,
    checkerboard,
    load_dataset,
    moons,
    ring8,
    swissroll,
)
from diffusionlab.data import loading
from diffusionlab.errors import UserError

TOYS = {"moons": moons, "swissroll": swissroll, "checkerboard": checkerboard, "ring8": ring8}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """No test may read or write the user's real cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("DIFFUSIONLAB_CACHE", str(cache))
    return cache


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def save_npy(tmp_path, array, name="data.npy"):
    path = tmp_path / name
    np.save(path, array)
    return str(path)


def save_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def sorted_rows(x):
    """Examples flattened and sorted lexicographically, to compare data sets irrespective of the split order."""
    flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    return flat[np.lexsort(flat.T[::-1])]


def all_in_data_units(ds):
    return torch.cat([ds.to_data_units(ds.train), ds.to_data_units(ds.test)]).double().numpy()


# --- toy sets ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TOYS)
def test_toy_shape_dtype_and_generator_determinism(name):
    fn = TOYS[name]
    a, b, c = fn(500, gen(1)), fn(500, gen(1)), fn(500, gen(2))
    assert a.shape == (500, 2) and a.dtype == torch.float64
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.isfinite(a).all()


def test_moons_lie_on_two_unit_half_circles():
    x = moons(2000, gen(), noise=0.0)
    upper = (x.norm(dim=1) - 1).abs() < 1e-9
    lower = ((x - torch.tensor([1.0, 0.5], dtype=torch.float64)).norm(dim=1) - 1).abs() < 1e-9
    assert (upper | lower).all()
    assert (x[upper, 1] >= -1e-12).all() and (x[lower, 1] <= 0.5 + 1e-12).all()
    assert 0.45 < upper.double().mean() < 0.55


def test_swissroll_radius_tracks_angle():
    x = swissroll(2000, gen(), noise=0.0)
    radius = x.norm(dim=1)  # = t / 5 with t in [3π/2, 9π/2]
    assert radius.min() >= 1.5 * math.pi / 5 - 1e-9 and radius.max() <= 4.5 * math.pi / 5 + 1e-9
    angle = torch.atan2(x[:, 1], x[:, 0])
    # The polar angle equals t = 5 * radius modulo 2π.
    assert (torch.cos(5 * radius - angle) > 1 - 1e-9).all()


def test_checkerboard_fills_exactly_the_black_cells():
    x = checkerboard(4000, gen())
    assert (x.abs() <= 2).all()
    cells = torch.floor(x).long()
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all()
    assert len(torch.unique(cells, dim=0)) == 8


def test_ring8_is_the_ring_mixture():
    x = ring8(300, gen(5))
    expected, _ = GaussianMixture.ring(k=8, radius=2.0, std=0.1).sample(300, gen(5))
    assert torch.equal(x, expected)
    assert ((x.norm(dim=1) - 2).abs() < 0.6).all()


def test_toy_rejects_non_positive_n():
    with pytest.raises(UserError):
        moons(0, gen())


# --- built-in specs ------------------------------------------------------------------------------------


def test_builtin_names():
    assert BUILTIN_DATASETS == ("digits", "mnist", "moons", "swissroll", "checkerboard", "ring8")


def test_digits(private_cache):
    ds = load_dataset("digits")
    assert [p.name for p in private_cache.iterdir()] == [loading._DIGITS_CACHE_FILE]
    assert (ds.kind, ds.shape, ds.levels, ds.name) == ("image", (1, 8, 8), 17, "digits")
    assert len(ds.train) == 1797 - 180 and len(ds.test) == 180
    assert ds.train.dtype == torch.float32 and ds.train.shape[1:] == (1, 8, 8)
    assert ds.train.min() == -1.0 and ds.train.max() == 1.0
    data = ds.to_data_units(ds.train)
    assert torch.equal(ds.quantize(data), torch.round(data))  # already on the grid 0..16
    assert torch.allclose(data, torch.round(data), atol=1e-5)


@pytest.mark.parametrize("name", ["moons", "swissroll", "checkerboard", "ring8"])
def test_toy_specs_are_standardised_vectors(name):
    ds = load_dataset(name, n_toy=1000, seed=3)
    assert (ds.kind, ds.shape, ds.levels, ds.name) == ("vector", (2,), None, name)
    assert len(ds.train) == 900 and len(ds.test) == 100
    assert torch.allclose(ds.train.double().mean(dim=0), torch.zeros(2, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(ds.train.double().std(dim=0, correction=0), torch.ones(2, dtype=torch.float64), atol=1e-5)
    # Data units are the toy function's output for a generator seeded by `seed`.
    expected = TOYS[name](1000, gen(3)).numpy()
    np.testing.assert_allclose(sorted_rows(all_in_data_units(ds)), sorted_rows(expected), atol=1e-5)


def test_mnist_parses_once_then_reads_the_cache(private_cache, monkeypatch):
    ds = load_dataset("mnist")
    assert (ds.kind, ds.shape, ds.levels) == ("image", (1, 28, 28), 256)
    assert len(ds.train) + len(ds.test) == 5000 and len(ds.test) == 500
    cached = list(private_cache.iterdir())
    assert [p.name for p in cached] == [loading._MNIST_CACHE_FILE]  # and no temporary file left behind
    # The source is sorted by class (500 per digit); the test set must be drawn from all over it.
    parsed = np.load(cached[0]).reshape(-1, 1, 28, 28)
    row_of = {image.tobytes(): i for i, image in enumerate(parsed)}
    test_images = ds.quantize(ds.to_data_units(ds.test)).numpy().astype(np.uint8)
    test_classes = {row_of[image.tobytes()] // 500 for image in test_images}
    assert test_classes == set(range(10))

    def no_parsing():
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(loading, "_parse_mnist", no_parsing)
    again = load_dataset("mnist")
    assert torch.equal(again.train, ds.train) and torch.equal(again.test, ds.test)


def test_corrupt_mnist_cache_is_rebuilt(private_cache, monkeypatch):
    fake = (np.arange(5000 * 784) % 256).astype(np.uint8).reshape(5000, 784)
    monkeypatch.setattr(loading, "_parse_mnist", lambda: fake)
    private_cache.mkdir()
    (private_cache / loading._MNIST_CACHE_FILE).write_bytes(b"not a numpy file")
    ds = load_dataset("mnist")
    assert np.array_equal(np.load(private_cache / loading._MNIST_CACHE_FILE), fake)
    assert sorted([p.name for p in private_cache.iterdir()]) == [loading._MNIST_CACHE_FILE]
    np.testing.assert_allclose(sorted_rows(all_in_data_units(ds)), sorted_rows(fake), atol=1e-4)


# --- array files ---------------------------------------------------------------------------------------


def test_npy_vectors_are_standardised_on_the_train_split(tmp_path):
    data = np.random.default_rng(0).normal(5.0, [1.0, 10.0, 0.1], size=(60, 3))
    ds = load_dataset(save_npy(tmp_path, data), test_fraction=0.25)
    assert (ds.kind, ds.shape, ds.levels, ds.name) == ("vector", (3,), None, "data")
    assert len(ds.test) == 15
    train_data = ds.to_data_units(ds.train).double()
    assert torch.allclose(ds.shift.double(), train_data.mean(dim=0), rtol=1e-5)
    assert torch.allclose(ds.scale.double(), train_data.std(dim=0, correction=0), rtol=1e-5)
    np.testing.assert_allclose(sorted_rows(all_in_data_units(ds)), sorted_rows(data), rtol=1e-5, atol=1e-5)


def test_integer_vectors_are_continuous(tmp_path):
    data = np.random.default_rng(13).integers(-1000, 1000, size=(30, 4), dtype=np.int64)
    ds = load_dataset(save_npy(tmp_path, data))
    assert (ds.kind, ds.levels) == ("vector", None)
    np.testing.assert_allclose(sorted_rows(all_in_data_units(ds)), sorted_rows(data), atol=1e-3)


def test_float16_images_are_scaled_in_float32(tmp_path):
    data = np.random.default_rng(14).uniform(0, 1, size=(10, 3, 4, 4)).astype(np.float16)
    ds = load_dataset(save_npy(tmp_path, data))
    assert ds.train.dtype == torch.float32 and ds.levels is None
    assert ds.train.min() == -1.0 and ds.train.max() == 1.0


def test_constant_vector_dimension_gets_scale_one(tmp_path):
    data = np.stack([np.arange(10.0), np.full(10, 3.0)], axis=1)
    ds = load_dataset(save_npy(tmp_path, data))
    assert ds.scale[1] == 1.0 and torch.all(ds.train[:, 1] == 0)


def test_uint8_images_channels_first_and_exact_round_trip(tmp_path):
    data = np.random.default_rng(1).integers(0, 256, size=(20, 2, 5, 6), dtype=np.uint8)
    ds = load_dataset(save_npy(tmp_path, data))
    assert (ds.kind, ds.shape, ds.levels) == ("image", (2, 5, 6), 256)
    assert ds.shift.item() == 127.5 and ds.scale.item() == 127.5 and ds.shift.shape == (1, 1, 1)
    recovered = ds.quantize(torch.cat([ds.to_data_units(ds.train), ds.to_data_units(ds.test)]))
    assert np.array_equal(sorted_rows(recovered.numpy()), sorted_rows(data))
    assert (ds.train.abs() <= 1).all()


def test_grey_images_without_channel_axis(tmp_path):
    data = np.random.default_rng(2).integers(0, 256, size=(10, 4, 7), dtype=np.int64)
    ds = load_dataset(save_npy(tmp_path, data))
    assert ds.shape == (1, 4, 7) and ds.levels == 256


def test_channels_last_images_are_transposed(tmp_path):
    data = np.random.default_rng(3).integers(0, 256, size=(10, 6, 5, 3), dtype=np.uint8)
    ds = load_dataset(save_npy(tmp_path, data))
    assert ds.shape == (3, 6, 5)
    recovered = ds.quantize(torch.cat([ds.to_data_units(ds.train), ds.to_data_units(ds.test)]))
    assert np.array_equal(sorted_rows(recovered.numpy()), sorted_rows(data.transpose(0, 3, 1, 2)))


def test_ambiguous_channel_axes_stay_channels_first(tmp_path):
    # Second axis 3 and last axis 3: read as N×C×H×W (the documented rule needs the second axis not 1/3/4).
    data = np.zeros((4, 3, 8, 3), dtype=np.uint8)
    assert load_dataset(save_npy(tmp_path, data)).shape == (3, 8, 3)


def test_binary_integer_images_have_two_levels(tmp_path):
    data = np.random.default_rng(4).integers(0, 2, size=(12, 4, 4), dtype=np.uint8)
    ds = load_dataset(save_npy(tmp_path, data))
    assert ds.levels == 2
    assert set(torch.unique(ds.train).tolist()) == {-1.0, 1.0}


def test_bool_images_are_binary(tmp_path):
    data = np.random.default_rng(5).integers(0, 2, size=(12, 4, 4)).astype(bool)
    assert load_dataset(save_npy(tmp_path, data)).levels == 2


def test_float_images_use_train_min_max(tmp_path):
    data = np.random.default_rng(6).uniform(-3.0, 7.0, size=(30, 1, 4, 4)).astype(np.float32)
    ds = load_dataset(save_npy(tmp_path, data))
    assert ds.levels is None and ds.kind == "image"
    assert ds.train.min().item() == pytest.approx(-1.0, abs=1e-6)
    assert ds.train.max().item() == pytest.approx(1.0, abs=1e-6)
    train_data = ds.to_data_units(ds.train)
    assert ds.shift.item() == pytest.approx((train_data.max() + train_data.min()).item() / 2, rel=1e-5)
    # quantize leaves continuous data alone
    assert torch.equal(ds.quantize(train_data), train_data)
    np.testing.assert_allclose(sorted_rows(all_in_data_units(ds)), sorted_rows(data), atol=1e-5)


@pytest.mark.parametrize("key", ["x", "data", "images", "arr_0", "whatever"])
def test_npz_key_choice(tmp_path, key):
    data = np.random.default_rng(7).normal(size=(10, 4))
    arrays = {key: data} if key == "whatever" else {key: data, "labels": np.arange(10)}
    path = tmp_path / "set.npz"
    np.savez(path, **arrays)
    ds = load_dataset(str(path))
    assert ds.shape == (4,) and ds.name == "set"
    np.testing.assert_allclose(sorted_rows(all_in_data_units(ds)), sorted_rows(data), atol=1e-5)


# --- image folders -------------------------------------------------------------------------------------


def test_folder_of_grey_pngs_recursive_skipping_other_files(tmp_path):
    rng = np.random.default_rng(8)
    images = [rng.integers(0, 256, size=(4, 5), dtype=np.uint8) for _ in range(5)]
    for i, img in enumerate(images):
        save_png(tmp_path / "faces" / ("sub" if i % 2 else "") / f"{i}.png", img)
    (tmp_path / "faces" / "notes.txt").write_text("not an image")
    save_png(tmp_path / "faces" / ".hidden" / "x.png", np.zeros((9, 9), dtype=np.uint8))  # other size: skipped
    ds = load_dataset(str(tmp_path / "faces"), test_fraction=0.2)
    assert (ds.kind, ds.shape, ds.levels, ds.name) == ("image", (1, 4, 5), 256, "faces")
    assert len(ds.train) == 4 and len(ds.test) == 1
    recovered = ds.quantize(torch.cat([ds.to_data_units(ds.train), ds.to_data_units(ds.test)]))
    assert np.array_equal(sorted_rows(recovered.numpy()), sorted_rows(np.stack(images)[:, None]))


def test_folder_mixing_grey_rgb_and_jpeg_is_rgb(tmp_path):
    folder = tmp_path / "mixed"
    save_png(folder / "a.png", np.full((6, 4), 200, dtype=np.uint8))
    save_png(folder / "b.png", np.zeros((6, 4, 3), dtype=np.uint8))
    Image.fromarray(np.full((6, 4, 3), 90, dtype=np.uint8)).save(folder / "c.JPG")
    Image.fromarray(np.full((6, 4, 4), 255, dtype=np.uint8), mode="RGBA").save(folder / "d.png")
    ds = load_dataset(str(folder), test_fraction=0.25)
    assert ds.shape == (3, 6, 4)
    means = sorted(ds.to_data_units(torch.cat([ds.train, ds.test])).mean(dim=(1, 2, 3)).round().tolist())
    assert means[0] == 0 and means[2] == 200 and means[3] == 255 and abs(means[1] - 90) <= 3  # JPEG is lossy


# --- splits and scaling metadata -----------------------------------------------------------------------


def test_split_is_fixed_by_seed(tmp_path):
    path = save_npy(tmp_path, np.random.default_rng(9).normal(size=(50, 2)))
    a, b, c = load_dataset(path, seed=1), load_dataset(path, seed=1), load_dataset(path, seed=2)
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    assert not torch.equal(a.test, c.test)
    assert len(a.test) == 5


@pytest.mark.parametrize("n, fraction, n_test", [(50, 0.001, 1), (2, 0.99, 1), (10, 0.5, 5), (1797, 0.1, 180)])
def test_split_sizes(tmp_path, n, fraction, n_test):
    ds = load_dataset(save_npy(tmp_path, np.random.default_rng(10).normal(size=(n, 2))), test_fraction=fraction)
    assert len(ds.test) == n_test and len(ds.train) == n - n_test


def test_round_trip_between_units(tmp_path):
    ds = load_dataset(save_npy(tmp_path, np.random.default_rng(11).normal(3.0, 2.0, size=(40, 5))))
    x = torch.randn(7, 5, generator=gen(), dtype=torch.float64)
    assert torch.allclose(ds.to_model_units(ds.to_data_units(x)), x, atol=1e-6)
    assert torch.allclose(ds.to_data_units(ds.to_model_units(x)), x, atol=1e-6)
    assert ds.to_model_units(torch.arange(5, dtype=torch.int64)).dtype == torch.float32


def test_quantize_rounds_and_clips_integer_data(tmp_path):
    ds = load_dataset(save_npy(tmp_path, np.zeros((4, 3, 3), dtype=np.uint8) + 7))
    x = torch.tensor([-3.0, 0.4, 0.6, 254.7, 300.0])
    assert ds.quantize(x).tolist() == [0.0, 0.0, 1.0, 255.0, 255.0]


def test_json_round_trip_restores_scaling_without_data(tmp_path):
    ds = load_dataset(save_npy(tmp_path, np.random.default_rng(12).normal(size=(30, 3)) * 7 + 2))
    text = ds.to_json()
    assert json.loads(text)["kind"] == "vector"
    restored = Dataset.from_json(text)
    assert (restored.kind, restored.shape, restored.levels, restored.name) == (ds.kind, ds.shape, ds.levels, ds.name)
    assert torch.equal(restored.shift, ds.shift) and torch.equal(restored.scale, ds.scale)
    assert restored.train.shape == (0, 3)
    assert torch.equal(restored.to_data_units(ds.train), ds.to_data_units(ds.train))
    image = load_dataset("digits")
    restored_image = Dataset.from_json(json.loads(image.to_json()))  # a parsed dict is accepted too
    assert restored_image.levels == 17 and restored_image.shift.shape == (1, 1, 1)


@pytest.mark.parametrize("text", ["{not json", '{"kind": "vector"}', '{"kind": "audio", "shape": [2], '
                                  '"levels": null, "shift": [0, 0], "scale": [1, 1], "name": "x"}'])
def test_bad_json_metadata_raises_user_error(text):
    with pytest.raises(UserError) as info:
        Dataset.from_json(text)
    assert "\n" not in str(info.value)


# --- errors --------------------------------------------------------------------------------------------


def _write(tmp_path, name, content):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return str(path)


def _bytes_of(save, *args, **kwargs):
    """What np.save / np.savez would write to a file, as bytes."""
    buffer = io.BytesIO()
    save(buffer, *args, **kwargs)
    return buffer.getvalue()


def _images_folder(tmp_path, sizes):
    for i, (h, w) in enumerate(sizes):
        save_png(tmp_path / "imgs" / f"{i}.png", np.zeros((h, w), dtype=np.uint8))
    return str(tmp_path / "imgs")


def _empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    return str(tmp_path / "empty")


def _folder_with_unreadable_image(tmp_path):
    folder = _images_folder(tmp_path, [(4, 4), (4, 4)])
    _write(tmp_path, "imgs/x.png", b"not a png")
    return folder


def _npz_with_keys(tmp_path):
    np.savez(tmp_path / "multi.npz", a=np.zeros((3, 2)), b=np.zeros((3, 2)))
    return str(tmp_path / "multi.npz")


ERROR_CASES = {
    "unknown name": (lambda p: "cifar10", "built-ins are digits, mnist"),
    "missing path": (lambda p: str(p / "nope.npy"), "no such file"),
    "path with newline": (lambda p: str(p / "bad\nname.npy"), "no such file"),
    "unsupported extension": (lambda p: _write(p, "data.csv", b"1,2\n3,4\n"), "unsupported file type"),
    "1-d array": (lambda p: save_npy(p, np.zeros(10)), "dims"),
    "5-d array": (lambda p: save_npy(p, np.zeros((2, 1, 2, 2, 2))), "dims"),
    "one example": (lambda p: save_npy(p, np.zeros((1, 3))), "at least 2"),
    "nan": (lambda p: save_npy(p, np.array([[0.0, np.nan], [1.0, 2.0]])), "NaN"),
    "inf": (lambda p: save_npy(p, np.array([[0.0, np.inf], [1.0, 2.0]])), "infinite"),
    "negative integer images": (lambda p: save_npy(p, np.full((3, 4, 4), -1, dtype=np.int16)), "0..255"),
    "integer images over 255": (lambda p: save_npy(p, np.full((3, 4, 4), 300, dtype=np.uint16)), "0..255"),
    "complex dtype": (lambda p: save_npy(p, np.zeros((3, 2), dtype=np.complex64)), "dtype"),
    "long double beyond float64": (lambda p: save_npy(p, np.array([[0.0, 1.0], [2.0, 3.0]], dtype=np.longdouble)
                                                     * np.longdouble(1e308) * np.longdouble(1e10)), "infinite"),
    "corrupt npy": (lambda p: _write(p, "bad.npy", b"garbage" * 10), "cannot read"),
    "truncated npy": (lambda p: _write(p, "cut.npy", _bytes_of(np.save, np.zeros((100, 10)))[:300]), "cannot read"),
    "npz saved as npy": (lambda p: _write(p, "renamed.npy", _bytes_of(np.savez, x=np.zeros((3, 2)))), ".npz archive"),
    "corrupt npz": (lambda p: _write(p, "bad.npz", b"garbage" * 10), "cannot read"),
    "npz without a known key": (_npz_with_keys, "['a', 'b']"),
    "empty folder": (_empty_folder, "holds no"),
    "mixed image sizes": (lambda p: _images_folder(p, [(4, 4), (4, 4), (5, 4)]), "differ in size"),
    "single image": (lambda p: _images_folder(p, [(4, 4)]), "at least 2"),
    "unreadable image": (_folder_with_unreadable_image, "cannot read image"),
    "test_fraction": (lambda p: "moons", "test_fraction"),
}


@pytest.mark.parametrize("case", ERROR_CASES)
def test_bad_input_raises_one_line_user_error(tmp_path, case):
    make_spec, expected = ERROR_CASES[case]
    spec = make_spec(tmp_path)
    options = {"test_fraction": 1.5} if case == "test_fraction" else {}
    with pytest.raises(UserError) as info:
        load_dataset(spec, **options)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message and "\r" not in message


def test_long_double_arrays_load_as_float64(tmp_path):
    """torch has no long double: such an array is read as float64 (it was a raw TypeError)."""
    values = np.linspace(-1, 1, 12).reshape(6, 2)
    got = load_dataset(save_npy(tmp_path, values.astype(np.longdouble)))
    expected = load_dataset(save_npy(tmp_path, values, name="f64.npy"))
    assert got.train.dtype == expected.train.dtype
    assert torch.equal(got.train, expected.train) and torch.equal(got.test, expected.test)


def test_unknown_name_mentions_paths():
    with pytest.raises(UserError, match="path"):
        load_dataset("imagenet")


@pytest.mark.parametrize("options", [{"n_toy": 1}, {"seed": -1}, {"test_fraction": 0.0}])
def test_bad_options_raise_user_error(options):
    with pytest.raises(UserError):
        load_dataset("moons", **options)
