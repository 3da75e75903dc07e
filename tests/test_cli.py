"""The command line end to end: train → sample → eval on a 2-D set, every promised file, and one-line errors."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import diffusionlab as dl
from diffusionlab.cli import main
from diffusionlab.data import load_dataset
from diffusionlab.evaluation import sliced_wasserstein
from diffusionlab.run import load_run
from diffusionlab.training import load_checkpoint

SMALL_RUN = {"network": {"type": "mlp", "dim": 2, "hidden": 128, "depth": 3},
             "process": {"process": "ddpm", "T": 200},
             "train": {"batch_size": 256, "lr": 2e-3, "ema_decay": 0.99, "checkpoint_every": 500, "log_every": 100}}


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def moons_run(tmp_path_factory):
    """A DDPM-MLP trained on moons for 1,500 steps through the CLI (about 20 s on 2 idle cores)."""
    root = tmp_path_factory.mktemp("moons")
    (root / "config.json").write_text(json.dumps(SMALL_RUN))
    code = main(["train", "--data", "moons", "--out", str(root / "run"), "--steps", "1500", "--config",
                 str(root / "config.json"), "--no-progress"])
    assert code == 0
    return root


def test_trained_samples_match_the_data(moons_run, capsys):
    """Sliced W2 of 2,000 samples to 2,000 fresh test points must be below half the distance of the Gaussian
    with the data's mean and covariance: the model must capture the two moons, not just two moments.
    (Measured: model ≈ 0.045, Gaussian ≈ 0.20, Monte-Carlo floor between two data draws ≈ 0.027.)"""
    out = moons_run / "samples.npy"
    code, stdout, _ = run_cli(capsys, "sample", moons_run / "run", "--n", 2000, "--out", out, "--seed", 1)
    assert code == 0 and "wrote 2000 samples" in stdout
    x = torch.from_numpy(np.load(out)).double()
    ds = load_dataset("moons")
    test = ds.to_data_units(ds.test.double())
    train = ds.to_data_units(ds.train.double())
    assert x.shape == (2000, 2)
    # data units: the moons live in about [-1, 2] × [-0.5, 1]; model units would be standardised
    torch.testing.assert_close(x.mean(0), train.mean(0), atol=0.1, rtol=0)
    g = torch.Generator().manual_seed(0)
    gauss = train.mean(0) + torch.randn(2000, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(
        torch.cov(train.T)).T
    sw_model = sliced_wasserstein(x, test, generator=torch.Generator().manual_seed(1))
    sw_gauss = sliced_wasserstein(gauss, test, generator=torch.Generator().manual_seed(1))
    assert sw_model < 0.5 * sw_gauss, (sw_model, sw_gauss)


def test_cli_writes_every_promised_file(moons_run, capsys):
    from PIL import Image

    png, traj_png, traj_gif = moons_run / "s.png", moons_run / "t.png", moons_run / "t.gif"
    assert run_cli(capsys, "sample", moons_run / "run", "--n", 200, "--out", png, "--trajectory", traj_png,
                   "--sampler", "ode_heun", "--steps", 20)[0] == 0
    code, _, err = run_cli(capsys, "sample", moons_run / "run", "--n", 50, "--out", moons_run / "s2.png",
                           "--trajectory", traj_gif)
    assert code == 2 and ".png" in err  # 2-D trajectories are scatter panels, not GIFs
    for path in (png, traj_png):
        with Image.open(path) as im:
            assert im.size[0] >= 200
    code, stdout, _ = run_cli(capsys, "eval", moons_run / "run", "--data", "moons", "--n", 100, "--strata", 10)
    result = json.loads(stdout)
    assert code == 0 and result["metric"] == "bpd" and result["n"] == 100
    assert np.isfinite(result["bpd"]) and result["stderr"] > 0
    assert result["nats_per_dim"] == pytest.approx(result["bpd"] * np.log(2))
    run = moons_run / "run"
    assert {p.name for p in run.iterdir()} >= {"checkpoint.safetensors", "checkpoint.json", "log.jsonl"}
    assert not [p for p in run.iterdir() if ".tmp" in p.name or p.name.startswith(".")]


def test_resume_continues_and_refuses_to_overwrite(moons_run, capsys):
    code, _, err = run_cli(capsys, "train", "--data", "moons", "--out", moons_run / "run", "--steps", 10)
    assert code == 2 and "--resume" in err
    code, stdout, _ = run_cli(capsys, "train", "--out", moons_run / "run", "--resume", "--steps", 1510,
                              "--no-progress")
    assert code == 0 and "step 1510" in stdout
    assert json.loads((moons_run / "run" / "checkpoint.json").read_text())["step"] == 1510


def _bad_inputs(tmp_path, trained_run):
    """Each case: (command line, fragments the one-line message must contain: it names the problem)."""
    np.save(tmp_path / "flat.npy", np.arange(10.0))  # one-dimensional: not N×D
    nan = np.random.default_rng(0).normal(size=(20, 2))
    nan[3, 1] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    run = tmp_path / "truncated_run"  # a real run whose tensor file lost its second half
    shutil.copytree(trained_run, run)
    tensors = run / "checkpoint.safetensors"
    tensors.write_bytes(tensors.read_bytes()[: tensors.stat().st_size // 2])
    return {
        "unknown dataset": (["train", "--data", "cifar99", "--out", tmp_path / "r1"], ["cifar99", "dataset"]),
        "missing path": (["train", "--data", tmp_path / "nope.npy", "--out", tmp_path / "r2"],
                         [str(tmp_path / "nope.npy"), "no such file"]),
        "wrong shape": (["train", "--data", tmp_path / "flat.npy", "--out", tmp_path / "r3"],
                        ["flat.npy", "shape (10,)"]),
        "NaN in data": (["train", "--data", tmp_path / "nan.npy", "--out", tmp_path / "r4"], ["nan.npy", "NaN"]),
        "truncated checkpoint": (["sample", run, "--n", 4, "--out", tmp_path / "x.png"],
                                 [str(tensors), "truncated"]),
        "missing run": (["sample", tmp_path / "no_run", "--n", 4, "--out", tmp_path / "x.png"],
                        [str(tmp_path / "no_run"), "does not exist"]),
        "unknown sampler": (["sample", run, "--sampler", "magic", "--n", 4, "--out", tmp_path / "x.png"],
                            ["--sampler", "'magic'"]),
        "bad output type": (["sample", run, "--n", 4, "--out", tmp_path / "x.jpg"], ["x.jpg", ".png, .npy"]),
        "negative steps": (["train", "--data", "moons", "--out", tmp_path / "r5", "--steps", "-3"],
                           ["--steps", "-3", "positive"]),
        "option of another sampler": (["sample", trained_run, "--sampler", "ancestral", "--eta", "0.5", "--n", 4,
                                       "--out", tmp_path / "x.npy"], ["--eta", "ancestral"]),
        "ODE option for the ELBO": (["eval", trained_run, "--data", "moons", "--probe", "gaussian"],
                                    ["--probe", "--method ode"]),
        "churn for DDIM": (["sample", trained_run, "--sampler", "ddim", "--S-churn", "5", "--n", 4,
                            "--out", tmp_path / "x.npy"], ["--S-churn", "ddim", "--eta"]),
        "eta above 1": (["sample", trained_run, "--sampler", "ddim", "--eta", "1.5", "--n", 4,
                         "--out", tmp_path / "x.npy"], ["eta", "[0, 1]", "1.5"]),
        "empty churn window": (["sample", trained_run, "--sampler", "edm_heun", "--S-churn", "5", "--S-tmin", "3",
                                "--S-tmax", "1", "--n", 4, "--out", tmp_path / "x.npy"], ["S_tmin", "S_tmax"]),
    }


@pytest.mark.parametrize("case", ["unknown dataset", "missing path", "wrong shape", "NaN in data",
                                  "truncated checkpoint", "missing run", "unknown sampler", "bad output type",
                                  "negative steps", "option of another sampler", "ODE option for the ELBO",
                                  "churn for DDIM", "eta above 1", "empty churn window"])
def test_bad_input_gives_one_line_error(case, tmp_path, capsys, moons_run):
    args, fragments = _bad_inputs(tmp_path, moons_run / "run")[case]
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffusionlab: error: "), err
    missing = [fragment for fragment in fragments if fragment not in lines[0]]
    assert not missing, f"the message does not name {missing}: {lines[0]}"
    assert not any(p.name.startswith("r") and p.is_dir() and any(p.iterdir()) for p in tmp_path.iterdir()
                   if p.name in {"r1", "r2", "r3", "r4", "r5"})  # nothing half-written
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "x.npy").exists()


def _api_samples(run_dir, sampler, steps, n, seed, **options) -> np.ndarray:
    """What `diffusionlab sample RUN --sampler S --steps K --n N --seed SEED [options]` must write, via the API."""
    run = load_run(run_dir)
    x = dl.sample(run.model, run.process, sampler, steps, shape=(n, *run.dataset.shape), prediction=run.prediction,
                  generator=torch.Generator().manual_seed(seed), **options)
    return run.dataset.to_data_units(x).numpy().astype(np.float32)


SAMPLER_OPTION_CASES = [
    ("ode_euler", [], {}),
    ("ode_rk45", [], {}),
    ("ode_rk45", ["--rtol", "1e-3", "--atol", "1e-3"], {"rtol": 1e-3, "atol": 1e-3}),
    ("ancestral", ["--variance", "large"], {"variance": "large"}),
    ("ddim", ["--eta", "1"], {"eta": 1.0}),
    ("predictor_corrector", ["--snr", "0.3", "--corrector-steps", "2"], {"snr": 0.3, "corrector_steps": 2}),
    ("edm_heun", ["--S-churn", "5", "--S-noise", "1.003", "--S-tmin", "0.05", "--S-tmax", "50"],
     {"S_churn": 5.0, "S_noise": 1.003, "S_tmin": 0.05, "S_tmax": 50.0}),
    ("unipc", ["--order", "3", "--variant", "bh1", "--no-corrector"], {"order": 3, "variant": "bh1", "corrector": False}),
    ("dpmpp_3m", ["--no-lower-order-final"], {"lower_order_final": False}),
]


@pytest.mark.parametrize("sampler, flags, options", SAMPLER_OPTION_CASES,
                         ids=[f"{c[0]}{''.join(c[1][::2])}" for c in SAMPLER_OPTION_CASES])
def test_sample_passes_sampler_options_through(sampler, flags, options, moons_run, tmp_path, capsys):
    """`sample --sampler S [--rtol/--atol/--variance/--eta/--snr/--corrector-steps/--S-churn/--order/…]` writes
    what dl.sample(..., S, **options) draws with the same seed; an option changes the result (so it arrived)."""
    out = tmp_path / "x.npy"
    code, stdout, _ = run_cli(capsys, "sample", moons_run / "run", "--n", 64, "--out", out, "--sampler", sampler,
                              "--steps", 12, "--seed", 3, *flags)
    assert code == 0 and f"({sampler}, 12 steps" in stdout
    x = np.load(out)
    assert x.shape == (64, 2) and np.isfinite(x).all()
    np.testing.assert_allclose(x, _api_samples(moons_run / "run", sampler, 12, 64, 3, **options), rtol=0, atol=1e-6)
    if options:
        default = _api_samples(moons_run / "run", sampler, 12, 64, 3)
        assert np.abs(x - default).max() > 1e-3
    if sampler == "predictor_corrector":  # NFE = (K − 1)(1 + corrector_steps) + 1
        assert f"{11 * 3 + 1} model evaluations" in stdout


def test_every_sampler_option_has_a_flag_and_a_case():
    """The `sample` flags in cli.py's sampler-options group are exactly commands.SAMPLER_OPTIONS, i.e. every
    keyword option of every sampler but fitted_multistep's coefficients (set by --solver), and each of them is
    exercised by a case of test_sample_passes_sampler_options_through."""
    from diffusionlab.cli import build_parser
    from diffusionlab.commands import SAMPLER_OPTIONS

    sample = build_parser()._subparsers._group_actions[0].choices["sample"]
    group = next(g for g in sample._action_groups if g.title.startswith("sampler options"))
    assert sorted(a.dest for a in group._group_actions) == sorted(SAMPLER_OPTIONS)
    every = {o for name in dl.samplers() for o in dl.sampler_options(name)}
    assert every - set(SAMPLER_OPTIONS) == {"coefficients"}
    assert set(SAMPLER_OPTIONS) == {o for case in SAMPLER_OPTION_CASES for o in case[2]}


def test_eval_ode_likelihood_on_a_vector_run(moons_run, capsys):
    """`eval --method ode` on the 2-D run: exact trace by default; with `--trace hutchinson --probe gaussian
    --probes 8` the JSON names the probes and gives their share of the error, within the total standard error
    (which includes the probe noise), and the estimate agrees with the exact one within its errors."""
    code, stdout, _ = run_cli(capsys, "eval", moons_run / "run", "--data", "moons", "--method", "ode", "--n", 24)
    exact = json.loads(stdout)
    assert code == 0 and exact["method"] == "ode" and exact["trace"] == "exact" and exact["n"] == 24
    assert np.isfinite(exact["bpd"]) and exact["stderr"] > 0 and "hutchinson_stderr" not in exact
    assert exact["nats_per_dim"] == pytest.approx(exact["bpd"] * np.log(2))
    code, stdout, _ = run_cli(capsys, "eval", moons_run / "run", "--data", "moons", "--method", "ode", "--n", 24,
                              "--trace", "hutchinson", "--probe", "gaussian", "--probes", 8, "--rtol", "1e-4",
                              "--atol", "1e-4")
    hutch = json.loads(stdout)
    assert code == 0 and hutch["trace"] == "hutchinson" and hutch["probe"] == "gaussian" and hutch["probes"] == 8
    assert 0 < hutch["hutchinson_stderr"] <= hutch["stderr"]
    assert abs(hutch["bpd"] - exact["bpd"]) <= 5 * hutch["hutchinson_stderr"] + 1e-3


def test_fit_sampler_then_sample_with_the_solver(moons_run, tmp_path, capsys):
    """`fit-sampler` writes grid + coefficients fitted to the run; `sample --solver` draws with them exactly what
    dl.sample(..., "fitted_multistep", grid=, coefficients=) draws, at the fitted NFE, and lands closer to the exact
    ODE solution than the base sampler on the log-SNR grid (fresh noise, not the calibration draws)."""
    solver_file = tmp_path / "solver.json"
    code, stdout, _ = run_cli(capsys, "fit-sampler", moons_run / "run", "--steps", 4, "--out", solver_file,
                              "--calibration", 128, "--seed", 5)
    assert code == 0 and "fitted sampler" in stdout
    solver = json.loads(solver_file.read_text())
    errors = solver["calibration"]["rms_error"]
    assert errors["unipc, fitted grid"] <= errors["unipc, log-SNR grid"]
    # the file holds whichever is closer on the calibration noise: the fitted coefficients or unipc on the grid
    fitted_wins = errors["fitted_multistep"] <= errors["unipc, fitted grid"]
    assert solver["sampler"] == ("fitted_multistep" if fitted_wins else "unipc") and len(solver["grid"]) == 4
    assert (len(solver["coefficients"]) == 3) if fitted_wins else solver["coefficients"] is None
    out = tmp_path / "x.npy"
    code, stdout, _ = run_cli(capsys, "sample", moons_run / "run", "--solver", solver_file, "--n", 256, "--seed", 9,
                              "--out", out)
    assert code == 0 and f"({solver['sampler']}, 4 steps, 4 model evaluations" in stdout
    run = load_run(moons_run / "run")
    grid = torch.tensor(solver["grid"], dtype=torch.float64)
    x_T = run.process.prior_sample((256, 2), torch.Generator().manual_seed(9))
    options = {"coefficients": solver["coefficients"]} if fitted_wins else {}
    ours = dl.sample(run.model, run.process, solver["sampler"], x_T=x_T, grid=grid, **options)
    np.testing.assert_allclose(np.load(out), run.dataset.to_data_units(ours).numpy(), rtol=0, atol=1e-5)
    exact = dl.exact_solution(run.model, run.process, x_T, rtol=1e-5)
    base = dl.sample(run.model, run.process, "unipc", 4, x_T=x_T, grid="logsnr")
    assert float((ours - exact).norm(dim=1).mean()) < float((base - exact).norm(dim=1).mean())
    # a solver for another process, a broken file, and a step count that contradicts the file: one-line errors
    other = dict(solver, process={"process": "vp"})
    (tmp_path / "other.json").write_text(json.dumps(other))
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / "malformed.json").write_text(json.dumps(dict(solver, grid=[0.9, "x"])))
    for args, fragment in [(["--solver", tmp_path / "other.json"], "fitted to a"),
                           (["--solver", tmp_path / "malformed.json"], "malformed"),
                           (["--solver", tmp_path / "broken.json"], "cannot read the solver file"),
                           (["--solver", tmp_path / "none.json"], "not found"),
                           (["--solver", solver_file, "--steps", 7], "4-step sampler")]:
        code, _, err = run_cli(capsys, "sample", moons_run / "run", "--n", 4, "--out", tmp_path / "y.npy", *args)
        assert code == 2 and len(err.strip().splitlines()) == 1 and fragment in err, err
    assert not (tmp_path / "y.npy").exists()
    # fitted to other weights of the same run: it may still do, so a one-line warning, not an error
    (tmp_path / "older.json").write_text(json.dumps(dict(solver, run_step=solver["run_step"] - 1)))
    step = solver["run_step"]  # the run's step now: the file was just fitted to it
    with pytest.warns(UserWarning, match=f"step {step - 1}, EMA weights, this is step {step},.*refit with fit-sampler"):
        code, _, _ = run_cli(capsys, "sample", moons_run / "run", "--n", 4, "--out", tmp_path / "y.npy", "--solver",
                             tmp_path / "older.json")
    assert code == 0


def test_fit_sampler_with_the_mean_objective_records_mean_errors(moons_run, tmp_path, capsys):
    solver_file = tmp_path / "solver.json"
    code, stdout, _ = run_cli(capsys, "fit-sampler", moons_run / "run", "--steps", 3, "--out", solver_file,
                              "--calibration", 64, "--objective", "mean", "--base-sampler", "dpmpp_2m")
    assert code == 0 and "calibration mean error" in stdout
    calibration = json.loads(solver_file.read_text())["calibration"]
    assert calibration["objective"] == "mean" and "rms_error" not in calibration
    errors = calibration["mean_error"]
    # the log-SNR start is a point of the grid search and the coefficient fit starts from 2M on the fitted grid
    assert errors["fitted_multistep"] <= errors["dpmpp_2m, fitted grid"] <= errors["dpmpp_2m, log-SNR grid"]


def test_console_script_prints_no_traceback(tmp_path):
    """The installed entry point, as a user runs it: one line on stderr, exit status 2."""
    proc = subprocess.run([sys.executable, "-m", "diffusionlab.cli", "train", "--data", "no_such_set",
                           "--out", str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "no_such_set" in proc.stderr


@pytest.mark.parametrize("process", ["ddpm", "vp", "subvp", "ve"])
def test_every_process_trains_and_samples_from_the_cli(process, tmp_path, capsys):
    """`train --process P` runs on images and vectors, and every sampler draws finite samples from the run."""
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"network": {"base_channels": 8, "channel_mults": [1], "num_res_blocks": 1,
                                           "attention_resolutions": [], "num_groups": 4},
                               "train": {"batch_size": 16, "checkpoint_every": 10, "ema_decay": 0.9}}))
    assert run_cli(capsys, "train", "--data", "digits", "--out", tmp_path / "img", "--steps", 3, "--process", process,
                   "--config", cfg, "--no-progress")[0] == 0
    assert run_cli(capsys, "train", "--data", "ring8", "--out", tmp_path / "vec", "--steps", 3, "--process", process,
                   "--no-progress", "--prediction", "v")[0] == 0
    for name in ("ancestral", "euler_maruyama", "predictor_corrector", "ode_heun"):
        out = tmp_path / f"{name}.npy"
        assert run_cli(capsys, "sample", tmp_path / "vec", "--n", 8, "--out", out, "--sampler", name,
                       "--steps", 4)[0] == 0
        assert np.isfinite(np.load(out)).all()
    code, stdout, _ = run_cli(capsys, "sample", tmp_path / "img", "--n", 4, "--out", tmp_path / "img.npy", "--steps", 3)
    assert code == 0 and np.load(tmp_path / "img.npy").shape == (4, 1, 8, 8)


def test_elbo_importance_training_resumes_exactly_from_the_cli(tmp_path, capsys):
    """`train --loss elbo --time-sampling importance`, stopped at step 15 and resumed to 30, ends with the same
    weights, EMA and loss history as 30 straight steps (T = 20, so the importance sampling is active by then)."""
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"network": {"type": "mlp", "dim": 2, "hidden": 32, "depth": 2},
                               "process": {"process": "ddpm", "T": 20},
                               "train": {"batch_size": 64, "checkpoint_every": 10, "ema_decay": 0.9,
                                         "num_threads": 1}}))
    flags = ["--data", "ring8", "--config", cfg, "--loss", "elbo", "--time-sampling", "importance", "--no-progress"]
    assert run_cli(capsys, "train", "--out", tmp_path / "straight", "--steps", 30, *flags)[0] == 0
    assert run_cli(capsys, "train", "--out", tmp_path / "resumed", "--steps", 15, *flags)[0] == 0
    code, stdout, _ = run_cli(capsys, "train", "--out", tmp_path / "resumed", "--resume", "--steps", 30,
                              "--no-progress")
    assert code == 0 and "step 30" in stdout
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "resumed")
    assert a.config["objective"] == {"loss": "elbo", "weighting": "eps", "time_sampling": "importance"}
    assert bool((a.loss_state["rank0.count"] >= 10).all())  # every term's history is full: importance sampling on
    for mine, theirs in ((a.model_state, b.model_state), (a.ema_state, b.ema_state), (a.loss_state, b.loss_state)):
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_torchrun_two_processes_through_the_cli(tmp_path):
    """`torchrun --nproc_per_node 2 -m diffusionlab.cli train ...` on CPU (gloo): one summary, one checkpoint."""
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"network": {"type": "mlp", "dim": 2, "hidden": 32, "depth": 2},
                               "train": {"batch_size": 32, "checkpoint_every": 10, "ema_decay": 0.9}}))
    (tmp_path / "tmp").mkdir()
    env = {**__import__("os").environ, "TMPDIR": str(tmp_path / "tmp"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
                           "diffusionlab.cli", "train", "--data", "moons", "--out", str(tmp_path / "run"), "--steps",
                           "20", "--config", str(cfg), "--no-progress"], capture_output=True, text=True, timeout=180,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("diffusionlab: done: step 20") == 1
    assert json.loads((tmp_path / "run" / "checkpoint.json").read_text())["step"] == 20


def test_precision_flag_and_what_a_resume_may_change(tmp_path, capsys):
    """`--precision bf16` is recorded in the run. A resume takes --steps, --lr and --precision (warning that the
    run then differs from an uninterrupted one) and accepts the original command line; a flag or config entry
    that disagrees with the run is refused in one line, changing nothing."""
    cfg = tmp_path / "c.json"
    settings = {"network": {"type": "mlp", "dim": 2, "hidden": 16, "depth": 2}, "process": {"process": "ddpm", "T": 20},
                "train": {"batch_size": 32, "checkpoint_every": 2, "log_every": 1, "num_threads": 1,
                          "ema_decay": 0.5}}
    cfg.write_text(json.dumps(settings))
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**settings, "network": {**settings["network"], "hidden": 32}}))
    flags = ["--data", "ring8", "--config", cfg, "--no-progress"]
    assert run_cli(capsys, "train", "--out", tmp_path / "bf16", "--steps", 2, "--precision", "bf16", *flags)[0] == 0
    assert load_checkpoint(tmp_path / "bf16").config["train"]["precision"] == "bf16"

    run = tmp_path / "run"
    assert run_cli(capsys, "train", "--out", run, "--steps", 4, "--seed", 0, *flags)[0] == 0
    assert load_checkpoint(run).config["train"]["precision"] == "fp32"
    before = (run / "checkpoint.safetensors").read_bytes()
    for fixed, named in ((["--process", "vp"], "process.process: ddpm -> vp"),
                         (["--data", "moons"], "data.spec: ring8 -> moons"),
                         (["--batch-size", 8], "train.batch_size: 32 -> 8"),
                         (["--config", other], "network.hidden: 16 -> 32"),
                         (["--loss", "elbo"], "objective.loss: simple -> elbo"),
                         (["--seed", 3], "train.seed: 0 -> 3")):
        code, _, err = run_cli(capsys, "train", "--out", run, "--resume", "--steps", 6, *fixed)
        assert code == 2 and named in err and "only --steps, --lr and --precision" in err, err
        assert err.count("\n") == 1
        assert load_checkpoint(run).step == 4 and (run / "checkpoint.safetensors").read_bytes() == before

    code, stdout, _ = run_cli(capsys, "train", "--out", run, "--resume", "--steps", 5, "--seed", 0, *flags)
    assert code == 0 and "step 5" in stdout  # the original command line, resumed
    with pytest.warns(UserWarning, match=r"lr: 0\.0002 -> 0\.001; precision: fp32 -> bf16"):
        code, stdout, _ = run_cli(capsys, "train", "--out", run, "--resume", "--steps", 6, "--precision", "bf16",
                                  "--lr", 1e-3, "--no-progress")
    assert code == 0 and "step 6" in stdout
    checkpoint = load_checkpoint(run)
    assert checkpoint.step == 6 and checkpoint.config["train"]["precision"] == "bf16"
    assert checkpoint.config["train"]["lr"] == 1e-3
    assert checkpoint.extra["trainer"]["train_config"]["precision"] == "bf16"
    assert [entry["precision"] for entry in map(json.loads, (run / "log.jsonl").read_text().splitlines())][-1] == "bf16"


def test_demo_resumes_its_run_and_reuses_a_trained_one(tmp_path, capsys, monkeypatch):
    """`demo` run again continues its own run (more --steps) or reuses it; sampling and bits/dim are stubbed out
    here (`make demo` runs them), this checks the training part of the flow."""
    from diffusionlab import commands

    calls = []

    def generate(run, n, *args, **kwargs):  # records which training step the samples would come from
        calls.append(run.step)
        return torch.zeros(n, *run.dataset.shape), [], 0

    monkeypatch.setattr(commands, "generate", generate)
    monkeypatch.setattr(commands, "write_samples", lambda run, x, path: path.write_bytes(b""))
    monkeypatch.setattr(commands, "write_trajectory", lambda run, frames, path: path.write_bytes(b""))
    monkeypatch.setattr(commands, "evaluate_bpd", lambda *a, **k: {"terms": "stub", "n": 1, "bpd": 0.0, "stderr": 0.0})
    for steps, expected in ((2, "training"), (3, "Resuming"), (3, "already trained")):
        code, stdout, _ = run_cli(capsys, "demo", "--out", tmp_path, "--steps", steps, "--no-progress")
        assert code == 0 and expected in stdout, stdout
        assert load_checkpoint(tmp_path / "run").step == steps
    assert calls == [2, 3, 3]


def test_sample_precision_bf16_is_close_to_fp32_and_bpd_refuses_it(moons_run, capsys):
    """`sample --precision bf16` runs the network in bfloat16: the deterministic DDIM output moves by about
    bfloat16's rounding (2^-8 relative), not more; bits/dim refuse bf16 in one line."""
    outs = {}
    for precision in ("fp32", "bf16"):
        outs[precision] = moons_run / f"ddim_{precision}.npy"
        code, stdout, _ = run_cli(capsys, "sample", moons_run / "run", "--n", 500, "--out", outs[precision],
                                  "--sampler", "ddim", "--steps", 20, "--grid", "logsnr", "--precision", precision)
        assert code == 0 and precision in stdout
    a, b = (torch.from_numpy(np.load(outs[p])).double() for p in ("fp32", "bf16"))
    scale = float(a.std())
    rms = float((a - b).square().mean().sqrt())
    assert 0 < rms < 0.02 * scale, (rms, scale)  # measured 0.7 % of the spread
    code, _, err = run_cli(capsys, "eval", moons_run / "run", "--data", "moons", "--precision", "bf16", "--n", 10)
    assert code == 2 and "float32" in err and err.count("\n") == 1
