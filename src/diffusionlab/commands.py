"""What each CLI command does, as plain functions of the parsed arguments (see ``cli.py``)."""

from __future__ import annotations

import copy
import json
import math
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from . import run as runs
from ._files import checked_output_path, write_atomically, write_together
from .data import BUILTIN_DATASETS, load_dataset
from .errors import UserError
from .evaluation import save_image_grid, save_scatter, save_trajectory, save_trajectory_2d
from .evaluation.plots import drawable
from .likelihood import bits_per_dim, dequantize, discrete_nll_from_density, log_likelihood
from .nets import count_parameters
from .objectives import negative_elbo
from .parametrization import Denoiser
from .samplers import SAMPLERS, exact_solution, fit_multistep, optimize_grid
from .samplers import sampler_options as options_of
from .grids import time_grid
from .samplers.tuning import DETERMINISTIC
from .samplers import sample as draw
from .training import checkpoint_exists, load_checkpoint, train as run_training
from .training.trainer import existing_run_files, tensor_sha256
from .precision import with_precision

# --------------------------------------------------------------------------------------------------
# train


def _flag_overrides(args) -> dict:
    """The part of the run config that the command-line flags set."""
    flags: dict = {"train": {}, "objective": {}}
    for name in ("steps", "batch_size", "lr", "seed", "precision"):
        if getattr(args, name, None) is not None:
            flags["train"][name] = getattr(args, name)
    if getattr(args, "process", None):
        flags["process"] = {"process": args.process}
    if getattr(args, "prediction", None):
        flags["prediction"] = args.prediction
    for name in ("loss", "weighting", "time_sampling"):
        if getattr(args, name, None):
            flags["objective"][name] = getattr(args, name)
    return flags


def _train_config_from_args(args, dataset=None) -> dict:
    """The run config: defaults ← config file ← command-line flags."""
    overrides = runs.read_config_file(args.config) if args.config else {}
    spec = overrides.get("data", {}).get("spec", args.data)
    if spec != args.data:
        raise UserError(f"the config file's data.spec {spec!r} disagrees with --data {args.data!r}: give the data once")
    flags = _flag_overrides(args)
    data = {"spec": args.data, "seed": flags["train"].get("seed", overrides.get("train", {}).get("seed", 0)),
            "test_fraction": overrides.get("data", {}).get("test_fraction", 0.1)}
    config = runs.default_config(dataset, data)
    config = runs.merge(config, overrides)
    return runs.merge(config, flags)


# What a resume may change (the trainer warns when lr or precision change the trajectory); every other setting
# is fixed by the run.
_RESUME_TRAIN_KEYS = ("steps", "lr", "precision")


def _resume_config(stored: dict, args, data_sha256: str | None = None):
    """The stored run config, with the train ``steps``, ``lr`` and ``precision`` that this command line sets
    (config file, then flags), and the dataset when finding the moved data loaded it already (else None).
    The original command line plus ``--resume`` is accepted: any other flag or config-file entry must agree
    with the run, or it is refused (it cannot take effect)."""
    wanted = runs.merge(stored, runs.read_config_file(args.config) if args.config else {})
    wanted = runs.merge(wanted, _flag_overrides(args))
    moved = args.data is not None and not _same_data(args.data, stored["data"]["spec"])
    dataset = _moved_dataset(args.data, stored["data"], data_sha256) if moved else None
    if moved and dataset is None:
        wanted["data"]["spec"] = args.data
    if args.seed is not None:
        wanted["data"]["seed"] = args.seed

    def fixed(config: dict) -> dict:
        return {**config, "train": {k: v for k, v in config["train"].items() if k not in _RESUME_TRAIN_KEYS}}

    changed = _differences(fixed(stored), fixed(wanted))
    if changed:
        shown = "; ".join(changed[:4]) + ("; …" if len(changed) > 4 else "")
        raise UserError(f"the run was trained with other settings ({shown}); a resume can change only --steps, "
                        "--lr and --precision: drop the others, or start a new run with another --out")
    config = copy.deepcopy(stored)
    for key in _RESUME_TRAIN_KEYS:
        if key in wanted["train"]:
            config["train"][key] = wanted["train"][key]
    if moved:  # the same examples under a new name (the file moved): train on, from there
        config["data"]["spec"] = args.data
    return config, dataset


def _moved_dataset(spec: str, stored: dict, data_sha256: str | None):
    """The dataset at ``spec`` if it holds the training examples whose fingerprint the trainer recorded, else
    None (also for runs without a fingerprint, and for data that does not load)."""
    if data_sha256 is None:
        return None
    try:
        dataset = _load_training_data(spec, stored)
    except UserError:
        return None
    return dataset if tensor_sha256(dataset.train) == data_sha256 else None


def _same_data(given: str, stored: str) -> bool:
    """The same data spec: the same string, or two names of one existing file or folder."""
    if given == stored:
        return True
    a, b = Path(given).expanduser(), Path(stored).expanduser()
    return a.exists() and b.exists() and a.resolve() == b.resolve()


def _differences(old, new, path: str = "") -> list[str]:
    """``"key.path: old -> new"`` for every leaf where two JSON-like configs differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [line for key in sorted(old.keys() | new.keys(), key=str)
                for line in _differences(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))]
    return [] if old == new else [f"{path}: {old} -> {new}"]


def _load_training_data(spec: str, data_cfg: dict):
    return load_dataset(spec, seed=int(data_cfg.get("seed", 0)), test_fraction=float(data_cfg.get("test_fraction", 0.1)))


def train(args) -> int:
    out = Path(args.out)  # the trainer refuses a file there
    if args.resume:
        if not checkpoint_exists(out):
            raise UserError(f"nothing to resume in {out}: no checkpoint there (drop --resume to start a new run)")
        checkpoint = load_checkpoint(out)
        data_sha256 = ((checkpoint.extra or {}).get("trainer") or {}).get("data_sha256")
        config, dataset = _resume_config(checkpoint.config, args, data_sha256)
        spec = config["data"]["spec"]
        if args.data is None and spec not in BUILTIN_DATASETS and not Path(spec).expanduser().exists():
            raise UserError(f"the run's data {spec} is gone; if it moved, resume with --data NEW_PATH (the examples "
                            "must be the same)")
        if dataset is None:
            dataset = _load_training_data(spec, config["data"])  # the trainer refuses other examples than the run's
    else:
        if not args.data:
            raise UserError("--data is required to start a run (a built-in name or a path)")
        if existing := existing_run_files(out):
            raise UserError(f"{out} already holds a run ({', '.join(existing)}); pass --resume to continue it or "
                            "choose another --out")
        seed = args.seed if args.seed is not None else 0
        dataset = load_dataset(args.data, seed=seed)
        config = _train_config_from_args(args, dataset)
        if config["data"]["seed"] != seed or config["data"].get("test_fraction", 0.1) != 0.1:
            dataset = _load_training_data(args.data, config["data"])
            config["dataset"] = json.loads(dataset.to_json())
    loss_fn = runs.build_loss(config, dataset.levels)
    tcfg = runs.train_config(config)
    torch.manual_seed(tcfg.seed)  # the initial weights
    model = runs.build_model(config)
    say = print if os.environ.get("RANK", "0") == "0" else (lambda *a, **k: None)  # torchrun: rank 0 speaks
    say(f"diffusionlab: training {config['network']['type']} ({count_parameters(model):,} parameters) on "
          f"{dataset.name} ({len(dataset.train)} train / {len(dataset.test)} test, shape {tuple(dataset.shape)}), "
          f"process {config['process']['process']}, predicting {config['prediction']}, into {out}", flush=True)
    result = run_training(model, loss_fn, dataset.train, tcfg, out, run_config=config, resume=args.resume,
                          progress=not getattr(args, "no_progress", False))
    say(f"diffusionlab: done: step {result.step}, loss {result.loss:.4f}, {result.wall_time:.1f} s "
          f"({result.steps_per_s:.1f} steps/s); checkpoint in {out}", flush=True)
    return 0


# --------------------------------------------------------------------------------------------------
# sample


def _to_unit_range(run, x: torch.Tensor) -> torch.Tensor:
    """Images in data units → [0, 1] for display."""
    ds = run.dataset
    data = ds.to_data_units(x)
    if ds.levels is not None:
        return (data / (ds.levels - 1)).clamp(0, 1)
    return ((x + 1) / 2).clamp(0, 1)  # float images are scaled to [−1, 1] by min/max


# The sampler options that `sample` takes as flags: every keyword option of every sampler, except
# fitted_multistep's coefficients, which come from the --solver file. Derived, so that a new sampler option
# cannot be forgotten here; tests/test_cli.py checks that cli.py defines a flag for each and no other.
SAMPLER_OPTIONS = tuple(dict.fromkeys(option for name in SAMPLERS for option in options_of(name)
                                      if option != "coefficients"))


def given_options(args, names) -> dict:
    """The options among ``names`` given on the command line (those not given are absent from ``args``)."""
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def flags(names) -> str:
    """``corrector_steps`` → ``--corrector-steps``, comma-separated."""
    return ", ".join("--" + name.replace("_", "-") for name in names)


def sampler_options(args, sampler: str) -> dict:
    """The sampler options given on the command line (``--eta`` …), checked against what ``sampler`` takes."""
    options = given_options(args, SAMPLER_OPTIONS)
    accepted = [name for name in options_of(sampler) if name in SAMPLER_OPTIONS]
    unknown = [name for name in options if name not in accepted]
    if unknown:
        raise UserError(f"{flags(unknown)} does not apply to the {sampler} sampler (its options: "
                        f"{flags(accepted) or 'none of them'})")
    return options


def generate(run, n: int, sampler: str, steps: int | None, seed: int, grid: str = "uniform",
             trajectory_every: int | None = None, denoise: bool = True, options: dict | None = None,
             precision: str = "fp32"):
    """n samples in model units, and optionally every ``trajectory_every``-th state of the reverse process.
    ``options`` go to the sampler (``variance``, ``eta``, ``snr``, ``corrector_steps``, ``rtol``, ``atol``).
    ``precision="bf16"`` evaluates the network under bfloat16 autocast (its output back in float32); the
    sampler's own arithmetic stays in float32."""
    generator = torch.Generator().manual_seed(seed)
    frames = []
    model = with_precision(run.model, precision)

    def keep(k, t, x):
        if trajectory_every and (k % trajectory_every == 0 or float(t) == 0.0):
            frames.append(x.detach().clone())

    x, nfe = draw(model, run.process, sampler, steps, shape=(n, *run.dataset.shape), prediction=run.prediction,
                  generator=generator, grid=grid, callback=keep if trajectory_every else None, denoise=denoise,
                  return_nfe=True, **(options or {}))
    return x, frames, nfe  # finite: dl.sample refuses NaN/inf


def check_drawable(run, path: Path) -> None:
    """Refuse, before any sampling, a picture of data that has no picture: images need C = 1 or 3 channels,
    vectors D >= 2 coordinates (a scatter plot of the first two)."""
    shape = tuple(run.dataset.shape)
    if not drawable(run.dataset.kind, shape):
        what = "images with 1 or 3 channels" if run.dataset.kind == "image" else "vectors of 2 or more coordinates"
        raise UserError(f"cannot draw {path}: this run's examples have shape {shape}, and pictures are made of "
                        f"{what}; write the samples to a .npy file instead")


def write_samples(run, x: torch.Tensor, out: Path) -> None:
    if out.suffix.lower() == ".npy":
        data = run.dataset.to_data_units(x).cpu().numpy().astype(np.float32)
        write_atomically(out, lambda handle: np.save(handle, data))
    elif run.dataset.kind == "image":
        save_image_grid(_to_unit_range(run, x), out)
    else:
        save_scatter(run.dataset.to_data_units(x), out, title=f"{len(x)} samples")


def write_trajectory(run, frames: list[torch.Tensor], out: Path, n_show: int = 8) -> None:
    if run.dataset.kind == "image":
        save_trajectory([_to_unit_range(run, f[:n_show]) for f in frames], out)
    else:
        save_trajectory_2d([run.dataset.to_data_units(f) for f in frames], out)


def sample(args) -> int:
    out = checked_output_path(args.out, (".png", ".npy"))
    solver = read_solver(args.solver) if getattr(args, "solver", None) else None
    sampler = solver["sampler"] if solver else args.sampler
    options = sampler_options(args, sampler)  # a misplaced option fails before the run is loaded
    traj = checked_output_path(args.trajectory, (".png", ".gif")) if args.trajectory else None
    if traj and traj.resolve() == out.resolve():
        raise UserError(f"--out and --trajectory are the same file {out}: give them different names")
    run = runs.load_run(args.run_dir, ema=not args.raw_weights)
    if traj and run.dataset.kind == "vector" and traj.suffix.lower() != ".png":
        raise UserError("the trajectory of vector data is a row of scatter plots: give --trajectory a .png name")
    for picture in [p for p in (out, traj) if p is not None and p.suffix.lower() != ".npy"]:
        check_drawable(run, picture)
    grid = args.grid
    if solver:
        grid, fitted = solver_for_run(solver, run, args.solver, args.steps, ema=not args.raw_weights)
        options.update(fitted)
    steps = len(grid) if solver else args.steps or run.process.default_steps()
    t0 = time.perf_counter()
    x, frames, nfe = generate(run, args.n, sampler, steps, args.seed, grid,
                              trajectory_every=max(1, steps // 20) if traj else None, denoise=not args.no_denoise,
                              options=options, precision=args.precision)
    write_together([(out, lambda path: write_samples(run, x, path))]
                   + ([(traj, lambda path: write_trajectory(run, frames, path))] if traj else []))
    print(f"diffusionlab: wrote {args.n} samples to {out}" + (f" and the trajectory to {traj}" if traj else "")
          + f" ({sampler}, {steps} steps, {nfe} model evaluations, {args.precision}, {time.perf_counter() - t0:.1f} s)")
    return 0


# --------------------------------------------------------------------------------------------------
# fit-sampler

SOLVER_FORMAT = "diffusionlab-fitted-sampler"


def fit_sampler(args) -> int:
    """Fit ``fitted_multistep`` to a run: the grid by ``optimize_grid`` (with ``--base-sampler``), then the
    coefficients by ``fit_multistep``, both on one batch of calibration noise; write them as JSON."""
    out = checked_output_path(args.out, (".json",))
    if args.steps < 2:
        raise UserError(f"--steps must be at least 2 for a fitted sampler (got {args.steps})")
    run = runs.load_run(args.run_dir, ema=not args.raw_weights)
    process, model, prediction = run.process, run.model, run.prediction
    time_grid(process, args.steps)  # a step count the process cannot take fails here, before the reference solve
    t0 = time.perf_counter()
    x_cal = process.prior_sample((args.calibration, *run.dataset.shape), torch.Generator().manual_seed(args.seed))
    # float32 networks: a tolerance far below the few-step errors this fit is about, well above round-off
    reference = exact_solution(model, process, x_cal, prediction=prediction, rtol=1e-5)
    grid_fit = optimize_grid(model, process, args.base_sampler, args.steps, x_cal, prediction=prediction,
                             reference=reference, objective=args.objective)
    fit = fit_multistep(model, process, grid_fit.grid, x_cal, prediction=prediction, reference=reference,
                        batch_size=args.batch_size, objective=args.objective)
    # The coefficient fit starts from DDIM's and DPM-Solver++(2M)'s and (3M)'s numbers, not from the base sampler
    # (UniPC's corrector is not of the fitted form): keep whichever is closer on the calibration noise, the base
    # sampler on the fitted grid or the fitted coefficients, so the file is never worse than the fitted grid alone.
    fitted_wins = fit.error <= grid_fit.error
    solver = {"format": SOLVER_FORMAT, "version": 1,
              "sampler": "fitted_multistep" if fitted_wins else args.base_sampler, "steps": args.steps,
              "grid": grid_fit.grid.tolist(), "coefficients": fit.coefficients if fitted_wins else None,
              "process": run.config["process"], "prediction": prediction, "run_step": run.step,
              "ema": not args.raw_weights, "checkpoint_sha256": run.checkpoint_sha256,
              "calibration": {"n": args.calibration, "seed": args.seed, "base_sampler": args.base_sampler,
                              "objective": args.objective,
                              f"{args.objective}_error": {f"{args.base_sampler}, log-SNR grid": grid_fit.start_error,
                                            f"{args.base_sampler}, fitted grid": grid_fit.error,
                                            "fitted_multistep": fit.error}}}
    write_atomically(out, lambda handle: handle.write(json.dumps(solver, indent=1).encode()))
    print(f"diffusionlab: wrote a {args.steps}-step fitted sampler ({solver['sampler']}) to {out} (calibration "
          f"{'RMS' if args.objective == 'rms' else 'mean'} error to the exact "
          f"ODE solution: {args.base_sampler} log-SNR grid {grid_fit.start_error:.4g}, fitted grid "
          f"{grid_fit.error:.4g}, fitted coefficients {fit.error:.4g}; {time.perf_counter() - t0:.0f} s). "
          f"Use it: diffusionlab sample {args.run_dir} --solver {out} ...")
    return 0


def read_solver(path: str) -> dict:
    """A fitted sampler written by ``fit-sampler``, checked."""
    try:
        solver = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"solver file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read the solver file {path} ({str(e).splitlines()[0]}); write it again with "
                        "diffusionlab fit-sampler") from None
    keys = ("sampler", "grid", "coefficients", "process", "prediction")
    if not isinstance(solver, dict) or solver.get("format") != SOLVER_FORMAT or any(k not in solver for k in keys):
        raise UserError(f"{path} is not a solver file written by diffusionlab fit-sampler")
    grid, rows = solver["grid"], solver["coefficients"]

    def numbers(v) -> bool:
        return isinstance(v, list) and all(isinstance(a, (int, float)) and math.isfinite(a) for a in v)

    if (solver["sampler"] not in DETERMINISTIC or not numbers(grid) or len(grid) < 2
            or not (rows is None or (isinstance(rows, list) and all(numbers(r) for r in rows)))):
        raise UserError(f"{path} has a malformed sampler, grid or coefficients; write it again with "
                        "diffusionlab fit-sampler")
    return solver


def solver_for_run(solver: dict, run, path: str, steps: int | None, ema: bool = True):
    """The grid (tensor) and sampler options (the coefficients) of ``solver``, after checking that it was fitted to
    a model like ``run``'s (a different step or weights only warns: the file may still do)."""
    if solver["process"] != run.config["process"] or solver["prediction"] != run.prediction:
        raise UserError(f"{path} was fitted to a {solver['process']} / {solver['prediction']} model, this run is "
                        f"{run.config['process']} / {run.prediction}: fit a sampler to this run with fit-sampler")
    fitted_sha = solver.get("checkpoint_sha256")
    if solver.get("run_step") != run.step or solver.get("ema", True) != ema:
        weights = lambda step, e: f"step {step}, {'EMA' if e else 'raw'} weights"  # noqa: E731
        warnings.warn(f"{path} was fitted to the model at {weights(solver.get('run_step'), solver.get('ema', True))}, "
                      f"this is {weights(run.step, ema)}: its grid and coefficients may no longer fit (refit with "
                      "fit-sampler)", stacklevel=2)
    elif fitted_sha is not None and fitted_sha != run.checkpoint_sha256:
        warnings.warn(f"{path} was fitted to other weights than this run's (another run, or this one retrained): its "
                      "grid and coefficients may not fit (refit with fit-sampler)", stacklevel=2)
    grid = torch.tensor(solver["grid"], dtype=torch.float64)
    if steps is not None and steps != len(grid):
        raise UserError(f"{path} is a {len(grid)}-step sampler; leave out --steps (got {steps})")
    return grid, {"coefficients": solver["coefficients"]} if solver["coefficients"] is not None else {}


# --------------------------------------------------------------------------------------------------
# eval


def _test_data(run, spec: str, n: int | None) -> torch.Tensor:
    """The test split of ``spec`` (split by the run's seed), in the run's model units."""
    data_cfg = run.config.get("data", {})
    ds = _load_training_data(spec, data_cfg)
    if tuple(ds.shape) != tuple(run.dataset.shape):
        raise UserError(f"data {spec!r} has examples of shape {tuple(ds.shape)} but the run was trained on "
                        f"{tuple(run.dataset.shape)}")
    if ds.levels != run.dataset.levels:  # other units: the model would score values it never saw
        def kind(levels):
            return "continuous values" if levels is None else f"{levels} levels"
        raise UserError(f"data {spec!r} has {kind(ds.levels)} but the run was trained on {kind(run.dataset.levels)}: "
                        "evaluate it on data stored like its training data")
    x = run.dataset.to_model_units(ds.to_data_units(ds.test))
    return x[:n] if n else x


ODE_OPTIONS = ("probe", "trace", "rtol", "atol")
# eval's options that belong to one metric or method: name → (default, where it applies: fid, bpd, or a bpd method)
EVAL_OPTIONS = {"method": ("elbo", "bpd"), "sampler": ("dpmpp_2m", "fid"), "steps": (20, "fid"),
                "grid": ("logsnr", "fid"), "precision": ("fp32", "fid"), "strata": (None, "elbo"),
                "variance": ("large", "elbo"), "probes": (1, "ode"), **{name: (None, "ode") for name in ODE_OPTIONS}}


def eval_options(args) -> dict:
    """eval's metric- and method-specific options with their defaults; one given where it does not apply (``--strata``
    with ``--method ode``, ``--sampler`` with ``--metric bpd``, …) is refused, since it could not take effect."""
    method = getattr(args, "method", EVAL_OPTIONS["method"][0])
    scope = {"fid"} if args.metric == "fid" else {"bpd", method}
    wrong = [name for name, (_, where) in EVAL_OPTIONS.items() if hasattr(args, name) and where not in scope]
    if "precision" in wrong and getattr(args, "precision") == "fp32":
        wrong.remove("precision")  # the default, said explicitly
    if wrong:
        where = "--metric fid" if args.metric == "fid" else f"--metric bpd --method {method}"
        hint = "; bits/dim are always computed in float32" if "precision" in wrong else ""
        belongs = sorted({EVAL_OPTIONS[n][1] for n in wrong})
        belongs = ", ".join("--metric " + b if b in ("fid", "bpd") else "--method " + b for b in belongs)
        raise UserError(f"{flags(wrong)}: not an option of {where} (for {belongs} only{hint}): drop it")
    return {name: getattr(args, name, default) for name, (default, _) in EVAL_OPTIONS.items()}


def evaluate_bpd(run, x: torch.Tensor, method: str = "elbo", strata: int | None = None, probes: int = 1,
                 seed: int = 0, batch_size: int = 256, variance: str = "large", ode: dict | None = None) -> dict:
    """Bits/dim (and nats/dim for continuous data, in the data's own units) with its standard error.

    ``ode`` holds ``log_likelihood``'s options (``probe``, ``trace``, ``rtol``, ``atol``). With Hutchinson
    probes the result adds ``hutchinson_stderr``: the part of the bits/dim error due to the probes,
    sqrt(Σ_i se_i²)/n with se_i the standard error over example i's probes (null with one probe)."""
    ds, dims = run.dataset, x[0].numel()
    generator = torch.Generator().manual_seed(seed)
    denoiser = Denoiser(run.model, run.process, run.prediction)
    nll, probe_se, info = [], [], {}
    with torch.no_grad():
        for batch in x.split(batch_size):
            if method == "elbo":
                nll.append(negative_elbo(denoiser, batch, levels=ds.levels, strata=strata, generator=generator,
                                         variance=variance))
            else:
                y = dequantize(batch, ds.levels, generator) if ds.levels else batch
                ll, info = log_likelihood(run.model, run.process, y, run.prediction, probes=probes,
                                          generator=generator, return_info=True, **(ode or {}))
                nll.append(discrete_nll_from_density(ll, dims, ds.levels) if ds.levels else -ll)
                probe_se.append(info["stderr"])
    nll = torch.cat(nll).double()
    if ds.levels is None:  # a density: move it from model units to data units (log|Jacobian| = Σ log scale)
        log_scale = torch.log(ds.scale.double()).expand(ds.shape).sum()
        nll = nll + log_scale
    per_dim = nll / dims
    result = {"metric": "bpd", "method": method, "n": len(x),
              "bpd": float(bits_per_dim(nll, dims).mean()),
              "stderr": float(bits_per_dim(nll, dims).std() / math.sqrt(len(x))) if len(x) > 1 else None}
    if method == "elbo":
        terms = run.process.T if run.process.discrete else None  # a stratified estimate with K >= T is every term
        result["terms"] = "all" if strata is None or (terms and strata >= terms) else f"stratified, {strata} per example"
        result["variance"] = variance
    else:
        result["trace"] = "exact" if info["exact_trace"] else "hutchinson"
        if not info["exact_trace"]:
            se = bits_per_dim(torch.cat(probe_se).double(), dims)
            result.update(probes=probes, probe=(ode or {}).get("probe", "rademacher"),
                          hutchinson_stderr=float(se.pow(2).sum().sqrt() / len(x)) if probes > 1 else None)
    if ds.levels is None:
        result["nats_per_dim"] = float(per_dim.mean())
        result["nats_per_dim_stderr"] = float(per_dim.std() / math.sqrt(len(x))) if len(x) > 1 else None
    else:
        result["levels"] = ds.levels
    return result


def _as_unit_images(run, x: torch.Tensor) -> torch.Tensor:
    """Samples or data in model units → images in [0, 1], quantized to the data's levels (as the data is stored)."""
    ds = run.dataset
    if ds.levels is not None:
        return (ds.quantize(ds.to_data_units(x)) / (ds.levels - 1)).clamp(0, 1)
    return _to_unit_range(run, x)


def evaluate_fid(run, spec: str, n: int | None, sampler: str, steps: int, grid: str, seed: int,
                 batch_size: int, precision: str = "fp32") -> dict:
    """FID of ``n`` samples from the run (in batches of ``batch_size``, seeded seed, seed+1, …) to the test split."""
    from .evaluation import fid as fid_lib

    if run.dataset.kind != "image":
        raise UserError(f"FID compares images, but this run was trained on vectors of shape "
                        f"{tuple(run.dataset.shape)}; use --metric bpd")
    fid_lib.inception_model()  # a missing extra fails here, before any sampling
    reference = _as_unit_images(run, _test_data(run, spec, None))
    if len(reference) < 2:
        raise UserError(f"the test split of {spec!r} has {len(reference)} image(s); FID needs at least 2")
    n = n or len(reference)
    if n < 2:
        raise UserError("FID needs at least 2 samples: pass --n 2 or more")
    parts, nfe = [], 0
    for k, start in enumerate(range(0, n, batch_size)):
        x, _, nfe = generate(run, min(batch_size, n - start), sampler, steps, seed + k, grid, precision=precision)
        parts.append(_as_unit_images(run, x))
    generated = fid_lib.inception_features(torch.cat(parts))
    score = fid_lib.frechet_distance_from_features(generated, fid_lib.inception_features(reference, cache=True))
    return {"metric": "fid", "fid": score, "n_generated": n,
            "n_reference": len(reference), "sampler": sampler, "steps": steps, "grid": grid, "nfe": nfe,
            "precision": precision}


def eval(args) -> int:  # noqa: A001 - the command's name
    opt = eval_options(args)
    run = runs.load_run(args.run_dir)
    if args.metric == "fid":
        print(json.dumps(evaluate_fid(run, args.data, args.n, opt["sampler"], opt["steps"], opt["grid"], args.seed,
                                      args.batch_size, opt["precision"])))
        return 0
    x = _test_data(run, args.data, args.n)
    ode = {name: opt[name] for name in ODE_OPTIONS if opt[name] is not None}
    result = evaluate_bpd(run, x, opt["method"], opt["strata"], opt["probes"], args.seed, args.batch_size,
                          opt["variance"], ode)
    if not all(math.isfinite(v) for v in result.values() if isinstance(v, float)):
        raise UserError(f"the bits/dim are not finite ({result['bpd']}): the model may be under-trained or diverged")
    print(json.dumps(result, allow_nan=False))  # strict JSON: a missing standard error (one example) is null
    return 0


# --------------------------------------------------------------------------------------------------
# demo

DEMO_CONFIG = {
    "network": {"type": "unet", "in_channels": 1, "image_size": 8, "base_channels": 16, "channel_mults": [1, 2],
                "num_res_blocks": 1, "attention_resolutions": [4]},
    "train": {"steps": 2000, "batch_size": 128, "lr": 2e-3, "warmup_steps": 100, "ema_decay": 0.995,
              "checkpoint_every": 500, "log_every": 50},
}


def demo(args) -> int:
    t_start = time.perf_counter()
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder: give a new or existing folder for the demo")
    run_dir = out / "run"
    config_path = out / "demo_config.json"
    cfg = json.loads(json.dumps(DEMO_CONFIG))
    if args.steps:
        cfg["train"]["steps"] = args.steps
    resume = checkpoint_exists(run_dir)
    if resume:
        stored = load_checkpoint(run_dir).config
        if stored.get("data", {}).get("spec") != "digits" or stored.get("network") != cfg["network"]:
            raise UserError(f"{run_dir} holds a run that is not this demo's (digits, the demo's UNet); "
                            "give the demo another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_atomically(config_path, lambda handle: handle.write(json.dumps(cfg, indent=2).encode()))
    # A resumed demo takes its data and config from the run.
    train_args = _Args(data=None if resume else "digits", out=str(run_dir), steps=cfg["train"]["steps"],
                       batch_size=None, lr=None, seed=None, config=None if resume else str(config_path),
                       process=None, prediction=None, loss=None, weighting=None, time_sampling=None, precision=None,
                       resume=resume, no_progress=args.no_progress)
    if resume and load_checkpoint(run_dir).step >= cfg["train"]["steps"]:
        print(f"diffusionlab: {run_dir} is already trained; sampling from it")
    else:
        train(train_args)
    run = runs.load_run(run_dir)
    x, frames, _ = generate(run, 64, "ancestral", None, seed=0, trajectory_every=50)
    write_together([(out / "samples.png", lambda path: write_samples(run, x, path)),
                    (out / "trajectory.png", lambda path: write_trajectory(run, frames, path)),
                    (out / "trajectory.gif", lambda path: write_trajectory(run, frames, path))])
    test = _test_data(run, "digits", None)
    result = evaluate_bpd(run, test, "elbo", strata=50, seed=0)
    write_atomically(out / "bpd.json", lambda handle: handle.write(json.dumps(result, indent=2).encode()))
    print(f"diffusionlab: samples → {out / 'samples.png'}, reverse process → {out / 'trajectory.png'} and "
          f"{out / 'trajectory.gif'}")
    print(f"diffusionlab: test-set NLL (ELBO, {result['terms']}, n={result['n']}): "
          f"{result['bpd']:.3f} ± {result['stderr']:.3f} bits/dim (log2(17) = {math.log2(17):.3f} for a uniform model)")
    print(f"diffusionlab: demo finished in {time.perf_counter() - t_start:.0f} s")
    return 0


class _Args:
    def __init__(self, **kw):
        self.__dict__.update(kw)
