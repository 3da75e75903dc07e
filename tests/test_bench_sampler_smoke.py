"""Smoke test of benchmarks/sampler_accuracy.py: one bed, NFE 5, a few methods, small n, into tmp_path.

Checks that every promised output is written and that the figures the README quotes are computed from the
runs: targets from the rows, finite errors, and the fitted grid beating the log-SNR grid it starts from.
"""

import json
import math

import pytest

pytest.importorskip("diffusers")


def test_sampler_accuracy_smoke(tmp_path, load_benchmark):
    bench = load_benchmark("sampler_accuracy")
    dl_methods = [m for m in bench.DL_METHODS if m[0] in ("unipc", "ancestral")]
    hf_methods = [m for m in bench.DIFFUSERS_METHODS if m[1] in ("UniPCMultistepScheduler", "DDPMScheduler")]
    res = bench.main(n=96, nfes=(5, 10), out_dir=tmp_path, dl_methods=dl_methods, diffusers_methods=hf_methods,
                     beds=["ring2d"], n_proj=32, fitted=("unipc", "dpmpp_3m"), n_cal=96, n_cal_multistep=128,
                     multistep_fit={"rounds": 1, "max_iter": 20}, verbose=False)
    for name in ("sampler_accuracy.json", "sampler_accuracy.md", "sampler_accuracy.png"):
        assert (tmp_path / name).stat().st_size > 0
    saved = json.loads((tmp_path / "sampler_accuracy.json").read_text())
    rows = saved["beds"]["ring2d"]["rows"]
    by = {(r["library"], r["method"], r["variant"]): r for r in rows}
    for key in [("diffusionlab", "unipc", "logsnr"), ("diffusionlab", "unipc", "fitted"),
                ("diffusers", "UniPC", "default"), ("diffusers", "DDPM", "default")]:
        assert key in by, key
    fitted = by[("diffusionlab", "unipc", "fitted")]["runs"]["5"]
    logsnr = by[("diffusionlab", "unipc", "logsnr")]["runs"]["5"]
    assert fitted["nfe"] == logsnr["nfe"] == 5
    assert math.isfinite(fitted["ode_error"]) and fitted["ode_error"] < 0.5 * logsnr["ode_error"]
    assert by[("diffusionlab", "unipc", "fitted")]["runs"]["10"]["nfe"] == 10
    multi = by[("diffusionlab", "fitted_multistep", "fitted grid + coefficients")]
    for nfe in ("5", "10"):
        assert multi["runs"][nfe]["nfe"] == int(nfe)
        fit = multi["multistep"][nfe]
        grids = {name: by[("diffusionlab", name, "fitted")]["grids"][nfe] for name in ("unipc", "dpmpp_3m")}
        best = min(grids.values(), key=lambda g: g["calibration_error"])
        assert fit["steps_i"] == best["steps_i"] and fit["starts"] == [1, 2, 3]
        # the second row: on 3M's own fitted grid, from 3M's coefficients
        own = by[("diffusionlab", "fitted_multistep", "3M's fitted grid, from 3M")]["multistep"][nfe]
        assert own["steps_i"] == grids["dpmpp_3m"]["steps_i"] and own["starts"] == [3]
    assert by[("diffusers", "DDPM", "default")]["runs"]["5"]["ode_error"] is None  # stochastic: no ODE error
    t = res["targets"]["ring2d"]["ode_error_nfe5"]
    best_theirs = min(r["runs"]["5"]["ode_error"] for r in rows
                      if r["library"] == "diffusers" and r["deterministic"])
    assert t["theirs"] == best_theirs and t["ratio"] == pytest.approx(t["ours"] / t["theirs"])
    # the floor limits: the floor's mean or the exact solution's own score (same x_T), whichever is higher, + 2 std
    floor, fl, rm = res["targets"]["ring2d"]["floor_nfe10"], saved["beds"]["ring2d"]["floors"], \
        saved["beds"]["ring2d"]["reference_metrics"]
    for key in ("sw", "tv"):
        limit = max(fl[f"{key}_floor_mean"], rm[key]) + 2 * fl[f"{key}_floor_std"]
        assert floor[f"{key}_limit"] == pytest.approx(limit) and floor[f"reference_{key}"] == rm[key]
    assert floor["holds"] == (floor["sw"] <= floor["sw_limit"] and floor["tv"] <= floor["tv_limit"])
    assert "## Targets" in (tmp_path / "sampler_accuracy.md").read_text()


def test_merge_combines_beds_and_recomputes_the_targets(tmp_path, load_benchmark):
    bench = load_benchmark("sampler_accuracy")
    dl_methods = [m for m in bench.DL_METHODS if m[0] == "dpmpp_2m"]
    hf_methods = [m for m in bench.DIFFUSERS_METHODS if m[1] == "DDIMScheduler"]
    common = dict(n=64, nfes=(5, 10), dl_methods=dl_methods, diffusers_methods=hf_methods, n_proj=16, fitted=(),
                  verbose=False)
    runs = [bench.main(out_dir=tmp_path / bed, beds=[bed], **common) for bed in ("ring2d", "aniso16d")]
    merged = bench.merge([tmp_path / bed / "sampler_accuracy.json" for bed in ("ring2d", "aniso16d")], tmp_path / "all")
    assert set(merged["beds"]) == {"ring2d", "aniso16d"}
    for run in runs:
        for bed, targets in run["targets"].items():
            assert merged["targets"][bed] == targets
    assert merged["runtime_s"] == max(r["runtime_s"] for r in runs)
    text = (tmp_path / "all" / "sampler_accuracy.md").read_text()
    assert "## ring2d" in text and "## aniso16d" in text
    with pytest.raises(SystemExit, match="same bed"):
        bench.merge([tmp_path / bed / "sampler_accuracy.json" for bed in ("ring2d", "aniso16d", "ring2d")],
                    tmp_path / "bad")
    other = json.loads((tmp_path / "aniso16d" / "sampler_accuracy.json").read_text())
    other["config"]["n"] += 1
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="different configurations"):
        bench.merge([tmp_path / "ring2d" / "sampler_accuracy.json", tmp_path / "other.json"], tmp_path / "bad")
    with pytest.raises(SystemExit, match="unknown bed"):
        bench.main(out_dir=tmp_path / "bad", beds=["ring3d"], **common)
    assert not (tmp_path / "bad").exists()
