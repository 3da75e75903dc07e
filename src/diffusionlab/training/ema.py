"""Exponential moving average (EMA) of a model's weights.

Diffusion models are sampled from an EMA of the training weights: the raw weights jitter with every noisy
gradient step, and samples from them are visibly worse. The EMA keeps a shadow copy ``s`` of every parameter and
buffer and after each optimizer step moves it toward the live weights ``w``: ``s <- d * s + (1 - d) * w``.

The decay ``d`` is warmed up as ``min(decay, (1 + step) / (10 + step))``. This is the ``num_updates`` form of
TensorFlow's ``tf.train.ExponentialMovingAverage`` (also used by the original DDPM code). Without it the shadow
starts at the random initialisation and, with ``decay=0.9999``, needs ~10,000 steps to forget it; with it, the
early EMA follows the live weights closely and only slowly becomes a long average.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping

import torch

from diffusionlab.errors import UserError
from diffusionlab.training.checkpoint import check_state_keys


def ema_decay(step: int, decay: float) -> float:
    """The warmed-up decay for update number ``step`` (0-based): ``min(decay, (1 + step) / (10 + step))``."""
    return min(decay, (1.0 + step) / (10.0 + step))


class EMA:
    """A shadow copy of a module's parameters and buffers, updated as an exponential moving average.

    Floating-point entries are averaged; integer buffers (e.g. BatchNorm's ``num_batches_tracked``) are copied,
    since averaging counters is meaningless. The shadow lives on the module's device.
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.999):
        if isinstance(decay, bool) or not isinstance(decay, numbers.Real) or not 0.0 <= decay < 1.0:
            raise UserError(f"EMA decay must be a number in [0, 1), got {decay!r}; typical values are 0.999 or 0.9999")
        self.decay = float(decay)
        self.shadow = {name: value.detach().clone() for name, value in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        """Move the shadow toward ``model``'s current weights, with the decay warmed up for update ``step``.

        ``lerp_`` rather than ``mul_``/``add_``: it returns the shadow unchanged, bit for bit, when the weights
        equal it, so the EMA of a model that stopped changing does not drift by rounding.
        """
        weight = 1.0 - ema_decay(step, self.decay)
        for name, value in model.state_dict().items():
            shadow = self.shadow[name]
            if shadow.is_floating_point():
                shadow.lerp_(value.detach(), weight)
            else:
                shadow.copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shadow tensors, keyed like ``model.state_dict()`` (so they load into the model directly)."""
        return dict(self.shadow)

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Copy ``state`` into the shadow; keys and shapes must match the model the EMA was built for."""
        check_state_keys(self.shadow.keys(), state, "the EMA state")
        for name, shadow in self.shadow.items():
            if state[name].shape != shadow.shape:
                raise UserError(f"the EMA state for {name!r} has shape {tuple(state[name].shape)}, the model has "
                                f"{tuple(shadow.shape)}; rebuild the model from the config stored with the checkpoint")
            shadow.copy_(state[name])

    def copy_to(self, module: torch.nn.Module) -> None:
        """Load the averaged weights into ``module`` (e.g. a copy of the model used for sampling)."""
        module.load_state_dict(self.shadow)

    def warn_if_short(self, total_steps: int) -> str | None:
        """A warning when training is shorter than the EMA's averaging horizon ``1 / (1 - decay)``, else None.

        Past the warm-up the EMA remembers roughly the last ``1 / (1 - decay)`` steps; a run shorter than that
        leaves weights from the random initialisation in the average, and samples from the EMA are pure noise
        even though the live model is fine: a common surprise with other libraries' defaults.
        """
        horizon = 1.0 / (1.0 - self.decay)
        if total_steps >= round(horizon, 9):  # round: 1 / (1 - 0.9) is 10.000000000000002
            return None
        fix = ("set ema_decay to 0 (no averaging)" if total_steps <= 1
               else f"lower ema_decay (to at most {1.0 - 1.0 / total_steps:.4g})")
        return (f"ema_decay={self.decay} averages over about {horizon:.0f} steps but training runs {total_steps}; "
                f"the EMA weights may still hold the random initialisation: {fix} or train longer")
