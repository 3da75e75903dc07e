"""A run: how a model was made (one JSON-able config) and how to get it back from its run directory.

``RUN_DIR/checkpoint.json`` holds the run config below verbatim, so ``load_run`` rebuilds exactly the
network, process and parametrization that were trained, plus the data scaling to undo on samples.

    {"data": {"spec": "digits", "seed": 0, "test_fraction": 0.1},
     "dataset": {...Dataset.to_json()...},
     "process": {"process": "ddpm", "T": 1000, "schedule": "linear"},
     "prediction": "eps",
     "objective": {"loss": "simple", "weighting": "eps", "time_sampling": "uniform"},
     "network": {"type": "unet", ...},
     "train": {"steps": ..., "batch_size": ..., "lr": ..., ...}}
"""

from __future__ import annotations

import copy
import json
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from torch import nn

from .data import Dataset
from .errors import UserError
from .nets import build_network
from .nets.precond import ScaledInput
from .objectives import DenoisingLoss, ELBOLoss
from .parametrization import check_prediction
from .processes import make_process
from .training import TrainConfig, load_checkpoint
from .training.checkpoint import one_line

DEFAULT_TRAIN = {"steps": 5000, "batch_size": 128, "lr": 2e-4, "weight_decay": 0.0, "warmup_steps": 100,
                 "grad_clip": 1.0, "ema_decay": 0.999, "checkpoint_every": 1000, "log_every": 50, "seed": 0,
                 "precision": "fp32"}


def default_network(dataset: Dataset) -> dict:
    """An MLP for vectors, a UNet for images, sized to the data."""
    if dataset.kind == "vector":
        return {"type": "mlp", "dim": dataset.shape[0], "hidden": 256, "depth": 4}
    channels, size = dataset.shape[0], dataset.shape[-1]
    if dataset.shape[-2] != size:
        raise UserError(f"the default UNet takes square images, these are {dataset.shape[-2]}×{size}: crop or pad "
                        "them to H = W, or give a network of your own with --config")
    half = -(-size // 2)  # the feature maps halve by stride-2 convolutions: ⌈size/2⌉, ⌈⌈size/2⌉/2⌉
    if size <= 16:
        return {"type": "unet", "in_channels": channels, "image_size": size, "base_channels": 64,
                "channel_mults": [1, 2], "num_res_blocks": 1, "attention_resolutions": [half]}
    return {"type": "unet", "in_channels": channels, "image_size": size, "base_channels": 64,
            "channel_mults": [1, 2, 2], "num_res_blocks": 2, "attention_resolutions": [-(-half // 2)]}


def default_config(dataset: Dataset, data: dict) -> dict:
    return {
        "data": data,
        "dataset": json.loads(dataset.to_json()),
        "process": {"process": "ddpm", "T": 1000, "schedule": "linear"},
        "prediction": "eps",
        "objective": {"loss": "simple", "weighting": "eps", "time_sampling": "uniform"},
        "network": default_network(dataset),
        "train": dict(DEFAULT_TRAIN),
    }


def merge(base: dict, override: dict) -> dict:
    """Recursive dict update (override wins); ``process`` and ``network`` given by name start fresh."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            fresh = (key == "process" and value.get("process", out[key].get("process")) != out[key].get("process")) or (
                key == "network" and value.get("type", out[key].get("type")) != out[key].get("type"))
            out[key] = copy.deepcopy(value) if fresh else merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_config_file(path: str) -> dict:
    """A JSON or TOML file of config overrides."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        text = p.read_text()
        overrides = tomllib.loads(text) if p.suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise UserError(f"cannot parse config file {path}: {str(e).splitlines()[0]}") from None
    return check_overrides(overrides, path)


# The sections a config file may set, and their types (``dataset`` is derived from the data, not set).
SECTIONS = {"data": dict, "process": dict, "prediction": str, "objective": dict, "network": dict, "train": dict}
DATA_KEYS = ("spec", "seed", "test_fraction")  # what the data section may set


def check_overrides(overrides, path: str) -> dict:
    """A config file's content: an object whose keys are known sections of the right type."""
    if not isinstance(overrides, dict):
        raise UserError(f"config file {path} must hold an object of sections ({', '.join(SECTIONS)}), "
                        f"got a {type(overrides).__name__}")
    unknown = sorted(set(overrides) - set(SECTIONS), key=str)
    if unknown:
        raise UserError(f"unknown config section(s) {', '.join(map(str, unknown))} in {path}; valid: "
                        f"{', '.join(SECTIONS)}")
    for key, kind in SECTIONS.items():
        if key in overrides and not isinstance(overrides[key], kind):
            raise UserError(f"config section {key!r} in {path} must be {'an object' if kind is dict else 'a string'}, "
                            f"got {overrides[key]!r}")
    unknown = sorted(set(overrides.get("data", {})) - set(DATA_KEYS), key=str)
    if unknown:
        raise UserError(f"unknown data option(s) {', '.join(map(str, unknown))} in {path}; valid: {', '.join(DATA_KEYS)}")
    return overrides


# The objective's options for each loss (``loss`` itself aside); a run config always holds the simple loss's
# defaults, so the ELBO tolerates them at their default values only.
OBJECTIVE_KEYS = {"simple": ("weighting", "time_sampling"), "elbo": ("variance", "time_sampling")}
_SIMPLE_DEFAULTS = {"weighting": "eps"}


def _check_objective(loss: str, objective: dict) -> None:
    """Refuse objective options that the loss would ignore (a typo or a flag that cannot take effect)."""
    valid = OBJECTIVE_KEYS[loss]
    ignored = sorted(k for k, v in objective.items() if k not in valid and _SIMPLE_DEFAULTS.get(k, object()) != v)
    if ignored:
        shown = ", ".join(f"{k}={objective[k]!r}" for k in ignored)
        raise UserError(f"objective option(s) {shown} do not apply to loss {loss!r} (its options: "
                        f"{', '.join(valid)}); drop them, or choose the loss they belong to")


def build_model(config: dict) -> nn.Module:
    """The network of a run config, wrapped in the process's input scaling."""
    net_config = dict(config["network"])
    for key in ("channel_mults", "attention_resolutions"):
        if key in net_config:
            net_config[key] = tuple(net_config[key])
    return ScaledInput(build_network(net_config), make_process(config["process"]))


def build_loss(config: dict, dataset_levels: int | None):
    """The training objective of a run config: ``simple`` (denoising / score matching) or ``elbo``."""
    process = make_process(config["process"])
    prediction = check_prediction(config["prediction"])
    objective = dict(config["objective"])
    loss = objective.pop("loss", "simple")
    if loss not in OBJECTIVE_KEYS:
        raise UserError(f"unknown loss {loss!r}: choose 'simple' or 'elbo'")
    _check_objective(loss, objective)
    if loss == "simple":
        return DenoisingLoss(process, prediction, objective.get("weighting", "eps"),
                             objective.get("time_sampling", "uniform"))
    if loss == "elbo":
        return ELBOLoss(process, prediction, objective.get("variance", "small"), dataset_levels,
                        objective.get("time_sampling", "uniform"))


def train_config(config: dict) -> TrainConfig:
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(config["train"]) - known)
    if unknown:
        raise UserError(f"unknown train option(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    return TrainConfig(**config["train"])


@dataclass
class Run:
    """A trained model ready to sample: ``model(x, t)``, its process, what it predicts, the data scaling."""

    model: nn.Module
    process: object
    prediction: str
    dataset: Dataset
    config: dict
    step: int
    checkpoint_sha256: str | None = None  # identifies the checkpoint the weights came from


def load_run(run_dir: str | Path, ema: bool = True) -> Run:
    """Rebuild the model of ``run_dir`` from its checkpoint (EMA weights unless ``ema=False``)."""
    ckpt = load_checkpoint(run_dir)
    config = ckpt.config
    missing = [key for key in ("network", "process", "prediction", "dataset") if key not in config]
    if missing:  # e.g. dl.train(..., run_config={}): the weights are there, but not how to rebuild the model
        raise UserError(f"the checkpoint in {run_dir} has no run config ({', '.join(missing)} missing): it was "
                        "trained from Python without one; load its weights into your network with "
                        "diffusionlab.training.load_checkpoint (or pass a full run_config when training)")
    try:
        model = build_model(config)
        state = ckpt.ema_state if ema and ckpt.ema_state else ckpt.model_state
        model.load_state_dict(state)
        dataset = Dataset.from_json(config["dataset"])
        process, prediction = make_process(config["process"]), check_prediction(config["prediction"])
    except (KeyError, RuntimeError, TypeError, AttributeError, ValueError) as e:
        raise UserError(f"the checkpoint in {run_dir} does not match its config ({one_line(e)[:300]}); it is damaged "
                        "or was written by another version: restore checkpoint.json from a backup") from None
    model.eval()
    return Run(model, process, prediction, dataset, config, ckpt.step, ckpt.sha256)
