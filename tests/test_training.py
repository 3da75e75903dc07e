"""Tests of the training infrastructure: checkpoints, EMA and the trainer (resume, errors, logs, DDP).

Everything uses a tiny ``nn.Linear`` and a quadratic loss on random data, so the whole file runs in seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import diffusionlab
from diffusionlab.errors import UserError
from diffusionlab.training import (
    EMA,
    TrainConfig,
    checkpoint_exists,
    ema_decay,
    linear_warmup_lr,
    load_checkpoint,
    save_checkpoint,
    train,
)
from diffusionlab.training import checkpoint as checkpoint_module
from diffusionlab.precision import Autocast

DIM = 4
DATA = torch.randn(64, DIM, generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------------------------------------ helpers


def make_model(seed: int = 0) -> torch.nn.Linear:
    """A Linear layer initialised from its own generator, so tests never depend on the global RNG."""
    model = torch.nn.Linear(DIM, DIM)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator))
    return model


def quadratic_loss(model, batch, generator):
    """Denoise a slightly noised input back to itself: uses the generator, so resume must restore it."""
    noisy = batch + 0.1 * torch.randn(batch.shape, generator=generator, device=batch.device)
    return ((model(noisy) - batch) ** 2).mean(dim=1)


def make_config(**overrides) -> TrainConfig:
    settings = dict(steps=20, batch_size=12, lr=1e-2, warmup_steps=3, ema_decay=0.75, checkpoint_every=5,
                    log_every=2, seed=0, num_threads=1, device="cpu")
    settings.update(overrides)
    return TrainConfig(**settings)


def run(run_dir, *, model=None, loss_fn=quadratic_loss, resume=False, on_checkpoint=None, **overrides):
    model = make_model() if model is None else model
    result = train(model, loss_fn, DATA, make_config(**overrides), run_dir, run_config={"model": "linear", "dim": DIM},
                   resume=resume, progress=False, on_checkpoint=on_checkpoint)
    return model, result


def trained_state(seed: int = 0):
    """A model, EMA and AdamW after two real updates, so every kind of state is non-trivial."""
    model = make_model(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ema = EMA(model, decay=0.9)
    for step in range(2):
        optimizer.zero_grad()
        model(DATA).pow(2).sum().backward()
        optimizer.step()
        ema.update(model, step)
    return model, ema, optimizer


def save_state(run_dir, model, ema=None, optimizer=None, step=2):
    save_checkpoint(run_dir, model=model, ema=ema, optimizer=optimizer, step=step, config={"dim": DIM},
                    rng_states={"data": torch.Generator().manual_seed(3).get_state()}, extra={"note": "x"})


def assert_states_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def assert_optimizer_states_equal(a: dict, b: dict) -> None:
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for param_id in a["state"]:
        assert_states_equal(a["state"][param_id], b["state"][param_id])


def user_error_message(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, "UserError messages must be one line"
    return message


def read_log(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "log.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------------ checkpoint


def test_checkpoint_round_trip_is_bitwise(tmp_path):
    model, ema, optimizer = trained_state()
    save_state(tmp_path, model, ema, optimizer, step=2)

    loaded = load_checkpoint(tmp_path)

    assert checkpoint_exists(tmp_path)
    assert loaded.step == 2 and loaded.config == {"dim": DIM} and loaded.extra == {"note": "x"}
    assert_states_equal(loaded.model_state, model.state_dict())
    assert_states_equal(loaded.ema_state, ema.state_dict())
    assert_optimizer_states_equal(loaded.optimizer_state, optimizer.state_dict())
    assert torch.equal(loaded.rng_states["data"], torch.Generator().manual_seed(3).get_state())
    fresh = torch.optim.AdamW(make_model(1).parameters(), lr=1e-2)
    fresh.load_state_dict(loaded.optimizer_state)
    assert_optimizer_states_equal(fresh.state_dict(), optimizer.state_dict())
    assert b"pickle" not in (tmp_path / "checkpoint.safetensors").read_bytes()[:64]


def test_checkpoint_without_ema_and_optimizer(tmp_path):
    save_checkpoint(tmp_path, model=make_model(), step=0, config={})
    loaded = load_checkpoint(tmp_path)
    assert loaded.ema_state is None and loaded.optimizer_state is None and loaded.rng_states == {}


@pytest.mark.parametrize("where, expected", [("missing", "does not exist"), ("empty", "no checkpoint")])
def test_load_without_checkpoint_is_user_error(tmp_path, where, expected):
    run_dir = tmp_path / "run"
    if where == "empty":
        run_dir.mkdir()
    assert not checkpoint_exists(run_dir)
    with pytest.raises(UserError) as excinfo:
        load_checkpoint(run_dir)
    assert expected in user_error_message(excinfo)


def crash_on_second_replace(monkeypatch):
    """Make the next save die between replacing the tensor file and replacing the JSON (os.replace #2)."""
    real_replace, calls = os.replace, []

    def flaky_replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("simulated crash")
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint_module.os, "replace", flaky_replace)


def test_crash_between_the_two_files_keeps_previous_checkpoint(tmp_path, monkeypatch):
    old_model, new_model = make_model(0), make_model(1)
    save_state(tmp_path, old_model, step=1)
    crash_on_second_replace(monkeypatch)
    with pytest.raises(UserError, match="simulated crash"):  # an OSError, reported as one line
        save_state(tmp_path, new_model, step=2)
    monkeypatch.undo()

    with pytest.warns(UserWarning, match="interrupted"):
        loaded = load_checkpoint(tmp_path)
    assert loaded.step == 1
    assert_states_equal(loaded.model_state, old_model.state_dict())
    assert not list(tmp_path.glob(".*.tmp")), "temporary files must be cleaned up"

    save_state(tmp_path, new_model, step=3)  # the next save recovers fully
    assert load_checkpoint(tmp_path).step == 3
    assert not (tmp_path / "checkpoint.prev.safetensors").exists()


def test_interrupted_save_without_backup_is_a_hash_mismatch(tmp_path, monkeypatch):
    save_state(tmp_path, make_model(0), step=1)
    crash_on_second_replace(monkeypatch)
    with pytest.raises(UserError, match="simulated crash"):  # an OSError, reported as one line
        save_state(tmp_path, make_model(1), step=2)
    (tmp_path / "checkpoint.prev.safetensors").unlink()
    with pytest.raises(UserError) as excinfo:
        load_checkpoint(tmp_path)
    message = user_error_message(excinfo)
    assert "hash mismatch" in message and "interrupted" in message


def test_hash_mismatch_with_foreign_tensor_file(tmp_path):
    save_state(tmp_path / "a", make_model(0))
    save_state(tmp_path / "b", make_model(1))
    (tmp_path / "a" / "checkpoint.safetensors").write_bytes((tmp_path / "b" / "checkpoint.safetensors").read_bytes())
    with pytest.raises(UserError) as excinfo:
        load_checkpoint(tmp_path / "a")
    assert "hash mismatch" in user_error_message(excinfo)


def test_truncated_safetensors_is_user_error(tmp_path):
    save_state(tmp_path, make_model())
    path = tmp_path / "checkpoint.safetensors"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(UserError) as excinfo:
        load_checkpoint(tmp_path)
    assert "truncated or corrupt" in user_error_message(excinfo)


def test_corrupted_json_is_user_error(tmp_path):
    save_state(tmp_path, make_model())
    path = tmp_path / "checkpoint.json"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(UserError) as excinfo:
        load_checkpoint(tmp_path)
    assert "not valid JSON" in user_error_message(excinfo)


def test_missing_json_keys_are_named(tmp_path):
    save_state(tmp_path, make_model())
    path = tmp_path / "checkpoint.json"
    record = json.loads(path.read_text())
    del record["step"]
    path.write_text(json.dumps(record))
    with pytest.raises(UserError) as excinfo:
        load_checkpoint(tmp_path)
    assert "step" in user_error_message(excinfo)


def test_unserializable_config_writes_nothing(tmp_path):
    save_state(tmp_path, make_model(0), step=1)
    with pytest.raises(UserError) as excinfo:
        save_checkpoint(tmp_path, model=make_model(1), step=2, config={"bad": object()})
    user_error_message(excinfo)
    assert load_checkpoint(tmp_path).step == 1


# ------------------------------------------------------------------------------------------------ EMA


def test_ema_decay_warmup_formula():
    assert ema_decay(0, 0.999) == pytest.approx(0.1)
    assert ema_decay(10, 0.999) == pytest.approx(11 / 20)
    assert ema_decay(10**6, 0.999) == 0.999


def test_ema_update_follows_formula():
    model = make_model(0)
    ema = EMA(model, decay=0.5)
    start = ema.state_dict()["weight"].clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, step=100)  # past the warm-up: decay 0.5
    torch.testing.assert_close(ema.state_dict()["weight"], 0.5 * start + 0.5 * model.weight.detach())
    ema.update(model, step=0)  # warm-up: decay 0.1
    torch.testing.assert_close(ema.state_dict()["weight"], 0.1 * (0.5 * start + 0.5 * model.weight) + 0.9 * model.weight)


def test_ema_of_constant_model_stays_constant():
    model = make_model(0)
    ema = EMA(model, decay=0.999)
    for step in range(50):
        ema.update(model, step)
    assert_states_equal(ema.state_dict(), model.state_dict())
    target = make_model(1)
    ema.copy_to(target)
    assert_states_equal(target.state_dict(), model.state_dict())


def test_ema_load_state_dict_rejects_other_model():
    ema = EMA(make_model(), decay=0.9)
    with pytest.raises(UserError) as excinfo:
        ema.load_state_dict({"weight": torch.zeros(DIM, DIM)})
    assert "missing keys: bias" in user_error_message(excinfo)


def test_ema_warns_when_training_is_shorter_than_its_horizon():
    ema = EMA(make_model(), decay=0.999)
    assert "1000" in ema.warn_if_short(500) and "0.998" in ema.warn_if_short(500)
    assert ema.warn_if_short(5000) is None
    assert EMA(make_model(), decay=0.9).warn_if_short(10) is None
    assert "set ema_decay to 0 (no averaging)" in EMA(make_model(), decay=0.5).warn_if_short(1)


def test_linear_warmup_lr():
    assert [linear_warmup_lr(step, 1.0, 4) for step in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert linear_warmup_lr(0, 0.1, 0) == 0.1


# ------------------------------------------------------------------------------------------------ trainer


class CrashAtCall:
    """A loss that raises (like a killed process) on its ``crash_at``-th call (1-based)."""

    def __init__(self, crash_at: int):
        self.crash_at, self.calls = crash_at, 0

    def __call__(self, model, batch, generator):
        self.calls += 1
        if self.calls == self.crash_at:
            raise KeyboardInterrupt
        return quadratic_loss(model, batch, generator)


def interrupt_shorter_run(run_dir):
    run(run_dir, steps=7)  # checkpoint at 5 and at the end, 7


def interrupt_by_crash(run_dir):
    with pytest.raises(KeyboardInterrupt):  # dies during step 8: checkpoint at 5, log entries up to 6
        run(run_dir, loss_fn=CrashAtCall(8))


@pytest.mark.parametrize("interrupt", [interrupt_shorter_run, interrupt_by_crash])
def test_resume_equals_straight_training_bitwise(tmp_path, interrupt, capsys):
    straight_model, straight = run(tmp_path / "straight")

    interrupt(tmp_path / "resumed")
    capsys.readouterr()
    resumed_model, resumed = run(tmp_path / "resumed", resume=True)

    assert "from step" in capsys.readouterr().out
    assert_states_equal(resumed_model.state_dict(), straight_model.state_dict())
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "resumed")
    assert_states_equal(a.ema_state, b.ema_state)
    assert_optimizer_states_equal(a.optimizer_state, b.optimizer_state)
    assert resumed.step == straight.step == 20 and resumed.loss == straight.loss
    assert read_log(tmp_path / "straight") == [
        {**entry, "elapsed_s": straight_entry["elapsed_s"]}
        for entry, straight_entry in zip(read_log(tmp_path / "resumed"), read_log(tmp_path / "straight"))
    ]
    assert len(read_log(tmp_path / "resumed")) == 10


class TimeLinear(torch.nn.Module):
    """``model(x, t)``: a Linear layer on [x, t], an ε-predictor small enough for the ELBO loss tests."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.linear = torch.nn.Linear(DIM + 1, DIM)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param in self.linear.parameters():
                param.copy_(0.3 * torch.randn(param.shape, generator=generator))

    def forward(self, x, t):
        return self.linear(torch.cat([x, t.to(x.dtype)[:, None]], dim=1))


ELBO_PROCESS = dict(T=10, beta_start=0.05, beta_end=0.5)


def elbo_loss(**kwargs):
    """The ELBO with importance sampling of t (history of 2 values per term: active after a few steps)."""
    return diffusionlab.ELBOLoss(diffusionlab.DDPM(**ELBO_PROCESS), "eps", time_sampling="importance", history=2,
                                 **kwargs)


class CrashingELBOLoss(diffusionlab.ELBOLoss):
    """The ELBO loss that raises (like a killed process) on its ``crash_at``-th call."""

    def __init__(self, crash_at: int):
        super().__init__(diffusionlab.DDPM(**ELBO_PROCESS), "eps", time_sampling="importance", history=2)
        self.crash_at, self.calls = crash_at, 0

    def __call__(self, model, batch, generator):
        self.calls += 1
        if self.calls == self.crash_at:
            raise KeyboardInterrupt
        return super().__call__(model, batch, generator)


class StatelessELBOLoss(diffusionlab.ELBOLoss):
    """The ELBO loss hiding its state from the trainer: what resuming did before the history was saved."""

    state_dict = None


def test_elbo_loss_state_round_trips():
    loss = elbo_loss()
    generator = torch.Generator().manual_seed(0)
    for _ in range(4):
        loss(TimeLinear(), DATA[:12], generator)
    fresh = elbo_loss()
    fresh.load_state_dict(loss.state_dict())
    assert torch.equal(fresh._history, loss._history) and torch.equal(fresh._count, loss._count)
    assert torch.equal(fresh._probabilities(), loss._probabilities())
    with pytest.raises(UserError) as excinfo:
        diffusionlab.ELBOLoss(diffusionlab.DDPM(T=5), "eps").load_state_dict(loss.state_dict())
    assert "shape" in user_error_message(excinfo)


@pytest.mark.parametrize("crash", [False, True], ids=["shorter run", "crash"])
def test_resume_with_elbo_importance_sampling_equals_straight_training_bitwise(tmp_path, crash, capsys):
    """`--loss elbo --time-sampling importance`: the loss history that draws t is saved with every checkpoint
    (``loss.rank0.*`` tensors) and restored, so resuming replays the straight run bit for bit; resuming without
    it (the loss starting afresh, uniform t again) gives other weights."""
    straight_model, straight = run(tmp_path / "straight", model=TimeLinear(), loss_fn=elbo_loss())
    if crash:  # dies during step 8: checkpoint at 5
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path / "resumed", model=TimeLinear(), loss_fn=CrashingELBOLoss(8))
    else:  # checkpoints at 5 and 7
        run(tmp_path / "resumed", model=TimeLinear(), loss_fn=elbo_loss(), steps=7)
    shutil.copytree(tmp_path / "resumed", tmp_path / "stateless")
    saved = load_checkpoint(tmp_path / "resumed").loss_state
    assert set(saved) == {"rank0.history", "rank0.count"}
    assert bool((saved["rank0.count"] >= 2).all()), "importance sampling must be active before the interruption"
    resumed_model, resumed = run(tmp_path / "resumed", model=TimeLinear(), loss_fn=elbo_loss(), resume=True)
    assert_states_equal(resumed_model.state_dict(), straight_model.state_dict())
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "resumed")
    assert_states_equal(a.loss_state, b.loss_state)
    assert_states_equal(a.ema_state, b.ema_state)
    assert_optimizer_states_equal(a.optimizer_state, b.optimizer_state)
    assert resumed.step == straight.step == 20 and resumed.loss == straight.loss
    stateless_model, _ = run(tmp_path / "stateless", model=TimeLinear(), loss_fn=StatelessELBOLoss(
        diffusionlab.DDPM(**ELBO_PROCESS), "eps", time_sampling="importance", history=2), resume=True)
    assert not torch.equal(stateless_model.linear.weight, straight_model.linear.weight)


def test_resume_of_a_checkpoint_without_loss_state_warns(tmp_path):
    run(tmp_path, model=TimeLinear(), loss_fn=StatelessELBOLoss(diffusionlab.DDPM(**ELBO_PROCESS), "eps"), steps=5)
    assert load_checkpoint(tmp_path).loss_state == {}
    with pytest.warns(UserWarning, match="no state of the loss"):
        run(tmp_path, model=TimeLinear(), loss_fn=elbo_loss(), steps=6, resume=True)


def test_resume_uses_this_machines_adamw_kernel(tmp_path):
    """A checkpoint's param_groups carry the saving run's kernel choice (runs saved before the fused AdamW have
    ``fused: None``); a resume keeps the choice made for this machine (fused on CPU)."""
    run(tmp_path, steps=5)
    path = tmp_path / "checkpoint.json"
    record = json.loads(path.read_text())
    assert all(group["fused"] is True for group in record["optimizer"]["param_groups"])
    for group in record["optimizer"]["param_groups"]:
        group["fused"] = None
    path.write_text(json.dumps(record))
    run(tmp_path, steps=6, resume=True)
    groups = json.loads(path.read_text())["optimizer"]["param_groups"]
    assert all(group["fused"] is True for group in groups)


def test_resume_without_checkpoint_is_user_error(tmp_path):
    with pytest.raises(UserError) as excinfo:
        run(tmp_path / "nothing", resume=True)
    assert "does not exist" in user_error_message(excinfo)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError) as excinfo:
        run(tmp_path / "empty", resume=True)
    assert "no checkpoint" in user_error_message(excinfo)


def test_existing_checkpoint_without_resume_is_user_error(tmp_path):
    run(tmp_path, steps=5)
    with pytest.raises(UserError) as excinfo:
        run(tmp_path)
    message = user_error_message(excinfo)
    assert "--resume" in message and "resume=True" in message and "another run directory" in message
    assert load_checkpoint(tmp_path).step == 5


@pytest.mark.parametrize("kept", ["checkpoint.safetensors", "log.jsonl"])
def test_a_new_run_never_overwrites_what_is_left_of_an_old_one(tmp_path, kept):
    """A run whose checkpoint.json was deleted still has its weights and its log: a new run refuses the folder
    (a review saw 14 MB of weights replaced and the log emptied) and names what is there."""
    run(tmp_path, steps=5)
    for name in ("checkpoint.json", "checkpoint.safetensors", "checkpoint.prev.safetensors", "log.jsonl"):
        if name != kept:
            (tmp_path / name).unlink(missing_ok=True)
    before = (tmp_path / kept).read_bytes()
    with pytest.raises(UserError) as excinfo:
        run(tmp_path)
    assert kept in user_error_message(excinfo)
    assert (tmp_path / kept).read_bytes() == before


def edit_world_size(run_dir):
    path = Path(run_dir) / "checkpoint.json"
    record = json.loads(path.read_text())
    record["extra"]["trainer"]["world_size"] = 4
    path.write_text(json.dumps(record))


@pytest.mark.parametrize("change, overrides, expected", [
    (lambda run_dir: None, {"steps": 3}, "past steps=3"),
    (edit_world_size, {}, "same number of processes"),
])
def test_resume_refuses_a_run_it_cannot_continue(tmp_path, change, overrides, expected):
    run(tmp_path, steps=5)
    change(tmp_path)
    with pytest.raises(UserError) as excinfo:
        run(tmp_path, resume=True, **overrides)
    assert expected in user_error_message(excinfo)


def test_nan_loss_is_user_error_and_keeps_last_checkpoint(tmp_path):
    calls = []

    def loss_fn(model, batch, generator):
        calls.append(1)
        loss = quadratic_loss(model, batch, generator)
        return loss * float("nan") if len(calls) == 8 else loss

    with pytest.raises(UserError) as excinfo:
        run(tmp_path, loss_fn=loss_fn)
    message = user_error_message(excinfo)
    assert "step 8" in message and "learning rate" in message
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint.step == 5
    assert all(torch.isfinite(tensor).all() for tensor in checkpoint.model_state.values())


def test_log_jsonl_and_result(tmp_path):
    model, result = run(tmp_path, steps=10, log_every=3)
    log = read_log(tmp_path)
    assert [entry["step"] for entry in log] == [3, 6, 9]
    assert {"step", "loss", "smoothed_loss", "lr", "grad_norm", "elapsed_s"} <= log[0].keys()
    assert result.logs == [(entry["step"], entry["loss"]) for entry in log]
    assert result.step == 10 and result.steps_per_s > 0 and result.wall_time > 0
    assert load_checkpoint(tmp_path).config == {"model": "linear", "dim": DIM}
    assert log[-1]["loss"] < log[0]["loss"], "the quadratic loss should go down"


def test_loss_fn_must_return_per_example_loss(tmp_path):
    with pytest.raises(UserError) as excinfo:
        run(tmp_path, loss_fn=lambda model, batch, generator: quadratic_loss(model, batch, generator).mean())
    assert "per-example" in user_error_message(excinfo)


# ------------------------------------------------------------------------------------------------ precision


class DtypeRecorder:
    """``quadratic_loss`` that records the dtype the loss sees and, by a hook, the dtype the Linear computes in."""

    def __init__(self, model):
        self.inside, self.outside = set(), set()
        model.register_forward_hook(lambda module, args, out: self.inside.add(out.dtype))

    def __call__(self, model, batch, generator):
        noisy = batch + 0.1 * torch.randn(batch.shape, generator=generator, device=batch.device)
        out = model(noisy)
        self.outside.add(out.dtype)
        return ((out - batch) ** 2).mean(dim=1)


@pytest.mark.parametrize("precision, inside", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_precision_sets_the_dtype_of_the_model_call_only(tmp_path, precision, inside):
    """bf16: the network computes in bfloat16, the loss gets float32, and the weights, the optimizer state, the
    EMA and the checkpoint stay float32; the trajectory stays close to float32 training but is not the same."""
    model = make_model()
    recorder = DtypeRecorder(model)
    run(tmp_path / precision, model=model, loss_fn=recorder, steps=10, precision=precision)
    assert recorder.inside == {inside} and recorder.outside == {torch.float32}
    checkpoint = load_checkpoint(tmp_path / precision)
    states = [checkpoint.model_state, checkpoint.ema_state, *checkpoint.optimizer_state["state"].values()]
    assert all(v.dtype == torch.float32 for state in states for k, v in state.items() if k != "step")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert checkpoint.extra["trainer"]["train_config"]["precision"] == precision
    reference, _ = run(tmp_path / "reference", steps=10)
    difference = max(float((a - b).abs().max()) for a, b in zip(model.state_dict().values(),
                                                                reference.state_dict().values()))
    if precision == "fp32":
        assert difference == 0
    else:
        # 10 Adam steps of lr 1e-2 move a weight by up to 0.1; bfloat16's 2^-8 rounding perturbs the gradients
        # by ~1 %, so the paths part by ~1e-3 at most (measured 2.6e-4).
        assert 0 < difference < 5e-3


def test_bf16_resume_equals_straight_training_bitwise(tmp_path, capsys):
    straight_model, _ = run(tmp_path / "straight", precision="bf16")
    interrupt_by_crash_bf16 = CrashAtCall(8)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "resumed", loss_fn=interrupt_by_crash_bf16, precision="bf16")
    resumed_model, _ = run(tmp_path / "resumed", resume=True, precision="bf16")
    assert_states_equal(resumed_model.state_dict(), straight_model.state_dict())
    assert_states_equal(load_checkpoint(tmp_path / "straight").ema_state, load_checkpoint(tmp_path / "resumed").ema_state)


def test_changing_precision_on_resume_warns_and_a_checkpoint_before_the_setting_does_not(tmp_path, capsys):
    run(tmp_path / "changed", steps=5)
    with pytest.warns(UserWarning, match="precision: fp32 -> bf16"):
        run(tmp_path / "changed", resume=True, steps=7, precision="bf16")

    run(tmp_path / "old", steps=5)  # as written before `precision` existed: no such key, which means fp32
    path = tmp_path / "old" / "checkpoint.json"
    record = json.loads(path.read_text())
    del record["extra"]["trainer"]["train_config"]["precision"]
    path.write_text(json.dumps(record))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(tmp_path / "old", resume=True, steps=7)


def test_unknown_precision_is_a_one_line_error():
    with pytest.raises(UserError) as excinfo:
        make_config(precision="fp16")
    message = user_error_message(excinfo)
    assert "'fp32', 'bf16'" in message and "'fp16'" in message


def test_autocast_wrapper_casts_nested_low_precision_outputs_back_only():
    class Several(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(DIM, DIM)

        def forward(self, x):
            y = self.linear(x)
            return y, {"y": y, "index": torch.arange(3), "double": x.double()}, [y.sum()]

    inner = Several()
    y, parts, (total,) = Autocast(inner, "cpu", torch.bfloat16)(DATA[:5])
    assert y.dtype == parts["y"].dtype == total.dtype == torch.float32
    assert parts["index"].dtype == torch.int64 and parts["double"].dtype == torch.float64
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = inner(DATA[:5])[0]
    assert expected.dtype == torch.bfloat16 and torch.equal(y, expected.float())
    wrapper = Autocast(inner, "cpu", torch.bfloat16)  # no parameters of its own
    assert [name for name, _ in wrapper.named_parameters()] == [f"module.{n}" for n, _ in inner.named_parameters()]


# ------------------------------------------------------------------------------------------------ DDP

WORKER = """
import os, sys
import torch
from safetensors.torch import save_file
from diffusionlab.training import TrainConfig, train

run_dir, out_dir, precision = sys.argv[1], sys.argv[2], sys.argv[3]
rank = int(os.environ["RANK"])
model = torch.nn.Linear(4, 4)
with torch.no_grad():  # a different init on each rank: DDP must broadcast rank 0's
    for param in model.parameters():
        param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(rank)))
data = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
batch_sizes, inside, outside = [], set(), set()
model.register_forward_hook(lambda module, args, out: inside.add(out.dtype))

class Loss:  # stateful, like the ELBO loss's history: every rank's state goes into the checkpoint
    def __init__(self):
        self.calls, self.noise_sum = torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.float64)

    def state_dict(self):
        return {"calls": self.calls.clone(), "noise_sum": self.noise_sum.clone()}

    def load_state_dict(self, state):
        self.calls, self.noise_sum = state["calls"].clone(), state["noise_sum"].clone()

    def __call__(self, model, batch, generator):
        batch_sizes.append(len(batch))
        noise = torch.randn(batch.shape, generator=generator)
        self.calls += 1
        self.noise_sum += noise.double().sum()
        out = model(batch + 0.1 * noise)
        outside.add(out.dtype)
        return ((out - batch) ** 2).mean(dim=1)

loss_fn = Loss()

config = TrainConfig(steps=6, batch_size=8, lr=1e-2, warmup_steps=2, ema_decay=0.5, checkpoint_every=3,
                     log_every=2, seed=0, num_threads=1, device="cpu", precision=precision)
result = train(model, loss_fn, data, config, run_dir, run_config={"dim": 4}, progress=False)
assert set(batch_sizes) == {4}, batch_sizes
assert inside == {torch.bfloat16 if precision == "bf16" else torch.float32} and outside == {torch.float32}
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(out_dir, f"rank{rank}.safetensors"))
print(f"rank {rank} finished at step {result.step}", flush=True)
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)  # two-rank gloo runs can abort at interpreter exit on this machine
"""


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_ddp_two_ranks(tmp_path, precision):
    worker = tmp_path / "worker.py"
    worker.write_text(textwrap.dedent(WORKER))
    (tmp_path / "tmp").mkdir()
    src_dir = str(Path(diffusionlab.__file__).resolve().parents[1])
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [src_dir, os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(worker), str(tmp_path / "run"), str(tmp_path), precision]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr

    rank0, rank1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert_states_equal(rank0, rank1)
    checkpoint = load_checkpoint(tmp_path / "run")
    assert checkpoint.step == 6
    assert_states_equal(checkpoint.model_state, rank0)
    assert {"loss.rank0", "loss.rank1", "data_epoch"} == checkpoint.rng_states.keys()
    assert not torch.equal(checkpoint.rng_states["loss.rank0"], checkpoint.rng_states["loss.rank1"])
    state = checkpoint.loss_state  # gathered from both ranks: each rank's own (its noise differs)
    assert state.keys() == {"rank0.calls", "rank0.noise_sum", "rank1.calls", "rank1.noise_sum"}
    assert int(state["rank0.calls"]) == int(state["rank1.calls"]) == 6
    assert not torch.equal(state["rank0.noise_sum"], state["rank1.noise_sum"])
    assert [entry["step"] for entry in read_log(tmp_path / "run")] == [2, 4, 6]


# ------------------------------------------------------------------------------------- resume and data checks


def test_resume_refuses_other_data_or_another_run_config(tmp_path):
    run(tmp_path / "r", steps=5)
    with pytest.raises(UserError, match="other data"):
        train(make_model(), quadratic_loss, DATA * 100, make_config(steps=10), tmp_path / "r",
              run_config={"model": "linear", "dim": DIM}, resume=True, progress=False)
    with pytest.raises(UserError, match="run_config differs .* in model"):
        train(make_model(), quadratic_loss, DATA, make_config(steps=10), tmp_path / "r",
              run_config={"model": "mlp", "dim": DIM}, resume=True, progress=False)
    before = (tmp_path / "r" / "checkpoint.json").read_bytes()
    _, result = run(tmp_path / "r", resume=True, steps=10)  # the same data and config (its train section may change)
    assert result.step == 10 and (tmp_path / "r" / "checkpoint.json").read_bytes() != before


@pytest.mark.parametrize("data, message", [(DATA.long(), "int64"), (DATA.double(), "float64 but the model")])
def test_training_data_must_be_floating_and_of_the_models_dtype(data, message, tmp_path):
    with pytest.raises(UserError, match=message):
        train(make_model(), quadratic_loss, data, make_config(), tmp_path / "r", run_config={}, progress=False)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("output", [lambda x: x[:, :1], lambda x: x.mean(0), lambda x: x[None]])
def test_the_denoising_loss_refuses_a_prediction_of_another_shape(output):
    """Broadcasting would make (n, 1), (d,) or (1, n, d) outputs a finite loss that trains the wrong thing."""
    loss = diffusionlab.DenoisingLoss(diffusionlab.DDPM(T=100))
    with pytest.raises(UserError, match=r"the model returned .* for input \(8, 2\)"):
        loss(lambda x, t: output(x), torch.randn(8, 2), torch.Generator().manual_seed(0))


def test_a_save_removes_temporaries_of_a_killed_save(tmp_path):
    """Every write uses a fresh temporary name, so the temporary files of a save killed before its rename would
    pile up, one per crash; the next save removes them (and nothing else)."""
    model = make_model()
    save_checkpoint(tmp_path / "r", model=model, step=1, config={})
    stale = [tmp_path / "r" / ".checkpoint.safetensors.0123456789ab.tmp", tmp_path / "r" / ".checkpoint.json.cdef01234567.tmp"]
    others = [tmp_path / "r" / name for name in ("notes.txt", ".checkpoint.json.my notes.tmp", ".checkpoint.json..tmp",
                                                  ".train_log.jsonl.0123456789ab.tmp")]
    for path in [*stale, *others]:
        path.write_bytes(b"partial")
    (tmp_path / "r" / ".checkpoint.json.abcdefabcdef.tmp").mkdir()  # not a file: left alone, and the save works
    save_checkpoint(tmp_path / "r", model=model, step=2, config={})
    assert not any(path.exists() for path in stale) and all(path.exists() for path in others)
    assert load_checkpoint(tmp_path / "r").step == 2


def test_save_checkpoint_refuses_a_bad_step_or_folder_and_keeps_the_old_pair(tmp_path):
    model = make_model()
    save_checkpoint(tmp_path / "r", model=model, step=3, config={})
    before = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()}
    for step in (-5, 2.7, True, "3"):
        with pytest.raises(UserError, match="step must be an integer >= 0"):
            save_checkpoint(tmp_path / "r", model=model, step=step, config={})
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="cannot write the checkpoint into"):
        save_checkpoint(tmp_path / "afile", model=model, step=1, config={})
    assert {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()} == before


def test_ema_decay_must_be_a_number_in_range():
    import numpy as np

    from diffusionlab.training import EMA

    assert EMA(make_model(), np.float32(0.9)).decay == pytest.approx(0.9)
    for decay in ("0.9", None, True, 1.0, -0.1):
        with pytest.raises(UserError, match="EMA decay"):
            EMA(make_model(), decay)
