"""Training infrastructure, generic over the loss: the trainer, EMA weights and safe checkpoints.

Nothing here knows about diffusion; a diffusion model is trained by passing its loss as ``loss_fn``.
"""

from diffusionlab.training.checkpoint import Checkpoint, checkpoint_exists, load_checkpoint, save_checkpoint
from diffusionlab.training.ema import EMA, ema_decay
from diffusionlab.training.trainer import TrainConfig, TrainResult, linear_warmup_lr, train

__all__ = [
    "EMA",
    "Checkpoint",
    "TrainConfig",
    "TrainResult",
    "checkpoint_exists",
    "ema_decay",
    "linear_warmup_lr",
    "load_checkpoint",
    "save_checkpoint",
    "train",
]
