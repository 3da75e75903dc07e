"""A training loop that is generic over the loss: it knows nothing about diffusion.

The caller supplies a model, ``loss_fn(model, batch, generator) -> per-example loss (n,)`` and the data as one
tensor; the trainer owns everything else: batching, AdamW with linear warm-up, gradient clipping, EMA,
checkpoints, logging, resuming and multi-process (torchrun) training.

Exact resume. Every random number of a run comes from two generators the trainer owns and checkpoints: a data
generator (seeded with ``seed``, the same on every rank, so ranks agree on the batch order) that draws one
permutation per epoch, and a loss generator per rank (seeded with ``seed + rank``) handed to ``loss_fn``. A
checkpoint stores the data generator's state at the start of the current epoch plus the position in that
epoch, every rank's loss generator state, model, EMA and optimizer state, the loss statistics shown in the
logs, and every rank's state of a loss that keeps one (a ``loss_fn`` with ``state_dict()`` and
``load_state_dict()`` of tensors, such as the ELBO loss's history for importance sampling). Resuming therefore
replays exactly the computation an uninterrupted run would have done: on the CPU with a fixed thread count,
training N steps straight and training k, stopping and resuming to N give bitwise identical weights. (GPU
kernels are not bitwise deterministic in general, so there it is only close.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from diffusionlab._files import write_atomically
from diffusionlab.errors import UserError, check_count, check_range
from diffusionlab.precision import PRECISIONS, with_precision
from diffusionlab.training.checkpoint import (
    Checkpoint,
    check_state_keys,
    JSON_NAME,
    PREVIOUS_TENSORS_NAME,
    TENSORS_NAME,
    load_checkpoint,
    one_line,
    save_checkpoint,
    to_json_bytes,
)
from diffusionlab.training.ema import EMA

LOG_NAME = "log.jsonl"


def existing_run_files(run_dir: str | os.PathLike) -> list[str]:
    """The files of a run that ``run_dir`` holds already: a new run there would overwrite them. Any one of them
    counts (a checkpoint whose JSON was deleted still has its weights and its log)."""
    run_dir = Path(run_dir)
    return [name for name in (JSON_NAME, TENSORS_NAME, PREVIOUS_TENSORS_NAME, LOG_NAME) if (run_dir / name).exists()]
LossFn = Callable[[torch.nn.Module, torch.Tensor, torch.Generator], torch.Tensor]
# Settings whose change on resume makes the run differ from an uninterrupted one (steps, logging, checkpoint
# interval, threads and device do not).
_TRAJECTORY_FIELDS = ("batch_size", "lr", "weight_decay", "warmup_steps", "grad_clip", "ema_decay", "seed",
                      "precision")


@dataclass(kw_only=True)
class TrainConfig:
    """How to train; the model and process are described separately by the caller's ``run_config``.

    ``batch_size`` is global: with several processes each gets ``batch_size / world_size`` examples per step.
    ``grad_clip=None`` disables clipping. ``device``: ``"auto"`` (CUDA when available), ``"cpu"`` or
    ``"cuda"``. ``num_threads`` fixes torch's CPU thread count for the duration of training; CPU results are
    only bitwise reproducible with a fixed count.

    ``precision="bf16"`` runs every model call of the loss under ``torch.autocast(dtype=torch.bfloat16)``
    (mixed precision: matrix products and convolutions in bfloat16, normalisations and reductions in float32)
    and hands the loss the output cast back to float32; the weights, their gradients, the optimizer, the EMA
    and the checkpoints stay float32, and bfloat16 has float32's exponent range, so no loss scaling is needed.
    It is meant for hardware with native bfloat16: CPUs with AMX or AVX512-BF16 (1.48–1.68× the steps/s for
    benchmark 3's 1.2 M-parameter MNIST UNet on a 2-core Intel Xeon with AMX, ``benchmarks/mixed_precision.py``)
    and GPUs from Ampere on (not measured here); elsewhere bfloat16 is emulated and slower.
    """

    steps: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    warmup_steps: int
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    checkpoint_every: int
    log_every: int
    seed: int
    num_threads: int | None = None
    device: str = "auto"
    precision: str = "fp32"

    # Upper bound of ``lr``: AdamW's float32 step lr / (1 − β₁^k) overflows near 3e37; anything near it is a typo.
    MAX_LR = 1e6

    def __post_init__(self):
        """Every field checked for type and range (a config file can hold ``"steps": 2.5`` or ``"lr": "0.1"``);
        the integer fields become ints, the numbers floats."""
        counts = {"steps": 1, "batch_size": 1, "warmup_steps": 0, "checkpoint_every": 1, "log_every": 1, "seed": 0}
        try:
            for name, low in counts.items():  # below 2**63: they end up in int64 tensors and JSON readers' int64
                setattr(self, name, check_count(f"train.{name}", getattr(self, name), low))
                if getattr(self, name) >= 2**63:
                    raise UserError(f"train.{name} must be below 2**63, got {getattr(self, name)}")
            if self.num_threads is not None:
                self.num_threads = check_count("train.num_threads", self.num_threads, 1)
            self.lr = check_range("train.lr", self.lr, 0.0, self.MAX_LR, open_low=True)
            self.weight_decay = check_range("train.weight_decay", self.weight_decay, 0.0)
            if math.isinf(self.weight_decay):
                raise UserError("train.weight_decay must be finite, got inf")
            if self.grad_clip is not None:
                self.grad_clip = check_range("train.grad_clip", self.grad_clip, 0.0, open_low=True)
                if math.isinf(self.grad_clip):  # a run config is JSON, which has no inf
                    raise UserError("train.grad_clip must be finite, got inf; for no clipping set it to null (None)")
            self.ema_decay = check_range("train.ema_decay", self.ema_decay, 0.0, 1.0)
            if self.ema_decay >= 1:
                raise UserError(f"train.ema_decay must be in [0, 1), got {self.ema_decay!r}")
        except UserError as error:
            raise UserError(f"invalid training config: {error}") from None
        checks = [
            (self.device in ("auto", "cpu", "cuda"), "device must be 'auto', 'cpu' or 'cuda'"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(map(repr, PRECISIONS))}, "
                                           f"got {self.precision!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(f"invalid training config: {message}")


@dataclass
class TrainResult:
    """What a call to :func:`train` did: ``logs`` holds ``(step, mean loss since the previous log)`` pairs of
    this call only; ``loss`` is the smoothed loss shown in the progress bar at the end."""

    step: int
    loss: float
    wall_time: float
    steps_per_s: float
    logs: list[tuple[int, float]] = field(default_factory=list)


def linear_warmup_lr(update: int, lr: float, warmup_steps: int) -> float:
    """The learning rate for update number ``update`` (0-based): ramps linearly to ``lr`` over ``warmup_steps``.

    Adam's first updates are large (its second-moment estimate is still small), which can derail a freshly
    initialised network; the ramp avoids that. It is a function of the step alone, so there is no scheduler
    state to checkpoint.
    """
    if warmup_steps <= 0:
        return lr
    return lr * min(1.0, (update + 1) / warmup_steps)


def train(
    model: torch.nn.Module,
    loss_fn: LossFn,
    data: torch.Tensor,
    config: TrainConfig,
    run_dir: str | os.PathLike,
    *,
    run_config: dict,
    resume: bool = False,
    progress: bool = True,
    on_checkpoint: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place for ``config.steps`` optimizer steps, checkpointing into ``run_dir``.

    ``loss_fn(model, batch, generator)`` returns the per-example loss, shape ``(n,)``; the trainer takes the mean.
    All its randomness must come from ``generator`` (a ``torch.Generator`` on the training device) or resuming
    is not exact; a loss that keeps state between calls must expose it as ``state_dict()`` / ``load_state_dict()``
    (tensors), which every checkpoint saves and a resume restores, per rank. Under torchrun ``model`` arrives
    wrapped in DistributedDataParallel, so call it only through ``model(...)``. ``run_config`` (JSON) is stored
    verbatim in every checkpoint: it is what a later process needs to rebuild the model. ``resume=True`` continues
    from the checkpoint in ``run_dir`` (which must exist), on the same examples (compared by sha256) and with the
    same ``run_config`` outside its ``train`` and ``data`` sections; ``resume=False`` refuses a ``run_dir`` that
    already holds one. A run that fails before its first checkpoint leaves no empty ``run_dir`` behind.
    ``on_checkpoint(step)`` is called on rank 0 after each checkpoint is on disk. The data is moved to the training device once, so it must fit there.
    """
    to_json_bytes(run_config)  # fail now, not at the first checkpoint
    _check_data(data, config.batch_size, model)
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"cannot train into {run_dir}: it is a file; give a new or existing folder")
    created = not run_dir.exists()
    try:
        with _thread_count(config.num_threads), _distributed(config.device) as dist:
            trainer = _Trainer(model, loss_fn, data, config, run_dir, run_config, dist)
            trainer.start(resume)
            return trainer.run(progress, on_checkpoint)
    except BaseException:
        if created and os.environ.get("RANK", "0") == "0":
            with contextlib.suppress(OSError):  # never hide the error that got us here
                if not any(run_dir.iterdir()):
                    run_dir.rmdir()  # a run that failed before writing anything leaves no empty folder behind
        raise


# ------------------------------------------------------------------------------------------- environment


@dataclass(frozen=True)
class _Dist:
    """This process's place in a (possibly one-process) job."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mean(self, value: torch.Tensor) -> float:
        """The mean of a scalar over all ranks (all ranks see the same number, so they stop together on NaN)."""
        if self.world_size > 1:
            value = value.clone()
            torch_dist.all_reduce(value)
            value /= self.world_size
        return value.item()

    def gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's copy of a same-shaped CPU tensor, in rank order (NCCL needs it on the GPU in transit)."""
        if self.world_size == 1:
            return [tensor]
        local = tensor.to(self.device)
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        torch_dist.all_gather(parts, local)
        return [part.cpu() for part in parts]


@contextlib.contextmanager
def _distributed(device_preference: str) -> Iterator[_Dist]:
    """Join the torchrun job when ``WORLD_SIZE > 1`` (and leave it afterwards if this call created it)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _pick_device(device_preference, local_rank)
    if world_size <= 1:
        yield _Dist(rank=0, world_size=1, device=device)
        return
    created = not torch_dist.is_initialized()
    if created:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch_dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        yield _Dist(rank=torch_dist.get_rank(), world_size=torch_dist.get_world_size(), device=device)
    finally:
        if created:
            torch_dist.destroy_process_group()


def _pick_device(preference: str, local_rank: int) -> torch.device:
    if preference == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if preference == "cuda":
        raise UserError("device='cuda' but no CUDA GPU is available; use device='auto' or 'cpu'")
    return torch.device("cpu")


@contextlib.contextmanager
def _thread_count(num_threads: int | None) -> Iterator[None]:
    """Fix torch's intra-op thread count while training (it changes float summation order) and restore it."""
    if num_threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _check_data(data: torch.Tensor, batch_size: int, model: torch.nn.Module | None = None) -> None:
    if not isinstance(data, torch.Tensor) or data.ndim == 0:
        raise UserError("data must be a tensor of examples, shape (n, ...)")
    if not data.is_floating_point():
        raise UserError(f"the training data is {data.dtype}; diffusion needs floating-point data: convert it "
                        "(load_dataset does, to [−1, 1] or standardised units)")
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()} if model is not None else set()
    if dtypes and data.dtype not in dtypes:
        raise UserError(f"the training data is {data.dtype} but the model's weights are "
                        f"{', '.join(sorted(map(str, dtypes)))}; convert one to the other")
    if len(data) < batch_size:
        raise UserError(f"batch_size={batch_size} is larger than the data ({len(data)} examples); lower batch_size")
    if not torch.isfinite(data).all():
        raise UserError("the training data contains NaN or inf; clean or re-normalise it")


# ------------------------------------------------------------------------------------------- run state


class _EpochSampler:
    """Batch indices from shuffled epochs; each epoch's incomplete tail is dropped so batches have equal size.

    The generator is used for nothing but permutations, so its state at the start of an epoch plus the
    position within the epoch is the whole sampler state: restoring redraws the same permutation.
    """

    def __init__(self, num_examples: int, batch_size: int, seed: int):
        self.num_examples, self.batch_size = num_examples, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0
        self._start_epoch()

    def _start_epoch(self) -> None:
        self.epoch_state = self.generator.get_state()
        self.order = torch.randperm(self.num_examples, generator=self.generator)
        self.position = 0

    def next_indices(self) -> torch.Tensor:
        if self.position + self.batch_size > self.num_examples:
            self.epoch += 1
            self._start_epoch()
        indices = self.order[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        return indices

    def position_record(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "num_examples": self.num_examples}

    def restore(self, epoch_state: torch.Tensor, record: dict[str, int]) -> None:
        if record["num_examples"] != self.num_examples:
            raise UserError(f"the checkpoint was trained on {record['num_examples']} examples, this data has "
                            f"{self.num_examples}; resume with the same data")
        self.generator.set_state(epoch_state)
        self._start_epoch()
        self.epoch, self.position = record["epoch"], record["position"]


@dataclass
class _LossStats:
    """Running loss statistics: a bias-corrected exponential average for the progress bar and the mean over the
    current logging window. Plain floats, so they go into the checkpoint JSON and logs survive a resume."""

    smoothing: float = 0.98
    average: float = 0.0
    count: int = 0
    window_sum: float = 0.0
    window_count: int = 0

    def add(self, loss: float) -> None:
        self.average = self.smoothing * self.average + (1.0 - self.smoothing) * loss
        self.count += 1
        self.window_sum += loss
        self.window_count += 1

    @property
    def smoothed(self) -> float:
        return self.average / (1.0 - self.smoothing**self.count) if self.count else math.nan

    def pop_window_mean(self) -> float:
        mean = self.window_sum / max(self.window_count, 1)
        self.window_sum, self.window_count = 0.0, 0
        return mean


def _adamw(model, config) -> torch.optim.AdamW:
    """AdamW (Loshchilov & Hutter 2019) with PyTorch's fused kernel where it has one (CPU and CUDA, float weights):
    the same update as the per-parameter loop in one pass over all parameters. Measured on 2 cores: the optimizer
    step of the default digits UNet (3.0 M parameters, 128 tensors) 3.8 vs 16 ms; a whole training step of the
    demo's UNet (190 k parameters) 66 vs 70 ms (median per-round ratio 1.13 over 8 interleaved rounds)."""
    params = list(model.parameters())
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused or None)


class _NonFinite(Exception):
    """A NaN/inf loss or gradient; turned into a UserError naming the step by the loop."""


class _Trainer:
    """The state of one training run and the steps that change it."""

    def __init__(self, model, loss_fn, data, config: TrainConfig, run_dir: Path, run_config: dict, dist: _Dist):
        if config.batch_size % dist.world_size:
            raise UserError(f"batch_size={config.batch_size} is not divisible by the {dist.world_size} processes; "
                            "choose a multiple")
        self.loss_fn, self.config, self.run_dir, self.run_config, self.dist = loss_fn, config, run_dir, run_config, dist
        self.model = model.to(dist.device)
        self.data = data.to(dist.device)
        self.optimizer = _adamw(model, config)
        self.ema = EMA(model, config.ema_decay)
        self.sampler = _EpochSampler(len(data), config.batch_size, config.seed)
        self.loss_generator = torch.Generator(dist.device).manual_seed(config.seed + dist.rank)
        self.stats = _LossStats()
        self.step = 0
        self.last_checkpoint: int | None = None
        self.data_sha256 = tensor_sha256(data)

    # -- start

    def start(self, resume: bool) -> None:
        """Restore from the checkpoint (``resume``) or make sure a fresh run overwrites nothing."""
        if resume:
            self._restore(load_checkpoint(self.run_dir))
        elif existing := existing_run_files(self.run_dir):
            raise UserError(f"{self.run_dir} already holds a run ({', '.join(existing)}); resume it (--resume, "
                            "resume=True in Python) or choose another run directory")
        else:
            self._warn_short_ema()
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            _trim_log(self.run_dir / LOG_NAME, self.step)

    def _restore(self, checkpoint: Checkpoint) -> None:
        state = self._resumable_state(checkpoint)
        if self.dist.is_main:
            _warn_changed_settings(state["train_config"], self.config)
        _load_module(self.model, checkpoint.model_state)
        self.ema.load_state_dict(checkpoint.ema_state or {})
        self._load_optimizer(checkpoint.optimizer_state)
        self.sampler.restore(checkpoint.rng_states["data_epoch"], state["sampler"])
        self._load_loss_generator(checkpoint.rng_states[f"loss.rank{self.dist.rank}"])
        self._load_loss_state(checkpoint.loss_state)
        self.stats = _LossStats(**state["loss_stats"])
        self.step = self.last_checkpoint = checkpoint.step
        if self.dist.is_main:
            print(f"Resuming {self.run_dir} from step {self.step} of {self.config.steps}.", flush=True)

    def _resumable_state(self, checkpoint: Checkpoint) -> dict:
        """The trainer's own record in the checkpoint, after checking this run can continue from it."""
        state = (checkpoint.extra or {}).get("trainer")
        if state is None:
            raise UserError(f"the checkpoint in {self.run_dir} was not written by train(), so it cannot be resumed; "
                            "start a new run directory")
        if checkpoint.step > self.config.steps:
            raise UserError(f"the checkpoint in {self.run_dir} is at step {checkpoint.step}, past steps="
                            f"{self.config.steps}; pass a larger number of steps to continue training")
        if state["world_size"] != self.dist.world_size:
            raise UserError(f"the checkpoint was trained with {state['world_size']} processes, this run has "
                            f"{self.dist.world_size}; resume with the same number of processes")
        if state.get("data_sha256", self.data_sha256) != self.data_sha256:
            raise UserError(f"the checkpoint in {self.run_dir} was trained on other data (another sha256 of the "
                            "examples); resume with the same data, or start a new run directory")
        # What the run config may change on resume: its "train" section (TrainConfig, whose changes warn) and its
        # "data" section (where the data lives; the examples themselves are checked by their fingerprint above).
        changed = sorted(key for key in set(checkpoint.config) | set(self.run_config)
                         if key not in ("train", "data") and checkpoint.config.get(key) != self.run_config.get(key))
        if changed:
            raise UserError(f"run_config differs from the checkpoint's in {', '.join(map(str, changed))}: a resume "
                            "continues the same run (only its 'train' and 'data' sections may change); pass the "
                            "stored config (load_checkpoint(run_dir).config) or start a new run directory")
        return state

    def _load_loss_generator(self, state: torch.Tensor) -> None:
        try:
            self.loss_generator.set_state(state)
        except RuntimeError:
            raise UserError(f"the checkpoint's random state is for another kind of device than "
                            f"{self.dist.device.type}; resume on the device type it was trained on") from None

    def _load_loss_state(self, saved: dict[str, torch.Tensor]) -> None:
        """Give a stateful loss back this rank's state (saved as ``rank<r>.<name>``)."""
        if not _has_state(self.loss_fn):
            return
        prefix = f"rank{self.dist.rank}."
        state = {key[len(prefix):]: value for key, value in saved.items() if key.startswith(prefix)}
        if not state:
            if self.dist.is_main and self.loss_fn.state_dict():  # a stateless loss loses nothing
                warnings.warn(f"the checkpoint in {self.run_dir} holds no state of the loss (written by an older "
                              "version?); the loss starts afresh, so the run will differ from an uninterrupted one",
                              stacklevel=5)
            return
        self.loss_fn.load_state_dict(state)

    def _loss_state(self) -> dict[str, torch.Tensor]:
        """Every rank's state of a stateful loss, gathered (all ranks take part), keyed ``rank<r>.<name>``."""
        if not _has_state(self.loss_fn):
            return {}
        state = {}
        for name, tensor in self.loss_fn.state_dict().items():
            for rank, part in enumerate(self.dist.gather(tensor.detach().cpu())):
                state[f"rank{rank}.{name}"] = part
        return state

    def _load_optimizer(self, state: dict | None) -> None:
        if state is None:
            raise UserError(f"the checkpoint in {self.run_dir} has no optimizer state; it cannot be resumed")
        fused = [group.get("fused") for group in self.optimizer.param_groups]
        try:
            self.optimizer.load_state_dict(state)
        except (ValueError, KeyError, TypeError) as error:
            raise UserError(f"the optimizer state in the checkpoint does not fit the model ({one_line(error)[:300]}); "
                            "rebuild the model from the config stored with the checkpoint") from None
        for group, choice in zip(self.optimizer.param_groups, fused):  # the stored groups carry the saving run's
            group["fused"] = choice  # kernel choice: keep this machine's (a run saved before fused AdamW had None)

    def _warn_short_ema(self) -> None:
        message = self.ema.warn_if_short(self.config.steps)
        if message and self.dist.is_main:
            warnings.warn(message, stacklevel=4)

    # -- loop

    def run(self, progress: bool, on_checkpoint: Callable[[int], None] | None) -> TrainResult:
        start_step, started = self.step, time.perf_counter()
        logs: list[tuple[int, float]] = []
        bar = tqdm(total=self.config.steps, initial=self.step, unit="step", dynamic_ncols=True,
                   disable=not (progress and self.dist.is_main))
        training_model = self._training_model()
        self.model.train()
        with bar:
            while self.step < self.config.steps:
                loss, grad_norm = self._guarded_step(training_model)
                self.step += 1
                self.stats.add(loss)
                bar.update(1)
                bar.set_postfix(loss=f"{self.stats.smoothed:.4g}", refresh=False)
                if self.step % self.config.log_every == 0:
                    logs.append(self._log(grad_norm, time.perf_counter() - started))
                if self.step % self.config.checkpoint_every == 0 or self.step == self.config.steps:
                    self._checkpoint(on_checkpoint)
        wall_time = time.perf_counter() - started
        steps_done = self.step - start_step
        return TrainResult(step=self.step, loss=self.stats.smoothed, wall_time=wall_time,
                           steps_per_s=steps_done / wall_time if wall_time > 0 else 0.0, logs=logs)

    def _training_model(self) -> torch.nn.Module:
        """What ``loss_fn`` calls: the model, wrapped in DDP with several processes (DDP averages gradients over
        ranks during ``backward``; its constructor also syncs the weights) and in :class:`Autocast` for bf16."""
        model = self.model
        if self.dist.world_size > 1:
            device_ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=device_ids)
        return with_precision(model, self.config.precision, self.dist.device.type)

    def _guarded_step(self, training_model: torch.nn.Module) -> tuple[float, float]:
        try:
            return self._train_step(training_model)
        except _NonFinite as problem:
            kept = (f"the last checkpoint (step {self.last_checkpoint}) in {self.run_dir} is intact"
                    if self.last_checkpoint is not None else "no checkpoint was written")
            raise UserError(f"{problem} at step {self.step + 1}; lower the learning rate (lr={self.config.lr}) or "
                            f"check the data and loss; {kept}") from None

    def _train_step(self, training_model: torch.nn.Module) -> tuple[float, float]:
        """One optimizer update; returns the loss (mean over all ranks) and the gradient norm before clipping.

        The loss is checked before ``backward`` and the gradient norm before ``optimizer.step``, so a
        non-finite value never reaches the weights (nor, therefore, a checkpoint).
        """
        batch = self._local_batch()
        for group in self.optimizer.param_groups:
            group["lr"] = linear_warmup_lr(self.step, self.config.lr, self.config.warmup_steps)
        per_example = self.loss_fn(training_model, batch, self.loss_generator)
        _check_per_example(per_example, len(batch))
        loss = per_example.mean()
        loss_value = self.dist.mean(loss.detach())
        if not math.isfinite(loss_value):
            raise _NonFinite(f"the loss is {loss_value}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = self.config.grad_clip if self.config.grad_clip is not None else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        if not math.isfinite(grad_norm):
            raise _NonFinite(f"the gradient norm is {grad_norm}")
        self.optimizer.step()
        self.ema.update(self.model, self.step)
        return loss_value, grad_norm

    def _local_batch(self) -> torch.Tensor:
        """This rank's disjoint share of the global batch (the global order is the same on every rank)."""
        indices = self.sampler.next_indices()
        share = len(indices) // self.dist.world_size
        local = indices[self.dist.rank * share:(self.dist.rank + 1) * share]
        return self.data[local.to(self.data.device)]

    # -- outputs

    def _log(self, grad_norm: float, elapsed: float) -> tuple[int, float]:
        loss = self.stats.pop_window_mean()
        if self.dist.is_main:
            entry = {"step": self.step, "loss": loss, "smoothed_loss": self.stats.smoothed,
                     "lr": self.optimizer.param_groups[0]["lr"], "grad_norm": grad_norm, "elapsed_s": elapsed,
                     "precision": self.config.precision}
            with open(self.run_dir / LOG_NAME, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry) + "\n")
        return self.step, loss

    def _checkpoint(self, on_checkpoint: Callable[[int], None] | None) -> None:
        """Save on rank 0; every rank takes part, because the loss generator states are gathered from all."""
        rng_states = {f"loss.rank{rank}": state
                      for rank, state in enumerate(self.dist.gather(self.loss_generator.get_state()))}
        rng_states["data_epoch"] = self.sampler.epoch_state
        loss_state = self._loss_state()
        self.last_checkpoint = self.step
        if not self.dist.is_main:
            return
        trainer_state = {"sampler": self.sampler.position_record(), "loss_stats": dataclasses.asdict(self.stats),
                         "world_size": self.dist.world_size, "train_config": dataclasses.asdict(self.config),
                         "data_sha256": self.data_sha256}
        save_checkpoint(self.run_dir, model=self.model, ema=self.ema, optimizer=self.optimizer, step=self.step,
                        config=self.run_config, rng_states=rng_states, extra={"trainer": trainer_state},
                        loss_state=loss_state)
        if on_checkpoint is not None:
            on_checkpoint(self.step)


# ------------------------------------------------------------------------------------------- helpers


def tensor_sha256(data: torch.Tensor) -> str:
    """A fingerprint of a tensor's shape, dtype and values (to tell on resume whether the data is the same)."""
    digest = hashlib.sha256(f"{tuple(data.shape)} {data.dtype}".encode())
    digest.update(data.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _has_state(loss_fn: Any) -> bool:
    """Whether ``loss_fn`` keeps state that a checkpoint must carry: it has ``state_dict`` and ``load_state_dict``."""
    return callable(getattr(loss_fn, "state_dict", None)) and callable(getattr(loss_fn, "load_state_dict", None))


def _check_per_example(per_example: Any, batch_size: int) -> None:
    if not isinstance(per_example, torch.Tensor) or per_example.shape != (batch_size,):
        shape = tuple(per_example.shape) if isinstance(per_example, torch.Tensor) else type(per_example).__name__
        raise UserError(f"loss_fn must return a per-example loss of shape ({batch_size},), got {shape}; "
                        "do not reduce it, the trainer takes the mean")


def _load_module(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    check_state_keys(module.state_dict().keys(), state, "the checkpoint's model weights")
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        raise UserError(f"the checkpoint's model weights do not fit the model ({one_line(error)[:300]}); rebuild the "
                        "model from the config stored with the checkpoint") from None


def _warn_changed_settings(saved: dict, config: TrainConfig) -> None:
    """Warn about trajectory settings that differ from the checkpoint's (a setting the checkpoint predates
    counts as its default)."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    changed = [f"{name}: {saved.get(name, defaults.get(name))} -> {getattr(config, name)}"
               for name in _TRAJECTORY_FIELDS if saved.get(name, defaults.get(name)) != getattr(config, name)]
    if changed:
        warnings.warn(f"resuming with changed settings ({'; '.join(changed)}); the run will differ from an "
                      "uninterrupted one", stacklevel=5)


def _trim_log(path: Path, last_step: int) -> None:
    """Drop log entries past ``last_step``: steps after the checkpoint are redone, and logged again, on resume.

    A torn last line (a crash mid-write) is dropped too. A fresh run (``last_step=0``) starts an empty log.
    """
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if _is_logged_through(line, last_step)]
    if kept != lines:
        data = "".join(kept).encode("utf-8")
        write_atomically(path, lambda handle: handle.write(data), durable=True)


def _is_logged_through(line: str, last_step: int) -> bool:
    """Whether ``line`` is a complete log entry (newline-terminated JSON) for a step up to ``last_step``."""
    try:
        return line.endswith("\n") and int(json.loads(line)["step"]) <= last_step
    except (ValueError, KeyError, TypeError):
        return False
