"""The command line end to end: train → sample → eval on a 2-D set, every promised file, and one-line errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from diffusionlab.cli import main
from diffusionlab.data import load_dataset
from diffusionlab.evaluation import sliced_wasserstein

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


def _bad_inputs(tmp_path):
    np.save(tmp_path / "flat.npy", np.arange(10.0))  # one-dimensional: not N×D
    nan = np.random.default_rng(0).normal(size=(20, 2))
    nan[3, 1] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    run = tmp_path / "broken_run"
    run.mkdir()
    (run / "checkpoint.json").write_text('{"step": 3, "config": {}}')
    (run / "checkpoint.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":")  # truncated
    return {
        "unknown dataset": ["train", "--data", "cifar99", "--out", tmp_path / "r1"],
        "missing path": ["train", "--data", tmp_path / "nope.npy", "--out", tmp_path / "r2"],
        "wrong shape": ["train", "--data", tmp_path / "flat.npy", "--out", tmp_path / "r3"],
        "NaN in data": ["train", "--data", tmp_path / "nan.npy", "--out", tmp_path / "r4"],
        "truncated checkpoint": ["sample", run, "--n", 4, "--out", tmp_path / "x.png"],
        "missing run": ["sample", tmp_path / "no_run", "--n", 4, "--out", tmp_path / "x.png"],
        "unknown sampler": ["sample", run, "--sampler", "magic", "--n", 4, "--out", tmp_path / "x.png"],
        "bad output type": ["sample", run, "--n", 4, "--out", tmp_path / "x.jpg"],
        "negative steps": ["train", "--data", "moons", "--out", tmp_path / "r5", "--steps", "-3"],
    }


@pytest.mark.parametrize("case", ["unknown dataset", "missing path", "wrong shape", "NaN in data",
                                  "truncated checkpoint", "missing run", "unknown sampler", "bad output type",
                                  "negative steps"])
def test_bad_input_gives_one_line_error(case, tmp_path, capsys):
    args = _bad_inputs(tmp_path)[case]
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffusionlab: error: "), err
    assert not any(p.name.startswith("r") and p.is_dir() and any(p.iterdir()) for p in tmp_path.iterdir()
                   if p.name in {"r1", "r2", "r3", "r4", "r5"})  # nothing half-written


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
