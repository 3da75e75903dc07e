"""Smoke test of benchmarks/train_throughput.py: a tiny configuration, one round of one step, into tmp_path.

Checks what the committed results rely on: both libraries are timed, the figures are finite and positive, the
ratios are the ones the timings give, and the two networks really have (nearly) the same number of parameters,
recounted here from the configurations written to the JSON.
"""

import json
import math

import pytest
import torch

from diffusionlab.nets import build_network, count_parameters

diffusers = pytest.importorskip("diffusers")


TINY = {
    "shapes": [[1, 8, 8], [3, 8, 8]],
    "base_channels": 8,
    "channel_mults": [1, 2],
    "num_res_blocks": 1,
    "attention_levels": [1],
    "num_groups": 4,
    "batch": 2,
    "warmup": 0,
    "rounds": 1,
    "steps": 1,
    "threads": 1,
    "command": "pytest smoke",
}


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("train_throughput")


def _positive(x):
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_tiny_run_writes_both_libraries_figures(bench, tmp_path):
    threads = torch.get_num_threads()
    bench.run(dict(TINY), tmp_path, log=lambda *_: None)
    assert torch.get_num_threads() == threads  # the benchmark restores the thread count

    results = json.loads((tmp_path / "train_throughput.json").read_text())
    assert results["command"] == "pytest smoke"
    env = results["environment"]
    assert env["torch"] == torch.__version__ and env["diffusers"] == diffusers.__version__
    assert env["threads"] == 1
    assert [r["shape"] for r in results["shapes"]] == TINY["shapes"]

    for r in results["shapes"]:
        ours, theirs = r["diffusionlab"], r["diffusers"]
        # Parameter counts, recounted from the configurations in the JSON.
        assert count_parameters(build_network(ours["config"])) == ours["params"]
        assert count_parameters(diffusers.UNet2DModel(**theirs["config"])) == theirs["params"]
        assert abs(theirs["params"] / ours["params"] - 1) <= results["param_tolerance"] == 0.03
        assert ours["config"]["in_channels"] == theirs["config"]["in_channels"] == r["shape"][0]
        assert theirs["config"]["layers_per_block"] == ours["config"]["num_res_blocks"]
        assert len(theirs["config"]["block_out_channels"]) == len(ours["config"]["channel_mults"])

        assert _positive(ours["median_images_per_s"]) and _positive(theirs["median_images_per_s"])
        assert len(r["rounds"]) == r["rounds_done"] == TINY["rounds"]
        for rnd in r["rounds"]:
            ips = rnd["images_per_s"]
            assert set(ips) == {"diffusionlab", "diffusers"}
            for name in ips:
                assert _positive(ips[name]) and _positive(rnd["seconds"][name])
                assert ips[name] == pytest.approx(TINY["steps"] * TINY["batch"] / rnd["seconds"][name])
            assert rnd["ratio"] == pytest.approx(ips["diffusionlab"] / ips["diffusers"])
        assert r["ratio_min"] <= r["ratio_median"] <= r["ratio_max"]
        assert _positive(r["ratio_median"]) and _positive(r["cpu_ratio_median"])

    md = (tmp_path / "train_throughput.md").read_text()
    assert "| 1×8×8 |" in md and "| 3×8×8 |" in md and "diffusers" in md


def test_width_search_picks_the_closest_parameter_count(bench):
    cfg = {**bench.FULL, **TINY}
    shape = [1, 8, 8]
    # Aim at the count of a wider diffusers net (widths 12 · mults, 12 = 3 groups of 4): the base widths are then
    # far outside the tolerance, and the search must land on 12.
    target = count_parameters(diffusers.UNet2DModel(**bench.diffusers_config(shape, cfg, 12))) + 5
    config, params, tried = bench.match_diffusers(shape, cfg, target)
    assert len(tried) > 1 and {t["width"] for t in tried} >= {4, 8, 12, 16}
    assert config["block_out_channels"] == [12, 24]
    assert params == min((t["params"] for t in tried), key=lambda n: abs(n - target)) == target - 5
    assert count_parameters(diffusers.UNet2DModel(**config)) == params


def test_bf16_channels_last_path_runs_on_cpu(bench):
    cfg = {**TINY, "shapes": [[3, 8, 8]], "bf16": True, "channels_last": True}
    results = bench.run(cfg, None, log=lambda *_: None)
    r = results["shapes"][0]
    assert results["settings"]["bf16"] and results["settings"]["channels_last"]
    assert _positive(r["diffusionlab"]["median_images_per_s"]) and _positive(r["diffusers"]["median_images_per_s"])
