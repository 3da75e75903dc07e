"""Neural networks ``f(x, t)`` for diffusion models: an MLP for vectors and a U-Net for images.

Both map ``x`` and a time ``t`` in ``[0, 1]`` to a tensor shaped like ``x``, and both carry a ``config``
dict that :func:`build_network` turns back into an identical (freshly initialised) network.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

from diffusionlab.errors import UserError
from diffusionlab.nets.embeddings import TimeEmbedding, sinusoidal_embedding
from diffusionlab.nets.mlp import MLP
from diffusionlab.nets.unet import UNet

__all__ = ["MLP", "UNet", "TimeEmbedding", "sinusoidal_embedding", "build_network", "count_parameters"]

NETWORKS: dict[str, type[nn.Module]] = {"mlp": MLP, "unet": UNet}


def build_network(config: Mapping[str, Any]) -> nn.Module:
    """Build a network from a config such as ``{"type": "unet", "in_channels": 1, "image_size": 8}``.

    ``type`` picks the class (``"mlp"`` or ``"unet"``); every other key is a constructor argument, and
    arguments left out take their defaults. ``build_network(net.config)`` rebuilds ``net``'s architecture.

    Raises:
        UserError: for a missing or unknown ``type`` or an unknown key.
    """
    if not isinstance(config, Mapping):
        raise UserError(f"network config must be a dict with a 'type' key, got {type(config).__name__}")
    kwargs = dict(config)
    kind = kwargs.pop("type", None)
    if kind not in NETWORKS:
        raise UserError(f"unknown network type {kind!r}; valid types: {', '.join(sorted(NETWORKS))}")
    cls = NETWORKS[kind]
    valid = [name for name in inspect.signature(cls).parameters]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise UserError(
            f"unknown key(s) {', '.join(map(repr, unknown))} for network type {kind!r}; "
            f"valid keys: type, {', '.join(valid)}"
        )
    try:
        return cls(**kwargs)
    except TypeError as err:  # a missing required argument, e.g. the MLP's dim
        raise UserError(f"bad {kind!r} network config: {err}") from None


def count_parameters(module: nn.Module) -> int:
    """Total number of scalar parameters in ``module`` (trainable or not)."""
    return sum(p.numel() for p in module.parameters())
