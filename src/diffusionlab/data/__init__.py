"""Data: built-in and user data sets scaled to model units, 2-D toy sets, and exact Gaussian mixtures.

``load_dataset(spec)`` turns a name (see ``BUILTIN_DATASETS``) or a path into a :class:`Dataset`;
:class:`GaussianMixture` and :func:`eps_predictor` give closed-form ground truth (densities, scores, the
optimal noise predictor) to test models and samplers against.
"""

from diffusionlab.data.loading import BUILTIN_DATASETS, Dataset, load_dataset
from diffusionlab.data.mixture import GaussianMixture, eps_predictor
from diffusionlab.data.toy import checkerboard, moons, ring8, swissroll

__all__ = [
    "BUILTIN_DATASETS",
    "Dataset",
    "GaussianMixture",
    "checkerboard",
    "eps_predictor",
    "load_dataset",
    "moons",
    "ring8",
    "swissroll",
]
