"""What the benchmarks record about the machine they ran on (shared by the benchmark scripts)."""

from __future__ import annotations

import platform
from pathlib import Path

FLAGS = {"amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2"}


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (else ``platform.processor()``, else "unknown")."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """Those of the CPU's flags that decide the speed of float32/bfloat16 matrix kernels (AVX2, AVX-512, AMX)."""
    flags = next((line.split(":", 1)[1].split() for line in _cpuinfo().splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if f in FLAGS)
