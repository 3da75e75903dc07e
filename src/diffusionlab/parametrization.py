"""What the network predicts: ε, x₀, v or the score — and the conversions between them.

With x_t = α x₀ + σ ε (α, σ at the same time t) the four are linear in each other:

    ε from x₀:     ε = (x_t − α x₀)/σ            x₀ from ε:     x₀ = (x_t − σ ε)/α
    v := α ε − σ x₀ (Salimans & Ho 2022, §4; general α, σ):
                   x₀ = (α x_t − σ v)/(α² + σ²),  ε = (σ x_t + α v)/(α² + σ²)
    score := ∇ log p_t(x_t) = −ε/σ  (for the conditional q(x_t|x₀) exactly; for p_t by Tweedie/Vincent 2011)

This is the only module that converts; every loss and every sampler goes through it (diffusers #1486,
#7012 came from conversions written in several places). ``Denoiser`` wraps any callable ``model(x, t)`` with
what it predicts, so samplers and losses never ask which process or parametrization trained the model.
"""

from __future__ import annotations

from typing import Callable, Literal, NamedTuple

from torch import Tensor

from ._tensor import as_time, bcast
from .errors import UserError

Prediction = Literal["eps", "x0", "v", "score"]
PREDICTIONS: tuple[str, ...] = ("eps", "x0", "v", "score")


def check_prediction(prediction: str) -> str:
    if prediction not in PREDICTIONS:
        raise UserError(f"unknown prediction {prediction!r}: choose one of {', '.join(PREDICTIONS)}")
    return prediction


def to_x0_eps(pred: Tensor, prediction: str, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """(x̂₀, ε̂) from a network output ``pred`` of kind ``prediction`` at x_t; α, σ of shape (n,) or 0-d."""
    a, s = bcast(alpha, x_t), bcast(sigma, x_t)
    if prediction == "eps":
        return (x_t - s * pred) / a, pred
    if prediction == "x0":
        return pred, (x_t - a * pred) / s
    if prediction == "v":
        norm = a**2 + s**2
        return (a * x_t - s * pred) / norm, (s * x_t + a * pred) / norm
    if prediction == "score":
        eps = -s * pred
        return (x_t - s * eps) / a, eps
    raise UserError(f"unknown prediction {prediction!r}: choose one of {', '.join(PREDICTIONS)}")


def from_x0_eps(x0: Tensor, eps: Tensor, prediction: str, alpha: Tensor, sigma: Tensor) -> Tensor:
    """The quantity of kind ``prediction`` given x₀ and ε (the regression target of training)."""
    a, s = bcast(alpha, x0), bcast(sigma, x0)
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return a * eps - s * x0
    if prediction == "score":
        return -eps / s
    raise UserError(f"unknown prediction {prediction!r}: choose one of {', '.join(PREDICTIONS)}")


class Denoised(NamedTuple):
    """A model's prediction at (x_t, t), in the two forms samplers use."""

    x0: Tensor
    eps: Tensor


def checked_prediction(pred, x: Tensor) -> Tensor:
    """``pred``, after checking that the model returned a tensor of the input's shape (broadcasting would turn an
    (n, 1) or (d,) output into a finite loss and silently train the wrong thing)."""
    if not isinstance(pred, Tensor) or pred.shape != x.shape or not pred.is_floating_point():
        got = (f"{tuple(pred.shape)} {pred.dtype}" if isinstance(pred, Tensor) else
               f"a {type(pred).__name__} (a model returning an output object: pass a function returning its tensor)")
        raise UserError(f"the model returned {got} for input {tuple(x.shape)}; it must return a real tensor of the "
                        "input's shape")
    return pred if pred.dtype == x.dtype else pred.to(x.dtype)  # the state keeps x's dtype


class Denoiser:
    """Any ``model(x, t) -> prediction`` plus what it predicts and the process it lives on.

    ``denoiser(x, t)`` returns ``Denoised(x0, eps)``; ``t`` is a float, a 0-d tensor or a (n,) tensor.
    The model receives t as a (n,) tensor of x's dtype (float64 in, float64 out). ``nfe`` counts model calls.
    """

    def __init__(self, model: Callable[[Tensor, Tensor], Tensor], process, prediction: str = "eps"):
        self.model, self.process, self.prediction = model, process, check_prediction(prediction)
        self.nfe = 0

    def __call__(self, x: Tensor, t) -> Denoised:
        t = as_time(t, x.shape[0], like=x)
        pred = checked_prediction(self.model(x, t), x)
        self.nfe += 1
        return Denoised(*to_x0_eps(pred, self.prediction, x, self.process.alpha(t), self.process.sigma(t)))

    def score(self, x: Tensor, t) -> Tensor:
        """∇ log p_t(x) = −ε̂/σ(t)."""
        t = as_time(t, x.shape[0], like=x)
        return -self(x, t).eps / bcast(self.process.sigma(t), x)
