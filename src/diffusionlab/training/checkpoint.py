"""Checkpoints as a pair of plain files: tensors in safetensors, everything else in JSON.

A run directory holds exactly one checkpoint, overwritten on every save:

``checkpoint.safetensors``
    every tensor, flat, under a prefix: ``model.`` (weights), ``ema.`` (EMA shadow weights), ``optim.<param
    id>.<name>`` (optimizer state such as Adam's moments), ``rng.<name>`` (generator states, uint8), ``loss.<name>``
    (the state of a loss that keeps one, such as the ELBO's loss history for importance sampling).
``checkpoint.json``
    the caller's ``config`` (what is needed to rebuild the model and process), ``step``, the optimizer's
    ``param_groups`` and non-tensor state, the caller's ``extra`` and the sha256 of ``checkpoint.safetensors``.

Why this format: safetensors and JSON cannot execute code when loaded (pickle-based ``torch.save`` files can),
both are readable from any language, and the JSON is human-readable, so a run can be inspected with ``cat``.

Why the hash: the two files are written separately, so nothing but a checksum ties a JSON to *its* tensors.
The JSON is the commit record: it is replaced last and names, by hash, the tensor file it belongs to. A
truncated or foreign tensor file is refused with an error, never loaded.

Crash safety (the ordering argument). Each file is written to a temporary file in the same directory,
fsync'ed, then moved over the old one with ``os.replace``, which is atomic: a reader sees the whole old file or
the whole new file, never a torn one. A save proceeds in this order:

1. hard-link the current ``checkpoint.safetensors`` as ``checkpoint.prev.safetensors``;
2. replace ``checkpoint.safetensors`` (new tensors), fsync the directory;
3. replace ``checkpoint.json`` (new step, config, hash), fsync the directory;
4. delete ``checkpoint.prev.safetensors``.

A crash before 2 leaves the old pair untouched. A crash after 3 leaves the new pair. A crash between 2 and 3
leaves new tensors next to the old JSON: the hash in the JSON no longer matches ``checkpoint.safetensors``, but
it matches ``checkpoint.prev.safetensors``, so :func:`load_checkpoint` loads the old pair from there (with a
warning). Two fixed file names cannot be swapped in one atomic step; the link in step 1 is what makes the old
pair survive the window between the two replacements. If the tensors match neither file (the link is gone, or
a file was edited or copied from another run) the mismatch is reported as such. Replacing the JSON last, not
first, matters: the other order would leave a JSON that commits to tensors that were never written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from diffusionlab._files import stale_temporaries, write_atomically
from diffusionlab.errors import UserError, check_count

TENSORS_NAME = "checkpoint.safetensors"
JSON_NAME = "checkpoint.json"
PREVIOUS_TENSORS_NAME = "checkpoint.prev.safetensors"
FORMAT_VERSION = 1
_REQUIRED_JSON_KEYS = ("format_version", "step", "config", "safetensors_sha256")
_TUPLE_TAG = "__tuple__"


@dataclass
class Checkpoint:
    """Everything one save wrote, as plain Python objects on the CPU.

    ``optimizer_state`` is in the layout of ``torch.optim.Optimizer.state_dict()`` so it can be passed to
    ``optimizer.load_state_dict`` directly. ``ema_state`` and ``optimizer_state`` are ``None`` when the save had
    no EMA or optimizer.
    """

    model_state: dict[str, torch.Tensor]
    step: int
    config: dict[str, Any]
    ema_state: dict[str, torch.Tensor] | None = None
    optimizer_state: dict[str, Any] | None = None
    rng_states: dict[str, torch.Tensor] = field(default_factory=dict)
    extra: dict[str, Any] | None = None
    loss_state: dict[str, torch.Tensor] = field(default_factory=dict)
    sha256: str | None = None  # of the tensor file: identifies this save (written by ``save_checkpoint``)


def checkpoint_exists(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` holds a checkpoint: the JSON is the commit record, so its presence decides."""
    return (Path(run_dir) / JSON_NAME).is_file()


def save_checkpoint(
    run_dir: str | os.PathLike,
    *,
    model: torch.nn.Module,
    ema: Any = None,
    optimizer: torch.optim.Optimizer | None = None,
    step: int,
    config: dict,
    rng_states: Mapping[str, torch.Tensor] | None = None,
    extra: dict | None = None,
    loss_state: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """Write the checkpoint pair into ``run_dir`` (created if missing), replacing the previous one atomically.

    ``ema`` is anything with a ``state_dict()`` of tensors (an :class:`~diffusionlab.training.ema.EMA`);
    ``loss_state`` is a flat dict of tensors (a stateful loss's ``state_dict()``, stored under ``loss.``);
    ``config`` and ``extra`` must be JSON-serializable and are stored verbatim. Everything is serialized before
    the first byte is written, so a bad ``config`` raises :class:`UserError` and leaves the old checkpoint as is.
    """
    step = check_count("save_checkpoint: step", step)
    tensors = _flatten_tensors(model, ema, optimizer, rng_states, loss_state)
    tensor_bytes = safetensors.torch.save(tensors)
    record = {
        "format_version": FORMAT_VERSION,
        "step": int(step),
        "safetensors_sha256": _sha256(tensor_bytes),
        "config": config,
        "optimizer": _optimizer_record(optimizer),
        "extra": extra,
    }
    json_bytes = to_json_bytes(record)

    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(run_dir)
        _keep_previous_tensors(run_dir)
        write_atomically(run_dir / TENSORS_NAME, lambda handle: handle.write(tensor_bytes), durable=True)
        write_atomically(run_dir / JSON_NAME, lambda handle: handle.write(json_bytes), durable=True)
        (run_dir / PREVIOUS_TENSORS_NAME).unlink(missing_ok=True)
    except OSError as error:  # a full disk, no permission, a file where the folder should be: the old pair stays
        raise UserError(f"cannot write the checkpoint into {run_dir}: {error.strerror or error}"
                        + (f" ({error.filename})" if error.filename else "")) from None


def load_checkpoint(run_dir: str | os.PathLike) -> Checkpoint:
    """Read and verify the checkpoint in ``run_dir``; every problem is a one-line :class:`UserError`."""
    run_dir = Path(run_dir)
    record = _read_record(run_dir)
    tensors = _read_tensors(run_dir, record["safetensors_sha256"])
    groups = _split_prefixes(tensors)
    if not groups["model"]:
        raise UserError(f"{run_dir / TENSORS_NAME} holds no model weights (no 'model.' keys); it was not written by "
                        "diffusionlab's save_checkpoint, so use a run directory this library wrote")
    return Checkpoint(
        model_state=groups["model"],
        ema_state=groups["ema"] or None,
        optimizer_state=_rebuild_optimizer_state(record.get("optimizer"), groups["optim"]),
        step=record["step"],
        config=record["config"],
        rng_states=groups["rng"],
        extra=record.get("extra"),
        loss_state=groups["loss"],
        sha256=record["safetensors_sha256"],
    )


def check_state_keys(expected: Iterable[str], state: Mapping[str, Any], what: str) -> None:
    """Raise a one-line :class:`UserError` naming missing and unexpected keys of a state dict.

    Shared by every place that loads a state dict into an existing module, so a checkpoint for a different
    architecture is reported the same way everywhere.
    """
    expected = set(expected)
    missing = sorted(expected - state.keys())
    unexpected = sorted(state.keys() - expected)
    if missing or unexpected:
        raise UserError(
            f"{what} does not fit the model (missing keys: {_preview(missing)}; unexpected keys: "
            f"{_preview(unexpected)}); rebuild the model from the config stored with the checkpoint"
        )


def one_line(text: object) -> str:
    """Collapse an exception message (torch's often span lines) so it can be embedded in a one-line error."""
    return " ".join(str(text).split())


# ----------------------------------------------------------------------------------------------- writing


def _flatten_tensors(model, ema, optimizer, rng_states, loss_state=None) -> dict[str, torch.Tensor]:
    """All tensors of a save under their prefixes, as independent contiguous CPU copies.

    Copies because safetensors refuses tensors that share storage (tied weights) and needs contiguous CPU data.
    """
    flat: dict[str, torch.Tensor] = {}
    _add_prefixed(flat, "model.", model.state_dict())
    if ema is not None:
        _add_prefixed(flat, "ema.", ema.state_dict())
    if optimizer is not None:
        for param_id, param_state in optimizer.state_dict()["state"].items():
            tensors = {name: value for name, value in param_state.items() if isinstance(value, torch.Tensor)}
            _add_prefixed(flat, f"optim.{param_id}.", tensors)
    for name, state in (rng_states or {}).items():
        if state.dtype != torch.uint8:
            raise UserError(f"rng state {name!r} has dtype {state.dtype}; pass generator.get_state() (uint8)")
    _add_prefixed(flat, "rng.", rng_states or {})
    _add_prefixed(flat, "loss.", loss_state or {})
    return flat


def _add_prefixed(flat: dict, prefix: str, tensors: Mapping[str, torch.Tensor]) -> None:
    for name, tensor in tensors.items():
        flat[prefix + name] = tensor.detach().to("cpu", copy=True).contiguous()


def _optimizer_record(optimizer: torch.optim.Optimizer | None) -> dict | None:
    """The JSON half of an optimizer state: param_groups plus per-parameter non-tensor values."""
    if optimizer is None:
        return None
    state_dict = optimizer.state_dict()
    values = {
        str(param_id): {name: value for name, value in param_state.items() if not isinstance(value, torch.Tensor)}
        for param_id, param_state in state_dict["state"].items()
    }
    return {"param_groups": _tag_tuples(state_dict["param_groups"]), "state": values}


def _tag_tuples(value: Any) -> Any:
    """Mark tuples (Adam's ``betas``) so they come back as tuples: JSON would turn them into lists."""
    if isinstance(value, tuple):
        return {_TUPLE_TAG: [_tag_tuples(item) for item in value]}
    if isinstance(value, list):
        return [_tag_tuples(item) for item in value]
    if isinstance(value, dict):
        return {key: _tag_tuples(item) for key, item in value.items()}
    return value


def _untag_tuples(value: Any) -> Any:
    if isinstance(value, dict):
        if value.keys() == {_TUPLE_TAG}:
            return tuple(_untag_tuples(item) for item in value[_TUPLE_TAG])
        return {key: _untag_tuples(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_untag_tuples(item) for item in value]
    return value


def to_json_bytes(record: Any) -> bytes:
    """Strict JSON (no NaN/Infinity, which other parsers reject); a non-serializable value is a UserError.

    Public so that callers can check a config up front rather than at the first checkpoint, hours in.
    """
    try:
        return json.dumps(record, indent=2, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as error:
        raise UserError(f"checkpoint config/extra must be plain JSON (str, int, finite float, bool, None, list, "
                        f"dict): {one_line(error)}") from None


def _remove_stale_temporaries(run_dir: Path) -> None:
    """Delete temporary files of the checkpoint pair left by a save that was killed before its rename (each write
    uses a fresh temporary name, so nothing else would ever replace them); the trainer is the run's only writer."""
    for name in (TENSORS_NAME, JSON_NAME):
        for stale in stale_temporaries(run_dir / name):
            stale.unlink(missing_ok=True)


def _keep_previous_tensors(run_dir: Path) -> None:
    """Step 1 of a save: keep the tensors the current JSON commits to reachable as ``checkpoint.prev``.

    A hard link costs no space or copy. If a ``prev`` file is already there, an earlier save was interrupted;
    it is kept when it is the file the JSON still commits to (the interrupted save's new tensors in
    ``checkpoint.safetensors`` are then the orphan), so two crashes in a row still leave the old pair loadable.
    """
    current, previous = run_dir / TENSORS_NAME, run_dir / PREVIOUS_TENSORS_NAME
    if not current.is_file():
        return
    if previous.is_file():
        if _committed_hash(run_dir) == _sha256(previous.read_bytes()):
            return
        previous.unlink()
    try:
        os.link(current, previous)
    except OSError:  # file systems without hard links
        shutil.copyfile(current, previous)


def _committed_hash(run_dir: Path) -> str | None:
    """The tensor hash the current JSON commits to, or None when there is no readable JSON."""
    try:
        return json.loads((run_dir / JSON_NAME).read_bytes())["safetensors_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------------------------- reading


def _read_record(run_dir: Path) -> dict:
    """The parsed checkpoint.json, after checking the directory, the file, its syntax and its keys."""
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist; check the path")
    json_path = run_dir / JSON_NAME
    if not json_path.is_file():
        raise UserError(f"no checkpoint in {run_dir} (no {JSON_NAME}); train into it first or check the path")
    try:
        record = json.loads(json_path.read_bytes())
    except (ValueError, UnicodeDecodeError) as error:
        raise UserError(f"{json_path} is not valid JSON ({one_line(error)}); the file is corrupt: restore it from "
                        "a backup or start a new run directory") from None
    if not isinstance(record, dict):
        raise UserError(f"{json_path} is not a checkpoint record (not a JSON object); restore it from a backup")
    missing = [key for key in _REQUIRED_JSON_KEYS if key not in record]
    if missing:
        raise UserError(f"{json_path} lacks the keys {', '.join(missing)}; it is damaged or was not written by "
                        "diffusionlab: restore it from a backup or start a new run directory")
    if record["format_version"] != FORMAT_VERSION:
        raise UserError(f"{json_path} has format version {record['format_version']}, this diffusionlab reads "
                        f"version {FORMAT_VERSION}; use the diffusionlab version that wrote it")
    optimizer = record.get("optimizer")
    step = record["step"]
    bad = ("its step is not a whole number >= 0" if not isinstance(step, int) or isinstance(step, bool) or step < 0
           else "its config is not an object" if not isinstance(record["config"], dict)
           else "its optimizer record is malformed" if optimizer is not None and not (
               isinstance(optimizer, dict) and isinstance(optimizer.get("state"), dict)
               and isinstance(optimizer.get("param_groups"), list)
               and all(isinstance(group, dict) for group in optimizer["param_groups"]))
           else None)
    if bad:
        raise UserError(f"{json_path} is damaged ({bad}); restore it from a backup or start a new run directory")
    return record


def _read_tensors(run_dir: Path, committed_hash: str) -> dict[str, torch.Tensor]:
    """The tensors the JSON commits to: from checkpoint.safetensors, or from checkpoint.prev after a crash."""
    path = run_dir / TENSORS_NAME
    if not path.is_file():
        raise UserError(f"{path} is missing next to {JSON_NAME}; restore it or start a new run directory")
    data = path.read_bytes()
    if _sha256(data) == committed_hash:
        return _parse_safetensors(path, data)
    previous = run_dir / PREVIOUS_TENSORS_NAME
    if previous.is_file():
        previous_data = previous.read_bytes()
        if _sha256(previous_data) == committed_hash:
            warnings.warn(f"the last save into {run_dir} was interrupted; loading the previous checkpoint from "
                          f"{PREVIOUS_TENSORS_NAME}", stacklevel=3)
            return _parse_safetensors(previous, previous_data)
    _parse_safetensors(path, data)  # a truncated/corrupt file gets that more specific message
    raise UserError(
        f"{path} does not match the sha256 recorded in {JSON_NAME} (hash mismatch): a save was interrupted "
        "between writing the two files, or one was edited or copied from another run; restore both files from "
        "one save or start a new run directory"
    )


def _parse_safetensors(path: Path, data: bytes) -> dict[str, torch.Tensor]:
    try:
        return safetensors.torch.load(data)
    except (safetensors.SafetensorError, ValueError, RuntimeError) as error:
        raise UserError(f"{path} is truncated or corrupt ({one_line(error)}); restore it from a backup or start a "
                        "new run directory") from None


def _split_prefixes(tensors: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Group flat keys by their first component (``model``, ``ema``, ``optim``, ``rng``, ``loss``), prefix removed."""
    groups: dict[str, dict[str, torch.Tensor]] = {"model": {}, "ema": {}, "optim": {}, "rng": {}, "loss": {}}
    for key, tensor in tensors.items():
        prefix, _, name = key.partition(".")
        if prefix not in groups or not name:
            raise UserError(f"unexpected tensor {key!r} in the checkpoint; it was not written by diffusionlab's "
                            "save_checkpoint, so use a run directory this library wrote")
        groups[prefix][name] = tensor
    return groups


def _rebuild_optimizer_state(record: dict | None, tensors: dict[str, torch.Tensor]) -> dict | None:
    """Reassemble ``optimizer.state_dict()``: tensors ``<param id>.<name>`` plus the JSON's non-tensor values."""
    if record is None:
        return None
    try:
        state = {int(param_id): dict(values) for param_id, values in record["state"].items()}
        for key, tensor in tensors.items():
            param_id, _, name = key.partition(".")
            state.setdefault(int(param_id), {})[name] = tensor
        return {"state": state, "param_groups": _untag_tuples(record["param_groups"])}
    except (KeyError, ValueError, TypeError, AttributeError) as error:
        raise UserError(f"the optimizer state in the checkpoint is malformed ({one_line(error)}); restore the run "
                        "directory from a backup or start a new one") from None


def _preview(keys: list[str], limit: int = 5) -> str:
    if not keys:
        return "none"
    shown = ", ".join(keys[:limit])
    return shown if len(keys) <= limit else f"{shown} and {len(keys) - limit} more"
