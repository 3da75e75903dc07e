"""Pictures of samples: image grids, sampling trajectories, 2-D scatter plots.

Figures are drawn with :class:`matplotlib.figure.Figure` and the Agg canvas directly, never through
pyplot, so importing this module neither switches the process-wide backend nor keeps figures alive.
Every file is written atomically — to a temporary file in the target folder, then :func:`os.replace` —
so a crash leaves either the old file or the new one, never half an image.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from diffusionlab._files import checked_output_path, write_atomically
from diffusionlab.errors import UserError

# Small images (8x8 digits) are enlarged by an integer nearest-neighbour factor until the file is at least
# this wide, so that pixels stay sharp squares and the picture is visible without zooming.
MIN_WIDTH_PX = 512
# A trajectory strip shows at most this many time steps; a trajectory panel row at most this many.
MAX_STRIP_FRAMES = 10
N_SCATTER_PANELS = 6
# GIF timing: every step briefly, the final samples long enough to look at.
GIF_FRAME_MS = 80
GIF_LAST_FRAME_MS = 1500
# Padding between grid cells is white, so that it separates dark-background images (digits) clearly.
PAD_VALUE = 255

_IMAGE_SUFFIXES = (".png",)
_TRAJECTORY_SUFFIXES = (".png", ".gif")
_FIGURE_SUFFIXES = (".png", ".pdf", ".svg")


# --------------------------------------------------------------------------------------------- files


def _save_pil(image: Image.Image, path: Path, **options) -> None:
    """Save a Pillow image atomically; the format comes from the extension of ``path``."""
    image_format = path.suffix.lower().lstrip(".")
    write_atomically(path, lambda handle: image.save(handle, format=image_format, **options))


def _save_figure(figure: Figure, path: Path) -> None:
    """Render a matplotlib figure with the Agg canvas and save it atomically (fixed size, no tight bbox)."""
    FigureCanvasAgg(figure)
    image_format = path.suffix.lower().lstrip(".")
    write_atomically(path, lambda handle: figure.savefig(handle, format=image_format))


# -------------------------------------------------------------------------------------------- images


IMAGE_CHANNELS = (1, 3)  # grey or RGB: what a picture of images can show
MIN_POINT_DIMS = 2  # a scatter plot shows the first two coordinates


def drawable(kind: str, shape) -> bool:
    """Whether examples of ``shape`` (without the batch axis) have a picture: images with C in
    ``IMAGE_CHANNELS``, vectors of at least ``MIN_POINT_DIMS`` coordinates."""
    return shape[0] in IMAGE_CHANNELS if kind == "image" else shape[0] >= MIN_POINT_DIMS


def _as_images(images, name: str = "images") -> torch.Tensor:
    """``images`` as a float (n, C, H, W) CPU tensor with C in {1, 3}, clipped to [0, 1]."""
    images = torch.as_tensor(images).detach().cpu().float()
    if images.ndim != 4 or images.shape[0] == 0 or not drawable("image", images.shape[1:]):
        raise UserError(
            f"{name} must be a non-empty (n, C, H, W) tensor with C = 1 or 3, got shape {tuple(images.shape)}"
        )
    if torch.isnan(images).any():
        raise UserError(f"{name} contain NaN values; check the model or sampler that produced them")
    # Samplers overshoot [0, 1] slightly; clipping is what any image viewer would do anyway.
    return images.clamp(0.0, 1.0)


def _grid(images: torch.Tensor, ncol: int, padding: int) -> np.ndarray:
    """Tile (n, C, H, W) images in [0, 1] row by row, ``ncol`` per row, into an (H', W', C) uint8 array."""
    n, channels, height, width = images.shape
    nrows = math.ceil(n / ncol)
    grid = np.full(
        (nrows * (height + padding) + padding, ncol * (width + padding) + padding, channels),
        PAD_VALUE,
        dtype=np.uint8,
    )
    pixels = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for index, image in enumerate(pixels):
        top = padding + (index // ncol) * (height + padding)
        left = padding + (index % ncol) * (width + padding)
        grid[top : top + height, left : left + width] = image
    return grid


def _auto_scale(width: int) -> int:
    """Smallest integer factor that makes ``width`` pixels at least :data:`MIN_WIDTH_PX` wide."""
    return max(1, math.ceil(MIN_WIDTH_PX / width))


def _to_pil(grid: np.ndarray, scale: int) -> Image.Image:
    """(H, W, C) uint8 array, enlarged ``scale`` times by pixel repetition (nearest neighbour), as an image."""
    enlarged = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    if enlarged.shape[2] == 1:
        return Image.fromarray(enlarged[:, :, 0], mode="L")
    return Image.fromarray(enlarged, mode="RGB")


def _columns(n: int, nrow: int | None) -> int:
    """Images per grid row: ``nrow`` if given, else ceil(sqrt(n)) for a roughly square grid."""
    if nrow is None:
        return math.ceil(math.sqrt(n))
    if nrow < 1:
        raise UserError(f"nrow must be at least 1, got {nrow}")
    return nrow


def save_image_grid(images, path, nrow: int | None = None, padding: int = 1, scale: int | None = None) -> None:
    """Write (n, C, H, W) images with values in [0, 1] (C = 1 or 3) as one PNG grid.

    ``nrow`` is the number of images per row (default ceil(√n)); cells are separated by ``padding`` white
    pixels. The grid is enlarged by the integer nearest-neighbour factor ``scale``; by default the smallest
    one that makes the file at least 512 px wide.
    """
    path = checked_output_path(path, _IMAGE_SUFFIXES)
    if padding < 0:
        raise UserError(f"padding must be non-negative, got {padding}")
    if scale is not None and scale < 1:
        raise UserError(f"scale must be a positive integer, got {scale}")
    images = _as_images(images)
    grid = _grid(images, _columns(images.shape[0], nrow), padding)
    _save_pil(_to_pil(grid, scale or _auto_scale(grid.shape[1])), path)


# ---------------------------------------------------------------------------------------- trajectories


def _evenly_spaced(count: int, keep: int) -> list[int]:
    """At most ``keep`` indices into range(count), evenly spaced, always including the first and the last."""
    if count <= keep:
        return list(range(count))
    return sorted({round(i * (count - 1) / (keep - 1)) for i in range(keep)})


def _as_frames(frames) -> list[torch.Tensor]:
    """Check that ``frames`` is a non-empty list of equally shaped image batches; return them as images."""
    frames = [_as_images(frame, "each trajectory frame") for frame in frames]
    if not frames:
        raise UserError("the trajectory has no frames; record at least one step of the sampler")
    if any(frame.shape != frames[0].shape for frame in frames):
        raise UserError("all trajectory frames must have the same shape (n, C, H, W)")
    return frames


def save_trajectory(frames, path, nrow: int | None = None) -> None:
    """Write a sampling trajectory: ``frames`` is a list of (n, C, H, W) batches in [0, 1], from x_T to x_0.

    * ``.png``: a strip with one row per sample and one column per time, for at most 10 evenly spaced
      frames that always include the first (noise) and the last (samples).
    * ``.gif``: an animation whose every frame is the grid of all n samples at one time (``nrow`` images per
      grid row, default ceil(√n)); the final frame is held longer. Pillow merges consecutive identical
      frames into one, so a trajectory that stops changing has fewer GIF frames than ``frames``.

    Small images are enlarged as in :func:`save_image_grid`.
    """
    path = checked_output_path(path, _TRAJECTORY_SUFFIXES)
    frames = _as_frames(frames)
    if path.suffix.lower() == ".gif":
        _save_gif(frames, path, _columns(frames[0].shape[0], nrow))
    else:
        _save_strip(frames, path)


def _save_strip(frames: list[torch.Tensor], path: Path) -> None:
    """PNG with sample i of the shown frames along row i."""
    shown = [frames[index] for index in _evenly_spaced(len(frames), MAX_STRIP_FRAMES)]
    # (T, n, C, H, W) -> (n, T, C, H, W) -> (n*T, C, H, W): sample-major, so each grid row is one sample.
    strip = torch.stack(shown, dim=1).flatten(0, 1)
    grid = _grid(strip, len(shown), padding=1)
    _save_pil(_to_pil(grid, _auto_scale(grid.shape[1])), path)


def _save_gif(frames: list[torch.Tensor], path: Path, ncol: int) -> None:
    """Animated GIF of the sample grid over time, looping forever."""
    grids = [_grid(frame, ncol, padding=1) for frame in frames]
    scale = _auto_scale(grids[0].shape[1])
    pictures = [_to_pil(grid, scale) for grid in grids]
    durations = [GIF_FRAME_MS] * (len(pictures) - 1) + [GIF_LAST_FRAME_MS]
    _save_pil(pictures[0], path, save_all=True, append_images=pictures[1:], duration=durations, loop=0)


# ---------------------------------------------------------------------------------------- 2-D scatter


def _as_points(points, name: str) -> torch.Tensor:
    """``points`` as a float (n, D) CPU tensor with D >= 2."""
    points = torch.as_tensor(points).detach().cpu().float()
    if points.ndim != 2 or not drawable("vector", points.shape[1:]):
        raise UserError(f"{name} must be an (n, D) array with D >= 2, got shape {tuple(points.shape)}")
    return points


def _draw_points(axes, points: torch.Tensor, reference: torch.Tensor | None) -> None:
    """Scatter the first two coordinates of ``points`` over an optional light-grey ``reference`` cloud."""
    if reference is not None:
        axes.scatter(reference[:, 0], reference[:, 1], s=2, color="lightgrey", linewidths=0, zorder=1)
    axes.scatter(points[:, 0], points[:, 1], s=2, color="tab:blue", alpha=0.7, linewidths=0, zorder=2)


def save_scatter(points, path, reference=None, title: str | None = None) -> None:
    """Scatter plot of (n, D) points on a fixed 5 x 5 inch, 100 dpi figure (500 x 500 px as PNG).

    An optional ``reference`` cloud (e.g. the training data) is drawn in light grey behind the points.
    Axes have equal aspect, so shapes are not distorted. For D > 2 only the first two coordinates are
    plotted, and the title says so. Extensions: .png, .pdf, .svg.
    """
    path = checked_output_path(path, _FIGURE_SUFFIXES)
    points = _as_points(points, "points")
    reference = None if reference is None else _as_points(reference, "reference")
    figure = Figure(figsize=(5, 5), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    _draw_points(axes, points, reference)
    # Equal units on both axes; the limits (not the box) stretch, so the figure size stays fixed.
    axes.set_aspect("equal", adjustable="datalim")
    axes.set_title(_scatter_title(title, points.shape[1]))
    _save_figure(figure, path)


def _scatter_title(title: str | None, dim: int) -> str:
    """``title``, plus a note when only 2 of ``dim`` coordinates are shown."""
    note = f"(first 2 of {dim} coordinates)" if dim > 2 else ""
    return " ".join(part for part in (title, note) if part)


def save_trajectory_2d(frames, path) -> None:
    """A row of scatter panels of 2-D points at ~6 evenly spaced times, from x_T (noise) to x_0 (data).

    ``frames`` is a list of (n, D) tensors ordered from noise to data (D > 2: first two coordinates).
    All panels share the same square axis limits so that the contraction from noise to data is visible.
    Each panel is 2.5 inches square at 100 dpi (250 px tall, 250 px per panel wide as PNG).
    Extensions: .png, .pdf, .svg.
    """
    path = checked_output_path(path, _FIGURE_SUFFIXES)
    frames = [_as_points(frame, "each trajectory frame") for frame in frames]
    if not frames:
        raise UserError("the trajectory has no frames; record at least one step of the sampler")
    indices = _evenly_spaced(len(frames), N_SCATTER_PANELS)
    shown = [frames[index] for index in indices]
    labels = [_panel_title(index, len(frames)) for index in indices]
    low, high = _square_limits(torch.cat(shown))
    figure = Figure(figsize=(2.5 * len(shown), 2.5), dpi=100, layout="constrained")
    for position, (points, label) in enumerate(zip(shown, labels), start=1):
        axes = figure.add_subplot(1, len(shown), position)
        _draw_points(axes, points, None)
        axes.set_xlim(low, high)
        axes.set_ylim(low, high)
        axes.set_aspect("equal", adjustable="box")
        axes.set_title(label, fontsize=9)
        axes.tick_params(labelsize=7)
    _save_figure(figure, path)


def _square_limits(points: torch.Tensor) -> tuple[float, float]:
    """One (low, high) range covering both plotted coordinates of ``points``, with a 5 % margin."""
    low = points[:, :2].min().item()
    high = points[:, :2].max().item()
    margin = 0.05 * (high - low) or 1.0  # a single point or a constant cloud still gets a visible box
    return low - margin, high + margin


def _panel_title(index: int, count: int) -> str:
    """Panel label: noise, data, or the step number in between."""
    if index == count - 1:
        return f"x_0 (step {index})"
    if index == 0:
        return "x_T (noise)"
    return f"step {index}/{count - 1}"
