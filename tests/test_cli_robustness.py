"""The CLI against the user mistakes a review found: each gives one line on stderr, exit status 2, no traceback,
and leaves no output behind (and never damages a run)."""

import errno
import json
import shutil
import warnings

import numpy as np
import pytest
import torch

from diffusionlab import commands
from diffusionlab._files import write_atomically
from diffusionlab.cli import main
from diffusionlab.errors import UserError
from diffusionlab.run import default_network

TINY = {"network": {"type": "mlp", "dim": 2, "hidden": 16, "depth": 2},
        "process": {"process": "ddpm", "T": 50},
        "train": {"batch_size": 16, "ema_decay": 0.5, "checkpoint_every": 100, "log_every": 100}}


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(code, err, *fragments):
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("diffusionlab: error: "), err
    missing = [f for f in fragments if f not in lines[0]]
    assert not missing, f"the message does not name {missing}: {lines[0]}"
    return lines[0]


def _train(root, name, data="moons", config=TINY, steps=4):
    (root / f"{name}.json").write_text(json.dumps(config))
    assert main(["train", "--data", str(data), "--out", str(root / name), "--steps", str(steps),
                 "--config", str(root / f"{name}.json"), "--no-progress"]) == 0
    return root / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny DDPM runs of the same architecture (moons, and moons with another seed) and one on 2-channel
    5×5 images (an image set that has no picture)."""
    root = tmp_path_factory.mktemp("robust")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the short-EMA warning
        a = _train(root, "a")
        b = _train(root, "b", config={**TINY, "train": {**TINY["train"], "seed": 1}})
        np.save(root / "two_channels.npy", np.random.default_rng(0).uniform(0, 1, (40, 2, 5, 5)).astype(np.float32))
        image_net = {"type": "unet", "in_channels": 2, "image_size": 5, "base_channels": 8, "channel_mults": [1],
                     "num_res_blocks": 1, "attention_resolutions": [], "num_groups": 4}
        c = _train(root, "c", data=root / "two_channels.npy", steps=2,
                   config={**TINY, "network": image_net})
    return {"a": a, "b": b, "images": c, "root": root}


def test_fit_sampler_refuses_to_overwrite_the_runs_checkpoint(runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs["a"], run)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    code, _, err = run_cli(capsys, "fit-sampler", run, "--steps", 3, "--calibration", 8, "--out",
                           run / "checkpoint.json")
    one_line_error(code, err, str(run / "checkpoint.json"), "file of the run")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


@pytest.mark.parametrize("config, fragments", [
    ({"train": {"steps": 2.5}}, ["train.steps", "integer", "2.5"]),
    ({"train": {"batch_size": True}}, ["train.batch_size", "integer", "True"]),
    ({"train": {"lr": "0.1"}}, ["train.lr", "number", "'0.1'"]),
    ({"train": {"lr": 1e38}}, ["train.lr", "1e+06"]),
    ([1, 2], ["must hold an object", "list"]),
    ({"netwrk": {"hidden": 16}, "trian": {"steps": 2}}, ["netwrk", "trian", "valid"]),
    ({"network": [1]}, ["'network'", "an object"]),
])
def test_bad_config_values_are_one_line_errors_and_leave_no_folder(config, fragments, tmp_path, capsys):
    (tmp_path / "c.json").write_text(json.dumps(config))
    code, _, err = run_cli(capsys, "train", "--data", "moons", "--out", tmp_path / "run", "--config",
                           tmp_path / "c.json", "--no-progress")
    one_line_error(code, err, *fragments)
    assert not (tmp_path / "run").exists()


def test_a_huge_learning_rate_flag_is_refused(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--data", "moons", "--out", tmp_path / "run", "--lr", "1e38")
    one_line_error(code, err, "train.lr")
    assert not (tmp_path / "run").exists()


def test_outputs_that_are_folders_files_or_unwritable(runs, tmp_path, capsys):
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "folder.json").mkdir()
    (tmp_path / "afile").write_text("x")
    cases = [
        (["sample", runs["a"], "--n", 4, "--steps", 3, "--out", tmp_path / "folder.png"], ["folder.png", "folder"]),
        (["fit-sampler", runs["a"], "--steps", 3, "--out", tmp_path / "folder.json"], ["folder.json", "folder"]),
        (["train", "--data", "moons", "--out", tmp_path / "afile"], ["afile", "is a file"]),
        (["demo", "--out", tmp_path / "afile"], ["afile", "is a file"]),
        (["sample", runs["a"], "--n", 4, "--steps", 3, "--out", tmp_path / "same.png", "--trajectory",
          tmp_path / "same.png"], ["same file"]),
        (["fit-sampler", runs["a"], "--steps", 1, "--out", tmp_path / "s.json"], ["--steps", "at least 2"]),
    ]
    for args, fragments in cases:
        code, _, err = run_cli(capsys, *args)
        one_line_error(code, err, *fragments)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "folder.json", "folder.png"]


def test_a_failed_write_is_one_line_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("diffusionlab._files.os.replace", full_disk)
    with pytest.raises(UserError, match="No space left on device"):
        write_atomically(tmp_path / "x.json", lambda handle: handle.write(b"{}"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["sample", "train", "eval"])
def test_seeds_out_of_range(command, runs, tmp_path, capsys):
    base = {"sample": ["sample", runs["a"], "--n", 4, "--out", tmp_path / "x.npy"],
            "train": ["train", "--data", "moons", "--out", tmp_path / "run"],
            "eval": ["eval", runs["a"], "--data", "moons"]}[command]
    for seed in ("100000000000000000000000", "-1", str(2**63)):
        code, _, err = run_cli(capsys, *base, "--seed", seed)
        one_line_error(code, err, "--seed", "2**63")
    code, _, err = run_cli(capsys, *base, "--n" if command != "train" else "--steps", "abc")
    one_line_error(code, err, "invalid positive integer value")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("damage, fragments", [
    (lambda r: r.update(config=None), ["damaged", "config"]),
    (lambda r: r.update(step="abc"), ["damaged", "step"]),
    (lambda r: r.update(optimizer={"param_groups": 5, "state": {}}), ["damaged", "optimizer"]),
    (lambda r: r["config"].update(network=[1]), ["does not match its config"]),
    (lambda r: r["config"]["network"].update(hidden=17), ["does not match its config", "size mismatch"]),
])
def test_a_damaged_checkpoint_record_is_a_one_line_error(damage, fragments, runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs["a"], run)
    record = json.loads((run / "checkpoint.json").read_text())
    damage(record)
    (run / "checkpoint.json").write_text(json.dumps(record))
    code, _, err = run_cli(capsys, "sample", run, "--n", 4, "--steps", 3, "--out", tmp_path / "x.npy")
    one_line_error(code, err, *fragments)
    if "damaged" in fragments:
        code, _, err = run_cli(capsys, "train", "--out", run, "--resume", "--steps", 10, "--no-progress")
        one_line_error(code, err, *fragments)
    assert not (tmp_path / "x.npy").exists()


def test_pictures_of_data_that_has_none_are_refused_before_sampling(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(commands, "generate", lambda *a, **k: pytest.fail("sampled before refusing"))
    for args in (["--out", tmp_path / "x.png"], ["--out", tmp_path / "x.npy", "--trajectory", tmp_path / "t.gif"]):
        code, _, err = run_cli(capsys, "sample", runs["images"], "--n", 4, "--steps", 2, *args)
        one_line_error(code, err, "(2, 5, 5)", ".npy")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_trajectory_changes_no_output(runs, tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise UserError("cannot write the trajectory")

    monkeypatch.setattr(commands, "write_trajectory", broken)
    np.save(tmp_path / "old.npy", np.zeros((1, 2)))
    for out in ("x.npy", "old.npy"):  # a new file is not created, an existing one is not replaced
        code, _, err = run_cli(capsys, "sample", runs["a"], "--n", 4, "--steps", 3, "--out", tmp_path / out,
                               "--trajectory", tmp_path / "t.png")
        one_line_error(code, err, "trajectory")
    assert [p.name for p in tmp_path.iterdir()] == ["old.npy"] and np.load(tmp_path / "old.npy").shape == (1, 2)


def test_a_run_that_fails_after_starting_leaves_no_empty_folder_and_keeps_its_error(tmp_path):
    from diffusionlab.nets import MLP
    from diffusionlab.training import TrainConfig, train

    config = TrainConfig(steps=3, batch_size=4, lr=1e-3, warmup_steps=0, checkpoint_every=100, log_every=100, seed=0)
    run_dir = tmp_path / "run"

    def diverged(model, batch, generator):
        assert run_dir.is_dir()  # the trainer made it
        raise UserError("the loss is nan at step 1")

    def diverged_and_gone(model, batch, generator):
        run_dir.rmdir()  # the folder vanished meanwhile (another rank cleaned up): the cleanup must not mask the error
        raise UserError("the loss is nan at step 1")

    for loss in (diverged, diverged_and_gone):
        with pytest.raises(UserError, match="the loss is nan"):
            train(MLP(2, hidden=8, depth=1), loss, torch.randn(16, 2), config, run_dir, run_config={}, progress=False)
        assert not run_dir.exists()


def test_a_solver_fitted_to_other_weights_warns(runs, tmp_path, capsys):
    solver = tmp_path / "solver.json"
    assert main(["fit-sampler", str(runs["b"]), "--steps", "3", "--calibration", "8", "--out", str(solver)]) == 0
    assert json.loads(solver.read_text())["checkpoint_sha256"]
    for run, warns in ((runs["b"], False), (runs["a"], True)):  # same process, prediction, step and EMA flag
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            code, _, _ = run_cli(capsys, "sample", run, "--n", 4, "--solver", solver, "--out", tmp_path / "x.npy")
        assert code == 0
        assert any("other weights" in str(w.message) for w in caught) == warns


def test_the_largest_seed_is_taken_exactly():
    from diffusionlab.training import TrainConfig

    base = dict(steps=1, batch_size=1, lr=1e-3, warmup_steps=0, checkpoint_every=1, log_every=1)
    assert TrainConfig(**base, seed=2**63 - 1).seed == 2**63 - 1  # not rounded through float (2**63 is refused)
    assert TrainConfig(**base, seed=2**53 + 1).seed == 2**53 + 1
    assert TrainConfig(**{**base, "steps": np.int64(7), "lr": np.float32(1e-3)}, seed=0).steps == 7
    for bad in (dict(seed=2**63), dict(seed=0, steps=10**400), dict(seed=0, steps=1e400)):
        with pytest.raises(UserError, match="invalid training config"):
            TrainConfig(**{**base, **bad})


def test_interrupt_messages_say_what_was_kept(runs, tmp_path, capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    for command in ("train", "sample", "demo"):
        monkeypatch.setattr(commands, command, interrupted)
    code, _, err = run_cli(capsys, "demo", "--out", tmp_path / "demo")
    assert code == 130 and "no checkpoint was written yet" in err
    code, _, err = run_cli(capsys, "train", "--data", "moons", "--out", tmp_path / "new")
    assert code == 130 and "no checkpoint was written yet" in err and "--resume" not in err
    code, _, err = run_cli(capsys, "train", "--out", runs["a"], "--resume")
    assert code == 130 and "intact" in err and "--resume" in err
    code, _, err = run_cli(capsys, "sample", runs["a"], "--out", tmp_path / "x.npy")
    assert code == 130 and "no output was written" in err and "--resume" not in err


def test_eval_of_one_example_prints_strict_json(runs, capsys):
    code, out, _ = run_cli(capsys, "eval", runs["a"], "--data", "moons", "--n", 1, "--strata", 2)
    assert code == 0 and "NaN" not in out

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    assert json.loads(out, parse_constant=refuse)["stderr"] is None


def test_demo_refuses_a_run_folder_that_is_not_its_own(runs, tmp_path, capsys):
    shutil.copytree(runs["a"], tmp_path / "run")
    code, _, err = run_cli(capsys, "demo", "--out", tmp_path, "--steps", 2)
    one_line_error(code, err, "not this demo's", "--out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.parametrize("size", [1, 3, 5, 9, 16, 17, 30])
def test_the_default_unet_builds_for_any_image_size(size):
    from diffusionlab.nets import build_network

    class Images:
        kind, shape = "image", (1, size, size)

    config = {k: tuple(v) if isinstance(v, list) else v for k, v in default_network(Images()).items()}
    build_network(config)


def test_a_run_resumes_from_its_data_after_the_file_moved(tmp_path, capsys, monkeypatch):
    data = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
    np.save(tmp_path / "old.npy", data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = _train(tmp_path, "run", data=tmp_path / "old.npy")
    (tmp_path / "old.npy").rename(tmp_path / "new.npy")
    code, _, err = run_cli(capsys, "train", "--out", run, "--resume", "--steps", 6, "--no-progress")
    one_line_error(code, err, "old.npy", "--data NEW_PATH")
    np.save(tmp_path / "old.npy", data[::-1].copy())  # other examples under the old name: refused
    code, _, err = run_cli(capsys, "train", "--out", run, "--resume", "--steps", 6)
    one_line_error(code, err, "other data")
    (tmp_path / "old.npy").unlink()
    np.save(tmp_path / "other.npy", data + 1)  # other examples under a new name: still refused
    code, _, err = run_cli(capsys, "train", "--out", run, "--resume", "--steps", 6, "--data", tmp_path / "other.npy")
    one_line_error(code, err, "data.spec")
    loads = []
    real_load = commands.load_dataset
    monkeypatch.setattr(commands, "load_dataset", lambda *a, **k: loads.append(a[0]) or real_load(*a, **k))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, out, _ = run_cli(capsys, "train", "--out", run, "--resume", "--steps", 6, "--data",
                               tmp_path / "new.npy", "--no-progress")
    assert code == 0 and "step 6" in out
    assert loads == [str(tmp_path / "new.npy")]  # found by its fingerprint and trained on: read once
    assert json.loads((run / "checkpoint.json").read_text())["config"]["data"]["spec"] == str(tmp_path / "new.npy")
    assert json.loads((run / "checkpoint.json").read_text())["extra"]["trainer"]["data_sha256"]


def test_only_the_machines_oserrors_are_one_line(runs, tmp_path, capsys, monkeypatch):
    def fails_with(number):
        def command(args):
            raise OSError(number, "simulated", str(tmp_path / "x.npy"))
        return command

    monkeypatch.setattr(commands, "sample", fails_with(errno.ENOSPC))
    code, _, err = run_cli(capsys, "sample", runs["a"], "--out", tmp_path / "x.npy")
    one_line_error(code, err, "simulated", "x.npy")
    monkeypatch.setattr(commands, "sample", fails_with(errno.EBADF))  # a bad file descriptor is a bug: traceback
    with pytest.raises(OSError):
        main(["sample", str(runs["a"]), "--out", str(tmp_path / "x.npy")])


def test_data_beyond_float32_and_non_square_images_are_refused(tmp_path):
    from diffusionlab.data import load_dataset

    big = np.array([[1e308, -1e308], [1e308, 0.0], [0.0, 1.0], [2.0, 3.0], [1.0, 1.0]] * 4)
    np.save(tmp_path / "big.npy", big)
    with pytest.raises(UserError, match="float32's range"):
        load_dataset(str(tmp_path / "big.npy"))

    class Wide:
        kind, shape = "image", (1, 4, 6)

    with pytest.raises(UserError, match="square images, these are 4×6"):
        default_network(Wide())


def test_eval_labels_strata_beyond_the_number_of_terms_as_all(runs, capsys):
    code, out, _ = run_cli(capsys, "eval", runs["a"], "--data", "moons", "--n", 8, "--strata", 5000)
    assert code == 0 and json.loads(out)["terms"] == "all"  # T = 50: 5,000 strata are every term
    code, out, _ = run_cli(capsys, "eval", runs["a"], "--data", "moons", "--n", 8, "--strata", 5)
    assert code == 0 and json.loads(out)["terms"] == "stratified, 5 per example"


@pytest.mark.parametrize("bad", [dict(levels=True), dict(levels=1), dict(shape=[-3]), dict(shift=[0.0, 0.0, 0.0]),
                                 dict(scale=[0.0, 1.0]), dict(shift=[float("nan"), 0.0])])
def test_damaged_dataset_metadata_is_refused(bad):
    from diffusionlab.data import Dataset, load_dataset

    meta = json.loads(load_dataset("moons").to_json())
    assert Dataset.from_json(meta).shape == (2,)
    with pytest.raises(UserError, match="dataset metadata"):
        Dataset.from_json({**meta, **bad})


@pytest.mark.parametrize("args", [["train", "--data", "moons", "--out", ""], ["sample", "", "--n", 2, "--out", "q.npy"],
                                  ["eval", " ", "--data", "moons"], ["demo", "--out", ""],
                                  ["train", "--data", "", "--out", "run"]])
def test_an_empty_path_is_refused_not_taken_as_the_current_folder(args, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, *args)
    one_line_error(code, err, "non-empty path")
    assert list(tmp_path.iterdir()) == []


def test_edm_s_tmax_takes_inf_its_default_on_the_command_line():
    from diffusionlab.cli import build_parser

    args = build_parser().parse_args(["sample", "run", "--out", "x.npy", "--sampler", "edm_heun", "--S-tmax", "inf"])
    assert args.S_tmax == float("inf")
    with pytest.raises(UserError, match="non-negative number or inf"):
        build_parser().parse_args(["sample", "run", "--out", "x.npy", "--S-tmax", "nan"])


@pytest.mark.parametrize("config, flags, fragments", [
    ({"objective": {"weigthing": "v"}}, [], ["weigthing='v'", "loss 'simple'"]),
    ({"objective": {"variance": "large"}}, [], ["variance='large'", "loss 'simple'"]),
    ({}, ["--loss", "elbo", "--weighting", "likelihood"], ["weighting='likelihood'", "loss 'elbo'"]),
    ({"data": {"spec": "digits"}}, [], ["data.spec 'digits'", "--data 'moons'"]),
    ({"data": {"test_fracton": 0.2}}, [], ["test_fracton", "valid: spec, seed, test_fraction"]),
])
def test_config_entries_that_would_be_ignored_are_refused(config, flags, fragments, tmp_path, capsys):
    """A typo in the objective or data section, a weighting the ELBO does not use, or a config data.spec that
    contradicts --data (the run trained on --data but recorded the other) each stop the run before it writes."""
    (tmp_path / "c.json").write_text(json.dumps(config))
    code, _, err = run_cli(capsys, "train", "--data", "moons", "--out", tmp_path / "run", "--steps", 2,
                           "--config", tmp_path / "c.json", *flags)
    one_line_error(code, err, *fragments)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("entry, fragment", [("grad_clip", "null"), ("weight_decay", "finite")])
def test_an_infinite_train_number_is_refused_with_its_name(entry, fragment, tmp_path, capsys):
    """A run config is JSON, which cannot hold inf: TOML's ``grad_clip = inf`` failed only at the first save,
    with a message that named neither the key nor the fix."""
    (tmp_path / "c.toml").write_text(f"[train]\n{entry} = inf\n")
    code, _, err = run_cli(capsys, "train", "--data", "moons", "--out", tmp_path / "run", "--steps", 2,
                           "--config", tmp_path / "c.toml")
    one_line_error(code, err, f"train.{entry}", fragment)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra, fragments", [
    (["--metric", "fid", "--method", "ode"], ["--method", "--metric fid"]),
    (["--metric", "fid", "--strata", 3], ["--strata", "--metric fid"]),
    (["--sampler", "ddim"], ["--sampler", "--metric bpd --method elbo"]),
    (["--steps", 7, "--grid", "karras"], ["--steps, --grid", "for --metric fid only"]),
    (["--method", "ode", "--strata", 5], ["--strata", "--method ode"]),
    (["--method", "ode", "--variance", "small"], ["--variance", "for --method elbo only"]),
    (["--method", "elbo", "--probes", 5], ["--probes", "for --method ode only"]),
    (["--rtol", "1e-3"], ["--rtol", "--method elbo"]),
    (["--precision", "bf16"], ["--precision", "float32"]),
])
def test_eval_refuses_options_that_do_not_apply(runs, extra, fragments, capsys):
    """Each of these exited 0 with the option silently ignored (a review): now one line naming it."""
    code, _, err = run_cli(capsys, "eval", runs["a"], "--data", "moons", "--n", 4, *extra)
    one_line_error(code, err, *fragments)


def test_eval_takes_the_options_of_its_method(runs, capsys):
    for extra in ([], ["--method", "elbo", "--strata", 3, "--variance", "small"], ["--precision", "fp32"],
                  ["--method", "ode", "--probes", 2, "--trace", "hutchinson", "--rtol", "1e-3"]):
        code, out, err = run_cli(capsys, "eval", runs["a"], "--data", "moons", "--n", 4, *extra)
        assert code == 0, err
        result = json.loads(out)
        assert result["method"] == (extra[1] if extra[:1] == ["--method"] else "elbo")
        if "--variance" in extra:
            assert result["variance"] == "small" and result["terms"] == "stratified, 3 per example"
        if "--probes" in extra:
            assert result["probes"] == 2


def test_eval_refuses_data_stored_unlike_the_runs(runs, tmp_path, capsys):
    """The images run was trained on float images (continuous); integer images 0..255 of the same shape (256
    levels) are other units: a review got a meaningless bits/dim with exit 0 (a 17-level digits run scored
    0..255 images as values up to 31 in model units)."""
    ints = np.random.default_rng(1).integers(0, 256, (40, 2, 5, 5)).astype(np.uint8)
    np.save(tmp_path / "ints.npy", ints)
    code, _, err = run_cli(capsys, "eval", runs["images"], "--data", tmp_path / "ints.npy", "--n", 4)
    one_line_error(code, err, "256 levels", "continuous values")
    code, out, err = run_cli(capsys, "eval", runs["images"], "--data", runs["root"] / "two_channels.npy", "--n", 4)
    assert code == 0, err


def test_a_run_trained_from_python_without_a_run_config_is_named_as_such(tmp_path, capsys):
    """``train(..., run_config={})`` (the README's Python example) holds weights but no way to rebuild the model:
    the CLI said the checkpoint was damaged."""
    from diffusionlab.nets import MLP
    from diffusionlab.objectives import DenoisingLoss
    from diffusionlab.training import TrainConfig, train

    import diffusionlab as dl

    data = torch.randn(32, 2)
    train(MLP(dim=2, hidden=8, depth=1), DenoisingLoss(dl.DDPM(T=20)), data,
          TrainConfig(steps=2, batch_size=8, lr=1e-3, seed=0, checkpoint_every=2, log_every=1, warmup_steps=0),
          tmp_path / "py",
          run_config={}, progress=False)
    code, _, err = run_cli(capsys, "sample", tmp_path / "py", "--n", 2, "--out", tmp_path / "x.npy")
    one_line_error(code, err, "no run config", "trained from Python", "load_checkpoint")
    assert not (tmp_path / "x.npy").exists()
