"""Smoke test of benchmarks/mixed_precision.py: a tiny network, 4 steps per run in chunks of 2, 16 held-out images.
Checks what the committed results rely on: the three runs (fp32, bf16, fp32 with the next seed) really trained in
chunks to the same step, the bf16 run in bfloat16 (its weights differ from the fp32 run's), and the summary is
the figures the per-chunk timings and per-image values give. Then the --sampling mode on a tiny trained run."""

import importlib.util
import json
import math
import statistics

import pytest
import torch


pytestmark = pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None, reason="mlxtend is not installed")


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("mixed_precision")


def test_mixed_precision_smoke(bench, tmp_path, monkeypatch):
    quality_of = {}
    per_image = bench.per_image_quality

    def recording(run, x, cfg):  # keep each run's weights and per-image values to recompute the summary
        values = per_image(run, x, cfg)
        quality_of[len(quality_of)] = (run, values)
        return values

    monkeypatch.setattr(bench, "per_image_quality", recording)
    results = bench.run({**bench.SMOKE, "threads": 1, "command": "pytest smoke"}, tmp_path, log=lambda *a: None)

    assert {p.name for p in tmp_path.iterdir()} == {"mixed_precision.json", "mixed_precision.md"}
    chunks = results["training"]
    assert chunks.keys() == {"fp32", "bf16", "fp32_seed1"}
    for p in chunks:
        assert [c["to_step"] for c in chunks[p]] == [2, 4] and all(c["seconds"] > 0 for c in chunks[p])
    summary = results["summary"]
    ratios = [a["seconds"] / b["seconds"] for a, b in zip(chunks["fp32"], chunks["bf16"])]
    assert summary["speedup_median"] == pytest.approx(statistics.median(ratios))
    assert summary["speedup_total"] == pytest.approx(sum(c["seconds"] for c in chunks["fp32"])
                                                     / sum(c["seconds"] for c in chunks["bf16"]))

    (fp32_run, fp32_q), (bf16_run, bf16_q), (control_run, control_q) = quality_of[0], quality_of[1], quality_of[2]
    assert fp32_run.config["train"]["precision"] == "fp32" and bf16_run.config["train"]["precision"] == "bf16"
    assert control_run.config["train"]["precision"] == "fp32"
    assert (fp32_run.config["train"]["seed"], bf16_run.config["train"]["seed"], control_run.config["train"]["seed"]) \
        == (0, 0, 1)
    assert torch.equal(fp32_run.dataset.test, control_run.dataset.test)  # the same held-out images
    weights = zip(fp32_run.model.state_dict().values(), bf16_run.model.state_dict().values())
    assert not all(torch.equal(a, b) for a, b in weights), "bf16 training should not give the fp32 weights"
    for metric in ("bpd", "eps_loss"):
        assert len(fp32_q[metric]) == 16 and bool(torch.isfinite(fp32_q[metric]).all())
        diff = bf16_q[metric] - fp32_q[metric]
        assert summary[metric]["bf16_minus_fp32"]["mean"] == pytest.approx(float(diff.mean()))
        assert summary[metric]["bf16_minus_fp32"]["stderr"] == pytest.approx(float(diff.std() / math.sqrt(16)))
        assert summary[metric]["fp32"]["mean"] == pytest.approx(float(fp32_q[metric].mean()))
        control = control_q[metric] - fp32_q[metric]
        assert summary[metric]["seed1_minus_seed0"]["mean"] == pytest.approx(float(control.mean()))


def test_mixed_precision_sampling_smoke(bench, tmp_path):
    """The --sampling mode on a tiny MNIST run: both precisions timed, the RMS figures are what the outputs give."""
    from diffusionlab.cli import main

    config = tmp_path / "c.json"
    config.write_text(json.dumps({"network": bench.SMOKE["network"], "train": {"batch_size": 8, "num_threads": 1,
                                                                                "ema_decay": 0.5}}))
    assert main(["train", "--data", "mnist", "--out", str(tmp_path / "run"), "--steps", "2", "--config",
                 str(config), "--no-progress"]) == 0
    results = bench.sampling(tmp_path / "run", {"samplers": [["ddim", 3]], "n": 4, "rounds": 2, "rtol": 1e-3},
                             tmp_path / "out", log=lambda *a: None)
    (row,) = results["rows"]
    assert row["nfe"] == 3 and all(len(row["seconds"][p]) == 2 for p in ("fp32", "bf16"))
    assert row["speedup"] == pytest.approx(statistics.median(row["seconds"]["fp32"])
                                           / statistics.median(row["seconds"]["bf16"]))
    assert 0 < row["rms_bf16_to_fp32"] < row["rms_fp32_to_exact"] + row["rms_bf16_to_exact"] + 1e-12
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"mixed_precision_sampling.json",
                                                              "mixed_precision_sampling.md"}
