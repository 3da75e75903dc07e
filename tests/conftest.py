"""Test-suite settings.

The suite runs in two pytest-xdist workers (``make test``), one per core, so each worker uses one torch
thread: two OpenMP threads per worker on two cores would oversubscribe the machine, and on small tensors
one thread is faster anyway.
"""

import os

import torch

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by subprocesses (torchrun ranks, the CLI)
