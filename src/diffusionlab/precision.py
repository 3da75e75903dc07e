"""Mixed precision: a network evaluated under ``torch.autocast`` with its output handed back in float32.

One wrapper serves training (``TrainConfig.precision``) and sampling (``sample --precision``): matrix products
and convolutions run in bfloat16, whatever the caller computes from the output (a loss, a sampler step) in
float32; the weights are never converted.
"""

from __future__ import annotations

from typing import Any

import torch

PRECISIONS = ("fp32", "bf16")


class Autocast(torch.nn.Module):
    """``module`` run under ``torch.autocast(device_type, dtype)``, its low-precision outputs cast to float32.

    The cast back means that whatever the caller computes from the output (a loss, a parametrization change)
    is done in float32, as in ``accelerate``'s mixed precision. Holds no parameters of its own: save
    ``module``, not this wrapper.
    """

    def __init__(self, module: torch.nn.Module, device_type: str, dtype: torch.dtype):
        super().__init__()
        self.module, self.device_type, self.dtype = module, device_type, dtype

    def forward(self, *args, **kwargs):
        with torch.autocast(self.device_type, dtype=self.dtype):
            out = self.module(*args, **kwargs)
        return _to_float32(out, self.dtype)


def _to_float32(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype == dtype else value
    if isinstance(value, (list, tuple)):
        return type(value)(_to_float32(v, dtype) for v in value)
    if isinstance(value, dict):
        return {key: _to_float32(v, dtype) for key, v in value.items()}
    return value


def with_precision(model: torch.nn.Module, precision: str, device_type: str | None = None) -> torch.nn.Module:
    """``model`` itself for ``"fp32"``; wrapped in :class:`Autocast` (bfloat16, on ``device_type``, by default
    the device of the model's first parameter) for ``"bf16"``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return model
    if device_type is None:
        device_type = next(model.parameters()).device.type
    return Autocast(model, device_type, torch.bfloat16)
