"""Test-suite settings.

The suite runs in two pytest-xdist workers (``make test``), one per core, so each worker uses one torch
thread: two OpenMP threads per worker on two cores would oversubscribe the machine, and on small tensors
one thread is faster anyway.
"""

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by subprocesses (torchrun ranks, the CLI)


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under ``make test`` (and so CI), which installs every optional dependency (the ``dev`` extra), a skipped
    test is a failure: the parity tests against diffusers and the FID tests skip without their packages, and a
    silent skip would hide that the strongest checks did not run. Plain ``pytest`` still skips them."""
    _no_skips((yield).get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """The same for a whole test file skipped at import (``pytest.importorskip`` at module level)."""
    _no_skips((yield).get_result())


def _no_skips(report) -> None:
    if report.skipped and os.environ.get("DIFFUSIONLAB_NO_SKIPS") == "1" and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under make test (DIFFUSIONLAB_NO_SKIPS=1): {reason}; run `make install-dev`"


@pytest.fixture(scope="session")
def load_benchmark():
    """``load_benchmark("name")`` imports ``benchmarks/name.py`` (the benchmarks are scripts, not a package)."""

    if str(BENCHMARKS) not in sys.path:  # their shared helpers (_machine.py), as `python benchmarks/x.py` finds them
        sys.path.append(str(BENCHMARKS))

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
