"""Evaluation: distribution metrics for samples, and pictures of samples and sampling trajectories."""

from diffusionlab.evaluation.metrics import (
    component_weight_tv,
    nearest_neighbour_distances,
    sliced_wasserstein,
    sliced_wasserstein_floor,
)
from diffusionlab.evaluation.plots import (
    save_image_grid,
    save_scatter,
    save_trajectory,
    save_trajectory_2d,
)

__all__ = [
    "component_weight_tv",
    "nearest_neighbour_distances",
    "save_image_grid",
    "save_scatter",
    "save_trajectory",
    "save_trajectory_2d",
    "sliced_wasserstein",
    "sliced_wasserstein_floor",
]
